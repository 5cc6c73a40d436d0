"""The as-built optics of the virtual bench: consistent with the twin, sensitive to the hidden errors."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from lab.virtual.optics import AsBuilt, AsBuiltOptics, LayerError, _bilinear
from model.detector import aperture_power
from model.checkpoint import load_checkpoint


F_HZ = 400e9


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def digit():
    image = np.zeros((28, 28), np.float32)
    image[5:23, 12:16] = 1.0
    image[5:9, 8:16] = 1.0
    return image


def correlation(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def coarse(fine_map, oversample):
    n = fine_map.shape[0] // oversample
    return fine_map.reshape(n, oversample, n, oversample).sum(axis=(1, 3))


def test_zero_error_as_built_matches_the_twin_on_the_coarse_grid(checkpoint):
    optics = AsBuiltOptics(checkpoint, AsBuilt(oversample=2, aperture_m=0.0))
    _, fine = optics.power_map("seven", digit(), F_HZ)
    twin, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        twin_intensity = twin.output_intensity(torch.from_numpy(digit())[None])[0].double().numpy()
    assert fine.shape == (2 * twin_intensity.shape[0],) * 2
    assert correlation(coarse(fine, 2), twin_intensity) > 0.95


def test_a_shifted_layer_changes_the_map(checkpoint):
    nominal = AsBuiltOptics(checkpoint, AsBuilt(oversample=2)).power_map("seven", digit(), F_HZ)[1]
    layers = (LayerError(), LayerError(dx_m=0.6e-3, rotation_rad=0.02), LayerError())
    shifted = AsBuiltOptics(checkpoint, AsBuilt(layers=layers, oversample=2)).power_map("seven", digit(), F_HZ)[1]
    assert np.abs(shifted - nominal).sum() > 0.05 * nominal.sum()


def test_aperture_sum_of_a_uniform_map_is_area_times_density():
    pitch_m, density_w_m2 = 0.2e-3, 3.0
    power = torch.full((40, 40), density_w_m2 * pitch_m ** 2, dtype=torch.float64)
    for aperture_m in (0.1e-3, 0.5e-3, 0.8e-3, 1.1e-3):
        collected = aperture_power(power, pitch_m, aperture_m)
        assert collected[20, 20].item() == pytest.approx(density_w_m2 * aperture_m ** 2, rel=1e-9)


def test_bilinear_sampling_is_exact_at_grid_points():
    rng = np.random.default_rng(0)
    values = rng.random((9, 9))
    coords = (np.arange(9) - 4) * 0.2e-3
    for iy, ix in [(0, 0), (3, 5), (4, 7), (7, 1), (2, 6)]:
        assert _bilinear(values, coords, coords[ix], coords[iy]) == pytest.approx(values[iy, ix], abs=1e-12)
    x_mid, y_mid = (coords[2] + coords[3]) / 2, coords[5]
    assert _bilinear(values, coords, x_mid, y_mid) == pytest.approx((values[5, 2] + values[5, 3]) / 2)
    assert _bilinear(values, coords, coords[-1] + 1e-4, 0.0) == 0.0      # outside the window


def test_bilinear_sampling_is_exact_on_the_last_row_and_column():
    values = np.random.default_rng(0).random((9, 9))
    coords = (np.arange(9) - 4) * 0.2e-3
    assert _bilinear(values, coords, coords[8], coords[8]) == pytest.approx(values[8, 8], abs=1e-12)
