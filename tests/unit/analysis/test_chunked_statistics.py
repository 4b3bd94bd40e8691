"""Chunked (dask) statistics equal the in-memory ones, on volumes whose sides are not multiples
of the chunk, with threads and with a real 2-worker LocalCluster."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import ndimage

from src.analysis.chunked import chunked_statistics, open_lazy, rev_tortuosity
from src.analysis.morphology import local_thickness, surface_statistics, volume_fractions
from src.analysis.particles import weighted_quantiles
from src.analysis.transport import tortuosity_factor
from src.data.io import write_tiff
from tests.helpers import blob_labels

PHASES = ["NMC", "CBD", "pore"]


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    labels = blob_labels((45, 38, 41), seed=4)  # no side is a multiple of the chunk (16)
    path = tmp_path_factory.mktemp("big") / "labels.tif"
    write_tiff(path, np.array([85, 170, 0], np.uint8)[labels])  # stored as 85/170/0
    return labels, path


def _check(labels, stats):
    assert stats["volume_fraction"] == pytest.approx(volume_fractions(labels, PHASES), abs=1e-15)
    ref = surface_statistics(labels, PHASES, 0.04)
    for key in ("surface_area_um2", "specific_surface_area_um-1", "interface_area_um2"):
        assert stats["surfaces"][key] == pytest.approx(ref[key], rel=1e-5), key
    comp, count = ndimage.label(labels == 0)
    sizes = np.bincount(comp.ravel())[1:]
    got = stats["components"]["NMC"]
    assert got["count"] == count
    assert sorted(got["voxels"]) == sorted(sizes.tolist())
    diameters = (6.0 * sizes / np.pi) ** (1 / 3) * 0.04  # volume-weighted d50, the in-memory rule
    assert got["d50_um"] == pytest.approx(weighted_quantiles(diameters, sizes, np.array([0.5]))[0], rel=1e-12)
    if stats["local_thickness"]:
        lt = local_thickness(labels == 2, 0.04)
        assert stats["local_thickness"]["pore"]["mean_um"] == pytest.approx(lt["mean_um"], rel=1e-6)
        assert stats["local_thickness"]["pore"]["d50_um"] == pytest.approx(lt["d50_um"], rel=1e-6)


def test_chunked_equals_in_memory_on_threads(volume, tmp_path):
    labels, path = volume
    stats = chunked_statistics(path, PHASES, 40, label_values=[85, 170, 0], chunk=16, rev_phases=["pore"],
                               rev_sizes=[16, 24, 38])
    _check(labels, stats)
    rev = stats["rev_tortuosity"]["pore"]
    assert rev["sizes"] == [16, 24, 38] and len(rev["tortuosity_factor"]) == 3
    lo = [(d - 38) // 2 for d in labels.shape]
    cube = labels[lo[0]:lo[0] + 38, lo[1]:lo[1] + 38, lo[2]:lo[2] + 38] == 2
    assert rev["tortuosity_factor"][-1] == pytest.approx(tortuosity_factor(cube, 0)["tortuosity_factor"])


def test_chunked_equals_in_memory_on_a_local_cluster(volume, tmp_path):
    distributed = pytest.importorskip("distributed")
    labels, path = volume
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        stats = chunked_statistics(path, PHASES, 40, label_values=[85, 170, 0], chunk=24, rev_phases=[],
                                   thickness_phases=[], cluster=cluster.scheduler_address)
    _check(labels, stats)


def test_zarr_and_hdf5_inputs_and_bad_input(volume, tmp_path):
    import h5py
    import zarr

    labels, _ = volume
    z = zarr.open(str(tmp_path / "v.zarr"), mode="w", shape=labels.shape, chunks=(16, 16, 16), dtype="u1")
    z[:] = labels
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["seg"] = labels
    for spec in (tmp_path / "v.zarr", f"{tmp_path / 'v.h5'}:seg"):
        assert np.array_equal(np.asarray(open_lazy(spec, chunks=16)), labels)
    with pytest.raises(KeyError, match="dataset 'nope' not found"):
        open_lazy(f"{tmp_path / 'v.h5'}:nope")
    with pytest.raises(ValueError, match="smaller than the surfaces' halo"):
        chunked_statistics(tmp_path / "v.zarr", PHASES, 40, chunk=4)
    with pytest.raises(ValueError, match="label values"):
        chunked_statistics(tmp_path / "v.zarr", ["a", "b"], 40, chunk=16, particle_phase=None,
                           thickness_phases=[], rev_phases=[])
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="cluster='tcp://127.0.0.1:9'"):
        chunked_statistics(tmp_path / "v.zarr", PHASES, 40, chunk=16, cluster="tcp://127.0.0.1:9")
    assert time.perf_counter() - start < 15


def test_rev_curve_plateau_on_straight_channels():
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[:, ::2, :] = 2
    rev = rev_tortuosity(labels, [2], 0, [10, 20, 40])
    assert rev["tortuosity_factor"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)
    assert rev["plateau"] and not math.isnan(rev["relative_change"])


def test_analyze_command_chunked(volume, tmp_path):
    import csv

    import analyze
    from tests.helpers import compose

    labels, path = volume
    out = tmp_path / "out"
    cfg = compose("analyze", [f"volumes={path}", "voxel_size_nm=40", "label_values=[85,170,0]",
                              f"output_dir={out}", "chunked.enabled=true", "chunked.chunk=16",
                              "statistics.thickness_phases=[]", "chunked.rev_phases=[]"])
    analyze.analyze(cfg)
    with open(out / "stats.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["volume_fraction/NMC"]) == pytest.approx(np.mean(labels == 0))
    assert int(float(row["component_count/NMC"])) == ndimage.label(labels == 0)[1]


def test_chunked_statistics_show_a_bar_per_statistic(monkeypatch, tmp_path):
    import dask.callbacks
    import tqdm.dask

    shown = []

    class Bar(dask.callbacks.Callback):  # what tqdm's dask callback is asked to show
        def __init__(self, desc, **_kwargs):
            super().__init__()
            self.desc, self.tasks = desc, 0
            shown.append(self)

        def _posttask(self, *args):
            self.tasks += 1

    monkeypatch.setattr(tqdm.dask, "TqdmCallback", Bar)
    path = tmp_path / "small.tif"
    write_tiff(path, blob_labels((20, 24, 22), seed=2))
    stats = chunked_statistics(path, PHASES, 40, chunk=12, rev_phases=[])
    assert [b.desc for b in shown] == list(stats["timings_s"])
    assert all(b.tasks > 0 for b in shown[:2])  # fractions and surfaces ran as dask tasks under their bar
