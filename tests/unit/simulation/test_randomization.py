"""Domain randomisation (issue 19): settings drawn from ranges, deterministic from the seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from src.data.sources import SyntheticVolumeSet
from src.simulation.imaging import ImagingConfig, apply_gamma, beam_hardening, simulate_tomography
from src.simulation.randomization import DomainRandomization, RandomizationError

RANGES = {
    "imaging": {"nmc_attenuation": [0.01, 0.04], "pore_to_nmc": [0.0, 0.4], "cbd_contrast": [-0.3, 1.3],
                "photons": [100, 1e5], "halo_strength": [-1.5, 2.0], "n_angles": [16, 64],
                "cupping": [0.0, 0.3], "field_strength": [0.0, 0.3], "gamma": [0.6, 1.7]},
    "microstructure": {"voxel_size_nm": [30, 60], "cbd_fraction": [0.05, 0.25], "cracks_max": [1, 4]},
}


def test_draw_is_deterministic_and_inside_the_ranges():
    dr = DomainRandomization(**RANGES)
    assert dr.draw(3) == dr.draw(3)
    draws = [dr.draw(s) for s in range(40)]
    assert len({json.dumps(d, sort_keys=True) for d in draws}) == 40
    for micro, img in draws:
        assert 100 <= img["photons"] <= 1e5 and 16 <= img["n_angles"] <= 64
        assert isinstance(img["n_angles"], int) and isinstance(micro["cracks_max"], int)
        assert 30 <= micro["voxel_size_nm"] <= 60 and 0.6 <= img["gamma"] <= 1.7
        nmc, cbd, pore = img["attenuation"]
        assert pore <= 0.4 * nmc + 1e-12
    signs = {np.sign(img["halo_strength"]) for _, img in draws}
    assert signs == {-1.0, 1.0}
    # CBD sometimes darker than pore, sometimes brighter than NMC, mostly between
    cbd_pos = [(img["attenuation"][1] - img["attenuation"][2]) / (img["attenuation"][0] - img["attenuation"][2])
               for _, img in draws]
    assert min(cbd_pos) < 0 and max(cbd_pos) > 1
    # fixed values stay, and the configs build
    micro_cfg, img_cfg = dr.configs(5, (16, 16, 16), imaging={"ring_strength": 0.0})
    assert img_cfg.ring_strength == 0.0 and micro_cfg.shape == (16, 16, 16)


@pytest.mark.parametrize(("group", "key", "value", "message"), [
    ("imaging", "photons", [1e4, 1e2], "imaging.photons: range low 10000.0 > high 100.0"),
    ("imaging", "photons", [-5, 1e3], "imaging.photons: must not be negative"),
    ("imaging", "detector_blur_px", [-1, 1], "imaging.detector_blur_px: must not be negative"),
    ("microstructure", "cbd_fraction", [0.3, 0.1], "microstructure.cbd_fraction: range low 0.3 > high 0.1"),
    ("imaging", "no_such_knob", [0, 1], "imaging.no_such_knob: unknown key"),
    ("imaging", "gamma", [1.0], "imaging.gamma: expected a range [low, high]"),
])
def test_bad_ranges_are_config_errors_naming_the_key(group, key, value, message):
    with pytest.raises(RandomizationError, match=f"data.prepare.randomization.{message}".replace("[", r"\[")):
        DomainRandomization(**{group: {key: value}})


def test_a_negative_fixed_photon_count_is_refused():
    with pytest.raises(ValueError, match="imaging.photons must be > 0"):
        ImagingConfig(photons=-10)


def test_new_imaging_stages_are_deterministic_and_do_what_they_say():
    labels = np.zeros((4, 24, 24), np.uint8)
    labels[:, 4:20, 4:20] = 2
    cfg = ImagingConfig(n_angles=24, photons=1e4, cupping=0.3, field_strength=0.2, field_sigma_px=8, gamma=1.5)
    a = simulate_tomography(labels, cfg, seed=1)
    np.testing.assert_array_equal(a, simulate_tomography(labels, cfg, seed=1))
    assert not np.array_equal(a, simulate_tomography(labels, cfg, seed=2))
    proj = np.linspace(0, 2, 11, dtype=np.float32)
    bent = beam_hardening(proj, 0.25)
    assert bent[0] == 0 and np.isclose(bent[-1], 2 - 0.25 * 2) and np.all(np.diff(bent) > 0)
    ramp = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10)
    assert apply_gamma(ramp, 2.0).mean() < ramp.mean() < apply_gamma(ramp, 0.5).mean()


def test_randomised_volume_set_is_cached_and_reproducible_by_seed(tmp_path):
    kwargs = {"train_seeds": [0, 1], "test_seeds": [], "shape": [12, 20, 20], "progress": False,
              "microstructure": {"radius_median_nm": 200.0, "radius_min_nm": 80.0},
              "imaging": {"n_angles": 16}, "randomization": {"imaging": {"photons": [100, 1e5], "gamma": [0.6, 1.7]}}}
    a = SyntheticVolumeSet(tmp_path / "a", **kwargs)()
    b = SyntheticVolumeSet(tmp_path / "b", **kwargs)()
    metas = [json.loads(p["meta"].read_text())["parameters"]["imaging"] for p in a]
    assert metas[0]["photons"] != metas[1]["photons"] and metas[0]["n_angles"] == 16
    for pa, pb in zip(a, b, strict=True):
        assert pa["image"].read_bytes() == pb["image"].read_bytes()
    stamp = a[0]["image"].stat().st_mtime_ns
    SyntheticVolumeSet(tmp_path / "a", **kwargs)()  # same seeds and ranges: cached
    assert a[0]["image"].stat().st_mtime_ns == stamp
    with pytest.raises(RandomizationError, match="randomization.imaging.photons"):
        SyntheticVolumeSet(tmp_path / "c", **{**kwargs, "randomization": {"imaging": {"photons": [-1, 10]}}})
