"""analyze.py end to end on tiny label volumes: outputs, label mapping, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.data.io import ImageReadError, write_tiff
from tests.helpers import blob_labels, compose

ROOT = Path(__file__).resolve().parents[2]
FAST = ["statistics.axes=[0]", "statistics.tortuosity_phases=[pore]", "statistics.particles.min_voxels=1",
        "statistics.particles.exclude_border=false"]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """Two (24, 28, 32) label volumes stored as 0/85/170 (pore/NMC/CBD, taufactor's coding)."""
    root = tmp_path_factory.mktemp("labels")
    for i in range(2):
        lab = blob_labels((24, 28, 32), seed=20 + i)  # 0 NMC, 1 CBD, 2 pore
        write_tiff(root / f"vol{i}.tif", np.array([85, 170, 0], np.uint8)[lab])
    return root


def test_analyze_in_process(volumes, tmp_path):
    import analyze

    out = tmp_path / "out"
    cfg = compose("analyze", [f"volumes={volumes}/*.tif", "voxel_size_nm=40", "label_values=[85,170,0]",
                              f"output_dir={out}", *FAST])
    results = analyze.analyze(cfg)
    assert set(results) == {"vol0", "vol1"}
    with open(out / "stats.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["volume"] for r in rows] == ["vol0", "vol1"]
    expected = (blob_labels((24, 28, 32), seed=20) == 0).mean()
    assert float(rows[0]["volume_fraction/NMC"]) == pytest.approx(expected, abs=1e-12)
    for col in ("specific_surface_area_um-1/CBD", "tortuosity_factor_z/pore", "d50_um/NMC",
                "surface_fraction_to_CBD/NMC", "local_thickness_mean_um/pore"):
        assert col in rows[0] and np.isfinite(float(rows[0][col])), col
    unit_table = json.loads((out / "units.json").read_text(encoding="utf-8"))["columns"]
    assert set(unit_table) == set(rows[0]) - {"volume"}
    assert unit_table["interface_area_um2/NMC-pore"]["unit"] == "µm²"
    saved = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert saved["volumes"]["vol1"]["class_names"] == ["NMC", "CBD", "pore"]
    assert "diameter_um" in saved["volumes"]["vol0"]["particles"]["NMC"]["particles"]
    assert (out / "stats.png").stat().st_size > 1000
    assert not list(out.glob(".*.tmp*"))


def test_analyze_writes_pybamm_parameters(volumes, tmp_path):
    import analyze

    out = tmp_path / "out"
    cfg = compose("analyze", [f"volumes={volumes}/vol0.tif", "voxel_size_nm=40", "label_values=[85,170,0]",
                              f"output_dir={out}", "statistics.axes=[0]", "statistics.thickness_phases=[]",
                              "statistics.particles.min_voxels=1", "model_parameters=true", "figure=false"])
    results = analyze.analyze(cfg)
    assert set(results["vol0"]["tortuosity"]) == {"pore", "NMC+CBD"}  # the default set
    params = json.loads((out / "vol0_pybamm.json").read_text(encoding="utf-8"))
    assert params["Positive electrode porosity"]["value"] == pytest.approx(
        results["vol0"]["volume_fraction"]["pore"])
    assert params["Positive electrode thickness [m]"]["value"] == pytest.approx(24 * 40e-9)
    assert "get_parameter_values" in (out / "vol0_pybamm.py").read_text(encoding="utf-8")


def test_analyze_cli(volumes, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "analyze.py", f"volumes={volumes}/vol0.tif", "voxel_size_nm=40",
           "label_values=[85,170,0]", f"output_dir={out}", "statistics.tortuosity=false",
           "statistics.thickness_phases=[]", "figure=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = (out / "stats.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "volume" and "volume_fraction/pore" in header
    assert not any(h.startswith("tortuosity_factor") for h in header)


def test_analyze_bad_inputs(volumes, tmp_path):
    import analyze

    def run(*overrides: str):
        return analyze.analyze(compose("analyze", [f"output_dir={tmp_path / 'bad'}", *FAST, *overrides]))

    with pytest.raises(FileNotFoundError, match="missing"):
        run(f"volumes={tmp_path}/missing.tif", "voxel_size_nm=40")
    # stored 0/85/170 without a mapping: the file and the expected range are named
    with pytest.raises(ValueError, match=r"vol0\.tif: label values \[85, 170\] outside 0..2"):
        run(f"volumes={volumes}/vol0.tif", "voxel_size_nm=40")
    with pytest.raises(ValueError, match=r"vol0\.tif: label values \[170\] are not in label_values"):
        run(f"volumes={volumes}/*.tif", "voxel_size_nm=40", "label_values=[85,1,0]")
    with pytest.raises(ValueError, match="anisotropic"):
        run(f"volumes={volumes}/vol0.tif", "voxel_size_nm=[40,40,80]", "label_values=[85,170,0]")
    grey = tmp_path / "grey.tif"
    write_tiff(grey, np.random.default_rng(0).random((8, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="grey.tif: labels must be integers"):
        run(f"volumes={grey}", "voxel_size_nm=40")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageReadError, match="broken.tif"):
        run(f"volumes={broken}", "voxel_size_nm=40")
    assert not (tmp_path / "bad").exists()  # nothing half-written
