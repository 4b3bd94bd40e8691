"""Round trips, atomic writes and error messages of src.data.io."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from src.data import io
from src.data.io import (
    ImageReadError,
    list_images,
    natural_sort_key,
    read_image,
    validate_image,
    write_tiff,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_natural_sort_key() -> None:
    names = ["img10.tif", "img2.tif", "IMG1.tif", "img2b.tif"]
    assert sorted(names, key=natural_sort_key) == ["IMG1.tif", "img2.tif", "img2b.tif", "img10.tif"]


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_roundtrip_2d(tmp_path: Path, rng: np.random.Generator, compression: str | None) -> None:
    a = rng.integers(0, 60000, (17, 23), dtype=np.uint16)
    write_tiff(tmp_path / "a.tif", a, compression=compression)
    b = read_image(tmp_path / "a.tif")
    assert b.shape == (17, 23) and b.dtype == np.uint16
    np.testing.assert_array_equal(a, b)
    assert isinstance(b, np.memmap) == (compression is None)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_roundtrip_3d(tmp_path: Path, rng: np.random.Generator, compression: str | None) -> None:
    a = rng.random((5, 16, 12), dtype=np.float32)
    write_tiff(
        tmp_path / "sub" / "dir" / "v.tiff", a, compression=compression, metadata={"voxel_nm": 40}
    )
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "dir" / "v.tiff"), a)
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "dir" / "v.tiff", mmap=False), a)


def test_singleton_leading_dim_squeezed(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.uint8).reshape(1, 1, 4, 3)
    tifffile.imwrite(tmp_path / "s.tif", a, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "s.tif"), a[0, 0])


def test_last_axis_of_three_is_not_rgb(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)  # (z, y, x) with x = 3
    write_tiff(tmp_path / "thin.tif", a)
    np.testing.assert_array_equal(read_image(tmp_path / "thin.tif"), a)


def test_folder_natural_order(tmp_path: Path) -> None:
    for i in (10, 2, 1):
        write_tiff(tmp_path / f"{i}.tif", np.full((4, 5), i, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    v = read_image(tmp_path)
    assert v.shape == (3, 4, 5)
    assert v[:, 0, 0].tolist() == [1, 2, 10]


def test_npy_memmap(tmp_path: Path, rng: np.random.Generator) -> None:
    a = rng.random((3, 4, 5))
    np.save(tmp_path / "a.npy", a)
    b = read_image(tmp_path / "a.npy")
    assert isinstance(b, np.memmap) and not b.flags.writeable
    np.testing.assert_array_equal(a, b)
    c = read_image(tmp_path / "a.npy", mmap=False)
    assert not isinstance(c, np.memmap)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    write_tiff(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
    write_tiff(tmp_path / "x.tif", np.ones((4, 4), np.uint8))
    assert read_image(tmp_path / "x.tif").max() == 1
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.tif"
    write_tiff(target, np.full((4, 4), 7, np.uint8))
    before = target.read_bytes()

    def broken_imwrite(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"II*\x00partial")  # a half-written temp file
        raise OSError("disk full")

    monkeypatch.setattr(io.tifffile, "imwrite", broken_imwrite)
    with pytest.raises(OSError, match="disk full"):
        write_tiff(target, np.zeros((4, 4), np.uint8))
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_bigtiff_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io, "BIGTIFF_THRESHOLD", 10)
    write_tiff(tmp_path / "big.tif", np.zeros((4, 4), np.uint8))
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.is_bigtiff
    np.testing.assert_array_equal(read_image(tmp_path / "big.tif"), 0)


# ---- errors -------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"nope\.tif.*no such file"):
        read_image(tmp_path / "nope.tif")


def test_unsupported_extension(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(
        ImageReadError, match=r"a\.png.*unsupported extension.*\.tif, \.tiff, \.npy"
    ):
        read_image(tmp_path / "a.png")


def test_not_a_tiff(tmp_path: Path) -> None:
    (tmp_path / "junk.tif").write_bytes(b"this is not a tiff file at all")
    with pytest.raises(ImageReadError, match=r"junk\.tif.*unreadable TIFF"):
        read_image(tmp_path / "junk.tif")


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("fraction", [0.5, 0.98])
@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_tiff(
    tmp_path: Path, rng: np.random.Generator, compression: str | None, fraction: float, mmap: bool
) -> None:
    path = tmp_path / "t.tif"
    write_tiff(path, rng.integers(0, 255, (6, 32, 32), dtype=np.uint8), compression=compression)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ImageReadError, match=r"t\.tif.*(truncated|unreadable)"):
        read_image(path, mmap=mmap)


def test_truncated_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((8, 8)))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[:200])
    for mmap in (True, False):
        with pytest.raises(ImageReadError, match=r"a\.npy.*truncated"):
            read_image(tmp_path / "a.npy", mmap=mmap)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ImageReadError, match="no TIFF files"):
        read_image(tmp_path)


def test_folder_shape_mismatch(tmp_path: Path) -> None:
    write_tiff(tmp_path / "s1.tif", np.zeros((4, 5), np.uint8))
    write_tiff(tmp_path / "s2.tif", np.zeros((4, 5), np.uint8))
    write_tiff(tmp_path / "s10.tif", np.zeros((4, 6), np.uint8))
    with pytest.raises(ImageReadError, match=r"s10\.tif.*\(4, 6\).*\(4, 5\)"):
        read_image(tmp_path)


def test_folder_of_volumes_rejected(tmp_path: Path) -> None:
    write_tiff(tmp_path / "v.tif", np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(ImageReadError, match=r"v\.tif.*2D slice"):
        read_image(tmp_path)


@pytest.mark.parametrize("shape", [(7,), (2, 3, 4, 5)])
def test_bad_ndim(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "a.npy", np.zeros(shape))
    with pytest.raises(ImageReadError, match=r"a\.npy.*2D .* or 3D"):
        read_image(tmp_path / "a.npy")


def test_rgb_rejected(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(ImageReadError, match=r"rgb\.tif.*RGB"):
        read_image(tmp_path / "rgb.tif")


# ---- list_images ----------------------------------------------------------------------------


def test_list_images(tmp_path: Path) -> None:
    for name in ("b10.tif", "b2.tiff", "a.npy", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert list_images(tmp_path / "b2.tiff") == [tmp_path / "b2.tiff"]
    assert [p.name for p in list_images(tmp_path)] == ["a.npy", "b2.tiff", "b10.tif"]
    assert [p.name for p in list_images(tmp_path / "b*")] == ["b2.tiff", "b10.tif"]
    assert [p.name for p in list_images(str(tmp_path / "*.tif"))] == ["b10.tif"]


def test_list_images_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        list_images(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"\*\.tif"):
        list_images(tmp_path / "*.tif")
    with pytest.raises(FileNotFoundError, match=str(tmp_path.name)):
        list_images(tmp_path)


# ---- validate_image -------------------------------------------------------------------------


def test_validate_image(monkeypatch: pytest.MonkeyPatch) -> None:
    validate_image(np.arange(6, dtype=np.float32).reshape(2, 3), "ok.tif")
    validate_image(np.array([[0, 1]], dtype=np.uint8), "ok.tif")
    with pytest.raises(ValueError, match=r"bad\.tif.*NaN"):
        validate_image(np.array([[0.0, np.nan]]), "bad.tif")
    with pytest.raises(ValueError, match=r"bad\.tif.*NaN or infinite"):
        validate_image(np.array([[0.0, np.inf]]), "bad.tif")
    with pytest.raises(ValueError, match=r"flat\.tif.*constant"):
        validate_image(np.full((3, 4, 5), 2, dtype=np.uint16), "flat.tif")
    with pytest.raises(ValueError, match="empty"):
        validate_image(np.zeros((0, 4)), "e.tif")
    # chunked scan: constant within every slab but not overall, NaN in a late slab
    monkeypatch.setattr(io, "_CHUNK_ELEMENTS", 4)
    v = np.zeros((6, 2, 2), dtype=np.float32)
    v[5] = 1
    validate_image(v, "v.tif")
    v[5, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        validate_image(v, "v.tif")
