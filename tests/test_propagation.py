"""Free-space propagation: the fast band-limited ASM against physics and against independent codes.

Geometry throughout: 0.4 THz (λ = 0.75 mm), 0.4 mm pitch, as in the Lin 2018 network, on small grids.
"""
from __future__ import annotations

import math

import pytest
import torch

from model.propagation import (
    AngularSpectrumPropagator,
    band_limited_transfer,
    padded_size,
    propagate_bl_asm,
    propagate_rs_direct,
)

WAVELENGTH_M = 0.75e-3
PITCH_M = 0.4e-3


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def coords_m(n: int) -> torch.Tensor:
    """Pixel centres along one axis, symmetric about the optical axis (the convention of the model)."""
    return (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * PITCH_M


def gaussian_beam(n: int, waist_m: float, x0_m: float = 0.0, y0_m: float = 0.0) -> torch.Tensor:
    """exp(−r²/w0²) at its waist (intensity ∝ exp(−2r²/w0²)), rows = y, columns = x; complex128."""
    c = coords_m(n)
    r2 = (c[None, :] - x0_m) ** 2 + (c[:, None] - y0_m) ** 2
    return torch.exp(-r2 / waist_m**2).to(torch.complex128)


def rectangular_aperture(n: int = 32) -> torch.Tensor:
    """A 16 × 12 pixel opening, off-centre by half a pixel in x: sharp edges, a broad spectrum."""
    field = torch.zeros(n, n, dtype=torch.complex128)
    field[8:24, 10:22] = 1.0
    return field


def band_limited_random_field(n: int, seed: int = 1) -> torch.Tensor:
    """A random complex field whose spectrum lies far inside every band limit used below: a sum of
    Gaussian spots (waist 2.5 mm, |spectrum| ∝ exp(−(π w f)²) < 1e-20 at 860 m⁻¹) placed within ±3 mm
    of the axis, so the edge of a 64-pixel window (≥ 9.8 mm away, amplitude < 1e-6) does not clip
    them either. Needs n ≥ 64."""
    g = torch.Generator().manual_seed(seed)
    field = torch.zeros(n, n, dtype=torch.complex128)
    for _ in range(6):
        x0, y0 = ((torch.rand(2, generator=g, dtype=torch.float64) - 0.5) * 6e-3).tolist()
        amp = complex(*torch.randn(2, generator=g, dtype=torch.float64).tolist())
        field += amp * gaussian_beam(n, 2.5e-3, x0, y0)
    return field


def second_moment_width_m(intensity: torch.Tensor) -> tuple[float, float]:
    """(w_x, w_y) = 2·σ of the intensity: equals the 1/e² radius w of a Gaussian beam."""
    c = coords_m(intensity.shape[-1])
    total = intensity.sum()
    ix, iy = intensity.sum(0), intensity.sum(1)
    mx, my = (ix * c).sum() / total, (iy * c).sum() / total
    vx = (ix * (c - mx) ** 2).sum() / total
    vy = (iy * (c - my) ** 2).sum() / total
    return 2 * math.sqrt(float(vx)), 2 * math.sqrt(float(vy))


# ---- against the Rayleigh–Sommerfeld integral --------------------------------------------------

@pytest.mark.parametrize("distance_m, bound", [(5e-3, 0.01), (10e-3, 0.03), (30e-3, 0.06)])
def test_bl_asm_matches_rayleigh_sommerfeld_at_default_padding(distance_m, bound):
    # Measured 0.43 %, 2.1 %, 4.6 % for 5, 10, 30 mm. What limits it is the band limit at the default
    # 2× padding, not the kernel: the mask cuts sharply at the spatial frequency whose ray crosses
    # exactly one window width (m·pitch/2), and a sharp cut in frequency smears over a Fresnel zone
    # √(λz/cos³θ) in space, so connections between points ≳ (window − Fresnel zone) apart lose amplitude.
    # It grows with z (5 mm Fresnel zone at 30 mm vs a 12.8 mm window here; in the 80 mm twin window it
    # matters less) and vanishes with more padding (next test).
    field = rectangular_aperture()
    fast = propagate_bl_asm(field, PITCH_M, WAVELENGTH_M, distance_m)
    reference = propagate_rs_direct(field, PITCH_M, WAVELENGTH_M, distance_m)
    assert rel_l2(fast, reference) < bound


@pytest.mark.parametrize("distance_m", [10e-3, 30e-3])
def test_bl_asm_converges_to_rayleigh_sommerfeld_with_generous_padding(distance_m):
    # At 16× padding the band limit no longer bites: measured 3e-4 (10 mm) and 2e-4 (30 mm). A wrong
    # sign, a missing obliquity factor, a wrong pitch² scale or an off-by-one crop would all be O(1).
    field = rectangular_aperture()
    fast = propagate_bl_asm(field, PITCH_M, WAVELENGTH_M, distance_m, padded=16 * field.shape[-1])
    reference = propagate_rs_direct(field, PITCH_M, WAVELENGTH_M, distance_m)
    assert rel_l2(fast, reference) < 1e-3


def test_default_padding_allows_a_linear_convolution():
    for n in (32, 100, 200, 201):
        m = padded_size(n)
        assert m >= 2 * n - 1
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        assert k == 1, f"padded_size({n}) = {m} is not 2·3·5-smooth"


# ---- Gaussian beam physics -----------------------------------------------------------------------

@pytest.mark.parametrize("distance_m", [30e-3, 60e-3, 120e-3])
def test_gaussian_beam_width_follows_rayleigh_law(distance_m):
    n, waist_m = 128, 4 * WAVELENGTH_M  # 3 mm waist: zR = 37.7 mm; at 120 mm w = 10 mm, window ±25.6 mm
    rayleigh_m = math.pi * waist_m**2 / WAVELENGTH_M
    expected_m = waist_m * math.sqrt(1 + (distance_m / rayleigh_m) ** 2)
    out = propagate_bl_asm(gaussian_beam(n, waist_m), PITCH_M, WAVELENGTH_M, distance_m)
    wx, wy = second_moment_width_m(out.abs() ** 2)
    # Measured +0.12 %, +0.23 %, +0.29 %: the exact (non-paraxial) propagation spreads a little faster
    # than the paraxial law (divergence θ = λ/πw0 = 0.08 rad, effect ~θ²/2 in w).
    assert wx == pytest.approx(expected_m, rel=0.01)
    assert wy == pytest.approx(expected_m, rel=0.01)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_energy_is_conserved_for_a_beam_inside_the_window(dtype):
    field = gaussian_beam(128, 3e-3, x0_m=2e-3, y0_m=-1e-3).to(dtype)
    out = propagate_bl_asm(field, PITCH_M, WAVELENGTH_M, 60e-3)
    before, after = float((field.abs() ** 2).sum()), float((out.abs() ** 2).sum())
    assert abs(after - before) / before < 1e-3


def test_propagation_to_zero_distance_is_identity():
    field = band_limited_random_field(64)
    out = propagate_bl_asm(field, PITCH_M, WAVELENGTH_M, 0.0)
    assert rel_l2(out, field) < 1e-12


def test_propagation_forth_and_back_recovers_a_band_limited_field():
    field = band_limited_random_field(64)
    there = propagate_bl_asm(field, PITCH_M, WAVELENGTH_M, 20e-3, padded=256)
    back = propagate_bl_asm(there, PITCH_M, WAVELENGTH_M, -20e-3, padded=256)
    assert rel_l2(back, field) < 1e-3


def test_off_axis_beam_moves_with_its_tilt():
    # A tilted plane-wave component exp(i 2π fx x) travels at sin θ = λ fx: centroid moves by z·tan θ.
    n, z = 128, 60e-3
    sin_theta = 0.05
    c = coords_m(n)
    tilt = torch.exp(1j * 2 * math.pi * sin_theta / WAVELENGTH_M * c)[None, :]
    out = propagate_bl_asm(gaussian_beam(n, 4e-3) * tilt, PITCH_M, WAVELENGTH_M, z)
    intensity = out.abs() ** 2
    cx = float((intensity.sum(0) * c).sum() / intensity.sum())
    cy = float((intensity.sum(1) * c).sum() / intensity.sum())
    expected = z * sin_theta / math.sqrt(1 - sin_theta**2)  # +x tilt → larger column index
    assert cx == pytest.approx(expected, rel=2e-3)
    assert abs(cy) < 1e-6


# ---- against torchoptics ---------------------------------------------------------------------------

@pytest.mark.parametrize("distance_m", [5e-3, 30e-3])
def test_bl_asm_agrees_with_torchoptics_asm(distance_m):
    """What was matched: torchoptics ``Field.propagate_to_z(z, propagation_method="ASM")`` pads
    ``asm_pad`` zeros on *each* side (default 2n, i.e. 5n in all) and multiplies the fftshift-ed spectrum
    by exp(i kz z) — the same exp(+i kz z) convention as ours (its conjugate differs by O(1), asserted
    below), so no conjugation is needed. We set asm_pad = (m − n)/2 so both FFTs are m = padded_size(n)
    wide (a circular convolution is shift-invariant, so a centred vs a corner window gives the same
    crop). Its data axes are (x, y) and ours (y, x); the transfer function is symmetric in fx ↔ fy and
    the spacing is square, so no transpose is needed. torchoptics keeps evanescent waves (decayed) and
    has no band limit; both only touch frequencies above 860 m⁻¹ here, where this field's spectrum is
    < 1e-20, so the two must agree to rounding (measured 1e-15 in complex128)."""
    torchoptics = pytest.importorskip("torchoptics")
    n = 64
    m = padded_size(n)
    field = band_limited_random_field(n)
    ours = propagate_bl_asm(field, PITCH_M, WAVELENGTH_M, distance_m)
    theirs_field = torchoptics.Field(field, wavelength=WAVELENGTH_M, spacing=(PITCH_M, PITCH_M))
    theirs = theirs_field.propagate_to_z(distance_m, propagation_method="ASM",
                                         asm_pad=((m - n) // 2, (m - n) // 2)).data
    assert theirs.shape == ours.shape
    assert rel_l2(ours, theirs) < 1e-6
    assert rel_l2(ours.conj(), theirs) > 0.5  # the sign convention is really being tested
    theirs_default_pad = theirs_field.propagate_to_z(distance_m, propagation_method="ASM").data
    assert rel_l2(ours, theirs_default_pad) < 1e-6
    ours_single = propagate_bl_asm(field.to(torch.complex64), PITCH_M, WAVELENGTH_M, distance_m)
    assert rel_l2(ours_single.to(torch.complex128), theirs) < 1e-5


# ---- the precomputed module and its differentiable spacing ------------------------------------------

def test_propagator_module_equals_the_pure_function():
    n, z = 64, 30e-3
    field = band_limited_random_field(n).to(torch.complex64)
    module = AngularSpectrumPropagator(n, PITCH_M, WAVELENGTH_M, z)
    assert rel_l2(module(field), propagate_bl_asm(field, PITCH_M, WAVELENGTH_M, z)) < 1e-6
    h = band_limited_transfer(padded_size(n), PITCH_M, WAVELENGTH_M, z)
    assert torch.allclose(module.transfer, h)


@pytest.mark.parametrize("dz_m", [-1.5e-3, 0.4e-3, 2e-3])
def test_propagator_with_dz_equals_propagation_by_z_plus_dz(dz_m):
    n, z = 64, 30e-3
    field = band_limited_random_field(n)
    module = AngularSpectrumPropagator(n, PITCH_M, WAVELENGTH_M, z, dtype=torch.complex128)
    shifted = module(field, torch.tensor(dz_m, dtype=torch.float64))
    fresh = propagate_bl_asm(field, PITCH_M, WAVELENGTH_M, z + dz_m)
    # Not 1e-12: the module keeps kz in float32 (phase kz·dz good to ~1e-6 rad).
    assert rel_l2(shifted, fresh) < 1e-5
    assert rel_l2(module(field), fresh) > 1e-2  # dz really changes the field


def test_gradient_wrt_dz_matches_finite_difference():
    n, z, dz, eps = 64, 30e-3, 0.5e-3, 1e-6
    field = band_limited_random_field(n)
    weight = torch.linspace(0.0, 1.0, n, dtype=torch.float64)[None, :] * \
        torch.linspace(1.0, 0.2, n, dtype=torch.float64)[:, None]  # an asymmetric "detector"

    def loss(out: torch.Tensor) -> torch.Tensor:
        return ((out.abs() ** 2) * weight).sum()

    module = AngularSpectrumPropagator(n, PITCH_M, WAVELENGTH_M, z, dtype=torch.complex128)
    dz_t = torch.tensor(dz, dtype=torch.float64, requires_grad=True)
    loss(module(field, dz_t)).backward()
    analytic = float(dz_t.grad)
    plus = loss(propagate_bl_asm(field, PITCH_M, WAVELENGTH_M, z + dz + eps))
    minus = loss(propagate_bl_asm(field, PITCH_M, WAVELENGTH_M, z + dz - eps))
    numeric = float(plus - minus) / (2 * eps)
    assert abs(numeric) > 1.0  # the loss really depends on dz (d loss / dz ~ 1e3 per metre here)
    assert analytic == pytest.approx(numeric, rel=1e-3)


def test_propagator_without_dz_builds_no_graph_for_the_transfer_function():
    module = AngularSpectrumPropagator(32, PITCH_M, WAVELENGTH_M, 30e-3)
    assert not module.transfer.requires_grad
    field = torch.ones(2, 32, 32, dtype=torch.complex64, requires_grad=True)
    out = module(field)
    assert out.shape == (2, 32, 32)
    out.abs().sum().backward()
    assert field.grad is not None and torch.isfinite(field.grad).all()
