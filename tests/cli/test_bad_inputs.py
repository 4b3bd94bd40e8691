"""Bad inputs of the commands (issue 20): each is refused with one clear message naming the file
or key, before any work, and nothing is destroyed. In-process calls of the commands' functions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from src.data.io import ImageReadError, write_tiff
from tests.helpers import compose, write_segmentation_checkpoint

CLASSES = ["NMC", "CBD", "pore"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_segmentation_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", 2, tuple(CLASSES))


def _die_at_the_third_tile(monkeypatch) -> None:
    """Make the third tile's prediction raise, like a run killed after two chunks."""
    from src.inference.tiled import TiledPredictor

    real, calls = TiledPredictor.predict_tile, {"n": 0}

    def dies(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TiledPredictor, "predict_tile", dies)


def _predict(ckpt: Path, image: Path | str, out: Path | str, *extra: str):
    import predict

    return predict.predict(compose("predict", [f"ckpt_path={ckpt}", f"input={image}", f"output={out}",
                                               "progress=false", *extra]))


def test_predict_refuses_output_equal_to_input_and_keeps_it(ckpt, tmp_path):
    vol = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    write_tiff(tmp_path / "x.tif", vol)
    with pytest.raises(ValueError, match="output=.*x.tif is also the input"):
        _predict(ckpt, tmp_path / "x.tif", tmp_path / "x.tif", "overwrite=true")
    np.testing.assert_array_equal(np.asarray(__import__("tifffile").imread(tmp_path / "x.tif")), vol)


def test_predict_refuses_unwritable_output_before_work(ckpt, tmp_path):
    write_tiff(tmp_path / "x.tif", np.random.default_rng(0).random((4, 16, 16)).astype(np.float32))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): no unwritable folder")
        with pytest.raises(PermissionError, match="output=.*locked.* is not writable"):
            _predict(ckpt, tmp_path / "x.tif", locked / "seg.zarr")
    finally:
        locked.chmod(stat.S_IRWXU)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="afile is a file"):
        _predict(ckpt, tmp_path / "x.tif", tmp_path / "afile" / "seg.zarr")


@pytest.mark.parametrize("kind, match", [
    ("constant", "grey values are constant"),
    ("nan", "NaN or infinite grey value"),
    ("complex", "must be real numbers, got dtype complex"),
    ("truncated", "truncated or corrupted TIFF|truncated TIFF"),
])
def test_predict_refuses_bad_volumes(ckpt, tmp_path, kind, match):
    rng = np.random.default_rng(1)
    vol = rng.random((6, 16, 16)).astype(np.float32)
    path = tmp_path / "v.tif"
    if kind == "constant":
        write_tiff(path, np.full((6, 16, 16), 7, np.uint16))
    elif kind == "nan":
        vol[3, 4, 5] = np.nan
        write_tiff(path, vol)
    elif kind == "complex":
        path = tmp_path / "v.npy"
        np.save(path, vol + 1j * vol)
    else:
        write_tiff(path, vol)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises((ValueError, ImageReadError), match=match) as info:
        _predict(ckpt, path, tmp_path / "seg.zarr")
    assert str(path.name) in str(info.value)
    assert not (tmp_path / "seg.zarr").exists()


def test_an_error_is_one_line_and_the_traceback_on_request(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "analyze.py", f"volumes={tmp_path}/missing.tif", "voxel_size_nm=40",
           f"output_dir={tmp_path / 'out'}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing.tif" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert "missing.tif" in (tmp_path / "out" / "analyze.log").read_text()
    full = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120,
                          env={**env, "HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr


def test_resume_refuses_an_input_that_changed(ckpt, tmp_path, monkeypatch):
    import time

    from src.inference.volume_prediction import progress_dir

    vol = np.random.default_rng(2).random((6, 16, 16)).astype(np.float32)
    write_tiff(tmp_path / "x.tif", vol)
    out = tmp_path / "seg.zarr"
    _die_at_the_third_tile(monkeypatch)
    with pytest.raises(RuntimeError, match="killed"):
        _predict(ckpt, tmp_path / "x.tif", out, "tiling.chunk=[1,null,null]")
    monkeypatch.undo()
    assert (progress_dir(out) / "manifest.json").exists()
    time.sleep(0.01)
    write_tiff(tmp_path / "x.tif", vol[::-1].copy())  # same size, other content and time
    with pytest.raises(ValueError, match="cannot resume .*input_mtime_ns"):
        _predict(ckpt, tmp_path / "x.tif", out, "tiling.chunk=[1,null,null]")


@pytest.mark.parametrize("name", ["seg.zarr", "seg.tif"])
def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(ckpt, tmp_path, monkeypatch, name):
    import tifffile
    import zarr


    def labels(path: Path) -> np.ndarray:
        return (zarr.open_group(str(path), mode="r")["labels"][:] if path.suffix == ".zarr"
                else tifffile.imread(path))

    rng = np.random.default_rng(3)
    write_tiff(tmp_path / "a.tif", rng.random((6, 16, 16)).astype(np.float32))
    write_tiff(tmp_path / "b.tif", (rng.random((6, 16, 16)) ** 4).astype(np.float32))
    out = tmp_path / name
    _predict(ckpt, tmp_path / "a.tif", out, "tiling.chunk=[1,null,null]")
    old = labels(out)
    _die_at_the_third_tile(monkeypatch)
    with pytest.raises(RuntimeError, match="killed"):
        _predict(ckpt, tmp_path / "b.tif", out, "tiling.chunk=[1,null,null]", "overwrite=true")
    np.testing.assert_array_equal(labels(out), old)  # a kill leaves the finished output whole
    monkeypatch.undo()
    result = _predict(ckpt, tmp_path / "b.tif", out, "tiling.chunk=[1,null,null]", "overwrite=true")
    assert result.finished
    new = labels(out)
    expected = _predict(ckpt, tmp_path / "b.tif", tmp_path / f"fresh_{name}", "tiling.chunk=[1,null,null]")
    assert expected.finished
    np.testing.assert_array_equal(new, labels(tmp_path / f"fresh_{name}"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_angles_in_degrees_given_as_radians_are_refused(tmp_path):
    """Issue 20 case 4: theta=FILE in degrees with theta_unit=rad."""
    from src.data.projections import read_angles

    np.savetxt(tmp_path / "deg.txt", np.linspace(0, 180, 91))
    with pytest.raises(ValueError, match="look like degrees; pass theta_unit=deg"):
        read_angles(str(tmp_path / "deg.txt"), "rad")
    assert read_angles(str(tmp_path / "deg.txt"), "deg")[-1] == pytest.approx(np.pi)
    assert read_angles(np.linspace(0, np.pi, 10), "rad")[-1] == pytest.approx(np.pi)


def test_reconstruct_output_checks(tmp_path):
    """Issue 20 case 13 (output an existing folder) and output = input: refused before any work."""
    import reconstruct

    np.save(tmp_path / "p.npy", np.ones((8, 2, 16), np.float32))
    (tmp_path / "vol.tif").mkdir()
    base = [f"input={tmp_path / 'p.npy'}", "theta=[0,0.4,0.8,1.2,1.6,2.0,2.4,2.8]", "center=8"]
    with pytest.raises(IsADirectoryError, match="output=.*vol.tif is an existing folder"):
        reconstruct.reconstruct(compose("reconstruct", [*base, f"output={tmp_path / 'vol.tif'}"]))
