"""PyBaMM parameters from the 3D statistics: values, files, and a DFN discharge that uses them."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from src.analysis.model_parameters import (
    bruggeman_exponent,
    electrode_parameters,
    write_parameter_set,
)
from src.analysis.morphology import compute_statistics
from src.simulation.microstructure import MicrostructureConfig, generate_microstructure

PHASES = ["NMC", "CBD", "pore"]


@pytest.fixture(scope="module")
def electrode_stats():
    labels = generate_microstructure(MicrostructureConfig(shape=(48, 48, 48), voxel_size_nm=40.0), seed=0)
    return labels, compute_statistics(labels, PHASES, 40.0, axes=(0,), thickness_phases=[],
                                      particles={"min_voxels": 8, "exclude_border": False})


def test_bruggeman_exponent():
    assert bruggeman_exponent(0.4, 1.0) == pytest.approx(1.0)  # straight channels: D_eff = eps D
    assert bruggeman_exponent(0.4, 0.4 ** -0.5) == pytest.approx(1.5)  # the classic Bruggeman law
    assert math.isnan(bruggeman_exponent(0.4, math.inf)) and math.isnan(bruggeman_exponent(1.0, 2.0))


def test_parameters_come_from_the_statistics(electrode_stats, tmp_path):
    labels, stats = electrode_stats
    params = electrode_parameters(stats)
    value = {k: v["value"] for k, v in params.items()}
    eps = float(np.mean(labels == 2))
    assert value["Positive electrode porosity"] == pytest.approx(eps)
    assert value["Positive electrode active material volume fraction"] == pytest.approx(np.mean(labels == 0))
    tau = stats["tortuosity"]["pore"]["z"]["tortuosity_factor"]
    assert value["Positive electrode Bruggeman coefficient (electrolyte)"] == pytest.approx(
        1 - math.log(tau) / math.log(eps))
    tau_s = stats["tortuosity"]["NMC+CBD"]["z"]["tortuosity_factor"]
    assert value["Positive electrode Bruggeman coefficient (electrode)"] == pytest.approx(
        1 - math.log(tau_s) / math.log(1 - eps))
    assert value["Positive particle radius [m]"] == pytest.approx(stats["particles"]["NMC"]["d50_um"] * 0.5e-6)
    assert value["Positive electrode thickness [m]"] == pytest.approx(48 * 40e-9)
    assert 1e5 < value["Positive electrode surface area to volume ratio [m-1]"] < 1e8  # 0.1-100 µm⁻¹
    assert 0 < value["Positive electrode NMC-pore interface area to volume ratio [m-1]"] \
        < value["Positive electrode surface area to volume ratio [m-1]"]
    assert all(p["source"] for p in params.values())
    with pytest.raises(ValueError, match="active_phase='LFP'"):
        electrode_parameters(stats, active_phase="LFP")
    json_path, py_path = write_parameter_set(params, tmp_path, "cell")
    assert json_path.exists()
    spec = importlib.util.spec_from_file_location("cell_params", py_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded = module.get_parameter_values()
    assert loaded["Positive electrode porosity"] == pytest.approx(eps)


def _discharge_capacity(values: dict, active: float) -> float:
    """1C DFN discharge (Chen2020 cell with the measured positive electrode); capacity in A.h."""
    pybamm = pytest.importorskip("pybamm")
    p = pybamm.ParameterValues("Chen2020")
    values = {**values, "Positive electrode active material volume fraction": active}
    p.update(values, check_already_exists=False)
    area = p["Electrode height [m]"] * p["Electrode width [m]"]
    usable = 96485.33 * p["Maximum concentration in positive electrode [mol.m-3]"] * active \
        * p["Positive electrode thickness [m]"] * area * 0.6 / 3600  # the 1C current's capacity
    p.update({"Nominal cell capacity [A.h]": usable})
    solution = pybamm.Simulation(pybamm.lithium_ion.DFN(), parameter_values=p, C_rate=1).solve([0, 5400])
    assert "Minimum voltage" in solution.termination  # a full discharge, to the cut-off
    return float(solution["Discharge capacity [A.h]"].entries[-1])


def test_pybamm_dfn_runs_with_the_parameters_and_capacity_scales(electrode_stats, tmp_path):
    _, stats = electrode_stats
    params = electrode_parameters(stats)
    _, py_path = write_parameter_set(params, tmp_path)
    spec = importlib.util.spec_from_file_location("measured", py_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = module.get_parameter_values()
    active = values["Positive electrode active material volume fraction"]
    full = _discharge_capacity(values, active)
    less = _discharge_capacity(values, 0.8 * active)
    assert full > 0 and less / full == pytest.approx(0.8, abs=0.04)
