"""Scalar free-space propagation between parallel planes.

Two methods, each a pure function with its assumptions in its name:

* ``propagate_bl_asm`` — band-limited angular spectrum method (Matsushima & Shimobaba, Opt. Express 17,
  19662, 2009). The field is zero-padded to ``padded_size(n)`` >= 2n − 1 per axis, just what a *linear*
  convolution of an n-sample window with the n-sample-wide impulse response needs, and the transfer
  function is masked to the band where its sampling is alias-free.
* ``propagate_rs_direct`` — direct summation of the first Rayleigh–Sommerfeld integral, O(n⁴): the
  reference the fast method is tested against on small grids.

``AngularSpectrumPropagator`` is the module used by the network: it precomputes the transfer function
for its geometry once (a buffer, so it follows ``.to(device)``) and only rebuilds the phase when a
differentiable distance offset ``dz_m`` is given.

Sign convention: a field ``exp(i(kz − ωt))``; propagation multiplies the spectrum by ``exp(+i kz z)``.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def fft_friendly_size(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3, 5 (pocketfft/MKL are fastest there)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def padded_size(n: int) -> int:
    """FFT size for a linear (not circular) convolution of an n-sample window: >= 2n − 1."""
    return fft_friendly_size(2 * n - 1)


def _frequencies(m: int, pitch_m: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.fft.fftfreq(m, d=pitch_m, device=device, dtype=torch.float64)
    return f[:, None], f[None, :]  # fy (rows), fx (columns)


def transfer_parts(m: int, pitch_m: float, wavelength_m: float, distance_m: float, device=None):
    """(kz [rad/m], mask) on the m×m FFT grid: the propagating, alias-free band for ``distance_m``.

    The band limit: |f| < 1 / (λ √((2 Δf z)² + 1)) per axis, Δf = 1/(m·pitch) (Matsushima 2009, eq. 13).
    Evanescent components (f² > 1/λ²) are dropped: at the distances of a D2NN they have decayed.
    """
    fy, fx = _frequencies(m, pitch_m, device)
    arg = 1.0 / wavelength_m**2 - fx**2 - fy**2
    kz = 2 * math.pi * torch.sqrt(arg.clamp(min=0.0))
    df = 1.0 / (m * pitch_m)
    f_limit = 1.0 / (wavelength_m * math.sqrt((2 * df * abs(distance_m)) ** 2 + 1.0))
    mask = (arg > 0) & (fx.abs() < f_limit) & (fy.abs() < f_limit)
    return kz, mask


def band_limited_transfer(m: int, pitch_m: float, wavelength_m: float, distance_m: float,
                          device=None, dtype=torch.complex64) -> torch.Tensor:
    """H(fx, fy) = exp(i kz z) inside the band, 0 outside; m×m, FFT order."""
    kz, mask = transfer_parts(m, pitch_m, wavelength_m, distance_m, device)
    h = torch.polar(mask.double(), kz * distance_m)
    return h.to(dtype)


def _convolve_padded(field: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Crop(IFFT(FFT(pad(field)) · H)) over the last two axes; the pad is implicit in ``s=``."""
    n_y, n_x = field.shape[-2:]
    m_y, m_x = h.shape[-2:]
    # With m >= 2n − 1 every offset between two window samples maps to a distinct FFT bin, so the
    # circular convolution equals the linear one on the window wherever the window sits.
    out = torch.fft.ifft2(torch.fft.fft2(field, s=(m_y, m_x)) * h)
    return out[..., :n_y, :n_x]


def _convolve_into(buffer: torch.Tensor, field: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``_convolve_padded`` through a persistent zero-padded ``buffer``: only the n×n window is written,
    so the padding is never filled again and no fresh (B, m, m) block is allocated for it."""
    n_y, n_x = field.shape[-2:]
    buffer[..., :n_y, :n_x].copy_(field)
    spectrum = torch.fft.fft2(buffer)
    spectrum.mul_(h)
    return torch.fft.ifft2(spectrum)[..., :n_y, :n_x]


class _FixedKernelConvolution(torch.autograd.Function):
    """crop ∘ IFFT ∘ diag(H) ∘ FFT ∘ pad, with its adjoint written out: the same map with conj(H)
    (the unnormalised DFT has F^H = m² F⁻¹, so the m² factors cancel). Autograd would instead replay
    the slice and pad backwards, each allocating and zero-filling a (B, m, m) block."""

    @staticmethod
    def forward(ctx, field, h, buffers):
        ctx.save_for_backward(h)
        ctx.buffers = buffers
        return _convolve_into(_buffer_for(buffers, field, h), field, h)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        grad = grad.contiguous()
        return _convolve_into(_buffer_for(ctx.buffers, grad, h), grad, h.conj()), None, None


def _buffer_for(buffers: dict, field: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    key = (tuple(field.shape[:-2]), tuple(h.shape), field.dtype, field.device)
    if key not in buffers:
        buffers[key] = torch.zeros(*field.shape[:-2], *h.shape, dtype=field.dtype, device=field.device)
    return buffers[key]


def propagate_bl_asm(field: torch.Tensor, pitch_m: float, wavelength_m: float, distance_m: float,
                     padded: int | None = None) -> torch.Tensor:
    """Band-limited angular spectrum propagation of ``field`` (…, n, n) by ``distance_m``.

    Output on the same grid as the input. ``padded`` overrides the FFT size (default ``padded_size``).
    """
    n = field.shape[-1]
    if field.shape[-2] != n:
        raise ValueError(f"propagate_bl_asm expects a square field, got {tuple(field.shape[-2:])}")
    m = padded or padded_size(n)
    dtype = field.dtype if field.is_complex() else torch.complex64
    h = band_limited_transfer(m, pitch_m, wavelength_m, distance_m, field.device, dtype)
    return _convolve_padded(field.to(dtype), h)


def propagate_rs_direct(field: torch.Tensor, pitch_m: float, wavelength_m: float, distance_m: float,
                        out_coords_m: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """First Rayleigh–Sommerfeld integral by direct summation (float64; O(n²·points)).

    U(x, y) = Σ U0(x', y') · (z / r) · (1/(2π r) − i/λ) · exp(i k r) / r · pitch²,
    r = √((x − x')² + (y − y')² + z²). ``out_coords_m`` = (y, x) 1-D coordinate vectors of the output
    grid; default the input grid (centred on the optical axis).
    """
    n = field.shape[-1]
    coords = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * pitch_m
    ys, xs = out_coords_m if out_coords_m is not None else (coords, coords)
    src = field.to(torch.complex128).reshape(-1, n * n)
    sy, sx = torch.meshgrid(coords, coords, indexing="ij")
    sy, sx = sy.reshape(-1), sx.reshape(-1)
    k = 2 * math.pi / wavelength_m
    out = torch.empty(src.shape[0], len(ys), len(xs), dtype=torch.complex128)
    for i, y in enumerate(ys.tolist()):
        dx = xs[:, None] - sx[None, :]
        r = torch.sqrt(dx**2 + (y - sy[None, :]) ** 2 + distance_m**2)
        kernel = (distance_m / r) * (1 / (2 * math.pi * r) - 1j / wavelength_m) * torch.exp(1j * k * r) / r
        out[:, i, :] = src @ (kernel.T * pitch_m**2)
    return out.reshape(*field.shape[:-2], len(ys), len(xs))


class AngularSpectrumPropagator(nn.Module):
    """Band-limited ASM for one fixed geometry, transfer function precomputed.

    ``forward(field, dz_m=None)``: ``dz_m`` is an optional (differentiable) 0-d tensor added to the
    design distance; only then is the phase rebuilt (H·exp(i kz dz)), so calibration can fit spacings
    while training pays nothing for it. With a fixed kernel the convolution runs through a reused
    zero-padded buffer per batch shape and a hand-written adjoint (the hot path of training); a module
    instance is therefore not to be called from two threads at once.
    """

    def __init__(self, n: int, pitch_m: float, wavelength_m: float, distance_m: float,
                 padded: int | None = None, dtype=torch.complex64):
        super().__init__()
        self.n, self.pitch_m, self.wavelength_m, self.distance_m = n, pitch_m, wavelength_m, distance_m
        self.m = padded or padded_size(n)
        kz, mask = transfer_parts(self.m, pitch_m, wavelength_m, distance_m)
        h = torch.polar(mask.double(), kz * distance_m).to(dtype)
        self.register_buffer("transfer", h, persistent=False)
        self.register_buffer("kz", (kz * mask).float(), persistent=False)

    def forward(self, field: torch.Tensor, dz_m: torch.Tensor | None = None) -> torch.Tensor:
        h = self.transfer
        if dz_m is not None:
            h = h * torch.polar(torch.ones_like(self.kz), self.kz * dz_m)
            if h.requires_grad:
                return _convolve_padded(field, h)
        if field.dtype != h.dtype:
            field = field.to(h.dtype)
        return _FixedKernelConvolution.apply(field, h, self.__dict__.setdefault("_buffers_by_shape", {}))

    def extra_repr(self) -> str:
        return (f"n={self.n}, padded={self.m}, pitch={self.pitch_m * 1e3:g} mm, "
                f"λ={self.wavelength_m * 1e3:g} mm, z={self.distance_m * 1e3:g} mm")
