"""`d2nn-lab compare`: measured runs against the twin.

The runs are real ones: ``lab.runner.run`` measures a small raster scan (11 × 9 points at 1 mm) on the
virtual bench (time scale 0) for the tiny untrained network of conftest.TINY, once built as designed and
once with every layer shifted by 1 mm. The twin is that same design checkpoint.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from lab.compare import (add_compare_parser, aperture_power, bilinear_sample, compare_run, grid_map,
                         scan_axes_m)
from lab.config import bench_config_from_dict
from lab.errors import UsageError
from lab.runner import run
from model.checkpoint import save_checkpoint
from model.config import network_config_from_dict
from model.network import D2NN
from procedures.classify import Classify, ClassifyParameters
from procedures.raster_scan import RasterScan, RasterScanParameters

from conftest import TINY

SHIFTED_LAYERS = [{"dx_mm": 1.0, "dy_mm": -1.0}, {"dx_mm": -1.0}, {"dy_mm": 1.0}]
OBJECT_ID = "mnist-test-0"
FIGURE_KEYS = {"points", "points_outside_twin", "correlation", "scale", "background_w", "rms_residual_w", "label",
               "twin_class", "measured_class", "twin_sampled_class", "energy_fraction_correct_measured",
               "energy_fraction_correct_twin", "region_energies_measured_w", "region_energies_twin_w",
               "region_points", "regions_uncovered"}
SUMMARY_KEYS = {"run_dir", "procedure", "status", "reason", "points", "twin_checkpoint", "twin_sha256",
                "run_twin_sha256", "twin_matches_run", "aperture_m", "aperture_source", "warnings", "objects",
                "classify", "figures", "report"}


def _quiet(iterable, total, description):
    return iterable


def bench(design, layers=None):
    as_built = {"layers": layers} if layers else {}
    return bench_config_from_dict({
        "name": "compare-test",
        "lockin": {"detector": {"aperture_mm": 0.5}},
        "stages": {"x": {"origin_mm": 50.0}, "y": {"origin_mm": 50.0}},
        "object_changer": "virtual",
        "virtual": {"design": str(design), "time_scale": 0.0, "source_power_uw": 100.0,
                    "as_built": as_built, "noise": {"lockin_noise_v": 1e-12}},
    })


def measure(procedure, cfg, out):
    result = run(procedure, cfg, out, log=lambda msg: None, progress=_quiet)
    assert result["status"] == "success", result
    return out


def raster(design, out, layers=None):
    scan = RasterScan(RasterScanParameters(objects=("mnist:test:0",), size_mm=(10.0, 8.0), step_mm=1.0))
    return measure(scan, bench(design, layers), out)


@pytest.fixture(scope="module")
def design(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def aligned_run(design, tmp_path_factory):
    return raster(design, tmp_path_factory.mktemp("runs") / "aligned")


@pytest.fixture(scope="module")
def aligned(aligned_run, design, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports") / "aligned"
    return compare_run(aligned_run, design, out), out


@pytest.fixture(scope="module")
def shifted(design, tmp_path_factory):
    run_dir = raster(design, tmp_path_factory.mktemp("runs") / "shifted", SHIFTED_LAYERS)
    return compare_run(run_dir, design, tmp_path_factory.mktemp("reports") / "shifted")


# ---- sampling ------------------------------------------------------------------------------------
def test_bilinear_sampling_reproduces_a_linear_ramp_exactly():
    coords = (np.arange(16) - 7.5) * 0.4e-3
    ramp = lambda x, y: 3.0 + 2.0e3 * x - 5.0e3 * y
    values = ramp(coords[None, :], coords[:, None])  # row = y, column = x
    rng = np.random.default_rng(1)
    x, y = rng.uniform(coords[0], coords[-1], 50), rng.uniform(coords[0], coords[-1], 50)
    np.testing.assert_allclose(bilinear_sample(values, coords, x, y), ramp(x, y), rtol=0, atol=1e-12)


def test_bilinear_sampling_is_nan_outside_the_twin_grid():
    coords = (np.arange(8) - 3.5) * 0.4e-3
    out = bilinear_sample(np.ones((8, 8)), coords, [0.0, 2e-3, 0.0], [0.0, 0.0, -1.5e-3])
    assert out[0] == 1.0 and np.isnan(out[1]) and np.isnan(out[2])


@pytest.mark.parametrize("aperture_m", [0.1e-3, 0.4e-3, 0.5e-3, 1.3e-3])
def test_box_aperture_on_uniform_density_collects_area_times_density(aperture_m):
    pitch_m, density_w_m2 = 0.4e-3, 7.0
    power_per_pixel = np.full((20, 20), density_w_m2 * pitch_m ** 2)
    collected = aperture_power(power_per_pixel, pitch_m, aperture_m)
    centre = collected[5:15, 5:15]  # away from the zero padding at the edges
    np.testing.assert_allclose(centre, density_w_m2 * aperture_m ** 2, rtol=1e-12)


def test_map_places_points_by_position_whatever_their_order_and_leaves_gaps_nan():
    xs_mm, ys_mm = np.meshgrid([-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0])
    frame = pd.DataFrame({"x_m": xs_mm.ravel() * 1e-3, "y_m": ys_mm.ravel() * 1e-3})
    frame["power_w"] = frame["x_m"] * 10 + frame["y_m"]
    measured = frame.sample(frac=1, random_state=0).iloc[:-2]  # shuffled (serpentine or any), 2 points missing
    params = {"center_mm": [0.0, 0.0], "size_mm": [2.0, 4.0], "step_mm": 1.0}
    xs, ys = scan_axes_m(measured, params)
    assert len(xs) == 3 and len(ys) == 5  # the planned grid, not only the measured rows
    image = grid_map(xs, ys, measured["x_m"], measured["y_m"], measured["power_w"])
    assert np.isnan(image).sum() == 2 + 2 * 3  # two missing points + the two never-measured rows
    for _, row in measured.iterrows():
        iy, ix = np.argmin(abs(ys - row["y_m"])), np.argmin(abs(xs - row["x_m"]))
        assert image[iy, ix] == row["power_w"]


# ---- comparing measured runs ---------------------------------------------------------------------
def test_as_designed_bench_matches_the_twin(aligned):
    figures = aligned[0]["objects"][OBJECT_ID]
    assert figures["correlation"] > 0.95
    assert figures["scale"] > 0
    assert figures["points"] == 11 * 9 and figures["points_outside_twin"] == 0
    assert figures["measured_class"] == figures["twin_sampled_class"]
    assert figures["regions_uncovered"] == []


def test_shifted_layers_show_up_as_a_lower_correlation(aligned, shifted):
    good = aligned[0]["objects"][OBJECT_ID]["correlation"]
    bad = shifted["objects"][OBJECT_ID]["correlation"]
    assert bad < 0.8 and bad < good - 0.15


def test_report_references_every_png_it_wrote(aligned):
    summary, out = aligned
    page = (out / "report.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"object_{OBJECT_ID}.png"]
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == pngs
    assert "correlation" in page and summary["twin_sha256"] in page and "no twin recorded" in page


def test_aborted_run_is_compared_with_its_gaps(aligned_run, design, tmp_path):
    run_dir = tmp_path / "aborted"
    shutil.copytree(aligned_run, run_dir)
    lines = (run_dir / "data.csv").read_text().splitlines(keepends=True)
    (run_dir / "data.csv").write_text("".join(lines[:-30]))
    meta = json.loads((run_dir / "meta.json").read_text())
    meta.update(status="aborted", reason="interrupted")
    (run_dir / "meta.json").write_text(json.dumps(meta))
    summary = compare_run(run_dir, design, tmp_path / "report")
    assert summary["status"] == "aborted" and summary["objects"][OBJECT_ID]["points"] == 11 * 9 - 30
    assert any("aborted" in w for w in summary["warnings"])
    assert "interrupted" in (tmp_path / "report" / "report.html").read_text()


def test_aperture_comes_from_the_public_detector_config_when_the_run_gives_it(aligned_run, design, tmp_path):
    run_dir = tmp_path / "with-aperture"
    shutil.copytree(aligned_run, run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["bench"]["config"]["lockin"]["detector"]["aperture_mm"] = 0.8
    (run_dir / "meta.json").write_text(json.dumps(meta))
    summary = compare_run(run_dir, design, tmp_path / "report")
    assert summary["aperture_m"] == pytest.approx(0.8e-3) and "lockin.detector.aperture_mm" in summary["aperture_source"]
    overridden = compare_run(run_dir, design, tmp_path / "report2", aperture_m=0.3e-3)
    assert overridden["aperture_m"] == pytest.approx(0.3e-3) and overridden["aperture_source"] == "--aperture-mm"


def test_classify_run_gets_accuracy_agreement_and_confusion_matrices(design, tmp_path):
    twin = tmp_path / "twin" / "model.pt"
    shutil.copytree(design.parent, twin.parent)
    procedure = Classify(ClassifyParameters(twin=str(twin), count=3, points_per_side=1))
    run_dir = measure(procedure, bench(design), tmp_path / "classify")
    summary = compare_run(run_dir, twin, tmp_path / "report")
    c = summary["classify"]
    assert c["n"] == 3 and c["accuracy"] == summary["classify_recorded"]["accuracy"]
    assert np.sum(c["confusion_measured"]) == np.sum(c["confusion_twin"]) == 3
    assert summary["figures"] == ["confusion.png"] and summary["twin_matches_run"] is True
    assert '<img src="confusion.png"' in (tmp_path / "report" / "report.html").read_text()

    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "other" / "model.pt", D2NN(network_config_from_dict(copy.deepcopy(TINY))))
    mismatch = compare_run(run_dir, other, tmp_path / "report-other")
    assert mismatch["twin_matches_run"] is False and any("not the one recorded" in w for w in mismatch["warnings"])


# ---- command line --------------------------------------------------------------------------------
def parse(argv):
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_json_output_has_the_documented_keys(aligned_run, design, tmp_path, capsys):
    args = parse(["compare", str(aligned_run), "--twin", str(design), "--out", str(tmp_path), "--aperture-mm",
                  "0.4", "--json"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert SUMMARY_KEYS <= set(result)
    assert FIGURE_KEYS <= set(result["objects"][OBJECT_ID])
    assert result["aperture_m"] == pytest.approx(0.4e-3) and result["aperture_source"] == "--aperture-mm"


def test_missing_run_or_not_a_run_is_a_usage_error(design, tmp_path):
    with pytest.raises(UsageError, match="no such run directory"):
        compare_run(tmp_path / "nothing", design, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a run directory"):
        compare_run(tmp_path / "empty", design, tmp_path / "out")
