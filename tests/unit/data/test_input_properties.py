"""Property-based tests of the readers and checkers (issue 20): for random shapes, dtypes,
NaN/inf, truncations and label values, each call either returns the right answer or raises a
clear error naming the file; never a silent wrong result."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from src.data.io import ImageReadError, read_image, write_tiff  # noqa: E402
from src.data.io.labels import check_label_values  # noqa: E402
from src.data.io.volumes import open_volume, sample_range  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64])
SHAPES = hnp.array_shapes(min_dims=2, max_dims=3, min_side=2, max_side=12)


@SETTINGS
@given(data=st.data(), dtype=DTYPES, shape=SHAPES)
def test_tiff_round_trip_or_clear_error(tmp_path_factory, data, dtype, shape):
    array = data.draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False,
                                                                        allow_infinity=False)))
    path = tmp_path_factory.mktemp("rt") / "v.tif"
    write_tiff(path, array)
    np.testing.assert_array_equal(read_image(path, mmap=False), array)
    with open_volume(path) as src:
        assert src.shape == array.shape
        np.testing.assert_array_equal(src.read(tuple(slice(None) for _ in shape)), array)


@SETTINGS
@given(shape=SHAPES, cut=st.floats(0.05, 0.95))
@example(shape=(2, 2, 2), cut=0.75)  # found by hypothesis: tifffile raised a bare struct.error
def test_truncated_tiff_is_refused_naming_the_file(tmp_path_factory, shape, cut):
    array = np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)
    path = tmp_path_factory.mktemp("cut") / "t.tif"
    write_tiff(path, array)
    data = path.read_bytes()
    path.write_bytes(data[: max(8, int(len(data) * cut))])
    for reader in (lambda: read_image(path, mmap=False), lambda: open_volume(path)):
        try:
            out = reader()
        except ImageReadError as exc:
            assert "t.tif" in str(exc)
            continue
        # a cut that falls after the pixel data (in trailing metadata) may still read: then the
        # values must be the original ones
        values = out if isinstance(out, np.ndarray) else out.read(tuple(slice(None) for _ in out.shape))
        np.testing.assert_array_equal(values, array)


@SETTINGS
@given(data=st.data(), shape=SHAPES, special=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_sample_range_refuses_non_finite_and_constant_volumes(data, shape, special):
    array = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-5, 5, width=32)))
    if array.min() == array.max():
        with pytest.raises(ValueError, match="constant"):
            sample_range(open_volume(array))
    else:
        lo, hi = sample_range(open_volume(array), 0.0, 100.0)
        assert lo == pytest.approx(float(array.min())) and hi == pytest.approx(float(array.max()))
    index = tuple(data.draw(st.integers(0, s - 1)) for s in shape)
    array[index] = special
    with pytest.raises(ValueError, match="NaN or infinite"):
        sample_range(open_volume(array), 0.0, 100.0)


@SETTINGS
@given(data=st.data(), n=st.integers(1, 5), shape=SHAPES)
def test_label_checker_accepts_exactly_the_phases(data, n, shape):
    labels = data.draw(hnp.arrays(np.int16, shape, elements=st.integers(-2, 7)))
    good = (labels.min() >= 0) and (labels.max() < n)
    if good:
        check_label_values(labels, n, "lab.tif")
    else:
        with pytest.raises(ValueError, match="lab.tif"):
            check_label_values(labels, n, "lab.tif")
    floats = labels.astype(np.float32) + data.draw(st.sampled_from([0.0, 0.5]))
    if good and float(floats.flat[0]).is_integer():
        check_label_values(floats, n, "lab.tif")
    else:
        with pytest.raises(ValueError, match="lab.tif"):
            check_label_values(floats, n, "lab.tif")
