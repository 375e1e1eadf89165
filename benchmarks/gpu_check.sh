#!/usr/bin/env bash
# The day a GPU is available: the optimizer-step tables of issue 23 on CUDA, and the host-sync check with
# CUDA's own detector. Under 10 minutes on one recent GPU. Run from the project root:
#   bash benchmarks/gpu_check.sh [device]        (default cuda:0; needs the [nequip,bench] extras)
# Output: benchmarks/optimizer_step_cuda_<commit>.log. The tables add "mlipopt Muon bf16, unchecked"
# (bfloat16 Newton–Schulz) and "mlipopt SOAP unchecked" (no per-step non-finite flag read back) to the
# whole-step table; batched eigh/QR are torch's (cuSOLVER) as on CPU.
set -euo pipefail
device="${1:-cuda:0}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"
log="benchmarks/optimizer_step_cuda_$(git rev-parse --short HEAD).log"

# 1. no host synchronisation in an ordinary step, by torch.cuda.set_sync_debug_mode("error")
python - "$device" <<'PY' | tee "$log"
import sys
import torch
from mlipopt.optim import SOAP, Muon, SOAPMuon

device = torch.device(sys.argv[1])
torch.manual_seed(0)
for name, make in [
    ("SOAP", lambda ps: SOAP(ps, lr=1e-2, nonfinite="unchecked")),
    ("SOAP official", lambda ps: SOAP(ps, lr=1e-2, nonfinite="unchecked", null_space="official")),
    ("SOAP-Muon rho=0", lambda ps: SOAPMuon(ps, lr=1e-3, rho=0.0, nonfinite="unchecked")),
    ("Muon bf16", lambda ps: Muon(ps, lr=1e-2, ns_dtype=torch.bfloat16, nonfinite="unchecked")),
]:
    params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in [(64, 16), (8, 4, 3), (7,)]]
    opt = make(params)
    for step in range(1, 24):
        for p in params:
            p.grad = torch.randn_like(p)
        refresh = isinstance(opt, SOAP) and (step - 1) % 10 == 0
        torch.cuda.set_sync_debug_mode("default" if refresh else "error")
        opt.step()
    torch.cuda.set_sync_debug_mode("default")
    print(f"{name}: no host synchronisation in {23 - 3 * isinstance(opt, SOAP)} ordinary steps")
PY

# 2. the step tables and the whole training step, as on CPU
python benchmarks/optimizer_step.py --device "$device" --periods 3 --models nequip,allegro --train-step \
    2>&1 | tee -a "$log"
echo "written: $log"
