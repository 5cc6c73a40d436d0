"""Diffractive layers (transmission, quantization, pose resampling) and the detector readout."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.detector import DetectorRegions, region_centres_m
from model.layers import DiffractiveLayer, Material, quantize_heights, resample_pose
from model.propagation import propagate_bl_asm

WAVELENGTH_M = 0.75e-3
PITCH_M = 0.4e-3
VERO = Material(refractive_index=1.7227, extinction_coefficient=0.031, max_height_m=0.75e-3 / 0.7227)


def coords_m(n: int, pitch_m: float = PITCH_M) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * pitch_m


def smooth_image(n: int = 48) -> torch.Tensor:
    """A smooth, asymmetric test map (no symmetry hides a wrong direction)."""
    c = torch.linspace(-1, 1, n, dtype=torch.float64)
    y, x = c[:, None], c[None, :]
    return (torch.exp(-((x - 0.2) ** 2 + (y + 0.1) ** 2) / 0.15) + 0.5 * torch.exp(-((x + 0.3) ** 2) / 0.05
            - (y - 0.35) ** 2 / 0.02)).float()


def centroid_m(intensity: torch.Tensor, pitch_m: float = PITCH_M) -> tuple[float, float]:
    """(x, y) centroid; x along columns, y along rows (DESIGN.md: row = y, column = x)."""
    c = coords_m(intensity.shape[-1], pitch_m)
    intensity = intensity.detach().double()
    total = intensity.sum()
    return float((intensity.sum(0) * c).sum() / total), float((intensity.sum(1) * c).sum() / total)


# ---- transmission ------------------------------------------------------------------------------------

def test_transmission_matches_independent_numpy_formula():
    heights = np.linspace(0.0, VERO.max_height_m, 37)
    expected = np.exp(-2 * np.pi * VERO.extinction_coefficient * heights / WAVELENGTH_M) * \
        np.exp(1j * 2 * np.pi * (VERO.refractive_index - 1) * heights / WAVELENGTH_M)
    got = VERO.transmission(torch.tensor(heights), WAVELENGTH_M).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_two_pi_height_gives_a_full_phase_cycle():
    two_pi_height_m = WAVELENGTH_M / (VERO.refractive_index - 1)
    assert two_pi_height_m == pytest.approx(1.0378e-3, rel=1e-3)  # DESIGN.md: ≈ 1.04 mm
    h = torch.tensor([0.0, two_pi_height_m / 4, two_pi_height_m / 2, two_pi_height_m], dtype=torch.float64)
    t = VERO.transmission(h, WAVELENGTH_M)
    np.testing.assert_allclose(torch.angle(t[1:3]).numpy(), [math.pi / 2, math.pi], rtol=1e-12)
    assert abs(math.remainder(float(torch.angle(t[3])), 2 * math.pi)) < 1e-9
    assert float(t[3].abs()) == pytest.approx(math.exp(-2 * math.pi * 0.031 / 0.7227), rel=1e-12)


def test_phase_only_material_has_unit_amplitude_and_index_scale_scales_the_phase():
    lossless = Material(1.7227, 0.031, 1e-3, phase_only=True)
    h = torch.linspace(0, 1e-3, 11, dtype=torch.float64)
    t = lossless.transmission(h, WAVELENGTH_M)
    np.testing.assert_allclose(t.abs().numpy(), 1.0, rtol=1e-12)
    t_scaled = lossless.transmission(h, WAVELENGTH_M, index_scale=1.1)
    expected_phase = 2 * math.pi * 0.7227 * 1.1 * h / WAVELENGTH_M
    np.testing.assert_allclose(torch.angle(t_scaled / torch.polar(torch.ones_like(h), expected_phase)).numpy(),
                               0.0, atol=1e-9)


# ---- quantization ------------------------------------------------------------------------------------

def test_quantization_rounds_to_nearest_multiple_of_the_step():
    step = 0.016e-3  # a 16 µm printer layer
    h = torch.rand(1000, dtype=torch.float64) * 1e-3
    q = quantize_heights(h, step)
    k = q / step
    assert torch.allclose(k, k.round(), atol=1e-9)
    assert ((q - h).abs() <= step / 2 + 1e-15).all()
    assert torch.equal(q, torch.round(h / step) * step)  # the nearest one, not floor or ceil


def test_quantization_gradient_passes_straight_through():
    h = (torch.rand(50, dtype=torch.float64) * 1e-3).requires_grad_()
    w = torch.randn(50, dtype=torch.float64)
    (quantize_heights(h, 0.05e-3) * w).sum().backward()
    assert torch.equal(h.grad, w)


def test_quantization_never_exceeds_the_printable_maximum():
    step, top = 0.016e-3, 1.0378e-3  # top is 64.86 steps: the highest printable level is 64 steps
    h = torch.linspace(0.0, top, 2001, dtype=torch.float64, requires_grad=True)
    q = quantize_heights(h, step, top)
    assert float(q.detach().max()) == pytest.approx(64 * step, rel=1e-12)
    below = h.detach() < 64.5 * step
    assert torch.equal(q.detach()[below], torch.round(h.detach()[below] / step) * step)
    q.sum().backward()
    assert torch.equal(h.grad, torch.ones_like(h))


def test_zero_step_means_no_quantization():
    h = torch.rand(10)
    assert quantize_heights(h, 0.0) is h


def test_layer_quantizes_in_evaluation_but_not_in_plain_training():
    material = Material(1.7227, 0.031, 1.04e-3, height_step_m=0.02e-3)
    layer = DiffractiveLayer(16, material)
    layer.train()
    k_train = layer.heights_m() / 0.02e-3
    assert (k_train - k_train.round()).abs().max() > 0.05
    layer.eval()
    k_eval = layer.heights_m() / 0.02e-3
    assert torch.allclose(k_eval, k_eval.round(), atol=1e-3)


# ---- pose resampling -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shift_px", [(3, -2), (-5, 1), (0, 4)])
def test_integer_pixel_shift_equals_roll_away_from_the_border(shift_px):
    sx, sy = shift_px
    image = torch.rand(40, 40)
    moved = resample_pose(image, PITCH_M, sx * PITCH_M, sy * PITCH_M, 0.0)
    rolled = torch.roll(image, shifts=(sy, sx), dims=(-2, -1))  # +dx → larger column index
    inner = (slice(6, -6), slice(6, -6))
    torch.testing.assert_close(moved[inner], rolled[inner], rtol=0, atol=1e-5)


def test_content_shifted_in_from_outside_gets_the_fill_value():
    image = torch.ones(20, 20)
    moved = resample_pose(image, PITCH_M, 3 * PITCH_M, 0.0, 0.0, fill=0.25)
    torch.testing.assert_close(moved[:, :3], torch.full((20, 3), 0.25))
    torch.testing.assert_close(moved[:, 3:], torch.ones(20, 17))


def test_rotation_by_90_degrees_turns_plus_x_towards_plus_y():
    image = smooth_image()
    turned = resample_pose(image, PITCH_M, 0.0, 0.0, math.pi / 2)
    # Docstring: a positive angle turns +x towards +y, i.e. from the column axis towards the row axis.
    expected = torch.rot90(image, k=1, dims=(-1, -2))
    torch.testing.assert_close(turned, expected, rtol=0, atol=1e-4)
    # And a bright spot on +x (right of centre) lands on +y (below centre, larger row index).
    spot = torch.zeros(40, 40)
    spot[19:21, 30:32] = 1.0  # centred on row 19.5 (y = 0), column 30.5 (x = +11 pixels)
    cx, cy = centroid_m(resample_pose(spot, PITCH_M, 0.0, 0.0, math.pi / 2))
    assert cx == pytest.approx(0.0, abs=1e-6)
    assert cy == pytest.approx(11 * PITCH_M, rel=1e-4)


@pytest.mark.parametrize("angle_deg", [7.0, 30.0])
def test_rotation_then_inverse_rotation_is_nearly_identity(angle_deg):
    image = smooth_image(64)
    theta = math.radians(angle_deg)
    back = resample_pose(resample_pose(image, PITCH_M, 0.0, 0.0, theta), PITCH_M, 0.0, 0.0, -theta)
    inner = (slice(12, -12), slice(12, -12))
    # Two bilinear resamplings blur a little (measured 0.5 %); a sign error in either would not undo.
    err = float((back[inner] - image[inner]).norm() / image[inner].norm())
    assert err < 0.02
    once = resample_pose(image, PITCH_M, 0.0, 0.0, theta)
    twice = resample_pose(once, PITCH_M, 0.0, 0.0, theta)
    assert float((twice[inner] - image[inner]).norm() / image[inner].norm()) > 0.05


def test_pose_resampling_is_differentiable_in_the_pose():
    image = smooth_image(32).double()
    dx = torch.tensor(0.3 * PITCH_M, dtype=torch.float64, requires_grad=True)
    rot = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    out = resample_pose(image, PITCH_M, dx, 0.0, rot)
    (out * torch.linspace(0, 1, 32, dtype=torch.float64)).sum().backward()
    assert dx.grad is not None and float(dx.grad) != 0.0
    assert rot.grad is not None and float(rot.grad) != 0.0


# ---- a shifted / rotated layer moves the light as geometry says ---------------------------------------

def _lens_layer(n: int, focal_m: float, centre_m=(0.0, 0.0)) -> DiffractiveLayer:
    """A phase-only lens exp(−i k r²/2f) written as *unwrapped* heights (smooth, so bilinear resampling
    of a quadratic is exact up to a constant: a pose change is a pure pose change of the lens)."""
    c = coords_m(n)
    r2 = (c[None, :] - centre_m[0]) ** 2 + (c[:, None] - centre_m[1]) ** 2
    phase_delay = (2 * math.pi / WAVELENGTH_M) * (r2.max() - r2) / (2 * focal_m)  # ≥ 0, max on axis
    heights = phase_delay * WAVELENGTH_M / (2 * math.pi * 0.7227)
    material = Material(1.7227, 0.0, float(heights.max()) * 1.001, phase_only=True)
    layer = DiffractiveLayer(n, material)
    layer.set_heights_m(heights.float())
    return layer


def _focus_centroid(layer: DiffractiveLayer, focal_m: float) -> tuple[float, float]:
    n = layer.neurons
    c = coords_m(n)
    beam = torch.exp(-(c[None, :] ** 2 + c[:, None] ** 2) / 5e-3**2).to(torch.complex64)  # collimated
    field = beam * layer.transmission(WAVELENGTH_M, PITCH_M)
    out = propagate_bl_asm(field, PITCH_M, WAVELENGTH_M, focal_m)
    return centroid_m((out.abs() ** 2).double())


@pytest.mark.parametrize("dx_m, dy_m", [(1.0e-3, 0.0), (0.0, -0.7e-3), (0.55e-3, 0.85e-3)])
def test_shifting_a_lens_layer_moves_the_focus_by_the_same_amount(dx_m, dy_m):
    # A lens displaced by d tilts a centred collimated beam by d/f (phase −k(r − d)²/2f = −k r²/2f
    # + k r·d/f + const), so at z = f its centroid sits at d. Measured 0.5 % beyond d: the centroid moves
    # with the mean of tan θ, not sin θ, over a cone of NA = w/f ≈ 0.08 (a ~NA² non-paraxial excess).
    n, focal_m = 96, 60e-3
    layer = _lens_layer(n, focal_m)
    cx0, cy0 = _focus_centroid(layer, focal_m)
    assert abs(cx0) < 1e-6 and abs(cy0) < 1e-6
    with torch.no_grad():
        layer.dx_m.fill_(dx_m)
        layer.dy_m.fill_(dy_m)
    cx, cy = _focus_centroid(layer, focal_m)
    assert cx == pytest.approx(dx_m, abs=0.01e-3 + 0.01 * abs(dx_m))
    assert cy == pytest.approx(dy_m, abs=0.01e-3 + 0.01 * abs(dy_m))


def test_rotating_an_off_axis_lens_layer_swings_the_focus_about_the_grid_centre():
    # Lens centred at x = +2 mm: focus at (+2 mm, 0); a +90° turn (+x towards +y) puts it at (0, +2 mm).
    n, focal_m, a = 96, 60e-3, 2e-3
    layer = _lens_layer(n, focal_m, centre_m=(a, 0.0))
    cx, cy = _focus_centroid(layer, focal_m)
    assert cx == pytest.approx(a, rel=0.01) and abs(cy) < 1e-5
    with torch.no_grad():
        layer.rotation_rad.fill_(math.pi / 2)
    cx, cy = _focus_centroid(layer, focal_m)
    assert abs(cx) < 0.02 * a
    assert cy == pytest.approx(a, rel=0.01)


# ---- detector --------------------------------------------------------------------------------------

def test_detector_energy_of_uniform_intensity_is_area_over_pitch_squared():
    n, size_m = 60, 4.8e-3
    # Region edges deliberately off the pixel boundaries (centres not on the grid).
    centres = [(0.13e-3, -0.27e-3), (-7.05e-3, 6.1e-3), (6.66e-3, 0.0)]
    det = DetectorRegions(n, PITCH_M, size_m, centres)
    intensity = torch.full((2, n, n), 3.0)
    intensity[1] *= 2
    energies = det.energies(intensity)
    expected = (size_m / PITCH_M) ** 2 * 3.0  # 144 pixels × intensity
    torch.testing.assert_close(energies[0], torch.full((3,), expected), rtol=1e-5, atol=0)
    torch.testing.assert_close(energies[1], torch.full((3,), 2 * expected), rtol=1e-5, atol=0)


def test_detector_reads_the_same_physical_energy_on_a_twice_finer_grid():
    n, size_m = 50, 4.8e-3
    centres = region_centres_m("lin2018", 10, 6.2e-3, differential=False)  # 6.2 mm: edges mid-pixel
    coarse = DetectorRegions(n, PITCH_M, size_m, centres)
    fine = DetectorRegions(2 * n, PITCH_M / 2, size_m, centres)
    g = torch.Generator().manual_seed(0)
    intensity = torch.rand(3, n, n, generator=g)  # piecewise constant per coarse pixel
    fine_intensity = intensity.repeat_interleave(2, -2).repeat_interleave(2, -1)
    # Energies are in intensity·pixel units: × pitch² gives the physical energy, grid-independent.
    e_coarse = coarse.energies(intensity) * PITCH_M**2
    e_fine = fine.energies(fine_intensity) * (PITCH_M / 2) ** 2
    torch.testing.assert_close(e_fine, e_coarse, rtol=1e-5, atol=0)
    torch.testing.assert_close(fine.scores(fine.energies(fine_intensity)),
                               coarse.scores(coarse.energies(intensity)), rtol=1e-5, atol=1e-7)


def test_detector_regions_see_only_their_own_square():
    n = 50
    det = DetectorRegions(n, PITCH_M, 2e-3, [(4e-3, 0.0), (-4e-3, 0.0)])
    c = coords_m(n)
    intensity = ((c[None, :] > 0) & (c[:, None].abs() < 5e-3)).float().expand(n, n)  # right half lit
    e = det.energies(intensity)
    assert float(e[0]) == pytest.approx((2e-3 / PITCH_M) ** 2, rel=1e-5)
    assert float(e[1]) == 0.0
