"""XANES benchmarks: real reference spectra, simulated stacks, speed, and the CNNs at equal dose.

    python benchmarks/xanes.py                       # all parts
    python benchmarks/xanes.py --parts speed --size 128 --sample 2000
    python benchmarks/xanes.py --parts cnn --minutes 3

Parts (each prints a markdown table):

* ``real``: steepest-slope, half-jump and white-line energies of ``ref_NiO.txt``,
  ``ref_LiNiO2.txt`` and ``NCA_xanes.csv`` (``../shared/data/xanes``), with the fit ranges; the
  recovery of known linear-combination weights under noise;
* ``simulated``: edge-energy RMSE (eV, NMC voxels) against the simulator's ground truth without
  noise and at 10^4 / 3·10^4 photons per pixel and energy, for the model-free half jump (the
  former estimator — per-voxel lines, first crossing after smoothing — and the current one —
  shared-shape normalisation, local cubic) and the half jump of the LCF mixture; the same with a
  random drift between energies, without alignment, aligned to one energy (the former default)
  and to the iterated mean of the stack (the current one), with the residual shift error (px)
  against the simulator's known drift. The volume is seed ``--sim-seed`` (0), not one of the
  seeds the estimator's widths were chosen on (1, 2);
* ``speed``: voxels/s of the full per-voxel analysis (:func:`src.xanes.maps.analyze_stack`:
  normalisation, jump mask, half jump, steepest slope, white-line fit, NNLS, SOC, LCF edge) on a
  ``size``³ × 60 stack, against a per-voxel scipy loop
  (:func:`src.xanes.reference_loop.analyze_spectrum_loop`) on ``--sample`` voxels of it;
* ``scans``: the command's defaults (``e0`` from the data, windows fitted to the scan) on
  simulated stacks of the default 60-energy scan (without noise and at 10^4 photons; against the
  benchmark's fixed ranges) and of narrow (40 eV), medium (120 eV) and wide (1.4 keV) scans with
  uniform and non-uniform steps; the truth is the half jump of the noiseless spectra normalised
  with the ranges the analysis used; and ``references=from_data`` on a charged electrode whose
  charged end-member lies 5 eV above the discharged one (beyond LiNiO2): SOC error against the
  truth, with the shipped pair and with the end-members from the data;
* ``cnn``: trains the denoiser (a) and the edge-map net (b) with ``train.py``'s ``train`` (CPU,
  ``--minutes`` each at most) and compares them with per-voxel fitting **at equal total dose** on
  the held-out volume: full scan (60 energies × P photons) vs reduced scan (15 × 4P).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.simulation.xanes_scan import (  # noqa: E402
    DEFAULT_REFERENCE_DIR,
    SIMULATION_RANGES,
    XanesSimConfig,
    default_energies,
    load_end_members,
)
from src.xanes.edge import (  # noqa: E402
    EdgeRanges,
    half_jump_energy_fit,
    interpolate_references,
    linear_combination_fit,
    load_spectrum,
    normalize_spectra,
    steepest_slope_energy,
    white_line_energy,
)
from src.xanes.maps import XanesAnalysisConfig, analyze_stack, mask_edge_shape  # noqa: E402

REF_RANGES = EdgeRanges(e0=8345.0, pre=(-145.0, -25.0), post=(55.0, 655.0), post_order=2)
NCA_RANGES = EdgeRanges(e0=8345.0, pre=(-95.0, -10.0), post=(30.0, 300.0))


def table(header: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def rmse(est: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    d = (est - truth)[mask]
    ok = np.isfinite(d)
    return float(np.sqrt(np.mean(d[ok] ** 2))), float(ok.mean())


# ------------------------------------------------------------------ real spectra
def part_real(ref_dir: Path) -> dict:
    out = {}
    rows = []
    for name in ("ref_NiO.txt", "ref_LiNiO2.txt"):
        e, mu = load_spectrum(ref_dir / name)
        n = normalize_spectra(e, mu, REF_RANGES)
        slope = float(steepest_slope_energy(e, n.norm, REF_RANGES.absolute("edge")))
        half = float(half_jump_energy_fit(e, n.norm, REF_RANGES.absolute("edge")))
        wl = float(white_line_energy(e, n.norm, REF_RANGES.absolute("white_line")))
        out[name] = {"steepest_slope_eV": slope, "half_jump_eV": half, "white_line_eV": wl}
        rows.append([name, slope, half, wl, float(n.jump)])
    e, mu = load_spectrum(ref_dir / "NCA_xanes.csv")
    n = normalize_spectra(e, mu, NCA_RANGES)
    wl = float(white_line_energy(e, n.norm, NCA_RANGES.absolute("white_line")))
    rows.append(["NCA_xanes.csv", float(steepest_slope_energy(e, n.norm, NCA_RANGES.absolute("edge"))),
                 float(half_jump_energy_fit(e, n.norm, NCA_RANGES.absolute("edge"))), wl, float(n.jump)])
    out["NCA_xanes.csv"] = {"white_line_eV": wl}
    print("\n### Real spectra (edge definitions: steepest slope = max dmu/dE; half jump = 0.5 of the "
          "normalised jump, local cubic)")
    print(f"references: {REF_RANGES.describe()}; NCA: {NCA_RANGES.describe()}")
    print(table(["spectrum", "steepest slope (eV)", "half jump (eV)", "white line (eV)", "jump"], rows))
    shift = out["ref_LiNiO2.txt"]["half_jump_eV"] - out["ref_NiO.txt"]["half_jump_eV"]
    print(f"half-jump shift Ni2+ -> Ni3+: {shift:+.2f} eV")
    refs = [load_spectrum(ref_dir / f) for f in ("ref_NiO.txt", "ref_LiNiO2.txt")]
    energies = np.arange(8250.0, 8450.0, 1.0)
    r = EdgeRanges(e0=8345.0, pre=(-95.0, -25.0), post=(55.0, 104.0))
    basis = interpolate_references(energies, refs, r)
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 2000)
    w = np.stack([1 - a, a])
    rows = []
    for noise in (0.005, 0.01, 0.02):
        for sto in (False, True):
            y = (0.5 - 0.001 * (energies - 8345))[:, None] + 0.8 * (basis @ w)
            y = y + rng.normal(0, noise * 0.8, y.shape)
            fit = linear_combination_fit(normalize_spectra(energies, y, r).norm, basis, sum_to_one=sto)
            err = np.abs(fit.weights - w)
            rows.append([f"{100 * noise:.1f} %", "yes" if sto else "no", float(np.sqrt((err ** 2).mean())),
                         float(np.percentile(err, 95)), float(err.max())])
    print("\nLinear combination of the two references, known weights, 2000 mixtures, 1 eV steps "
          "8250-8449 eV (noise per point, of the edge jump):")
    print(table(["noise", "sum to one", "RMS weight error", "95th pct", "max"], rows))
    out["lcf"] = rows
    return out


# ------------------------------------------------------------------ simulated stacks
def part_simulated(ref_dir: Path, shape: tuple[int, int, int], seed: int = 0) -> dict:
    from src.simulation.imaging import ImagingConfig
    from src.simulation.microstructure import MicrostructureConfig
    from src.simulation.xanes_scan import make_xanes_sample
    from src.xanes.alignment import align_stack

    micro = MicrostructureConfig(shape=shape, voxel_size_nm=60.0)
    former = XanesAnalysisConfig(ranges=SIMULATION_RANGES, shared_shape=False, edge_method="crossing")
    current = XanesAnalysisConfig(ranges=SIMULATION_RANGES)
    rows, out = [], {}
    for drift in (0.0, 0.7):
        for photons in ((None, 1e4, 3e4) if drift == 0 else (1e4,)):
            cfg = XanesSimConfig(reference_dir=str(ref_dir), drift_px=drift)
            s = make_xanes_sample(seed, micro, cfg, ImagingConfig(), photons)
            m = s.members
            refs = [(m.energies, m.discharged), (m.energies, m.charged)]
            nmc = s.labels == 0
            stacks = [("none", s.stack, None, 0.0)]
            if drift:
                stacks = [("not aligned", s.stack, np.zeros_like(s.shifts), 0.0)]
                for label, kw in (("one energy (former)", {"reference": -1, "normalization": "phase", "iterations": 3}),
                                  ("mean of stack (current)", {})):
                    t = time.perf_counter()
                    aligned, shifts = align_stack(s.stack, **kw)
                    stacks.append((label, aligned, shifts, time.perf_counter() - t))
            for label, stack, shifts, align_s in stacks:
                res = {}
                for name, acfg in (("former", former), ("current", current)):
                    maps = analyze_stack(s.energies, stack, nmc, refs, None, acfg)
                    res[name], valid = rmse(maps["edge_energy"], s.edge_energy, nmc)
                    res[f"lcf_{name}"], _ = rmse(maps["edge_energy_lcf"], s.edge_energy, nmc)
                    res[f"soc_{name}"], _ = rmse(maps["soc"], s.soc, nmc)
                if shifts is not None:  # applied shift = - drift (+ a common translation)
                    err = shifts + s.shifts
                    res["shift_rel_px"] = float(np.sqrt(np.mean((err - err.mean(0)) ** 2)))
                    res["shift_abs_px"] = float(np.sqrt(np.mean(err ** 2)))
                    res["align_s"] = align_s
                key = f"photons={photons},drift={drift},{label}"
                out[key] = {**res, "valid": valid}
                shift_txt = "-" if shifts is None else f"{res['shift_rel_px']:.3f} / {res['shift_abs_px']:.3f}"
                rows.append(["noiseless" if photons is None else f"{photons:.0e}", f"{drift:.1f} px", label,
                             shift_txt, res["former"], res["current"], res["lcf_current"], res["soc_current"], valid])
    print(f"\n### Simulated stacks (seed {seed}, {shape[0]}x{shape[1]}x{shape[2]} voxels of 60 nm, 60 energies, "
          f"181 angles per energy; RMSE over NMC voxels; {SIMULATION_RANGES.describe()})")
    print("shift error: rms of (applied shift + true drift) in px, up to a common translation / absolute")
    print(table(["photons/pixel/energy", "drift (std)", "alignment", "shift error (px)",
                 "half jump, former (eV)", "half jump, current (eV)", "LCF edge (eV)", "SOC RMSE",
                 "valid fraction"], rows))
    return out


# ------------------------------------------------------------------ speed
def part_speed(ref_dir: Path, size: int, sample: int) -> dict:
    from src.xanes.reference_loop import analyze_spectrum_loop

    energies = default_energies()
    m = load_end_members(ref_dir)
    refs = [(m.energies, m.discharged), (m.energies, m.charged)]
    rng = np.random.default_rng(0)
    n = size ** 3
    soc = rng.uniform(0, 1, n).astype(np.float32)
    bg = (0.012 * (energies / 8346.0) ** -2.8).astype(np.float32)
    ends = (0.01 * m.at(energies)).astype(np.float32)
    stack = np.empty((energies.size, n), np.float32)
    for e in range(energies.size):  # (E, N) built energy by energy to bound memory
        stack[e] = bg[e] + ends[e, 0] * (1 - soc) + ends[e, 1] * soc + rng.normal(0, 4e-4, n).astype(np.float32)
    stack = stack.reshape(energies.size, size, size, size)
    cfg = XanesAnalysisConfig(ranges=SIMULATION_RANGES)
    analyze_stack(energies, stack[:, :4, :16, :16], None, refs, None, cfg)  # warm-up (imports)
    t = time.perf_counter()
    analyze_stack(energies, stack, None, refs, None, XanesAnalysisConfig(ranges=SIMULATION_RANGES, workers=1))
    ours_1 = time.perf_counter() - t
    t = time.perf_counter()
    maps = analyze_stack(energies, stack, None, refs, None, cfg)
    ours = time.perf_counter() - t
    idx = rng.choice(n, sample, replace=False)
    flat = stack.reshape(energies.size, -1)
    refs_n = interpolate_references(energies, refs, SIMULATION_RANGES)
    shape = mask_edge_shape(energies, flat, np.arange(n), SIMULATION_RANGES)  # as analyze_stack
    t = time.perf_counter()
    loop = analyze_spectrum_loop(energies, flat[:, idx], refs_n, SIMULATION_RANGES, cfg.smooth_points, shape=shape,
                                 edge_fit=(cfg.fit_half_width, cfg.fit_degree, cfg.coarse_smooth))
    peer = time.perf_counter() - t
    v_ours, v_peer = n / ours, sample / peer
    agree = float(np.nanmax(np.abs(maps["edge_energy"].ravel()[idx] - loop["edge_energy"])))
    w = np.stack([maps["weight_ref0"].ravel()[idx], maps["weight_ref1"].ravel()[idx]])
    agree_w = float(np.nanmax(np.abs(w - loop["weights"])))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"\n### Speed ({size}^3 x {energies.size} stack, float32, {os.cpu_count()} CPU cores; "
          f"peak RSS {peak:.1f} GiB)")
    print(table(["method", "voxels", "time (s)", "voxels/s", "ratio"],
                [["vectorised analyze_stack (all steps), 1 thread", n, ours_1, f"{n / ours_1:.0f}",
                  f"{n / ours_1 / v_peer:.0f}x"],
                 [f"vectorised analyze_stack (all steps), {os.cpu_count()} threads", n, ours, f"{v_ours:.0f}",
                  f"{v_ours / v_peer:.0f}x"],
                 ["per-voxel scipy loop (lstsq, savgol, polyfit, nnls)", sample, peer, f"{v_peer:.0f}", "1x"]]))
    print(f"agreement on the sample: edge energy max |diff| {agree:.2e} eV, NNLS weights {agree_w:.2e}")
    return {"voxels_per_s": v_ours, "voxels_per_s_1_thread": n / ours_1, "peer_voxels_per_s": v_peer,
            "ratio": v_ours / v_peer, "ratio_1_thread": n / ours_1 / v_peer,
            "seconds": ours, "edge_max_diff_eV": agree, "weights_max_diff": agree_w}


# ------------------------------------------------------------------ scans of any width, from_data
SCAN_GRIDS = {
    "default 60 energies (8290-8450, non-uniform)": None,
    "narrow 40 eV, 0.4 eV steps": np.arange(8330.0, 8370.01, 0.4),
    "narrow 40 eV, non-uniform": np.unique(np.r_[np.arange(8330.0, 8340.0, 1.0), np.arange(8340.0, 8360.0, 0.3),
                                                 np.arange(8360.0, 8371.0, 1.0)]),
    "medium 120 eV, 1 eV steps": np.arange(8290.0, 8410.01, 1.0),
    "wide 1.4 keV, 4 eV steps": np.arange(8060.0, 9460.01, 4.0),
    "wide 1.4 keV, non-uniform": np.unique(np.r_[np.arange(8060.0, 8330.0, 10.0), np.arange(8330.0, 8370.0, 0.5),
                                                 np.arange(8370.0, 9460.1, 20.0)]),
}


def part_scans(shape: tuple[int, int, int], seed: int = 0) -> dict:
    from hydra.utils import instantiate

    from src.config import compose_config
    from src.simulation.imaging import ImagingConfig
    from src.simulation.microstructure import MicrostructureConfig
    from src.simulation.xanes_scan import make_xanes_sample, true_edge_energy
    from src.xanes.edge import load_spectrum
    from src.xanes.end_members import end_members_from_data
    from src.xanes.maps import analyze, soc_saturation
    from src.xanes.references import resolve_reference

    cfg_default = instantiate(compose_config("xanes", []).analysis)  # the command's analysis settings
    cfg_default.oxidation_states = tuple(cfg_default.oxidation_states)
    micro = MicrostructureConfig(shape=shape, voxel_size_nm=60.0)
    rows, out = [], {}
    for name, grid in SCAN_GRIDS.items():
        sim = XanesSimConfig(energies=None if grid is None else tuple(grid))
        for photons in (None, 1e4):
            t = time.perf_counter()
            s = make_xanes_sample(seed, micro, sim, ImagingConfig(n_angles=121), photons)
            nmc = s.labels == 0
            res = analyze(s.energies, s.stack, nmc, None, None, cfg_default)
            truth, _ = true_edge_energy(s.soc, sim, s.members, res.ranges)
            err, valid = rmse(res.maps["edge_energy"], truth, nmc)
            fixed = None
            if grid is None:  # the benchmark's fixed ranges and truth, as in part "simulated"
                fixed = rmse(analyze(s.energies, s.stack, nmc, None, None,
                                     XanesAnalysisConfig(ranges=SIMULATION_RANGES)).maps["edge_energy"],
                             s.edge_energy, nmc)[0]
            out[f"{name},photons={photons}"] = {"rmse_eV": err, "valid": valid, "e0": res.ranges.e0,
                                                "ranges": res.ranges.describe(), "fixed_ranges_rmse_eV": fixed}
            rows.append([name, s.energies.size, "noiseless" if photons is None else f"{photons:.0e}",
                         res.ranges.describe(), err, "-" if fixed is None else f"{fixed:.3f}", valid,
                         f"{time.perf_counter() - t:.0f}"])
    print(f"\n### Scans of any width with the command's defaults (seed {seed}, {shape} voxels of 60 nm, "
          "121 angles; half-jump RMSE over NMC voxels against the truth normalised with the ranges used)")
    print(table(["scan", "energies", "photons/pixel/energy", "ranges used (e0 from the data)", "half jump RMSE (eV)",
                 "fixed benchmark ranges (eV)", "valid", "time (s)"], rows))
    # from_data on an electrode charged beyond LiNiO2
    sim = XanesSimConfig(edge_charged_eV=8351.0, soc_mean=0.5, particle_soc_spread=0.7)
    refs = [load_spectrum(resolve_reference(f"builtin:{n}")) for n in ("ref_NiO.txt", "ref_LiNiO2.txt")]
    rows2 = []
    for photons in (None, 1e4):
        s = make_xanes_sample(seed, micro, sim, ImagingConfig(n_angles=121), photons)
        nmc = s.labels == 0
        shipped = analyze(s.energies, s.stack, nmc, refs, ["Ni2", "Ni3"], cfg_default)
        valid = shipped.maps["valid"].astype(bool) & nmc
        flat = s.stack.reshape(s.energies.size, -1)
        idx = np.flatnonzero(valid.ravel())
        norm = normalize_spectra(s.energies, flat[:, idx], shipped.ranges,
                                 mask_edge_shape(s.energies, flat, idx, shipped.ranges)).norm
        basis = end_members_from_data(norm, shipped.maps["edge_energy"].ravel()[idx])
        own_cfg = XanesAnalysisConfig(**{**cfg_default.__dict__, "ranges": shipped.ranges, "fit_to_scan": False,
                                         "oxidation_states": (0.0, 1.0)})
        own = analyze(s.energies, s.stack, nmc, None, ["d", "c"], own_cfg, basis=basis)
        for label, r in (("shipped NiO/LiNiO2", shipped), ("from_data", own)):
            d = (r.maps["soc"] - s.soc)[nmc]
            d = d[np.isfinite(d)]
            sat = soc_saturation(r.maps["soc"][nmc])
            rows2.append(["noiseless" if photons is None else f"{photons:.0e}", label, float(np.sqrt(np.mean(d ** 2))),
                          float(np.mean(np.abs(d))), float(np.mean(d)), sat["fraction_at_0"], sat["fraction_at_1"]])
            out[f"from_data,photons={photons},{label}"] = rows2[-1][2:]
    print("\n### SOC on an electrode charged beyond LiNiO2 (charged end-member half-maximum at 8351 eV; truth SOC "
          "0-1, particles 0.5 +- 0.7 clipped)")
    print(table(["photons/pixel/energy", "end-members", "SOC RMSE", "mean abs error", "bias", "share at 0",
                 "share at 1"], rows2))
    return out


# ------------------------------------------------------------------ CNNs at equal dose
def part_cnn(ref_dir: Path, minutes: float, out_dir: Path, figure: Path | None) -> dict:
    import torch
    from hydra.utils import instantiate

    from src.config import compose_config
    from src.inference.xanes_maps import apply_xanes_module
    from src.models.checkpoint import load_xanes_checkpoint
    from train import train

    os.environ.setdefault("WANDB_MODE", "disabled")
    common = ["logger=csv", f"data.xanes.reference_dir={ref_dir}", f"data.cache_dir={out_dir}/cache",
              f"trainer.max_time=00:00:{int(minutes):02d}:{int(60 * (minutes % 1)):02d}",
              "+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
              "callbacks.progress_bar=null"]
    runs, times = {}, {}
    for exp in ("xanes_edge", "xanes_denoiser"):
        run = out_dir / exp
        cfg = compose_config("train", [f"experiment={exp}", *common, f"paths.output_dir={run}", f"paths.log_dir={run}"])
        t = time.perf_counter()
        train(cfg)
        times[exp] = time.perf_counter() - t
        dm = instantiate(cfg.data)
        module = load_xanes_checkpoint(run / "checkpoints" / "best.ckpt")[0]
        runs[exp] = (cfg, dm, module)
    _, dm_b, net_b = runs["xanes_edge"]
    _, dm_a, net_a = runs["xanes_denoiser"]
    seed = int(dm_b.hparams.val_seeds[0])
    vol_b, vol_a = dm_b.volume(seed), dm_a.volume(seed)
    truth, nmc = vol_b["edge"], np.isfinite(vol_b["edge"])
    m = load_end_members(ref_dir)
    refs = [(m.energies, m.discharged), (m.energies, m.charged)]
    full, reduced = dm_a.input_energies, dm_b.input_energies
    fit_cfg = XanesAnalysisConfig(ranges=SIMULATION_RANGES)
    sparse_cfg = XanesAnalysisConfig(ranges=SIMULATION_RANGES, smooth_points=0)
    basis_net = _spectral_basis_only(net_a, dm_a)
    cnn_b = apply_xanes_module(net_b, vol_b["input"])  # the library's application (as xanes.py ckpt_path=)
    den = apply_xanes_module(net_a, vol_a["input"])
    with torch.no_grad():
        x_a = torch.from_numpy(vol_a["input"].transpose(1, 0, 2, 3) / dm_a.hparams.input_scale).float()
        proj = (basis_net(x_a).numpy() * dm_a.hparams.input_scale).transpose(1, 0, 2, 3) if basis_net else None
    results = {}

    def add(name, energies, dose, est):
        results[name] = {"energies": int(energies), "photons_per_energy": dose,
                         "rmse_eV": rmse(est, truth, nmc)[0], "valid": rmse(est, truth, nmc)[1]}

    p = float(dm_a.hparams.photons)
    maps60 = analyze_stack(full, vol_a["input"], nmc, refs, None, fit_cfg)
    maps15 = analyze_stack(reduced, vol_b["input"], nmc, refs, None, sparse_cfg)
    maps_den = analyze_stack(full, den, nmc, refs, None, fit_cfg)
    maps_proj = analyze_stack(full, proj, nmc, refs, None, fit_cfg) if proj is not None else None
    add("per-voxel fit, half jump", full.size, p, maps60["edge_energy"])
    add("per-voxel fit, LCF mixture edge", full.size, p, maps60["edge_energy_lcf"])
    add("per-voxel fit, half jump (reduced)", reduced.size, p * full.size / reduced.size, maps15["edge_energy"])
    add("per-voxel fit, LCF mixture edge (reduced)", reduced.size, p * full.size / reduced.size,
        maps15["edge_energy_lcf"])
    if maps_proj is not None:
        add("(a) spectral basis only (PCA of clean training spectra, untrained) + fit, half jump", full.size, p,
            maps_proj["edge_energy"])
    add("(a) denoiser + per-voxel fit, half jump", full.size, p, maps_den["edge_energy"])
    add("(a) denoiser + per-voxel fit, LCF mixture edge", full.size, p, maps_den["edge_energy_lcf"])
    add("(b) CNN edge map (reduced)", reduced.size, p * full.size / reduced.size, np.where(nmc, cnn_b, np.nan))
    print(f"\n### CNNs against per-voxel fitting at equal total dose (held-out volume seed {seed}, "
          f"{tuple(truth.shape)} voxels, NMC voxels; total dose {full.size} x {p:.0e} photons/pixel)")
    print(f"training (2 CPU cores): (b) {times['xanes_edge'] / 60:.1f} min, (a) {times['xanes_denoiser'] / 60:.1f} "
          f"min; {len(dm_b.hparams.train_seeds)} training volumes {tuple(dm_b.hparams.shape)}, "
          f"crops {dm_b.hparams.crop}^2, {dm_b.hparams.samples_per_epoch} crops/epoch")
    print(table(["method", "energies", "photons/pixel/energy", "edge RMSE (eV)", "valid fraction"],
                [[k, v["energies"], f"{v['photons_per_energy']:.0e}", v["rmse_eV"], v["valid"]]
                 for k, v in results.items()]))
    np.savez_compressed(out_dir / "cnn_maps.npz", truth=truth, fit=maps60["edge_energy"],
                        lcf=maps60["edge_energy_lcf"], cnn=cnn_b, nmc=nmc)
    if figure is not None:
        _figure(figure, truth, maps60["edge_energy"], maps60["edge_energy_lcf"], cnn_b, nmc)
    return {"results": results, "train_time_s": times}


def _spectral_basis_only(trained, dm):
    """A fresh copy of the trained denoiser's architecture holding only its starting point: the
    PCA projection of the clean training spectra (None for other denoisers)."""
    import copy

    import torch

    if not hasattr(trained.net, "init_spectral_basis"):
        return None
    net = copy.deepcopy(trained.net).eval()
    torch.nn.init.zeros_(net.spatial[-1].weight)
    torch.nn.init.zeros_(net.spatial[-1].bias)
    spectra = [dm.volume(s)["clean"].reshape(net.n_energies, -1).T / dm.hparams.input_scale
               for s in dm.hparams.train_seeds]
    net.init_spectral_basis(torch.from_numpy(np.concatenate(spectra)[::4]))
    return net


def _figure(path: Path, truth, fit, lcf, cnn, nmc) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.data.io.figures import save_figure

    z = truth.shape[0] // 2
    panels = [("truth", truth), ("per-voxel half jump, 60 E", fit), ("per-voxel LCF edge, 60 E", lcf),
              ("CNN (b), 15 E, same dose", np.where(nmc, cnn, np.nan))]
    lo, hi = np.nanpercentile(truth, [1, 99])
    fig, axes = plt.subplots(1, 4, figsize=(11, 3.0), constrained_layout=True)
    for ax, (title, img) in zip(axes, panels, strict=True):
        im = ax.imshow(np.ma.masked_invalid(img[z]), cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.colorbar(im, ax=axes, fraction=0.02, label="half-jump edge energy (eV)")
    save_figure(fig, path, dpi=80)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["real", "simulated", "speed", "cnn"],
                        choices=["real", "simulated", "speed", "cnn", "scans"])
    parser.add_argument("--scan-shape", type=int, nargs=3, default=[24, 48, 48], help="scans: volume shape")
    parser.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE_DIR)
    parser.add_argument("--sim-shape", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--sim-seed", type=int, default=0, help="simulated: the volume's seed (held out)")
    parser.add_argument("--size", type=int, default=128, help="speed: stack of size^3 voxels x 60 energies")
    parser.add_argument("--sample", type=int, default=2000, help="speed: voxels of the scipy loop")
    parser.add_argument("--minutes", type=float, default=3.0, help="cnn: training time cap per net")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "benchmarks" / "xanes")
    parser.add_argument("--figure", type=Path, default=None, help="cnn: PNG of the edge maps")
    args = parser.parse_args(argv)
    results = {}
    if "real" in args.parts:
        results["real"] = part_real(args.reference_dir)
    if "simulated" in args.parts:
        results["simulated"] = part_simulated(args.reference_dir, tuple(args.sim_shape), args.sim_seed)
    if "speed" in args.parts:
        results["speed"] = part_speed(args.reference_dir, args.size, args.sample)
    if "scans" in args.parts:
        results["scans"] = part_scans(tuple(args.scan_shape), args.sim_seed)
    if "cnn" in args.parts:
        results["cnn"] = part_cnn(args.reference_dir, args.minutes, args.out, args.figure)
    from src.data.io import to_jsonable, write_json

    write_json(args.out / "results.json", to_jsonable(results))
    print(f"\nresults: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
