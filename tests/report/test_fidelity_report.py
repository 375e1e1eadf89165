"""The report's fidelity section: the table against experiment and the RDF/MSD grids per optimizer × s."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from mlipopt.report.fidelity import observed_table, stability_table, structure_figures

R = np.arange(0.0, 6.0, 0.05)


def _g(peak: float, height: float) -> list[float]:
    shell = 1 - np.exp(-(((R - 2.0) / 0.4) ** 4))
    return list(shell + (height - 1) * np.exp(-(((R - peak) / 0.15) ** 2)))


def _result(peak: float, d: float, survived: float = 1.0) -> dict:
    lag = list(np.linspace(0, 2, 11))
    return {
        "label": "m", "survived": survived, "median_time_to_failure_ps": 2.0, "structure_error": 0.1,
        "curve": (list(R), _g(peak, 2.4)), "pair_curves": {"O-O": _g(peak, 2.4)},
        "reference_pair_curves": {"O-O": _g(2.75, 3.1)}, "msd": (lag, [6 * d * t for t in lag]),
        "reference_msd": (lag, [6 * 0.1 * t for t in lag]), "observed": "water",
        "extra": {"D_A2_per_ps": d, "D_reference": 0.1, "D_relative_error": abs(d - 0.1) / 0.1},
    }  # fmt: skip


def test_observed_table_and_figures_per_cell(tmp_path):
    runs = {
        f"{o}{s}{k}": SimpleNamespace(stage="final", optimizer=o, force_fraction=s)
        for o in ("adamw", "soap") for s in (1.0, 0.1) for k in (0, 1)
    }  # fmt: skip
    rows = [
        (
            rid,
            "liquid",
            300.0,
            _result(2.80 + 0.02 * int(rid[-1]), 0.2, survived=0.5 if "adamw0.1" in rid else 1.0),
        )
        for rid in runs
    ]
    text = "\n".join(observed_table(rows, runs))
    assert "Skinner et al." in text and "Holz, Heil & Sacco" in text
    [soap_full] = [line for line in text.splitlines() if line.startswith("| 300 K | 100 % | soap |")]
    cells = [c.strip() for c in soap_full.split("|")]
    assert cells[4] == "2/2" and cells[5].startswith("2.81")  # mean of the two models' peaks
    assert cells[7].startswith("2.00")  # D 0.2 Å²/ps = 2.00e-9 m²/s
    assert cells[8] == "2.75 / 3.10" and cells[9] == "1.00"  # the reference MD's peak and D
    assert cells[10] == "2.41"  # experiment at 300 K (Holz et al.: 2.30 at 298.15 K, ~2.4 % per K)
    [adamw_sparse] = [line for line in text.splitlines() if line.startswith("| 300 K | 10 % | adamw |")]
    assert adamw_sparse.split("|")[4].strip() == "0/2"  # no model survived every run: no peak, no D
    assert "| — |" in adamw_sparse
    stability = "\n".join(stability_table(rows, runs))
    assert "| liquid | 300 K | 10 % | adamw | 0/2 | 50 % |" in stability
    lines = structure_figures(rows, runs, tmp_path)
    assert (tmp_path / "fidelity_rdf_300K.png").is_file() and (tmp_path / "fidelity_msd_300K.png").is_file()
    assert "![rdf at 300 K](fidelity_rdf_300K.png)" in lines


def test_no_observed_reference_gives_no_table():
    runs = {"a": SimpleNamespace(stage="final", optimizer="adamw", force_fraction=1.0)}
    result = _result(2.8, 0.2) | {"observed": None}
    assert observed_table([("a", "liquid", 300.0, result)], runs) == []
