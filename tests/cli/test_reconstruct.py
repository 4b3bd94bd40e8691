"""reconstruct.py: projections (+flat/dark) -> volume with FBP, SIRT and a learned checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data.io import ImageReadError, read_image, write_tiff
from src.recon.fbp import recon
from src.recon.operators import project
from src.simulation.sinograms import attenuation_unit, random_ellipses
from tests.helpers import compose, recon_overrides

ROOT = Path(__file__).resolve().parents[2]
SIZE, ANGLES, ROWS = 32, 16, 3


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> dict[str, Path | np.ndarray]:
    """Raw counts (angles, rows, cols) of an ellipse volume, with flats and darks, on disk."""
    root = tmp_path_factory.mktemp("scan")
    obj = random_ellipses(ROWS, SIZE, torch.Generator().manual_seed(5)).numpy()
    theta = np.linspace(0, np.pi, ANGLES, endpoint=False)
    mu = attenuation_unit(SIZE)  # what the learned data module uses for this size
    line = project(obj * mu, theta, pad=False)  # (angles, rows, cols)
    rng = np.random.default_rng(0)
    flat_level, dark_level = 5000.0, 100.0
    counts = rng.poisson(flat_level * np.exp(-line)) + dark_level
    flats = rng.poisson(flat_level, (4, ROWS, SIZE)) + dark_level
    darks = np.full((2, ROWS, SIZE), dark_level)
    paths = {"tomo": root / "tomo.tif", "flat": root / "flat.tif", "dark": root / "dark.tif",
             "line": root / "line.npy"}
    write_tiff(paths["tomo"], counts.astype(np.float32))
    write_tiff(paths["flat"], flats.astype(np.float32))
    write_tiff(paths["dark"], darks.astype(np.float32))
    np.save(paths["line"], line.astype(np.float32))
    return {**paths, "truth": obj * mu, "root": root}


@pytest.fixture(scope="module")
def lpd_ckpt(tmp_path_factory) -> Path:
    """A tiny LPD trained through train.py for this scan's geometry (16 angles, 32 columns)."""
    import train

    out = tmp_path_factory.mktemp("lpd_run")
    train.train(compose("train", recon_overrides(out, "lpd")))
    return out / "checkpoints" / "best.ckpt"


def run(overrides: list[str]) -> np.ndarray:
    import reconstruct

    return reconstruct.reconstruct(compose("reconstruct", overrides))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_fbp_with_flat_dark(scan, tmp_path):
    out = tmp_path / "vol.tif"
    vol = run([f"input={scan['tomo']}", f"flat={scan['flat']}", f"dark={scan['dark']}",
               "theta=even", "algorithm=fbp", f"output={out}", "batch_size=2"])
    assert vol.shape == (ROWS, SIZE, SIZE) and vol.dtype == np.float32
    assert np.array_equal(read_image(out, mmap=False), vol)
    assert _corr(vol, scan["truth"]) > 0.85
    # the scale is attenuation per voxel: a least-squares fit to the truth is close to 1
    scale = float((vol * scan["truth"]).sum() / (vol * vol).sum())
    assert 0.8 < scale < 1.25


def test_gridrec_matches_fbp(scan, tmp_path):
    pytest.importorskip("finufft", reason="algorithm=gridrec needs finufft (the recon extra)")
    common = [f"input={scan['tomo']}", f"flat={scan['flat']}", f"dark={scan['dark']}",
              "theta=even", "center=16.4", "progress=false"]
    grid = run([*common, "algorithm=gridrec", f"output={tmp_path / 'grid.tif'}"])
    # FBP of the noiseless line integrals, same centre
    ref = recon(np.load(scan["line"]), np.linspace(0, np.pi, ANGLES, endpoint=False), center=16.4)
    assert grid.shape == (ROWS, SIZE, SIZE)
    assert _corr(grid, ref) > 0.95 and _corr(grid, scan["truth"]) > 0.85


def test_sirt_from_line_integrals_npy_with_rows_and_rings(scan, tmp_path):
    vol = run([f"input={scan['line']}", "theta=even", "algorithm=sirt", "num_iter=30", "rows=[1,3]",
               "ring_removal=true", f"output={tmp_path / 'sirt.tif'}"])
    assert vol.shape == (2, SIZE, SIZE)
    assert _corr(vol, scan["truth"][1:3]) > 0.75  # ring removal on 16 clean views costs a little


def test_learned_with_checkpoint(scan, lpd_ckpt, tmp_path):
    out = tmp_path / "lpd.tif"
    vol = run([f"input={scan['tomo']}", f"flat={scan['flat']}", f"dark={scan['dark']}",
               "theta=even", "algorithm=learned", f"ckpt_path={lpd_ckpt}", f"output={out}",
               "batch_size=2"])
    assert vol.shape == (ROWS, SIZE, SIZE) and np.isfinite(vol).all()
    assert out.is_file()
    # a shifted centre swaps the operator inside the net (same shapes): still runs
    vol2 = run([f"input={scan['tomo']}", f"flat={scan['flat']}", f"dark={scan['dark']}",
                "theta=even", "algorithm=learned", f"ckpt_path={lpd_ckpt}", "center=16.5",
                f"output={tmp_path / 'lpd2.tif'}"])
    assert vol2.shape == vol.shape and not np.allclose(vol2, vol)


def test_learned_geometry_mismatch(scan, lpd_ckpt, tmp_path):
    tomo = np.load(scan["line"])[:12]  # 12 angles, the net knows 16
    np.save(tmp_path / "few.npy", tomo)
    with pytest.raises(ValueError, match="trained on sinograms of 16 angles"):
        run([f"input={tmp_path / 'few.npy'}", "theta=even", "algorithm=learned", f"ckpt_path={lpd_ckpt}",
             f"output={tmp_path / 'x.tif'}"])


def test_bad_inputs(scan, tmp_path):
    out = f"output={tmp_path / 'bad.tif'}"
    even = "theta=even"
    np.save(tmp_path / "rank4.npy", np.zeros((2, 2, 2, 2), np.float32))
    with pytest.raises(ImageReadError, match="expected a 2D"):
        run([f"input={tmp_path / 'rank4.npy'}", out])
    np.savetxt(tmp_path / "theta.txt", np.linspace(0, np.pi, ANGLES - 1, endpoint=False))
    with pytest.raises(ValueError, match=f"theta has {ANGLES - 1} angles for {ANGLES} projections"):
        run([f"input={scan['line']}", f"theta={tmp_path / 'theta.txt'}", out])
    transposed = np.load(scan["line"]).transpose(1, 0, 2)  # (rows, angles, cols)
    np.save(tmp_path / "t.npy", transposed)
    np.savetxt(tmp_path / "theta16.txt", np.linspace(0, 180, ANGLES, endpoint=False))
    with pytest.raises(ValueError, match="looks transposed"):
        run([f"input={tmp_path / 't.npy'}", f"theta={tmp_path / 'theta16.txt'}", "theta_unit=deg", out])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run([f"input={scan['line']}", even, "algorithm=learned", f"ckpt_path={tmp_path / 'no.ckpt'}", out])
    torch.save({"state_dict": {}, "hyper_parameters": {"net": {"_target_": "src.models.nets.unet.UNet"}}},
               tmp_path / "seg.ckpt")
    with pytest.raises(ValueError, match="not a learned-reconstruction checkpoint"):
        run([f"input={scan['line']}", even, "algorithm=learned", f"ckpt_path={tmp_path / 'seg.ckpt'}", out])
    with pytest.raises(ValueError, match="needs ckpt_path"):
        run([f"input={scan['line']}", even, "algorithm=learned", out])
    with pytest.raises(ValueError, match="unknown algorithm"):
        run([f"input={scan['line']}", even, "algorithm=art", out])
    np.save(tmp_path / "flat_bad.npy", np.ones((2, ROWS + 1, SIZE), np.float32))
    with pytest.raises(ValueError, match="flat .* has shape"):
        run([f"input={scan['tomo']}", f"flat={tmp_path / 'flat_bad.npy'}", even, out])
    assert not (tmp_path / "bad.tif").exists()


def test_cli_subprocess(scan, tmp_path):
    out = tmp_path / "cli.tif"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "reconstruct.py"), f"input={scan['tomo']}",
         f"flat={scan['flat']}", f"dark={scan['dark']}", "theta=even", "algorithm=fbp",
         f"output={out}",
         f"hydra.run.dir={tmp_path / 'run'}", "progress=false"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_image(out, mmap=False).shape == (ROWS, SIZE, SIZE)


def test_hdf5_input(scan, tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "scan.h5", "w") as fh:
        fh["exchange/data"] = read_image(scan["tomo"], mmap=False)
        fh["exchange/data_white"] = read_image(scan["flat"], mmap=False)
        fh["exchange/data_dark"] = read_image(scan["dark"], mmap=False)
    h5 = tmp_path / "scan.h5"
    vol = run([f"input={h5}", f"flat={h5}", f"dark={h5}", "theta=even",
               f"output={tmp_path / 'h5.tif'}"])
    assert _corr(vol, scan["truth"]) > 0.85
    with pytest.raises(KeyError, match="no dataset"):
        run([f"input={h5}", "dataset=nope", "theta=even", f"output={tmp_path / 'x.tif'}"])
