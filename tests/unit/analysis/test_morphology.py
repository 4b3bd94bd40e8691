"""3D statistics against geometry with known answers, against taufactor, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.analysis.morphology import (
    check_labels,
    check_voxel_size,
    compute_statistics,
    particle_statistics,
    remap_labels,
    surface_statistics,
    volume_fractions,
)
from src.analysis.statistics_table import flatten_statistics, units
from src.analysis.transport import percolating_fraction, tortuosity_factor
from tests.helpers import blob_labels, shared_data

PHASES = ["NMC", "CBD", "pore"]


def balls(shape: tuple[int, int, int], centres, radii) -> np.ndarray:
    """Bool volume with balls of the given centres/radii (voxels)."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    out = np.zeros(shape, bool)
    for (cz, cy, cx), r in zip(centres, radii, strict=True):
        out |= (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    return out


@pytest.mark.parametrize("radius", [10, 12, 15])
def test_sphere_surface_to_volume_is_3_over_r(radius):
    n = 2 * radius + 12
    sphere = balls((n,) * 3, [((n - 1) / 2,) * 3], [radius])
    voxel_um = 0.05
    s = surface_statistics(sphere.astype(np.uint8), ["pore", "NMC"], voxel_um)
    expected = 3.0 / (radius * voxel_um)
    assert s["surface_to_volume_um-1"]["NMC"] == pytest.approx(expected, rel=0.05)
    assert s["specific_surface_area_um-1"]["NMC"] == pytest.approx(
        s["surface_area_um2"]["NMC"] / (n**3 * voxel_um**3))
    assert s["surface_fraction"]["NMC"]["pore"] == pytest.approx(1.0, abs=1e-6)


def test_plane_interface_area_is_exact():
    lab = np.zeros((24, 20, 30), np.uint8)
    lab[12:] = 1
    s = surface_statistics(lab, ["a", "b"], 0.1)
    assert s["interface_area_um2"]["a-b"] == pytest.approx(20 * 30 * 0.01, rel=1e-6)


def test_half_coated_sphere_coverage():
    z = np.arange(40)[:, None, None]
    core = balls((40, 40, 40), [(19.5, 19.5, 19.5)], [12])
    shell = balls((40, 40, 40), [(19.5, 19.5, 19.5)], [16]) & ~core & (z < 19.5)
    lab = np.full((40, 40, 40), 2, np.uint8)
    lab[core], lab[shell] = 0, 1
    s = surface_statistics(lab, PHASES, 1.0)
    cover = s["surface_fraction"]["NMC"]
    assert cover["CBD"] == pytest.approx(0.5, abs=0.03)
    assert cover["CBD"] + cover["pore"] == pytest.approx(1.0, abs=1e-3)
    assert s["interface_area_um2"]["NMC-CBD"] == pytest.approx(
        cover["CBD"] * s["surface_area_um2"]["NMC"], rel=0.05)


def test_sphere_sizes_d50_and_sphericity():
    centres = [(16, 16, 16), (16, 48, 48), (48, 16, 48), (48, 48, 16)]
    mask = balls((64, 64, 64), centres, [12] * 4)
    p = particle_statistics(mask, 0.04)
    assert p["particle_count"] == 4 and p["particle_count_border"] == 0
    for key in ("d10_um", "d50_um", "d90_um", "d50_number_um"):
        assert p[key] == pytest.approx(2 * 12 * 0.04, rel=0.05)
    assert p["mean_sphericity"] == pytest.approx(1.0, abs=0.03)
    assert p["crack_porosity"] == pytest.approx(0.0, abs=1e-9)


def test_mixed_radii_and_border_flag():
    mask = balls((72, 72, 72), [(18, 18, 18), (50, 50, 20), (20, 50, 50), (66, 10, 60)], [10, 12, 15, 8])
    p = particle_statistics(mask, 1.0)
    d = np.array(p["particles"]["diameter_um"])
    border = np.array(p["particles"]["touches_border"])
    assert border.sum() == 1 and p["particle_count"] == 3
    np.testing.assert_allclose(np.sort(d[~border]), [20, 24, 30], rtol=0.05)
    assert p["d50_number_um"] == pytest.approx(24, rel=0.05)


def test_touching_spheres_are_separated():
    mask = balls((48, 48, 64), [(24, 24, 22), (24, 24, 42)], [12, 12])  # centres 20 apart
    p = particle_statistics(mask, 1.0)
    assert p["particle_count_all"] == 2
    np.testing.assert_allclose(p["particles"]["diameter_um"], [24, 24], rtol=0.08)


def test_cracked_sphere_crack_porosity():
    sphere = balls((40, 40, 40), [(20, 20, 20)], [15])
    z, y, x = np.ogrid[:40, :40, :40]
    inner = balls((40, 40, 40), [(20, 20, 20)], [11])
    crack = inner & (np.abs(z - 20 + 0.3 * (y - 20)) < 1.0)  # tilted internal crack
    p = particle_statistics(sphere & ~crack, 1.0)
    assert p["particle_count_all"] == 1
    assert p["crack_porosity"] == pytest.approx(crack.sum() / sphere.sum(), rel=1e-9)
    assert p["particles"]["crack_porosity"][0] == pytest.approx(crack.sum() / sphere.sum())
    # a crack opening to the surface is closed by closing_radius=2
    open_crack = sphere & (np.abs(x - 20) < 1.0) & (z > 20)
    q = particle_statistics(sphere & ~open_crack, 1.0, closing_radius=2)
    assert q["particle_count_all"] == 1
    assert q["crack_porosity"] == pytest.approx(open_crack.sum() / sphere.sum(), rel=0.15)


def test_connectivity_of_a_slab():
    mask = np.zeros((20, 20, 20), bool)
    mask[5:10] = True  # slab across y and x
    mask[15:17, 2:4, 2:4] = True  # isolated blob
    frac = percolating_fraction(mask)
    slab = 5 * 20 * 20
    assert frac["z"] == 0.0
    assert frac["y"] == frac["x"] == pytest.approx(slab / (slab + 8))


def test_tortuosity_straight_channels():
    mask = np.zeros((24, 24, 24), bool)
    mask[:, ::4, ::4] = True
    mask[:, 1::4, ::4] = True  # 2-voxel-wide straight channels along z
    along = tortuosity_factor(mask, 0)
    assert along["converged"]
    assert along["tortuosity_factor"] == pytest.approx(1.0, abs=1e-2)
    assert along["relative_diffusivity"] == pytest.approx(mask.mean(), rel=1e-2)
    assert tortuosity_factor(mask, 2)["tortuosity_factor"] == math.inf


def test_tortuosity_matches_taufactor_on_random_volume():
    taufactor = pytest.importorskip("taufactor")
    mask = blob_labels((32, 32, 32), seed=3) == 2
    for axis in (0, 1, 2):
        ours = tortuosity_factor(mask, axis)
        solver = taufactor.Solver(np.moveaxis(mask, axis, 0).astype(np.uint8), device="cpu")
        ref = float(solver.solve(verbose=False)[0])
        assert ours["tortuosity_factor"] == pytest.approx(ref, rel=1e-2)
        assert 1.0 < ours["tortuosity_factor"] < 10


def test_volume_fractions_exact_and_flatten_names():
    lab = blob_labels((24, 28, 32), seed=5)
    vf = volume_fractions(lab, PHASES)
    counts = np.bincount(lab.ravel(), minlength=3)
    assert [vf[p] for p in PHASES] == [c / lab.size for c in counts]
    stats = compute_statistics(lab, PHASES, 40, tortuosity=True, tortuosity_phases=["pore"],
                               axes=(0,), particles={"min_voxels": 1})
    row = flatten_statistics(stats)
    assert row["volume_fraction/NMC"] == vf["NMC"]
    for name in ("specific_surface_area_um-1/CBD", "interface_area_um2/NMC-CBD",
                 "surface_fraction_to_CBD/NMC", "surface_fraction_to_pore/NMC",
                 "tortuosity_factor_z/pore", "relative_diffusivity_z/pore", "d50_um/NMC",
                 "d50_number_um/NMC", "particle_count/NMC", "crack_porosity/NMC",
                 "percolating_fraction_z/CBD", "local_thickness_d50_um/pore", "time_s/surfaces"):
        assert name in row and isinstance(row[name], float), name
    assert "tortuosity_factor_y/pore" not in row
    table = units(row)
    assert set(table) == set(row)
    assert table["specific_surface_area_um-1/CBD"]["unit"] == "µm⁻¹"
    assert table["d50_um/NMC"]["unit"] == "µm"
    assert set(stats["timings_s"]) >= {"volume_fraction", "surfaces", "particles", "tortuosity"}


def test_remap_and_bad_inputs():
    raw = np.array([[[0, 85], [170, 85]]], np.uint8)
    np.testing.assert_array_equal(remap_labels(raw, [85, 170, 0]), [[[2, 0], [1, 0]]])
    with pytest.raises(ValueError, match=r"vol\.tif: label values \[3\] are not in"):
        remap_labels(np.array([0, 3, 85]), [0, 85, 170], source="vol.tif")
    with pytest.raises(ValueError, match="integers"):
        check_labels(np.zeros((4, 4, 4), np.float32), PHASES)
    with pytest.raises(ValueError, match=r"label values \[5\] outside 0..2"):
        check_labels(np.full((4, 4, 4), 5, np.uint8), PHASES)
    with pytest.raises(ValueError, match="3D"):
        check_labels(np.zeros((4, 4), np.uint8), PHASES)
    with pytest.raises(ValueError, match="anisotropic"):
        check_voxel_size([40, 40, 80])
    assert check_voxel_size([40, 40, 40]) == 40.0
    with pytest.raises(ValueError, match="positive"):
        check_voxel_size(-1)
    with pytest.raises(ValueError, match="particle_phase"):
        compute_statistics(np.zeros((8, 8, 8), np.uint8), PHASES, 40, particle_phase="LFP")


def test_shared_volume_fractions_and_ssa_against_taufactor():
    """Real geometry: exact fractions; SSA within 5% of taufactor's marching-cubes value."""
    folder = shared_data("electrode-volumes")
    taufactor_metrics = pytest.importorskip("taufactor.metrics")
    from src.data.io import read_image

    raw = np.asarray(read_image(folder / "taufactor_electrode.tiff"))[:96, :96, :96]
    lab = remap_labels(raw, [85, 170, 0])
    vf = volume_fractions(lab, PHASES)
    for name, value in zip(PHASES, (85, 170, 0), strict=True):
        assert vf[name] == float((raw == value).mean())
    ours = surface_statistics(lab, PHASES, 1.0)["specific_surface_area_um-1"]
    ref = taufactor_metrics.specific_surface_area(
        raw, phases={"NMC": 85, "CBD": 170, "pore": 0}, method="marching_cubes", device="cpu")
    for name in PHASES:
        assert ours[name] == pytest.approx(ref[name], rel=0.05), name


def test_shared_volume_tortuosity_equals_taufactor():
    """Real geometry (48³ crop, pore along each axis): our τ = taufactor's on the same phase."""
    folder = shared_data("electrode-volumes")
    taufactor = pytest.importorskip("taufactor")
    from src.data.io import read_image

    pore = np.asarray(read_image(folder / "taufactor_electrode.tiff"))[:48, :48, :48] == 0
    for axis in (0, 2):
        ours = tortuosity_factor(pore, axis)
        solver = taufactor.Solver(np.moveaxis(pore, axis, 0).astype(np.uint8), device="cpu")
        assert ours["tortuosity_factor"] == pytest.approx(float(solver.solve(verbose=False)[0]), rel=1e-2)


def test_amg_tortuosity_ignores_dead_clusters_and_equals_taufactor_solver():
    """The AMG solve keeps only through-clusters: an isolated blob and a dead-end branch change
    nothing in the flux; both solvers agree on a real-like random phase."""
    mask = np.zeros((20, 16, 16), bool)
    mask[:, 2:4, 2:4] = True  # a straight 2x2 channel along z
    base = tortuosity_factor(mask, 0, solver="amg")
    mask[5:9, 10:14, 10:14] = True  # isolated blob: no flux, but counts in the volume fraction
    mask[:12, 8, 2:4] = True  # dead-end branch touching only the inlet face
    with_dead = tortuosity_factor(mask, 0, solver="amg")
    assert with_dead["relative_diffusivity"] == pytest.approx(base["relative_diffusivity"], rel=1e-4)
    assert with_dead["tortuosity_factor"] == pytest.approx(mask.mean() / base["relative_diffusivity"], rel=1e-4)
    assert with_dead["converged"] and with_dead["flux_mismatch"] < 1e-3
    blob = blob_labels((28, 24, 20), seed=7) == 2
    for axis in (0, 2):
        amg = tortuosity_factor(blob, axis, solver="amg")
        sor = tortuosity_factor(blob, axis, solver="taufactor", conv_crit=1e-3)
        assert amg["tortuosity_factor"] == pytest.approx(sor["tortuosity_factor"], rel=2e-3)
    with pytest.raises(ValueError, match="solver must be one of"):
        tortuosity_factor(blob, 0, solver="multigrid")


def test_tortuosity_in_parallel_processes_equals_serial():
    from src.analysis.transport import tortuosity_many

    lab = blob_labels((40, 36, 32), seed=11)
    tasks = [(lab == 2, 0), (lab != 2, 0), (lab == 2, 2)]
    serial = tortuosity_many(tasks, workers=1)
    parallel = tortuosity_many(tasks, workers=2, min_parallel_voxels=0)
    for s, p in zip(serial, parallel, strict=True):
        assert s["tortuosity_factor"] == pytest.approx(p["tortuosity_factor"], rel=1e-9)


def test_default_tortuosity_is_pore_and_solid_network():
    lab = blob_labels((24, 28, 32), seed=5)
    stats = compute_statistics(lab, PHASES, 40, particle_phase=None, thickness_phases=[], axes=(0, 1, 2),
                               tortuosity_axes=(0,))
    assert set(stats["tortuosity"]) == {"pore", "NMC+CBD"}
    assert set(stats["tortuosity"]["pore"]) == {"z"}
    solid = tortuosity_factor(lab != 2, 0)
    assert stats["tortuosity"]["NMC+CBD"]["z"]["tortuosity_factor"] == pytest.approx(solid["tortuosity_factor"])
    every = compute_statistics(lab, PHASES, 40, particle_phase=None, thickness_phases=[], surface_sigma=0.8,
                               tortuosity_phases="all", axes=(0, 1, 2))
    assert sum(len(v) for v in every["tortuosity"].values()) == 9
    no_pore = compute_statistics(lab, ["a", "b", "c"], 40, particle_phase=None, thickness_phases=[],
                                 axes=(0,))
    assert set(no_pore["tortuosity"]) == {"a", "b", "c"}
    with pytest.raises(ValueError, match="entry 'NMC\\+glue': phase='glue' is not one of"):
        compute_statistics(lab, PHASES, 40, tortuosity_phases=["NMC+glue"])


def test_absent_phase_gets_a_message_per_statistic(caplog):
    lab = blob_labels((20, 22, 24), seed=5)
    lab[lab == 1] = 0  # no CBD
    with caplog.at_level("WARNING"):
        stats = compute_statistics(lab, PHASES, 40, particle_phase=None, thickness_phases=[], axes=(0,),
                                   tortuosity_phases=["pore", "CBD"])
    notes = stats["notes"]
    assert any("'CBD' is absent" in n and "surface" in n for n in notes)
    assert any("'CBD' is absent" in n and "connectivity" in n for n in notes)
    assert any("tortuosity of 'CBD'" in n for n in notes)
    assert not any("'pore'" in n or "'NMC'" in n for n in notes)
    assert "tortuosity of 'CBD'" in caplog.text


def test_voxel_size_in_um_given_as_nm_is_flagged(caplog):
    """Issue 20 case 8: voxel_size_nm=0.04 (µm written as nm) gives d50 ~ 0.0004 µm: a warning
    with the likely fix, not a silent table."""
    from src.simulation.microstructure import MicrostructureConfig, generate_microstructure

    lab = generate_microstructure(MicrostructureConfig(shape=(40, 40, 40), voxel_size_nm=40.0), seed=1)
    with caplog.at_level("WARNING"):
        stats = compute_statistics(lab, PHASES, 0.04, tortuosity=False, thickness_phases=[], axes=(0,),
                                   particles={"exclude_border": False})
    assert any("use voxel_size_nm=40" in n for n in stats["notes"])
    assert "outside the 0.05-100 µm" in caplog.text
    ok = compute_statistics(lab, PHASES, 40.0, tortuosity=False, thickness_phases=[], axes=(0,),
                            particles={"exclude_border": False})
    assert not any("d50" in n for n in ok["notes"])


def test_every_statistic_has_a_progress_bar_and_a_logged_time(monkeypatch, caplog):
    import src.analysis.morphology as morphology

    bars = []

    class Bar:  # records what tqdm is asked to show
        def __init__(self, total, desc, **_kwargs):
            self.total, self.desc, self.n = total, desc, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            self.n += n

    monkeypatch.setattr(morphology, "tqdm", Bar)
    lab = blob_labels((24, 26, 28), seed=3)
    with caplog.at_level("INFO", logger="src.analysis.morphology"):
        stats = compute_statistics(lab, PHASES, 40, axes=(0,), thickness_phases=["pore"])
    shown = {b.desc: (b.n, b.total) for b in bars}
    assert set(shown) == set(stats["timings_s"]) == {"volume_fraction", "surfaces", "particles", "connectivity",
                                                     "local_thickness", "tortuosity"}
    assert shown["surfaces"] == (3, 3) and shown["particles"] == (2, 2) and shown["tortuosity"] == (2, 2)
    assert shown["connectivity"] == (3, 3) and shown["local_thickness"] == (1, 1)
    for key in shown:
        assert any(r.getMessage().startswith(f"{key}: ") and r.getMessage().endswith(" s") for r in caplog.records)


def test_phase_surfaces_in_parallel_processes_equal_serial(monkeypatch):
    import src.analysis.morphology as morphology

    lab = blob_labels((30, 32, 34), seed=8)
    serial = morphology.surface_statistics(lab, PHASES, 0.04, workers=1)
    monkeypatch.setattr(morphology, "PARALLEL_VOXELS", 0)
    parallel = morphology.surface_statistics(lab, PHASES, 0.04, workers=2)
    for key in ("surface_area_um2", "interface_area_um2", "surface_fraction"):
        assert parallel[key] == serial[key], key
