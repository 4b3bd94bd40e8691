"""Learned reconstruction: nets (LPD, LGD, FBPConvNet), sinogram data, train.py fits, quality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.data.sinogram_datamodule import SinogramDataModule
from src.models.nets.reconstruction import (
    FBPConvNet,
    LearnedGradientDescent,
    LearnedPrimalDual,
    make_projector,
)
from src.recon.evaluation import compare_methods, format_recon_table, psnr, rel_error, ssim
from src.simulation.sinograms import (
    disk_mask,
    electrode_slices,
    random_ellipses,
    simulate_sinograms,
)
from tests.helpers import RECON_SIZE as SIZE
from tests.helpers import compose, recon_overrides

ANGLES = 12


def small_net(kind: str, projector=None):
    geo = {"projector": projector} if projector is not None else {"image_size": SIZE, "n_angles": ANGLES}
    if kind == "lpd":
        return LearnedPrimalDual(**geo, n_iter=3, width=8)
    if kind == "lgd":
        return LearnedGradientDescent(**geo, n_iter=3, width=8)
    return FBPConvNet(**geo, base_filters=4, depth=2)


# ------------------------------------------------------------------ nets
@pytest.mark.parametrize("kind", ["lpd", "lgd", "fbpconvnet"])
def test_net_forward_backward_shapes(kind):
    torch.manual_seed(0)
    net = small_net(kind)
    sino = torch.rand(2, 1, ANGLES, SIZE)
    out = net(sino)
    assert out.shape == (2, 1, SIZE, SIZE)
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net(sino[:, 0]).shape == (2, 1, SIZE, SIZE)  # (B, A, n_det) accepted too
    with pytest.raises(ValueError, match="sinogram must be"):
        net(torch.rand(2, 1, ANGLES + 1, SIZE))


def test_lpd_follows_the_paper_layout():
    net = LearnedPrimalDual(image_size=SIZE, n_angles=ANGLES)
    assert len(net.primal_nets) == len(net.dual_nets) == 10
    convs = [m for m in net.dual_nets[0] if isinstance(m, torch.nn.Conv2d)]
    assert [c.in_channels for c in convs] == [5 + 2, 32, 32] and convs[-1].out_channels == 5
    assert convs[0].kernel_size == (3, 3)
    assert net.primal_nets[0][0].in_channels == 5 + 1
    assert any(isinstance(m, torch.nn.PReLU) for m in net.primal_nets[0])


def test_lpd_fbp_initialisation_starts_at_the_fbp():
    torch.manual_seed(0)
    zero = LearnedPrimalDual(image_size=SIZE, n_angles=ANGLES, n_iter=1, width=8)
    fbp_init = LearnedPrimalDual(image_size=SIZE, n_angles=ANGLES, n_iter=1, width=8, init="fbp")
    for net in (zero, fbp_init):  # silence the learned updates: the output is the start value
        torch.nn.init.zeros_(net.primal_nets[0][-1].weight)
        torch.nn.init.zeros_(net.primal_nets[0][-1].bias)
    sino = torch.rand(2, 1, ANGLES, SIZE)
    assert torch.equal(zero(sino), torch.zeros(2, 1, SIZE, SIZE))
    assert torch.allclose(fbp_init(sino), fbp_init.fbp(sino), atol=1e-6)
    with pytest.raises(ValueError, match="init must be"):
        LearnedPrimalDual(image_size=SIZE, n_angles=ANGLES, init="sirt")


def test_lpd_zero_updates_start_at_the_fbp_and_still_learn():
    torch.manual_seed(0)
    net = LearnedPrimalDual(image_size=SIZE, n_angles=ANGLES, n_iter=3, width=8, init="fbp", zero_updates=True)
    sino = torch.rand(2, 1, ANGLES, SIZE)
    out = net(sino)
    assert torch.allclose(out, net.fbp(sino), atol=1e-6)
    (out - torch.rand_like(out)).pow(2).mean().backward()
    last = net.primal_nets[-1][-1]
    assert last.weight.grad is not None and last.weight.grad.abs().max() > 0


def test_lpd_gradient_flows_through_the_projector(monkeypatch):
    """The loss gradient reaches the sinogram through A^T's backward (= A) and the weights."""
    op = make_projector(SIZE, ANGLES)
    net = small_net("lpd", op)
    calls = {"forward": 0, "adjoint": 0}
    fwd, adj = op._apply_forward, op._apply_adjoint

    def count_fwd(x):
        calls["forward"] += 1
        return fwd(x)

    def count_adj(y):
        calls["adjoint"] += 1
        return adj(y)

    monkeypatch.setattr(op, "_apply_forward", count_fwd)
    monkeypatch.setattr(op, "_apply_adjoint", count_adj)
    sino = torch.rand(2, 1, ANGLES, SIZE, requires_grad=True)
    out = net(sino)
    assert calls == {"forward": 3, "adjoint": 3}
    out.sum().backward()
    assert calls["forward"] > 3 and calls["adjoint"] > 3  # autograd through A and A^T
    assert sino.grad is not None and sino.grad.abs().sum() > 0
    assert net.dual_nets[0][0].weight.grad.abs().sum() > 0


def test_op_norm_is_a_buffer_and_positive():
    net = small_net("lpd")
    assert "op_norm" in dict(net.named_buffers()) and float(net.op_norm) > 1.0
    assert "op_norm" in net.state_dict()


# ------------------------------------------------------------------ data
def test_phantoms_shapes_range_and_disk():
    ell = random_ellipses(5, SIZE, torch.Generator().manual_seed(0))
    assert ell.shape == (5, SIZE, SIZE) and ell.min() >= 0 and ell.max() <= 1
    assert (ell[:, ~disk_mask(SIZE)] == 0).all() and (ell.flatten(1).max(1).values > 0).all()
    elec = electrode_slices(4, SIZE, seed=3)
    assert elec.shape == (4, SIZE, SIZE) and torch.isclose(elec.max(), torch.tensor(1.0))
    levels = torch.tensor([0.0, 0.025, 0.25, 1.0])
    assert ((torch.unique(elec)[:, None] - levels).abs().min(1).values < 1e-6).all()


def _dm(**kw) -> SinogramDataModule:
    args = {"image_size": SIZE, "n_angles": 16, "train_samples": 8, "val_samples": 6,
            "ellipse_fraction": 0.5, "batch_size": 4, "seed": 1}
    dm = SinogramDataModule(**{**args, **kw})
    dm.setup("fit")
    return dm


def test_datamodule_shapes_and_determinism():
    dm = _dm()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, SIZE, SIZE)
    assert batch["sinogram"].shape == (4, 1, 16, SIZE)
    sino, img = dm.held_out()
    assert sino.shape == (6, 1, 16, SIZE) and img.shape == (6, 1, SIZE, SIZE)
    again = _dm()
    assert torch.equal(dm.train_set.sinograms, again.train_set.sinograms)
    assert torch.equal(dm.val_set.images, again.val_set.images)
    other = _dm(seed=2)
    assert not torch.equal(dm.train_set.images, other.train_set.images)
    assert not torch.equal(dm.train_set.images[:1], dm.val_set.images[:1])  # held out


def test_photons_noise_and_noiseless():
    op = make_projector(SIZE, 16)
    images = random_ellipses(4, SIZE, torch.Generator().manual_seed(0))
    clean = simulate_sinograms(images, op, photons=None)
    assert torch.allclose(clean, op(images))
    errs = []
    for photons in (1e3, 1e5):
        noisy = simulate_sinograms(images, op, photons, generator=torch.Generator().manual_seed(0))
        errs.append(float((noisy - clean).std()))
        assert abs(float((noisy - clean).mean())) < 0.1 * errs[-1] + 0.05  # about unbiased
    assert errs[0] > 5 * errs[1] > 0  # ~ 1/sqrt(photons)
    with pytest.raises(ValueError, match="photons"):
        simulate_sinograms(images, op, photons=0)


def test_metrics():
    x = torch.rand(3, 1, SIZE, SIZE)
    assert torch.allclose(psnr(x + 0.1, x), torch.full((3,), 20.0), atol=1e-3)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)
    assert torch.allclose(rel_error(2 * x, x), torch.ones(3), atol=1e-6)


# ------------------------------------------------------------------ train.py
def test_recon_configs_compose():
    cfg = compose("train", ["model=lpd", "data=sinograms", "data.n_angles=60", "data.photons=1e4",
                            "callbacks=reconstruction"])
    assert cfg.optimized_metric == "val/psnr"
    for name in ("model_checkpoint", "early_stopping"):
        assert cfg.callbacks[name].monitor == "val/psnr" and cfg.callbacks[name].mode == "max"
    assert cfg.callbacks.image_panel is None
    assert cfg.callbacks.recon_panel._target_ == "src.training.reconstruction_panels.ReconstructionPanelLogger"
    assert cfg.model.net.n_angles == 60 and cfg.data.photons == 1e4
    assert cfg.model.net._target_ == "src.models.nets.reconstruction.LearnedPrimalDual"
    assert cfg.model._target_ == "src.models.reconstruction.ReconstructionModule"
    exp = compose("train", ["experiment=recon_lpd"])
    assert exp.model.name == "lpd" and exp.callbacks.model_checkpoint.monitor == "val/psnr"
    seg = compose("train", ["model=unet"])  # segmentation keeps its metric and panel
    assert seg.callbacks.model_checkpoint.monitor == "val/miou" and seg.optimized_metric == "val/miou"
    assert "recon_panel" not in seg.callbacks


def test_plain_command_monitors_psnr():
    """`python train.py model=lpd data=sinograms` (no callbacks=...): the model sets
    optimized_metric; the default callbacks follow it once they monitor ${optimized_metric}."""
    cfg = compose("train", ["model=lpd", "data=sinograms"])
    assert cfg.optimized_metric == "val/psnr"
    assert cfg.callbacks.model_checkpoint.monitor == "val/psnr"
    assert cfg.callbacks.early_stopping.monitor == "val/psnr"


@pytest.mark.parametrize("model", ["lpd", "lgd", "fbpconvnet"])
def test_train_each_recon_model(tmp_path, model):
    import train

    cfg = compose("train", recon_overrides(tmp_path, model))
    metrics = train.train(cfg)
    for key in ["val/psnr", "val/ssim", "val/rel_error", "val/psnr_fbp", "val/ssim_fbp",
                "val/rel_error_fbp", "val/psnr_gain", "val/loss", "train/loss_epoch"]:
        assert key in metrics, key
    assert -1.0 <= metrics["val/ssim"] <= 1.0 and metrics["val/psnr_fbp"] > 5
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert list((tmp_path / "panels").glob("val_epoch*.png"))
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["name"] == model
    assert ckpt["datamodule_hyper_parameters"]["n_angles"] == 16


def test_lpd_trains_with_bf16_mixed_precision(tmp_path):
    """`trainer.precision=bf16-mixed`: the convolutions run in bfloat16, the operators in float32."""
    import train

    cfg = compose("train", recon_overrides(tmp_path, "lpd", ["trainer.precision=bf16-mixed"]))
    metrics = train.train(cfg)
    assert math.isfinite(metrics["train/loss_epoch"]) and metrics["val/psnr"] > 5
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())


# ------------------------------------------------------------------ quality
def test_lpd_beats_fbp_on_sparse_view_ellipses():
    """~15 s of CPU training (256 steps): LPD clearly better than FBP at 10 noiseless views
    (measured: FBP 20.0 dB, LPD 25.1 dB on 32 held-out 32^2 ellipse phantoms)."""
    torch.manual_seed(0)
    dm = SinogramDataModule(image_size=SIZE, n_angles=10, photons=None, train_samples=512,
                            val_samples=32, ellipse_fraction=1.0, batch_size=16, seed=0)
    dm.setup("fit")
    net = LearnedPrimalDual(projector=dm.projector, n_iter=5, width=16)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    loader = dm.train_dataloader()
    for _ in range(8):
        for batch in loader:
            loss = torch.nn.functional.mse_loss(net(batch["sinogram"]), batch["image"])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
    net.eval()
    sino, img = dm.held_out()
    rows = compare_methods({"FBP": dm.fbp, "LPD": net}, sino, img)
    print(format_recon_table(rows))
    fbp_row, lpd_row = rows
    assert lpd_row["psnr"] > fbp_row["psnr"] + 3.0
    assert lpd_row["ssim"] > fbp_row["ssim"]


def test_evaluate_prints_and_writes_the_comparison_table(tmp_path):
    """`python evaluate.py ckpt_path=<reconstruction ckpt> compare_ckpts=[...]`: one table with
    FBP, SIRT, TV and the learned nets on the held-out slices."""
    import json

    import evaluate
    import train

    for model in ("lpd", "fbpconvnet"):
        train.train(compose("train", recon_overrides(tmp_path / model, model)))
    ckpt = tmp_path / "lpd" / "checkpoints" / "best.ckpt"
    other = tmp_path / "fbpconvnet" / "checkpoints" / "best.ckpt"
    out = tmp_path / "eval"
    cfg = compose("evaluate", [f"ckpt_path={ckpt}", f"compare_ckpts=[{other}]", f"output_dir={out}",
                               "recon.sirt_iter=5", "recon.tv_iter=5"])
    report = evaluate.evaluate(cfg)
    methods = [r["method"] for r in report["rows"]]
    assert methods[0] == "FBP" and "LPD" in methods and "FBPConvNet" in methods
    assert any(m.startswith("SIRT") for m in methods) and any(m.startswith("TV") for m in methods)
    saved = json.loads((out / "recon_metrics.json").read_text())
    assert [r["method"] for r in saved["rows"]] == methods
    assert "| LPD |" in (out / "recon_metrics.md").read_text()
    assert all(np.isfinite(r["psnr"]) for r in saved["rows"])
