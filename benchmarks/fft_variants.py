"""Micro-benchmarks of ways to run the ASM convolution on the hot path (candidates for model/propagation.py).

Each variant is a function ``conv(field (…, n, n) complex64, h (m, m) complex64) -> (…, n, n)`` that must
equal ``model.propagation._convolve_padded`` (checked before timing). Two measurements:

  * ``prop``: one propagation, forward + backward (the field requires grad, as inside the network);
  * ``step``: one whole training step of the 5-layer small-mnist twin (benchmarks/propagation.py's
    step) with the network's ``_convolve_padded`` swapped for the variant.

Variants are timed in interleaved rounds (A, B, C, A, B, C, …) so that load from other processes on
the machine hits them alike; median and minimum are reported, and the speed-up against ``current``
(on a shared machine the minimum is the steadier estimate of the intrinsic cost).

    .venv/bin/python benchmarks/fft_variants.py [--sizes 100 200] [--batch 32] [--repeats 7]
        [--what prop step] [--compile] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import model.propagation as propagation  # noqa: E402
from model.propagation import band_limited_transfer, padded_size  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from propagation import interleaved_times_s  # noqa: E402  (benchmarks/propagation.py: one timer)

CURRENT = propagation._convolve_padded


# ---- the variants ------------------------------------------------------------------------------------

def conv_current(field, h):
    """As in model/propagation.py: fft2 with s= (implicit pad), multiply, ifft2, crop."""
    return CURRENT(field, h)


def conv_explicit_pad(field, h):
    """Textbook: F.pad to m, fft2, multiply, ifft2, crop."""
    n_y, n_x = field.shape[-2:]
    m_y, m_x = h.shape[-2:]
    padded = F.pad(field, (0, m_x - n_x, 0, m_y - n_y))
    return torch.fft.ifft2(torch.fft.fft2(padded) * h)[..., :n_y, :n_x]


def conv_pruned_rows_first(field, h):
    """Pruned: the padded input has zero rows, the output keeps n of m rows, so transform only what
    is needed. Forward: n_y length-m FFTs along x (the non-zero rows), then m_x along y. Inverse: m_x
    along y, keep n_y rows, then n_y along x, keep n_x columns. 2(n + m) 1-D transforms instead of 4m
    (0.75× at m = 2n); autograd's backward is pruned the same way (pad ↔ slice)."""
    n_y, n_x = field.shape[-2:]
    m_y, m_x = h.shape[-2:]
    spec = torch.fft.fft(field, n=m_x, dim=-1)
    spec = torch.fft.fft(spec, n=m_y, dim=-2)
    out = torch.fft.ifft(spec * h, dim=-2)[..., :n_y, :]
    return torch.fft.ifft(out, dim=-1)[..., :n_x]


def conv_pruned_cols_first(field, h):
    """Pruned, the other order: y first on the n_x non-zero columns, then x; inverse x first."""
    n_y, n_x = field.shape[-2:]
    m_y, m_x = h.shape[-2:]
    spec = torch.fft.fft(field, n=m_y, dim=-2)
    spec = torch.fft.fft(spec, n=m_x, dim=-1)
    out = torch.fft.ifft(spec * h, dim=-1)[..., :n_x]
    return torch.fft.ifft(out, dim=-2)[..., :n_y, :]


def conv_pruned_inplace(field, h):
    """Pruned (rows first) with the transfer multiply in place (the FFT output is a fresh tensor that
    nothing else holds, and mul's backward needs only h): one (…, m, m) allocation less per call."""
    n_y, n_x = field.shape[-2:]
    m_y, m_x = h.shape[-2:]
    spec = torch.fft.fft(field, n=m_x, dim=-1)
    spec = torch.fft.fft(spec, n=m_y, dim=-2)
    spec.mul_(h)
    out = torch.fft.ifft(spec, dim=-2)[..., :n_y, :]
    return torch.fft.ifft(out, dim=-1)[..., :n_x]


def conv_fft2_inplace(field, h):
    """Current, but with the transfer multiply in place."""
    n_y, n_x = field.shape[-2:]
    spec = torch.fft.fft2(field, s=h.shape[-2:])
    spec.mul_(h)
    return torch.fft.ifft2(spec)[..., :n_y, :n_x]


class _PaddedConvolution(torch.autograd.Function):
    """crop(ifft2(H · fft2(pad(u)))) with a hand-written backward: the adjoint of that map is the same
    map with conj(H) (F^H = m²·F⁻¹ for the unnormalised DFT), so the backward is one more pad → fft2 →
    multiply → ifft2 → crop, instead of autograd's chain (two slice_backward's each zero-filling a new
    buffer, FftC2CBackward ×2, MulBackward, ConstantPadNdBackward's clone). Products in place.
    Only for a constant H (no dz): the gradient with respect to H is not computed."""

    @staticmethod
    def forward(ctx, field, h):
        ctx.save_for_backward(h)
        return _pad_fft_mul_ifft_crop(field, h)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return _pad_fft_mul_ifft_crop(grad, h.conj()), None


def _pad_fft_mul_ifft_crop(field, h):
    n_y, n_x = field.shape[-2:]
    spec = torch.fft.fft2(field, s=h.shape[-2:])
    spec.mul_(h)
    return torch.fft.ifft2(spec)[..., :n_y, :n_x]


def conv_custom_autograd(field, h):
    """The whole convolution as one autograd node (see _PaddedConvolution); falls back to the current
    code when H itself needs a gradient (a differentiable dz)."""
    if h.requires_grad:
        return CURRENT(field, h)
    return _PaddedConvolution.apply(field, h)


_WORK_BUFFERS: dict = {}


def _padded_buffer(field, h):
    """A persistent (…, m, m) buffer whose outside-the-window region is zero once and stays zero: the
    window is overwritten on each call, so no per-call zero fill and no fresh m×m page faults."""
    key = (tuple(field.shape), tuple(h.shape), field.dtype, field.device)
    buf = _WORK_BUFFERS.get(key)
    if buf is None:
        buf = _WORK_BUFFERS[key] = torch.zeros(*field.shape[:-2], *h.shape[-2:], dtype=field.dtype,
                                               device=field.device)
    return buf


def _buffered_pad_fft_mul_ifft_crop(field, h):
    n_y, n_x = field.shape[-2:]
    buf = _padded_buffer(field, h)
    buf[..., :n_y, :n_x].copy_(field)
    spec = torch.fft.fft2(buf)
    spec.mul_(h)
    return torch.fft.ifft2(spec)[..., :n_y, :n_x]


class _BufferedPaddedConvolution(torch.autograd.Function):
    """As _PaddedConvolution, with the zero padding kept in a persistent buffer (see _padded_buffer).
    Safe because nothing returned or saved aliases the buffer (the FFT output is a new tensor)."""

    @staticmethod
    def forward(ctx, field, h):
        ctx.save_for_backward(h)
        return _buffered_pad_fft_mul_ifft_crop(field, h)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return _buffered_pad_fft_mul_ifft_crop(grad.contiguous(), h.conj()), None


def conv_custom_buffered(field, h):
    if h.requires_grad:
        return CURRENT(field, h)
    return _BufferedPaddedConvolution.apply(field, h)


VARIANTS = {
    "current": conv_current,
    "explicit_pad": conv_explicit_pad,
    "fft2_inplace": conv_fft2_inplace,
    "pruned_rows_first": conv_pruned_rows_first,
    "pruned_cols_first": conv_pruned_cols_first,
    "pruned_inplace": conv_pruned_inplace,
    "custom_autograd": conv_custom_autograd,
    "custom_buffered": conv_custom_buffered,
}


# ---- timing ------------------------------------------------------------------------------------------

def check_equal(n: int, variants: dict) -> None:
    g = torch.Generator().manual_seed(0)
    field = torch.randn(3, n, n, dtype=torch.complex64, generator=g)
    h = band_limited_transfer(padded_size(n), 0.4e-3, 0.75e-3, 30e-3)
    with torch.no_grad():
        ref = CURRENT(field, h)
    weight = torch.rand(n, n, generator=g)
    field.requires_grad_()
    (CURRENT(field, h).abs() ** 2 * weight).sum().backward()
    ref_grad, field.grad = field.grad, None
    for name, conv in variants.items():
        out = conv(field, h)
        err = float((out - ref).norm() / ref.norm())
        (out.abs() ** 2 * weight).sum().backward()
        grad_err = float((field.grad - ref_grad).norm() / ref_grad.norm())
        field.grad = None
        if err > 1e-5 or grad_err > 1e-5:
            raise AssertionError(f"variant {name} differs from the current convolution: rel. error "
                                 f"{err:.2e} (value), {grad_err:.2e} (gradient)")


def prop_benchmark(n: int, batch: int, variants: dict, warmup: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    field = torch.randn(batch, n, n, dtype=torch.complex64, generator=g).requires_grad_()
    h = band_limited_transfer(padded_size(n), 0.4e-3, 0.75e-3, 30e-3)
    weight = torch.rand(n, n, generator=g)

    def make(conv):
        def run():
            field.grad = None
            out = conv(field, h)
            ((out.real ** 2 + out.imag ** 2) * weight).sum().backward()
        return run
    return interleaved_times_s({k: make(v) for k, v in variants.items()}, warmup, repeats)


def step_benchmark(n: int, batch: int, variants: dict, warmup: int, repeats: int) -> dict:
    from propagation import build_network, make_step  # benchmarks/propagation.py

    def make(conv):
        net = build_network(n, "ours")
        step = make_step(net, batch)

        def run():
            propagation._convolve_padded = conv
            try:
                step()
            finally:
                propagation._convolve_padded = CURRENT
        return run
    return interleaved_times_s({k: make(v) for k, v in variants.items()}, warmup, repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--what", nargs="+", default=["prop", "step"], choices=["prop", "step"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile(current) and torch.compile(pruned_inplace)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {k: VARIANTS[k] for k in args.variants}
    if "current" not in variants:
        variants = {"current": conv_current, **variants}
    if args.compile:
        variants["compiled_current"] = torch.compile(conv_current, dynamic=False)
        variants["compiled_pruned_inplace"] = torch.compile(conv_pruned_inplace, dynamic=False)
    results = []
    for n in args.sizes:
        t0 = time.perf_counter()
        check_equal(n, variants)
        compile_s = time.perf_counter() - t0
        for what in args.what:
            bench = prop_benchmark if what == "prop" else step_benchmark
            timed = bench(n, args.batch, variants, args.warmup, args.repeats)
            medians = {k: v[0] for k, v in timed.items()}
            minima = {k: v[1] for k, v in timed.items()}
            results.append({"what": what, "neurons": n, "fft_size": padded_size(n), "batch": args.batch,
                            "median_s": medians, "min_s": minima,
                            "speedup_vs_current": {k: medians["current"] / v for k, v in medians.items()},
                            "speedup_vs_current_min": {k: minima["current"] / v for k, v in minima.items()}})
        if args.compile:
            results[-1]["check_and_compile_s"] = compile_s
    if args.json:
        print(json.dumps({"threads": args.threads, "torch": torch.__version__, "results": results}))
        return 0
    print(f"{args.threads} threads, batch {args.batch}; {args.repeats} interleaved rounds: median (min)")
    for r in results:
        print(f"\n{r['what']}: N={r['neurons']} (FFT {r['fft_size']})")
        for k, v in r["median_s"].items():
            print(f"  {k:26s} {v * 1e3:9.1f} ms ({r['min_s'][k] * 1e3:7.1f})   "
                  f"{r['speedup_vs_current'][k]:5.2f}× ({r['speedup_vs_current_min'][k]:4.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
