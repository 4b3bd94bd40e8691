"""Issue 16 through the command: xanes.py with its defaults (no ../shared) on narrow scans and
point spectra, the particle join, an operando series with an EC-Lab .mpt, trained nets applied
with ckpt_path, and the bad inputs each named."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from src.config import PROJECT_ROOT
from src.data.io import write_tiff
from src.simulation.xanes_scan import default_energies, load_end_members
from tests.helpers import compose

FIXTURES = PROJECT_ROOT / "tests" / "fixtures" / "checkpoints"


@pytest.fixture(scope="module")
def members():
    return load_end_members(None, 8346.0, 8348.5)


def _electrode(shape=(12, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """Labels (0 NMC spheres, 1 CBD, 2 pore) and the particle index of each NMC voxel."""
    z, y, x = np.indices(shape)
    labels = np.full(shape, 2, np.uint8)
    pid = np.zeros(shape, np.int32)
    centres = [(6, 8, 8, 5), (6, 8, 23, 4), (6, 23, 8, 4.5), (6, 23, 23, 5.5)]
    for k, (cz, cy, cx, r) in enumerate(centres, start=1):
        d = np.sqrt((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2)
        labels[(d <= r + 1.5) & (labels == 2) & (k % 2 == 0)] = 1  # CBD around particles 2 and 4
        labels[d <= r] = 0
        pid[d <= r] = k
    return labels, pid


def _stack(members, energies, labels, soc, noise=2e-5, seed=0) -> np.ndarray:
    """(E, z, y, x): NMC voxels with the mixture of ``soc`` (per voxel), CBD and pore a smooth
    background; Gaussian noise."""
    rng = np.random.default_rng(seed)
    bg = (energies / 8346.0) ** -2.8
    ends = members.at(energies)
    nmc = labels == 0
    s = np.where(nmc, soc, 0.0)
    level = np.where(nmc, 0.012, np.where(labels == 1, 0.005, 0.0005))
    stack = (bg[:, None, None, None] * level + 0.01 * nmc * (ends[:, 0, None, None, None] * (1 - s)
                                                              + ends[:, 1, None, None, None] * s))
    return (stack + rng.normal(0.0, noise, stack.shape)).astype(np.float32)


def _write_energies(path: Path, energies: np.ndarray) -> Path:
    path.write_text("\n".join(f"{e:.3f}" for e in energies) + "\n")
    return path


def test_narrow_scan_and_point_spectra_with_defaults(members, tmp_path, caplog):
    from xanes import run_xanes

    labels, pid = _electrode()
    energies = np.arange(8330.0, 8370.01, 0.4)  # a common TXM-XANES range
    soc = np.where(pid > 0, 0.25 * pid - 0.2, 0.0)  # particles at SOC 0.05, 0.3, 0.55, 0.8
    write_tiff(tmp_path / "stack.tif", _stack(members, energies, labels, soc))
    write_tiff(tmp_path / "labels.tif", labels)
    _write_energies(tmp_path / "e.txt", energies)
    with caplog.at_level("INFO"):
        summary = run_xanes(compose("xanes", [f"input={tmp_path}/stack.tif", f"energies={tmp_path}/e.txt",
                                              f"mask={tmp_path}/labels.tif", f"output_dir={tmp_path}/run",
                                              "voxel_size_nm=50"]))
    used = summary["ranges_used"]
    assert summary["e0_source"] == "data" and 8344 < used["e0_eV"] < 8350
    assert used["post_order"] == 0 and used["post_eV"][1] <= 8370.0 and used["pre_eV"][0] >= 8330.0
    assert "post-edge" in " ".join(summary["range_notes"]) and "post-edge constant" in caplog.text
    assert summary["references"]["Ni2"].endswith("ref_NiO.txt") and "shared" not in summary["references"]["Ni2"]
    rows = list(csv.DictReader(open(tmp_path / "run" / "particles.csv")))
    assert len(rows) == 4
    assert {"diameter_um", "sphericity", "cbd_coverage", "crack_porosity", "distance_to_side_um",
            "soc_mean", "soc_std", "soc_shell0", "soc_core_minus_shell"} <= set(rows[0])
    cover = {round(float(r["centroid_y"])) // 16 * 2 + round(float(r["centroid_x"])) // 16: float(r["cbd_coverage"])
             for r in rows}
    assert cover[1] > 0.5 and cover[3] > 0.5 and cover[0] < 0.05 and cover[2] < 0.05
    edges = sorted((float(r["edge_energy_mean"]), int(pid[tuple(round(float(r[f"centroid_{a}"])) for a in "zyx")]))
                   for r in rows)
    assert [p for _, p in edges] == [1, 2, 3, 4]  # the edge follows the particles' SOC
    assert set(summary["particle_correlations"]) >= {"diameter_um", "cbd_coverage"}
    assert (tmp_path / "run" / "particle_join.png").stat().st_size > 1000
    assert summary["soc_saturation"]["saturated"]  # the shipped pair does not span these states
    own = run_xanes(compose("xanes", [f"input={tmp_path}/stack.tif", f"energies={tmp_path}/e.txt",
                                      f"mask={tmp_path}/labels.tif", f"output_dir={tmp_path}/own",
                                      "references=from_data", "figure=false"]))
    assert own["references"]["method"].startswith("from_data") and len(own["end_member_basis"]) == 3
    own_rows = sorted(csv.DictReader(open(tmp_path / "own" / "particles.csv")), key=lambda r: float(r["soc_mean"]))
    socs = [float(r["soc_mean"]) for r in own_rows]
    assert socs[0] < 0.05 and socs[-1] > 0.95 and np.all(np.diff(socs) > 0.15)  # the extremes span 0-1
    # the same spectra as a table of point spectra (energy first)
    nmc = np.flatnonzero(labels.ravel() == 0)[::50]
    flat = _stack(members, energies, labels, soc).reshape(energies.size, -1)[:, nmc]
    table = np.column_stack([energies, flat])
    np.savetxt(tmp_path / "points.csv", table, delimiter=",",
               header="energy," + ",".join(f"p{i}" for i in range(nmc.size)), comments="")
    s2 = run_xanes(compose("xanes", [f"input={tmp_path}/points.csv", f"output_dir={tmp_path}/points"]))
    spectra = list(csv.DictReader(open(tmp_path / "points" / "spectra.csv")))
    assert len(spectra) == nmc.size and s2["valid_voxels"] == nmc.size
    truth = soc.ravel()[nmc]
    est = np.array([float(r["edge_energy"]) for r in spectra])
    assert spearmanr(truth, est).statistic > 0.9


def test_series_with_mpt_tracks_charge_and_particles(members, tmp_path):
    from xanes import run_xanes

    labels, pid = _electrode()
    energies = default_energies()
    _write_energies(tmp_path / "energies.txt", energies)
    schedule = np.array([0.05, 0.25, 0.45, 0.65, 0.85])  # known SOC of the states
    offsets = np.array([0.0, -0.04, 0.0, 0.03, 0.06])  # per particle (id 0 unused)
    states = []
    for k, s in enumerate(schedule):
        soc = np.clip(s + offsets[pid], 0, 1)
        write_tiff(tmp_path / f"state{k}.tif", _stack(members, energies, labels, soc, noise=1e-4, seed=k))
        write_tiff(tmp_path / f"seg{k}.tif", labels)
        states.append(f"  - {{path: state{k}.tif, time_h: {k * 1.0}, segmentation: seg{k}.tif}}")
    (tmp_path / "series.yaml").write_text("energies: energies.txt\nelectrochem: cell.mpt\nstates:\n"
                                          + "\n".join(states) + "\n")
    t = np.linspace(0, 4 * 3600, 41)
    q = 2.0 * t / t[-1]  # constant-current charge, 2 mA.h over 4 h
    v = 3.6 + 0.6 * t / t[-1]
    body = "\n".join(f"1\t{a:.1f}\t{b:.4f}\t{c:.5f}".replace(".", ",") for a, b, c in zip(t, v, q, strict=True))
    (tmp_path / "cell.mpt").write_text("EC-Lab ASCII FILE\nNb header lines : 5\n\nTechnique : GCPL\n"
                                       "mode\ttime/s\tEwe/V\t(Q-Qo)/mA.h\n" + body + "\n")
    for name, mu in (("discharged", members.discharged), ("charged", members.charged)):  # own end-members
        np.savetxt(tmp_path / f"{name}.txt", np.column_stack([members.energies, mu]))
    summary = run_xanes(compose("xanes", [f"series={tmp_path}/series.yaml", f"output_dir={tmp_path}/out",
                                          f"references=[{tmp_path}/discharged.txt,{tmp_path}/charged.txt]",
                                          "reference_names=[d,c]"]))
    rows = list(csv.DictReader(open(tmp_path / "out" / "series.csv")))
    assert [r["state"] for r in rows] == [f"state{k}" for k in range(5)]
    charge = np.array([float(r["charge_mAh"]) for r in rows])
    edge = np.array([float(r["edge_energy_mean"]) for r in rows])
    assert np.allclose(charge, [0, 0.5, 1.0, 1.5, 2.0], atol=1e-6)
    rho = summary["correlations"]["edge_energy_mean_vs_charge_mAh"]["spearman_rho"]
    assert rho >= 0.95 and spearmanr(charge, edge).statistic >= 0.95 and edge[-1] - edge[0] > 1.0
    assert (tmp_path / "out" / "series.png").stat().st_size > 1000
    tracks = list(csv.DictReader(open(tmp_path / "out" / "particle_tracks.csv")))
    assert summary["tracked_particles"] == 4 and len(tracks) == 20
    for track in {r["track"] for r in tracks}:  # each tracked particle charges on schedule
        soc = np.array([float(r["soc_mean"]) for r in tracks if r["track"] == track])
        assert np.all(np.diff(soc) > 0.1) and abs(soc.mean() - schedule.mean()) < 0.1, soc
    socs = np.array([float(r["soc_mean"]) for r in rows])
    assert np.abs(socs - schedule - offsets[1:].mean()).max() < 0.05
    own = run_xanes(compose("xanes", [f"series={tmp_path}/series.yaml", f"output_dir={tmp_path}/own",
                                      "references=from_data", "figure=false"]))  # end-members of the series
    own_soc = np.array([r["soc_mean"] for r in own["states"]])
    assert np.all(np.diff(own_soc) > 0.1) and own_soc[0] < 0.2 and own_soc[-1] > 0.8


def _train_tiny_denoiser(members, path: Path) -> Path:
    """A tiny spectral denoiser trained here for a few steps (Lightning, the project's module)
    on noisy/clean pairs of this file's electrode, saved as a checkpoint."""
    import pytorch_lightning as pl
    import torch

    from src.models.spectral import XanesModule

    energies = default_energies()
    labels, pid = _electrode((8, 16, 16))
    soc = np.where(pid > 0, 0.2 * pid, 0.0)
    clean = _stack(members, energies, labels, soc, noise=0.0) / 0.02
    noisy = _stack(members, energies, labels, soc, noise=2e-4, seed=3) / 0.02
    batch = {"input": torch.from_numpy(noisy.transpose(1, 0, 2, 3).copy()),
             "clean": torch.from_numpy(clean.transpose(1, 0, 2, 3).copy()),
             "mask": torch.from_numpy((labels == 0)[:, None].copy())}
    data = torch.utils.data.DataLoader([{k: v[i] for k, v in batch.items()} for i in range(8)], batch_size=4)
    module = XanesModule({"_target_": "src.models.nets.spectral.SpectralSpatialDenoiser", "components": 3,
                          "width": 4, "blocks": 2}, task="denoise", scan_energies=energies.tolist(), input_scale=0.02)
    module.net.init_spectral_basis(batch["clean"].permute(0, 2, 3, 1).reshape(-1, energies.size))
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(module, train_dataloaders=data)
    trainer.save_checkpoint(path)
    return path


def test_ckpt_path_applies_trained_nets_and_refuses_others(members, tmp_path):
    from src.models.checkpoint import CheckpointError, checkpoint_kind
    from xanes import run_xanes

    ckpt = _train_tiny_denoiser(members, tmp_path / "denoiser.ckpt")
    assert checkpoint_kind(ckpt) == "xanes"
    labels, pid = _electrode((4, 24, 24))
    energies = default_energies()
    soc = np.where(pid > 0, 0.2 * pid, 0.0)
    write_tiff(tmp_path / "stack.tif", _stack(members, energies, labels, soc, noise=2e-4))
    write_tiff(tmp_path / "labels.tif", labels)
    _write_energies(tmp_path / "e.txt", energies)
    base = [f"input={tmp_path}/stack.tif", f"energies={tmp_path}/e.txt", f"mask={tmp_path}/labels.tif"]
    s = run_xanes(compose("xanes", [*base, f"ckpt_path={ckpt}", f"output_dir={tmp_path}/den_run"]))
    assert s["cnn"]["task"] == "denoise" and s["valid_voxels"] > 0.9 * s["mask_voxels"]
    assert 8340 < s["means"]["edge_energy"] < 8350
    edge_ckpt = FIXTURES / "xanes_edge.ckpt"  # an edge net of 15 of the 60 default energies
    s = run_xanes(compose("xanes", [*base, f"ckpt_path={edge_ckpt}", f"output_dir={tmp_path}/edge_run"]))
    assert s["cnn"]["task"] == "edge" and s["cnn"]["input_energies"] == 15
    assert (tmp_path / "edge_run" / "maps" / "edge_energy_fit.tif").exists()
    # other energies, another kind of checkpoint, a file that is no checkpoint
    narrow = np.arange(8330.0, 8370.01, 0.4)
    write_tiff(tmp_path / "narrow.tif", _stack(members, narrow, labels, soc))
    _write_energies(tmp_path / "narrow.txt", narrow)
    other = [f"input={tmp_path}/narrow.tif", f"energies={tmp_path}/narrow.txt", f"output_dir={tmp_path}/never"]
    with pytest.raises(CheckpointError, match="trained on 60 energies .* the scan lacks"):
        run_xanes(compose("xanes", [*other, f"ckpt_path={ckpt}"]))
    with pytest.raises(CheckpointError, match="segmentation checkpoint, not a XANES model"):
        run_xanes(compose("xanes", [*base, f"ckpt_path={FIXTURES / 'segmentation_lrcsnet.ckpt'}",
                                    f"output_dir={tmp_path}/never"]))
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt cannot be read"):
        run_xanes(compose("xanes", [*base, f"ckpt_path={tmp_path}/junk.ckpt", f"output_dir={tmp_path}/never"]))
    assert not (tmp_path / "never").exists()


def test_bad_inputs_are_named(members, tmp_path):
    from src.data.io.electrochem import ElectrochemError
    from xanes import run_xanes

    labels, _ = _electrode((4, 24, 24))
    energies = np.arange(8330.0, 8370.01, 0.4)
    write_tiff(tmp_path / "stack.tif", _stack(members, energies, labels, np.zeros(labels.shape)))
    (tmp_path / "down.txt").write_text("\n".join(str(e) for e in energies[::-1]))
    with pytest.raises(ValueError, match="down.txt: energies must be strictly increasing"):
        run_xanes(compose("xanes", [f"input={tmp_path}/stack.tif", f"energies={tmp_path}/down.txt"]))
    _write_energies(tmp_path / "short.txt", energies[:-3])
    with pytest.raises(ValueError, match="101 images along the energy axis but 98 energies"):
        run_xanes(compose("xanes", [f"input={tmp_path}/stack.tif", f"energies={tmp_path}/short.txt"]))
    _write_energies(tmp_path / "e.txt", energies)
    (tmp_path / "m.yaml").write_text("energies: e.txt\nstates:\n  - {path: stack.tif, time_h: 0}\n"
                                     "  - {path: missing.tif, time_h: 1}\n")
    with pytest.raises(FileNotFoundError, match=r"m.yaml row 2: column 'path' = 'missing.tif'"):
        run_xanes(compose("xanes", [f"series={tmp_path}/m.yaml", f"output_dir={tmp_path}/never"]))
    (tmp_path / "m2.yaml").write_text("energies: e.txt\nstates:\n  - {path: stack.tif, time_h: 0}\n")
    (tmp_path / "cell.csv").write_text("time_s,current_mA\n0,1\n10,1\n")
    with pytest.raises(ElectrochemError, match="cell.csv: no voltage column"):
        run_xanes(compose("xanes", [f"series={tmp_path}/m2.yaml", f"electrochem={tmp_path}/cell.csv",
                                    f"output_dir={tmp_path}/never"]))
    with pytest.raises(ValueError, match="give input=STACK"):
        run_xanes(compose("xanes", [f"output_dir={tmp_path}/never"]))
    assert not (tmp_path / "never").exists()
