"""One call for the CLI: runs → fitted as-built twin, calibration.json, corrections.

    doc = calibrate(["runs/scan1"], twin="design/model.pt", out_dir="calib", seed=0, progress=cb)
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from model.checkpoint import load_checkpoint

from .data import load_scans, twin_from_runs
from .fit import FitOptions, FitResult, ProgressCallback, fit_twin
from .report import write_outputs


def calibrate(run_dirs: list[str | Path], twin: str | Path | None, out_dir: str | Path, seed: int = 0,
              options: FitOptions | None = None, progress: ProgressCallback | None = None) -> tuple[FitResult, dict]:
    """Fit the design checkpoint ``twin`` (default: the one the runs name in meta['twin']) to the runs'
    raster scans; write ``out_dir``/{calibration.json, corrections.txt, as_built.pt}. Returns the fit
    result and the JSON document (what ``calibrate --json`` prints)."""
    twin = twin or twin_from_runs(run_dirs)
    if twin is None:
        raise ValueError("no --twin given and no run names its twin checkpoint in meta.json")
    scans, notes = load_scans(run_dirs)
    net, _ = load_checkpoint(twin)
    opts = replace(options or FitOptions(), seed=seed)
    result = fit_twin(net, scans, opts, progress)
    result.notes.extend(notes)
    return result, write_outputs(out_dir, twin, result)
