"""xanes.py on a simulated stack (maps, per-particle CSV, figures), its input checks, and the
XANES CNNs trained through train.py (data=xanes, model=xanes_edge / xanes_denoiser)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from src.config import PROJECT_ROOT
from src.data.io import write_tiff
from src.simulation.imaging import ImagingConfig
from src.simulation.microstructure import MicrostructureConfig
from src.simulation.xanes_scan import XanesSimConfig, make_xanes_sample, write_xanes_sample
from tests.helpers import compose, shared_data


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> Path:
    cfg = XanesSimConfig(reference_dir=str(shared_data("xanes")), drift_px=0.0)
    sample = make_xanes_sample(1, MicrostructureConfig(shape=(16, 40, 40), voxel_size_nm=60.0), cfg,
                               ImagingConfig(n_angles=90), 3e4)
    out = tmp_path_factory.mktemp("xanes_sim")
    write_xanes_sample(out, sample)
    return out


def _overrides(sim: Path, out: Path, *extra: str) -> list[str]:
    return [f"input={sim}/stack.tif", f"energies={sim}/energies.txt", f"mask={sim}/labels.tif",
            f"references=[{sim}/end_member_discharged.txt,{sim}/end_member_charged.txt]",
            f"output_dir={out}", *extra]


def test_xanes_command_writes_maps_particles_and_figures(sim_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "xanes.py"), *_overrides(sim_dir, out)],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fit_ranges"] in proc.stderr + proc.stdout and "pre-edge line" in summary["fit_ranges"]
    assert 8344.0 < summary["ranges_used"]["e0_eV"] < 8350.0  # e0 found from the data
    for name in ("edge_energy", "edge_energy_lcf", "white_line", "soc", "oxidation_state", "valid", "jump"):
        assert (out / "maps" / f"{name}.tif").exists(), name
    edge = tifffile.imread(out / "maps" / "edge_energy_lcf.tif")
    truth = tifffile.imread(sim_dir / "edge_energy.tif")
    labels = tifffile.imread(sim_dir / "labels.tif")
    assert np.isnan(edge[labels != 0]).all()
    assert np.sqrt(np.nanmean((edge - truth)[labels == 0] ** 2)) < 0.3
    rows = list(csv.DictReader(open(out / "particles.csv")))
    assert len(rows) >= 3
    assert {"particle", "voxels", "soc_mean", "soc_std", "edge_energy_mean", "soc_shell0",
            "soc_core_minus_shell"} <= set(rows[0])
    particles = tifffile.imread(sim_dir / "particles.tif")
    soc_truth = tifffile.imread(sim_dir / "soc.tif")
    # particle means follow the truth (particles relabelled by the command: match by centroid)
    est = np.array([float(r["soc_mean"]) for r in rows])
    cz = np.array([[float(r[f"centroid_{a}"]) for a in "zyx"] for r in rows]).round().astype(int)
    true = np.array([np.nanmean(soc_truth[particles == particles[tuple(c)]]) if particles[tuple(c)] else np.nan
                     for c in cz])
    ok = np.isfinite(true)
    assert ok.sum() >= 3 and np.corrcoef(est[ok], true[ok])[0, 1] > 0.8
    profile = list(csv.DictReader(open(out / "radial_profile.csv")))
    assert float(profile[0]["soc_mean"]) > float(profile[-1]["soc_mean"])  # charged shell
    summary = json.loads((out / "summary.json").read_text())
    assert summary["valid_voxels"] > 0.95 * summary["mask_voxels"]
    assert "pre-edge line" in summary["fit_ranges"]
    assert (out / "maps.png").stat().st_size > 1000 and (out / "histograms.png").exists()


def test_xanes_command_checks_inputs_before_writing(sim_dir, tmp_path):
    from xanes import run_xanes

    (tmp_path / "short.txt").write_text("8300\n8340\n8380\n")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="60 images along the energy axis but 3"):
        run_xanes(compose("xanes", _overrides(sim_dir, out, f"energies={tmp_path}/short.txt")))
    write_tiff(tmp_path / "seg.tif", np.zeros((4, 40, 40), np.uint8))
    with pytest.raises(ValueError, match="mask .*seg.tif: shape"):
        run_xanes(compose("xanes", _overrides(sim_dir, out, f"mask={tmp_path}/seg.tif")))
    with pytest.raises(ValueError, match="2 references but reference_names"):
        run_xanes(compose("xanes", _overrides(sim_dir, out, "reference_names=[a]")))
    assert not out.exists()


def _train_overrides(out: Path, experiment: str) -> list[str]:
    return [f"experiment={experiment}", "logger=csv", "data.shape=[8,32,32]", "data.train_seeds=[0,1]",
            "data.val_seeds=[100]", "data.samples_per_epoch=32", "data.batch_size=8", "data.crop=16",
            "data.n_angles=45", "trainer.max_epochs=2", "trainer.max_time=null",
            "trainer.enable_model_summary=false",
            *(["model.net.base_filters=8", "model.net.depth=1"] if experiment == "xanes_edge"
              else ["model.net.width=8", "model.net.components=4"]),
            f"data.xanes.reference_dir={shared_data('xanes')}", f"data.cache_dir={out}/cache",
            f"paths.output_dir={out}", f"paths.log_dir={out}/logs"]


@pytest.mark.parametrize("experiment", ["xanes_edge", "xanes_denoiser"])
def test_train_xanes_nets(tmp_path, experiment):
    import torch

    from src.models.checkpoint import checkpoint_kind, load_xanes_checkpoint
    from train import train

    cfg = compose("train", _train_overrides(tmp_path, experiment))
    assert cfg.callbacks.model_checkpoint.mode == "min" and cfg.optimized_metric == "val/edge_rmse"
    metrics = train(cfg)
    assert np.isfinite(metrics["val/edge_rmse"]) and np.isfinite(metrics["val/edge_rmse_fit"])
    assert metrics["val/edge_valid_fraction"] > 0.9
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    assert checkpoint_kind(ckpt) == "xanes" and torch.load(ckpt, weights_only=False)["kind"] == "xanes"
    module, _ = load_xanes_checkpoint(ckpt)
    n_in = 15 if experiment == "xanes_edge" else 60
    assert module.energies.size == n_in and module.net.n_energies == n_in
    assert list(cfg.data.shape) == [8, 32, 32]
    with torch.no_grad():
        edge = module.eval().predict_edge(torch.rand(1, n_in, 16, 16) * 0.5 + 0.3)
    assert edge.shape == (1, 16, 16)
    assert len(list((tmp_path / "cache").glob("xanes_*.npz"))) == 3  # volumes cached for the next run


def test_load_mask_phases(tmp_path):
    from xanes import load_mask

    seg = np.zeros((4, 6, 6), np.uint8)
    seg[:, :3] = 85  # NMC stored as 85
    seg[:, 3:4] = 170
    write_tiff(tmp_path / "seg.tif", seg)
    names = ["NMC", "CBD", "pore"]
    mask = load_mask(tmp_path / "seg.tif", seg.shape, names, "NMC", [85, 170, 0])
    assert mask.sum() == 4 * 3 * 6 and mask[:, :3].all()
    assert load_mask(tmp_path / "seg.tif", seg.shape, names, None, None).sum() == 4 * 4 * 6
    with pytest.raises(ValueError, match="'Ni' is not one of class_names"):
        load_mask(tmp_path / "seg.tif", seg.shape, names, "Ni", [85, 170, 0])
    write_tiff(tmp_path / "nmc_only.tif", np.full(seg.shape, 85, np.uint8))
    with pytest.raises(ValueError, match="no voxel has the value 170 of phase CBD"):
        load_mask(tmp_path / "nmc_only.tif", seg.shape, names, "CBD", [85, 170, 0])


def test_a_01_mask_selects_the_ones(tmp_path, caplog):
    """Issue 20 case 1: a 0/1 mask with the default mask_phase=NMC (index 0) must analyse the 1s
    (the particles), not the background."""
    from xanes import load_mask

    binary = np.zeros((3, 5, 5), np.uint8)
    binary[:, 1:3, 1:3] = 1
    write_tiff(tmp_path / "m.tif", binary)
    names = ["NMC", "CBD", "pore"]
    with caplog.at_level("WARNING"):
        mask = load_mask(tmp_path / "m.tif", binary.shape, names, "NMC", None)
    assert np.array_equal(mask, binary == 1)
    assert "taken as a binary mask" in caplog.text
    # with label_values the same file is read as labels: NMC stored as 0
    assert np.array_equal(load_mask(tmp_path / "m.tif", binary.shape, names, "NMC", [0, 1, 2]), binary == 0)
    write_tiff(tmp_path / "empty.tif", np.zeros_like(binary))
    with pytest.raises(ValueError, match="no voxel is 1"):
        load_mask(tmp_path / "empty.tif", binary.shape, names, "NMC", None)
