"""Run store: durable rows, honest status, resume without gaps or duplicates."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from lab.store import RunStore, RunStoreError, load_object, load_run

COLUMNS = ["point", "object_id", "x_m", "y_m", "power_w"]
PARAMS = {"step_mm": 0.5, "area_mm": [4.0, 4.0], "objects": ["a", "b"]}


def _row(i):
    return {"point": i, "object_id": "a", "x_m": i * 1e-4 / 3, "y_m": -i * 1e-4, "power_w": 1e-9 * (i + 1)}


def test_rows_round_trip_exactly_through_pandas(tmp_path):
    store = RunStore.create(tmp_path / "run", "raster-scan", PARAMS, COLUMNS)
    for i in range(5):
        store.append(_row(i))
    frame, meta = load_run(tmp_path / "run")
    assert frame["point"].tolist() == list(range(5))
    assert frame["x_m"].tolist() == [_row(i)["x_m"] for i in range(5)]  # repr keeps every digit
    assert meta["status"] == "running" and meta["procedure"] == "raster-scan"
    assert pd.read_csv(tmp_path / "run" / "data.csv", comment="#").shape == (5, len(COLUMNS))


def test_finish_records_status_reason_and_end_time(tmp_path):
    store = RunStore.create(tmp_path / "run", "raster-scan", PARAMS, COLUMNS)
    store.finish("failed", "stage x: timeout")
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["reason"] == "stage x: timeout" and meta["end_time"]
    with pytest.raises(ValueError):
        store.finish("fine")


def test_creating_over_an_existing_run_is_refused(tmp_path):
    RunStore.create(tmp_path / "run", "raster-scan", PARAMS, COLUMNS)
    with pytest.raises(RunStoreError, match="already holds a run"):
        RunStore.create(tmp_path / "run", "raster-scan", PARAMS, COLUMNS)


def test_resume_refuses_changed_parameters_and_names_them(tmp_path):
    RunStore.create(tmp_path / "run", "raster-scan", PARAMS, COLUMNS)
    with pytest.raises(RunStoreError, match="step_mm"):
        RunStore.resume(tmp_path / "run", "raster-scan", {**PARAMS, "step_mm": 1.0})
    with pytest.raises(RunStoreError, match="cannot resume it as 'classify'"):
        RunStore.resume(tmp_path / "run", "classify", PARAMS)
    # tuples and lists are the same parameter after a JSON round trip
    RunStore.resume(tmp_path / "run", "raster-scan", {**PARAMS, "area_mm": (4.0, 4.0)})


def test_resume_cuts_a_torn_last_line_and_reports_done_points(tmp_path):
    store = RunStore.create(tmp_path / "run", "raster-scan", PARAMS, COLUMNS)
    for i in range(3):
        store.append(_row(i))
    with open(tmp_path / "run" / "data.csv", "a") as f:
        f.write("3,a,0.0001")  # killed inside write()
    again = RunStore.resume(tmp_path / "run", "raster-scan", PARAMS)
    assert again.done() == {0, 1, 2}
    again.append(_row(3))
    assert load_run(tmp_path / "run")[0]["point"].tolist() == [0, 1, 2, 3]
    assert again.meta["resumed"][0]["previous_status"] == "running"


def test_objects_are_saved_with_the_run(tmp_path):
    store = RunStore.create(tmp_path / "run", "raster-scan", PARAMS, COLUMNS)
    image = np.random.default_rng(0).random((28, 28)).astype(np.float32)
    store.save_object("mnist-test/17", image, {"label": 7})
    assert np.array_equal(load_object(tmp_path / "run", "mnist-test/17"), image)
    assert load_run(tmp_path / "run")[1]["objects"]["mnist-test/17"] == {"label": 7}


WRITER = textwrap.dedent("""
    import sys, time
    from lab.store import RunStore
    path, n = sys.argv[1], int(sys.argv[2])
    params = {"n": n}
    try:
        store = RunStore.resume(path, "count", params)
    except Exception:
        store = RunStore.create(path, "count", params, ["point", "value"])
    done = store.done()
    for i in range(n):
        if i in done:
            continue
        store.append({"point": i, "value": i * i})
        print(i, flush=True)
        time.sleep(0.002)
    store.finish("success")
""")


def test_sigkill_at_random_points_then_resume_measures_every_point_exactly_once(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    run = tmp_path / "run"
    n = 200
    rng = np.random.default_rng(1)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(run), str(n)], stdout=subprocess.PIPE, env=env)
        time.sleep(float(rng.uniform(0.3, 0.8)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run([sys.executable, str(script), str(run), str(n)], check=True, env=env, capture_output=True)
    frame, meta = load_run(run)
    assert sorted(frame["point"].tolist()) == list(range(n))
    assert (frame["value"] == frame["point"] ** 2).all()
    assert meta["status"] == "success"
