"""Samples/s of one training step of the 5-layer twin: ours vs torchoptics vs a textbook ASM vs its FFTs.

One training step = forward (input field → 5 × [propagate, × layer transmission] → propagate →
|U|² → detector energies → cross-entropy) + backward + one Adam step, batch B, geometry of
configs/small-mnist.yaml (0.4 THz, 0.4 mm pitch, 30 mm spacing) with ``grid.neurons`` = N.

Four columns, everything but the free-space propagation shared (same ``D2NN`` object, same layers,
input, detector, loss; only ``net.propagators`` is swapped):

  (a) torchoptics — ``torchoptics.Field(u, wavelength, spacing).propagate_to_z(z, propagation_method=
      "ASM", asm_pad=…)``, twice: with asm_pad = N/2 per side, the same 2N FFT grid as ours ("2N pad"),
      and with its default asm_pad = 2N per side, a 5N grid, 6.25× the FFT work ("5N pad", what a
      torchoptics user gets). Its default dtype is set to float32 so its data is complex64 like ours.
      It rebuilds the transfer function every call, fftshifts, and crops by grid_sample interpolation.
  (b) textbook — transfer function precomputed once on the 2N×2N grid; per call ``F.pad`` to 2N,
      ``fft2``, multiply, ``ifft2``, crop.
  (c) ours — ``model.network.D2NN`` as it is.
  (d) FFT bound — the FFTs alone: every ``aten._fft_*`` call that one training step of (c) makes,
      forward and backward, recorded with its exact input shape, dims and direction by a dispatch
      mode, then replayed back-to-back on preallocated tensors. For the current implementation that is
      2 × 6 full 2-D complex64 FFTs of (B, 2N, 2N) forward and 2 × 5 backward (no gradient flows into
      the first propagation's input). Whatever (c) does besides FFTs (pad, crop, products, Adam, …)
      is overhead above this bound; efficiency = bound time / (c) time.

    .venv/bin/python benchmarks/propagation.py [--sizes 100 200] [--batch 32] [--repeats 5]
        [--torchoptics both|matched|default|none] [--threads T] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
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
    """torchoptics' ASM through its public Field API. ``asm_pad`` zeros on each side: N/2 gives the
    same 2N grid as ours ("matched"); None is torchoptics' default, 2N per side (a 5N grid)."""

    def __init__(self, n: int, pitch_m: float, wavelength_m: float, distance_m: float,
                 asm_pad: int | None):
        super().__init__()
        self.n, self.pitch_m, self.wavelength_m, self.distance_m = n, pitch_m, wavelength_m, distance_m
        self.asm_pad = asm_pad

    def forward(self, field: torch.Tensor, dz_m=None) -> torch.Tensor:
        import torchoptics
        f = torchoptics.Field(field, wavelength=self.wavelength_m, spacing=(self.pitch_m, self.pitch_m))
        pad = None if self.asm_pad is None else (self.asm_pad, self.asm_pad)
        return f.propagate_to_z(self.distance_m, propagation_method="ASM", asm_pad=pad).data


def build_network(n: int, kind: str) -> D2NN:
    data = copy.deepcopy(load_network_config(CONFIG).to_dict())
    data["grid"]["neurons"] = n
    cfg = network_config_from_dict(data, f"{CONFIG.name} (neurons={n})")
    torch.manual_seed(0)
    net = D2NN(cfg)
    if kind == "ours":
        return net
    if kind == "textbook":
        props = [TextbookPropagator(net.n, net.pitch_m, net.wavelength_m, d) for d in cfg.distances_m]
    else:
        pad = net.n // 2 if kind == "torchoptics" else None  # "torchoptics_default": its own 2N per side
        props = [TorchopticsPropagator(net.n, net.pitch_m, net.wavelength_m, d, pad) for d in cfg.distances_m]
    net.propagators = nn.ModuleList(props)
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
        return loss.item()
    return step


def interleaved_times_s(fns: dict, warmup: int, repeats: int) -> dict:
    """(median, min) seconds per function, timed in interleaved rounds (a, b, c, a, b, c, …) so that
    load from other processes on a shared machine falls on every column alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    order = list(fns)
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)  # no column always runs first (after another's garbage) in a round
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


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

KINDS = ("torchoptics_default", "torchoptics", "textbook", "ours", "fft_bound")


def measure(n: int, batch: int, warmup: int, repeats: int, torchoptics_columns: list[str]) -> dict:
    row: dict = {"neurons": n, "fft_size": padded_size(n), "batch": batch}
    fns = {kind: make_step(build_network(n, kind), batch)
           for kind in [*torchoptics_columns, "textbook", "ours"]}
    calls = fft_calls_of_one_step(fns["ours"])
    row["fft_calls"] = describe_fft_calls(calls)
    fns["fft_bound"] = fft_replay(calls)
    for kind, (median_s, min_s) in interleaved_times_s(fns, warmup, repeats).items():
        row[f"{kind}_step_s"], row[f"{kind}_min_step_s"] = median_s, min_s
        row[f"{kind}_samples_per_s"] = batch / median_s
    for kind in torchoptics_columns:
        row[f"speedup_vs_{kind}"] = row[f"{kind}_step_s"] / row["ours_step_s"]
    row["speedup_vs_textbook"] = row["textbook_step_s"] / row["ours_step_s"]
    row["fft_efficiency"] = row["fft_bound_step_s"] / row["ours_step_s"]
    row["fft_efficiency_min"] = row["fft_bound_min_step_s"] / row["ours_min_step_s"]
    return row


def print_table(rows: list[dict], threads: int, repeats: int) -> None:
    print(f"one training step (forward + backward + Adam), 5 layers, batch {rows[0]['batch']}, {threads} "
          f"threads; median (min) of {repeats} interleaved rounds; samples/s from the median")
    titles = {"torchoptics_default": "torchoptics 5N pad", "torchoptics": "torchoptics 2N pad",
              "textbook": "textbook 2N", "ours": "ours", "fft_bound": "FFT bound"}
    kinds = [k for k in KINDS if f"{k}_step_s" in rows[0]]
    header = f"{'N':>4} {'FFT':>4} | " + " | ".join(f"{titles[k]:>26}" for k in kinds)
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = [f"{r[f'{k}_step_s'] * 1e3:7.0f} ({r[f'{k}_min_step_s'] * 1e3:6.0f}) ms {r[f'{k}_samples_per_s']:5.1f}/s"
                 for k in kinds]
        print(f"{r['neurons']:>4} {r['fft_size']:>4} | " + " | ".join(cells))
    print()
    for r in rows:
        parts = []
        if "speedup_vs_torchoptics_default" in r:
            parts.append(f"ours/torchoptics(default 5N pad) {r['speedup_vs_torchoptics_default']:.2f}×")
        if "speedup_vs_torchoptics" in r:
            parts.append(f"ours/torchoptics(2N pad) {r['speedup_vs_torchoptics']:.2f}× (target ≥ 6)")
        parts.append(f"ours/textbook {r['speedup_vs_textbook']:.2f}× (target ≥ 1.5)")
        parts.append(f"FFT bound/ours {100 * r['fft_efficiency']:.0f} % ({100 * r['fft_efficiency_min']:.0f} % "
                     "on minima; target ≥ 70 %)")
        print(f"N={r['neurons']}: " + ", ".join(parts))
        print(f"        FFTs per step of ours: {r['fft_calls']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 200], help="neurons per side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per column (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="default: all cores")
    parser.add_argument("--torchoptics", choices=["both", "matched", "default", "none"], default="both",
                        help="column (a): torchoptics padded to our 2N grid (matched), with its default "
                             "2N per side (a 5N grid: memory-hungry at N=200), both, or none")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    columns = {"both": ["torchoptics_default", "torchoptics"], "matched": ["torchoptics"],
               "default": ["torchoptics_default"], "none": []}[args.torchoptics]
    if columns:
        try:
            import torchoptics
            torchoptics.set_default_dtype(torch.float32)  # complex64 data, as ours
        except ImportError:
            print("torchoptics not installed: column (a) skipped", file=sys.stderr)
            columns = []
    rows = [measure(n, args.batch, args.warmup, args.repeats, columns) for n in args.sizes]
    if args.json:
        print(json.dumps({"threads": args.threads, "torch": torch.__version__, "results": rows}))
    else:
        print_table(rows, args.threads, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
