"""L-BFGS for the refinement stage (Liu et al., appendix B).

torch.optim.LBFGS exists, but its line search is strong-Wolfe cubic interpolation with no damping and
no record of function/gradient evaluations; the refinement protocol asks for a backtracking line search
that enforces Armijo and (weak) Wolfe conditions, Powell damping when the curvature pair is unusable,
and evaluation counts. So this is our own, small, full-batch implementation over a flat parameter view.

One ``step(closure)`` is one quasi-Newton iteration:

1. d = −H g by the two-loop recursion over the last ``memory`` pairs (s, y), H₀ = γ I with
   γ = sᵀy / yᵀy of the newest pair (Nocedal & Wright, algorithm 7.4);
2. backtracking from α = 1 (halving) until f(x+αd) ≤ f(x) + c₁ α gᵀd (Armijo) and
   g(x+αd)ᵀd ≥ c₂ gᵀd (Wolfe curvature); if no α satisfies both, the largest Armijo step is taken;
3. Powell damping when the pair is unusable (sᵀy ≤ 0, possible when only the Armijo condition could
   be met): with B ≈ γ⁻¹ I the pair uses ŷ = θy + (1−θ)Bs, θ = 0.8 sᵀBs / (sᵀBs − sᵀy), so that
   sᵀŷ = 0.2 sᵀBs > 0 and H stays positive definite. (Damping every pair with sᵀy < 0.2 sᵀBs, as in
   BFGS with a full B, would distort good pairs here, where B is only the scalar γ⁻¹ I.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


@dataclass
class LBFGSInfo:
    loss: float  # after the step
    grad_norm: float
    step_size: float
    wolfe: bool  # the accepted step satisfied both conditions
    damped: bool  # Powell damping modified this iteration's pair
    function_evals: int  # cumulative
    gradient_evals: int  # cumulative (every evaluation computes both)


class LBFGS(torch.optim.Optimizer):
    """Full-batch L-BFGS with Armijo–Wolfe backtracking and Powell damping.

    ``closure()`` must zero the gradients, compute the loss, call ``backward()`` and return the loss.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        memory: int = 20,
        c1: float = 1e-4,
        c2: float = 0.9,
        max_backtracks: int = 25,
        damping: float = 0.2,
    ) -> None:
        if memory < 1:
            raise ValueError(f"memory must be ≥ 1, got {memory}")
        if not 0 < c1 < c2 < 1:
            raise ValueError(f"need 0 < c1 < c2 < 1, got c1={c1}, c2={c2}")
        super().__init__(
            params, dict(memory=memory, c1=c1, c2=c2, max_backtracks=max_backtracks, damping=damping)
        )
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS takes a single parameter group")
        self._params = [p for p in self.param_groups[0]["params"] if p.requires_grad]
        self.state["lbfgs"] = {"s": [], "y": [], "rho": [], "fevals": 0, "damped": 0, "iterations": 0}

    # ------------------------------------------------------------------ flat views
    def _flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params])

    def _flat_grad(self) -> torch.Tensor:
        return torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self._params]
        )

    def _set_params(self, flat: torch.Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for p in self._params:
                n = p.numel()
                p.copy_(flat[offset : offset + n].view_as(p))
                offset += n

    def _evaluate(self, closure: Callable[[], torch.Tensor], x: torch.Tensor) -> tuple[float, torch.Tensor]:
        self._set_params(x)
        with torch.enable_grad():
            loss = closure()
            loss = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        self.state["lbfgs"]["fevals"] += 1
        return loss, self._flat_grad().clone()

    # ------------------------------------------------------------------ algorithm
    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        st = self.state["lbfgs"]
        q = g.clone()
        alphas = []
        for s, y, rho in zip(reversed(st["s"]), reversed(st["y"]), reversed(st["rho"])):
            a = rho * torch.dot(s, q)
            q -= a * y
            alphas.append(a)
        if st["s"]:
            s, y = st["s"][-1], st["y"][-1]
            q *= torch.dot(s, y) / torch.dot(y, y)
        for (s, y, rho), a in zip(zip(st["s"], st["y"], st["rho"]), reversed(alphas)):
            b = rho * torch.dot(y, q)
            q += (a - b) * s
        return -q

    def _gamma(self) -> float:
        st = self.state["lbfgs"]
        if not st["s"]:
            return 1.0
        s, y = st["s"][-1], st["y"][-1]
        return float(torch.dot(s, y) / torch.dot(y, y))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> LBFGSInfo:  # type: ignore[override]
        group, st = self.param_groups[0], self.state["lbfgs"]
        x = self._flat_params()
        if "loss" not in st:
            st["loss"], st["grad"] = self._evaluate(closure, x)
        f, g = st["loss"], st["grad"]
        d = self._direction(g)
        gd = float(torch.dot(g, d))
        if gd >= 0:  # not a descent direction (numerical trouble): restart from steepest descent
            st["s"].clear(), st["y"].clear(), st["rho"].clear()
            d, gd = -g, -float(torch.dot(g, g))
        if not st["s"]:  # first step: scale so the first trial moves by at most 1 in norm
            d = d / max(1.0, float(d.norm()))
            gd = float(torch.dot(g, d))

        alpha, accepted, wolfe = 1.0, None, False
        # near the minimum f changes by less than its rounding error; allow that much slack in Armijo
        slack = 1e-12 * max(1.0, abs(f))
        for _ in range(group["max_backtracks"]):
            f_new, g_new = self._evaluate(closure, x + alpha * d)
            armijo = f_new <= f + group["c1"] * alpha * gd + slack
            if armijo:
                if accepted is None:
                    accepted = (alpha, f_new, g_new)
                if float(torch.dot(g_new, d)) >= group["c2"] * gd:
                    accepted, wolfe = (alpha, f_new, g_new), True
                    break
            alpha *= 0.5
        if accepted is None:  # no decrease at all: stay, and forget the curvature history
            self._set_params(x)
            st["s"].clear(), st["y"].clear(), st["rho"].clear()
            st["iterations"] += 1
            return LBFGSInfo(f, float(g.norm()), 0.0, False, False, st["fevals"], st["fevals"])
        alpha, f_new, g_new = accepted
        self._set_params(x + alpha * d)

        s, y = alpha * d, g_new - g
        sy = float(torch.dot(s, y))
        sBs = float(torch.dot(s, s)) / self._gamma()
        damped = sy <= 1e-12 * sBs  # the curvature pair is unusable (yᵀs ≤ 0)
        if damped:
            theta = (1 - group["damping"]) * sBs / (sBs - sy)
            y = theta * y + (1 - theta) * s / self._gamma()
            sy = float(torch.dot(s, y))
            st["damped"] += 1
        st["s"].append(s)
        st["y"].append(y)
        st["rho"].append(1.0 / sy)
        if len(st["s"]) > group["memory"]:
            st["s"].pop(0), st["y"].pop(0), st["rho"].pop(0)
        st["loss"], st["grad"] = f_new, g_new
        st["iterations"] += 1
        return LBFGSInfo(f_new, float(g_new.norm()), alpha, wolfe, damped, st["fevals"], st["fevals"])

    @property
    def damped_steps(self) -> int:
        return self.state["lbfgs"]["damped"]
