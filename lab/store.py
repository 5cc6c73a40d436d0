"""The run store: one directory per run (DESIGN.md section 6).

```
RUN_DIR/
  data.csv      one row per measured point, appended and flushed (and fsync'ed) as it is measured;
                pymeasure's Results layout: '#' header lines (procedure, parameters), then CSV
  meta.json     procedure and parameters, bench config and instrument snapshot, twin checkpoint hash,
                software versions, start/end times, status: running | success | aborted | failed (+ reason)
  objects/      the input objects' images (<object_id>.npy), so a run is analysable on its own
```

A crash loses at most the point in flight: a row is written with one ``write`` and fsync'ed before the
next point starts; a torn last line (killed mid-write) is cut off on resume. ``resume`` refuses when the
stored parameters differ from the requested ones, and ``done`` tells the procedure which points exist.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

DATA_FILE = "data.csv"
META_FILE = "meta.json"
STATUSES = ("running", "success", "aborted", "failed")


class RunStoreError(Exception):
    """The run directory cannot be used as asked (exists, parameters differ, not a run)."""


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def software_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for dist in ("d2nn-lab", "torch", "numpy", "pandas", "pymeasure", "pyvisa", "pyvisa-py", "pyserial"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _canonical(obj):
    """Parameters compared after a JSON round trip (tuples → lists, numpy → python)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


@dataclass
class RunStore:
    path: Path
    columns: list[str]
    meta: dict

    # ---- opening ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, procedure: str, parameters: dict, columns: list[str],
               extra_meta: dict | None = None) -> "RunStore":
        path = Path(path)
        if (path / META_FILE).exists():
            raise RunStoreError(f"{path}: already holds a run; use --resume to continue it or choose a new --out")
        path.mkdir(parents=True, exist_ok=True)
        meta = {"procedure": procedure, "parameters": _canonical(parameters), "columns": list(columns),
                "status": "running", "reason": None, "start_time": _now_iso(), "end_time": None,
                "resumed": [], "versions": software_versions(), **(extra_meta or {})}
        header = [f"#Procedure: <{procedure}>", "#Parameters:"]
        header += [f"#\t{k}: {json.dumps(v, default=str)}" for k, v in meta["parameters"].items()]
        header += ["#Data:"]
        with open(path / DATA_FILE, "w", newline="") as f:
            f.write("\n".join(header) + "\n" + ",".join(columns) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _write_json_atomic(path / META_FILE, meta)
        return cls(path, list(columns), meta)

    @classmethod
    def resume(cls, path: str | Path, procedure: str, parameters: dict) -> "RunStore":
        path = Path(path)
        if not (path / META_FILE).is_file() or not (path / DATA_FILE).is_file():
            raise RunStoreError(f"{path}: not a run directory (no {META_FILE}/{DATA_FILE}); nothing to resume")
        meta = json.loads((path / META_FILE).read_text())
        if meta.get("procedure") != procedure:
            raise RunStoreError(f"{path}: was a '{meta.get('procedure')}' run, cannot resume it as '{procedure}'")
        wanted = _canonical(parameters)
        if meta.get("parameters") != wanted:
            diff = sorted(k for k in set(wanted) | set(meta["parameters"])
                          if wanted.get(k) != meta["parameters"].get(k))
            raise RunStoreError(f"{path}: parameters differ from the stored run ({', '.join(diff)}); "
                                f"resume with the original options or start a new --out")
        _cut_torn_last_line(path / DATA_FILE)
        meta["resumed"].append({"time": _now_iso(), "previous_status": meta["status"]})
        meta.update(status="running", reason=None, end_time=None)
        _write_json_atomic(path / META_FILE, meta)
        return cls(path, meta["columns"], meta)

    # ---- writing ---------------------------------------------------------------------------------
    def append(self, row: dict) -> None:
        """Append one measured point and make it durable before returning."""
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise ValueError(f"row lacks columns {missing}")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_cell(row[c]) for c in self.columns])
        with open(self.path / DATA_FILE, "a", newline="") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())

    def save_object(self, object_id: str, image: np.ndarray | None, info: dict) -> None:
        folder = self.path / "objects"
        folder.mkdir(exist_ok=True)
        if image is not None:
            np.save(folder / f"{_safe(object_id)}.npy", np.asarray(image, dtype=np.float32))
        self.meta.setdefault("objects", {})[object_id] = _canonical(info)
        _write_json_atomic(self.path / META_FILE, self.meta)

    def update_meta(self, **fields) -> None:
        self.meta.update(_canonical(fields))
        _write_json_atomic(self.path / META_FILE, self.meta)

    def finish(self, status: str, reason: str | None = None) -> None:
        if status not in STATUSES[1:]:
            raise ValueError(f"status must be one of {STATUSES[1:]}")
        self.meta.update(status=status, reason=reason, end_time=_now_iso())
        _write_json_atomic(self.path / META_FILE, self.meta)

    # ---- reading ---------------------------------------------------------------------------------
    def rows(self) -> pd.DataFrame:
        return _read_data(self.path / DATA_FILE)

    def done(self, key: str = "point") -> set:
        frame = self.rows()
        return set(frame[key].tolist()) if len(frame) else set()


def _cell(value):
    if isinstance(value, float):
        return repr(value)  # full precision, round-trips exactly
    if isinstance(value, (np.floating,)):
        return repr(float(value))
    return value


def _safe(object_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in object_id)


def _cut_torn_last_line(path: Path) -> None:
    """A process killed inside ``write`` can leave a last line without its newline: drop it."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def _read_data(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


def load_run(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """(rows as a DataFrame, metadata) of a run directory."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise RunStoreError(f"{path}: not a run directory (no {META_FILE})")
    meta = json.loads((path / META_FILE).read_text())
    return _read_data(path / DATA_FILE), meta


def load_object(path: str | Path, object_id: str) -> np.ndarray | None:
    file = Path(path) / "objects" / f"{_safe(object_id)}.npy"
    return np.load(file) if file.is_file() else None

