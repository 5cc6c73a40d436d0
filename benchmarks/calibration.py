"""Calibration accuracy on random as-built benches (DESIGN.md section 7).

For each case: a random as-built stack (per layer lateral ±1 mm, axial ±1 mm, rotation ±2°; 5 layers of
the small config), a random detector-plane offset (±1 mm) and lock-in-like noise; the virtual bench's
optics (rendered 2× finer than the twin) give raster scans of a few MNIST digits; the fit sees only
those scans; the truth is compared afterwards.

    .venv/bin/python benchmarks/calibration.py --design runs/demo/design/model.pt --cases 10 --seed 0 [--json]

``--truth-oversample 4 --plate-supersample 4``: the bench renders the plates 4× finer than the twin and the
fit's data model supersamples the plates 4× (the honest setting: the default 2×/2× lets the data model
reproduce the bench's own discretization). Wall times depend on the machine's load: each case also
reports its LM iterations (one Jacobian each) and model evaluations, and the time per iteration.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration.fit import FitOptions, fit_twin  # noqa: E402
from calibration.synthetic import raster_positions, synthesize_scans  # noqa: E402
from lab.virtual.optics import AsBuilt, AsBuiltOptics  # noqa: E402
from model.checkpoint import load_checkpoint  # noqa: E402
from model.data import load_dataset  # noqa: E402

DEFAULT_DESIGNS = ("runs/demo/design/model.pt", "/tmp/calib-design/model.pt")


def pick_objects(n: int) -> list[np.ndarray]:
    """Distinct digits (0, 1, 2, …): different strokes light different parts of the plates."""
    images, labels = load_dataset("mnist", "test")
    return [images[int((labels == c).nonzero()[0])].numpy() for c in range(n)]


def run_case(design: str, seed: int, objects: list[np.ndarray], half_width_m: float, step_m: float,
             noise: float, truth_oversample: int, options: FitOptions) -> dict:
    rng = np.random.default_rng(10_000 + seed)
    net, _ = load_checkpoint(design)
    truth = AsBuilt.random(len(net.layers), seed, 1e-3, 1e-3, math.radians(2), aperture_m=options.aperture_m,
                           oversample=truth_oversample)
    offset = tuple(rng.uniform(-1e-3, 1e-3, 2))
    optics = AsBuiltOptics(design, truth)
    x, y = raster_positions(half_width_m, step_m)
    scans = synthesize_scans(optics, objects, [f"digit{i}" for i in range(len(objects))], x, y, offset, noise, rng=rng)
    result = fit_twin(net, scans, options)
    v = result.values_si
    lateral, axial, rotation = [], [], []
    for i, e in enumerate(truth.layers):
        lateral += [abs(v[f"layer{i}.dx_m"] - e.dx_m), abs(v[f"layer{i}.dy_m"] - e.dy_m)]
        axial.append(abs(v[f"layer{i}.dz_m"] - e.dz_m))
        rotation.append(abs(v[f"layer{i}.rotation_rad"] - e.rotation_rad))
    return {"seed": seed, "n_points": result.n_points, "wall_time_s": result.wall_time_s,
            "iterations": result.iterations, "evaluations": result.evaluations,
            "loss_before": result.loss_before, "loss_after": result.loss_after,
            "lateral_err_m": lateral, "axial_err_m": axial, "rotation_err_rad": rotation,
            "detector_offset_err_m": [abs(v["detector_dx_m"] - offset[0]), abs(v["detector_dy_m"] - offset[1])],
            "detector_dz_err_m": abs(v["detector_dz_m"] - truth.detector_dz_m),
            "lateral_sigma_median_m": float(np.median([result.uncertainty.sigma_si[n] for n in result.names
                                                       if n.endswith(".dx_m") or n.endswith(".dy_m")])),
            "not_identifiable": sorted(result.uncertainty.reasons), "strategy": result.strategy}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--design", help="design checkpoint (small config); default: " + " or ".join(DEFAULT_DESIGNS))
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--half-width-mm", type=float, default=16.0)
    ap.add_argument("--step-mm", type=float, default=0.8)
    ap.add_argument("--noise", type=float, default=0.005, help="noise rms relative to each map's peak")
    ap.add_argument("--truth-oversample", type=int, default=2)
    ap.add_argument("--plate-supersample", type=int, default=2)
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="wall-clock safety net per fit (default none: fixed iteration counts, deterministic)")
    ap.add_argument("--hop-rounds", type=int, default=FitOptions.hop_rounds)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fair on a shared machine)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    design = args.design or next((d for d in DEFAULT_DESIGNS if Path(d).is_file()), None)
    if design is None:
        print("no design checkpoint: pass --design (train one with `d2nn-lab train --config "
              "configs/small-mnist.yaml --out DIR --epochs 2`)", file=sys.stderr)
        return 2
    objects = pick_objects(args.objects)
    opts = FitOptions(seed=args.seed, plate_supersample=args.plate_supersample, time_budget_s=args.time_budget_s,
                      hop_rounds=args.hop_rounds)
    cases = []
    start = time.monotonic()
    for k in range(args.cases):
        c = run_case(design, args.seed + k, objects, args.half_width_mm * 1e-3, args.step_mm * 1e-3, args.noise,
                     args.truth_oversample, opts)
        cases.append(c)
        if not args.json:
            print(f"case {c['seed']:3d}: points {c['n_points']}, loss {c['loss_before']:.3f} → {c['loss_after']:.4f}, "
                  f"lateral median {np.median(c['lateral_err_m']) * 1e3:.3f} mm (worst {max(c['lateral_err_m']) * 1e3:.3f}), "
                  f"axial median {np.median(c['axial_err_m']) * 1e3:.3f} mm (worst {max(c['axial_err_m']) * 1e3:.3f}), "
                  f"rotation median {math.degrees(np.median(c['rotation_err_rad'])):.3f}° "
                  f"(worst {math.degrees(max(c['rotation_err_rad'])):.3f}°), {c['wall_time_s']:.1f} s, "
                  f"{c['iterations']} LM iterations / {c['evaluations']} evaluations "
                  f"({c['wall_time_s'] / max(c['iterations'], 1):.2f} s per iteration incl. everything)", flush=True)
            print(f"          {c['strategy'].split('minimum found by: ')[-1]}", flush=True)
    lat = np.concatenate([c["lateral_err_m"] for c in cases])
    ax = np.concatenate([c["axial_err_m"] for c in cases])
    rot = np.concatenate([c["rotation_err_rad"] for c in cases])
    times = [c["wall_time_s"] for c in cases]
    summary = {"cases": len(cases), "design": design, "objects": args.objects,
               "raster": {"half_width_m": args.half_width_mm * 1e-3, "step_m": args.step_mm * 1e-3},
               "n_points": cases[0]["n_points"], "truth_oversample": args.truth_oversample,
               "plate_supersample": args.plate_supersample, "noise_fraction": args.noise,
               "lateral_err_median_m": float(np.median(lat)), "lateral_err_worst_m": float(lat.max()),
               "axial_err_median_m": float(np.median(ax)), "axial_err_worst_m": float(ax.max()),
               "rotation_err_median_rad": float(np.median(rot)), "rotation_err_worst_rad": float(rot.max()),
               "wall_time_median_s": float(np.median(times)), "wall_time_max_s": float(max(times)),
               "iterations_median": float(np.median([c["iterations"] for c in cases])),
               "iterations_max": int(max(c["iterations"] for c in cases)),
               "threads": args.threads,
               "targets_met": bool(np.median(lat) <= 0.05e-3 and np.median(ax) <= 0.3e-3
                                   and np.median(rot) <= math.radians(0.2) and max(times) <= 60),
               "total_s": time.monotonic() - start, "per_case": cases}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"\n{len(cases)} cases, {summary['n_points']} points each ({args.objects} objects, "
              f"±{args.half_width_mm:g} mm raster at {args.step_mm:g} mm)")
        print(f"lateral  median {summary['lateral_err_median_m'] * 1e3:.3f} mm, worst {summary['lateral_err_worst_m'] * 1e3:.3f} mm  (target ≤ 0.05)")
        print(f"axial    median {summary['axial_err_median_m'] * 1e3:.3f} mm, worst {summary['axial_err_worst_m'] * 1e3:.3f} mm  (target ≤ 0.3)")
        print(f"rotation median {math.degrees(summary['rotation_err_median_rad']):.3f}°, worst {math.degrees(summary['rotation_err_worst_rad']):.3f}°  (target ≤ 0.2°)")
        print(f"wall time per fit: median {summary['wall_time_median_s']:.1f} s, max {summary['wall_time_max_s']:.1f} s (target ≤ 60; "
              f"{args.threads} torch thread(s)); LM iterations median {summary['iterations_median']:.0f}, "
              f"max {summary['iterations_max']}")
        print("targets met" if summary["targets_met"] else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
