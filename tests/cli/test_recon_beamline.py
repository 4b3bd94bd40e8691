"""Beamline files into reconstruct.py: Data Exchange HDF5 found by itself (flats, darks, angles),
centre of rotation found by itself, TXRM/XRM, resumable output and the bad inputs refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data.projections import open_scan, read_txrm
from src.recon import minus_log, normalize, recon
from src.recon.operators import project
from src.simulation.sinograms import random_ellipses
from tests.helpers import SHARED_DATA, compose

h5py = pytest.importorskip("h5py")

XRADIA = SHARED_DATA / "xradia"
COLS, ROWS, ANGLES, CENTER = 64, 4, 120, 34.3  # the axis is 2.3 columns right of the middle


def _simulate(rows: int, centers: list[float], seed: int = 7) -> dict[str, np.ndarray]:
    """Raw counts of an ellipse volume with the axis at ``centers[r]`` for row ``r``."""
    obj = random_ellipses(rows, 48, torch.Generator().manual_seed(seed)).numpy()
    obj = np.pad(obj, ((0, 0), (8, 8), (8, 8))) * 0.05  # (rows, 64, 64), attenuation per pixel
    theta_deg = np.linspace(0, 180, ANGLES, endpoint=False)
    theta = np.deg2rad(theta_deg)
    line = np.concatenate([project(obj[r:r + 1], theta, center=centers[r], n_det=COLS)
                           for r in range(rows)], axis=1)
    rng = np.random.default_rng(seed)
    flat_level, dark_level = 20000.0, 100.0
    counts = (rng.poisson(flat_level * np.exp(-line)) + dark_level).astype(np.uint16)
    flats = (rng.poisson(flat_level, (3, rows, COLS)) + dark_level).astype(np.uint16)
    darks = np.full((2, rows, COLS), dark_level, np.uint16)
    return {"counts": counts, "flats": flats, "darks": darks, "theta_deg": theta_deg,
            "theta": theta, "obj": obj}


def _write_dx(path: Path, sim: dict[str, np.ndarray], **replace: np.ndarray | None) -> Path:
    parts = {"exchange/data": sim["counts"], "exchange/data_white": sim["flats"],
             "exchange/data_dark": sim["darks"], "exchange/theta": sim["theta_deg"]}
    parts.update({f"exchange/{k}": v for k, v in replace.items()})
    with h5py.File(path, "w") as fh:
        for key, value in parts.items():
            if value is not None:
                fh[key] = value
    return path


@pytest.fixture(scope="module")
def sim() -> dict[str, np.ndarray]:
    return _simulate(ROWS, [CENTER] * ROWS)


@pytest.fixture(scope="module")
def dx_file(sim, tmp_path_factory) -> Path:
    return _write_dx(tmp_path_factory.mktemp("dx") / "scan.h5", sim)


def run(overrides: list[str]):
    import reconstruct

    return reconstruct.reconstruct(compose("reconstruct", [*overrides, "progress=false"]))


def _metadata(path: Path) -> dict:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return json.loads(tif.pages[0].description)


def test_data_exchange_with_input_and_output_only(sim, dx_file, tmp_path):
    out = tmp_path / "vol.tif"
    vol = np.asarray(run([f"input={dx_file}", f"output={out}"]))
    # FBP with explicit flats, darks, angles (radians) and the true centre
    line = minus_log(normalize(sim["counts"], sim["flats"], sim["darks"]))
    ref = recon(line, sim["theta"], center=CENTER)
    assert vol.shape == ref.shape == (ROWS, COLS, COLS)
    corr = np.corrcoef(vol.ravel(), ref.ravel())[0, 1]
    rel = np.linalg.norm(vol - ref) / np.linalg.norm(ref)
    assert corr > 0.995 and rel < 0.1, (corr, rel)  # the centre found differs by < 0.5 px
    assert np.corrcoef(vol.ravel(), sim["obj"].ravel())[0, 1] > 0.9
    meta = _metadata(out)
    assert abs(meta["center"] - CENTER) <= 0.5, meta["center_info"]
    assert meta["flats"] and meta["darks"] and meta["center_info"]["method"] == "vo"
    assert "exchange/theta (deg)" in meta["sources"]["theta"]
    assert (tmp_path / "vol_preview.png").is_file()
    assert not list(tmp_path.glob(".vol.tif*"))  # no partial files left


def test_center_auto_within_half_a_pixel_and_tilt_fit(tmp_path):
    from src.inference.scan_reconstruction import ReconstructionSettings, auto_center

    for true in (29.6, 36.75):
        scan_sim = _simulate(3, [true] * 3, seed=11)
        path = _write_dx(tmp_path / f"c{true}.h5", scan_sim)
        cfg = compose("reconstruct", [f"input={path}", f"output={tmp_path / 'x.tif'}"])
        with open_scan(path) as scan:
            centers, info = auto_center(scan, scan.theta, 0, 3, ReconstructionSettings.from_config(cfg))
        assert np.all(np.abs(centers - true) <= 0.5), info
    tilted = [30.0 + 0.5 * r for r in range(6)]  # a tilted axis: 0.5 column per row
    path = _write_dx(tmp_path / "tilt.h5", _simulate(6, tilted, seed=3))
    cfg = compose("reconstruct", [f"input={path}", f"output={tmp_path / 'x.tif'}",
                                  "center_fit=tilt", "center_rows=6"])
    with open_scan(path) as scan:
        centers, info = auto_center(scan, scan.theta, 0, 6, ReconstructionSettings.from_config(cfg))
    assert info["fit"] == "tilt" and abs(info["slope_px_per_row"] - 0.5) < 0.15, info
    assert np.abs(centers - np.asarray(tilted)).max() <= 0.6, (centers, info)


def test_center_scan_writes_png(dx_file, tmp_path):
    out = tmp_path / "vol.tif"
    assert run([f"input={dx_file}", "center=scan", "center_range=[30,38,2]",
                f"output={out}"]) is None
    assert (tmp_path / "vol_center_scan.png").is_file() and not out.exists()


@pytest.mark.parametrize("suffix", [".tif", ".h5", ".zarr"])
def test_overrides_and_resume_after_a_kill(sim, dx_file, tmp_path, monkeypatch, suffix):
    from src.inference import scan_reconstruction

    np.savetxt(tmp_path / "theta.txt", sim["theta_deg"])
    common = [f"input={dx_file}", f"theta={tmp_path / 'theta.txt'}", "theta_unit=deg",
              f"center={CENTER}", "batch_size=1"]
    whole = np.array(run([*common, f"output={tmp_path / 'whole.tif'}"]))
    calls = {"n": 0}
    real = scan_reconstruction.recon

    def dies_on_third_block(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(scan_reconstruction, "recon", dies_on_third_block)
    out = tmp_path / f"resumed{suffix}"
    state = tmp_path / f".resumed{suffix}.partial.json"
    with pytest.raises(KeyboardInterrupt):
        run([*common, f"output={out}"])
    assert not out.exists() and state.is_file()
    assert json.loads(state.read_text())["done"] == 2
    calls["n"] = -100  # no more kills; count the blocks of the second run
    vol = np.array(run([*common, f"output={out}"]))
    assert calls["n"] == -100 + ROWS - 2  # only the two missing blocks were reconstructed
    np.testing.assert_array_equal(vol, whole)
    assert out.exists() and not state.exists() and (tmp_path / "resumed_preview.png").is_file()


def test_bad_inputs_are_refused_before_writing(sim, dx_file, tmp_path):
    out = tmp_path / "bad.tif"
    o = f"output={out}"
    no_theta = _write_dx(tmp_path / "no_theta.h5", sim, theta=None)
    with pytest.raises(ValueError, match=r"no_theta.h5: the file has no angles .*exchange/theta"):
        run([f"input={no_theta}", o])
    short = _write_dx(tmp_path / "short.h5", sim, theta=sim["theta_deg"][:-3])
    with pytest.raises(ValueError, match=r"short.h5:exchange/theta: theta has 117 angles for 120"):
        run([f"input={short}", o])
    np.savetxt(tmp_path / "t.txt", sim["theta_deg"][:10])
    with pytest.raises(ValueError, match="theta has 10 angles for 120"):
        run([f"input={dx_file}", f"theta={tmp_path / 't.txt'}", "theta_unit=deg", o])
    bad_flat = _write_dx(tmp_path / "flat.h5", sim, data_white=sim["flats"][:, :, :-1])
    with pytest.raises(ValueError, match=r"flat.h5: flat 'exchange/data_white' has shape"):
        run([f"input={bad_flat}", o])
    bad_dark = _write_dx(tmp_path / "dark.h5", sim, data_dark=sim["darks"][:, :-1])
    with pytest.raises(ValueError, match=r"dark.h5: dark 'exchange/data_dark' has shape"):
        run([f"input={bad_dark}", o])
    with pytest.raises(ValueError, match=r"^center='abc': expected a column number, auto or scan$"):
        run([f"input={dx_file}", "center=abc", o])
    with pytest.raises(ValueError, match=r"center=80.5: outside the detector \(columns 0 .. 64\)"):
        run([f"input={dx_file}", "center=80.5", o])
    with pytest.raises(KeyError, match=r"scan.h5: no dataset 'exchange/nope'"):
        run([f"input={dx_file}", "dataset=exchange/nope", o])
    with pytest.raises(KeyError, match=r"scan.h5: no dataset 'white' \(flat\)"):
        run([f"input={dx_file}", f"flat={dx_file}", "flat_dataset=white", o])
    (tmp_path / "empty.txrm").write_bytes(b"not an OLE file")
    with pytest.raises(ValueError, match=r"empty.txrm: not an OLE2 compound file"):
        run([f"input={tmp_path / 'empty.txrm'}", o])
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        run([f"input={tmp_path / 'missing.h5'}", o])
    assert not out.exists() and not list(tmp_path.glob(".bad.tif*"))


def test_txrm_reference_file():
    path = XRADIA / "txrm_test_chip_tomo.txrm"
    if not path.is_file():
        pytest.skip(f"Xradia reference data not found at {XRADIA}")
    pytest.importorskip("olefile")
    with read_txrm(path) as scan:
        assert scan.shape == (7, 256, 256)
        np.testing.assert_allclose(np.rad2deg(scan.theta), np.arange(-45, 46, 15), atol=0.05)
        assert abs(scan.pixel_size_nm - 155.8) < 0.1 and abs(scan.energy_ev - 9200) < 1
        block = scan.rows(100, 104)
        assert block.shape == (7, 4, 256) and block.dtype == np.float32 and block.max() > 0
        full = np.asarray(scan.data[:])
        np.testing.assert_array_equal(block, full[:, 100:104])
    with read_txrm(XRADIA / "test_chip00.xrm") as frame:
        assert frame.shape == (1, 512, 512) and abs(frame.energy_ev - 7191) < 1


def test_txrm_without_images_is_refused(tmp_path):
    """A valid OLE2 file whose image streams are gone (their directory names changed in place:
    same length, UTF-16) is refused with one clear error, before anything is written."""
    path = XRADIA / "txrm_test_chip_tomo.txrm"
    if not path.is_file():
        pytest.skip(f"Xradia reference data not found at {XRADIA}")
    pytest.importorskip("olefile")
    raw = path.read_bytes()
    name, renamed = "ImageData".encode("utf-16-le"), "ImageDatX".encode("utf-16-le")
    assert name in raw
    (tmp_path / "noimages.txrm").write_bytes(raw.replace(name, renamed))
    out = tmp_path / "vol.tif"
    with pytest.raises(ValueError, match=r"noimages.txrm: no images \(streams 'ImageData\*/Image\*'"):
        run([f"input={tmp_path / 'noimages.txrm'}", f"output={out}"])
    assert not out.exists()


def test_paganin_on_row_blocks_matches_the_whole_stack(sim, dx_file, tmp_path):
    from src.recon import retrieve_phase

    phase = ["phase_retrieval=true", "pixel_size_nm=50", "energy_ev=8000", "distance_cm=0.05",
             "alpha=0.01", f"center={CENTER}", "batch_size=1"]
    out = tmp_path / "phase.tif"
    vol = np.asarray(run([f"input={dx_file}", *phase, f"output={out}"]))
    trans = normalize(sim["counts"], sim["flats"], sim["darks"])
    ref = recon(minus_log(retrieve_phase(trans, pixel_size=50e-7, dist=0.05, energy=8.0,
                                         alpha=0.01)), sim["theta"], center=CENTER)
    np.testing.assert_allclose(vol, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    meta = _metadata(out)
    assert meta["preprocessing"]["phase_retrieval"] and meta["preprocessing"]["paganin"]["alpha"] == 0.01
    with pytest.raises(ValueError, match="scan.h5: phase_retrieval=true needs the pixel size"):
        run([f"input={dx_file}", "phase_retrieval=true", f"center={CENTER}",
             f"output={tmp_path / 'x.tif'}"])
