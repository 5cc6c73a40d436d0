"""Software time per raster point through the full driver stack on the virtual bench (time_scale 0).

Each point: ``move_to_mm`` (APT over a pty, both axes; an axis already at its target is skipped),
``settle`` (``*CLS`` + a zero-length scaled sleep) and ``read`` (``SNAP? 3,4`` + ``LIAS?`` over
pyvisa-py TCP). With time_scale 0 the emulators answer instantly, so what is measured is the software:
drivers, transports, emulators (all in this one process, sharing the GIL). Target: <= 2 ms per point.

    .venv/bin/python benchmarks/bench_overhead.py [--n 20] [--profile out.prof] [--json]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="raster is n × n points")
    parser.add_argument("--step-mm", type=float, default=0.4)
    parser.add_argument("--profile", help="write a cProfile of the raster to this file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    from conftest import TINY
    from lab.bench import Bench
    from lab.config import bench_config_from_dict
    from model.checkpoint import save_checkpoint
    from model.config import network_config_from_dict
    from model.network import D2NN

    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    torch.manual_seed(0)
    save_checkpoint(tmp / "model.pt", D2NN(network_config_from_dict(copy.deepcopy(TINY))))
    cfg = bench_config_from_dict({
        "name": "overhead", "lockin": {"sensitivity_v": 1e-3}, "stages": {"x": {}, "y": {}},
        "object_changer": "virtual",
        "virtual": {"design": str(tmp / "model.pt"), "time_scale": 0.0, "source_power_uw": 100.0}})

    half = (args.n - 1) * args.step_mm / 2
    points = [(-half + i * args.step_mm, -half + j * args.step_mm) for j in range(args.n)
              for i in (range(args.n) if j % 2 == 0 else reversed(range(args.n)))]  # serpentine
    move_s, settle_s, read_s, total_s = [], [], [], []
    with Bench(cfg) as bench:
        bench.rf_on()
        bench.move_to_mm(*points[0])
        for _ in range(20):  # warm-up
            bench.read_power_w()
        profiler = None
        if args.profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        clock = time.perf_counter
        for x_mm, y_mm in points:
            t0 = clock()
            bench.move_to_mm(x_mm, y_mm)
            t1 = clock()
            bench.settle()
            t2 = clock()
            bench.read(settle=False)
            t3 = clock()
            move_s.append(t1 - t0)
            settle_s.append(t2 - t1)
            read_s.append(t3 - t2)
            total_s.append(t3 - t0)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)

    ms = lambda v: round(1e3 * v, 3)  # noqa: E731
    result = {
        "points": len(points),
        "per_point_ms": {"mean": ms(statistics.mean(total_s)), "median": ms(statistics.median(total_s)),
                         "p95": ms(sorted(total_s)[int(0.95 * len(total_s))])},
        "breakdown_mean_ms": {"move": ms(statistics.mean(move_s)), "settle": ms(statistics.mean(settle_s)),
                              "read": ms(statistics.mean(read_s))},
        "breakdown_median_ms": {"move": ms(statistics.median(move_s)),
                                "settle": ms(statistics.median(settle_s)),
                                "read": ms(statistics.median(read_s))},
        "target_ms": 2.0,
    }
    if args.json:
        print(json.dumps(result))
    else:
        p = result["per_point_ms"]
        b = result["breakdown_mean_ms"]
        print(f"{len(points)} points: mean {p['mean']} ms, median {p['median']} ms, p95 {p['p95']} ms per point "
              f"(target <= 2 ms); mean move {b['move']} ms, settle {b['settle']} ms, read {b['read']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
