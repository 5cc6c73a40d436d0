"""Execute a procedure on a bench: the RunEngine of d2nn-lab.

The procedure describes points; this module owns what every measurement needs the same way: the run
store (rows fsync'ed as measured, meta.json with the exit status), ``--resume`` (skip what is on disk),
the estimated duration, a progress bar, lock-in overload/unlock handling (re-range and re-measure the
point; never store an overloaded value), and the end state: success, aborted (Ctrl-C/SIGTERM) or failed
(with the reason). The ``Bench`` context leaves the RF off and the stages stopped on every exit.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from instruments import InstrumentError, LockInOverload, ReferenceUnlocked

from .bench import Bench
from .config import BenchConfig, load_bench_config
from .errors import UsageError
from .progress import progress as default_progress
from .store import RunStore, RunStoreError

COLUMNS = ["point", "object_id", "region", "x_m", "y_m", "r_v", "theta_rad", "power_w", "sensitivity_v",
           "attempts", "time_s"]
MAX_ATTEMPTS = 4
READ_OVERHEAD_S = 0.05  # per point on a real bench: GPIB/LAN round trips of SNAP?/LIAS?


def public_bench_config(cfg: BenchConfig) -> dict:
    """The bench config as stored with a run: without the virtual bench's hidden truth, which no
    analysis (and no calibration) may read."""
    data = cfg.to_dict()
    if data.get("virtual"):
        data["virtual"] = {"time_scale": data["virtual"]["time_scale"], "design": data["virtual"]["design"]}
    return data


def estimate_duration_s(points, cfg: BenchConfig, settle_s: float) -> float:
    """Bench time for ``points``: stage travel at the slower axis speed + settle + read per point."""
    speed = min(cfg.stages.x.speed_mm_s, cfg.stages.y.speed_mm_s) * 1e-3
    travel = sum(max(abs(b.x_m - a.x_m), abs(b.y_m - a.y_m)) for a, b in zip(points[:-1], points[1:]))
    return travel / speed + len(points) * (settle_s + READ_OVERHEAD_S)


def _measure(bench: Bench, log: Callable[[str], None], where: str):
    """One validated reading; overload or unlock → re-range / wait, re-measure (never store overload)."""
    last = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return bench.read(settle=True), attempt
        except LockInOverload as exc:
            last = exc
            log(f"{where}: lock-in overload (attempt {attempt}); re-ranging and measuring again")
            bench.auto_range()
        except ReferenceUnlocked as exc:
            last = exc
            log(f"{where}: reference unlocked (attempt {attempt}); waiting for lock and measuring again")
            bench.sleep(10 * max(bench.settle_time_s, 1e-3))
    raise InstrumentError(f"{where}: no valid reading after {MAX_ATTEMPTS} attempts ({last})")


def run(procedure, bench_cfg: BenchConfig, out: str | Path, *, bench_file: str | Path | None = None,
        resume: bool = False, log: Callable[[str], None] | None = None, progress=default_progress,
        bench_factory=Bench) -> dict:
    """Measure every point of ``procedure`` not yet in ``out``; returns {status, reason, summary, out}."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    params = dict(procedure.params.__dict__)
    try:
        store = (RunStore.resume(out, procedure.name, params) if resume
                 else RunStore.create(out, procedure.name, params, COLUMNS))
    except RunStoreError as exc:
        raise UsageError(str(exc)) from None
    points = procedure.points()
    done = store.done()
    todo = [p for p in points if p.point not in done]
    objects = {o.object_id: o for o in procedure.objects()}
    for obj in objects.values():
        if obj.object_id not in store.meta.get("objects", {}):
            store.save_object(obj.object_id, obj.image, obj.info)
    twin = getattr(procedure.params, "twin", None)
    if twin:
        from model.checkpoint import file_sha256
        store.update_meta(twin={"checkpoint": str(twin), "sha256": file_sha256(twin)})
    status, reason = "failed", None
    try:
        with bench_factory(bench_cfg, bench_file) as bench:
            store.update_meta(bench={"config": public_bench_config(bench_cfg), "snapshot": bench.snapshot()})
            estimate = estimate_duration_s(todo, bench_cfg, bench.settle_time_s)
            log(f"{procedure.name}: {len(todo)} of {len(points)} points to measure "
                f"({len(done)} already on disk), estimated {estimate:.0f} s of bench time"
                + (f" (time scale {bench.time_scale:g})" if bench_cfg.is_virtual else ""))
            bench.rf_on()
            mounted = None
            for p in progress(todo, len(todo), procedure.name):
                if p.object_id != mounted:
                    obj = objects[p.object_id]
                    bench.mount(obj.object_id, obj.image)
                    mounted = p.object_id
                bench.move_to_mm(p.x_m * 1e3, p.y_m * 1e3)
                reading, attempts = _measure(bench, log, f"point {p.point}")
                store.append({"point": p.point, "object_id": p.object_id, "region": p.region,
                              "x_m": p.x_m, "y_m": p.y_m, "r_v": reading.r_v, "theta_rad": reading.theta_rad,
                              "power_w": reading.power_w, "sensitivity_v": bench.sensitivity_v(),
                              "attempts": attempts, "time_s": time.time()})
            status = "success"
    except KeyboardInterrupt as exc:
        status, reason = "aborted", str(exc) or "interrupted"
    except (InstrumentError, OSError) as exc:
        status, reason = "failed", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 — the run must say how it ended, then re-raise
        store.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    store.finish(status, reason)
    summary = None
    if status == "success" and hasattr(procedure, "summarize"):
        summary = procedure.summarize(store.rows(), store.meta)
        store.update_meta(result=summary)
    log(f"{procedure.name}: run {status}{f' ({reason})' if reason else ''}; data in {Path(out) / 'data.csv'}")
    return {"status": status, "reason": reason, "summary": summary, "out": str(out)}


def add_run_arguments(parser: argparse.ArgumentParser, procedure_cls) -> None:
    parser.add_argument("--bench", required=True, help="BENCH.yaml")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue a run: measure only what is missing")
    parser.add_argument("--json", action="store_true")
    procedure_cls.add_arguments(parser)


def run_from_args(procedure_cls, args) -> int:
    import json
    try:
        procedure = procedure_cls.from_args(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    result = run(procedure, load_bench_config(args.bench), args.out, bench_file=args.bench, resume=args.resume)
    if args.json:
        print(json.dumps(result, default=str))
    elif result["summary"]:
        _print_summary(procedure_cls.name, result["summary"])
    return {"success": 0, "aborted": 130, "failed": 1}[result["status"]]


def _print_summary(name: str, summary: dict) -> None:
    if name == "classify":
        print(f"classify: measured accuracy {summary['accuracy']:.3f} on {summary['n']} objects; "
              f"agreement with the twin {summary['agreement_with_twin']:.3f}")
    elif name == "beam-profile" and summary.get("waist_x_m") is not None:
        print(f"beam-profile: centre ({summary['centre_x_m'] * 1e3:.2f}, {summary['centre_y_m'] * 1e3:.2f}) mm, "
              f"1/e² radius {summary['waist_x_m'] * 1e3:.2f} × {summary['waist_y_m'] * 1e3:.2f} mm")
    else:
        print(f"{name}: {summary.get('points', '?')} points measured")


def procedure_main(procedure_cls, argv=None) -> int:
    """``python -m procedures.NAME`` entry: the same options as ``d2nn-lab run NAME``."""
    from .cli import _user_errors
    parser = argparse.ArgumentParser(prog=f"python -m procedures.{procedure_cls.__module__.split('.')[-1]}")
    add_run_arguments(parser, procedure_cls)
    args = parser.parse_args(argv)
    try:
        return run_from_args(procedure_cls, args)
    except _user_errors() as exc:
        print(f"{procedure_cls.name}: error: {exc}", file=sys.stderr)
        return 2

