"""Issue 16: defaults that fit any scan (e0 from the data, windows inside the energies), the
shipped end-members, references on their overlap, end-members from the data, SOC saturation,
point-spectra tables and electrochemistry files. Spectra are built per voxel from the
simulator's shifted end-members (no tomography: fast, exact truth)."""

from __future__ import annotations

import numpy as np
import pytest

from src.simulation.xanes_scan import SIMULATION_RANGES, load_end_members
from src.xanes.edge import (
    EdgeRanges,
    find_e0,
    fit_ranges_to_scan,
    half_jump_energy,
    normalize_spectra,
)
from src.xanes.maps import XanesAnalysisConfig, analyze, soc_saturation

DEFAULTS = EdgeRanges(e0=None, pre=(-60.0, -14.0), post=(25.0, 105.0), edge=(-12.0, 12.0), white_line=(-2.0, 14.0))
SCANS = {
    "narrow 40 eV, 0.4 eV steps": np.arange(8330.0, 8370.01, 0.4),
    "medium 120 eV, 1 eV steps": np.arange(8290.0, 8410.01, 1.0),
    "wide 1.4 keV, 4 eV steps": np.arange(8060.0, 9460.01, 4.0),
    "narrow non-uniform": np.unique(np.r_[np.arange(8330.0, 8340.0, 1.0), np.arange(8340.0, 8360.0, 0.3),
                                          np.arange(8360.0, 8371.0, 1.0)]),
    "wide non-uniform": np.unique(np.r_[np.arange(8060.0, 8330.0, 10.0), np.arange(8330.0, 8370.0, 0.5),
                                        np.arange(8370.0, 9500.1, 20.0)]),
}


@pytest.fixture(scope="module")
def members():
    return load_end_members(None, 8346.0, 8348.5)  # the shipped end-members: no ../shared needed


def _spectra(members, energies, soc, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    bg = 0.012 * (energies / 8346.0) ** -2.8
    y = bg[:, None] + 0.01 * (members.at(energies) @ np.stack([1 - soc, soc]))
    return y + rng.normal(0.0, noise, y.shape) if noise else y


def _truth(members, energies, soc, ranges):
    """Half-jump energy of the noiseless spectra, normalised with ``ranges`` at the scan energies
    and crossed on a 0.05 eV grid (the simulator's definition)."""
    y = _spectra(members, energies, soc)
    n = normalize_spectra(energies, y, ranges)
    fine = np.arange(max(energies[0], members.energies[0]), min(energies[-1], members.energies[-1]), 0.05)
    dense = _spectra(members, fine, soc)
    pre = n.pre_coef[0] + (fine - ranges.e0)[:, None] * n.pre_coef[1]
    return half_jump_energy(fine, (dense - pre) / n.jump, ranges.absolute("edge"))


@pytest.mark.parametrize("name", list(SCANS))
def test_defaults_fit_narrow_medium_and_wide_scans(members, name):
    energies = SCANS[name]
    soc = np.linspace(0.0, 1.0, 41)
    res = analyze(energies, _spectra(members, energies, soc), None,
                  [(members.energies, members.discharged), (members.energies, members.charged)], ["d", "c"],
                  XanesAnalysisConfig(ranges=DEFAULTS))
    r = res.ranges
    assert 8344.0 < r.e0 < 8350.0, r.describe()  # the maximum derivative, near the edge
    assert r.absolute("pre")[0] >= energies[0] and r.absolute("post")[1] <= energies[-1]
    if energies[-1] - energies[0] < 50:  # narrow: short pre-edge line, flat post-edge
        assert r.post_order == 0 and any("post-edge" in n for n in res.notes)
    edge = res.maps["edge_energy"]
    from scipy.stats import spearmanr

    assert np.isfinite(edge).all() and spearmanr(soc, edge).statistic > 0.99 and edge[-1] - edge[0] > 1.5
    rmse = np.sqrt(np.mean((edge - _truth(members, energies, soc, r)) ** 2))
    assert rmse < 0.1, f"{name}: half-jump RMSE {rmse:.3f} eV ({r.describe()})"
    assert np.sqrt(np.nanmean((res.maps["soc"] - soc) ** 2)) < 0.06


def test_only_a_scan_without_pre_or_post_edge_fails(members):
    with pytest.raises(ValueError, match="no post-edge energies"):
        fit_ranges_to_scan(np.arange(8300.0, 8348.0, 0.5), DEFAULTS, e0=8347.0)
    with pytest.raises(ValueError, match="no pre-edge energies"):
        fit_ranges_to_scan(np.arange(8345.0, 8400.0, 0.5), DEFAULTS, e0=8347.0)
    e = np.arange(8300.0, 8400.0, 0.5)
    assert abs(find_e0(e, _spectra(members, e, np.array([0.0]))[:, 0]) - find_e0(
        e, _spectra(members, e, np.array([1.0]))[:, 0]) + 2.5) < 1.5  # the charged edge lies higher


def test_default_scan_keeps_the_benchmark_windows(members):
    from src.simulation.xanes_scan import default_energies

    e = default_energies()
    fitted, notes = fit_ranges_to_scan(e, SIMULATION_RANGES)
    assert fitted.e0 == SIMULATION_RANGES.e0 and fitted.post_order == 1 and not notes
    for name in ("pre", "post"):  # the same energies as the configured windows
        lo, hi = SIMULATION_RANGES.absolute(name)
        flo, fhi = fitted.absolute(name)
        assert np.array_equal((e >= lo) & (e <= hi), (e >= flo - 1e-9) & (e <= fhi + 1e-9))


def test_from_data_end_members_beyond_the_references(members):
    """A charged end-member 5 eV above the discharged one (beyond LiNiO2): the shipped-like pair
    saturates, end-members from the data give SOC 0-1 within 0.05 of the truth."""
    from src.xanes.edge import load_spectrum
    from src.xanes.references import resolve_reference

    beyond = load_end_members(None, 8346.0, 8351.0)
    e = SCANS["medium 120 eV, 1 eV steps"]
    soc = np.clip(np.random.default_rng(1).uniform(-0.15, 1.15, 1500), 0, 1)
    y = _spectra(beyond, e, soc, noise=1e-4, seed=2)
    refs = [load_spectrum(resolve_reference(f"builtin:{n}")) for n in ("ref_NiO", "ref_LiNiO2")]
    cfg = XanesAnalysisConfig(ranges=DEFAULTS)
    shipped = analyze(e, y, None, refs, ["Ni2", "Ni3"], cfg)
    assert soc_saturation(shipped.maps["soc"])["saturated"]
    from src.xanes.end_members import end_members_from_data
    from src.xanes.maps import mask_edge_shape

    n = normalize_spectra(e, y, shipped.ranges, mask_edge_shape(e, y, np.arange(soc.size), shipped.ranges))
    basis = end_members_from_data(n.norm, shipped.maps["edge_energy"])
    own = analyze(e, y, None, None, ["d", "c"], XanesAnalysisConfig(ranges=shipped.ranges, oxidation_states=(0, 1)),
                  basis=basis)
    err = own.maps["soc"] - soc
    assert np.sqrt(np.nanmean(err ** 2)) < 0.05 and abs(np.nanmean(err)) < 0.02
    assert np.nanmin(own.maps["soc"]) < 0.02 and np.nanmax(own.maps["soc"]) > 0.98


def test_references_on_their_overlap_and_three_end_members(members):
    e = SCANS["wide 1.4 keV, 4 eV steps"]  # wider than the end-members (8205-9000 eV)
    soc = np.linspace(0, 1, 11)
    refs = [(members.energies, members.discharged), (members.energies, members.charged)]
    res = analyze(e, _spectra(members, e, soc), None, refs, ["d", "c"], XanesAnalysisConfig(ranges=DEFAULTS))
    assert np.sqrt(np.mean((res.maps["soc"] - soc) ** 2)) < 0.03
    narrow = [(members.energies[members.energies > 8338], members.discharged[members.energies > 8338])] * 2
    res = analyze(e, _spectra(members, e, soc), None, narrow, ["a", "b"], XanesAnalysisConfig(ranges=DEFAULTS))
    assert any("misses part of the edge window" in n for n in res.notes)
    mid = (members.energies, 0.5 * (members.discharged + members.charged))
    res = analyze(e, _spectra(members, e, soc), None, [refs[0], mid, refs[1]], ["a", "m", "b"],
                  XanesAnalysisConfig(ranges=DEFAULTS, oxidation_states=(2.0, 2.5, 3.0)))
    assert {"weight_a", "weight_m", "weight_b", "soc"} <= set(res.maps)
    assert np.sqrt(np.mean((res.maps["soc"] - soc) ** 2)) < 0.05


def test_shipped_references_are_package_data():
    from importlib import resources

    from src.xanes.references import builtin_reference_dir, resolve_reference

    folder = resources.files("src.xanes") / "data"
    assert (folder / "ref_NiO.txt").is_file() and (folder / "LICENSE-pyxas.txt").is_file()
    assert resolve_reference("builtin:ref_LiNiO2").parent == builtin_reference_dir()
    with pytest.raises(FileNotFoundError, match="not a shipped end-member"):
        resolve_reference("builtin:ref_NiS")
    import tomllib

    from src.config import PROJECT_ROOT

    cfg = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert "data/*.txt" in cfg["tool"]["setuptools"]["package-data"]["src.xanes"]


def test_spectra_tables_and_electrochemistry_files(tmp_path):
    from src.data.io.electrochem import ElectrochemError, read_electrochem
    from src.data.io.spectra import XanesInputError, read_spectra_table

    e = np.arange(8300.0, 8310.0, 1.0)
    (tmp_path / "t.csv").write_text("energy,a,b\n" + "\n".join(f"{x},{x - 8300},{2 * x}" for x in e))
    energies, stack, names = read_spectra_table(tmp_path / "t.csv")
    assert stack.shape == (10, 2) and names == ["a", "b"] and energies[0] == 8300.0
    folder = tmp_path / "spectra"
    folder.mkdir()
    for k in (2, 10, 1):
        (folder / f"p{k}.txt").write_text("\n".join(f"{x / 1000} {k * x}" for x in e))  # keV
    energies, stack, names = read_spectra_table(folder)
    assert names == ["p1", "p2", "p10"] and np.allclose(stack[0], [8300, 16600, 83000])
    (tmp_path / "bad.csv").write_text("8300,1\n8299,2\n8301,3\n")
    with pytest.raises(XanesInputError, match="bad.csv: energies .* strictly increasing"):
        read_spectra_table(tmp_path / "bad.csv")
    mpt = tmp_path / "cell.mpt"
    mpt.write_text("EC-Lab ASCII FILE\nNb header lines : 4\n\nmode\ttime/s\tEwe/V\t(Q-Qo)/mA.h\n"
                   "1\t0,0\t3,7000\t0,000\n1\t3600,0\t4,1000\t0,500\n")
    ec = read_electrochem(mpt)
    assert np.allclose(ec["voltage_V"], [3.7, 4.1]) and np.allclose(ec["charge_mAh"], [0, 0.5])
    (tmp_path / "cell.csv").write_text("time_s,voltage,current_mA\n0,3.7,1.0\n3600,3.9,1.0\n7200,4.1,1.0\n")
    assert np.allclose(read_electrochem(tmp_path / "cell.csv")["charge_mAh"], [0, 1, 2])
    (tmp_path / "novolt.csv").write_text("time_s,current_mA\n0,1\n1,1\n")
    with pytest.raises(ElectrochemError, match="novolt.csv: no voltage column"):
        read_electrochem(tmp_path / "novolt.csv")
    (tmp_path / "notime.mpt").write_text("Nb header lines : 2\nEwe/V\tI/mA\n3,7\t1\n3,8\t1\n")
    with pytest.raises(ElectrochemError, match="notime.mpt: no time column"):
        read_electrochem(tmp_path / "notime.mpt")
