"""Evolution analysis: manifest checks, intervals, tests, registration, tracking, evolve.py end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.analysis.evolution_statistics import (
    analyse_state,
    block_slices,
    bootstrap_intervals,
    compare_states,
    particle_summary,
    read_manifest,
)
from src.analysis.particles import separate_particles
from src.analysis.registration import (
    common_crop,
    estimate_shift,
    match_particles,
    register_series,
    track_particles,
)
from src.data.io import write_tiff
from src.simulation.evolution_series import EvolutionConfig, write_evolution_series
from src.simulation.microstructure import MicrostructureConfig, generate_microstructure
from tests.helpers import blob_labels, compose

ROOT = Path(__file__).resolve().parents[3]
PHASES = ["NMC", "CBD", "pore"]
FAST_STATS = {"particle_phase": "NMC", "tortuosity": False, "thickness_phases": [],
              "particles": {"min_voxels": 27}}
FAST = ["statistics.tortuosity=false", "statistics.thickness_phases=[]", "bootstrap.n_resamples=200",
        "tests.n_permutations=4999"]


@pytest.fixture(scope="module")
def electrode() -> np.ndarray:
    """A (48, 48, 48) synthetic electrode (80 nm voxels: particle radius ≈ 7.5 voxels)."""
    return generate_microstructure(MicrostructureConfig(shape=(48, 48, 48), voxel_size_nm=80.0), 5)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """Simulated series on disk: 64³, 3 states, 3 % volume shrinkage per step, drift ≤ 3 voxels."""
    out = tmp_path_factory.mktemp("series")
    micro = MicrostructureConfig(shape=(64, 64, 64), voxel_size_nm=80.0)
    evo = EvolutionConfig(states=3, shrink_percent=3.0, crack_growth_percent=1.0,
                          detach_percent=15.0, drift_vox=3)
    return write_evolution_series(out, micro, evo, seed=0)


def write_manifest(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- manifest
def test_manifest_csv_and_yaml(tmp_path):
    for i in range(2):
        write_tiff(tmp_path / "vols" / f"v{i}.tif", blob_labels((16, 16, 16), i))
    csv_path = write_manifest(tmp_path / "m.csv", "# a comment\npath,soc,voltage,time_h\n"
                              "vols/v0.tif,0.1,3.7,0\nvols/v1.tif,0.9,,2.5\n")
    entries = read_manifest(csv_path)
    assert [e.name for e in entries] == ["v0", "v1"]
    assert entries[0].path == tmp_path / "vols" / "v0.tif"
    assert entries[1].soc == 0.9 and np.isnan(entries[1].voltage) and entries[1].time_h == 2.5
    yaml_path = write_manifest(tmp_path / "m.yaml", "states:\n"
                               f"  - {{name: a, path: {tmp_path}/vols/v0.tif, soc: 0}}\n"
                               "  - {name: b, path: vols/v1.tif, soc: 1, voxel_size_nm: 40}\n")
    entries = read_manifest(yaml_path)
    assert [e.name for e in entries] == ["a", "b"] and entries[1].voxel_size_nm == 40.0


def test_manifest_errors_name_file_row_and_column(tmp_path):
    write_tiff(tmp_path / "v0.tif", blob_labels((16, 16, 16), 0))
    cases = [
        ("path,voltage\nv0.tif,3.7\n", ValueError, r"m\.csv: missing column 'soc'"),
        ("path,soc\nv0.tif,0.1\nv0.tif,high\n", ValueError,
         r"m\.csv row 2: column 'soc' = 'high' is not a number"),
        ("name,path,soc,time_h\na,v0.tif,0.1,0\nb,v0.tif,0.5,x\n", ValueError,
         r"row 2 \(name=b\): column 'time_h' = 'x' is not a number"),
        ("path,soc\nv0.tif,0.1\nmissing.tif,0.5\n", FileNotFoundError,
         r"row 2: column 'path' = 'missing.tif': .*missing\.tif does not exist"),
        ("path,soc\nv0.tif,50\n", ValueError, r"row 1: column 'soc' = '50' is outside 0..1"),
        ("path,soc\nv0.tif,\n", ValueError, r"row 1: column 'soc' is missing or empty"),
        ("path,soc\nv0.tif,0\nv0.tif,1\n", ValueError, r"duplicate state names \['v0'\]"),
        ("path,soc\n", ValueError, "no states"),
    ]
    for text, error, message in cases:
        with pytest.raises(error, match=message):
            read_manifest(write_manifest(tmp_path / "m.csv", text))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="unsupported extension"):
        read_manifest(write_manifest(tmp_path / "m.txt", "path,soc\n"))


# --------------------------------------------------------------------------- statistics
def test_blocks_and_particle_summary_match_whole_volume(electrode):
    slices = block_slices(electrode.shape, (3, 3, 3))
    assert len(slices) == 27 and sum(electrode[s].size for s in slices) == electrode.size
    with pytest.raises(ValueError, match="too many"):
        block_slices((20, 20, 20), (3, 1, 1))
    state = analyse_state(electrode, PHASES, 80.0, FAST_STATS, blocks=(2, 2, 2))
    summary = particle_summary(state.particles, None, state.total_volume_um3)
    for key in ("particle_count", "mean_diameter_um", "d10_um", "d50_um", "d90_um",
                "d50_number_um", "crack_porosity", "mean_sphericity"):
        assert summary[key] == pytest.approx(state.row[f"{key}/NMC"], rel=1e-9), key
    # volume fraction: the block mean is the whole value (equal blocks)
    j = state.block_columns.index("volume_fraction/NMC")
    assert state.block_values[:, j].mean() == pytest.approx(state.row["volume_fraction/NMC"])
    cis = bootstrap_intervals(state, n_resamples=300, confidence=0.9, seed=1)
    for column in ("volume_fraction/NMC", "specific_surface_area_um-1/CBD", "d50_um/NMC",
                   "surface_fraction_to_CBD/NMC", "particle_volume_fraction/NMC"):
        ci, value = cis[column], state.row[column]
        assert ci["ci_low"] < value < ci["ci_high"], column
        assert ci["se"] > 0
    assert cis == bootstrap_intervals(state, n_resamples=300, confidence=0.9, seed=1)


def ball_grid(radius: float, seed: int) -> np.ndarray:
    """(48, 48, 48) labels: 64 separate NMC balls (radius ± 0.5 voxel) in pore."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:48, :48, :48]
    labels = np.full((48, 48, 48), 2, np.uint8)
    for cz in range(6, 48, 12):
        for cy in range(6, 48, 12):
            for cx in range(6, 48, 12):
                r = radius + rng.uniform(-0.5, 0.5)
                labels[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r] = 0
    return labels


def test_compare_states_detects_a_change_and_not_a_non_change(electrode):
    a = analyse_state(electrode, PHASES, 80.0, FAST_STATS)
    same = compare_states(a, a, paired=True, n_resamples=999)
    assert not any(r["significant"] for r in same)
    a = analyse_state(ball_grid(5.0, 0), PHASES, 80.0, FAST_STATS)
    b = analyse_state(ball_grid(4.0, 1), PHASES, 80.0, FAST_STATS)
    assert a.row["particle_count/NMC"] > 20 and b.row["particle_count/NMC"] > 20
    rows = {(r["statistic"], r["test"]): r for r in compare_states(a, b, paired=True)}
    vf = rows[("volume_fraction/NMC", "paired_permutation_mean (blocks)")]
    assert vf["difference"] < 0 and vf["significant"] and vf["n_a"] == 27
    ks = rows[("diameter_um/NMC", "ks_2samp")]
    assert ks["effect"] > 0.9 and ks["significant"]
    mean = rows[("diameter_um/NMC", "permutation_mean")]
    assert mean["difference"] < 0 and mean["significant"]
    unpaired = {(r["statistic"], r["test"]) for r in compare_states(a, b, paired=False)}
    assert ("volume_fraction/NMC", "permutation_mean (blocks)") in unpaired


# --------------------------------------------------------------------------- registration, tracking
def test_registration_recovers_a_known_shift():
    big = generate_microstructure(MicrostructureConfig(shape=(56, 56, 56), voxel_size_nm=80.0), 2)
    ref = big[4:52, 4:52, 4:52]
    for shift in ([3, -2, 1], [0, 4, -4]):
        s = np.array(shift)
        moving = big[4 + s[0]:52 + s[0], 4 + s[1]:52 + s[1], 4 + s[2]:52 + s[2]]
        found, _ = estimate_shift(ref == 0, moving == 0)
        assert found.tolist() == shift
        fine, _ = estimate_shift(ref == 0, moving == 0, upsample_factor=4)
        assert np.allclose(fine, shift, atol=0.25)
    shifts = register_series([ref == 0, moving == 0], reference="first")
    crops = common_crop([ref.shape, moving.shape], shifts)
    assert np.array_equal(ref[crops[0]], moving[crops[1]])
    assert ref[crops[0]].shape == (48, 44, 44)
    with pytest.raises(ValueError, match="same shape"):
        estimate_shift(ref, moving[:-1])


def test_match_particles_by_overlap(electrode):
    regions, _ = separate_particles(electrode == 0)
    n = int(regions.max())
    perm = np.random.default_rng(0).permutation(n) + 1
    relabelled = np.concatenate([[0], perm])[regions]
    from scipy import ndimage

    shrunk = np.where(ndimage.binary_erosion(regions > 0), relabelled, 0)
    m = match_particles(regions, shrunk)
    assert len(m["id_a"]) >= 0.9 * n
    assert np.array_equal(perm[m["id_a"] - 1], m["id_b"])
    res = track_particles(regions, shrunk, regions > 0, shrunk > 0, 0.08)
    assert res["summary"]["matched"] == len(m["id_a"])
    assert res["summary"]["median_volume_change_percent"] < -10
    with pytest.raises(ValueError, match="same shape"):
        match_particles(regions, regions[:-1])


# --------------------------------------------------------------------------- end to end
def test_evolve_recovers_the_simulated_trends(series, tmp_path):
    import evolve

    out = tmp_path / "out"
    cfg = compose("evolve", [f"manifest={series}", f"output_dir={out}", "register=true",
                             "track=true", *FAST])
    result = evolve.evolve(cfg)
    truth = [json.loads((series.parent / f"state_{k:02d}.json").read_text()) for k in range(3)]
    # registration: the shift of each state relative to the first
    assert result["registration"]["shift_vox"] == [t["shift_vox"] for t in truth]
    with open(out / "evolution.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["state_00", "state_01", "state_02"]

    def col(name: str) -> np.ndarray:
        return np.array([float(r[name]) for r in rows])

    assert np.all(np.diff(col("crack_porosity/NMC")) > 0)
    assert np.all(np.diff(col("volume_fraction/NMC")) < 0)
    assert np.all(np.diff(col("surface_fraction_to_CBD/NMC")) < 0)
    assert np.all(np.diff(col("particle_volume_fraction/NMC")) < 0)
    # shrinkage: 3 % of particle volume per step, recovered within 1 percentage point by the
    # tracked particles (d50 of ~50 particles in 64³ moves by ±5 % from sampling alone, more
    # than the 1 % radius change per step: it is not asserted here)
    tracked = col("tracked_volume_change_percent/NMC")[1:]
    assert np.all(np.abs(tracked + 3.0) < 1.0), tracked
    for t in result["tracking"]:
        assert t["summary"]["matched_fraction_a"] > 0.8
    # intervals bracket the values; tests of consecutive states written
    vf, lo, hi = col("volume_fraction/NMC"), col("volume_fraction/NMC/ci_low"), col("volume_fraction/NMC/ci_high")
    assert np.all((lo <= vf) & (vf <= hi) & (hi > lo))
    with open(out / "tests.csv") as f:
        tests = list(csv.DictReader(f))
    kinds = {(r["statistic"], r["test"]) for r in tests}
    assert ("diameter_um/NMC", "ks_2samp") in kinds
    assert ("volume_fraction/NMC", "paired_permutation_mean (blocks)") in kinds
    tracked_tests = [r for r in tests if r["statistic"] == "tracked_particle_volume_um3/NMC"]
    assert len(tracked_tests) == 2 and all(r["significant"] == "True" for r in tracked_tests)
    units = json.loads((out / "units.json").read_text(encoding="utf-8"))["columns"]
    assert units["d50_um/NMC"]["unit"] == "µm"
    assert (out / "tracking.csv").stat().st_size > 100
    for png in ("evolution.png", "distributions.png"):
        assert (out / png).stat().st_size > 5000
    assert not list(out.glob(".*tmp*"))


def test_evolve_cli_and_bad_manifest(tmp_path):
    vols = tmp_path / "vols"
    for i in range(2):
        write_tiff(vols / f"s{i}.tif", np.array([85, 170, 0], np.uint8)[blob_labels((24, 24, 24), 30 + i)])
    manifest = write_manifest(tmp_path / "series.yaml", "- {path: vols/s0.tif, soc: 0.2, time_h: 0}\n"
                                                         "- {path: vols/s1.tif, soc: 0.6, time_h: 3}\n")
    out = tmp_path / "cli"
    cmd = [sys.executable, "evolve.py", f"manifest={manifest}", f"output_dir={out}", "voxel_size_nm=40",
           "label_values=[85,170,0]", "x_axis=time_h", "bootstrap.blocks=[1,1,2]", *FAST,
           "statistics.tortuosity=true", "statistics.axes=[0]", "statistics.tortuosity_phases=default",
           "model_parameters=true"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "evolution.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["time_h"]) for r in rows] == [0.0, 3.0]
    # tortuosity: one whole-volume solve per state, no sub-volume interval
    assert float(rows[0]["tortuosity_factor_z/pore"]) > 1
    assert np.isnan(float(rows[0]["tortuosity_factor_z/pore/ci_low"]))
    assert (out / "evolution.png").exists() and not (out / "tracking.csv").exists()
    with open(out / "pybamm_parameters.csv") as f:  # the PyBaMM parameters of each state, vs time
        params = list(csv.DictReader(f))
    assert [float(r["time_h"]) for r in params] == [0.0, 3.0]
    assert float(params[1]["Positive electrode porosity"]) == pytest.approx(float(rows[1]["volume_fraction/pore"]))
    assert (out / "pybamm_parameters.png").stat().st_size > 5000
    assert len(list((out / "pybamm").glob("*_pybamm.py"))) == 2

    import evolve

    bad = write_manifest(tmp_path / "bad.csv", "path,soc\nvols/s0.tif,0.1\nvols/gone.tif,0.5\n")
    target = tmp_path / "never"
    with pytest.raises(FileNotFoundError, match=r"bad\.csv row 2: column 'path' = 'vols/gone.tif'"):
        evolve.evolve(compose("evolve", [f"manifest={bad}", f"output_dir={target}",
                                         "voxel_size_nm=40", *FAST]))
    with pytest.raises(ValueError, match="no voxel size"):
        evolve.evolve(compose("evolve", [f"manifest={manifest}", f"output_dir={target}",
                                         "label_values=[85,170,0]", *FAST]))
    with pytest.raises(ValueError, match=r"s0\.tif \(manifest row 1\): label values \[85, 170\]"):
        evolve.evolve(compose("evolve", [f"manifest={manifest}", f"output_dir={target}",
                                         "voxel_size_nm=40", *FAST]))
    assert not target.exists()  # nothing half-written
