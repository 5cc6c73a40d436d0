"""calibrate and finetune from the command line: the output contracts of DESIGN.md section 4/7."""
from __future__ import annotations

import json

import pytest
import torch

from lab.cli import main
from lab.config import bench_config_from_dict
from lab.runner import run
from model.checkpoint import load_checkpoint
from procedures.raster_scan import RasterScan, RasterScanParameters



@pytest.fixture(scope="module")
def design(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def scan(design, tmp_path_factory):
    cfg = bench_config_from_dict({
        "name": "loop", "lockin": {"detector": {"aperture_mm": 0.4}},
        "stages": {"x": {}, "y": {}}, "object_changer": "virtual",
        "virtual": {"design": str(design), "time_scale": 0.0, "source_power_uw": 100.0,
                    "as_built": {"layers": [{"dx_mm": 0.15}, {"dy_mm": -0.1}, {}]},
                    "noise": {"lockin_noise_v": 1e-10}}})
    out = tmp_path_factory.mktemp("runs") / "scan"
    params = RasterScanParameters(objects=("mnist:test:0", "mnist:test:1"), size_mm=(10.0, 10.0), step_mm=0.8,
                                  twin=str(design))
    assert run(RasterScan(params), cfg, out, log=lambda m: None)["status"] == "success"
    return out


def test_calibrate_writes_the_documented_json_twin_and_report(scan, design, tmp_path, capsys):
    out = tmp_path / "cal"
    assert main(["calibrate", str(scan), "--out", str(out), "--json"]) == 0  # twin from the run's meta
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((out / "calibration.json").read_text())
    assert printed["loss_after"] == stored["loss_after"] < stored["loss_before"]
    assert len(stored["layers"]) == 3
    for layer in stored["layers"]:
        for key in ("dx_m", "dy_m", "dz_m", "rotation_rad", "dx_sigma_m", "dy_sigma_m", "dz_sigma_m",
                    "rotation_sigma_rad"):
            assert isinstance(layer[key], float)
    assert stored["globals"] and isinstance(stored["corrections"], list)
    twin, payload = load_checkpoint(stored["as_built_checkpoint"])
    assert float(twin.layers[0].dx_m) == pytest.approx(stored["layers"][0]["dx_m"])
    report = (out / "report.html").read_text()
    assert "before-0/object_mnist-test-0.png" in report and (out / "before-0" / "object_mnist-test-0.png").is_file()


def test_calibrate_refuses_a_folder_that_is_not_a_run(tmp_path, design):
    assert main(["calibrate", str(tmp_path), "--twin", str(design), "--out", str(tmp_path / "o")]) == 2


def test_finetune_freezes_printed_layers_and_exports_only_the_new_ones(design, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", str(design), "--add-layers", "1", "--out", str(out), "--epochs", "1",
                 "--max-train-samples", "200", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    printed, _ = load_checkpoint(design)
    tuned, payload = load_checkpoint(summary["checkpoint"])
    assert payload["printed_layers"] == [0, 1, 2] and summary["added_layers"] == [3]
    for a, b in zip(printed.layers, tuned.layers[:3]):
        assert torch.equal(a.height_logits, b.height_logits)
    stls = sorted(p.name for p in (out / "print").glob("*.stl"))
    assert stls == ["layer3.stl"]
