"""Calibration outputs: ``calibration.json``, the mechanical corrections table, the as-built twin.

Sign convention. Every fitted pose is *as-built minus design*: ``layer3.dx_m = +0.35e-3`` means plate 3 sits
0.35 mm towards +x (the twin's column direction) from where the design puts it; ``rotation_rad`` > 0 turns
+x towards +y; ``dz_m`` > 0 means the plate is further from the object. To realign, move the plate by
*minus* the fitted error — which is what ``corrections`` writes. The detector offset (``detector_dx_m``)
is where the optical axis frame sits relative to the nominal stage frame: the detector at nominal
(x, y) really reads the field at (x + detector_dx_m, y + detector_dy_m) (the virtual bench's
``detector_offset_mm`` is minus this).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint, save_checkpoint

from .fit import FitResult

POSE = ("dx_m", "dy_m", "dz_m", "rotation_rad")


def _layer_count(result: FitResult) -> int:
    return len({n.split(".")[0] for n in result.names if n.startswith("layer")})


def result_to_dict(result: FitResult) -> dict:
    """The ``calibration.json`` object (SI units)."""
    v, s, ok = result.values_si, result.uncertainty.sigma_si, result.uncertainty.identifiable
    layers = []
    for i in range(_layer_count(result)):
        entry = {"layer": i + 1}
        for name in POSE:
            key = f"layer{i}.{name}"
            entry[name] = v[key]
            entry[f"{name.removesuffix('_m').removesuffix('_rad')}_sigma{'_m' if name.endswith('_m') else '_rad'}"] = s[key]
        entry["identifiable"] = {name: ok[f"layer{i}.{name}"] for name in POSE}
        layers.append(entry)
    globals_ = {}
    for key in v:
        if not key.startswith("layer"):
            unit = "" if key == "index_scale" else ("_m" if key.endswith("_m") else "_rad")
            base = key.removesuffix("_m").removesuffix("_rad")
            globals_[key] = v[key]
            globals_[f"{base}_sigma{unit}"] = s[key]
            globals_[f"{base}_identifiable"] = ok[key]
    return {
        "layers": layers,
        "globals": globals_,
        "scale_background_per_object": [{"scale": a, "background_w": b} for a, b in result.scales],
        "loss_before": result.loss_before,
        "loss_after": result.loss_after,
        "loss_definition": "mean over objects of the fraction of measured variance left unexplained",
        "strategy": result.strategy,
        "wall_time_s": result.wall_time_s,
        "n_points": result.n_points,
        "n_objects": result.n_objects,
        "residual_variance": result.uncertainty.residual_variance,
        "not_identifiable": sorted(result.uncertainty.reasons.values()),
        "notes": result.notes,
    }


def corrections(result: FitResult, min_lateral_m: float = 0.02e-3, min_rotation_rad: float = math.radians(0.05),
                min_axial_m: float = 0.05e-3) -> list[str]:
    """Instructions for the bench: what to do to each plate to bring it back to the design."""
    v, ok = result.values_si, result.uncertainty.identifiable
    n = _layer_count(result)
    lines = []
    for i in range(n):
        parts = []
        for axis in ("x", "y"):
            d = v[f"layer{i}.d{axis}_m"]
            if abs(d) >= min_lateral_m:
                parts.append(f"move {-d * 1e3:+.2f} mm in {axis}")
        rot = v[f"layer{i}.rotation_rad"]
        if abs(rot) >= min_rotation_rad:
            parts.append(f"rotate {-math.degrees(rot):+.2f}°")
        # Spacing to the next plane: (dz of the next plane) − (own dz) is the excess length.
        nxt = v[f"layer{i + 1}.dz_m"] if i + 1 < n else v.get("detector_dz_m", 0.0)
        gap = nxt - v[f"layer{i}.dz_m"]
        target = f"layer {i + 2}" if i + 1 < n else "the output plane"
        if abs(gap) >= min_axial_m:
            parts.append(f"spacing to {target} is {abs(gap) * 1e3:.2f} mm too {'long' if gap > 0 else 'short'}")
        flagged = [name for name in POSE if not ok[f"layer{i}.{name}"]]
        line = f"layer {i + 1}: " + (", ".join(parts) if parts else "within tolerance")
        if flagged:
            line += f" (not identifiable from these data: {', '.join(flagged)})"
        lines.append(line)
    dz0 = v["layer0.dz_m"]
    if abs(dz0) >= min_axial_m:
        lines.insert(0, f"object to layer 1 is {abs(dz0) * 1e3:.2f} mm too {'long' if dz0 > 0 else 'short'}")
    return lines


def write_as_built_twin(path: str | Path, design_checkpoint: str | Path, result: FitResult) -> Path:
    """The design checkpoint with the fitted poses and globals in its state_dict."""
    net, payload = load_checkpoint(design_checkpoint)
    with torch.no_grad():
        for name, value in result.values_si.items():
            if name.startswith("layer"):
                i, attr = name[5:].split(".", 1)
                getattr(net.layers[int(i)], attr).fill_(value)
            elif hasattr(net, name):
                getattr(net, name).fill_(value)
    metrics = dict(payload.get("metrics", {}))
    metrics["calibration"] = {"loss_before": result.loss_before, "loss_after": result.loss_after,
                              "n_points": result.n_points}
    return save_checkpoint(path, net, metrics, printed_layers=list(range(len(net.layers))))


def write_outputs(out_dir: str | Path, design_checkpoint: str | Path, result: FitResult) -> dict:
    """``calibration.json``, ``corrections.txt`` and ``as_built.pt`` in ``out_dir``; returns the JSON dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = result_to_dict(result)
    doc["corrections"] = corrections(result)
    doc["as_built_checkpoint"] = str(write_as_built_twin(out / "as_built.pt", design_checkpoint, result))
    (out / "calibration.json").write_text(json.dumps(doc, indent=2))
    (out / "corrections.txt").write_text("\n".join(doc["corrections"]) + "\n")
    return doc
