"""Samples/s of one training step of the 5-layer twin: ours vs torchoptics vs a textbook ASM vs its FFTs.

One training step = forward (input field → 5 × [propagate, × layer transmission] → propagate →
|U|² → detector energies → cross-entropy) + backward + one Adam step, batch B, geometry of
configs/small-mnist.yaml (0.4 THz, 0.4 mm pitch, 30 mm spacing) with ``grid.neurons`` = N.

Four columns, everything but the free-space propagation shared (same ``D2NN`` object, same layers,
input, detector, loss; only ``net.propagators`` is swapped):

  (a) torchoptics — ``torchoptics.Field(u, wavelength, spacing).propagate_to_z(z, propagation_method=
      "ASM", asm_pad=N/2)``: the same grid and the same 2N FFT size as ours (its default asm_pad=2N
      would be a 5N grid, 6.25× the FFT work); torchoptics' default dtype set to float32 so its data is
      complex64 like ours. It rebuilds the transfer function every call and crops by interpolation.
  (b) textbook — transfer function precomputed once on the 2N×2N grid; per call ``F.pad`` to 2N,
      ``fft2``, multiply, ``ifft2``, crop.
  (c) ours — ``model.network.D2NN`` as it is.
  (d) FFT bound — the FFTs alone: every ``aten._fft_*`` call that one training step of (c) makes,
      forward and backward, recorded with its exact input shape, dims and direction by a dispatch
      mode, then replayed back-to-back on preallocated tensors. For the current implementation that is
      2 × 6 full 2-D complex64 FFTs of (B, 2N, 2N) forward and 2 × 5 backward (no gradient flows into
      the first propagation's input). Whatever (c) does besides FFTs (pad, crop, products, Adam, …)
      is overhead above this bound; efficiency = bound time / (c) time.

    .venv/bin/python benchmarks/propagation.py [--sizes 100 200] [--batch 32] [--repeats 5] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from model.config import load_network_config, network_config_from_dict  # noqa: E402
from model.network import D2NN  # noqa: E402
from model.propagation import band_limited_transfer, padded_size  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "small-mnist.yaml"


# ---- the alternative propagators (same call signature as ours: forward(field, dz_m=None)) ---------

class TextbookPropagator(nn.Module):
    """Precomputed H on the 2N×2N grid; pad, fft2, multiply, ifft2, crop."""

    def __init__(self, n: int, pitch_m: float, wavelength_m: float, distance_m: float):
        super().__init__()
        self.n = n
        self.register_buffer("transfer", band_limited_transfer(2 * n, pitch_m, wavelength_m, distance_m))

    def forward(self, field: torch.Tensor, dz_m=None) -> torch.Tensor:
        n = self.n
        padded = F.pad(field, (0, n, 0, n))
        return torch.fft.ifft2(torch.fft.fft2(padded) * self.transfer)[..., :n, :n]


class TorchopticsPropagator(nn.Module):
    """torchoptics' ASM through its public Field API, padded to the same 2N grid as ours."""

    def __init__(self, n: int, pitch_m: float, wavelength_m: float, distance_m: float):
        super().__init__()
        self.n, self.pitch_m, self.wavelength_m, self.distance_m = n, pitch_m, wavelength_m, distance_m

    def forward(self, field: torch.Tensor, dz_m=None) -> torch.Tensor:
        import torchoptics
        pad = self.n // 2
        f = torchoptics.Field(field, wavelength=self.wavelength_m, spacing=(self.pitch_m, self.pitch_m))
        return f.propagate_to_z(self.distance_m, propagation_method="ASM", asm_pad=(pad, pad)).data


def build_network(n: int, kind: str) -> D2NN:
    data = copy.deepcopy(load_network_config(CONFIG).to_dict())
    data["grid"]["neurons"] = n
    cfg = network_config_from_dict(data, f"{CONFIG.name} (neurons={n})")
    torch.manual_seed(0)
    net = D2NN(cfg)
    if kind == "ours":
        return net
    cls = {"textbook": TextbookPropagator, "torchoptics": TorchopticsPropagator}[kind]
    net.propagators = nn.ModuleList(cls(net.n, net.pitch_m, net.wavelength_m, d) for d in cfg.distances_m)
    return net


def make_step(net: D2NN, batch: int):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 28, 28, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.01)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()
        return float(loss)
    return step


def median_time_s(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- (d) the FFT bound -------------------------------------------------------------------------------

class _RecordFFTs(TorchDispatchMode):
    """Records every aten FFT primitive (op, input shape/dtype, remaining args) that runs inside."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.__name__.startswith("_fft_"):
            x = args[0]
            self.calls.append((func, tuple(x.shape), x.dtype, args[1:], dict(kwargs)))
        return func(*args, **kwargs)


def fft_calls_of_one_step(step) -> list:
    recorder = _RecordFFTs()
    with recorder:
        step()
    return recorder.calls


def describe_fft_calls(calls) -> str:
    counts: dict[str, int] = {}
    for func, shape, dtype, rest, _ in calls:
        key = f"{func.__name__.split('.')[0]}{list(shape)} dims={list(rest[0])}"
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{v} × {k}" for k, v in counts.items())


def fft_replay(calls):
    inputs = [torch.randn(shape, dtype=dtype) for _, shape, dtype, _, _ in calls]

    def run():
        for (func, _, _, rest, kwargs), x in zip(calls, inputs):
            func(x, *rest, **kwargs)
    return run


# ---- driver -------------------------------------------------------------------------------------------

def measure(n: int, batch: int, warmup: int, repeats: int, with_torchoptics: bool) -> dict:
    row: dict = {"neurons": n, "fft_size": padded_size(n), "batch": batch}
    kinds = (["torchoptics"] if with_torchoptics else []) + ["textbook", "ours"]
    steps = {}
    for kind in kinds:
        steps[kind] = make_step(build_network(n, kind), batch)
        row[f"{kind}_step_s"] = median_time_s(steps[kind], warmup, repeats)
    calls = fft_calls_of_one_step(steps["ours"])
    row["fft_calls"] = describe_fft_calls(calls)
    row["fft_bound_step_s"] = median_time_s(fft_replay(calls), warmup, repeats)
    for kind in kinds + ["fft_bound"]:
        row[f"{kind}_samples_per_s"] = batch / row[f"{kind}_step_s"]
    if with_torchoptics:
        row["speedup_vs_torchoptics"] = row["torchoptics_step_s"] / row["ours_step_s"]
    row["speedup_vs_textbook"] = row["textbook_step_s"] / row["ours_step_s"]
    row["fft_efficiency"] = row["fft_bound_step_s"] / row["ours_step_s"]
    return row


def print_table(rows: list[dict], threads: int) -> None:
    print(f"one training step (forward + backward + Adam), 5 layers, batch {rows[0]['batch']}, "
          f"{threads} threads; median step time and samples/s")
    header = f"{'N':>5} {'FFT':>5} | {'torchoptics':>18} | {'textbook':>18} | {'ours':>18} | {'FFT bound':>18}"
    print(header)
    print("-" * len(header))
    for r in rows:
        def cell(kind):
            if f"{kind}_step_s" not in r:
                return f"{'—':>18}"
            return f"{r[f'{kind}_step_s'] * 1e3:8.1f} ms {r[f'{kind}_samples_per_s']:6.1f}/s"
        print(f"{r['neurons']:>5} {r['fft_size']:>5} | {cell('torchoptics')} | {cell('textbook')} | "
              f"{cell('ours')} | {cell('fft_bound')}")
    print()
    for r in rows:
        parts = []
        if "speedup_vs_torchoptics" in r:
            parts.append(f"ours/torchoptics {r['speedup_vs_torchoptics']:.2f}× (target ≥ 6)")
        parts.append(f"ours/textbook {r['speedup_vs_textbook']:.2f}× (target ≥ 1.5)")
        parts.append(f"FFT bound / ours {100 * r['fft_efficiency']:.0f} % (target ≥ 70 %)")
        print(f"N={r['neurons']}: " + ", ".join(parts))
        print(f"        FFTs per step: {r['fft_calls']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200], help="neurons per side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per column (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="default: all cores")
    parser.add_argument("--no-torchoptics", action="store_true", help="skip column (a)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    with_torchoptics = not args.no_torchoptics
    if with_torchoptics:
        try:
            import torchoptics
            torchoptics.set_default_dtype(torch.float32)  # complex64 data, as ours
        except ImportError:
            print("torchoptics not installed: column (a) skipped", file=sys.stderr)
            with_torchoptics = False
    rows = [measure(n, args.batch, args.warmup, args.repeats, with_torchoptics) for n in args.sizes]
    if args.json:
        print(json.dumps({"threads": args.threads, "torch": torch.__version__, "results": rows}))
    else:
        print_table(rows, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
