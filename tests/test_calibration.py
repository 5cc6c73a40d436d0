"""Calibration: the fit recovers a known as-built stack from scans alone, reports honest uncertainties,
flags what the data cannot identify, and writes corrections with the documented sign."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from calibration import corrections, fit_twin, load_scans, result_to_dict, write_as_built_twin
from calibration.fit import FitOptions
from calibration.synthetic import raster_positions, synthesize_scans
from calibration.uncertainty import covariance_from_jacobian, uncertainty_from_covariance
from lab.store import RunStore
from lab.virtual.optics import AsBuilt, AsBuiltOptics, LayerError
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import network_config_from_dict
from model.network import D2NN

TINY = {"name": "tiny", "freq_ghz": 400, "grid": {"neurons": 32, "pitch_mm": 0.4},
        "layers": {"count": 3, "spacing_mm": 10}, "input": {"object_size_mm": 8.0},
        "detector": {"layout": "lin2018", "region_size_mm": 1.2, "region_spacing_mm": 2.8}}

TRUTH_LAYERS = (LayerError(0.15e-3, -0.10e-3, 0.3e-3, math.radians(0.8)),
                LayerError(-0.12e-3, 0.08e-3, -0.2e-3, math.radians(-0.6)),
                LayerError(0.05e-3, 0.16e-3, 0.1e-3, math.radians(0.4)))
DETECTOR_OFFSET = (0.2e-3, -0.1e-3)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: these fits are many small FFTs, and on a shared 2-core machine a second
    thread costs more in contention than it gains."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def design(tmp_path_factory):
    torch.manual_seed(1)
    net = D2NN(network_config_from_dict(TINY, "tiny"))
    g = torch.Generator().manual_seed(1)
    kernel = torch.exp(-torch.arange(-4, 5.0) ** 2 / 4)
    kernel = (kernel[:, None] * kernel[None, :] / kernel.sum() ** 2)[None, None]
    for layer in net.layers:  # smooth structured plates spanning the full phase range, like a trained design
        h = torch.nn.functional.conv2d(torch.rand(1, 1, 32, 32, generator=g), kernel, padding=4)[0, 0]
        h = (h - h.min()) / (h.max() - h.min())
        layer.set_heights_m(h * net.material.max_height_m)
    return save_checkpoint(tmp_path_factory.mktemp("design") / "model.pt", net)


def _objects(n: int) -> list[np.ndarray]:
    shapes = []
    for i in range(n):  # bars and blocks at different places, like strokes of digits
        img = np.zeros((28, 28), np.float32)
        r, c = 4 + 7 * (i % 3), 4 + 9 * (i // 3 % 3)
        img[r:r + 6, :] = 1.0 if i % 2 else 0.0
        img[:, c:c + 5] = 1.0
        img[r:r + 10, c:c + 10] = 1.0
        shapes.append(img)
    return shapes


def _scans(design, n_objects=3, step_m=0.4e-3, half_width_m=5.6e-3, noise=0.0):
    truth = AsBuilt(layers=TRUTH_LAYERS, aperture_m=0.5e-3)
    optics = AsBuiltOptics(design, truth)
    x, y = raster_positions(half_width_m, step_m)
    return synthesize_scans(optics, _objects(n_objects), [f"o{i}" for i in range(n_objects)], x, y,
                            DETECTOR_OFFSET, noise, rng=np.random.default_rng(0))


@pytest.fixture(scope="module")
def fitted(design):
    net, _ = load_checkpoint(design)
    scans = _scans(design)
    # Fixed iteration counts (no wall-clock budget): the same result on a loaded or an idle machine.
    return fit_twin(net, scans, FitOptions(seed=0, first_iterations=10, max_iterations=10, hop_rounds=1,
                                           hop_iterations=3, restarts=0)), scans


def test_fit_recovers_subpixel_poses_of_a_small_stack(fitted):
    result, _ = fitted
    v = result.values_si
    assert result.loss_after < 0.2 * result.loss_before
    for i, e in enumerate(TRUTH_LAYERS):
        assert abs(v[f"layer{i}.dx_m"] - e.dx_m) < 0.06e-3, i
        assert abs(v[f"layer{i}.dy_m"] - e.dy_m) < 0.06e-3, i
        assert abs(math.degrees(v[f"layer{i}.rotation_rad"] - e.rotation_rad)) < 0.5, i
    assert abs(v["detector_dx_m"] - DETECTOR_OFFSET[0]) < 0.05e-3
    assert abs(v["detector_dy_m"] - DETECTOR_OFFSET[1]) < 0.07e-3
    assert result.iterations > 0 and "minimum found by" in result.strategy


def test_axial_offsets_stay_within_their_bound(fitted, design):
    result, scans = fitted
    assert all(abs(result.values_si[n]) <= 2e-3 + 1e-12 for n in result.names if n.endswith("dz_m"))
    net, _ = load_checkpoint(design)
    tight = fit_twin(net, scans[:1], FitOptions(seed=0, max_iterations=2, first_iterations=2, hop_rounds=0,
                                            restarts=0, dz_bound_m=0.05e-3, offset_search_m=0.4e-3))
    assert all(abs(tight.values_si[n]) <= 0.05e-3 + 1e-12 for n in tight.names if n.endswith("dz_m"))


def test_fit_reads_only_the_measurements(design, monkeypatch):
    scans = _scans(design, n_objects=2, step_m=0.8e-3)

    def forbidden(*args, **kwargs):
        raise AssertionError("the fit touched the bench's hidden truth")
    for name in ("power_map", "detector_power_w", "network", "_build"):
        monkeypatch.setattr(AsBuiltOptics, name, forbidden)
    net, _ = load_checkpoint(design)
    result = fit_twin(net, scans, FitOptions(seed=0, max_iterations=2, first_iterations=2, hop_rounds=0, restarts=0,
                                         offset_search_m=0.4e-3))
    assert result.n_points == sum(s.n_points for s in scans)


def test_fit_is_deterministic_with_a_seed(design):
    scans = _scans(design, n_objects=2, step_m=0.8e-3)
    # No wall-clock budget (the default): fixed iteration counts, so two fits must agree exactly.
    opts = FitOptions(seed=4, max_iterations=2, first_iterations=2, hop_rounds=1, hop_iterations=2, restarts=0,
                      offset_search_m=0.4e-3)
    a = fit_twin(load_checkpoint(design)[0], scans, opts).values_si
    b = fit_twin(load_checkpoint(design)[0], scans, opts).values_si
    assert a == b


def test_uncertainties_shrink_with_more_data(design, fitted):
    result_many, _ = fitted
    few = _scans(design, n_objects=1, step_m=0.8e-3)
    net, _ = load_checkpoint(design)
    result_few = fit_twin(net, few, FitOptions(seed=0, hop_rounds=0, restarts=0))
    lateral = [n for n in result_many.names if n.endswith(".dx_m") or n.endswith(".dy_m")]
    ratio = np.median([result_few.uncertainty.sigma_si[n] / result_many.uncertainty.sigma_si[n] for n in lateral])
    assert ratio > 1.5


def test_degenerate_parameters_are_flagged_with_the_measurement_that_fixes_them():
    g = torch.Generator().manual_seed(0)
    J = torch.randn(200, 3, generator=g, dtype=torch.float64)
    J[:, 2] = J[:, 1]  # layer0.dz and detector_dz act identically: the data cannot tell them apart
    r = 0.01 * torch.randn(200, generator=g, dtype=torch.float64)
    cov, s2, dof = covariance_from_jacobian(J, r, 3)
    names = ["layer0.dx_m", "layer0.dz_m", "detector_dz_m"]
    unc = uncertainty_from_covariance(names, torch.tensor([0.4e-3, 1e-3, 1e-3], dtype=torch.float64), cov, s2, dof)
    assert unc.identifiable["layer0.dx_m"]
    assert not unc.identifiable["layer0.dz_m"] and not unc.identifiable["detector_dz_m"]
    assert "second output plane" in unc.reasons["detector_dz_m"]


def test_corrections_move_by_minus_the_fitted_error(fitted, tmp_path, design):
    result, _ = fitted
    lines = corrections(result)
    dx = result.values_si["layer0.dx_m"]
    assert lines[0].startswith("object to layer 1") or lines[0].startswith("layer 1:")
    layer1 = next(line for line in lines if line.startswith("layer 1:"))
    assert f"move {-dx * 1e3:+.2f} mm in x" in layer1
    doc = result_to_dict(result)
    assert len(doc["layers"]) == 3 and {"dx_m", "dx_sigma_m", "rotation_sigma_rad", "identifiable"} <= set(doc["layers"][0])
    path = write_as_built_twin(tmp_path / "as_built.pt", design, result)
    twin, _ = load_checkpoint(path)
    assert float(twin.layers[1].dy_m) == pytest.approx(result.values_si["layer1.dy_m"], rel=1e-5)


def test_scans_load_from_a_run_directory(tmp_path):
    store = RunStore.create(tmp_path / "run", "raster-scan", {"step_mm": 1},
                            ["point", "object_id", "x_m", "y_m", "power_w"])
    image = np.zeros((28, 28), np.float32)
    image[10:18, 10:18] = 1
    store.save_object("sq", image, {"label": None})
    for k, (x, y) in enumerate([(0.0, 0.0), (1e-3, 0.0), (0.0, 1e-3)]):
        store.append({"point": k, "object_id": "sq", "x_m": x, "y_m": y, "power_w": 1e-9 * (k + 1)})
    store.finish("success")
    scans, notes = load_scans([tmp_path / "run"])
    assert len(scans) == 1 and scans[0].n_points == 3 and scans[0].image.max() == 1.0
    assert notes == []
