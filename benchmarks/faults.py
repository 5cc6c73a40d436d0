"""Fault drills on the virtual bench, each repeated N times (default 10):

* SIGKILL at a random point of a raster scan, then ``--resume``: every grid point exactly once?
* SIGINT at a random point: run marked aborted, RF off and both stages stopped on the EMULATOR?
* the lock-in drops its connection after a random number of messages: run failed with a reason and
  no gap in the rows; ``--resume`` on a healthy bench completes it exactly once?

    python benchmarks/faults.py --design runs/demo/design/model.pt --trials 10 [--json]

The virtual bench runs in this process (as ``d2nn-lab bench serve`` would); the scans run as
``d2nn-lab run`` subprocesses that connect to it through an addresses file, so the emulator's state
is checked after the client is gone.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab.config import bench_config_from_dict  # noqa: E402
from lab.runner import run  # noqa: E402
from lab.store import load_run  # noqa: E402
from lab.virtual.bench import VirtualBench  # noqa: E402
from procedures.raster_scan import RasterScan, RasterScanParameters  # noqa: E402

SCAN_ARGS = ["--objects", "mnist:test:0", "--size-mm", "19", "19", "--step-mm", "1"]  # 400 points
N_POINTS = 400


def bench_dict(design: str, faults=None, time_scale=0.0) -> dict:
    return {"name": "faults", "lockin": {"sensitivity_v": 1e-3},
            "stages": {"x": {"timeout_s": 5.0}, "y": {"timeout_s": 5.0}}, "object_changer": "virtual",
            "virtual": {"design": design, "time_scale": time_scale, "source_power_uw": 1000.0,
                        "faults": faults or {}}}


def _rows(run_dir: Path) -> int:
    data = run_dir / "data.csv"
    if not data.exists():
        return 0
    return sum(1 for line in data.read_text().splitlines() if line and line[0].isdigit())


def _client(tmp: Path, design: str, addresses: Path) -> Path:
    client = bench_dict(design)
    client["virtual"]["addresses_file"] = str(addresses)
    path = tmp / "client.yaml"
    path.write_text(yaml.safe_dump(client))
    return path


def _start_scan(bench_file: Path, out: Path, resume=False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lab.cli", "run", "raster-scan", "--bench", str(bench_file), "--out", str(out),
           *SCAN_ARGS] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _signal_at(proc: subprocess.Popen, run_dir: Path, at_row: int, signum: int, timeout_s=120) -> int:
    deadline = time.monotonic() + timeout_s
    while _rows(run_dir) < at_row and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    rows = _rows(run_dir)
    proc.send_signal(signum)
    proc.wait(timeout=60)
    return rows


def drill_sigkill(design: str, rng, tmp: Path, server: VirtualBench, client: Path) -> dict:
    out = tmp / f"kill-{rng.integers(1e9)}"
    at = int(rng.integers(20, N_POINTS - 20))
    rows = _signal_at(_start_scan(client, out), out, at, signal.SIGKILL)
    rf_left_on = server.state()["source"]["rf_on"]  # SIGKILL cannot be caught: say what it leaves
    resumed = _start_scan(client, out, resume=True)
    resumed.wait(timeout=300)
    frame, meta = load_run(out)
    points = frame["point"].tolist()
    return {"killed_at_rows": rows, "rf_on_after_kill": rf_left_on,
            "exactly_once": sorted(points) == list(range(N_POINTS)) and len(points) == N_POINTS,
            "status": meta["status"], "rf_off_after_resume": not server.state()["source"]["rf_on"]}


def drill_sigint(design: str, rng, tmp: Path, server: VirtualBench, client: Path) -> dict:
    out = tmp / f"int-{rng.integers(1e9)}"
    at = int(rng.integers(20, N_POINTS - 20))
    proc = _start_scan(client, out)
    rows = _signal_at(proc, out, at, signal.SIGINT)
    state = server.state()
    frame, meta = load_run(out)
    return {"interrupted_at_rows": rows, "exit_code": proc.returncode, "status": meta["status"],
            "rf_off": not state["source"]["rf_on"],
            "stages_stopped": not state["stage_x"]["moving"] and not state["stage_y"]["moving"],
            "rows_contiguous": frame["point"].tolist() == list(range(len(frame)))}


def drill_disconnect(design: str, rng, tmp: Path) -> dict:
    out = tmp / f"drop-{rng.integers(1e9)}"
    after = int(rng.integers(100, 1500))
    procedure = RasterScan(RasterScanParameters(objects=("mnist:test:0",), size_mm=(19.0, 19.0), step_mm=1.0))
    quiet = dict(log=lambda m: None, progress=lambda items, total, desc: items)
    faulty = bench_config_from_dict(bench_dict(design, {"lockin": {"drop_after_messages": after}}))
    first = run(procedure, faulty, out, **quiet)
    frame, meta = load_run(out)
    gapless = frame["point"].tolist() == list(range(len(frame)))
    rows = len(frame)
    run(procedure, bench_config_from_dict(bench_dict(design)), out, resume=True, **quiet)
    frame, meta2 = load_run(out)
    return {"drop_after_messages": after, "status": first["status"], "reason": meta["reason"],
            "rows_before_failure": rows, "no_gap": gapless,
            "exactly_once_after_resume": sorted(frame["point"].tolist()) == list(range(N_POINTS)),
            "final_status": meta2["status"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", default=str(REPO / "runs/demo/design/model.pt"))
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    design = str(Path(args.design).resolve())
    rng = np.random.default_rng(args.seed)
    results = {"sigkill": [], "sigint": [], "disconnect": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with VirtualBench(bench_config_from_dict(bench_dict(design))) as server:
            addresses = server.write_addresses(tmp / "addresses.yaml")
            client = _client(tmp, design, addresses)
            for _ in range(args.trials):
                results["sigkill"].append(drill_sigkill(design, rng, tmp, server, client))
                results["sigint"].append(drill_sigint(design, rng, tmp, server, client))
        for _ in range(args.trials):
            results["disconnect"].append(drill_disconnect(design, rng, tmp))
    k, i, d = results["sigkill"], results["sigint"], results["disconnect"]
    summary = {
        "trials": args.trials,
        "sigkill_exactly_once": sum(r["exactly_once"] for r in k),
        "sigkill_rf_left_on_by_kill": sum(r["rf_on_after_kill"] for r in k),
        "sigkill_rf_off_after_resume": sum(r["rf_off_after_resume"] for r in k),
        "sigint_aborted": sum(r["status"] == "aborted" for r in i),
        "sigint_rf_off_and_stages_stopped": sum(r["rf_off"] and r["stages_stopped"] for r in i),
        "sigint_rows_contiguous": sum(r["rows_contiguous"] for r in i),
        "disconnect_failed_with_reason": sum(r["status"] == "failed" and bool(r["reason"]) for r in d),
        "disconnect_no_gap": sum(r["no_gap"] for r in d),
        "disconnect_exactly_once_after_resume": sum(r["exactly_once_after_resume"] for r in d),
    }
    if args.json:
        print(json.dumps({"summary": summary, "trials": results}, default=str))
    else:
        for key, value in summary.items():
            print(f"{key:40s} {value}" + ("" if key == "trials" else f" / {args.trials}"))
        print("example disconnect reason:", d[0]["reason"])


if __name__ == "__main__":
    main()
