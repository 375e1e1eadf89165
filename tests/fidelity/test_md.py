import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from mlipopt.fidelity.md import BlowUp, BondLength, RDFDrift, run_md
from mlipopt.fidelity.observables import energy_drift


class Exploding(Calculator):
    """EMT whose forces push every atom outward, harder as the run goes on: a broken potential."""

    implemented_properties = ["energy", "forces"]

    def __init__(self) -> None:
        super().__init__()
        self.emt, self.calls = EMT(), 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        a = atoms.copy()
        a.calc = self.emt
        outward = a.positions - a.get_center_of_mass()
        self.results = {
            "energy": a.get_potential_energy(),
            "forces": a.get_forces() + 0.05 * self.calls * outward,
        }


def test_broken_calculator_is_flagged_unstable():
    ethanol = molecule("CH3CH2OH")
    result = run_md(
        ethanol, Exploding(), temperature_K=300, steps=400, interval=5, monitors=[BondLength(ethanol)]
    )
    assert not result.stable
    assert "deviates" in result.reason and 0 < result.failed_at_ps < 0.2


def test_sound_calculator_survives_and_conserves_energy():
    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    monitors = [BlowUp(), RDFDrift([copper], rmax=3.5, window=5, threshold=5.0)]
    result = run_md(
        copper, EMT(), temperature_K=300, steps=200, interval=10, ensemble="nve", monitors=monitors
    )
    assert result.stable and len(result.frames) == 21
    assert abs(energy_drift(np.array(result.times_ps), np.array(result.total_energy), len(copper))) < 5.0


def test_nan_forces_are_a_blow_up():
    class NaNForces(EMT):
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results["forces"] = np.full((len(atoms), 3), np.nan)

    result = run_md(Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]]), NaNForces(), steps=20, interval=5)
    assert result.reason == "non-finite energy or forces" and result.failed_at_ps == 0.0


@pytest.mark.parametrize("ensemble", ["langevin", "bussi", "nose_hoover"])
def test_thermostats_heat_to_the_target(ensemble):
    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    result = run_md(
        copper, EMT(), temperature_K=600, steps=600, timestep_fs=2.0, ensemble=ensemble, friction=0.05
    )
    temps = [f.get_temperature() for f in result.frames[len(result.frames) // 2 :]]
    assert 350 < np.mean(temps) < 850
