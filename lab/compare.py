"""Measured vs twin: figures of merit, PNGs and one ``report.html`` for a run (``d2nn-lab compare``).

    d2nn-lab compare RUN_DIR --twin CHECKPOINT --out REPORT_DIR [--aperture-mm A] [--json]

Scanned runs (raster-scan, beam-profile): for every object the measured map (points placed on the
scan grid by their x/y values, so serpentine order does not matter; points never measured, as in an
aborted run, are NaN), the twin's prediction *at the same points* (twin intensity × pixel area,
box-filtered by the detector's square aperture, bilinear-sampled at x_m, y_m, then fitted to the
measurement by least squares: measured ≈ scale · twin + background), the residual, line profiles
through the scan centre and the energy per detector region. Classify runs: accuracy, agreement with
the twin and both confusion matrices, recomputed from the rows with the given twin (so an aborted run
can be compared too), next to the summary the run recorded.

Only the run directory and the twin are read: never the bench file nor any hidden truth. The aperture
is the ``aperture_m`` argument when given, else the public ``lockin.detector.aperture_mm`` of the run's
bench config, else 0.5 mm.
"""
from __future__ import annotations

import html
import json
import math
import sys
from pathlib import Path

import numpy as np

from model.detector import sample_bilinear as bilinear_sample

from .errors import UsageError
from .store import RunStoreError, load_object, load_run

DEFAULT_APERTURE_M = 0.5e-3
SCANNED = ("raster-scan", "beam-profile")
POSITION_DECIMALS = 7  # positions rounded to 0.1 µm when placed on the grid


# ---- sampling the twin ---------------------------------------------------------------------------
def aperture_power(power_per_pixel: np.ndarray, pitch_m: float, aperture_m: float) -> np.ndarray:
    """Power through the detector's square aperture centred on every pixel (W), or the density (W/m²)
    for a point detector: the twin's detector model, ``model.detector.aperture_power``."""
    import torch

    from model.detector import aperture_power as twin_aperture_power
    return twin_aperture_power(torch.as_tensor(np.asarray(power_per_pixel, dtype=np.float64)), pitch_m,
                               aperture_m).numpy()


def twin_intensity(net, image: np.ndarray | None) -> np.ndarray:
    """The twin's output-plane intensity (n, n) for one object; None = open object plane."""
    import torch
    img = torch.ones(1, 28, 28) if image is None else torch.as_tensor(np.asarray(image, np.float32))[None]
    net.eval()
    with torch.no_grad():
        return net.output_intensity(img)[0].double().numpy()


def fit_scale_background(measured: np.ndarray, twin: np.ndarray) -> tuple[float, float]:
    """Least squares ``measured ≈ scale · twin + background`` over the finite pairs."""
    ok = np.isfinite(measured) & np.isfinite(twin)
    if ok.sum() < 2 or np.ptp(twin[ok]) == 0:
        return (float("nan"), float(np.nanmean(measured[ok])) if ok.any() else float("nan"))
    design = np.stack([twin[ok], np.ones(ok.sum())], axis=1)
    (scale, background), *_ = np.linalg.lstsq(design, measured[ok], rcond=None)
    return float(scale), float(background)


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return None
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


# ---- the scan grid ---------------------------------------------------------------------------------
def scan_axes_m(frame, parameters: dict) -> tuple[np.ndarray, np.ndarray]:
    """Grid axes (xs, ys) in metres: the planned grid from the parameters (so an aborted run shows its
    gaps), widened by any measured position not on it; else the measured positions."""
    xs = set(np.round(frame["x_m"].to_numpy(float), POSITION_DECIMALS))
    ys = set(np.round(frame["y_m"].to_numpy(float), POSITION_DECIMALS))
    try:
        step = float(parameters["step_mm"])
        for axis, values in ((0, xs), (1, ys)):
            size, centre = float(parameters["size_mm"][axis]), float(parameters["center_mm"][axis])
            count = int(math.floor(size / step + 1e-9)) + 1
            planned = ((np.arange(count) - (count - 1) / 2) * step + centre) * 1e-3
            values.update(np.round(planned, POSITION_DECIMALS))
    except (KeyError, TypeError, ValueError, IndexError):
        pass
    return np.array(sorted(xs)), np.array(sorted(ys))


def grid_map(xs: np.ndarray, ys: np.ndarray, x_m, y_m, values) -> np.ndarray:
    """Values placed on the (ys, xs) grid by position; NaN where nothing was measured."""
    out = np.full((len(ys), len(xs)), np.nan)
    ix = np.searchsorted(xs, np.round(np.asarray(x_m, float), POSITION_DECIMALS))
    iy = np.searchsorted(ys, np.round(np.asarray(y_m, float), POSITION_DECIMALS))
    out[iy, ix] = values
    return out


def region_masks(x_m, y_m, centres_m, size_m) -> list[np.ndarray]:
    half = size_m / 2 * (1 + 1e-9)
    x, y = np.asarray(x_m, float), np.asarray(y_m, float)
    return [(np.abs(x - cx) <= half) & (np.abs(y - cy) <= half) for cx, cy in centres_m]


# ---- comparing one scanned object ----------------------------------------------------------------
def compare_object(object_id: str, rows, image, info: dict, net, aperture_m: float) -> dict:
    """Figures of merit and the arrays the figures need, for one scanned object."""
    import torch
    x, y = rows["x_m"].to_numpy(float), rows["y_m"].to_numpy(float)
    measured = rows["power_w"].to_numpy(float)
    intensity = twin_intensity(net, image)
    collected = aperture_power(intensity * net.pitch_m ** 2, net.pitch_m, aperture_m)
    coords = net.coords_m().numpy()
    twin_raw = bilinear_sample(collected, coords, x, y)
    inside = np.isfinite(twin_raw)
    if not inside.any():
        half_mm = (coords[-1] - coords[0]) / 2 * 1e3
        raise UsageError(f"object {object_id}: no scanned point lies on the twin's output plane "
                         f"(±{half_mm:.1f} mm); is this the twin of this network?")
    scale, background = fit_scale_background(measured, twin_raw)
    twin_fit = scale * twin_raw + background if math.isfinite(scale) else np.full_like(twin_raw, background)
    label = info.get("label") if isinstance(info, dict) else None
    result = {"points": int(len(rows)), "points_outside_twin": int((~inside).sum()),
              "correlation": pearson(measured, twin_raw), "scale": scale, "background_w": background,
              "rms_residual_w": float(np.sqrt(np.nanmean((measured - twin_fit) ** 2))),
              "label": label, "twin_class": None, "measured_class": None, "twin_sampled_class": None,
              "energy_fraction_correct_measured": None, "energy_fraction_correct_twin": None,
              "region_energies_measured_w": None, "region_energies_twin_w": None,
              "region_points": None, "regions_uncovered": None}
    arrays = {"x_m": x, "y_m": y, "measured": measured, "twin": twin_fit}
    det = net.detector
    if det is not None:
        if image is not None:
            with torch.no_grad():
                energies = det.energies(torch.as_tensor(intensity).float())
            result["twin_class"] = int(det.scores(energies).argmax())
        masks = region_masks(x, y, det.centres_m, det.size_m)
        counts = [int(m.sum()) for m in masks]
        e_meas = [float(measured[m].sum()) if c else None for m, c in zip(masks, counts)]
        e_twin = [float(np.nansum(twin_fit[m])) if c else None for m, c in zip(masks, counts)]
        result.update(region_points=counts, region_energies_measured_w=e_meas, region_energies_twin_w=e_twin,
                      regions_uncovered=[r for r, c in enumerate(counts) if c == 0])
        covered = [r for r, c in enumerate(counts) if c]
        if covered:
            # Class = brightest region by mean power per point (regions may hold unequal point counts).
            mean_meas = {r: e_meas[r] / counts[r] for r in covered}
            mean_twin = {r: e_twin[r] / counts[r] for r in covered}
            result["measured_class"] = _class_of(max(mean_meas, key=mean_meas.get), det)
            result["twin_sampled_class"] = _class_of(max(mean_twin, key=mean_twin.get), det)
            if label is not None and not det.differential and label in covered:
                result["energy_fraction_correct_measured"] = e_meas[label] / sum(e_meas[r] for r in covered)
                result["energy_fraction_correct_twin"] = e_twin[label] / sum(e_twin[r] for r in covered)
    return {"figures": result, "arrays": arrays}


def _class_of(region: int, det) -> int:
    return region // 2 if det.differential else region


# ---- classify runs -------------------------------------------------------------------------------
def classify_summary(frame, meta: dict, net, run_dir: Path) -> dict:
    """Accuracy, agreement and confusion matrices recomputed from the rows with ``net``."""
    import torch
    det = net.detector
    if det is None:
        raise UsageError("the twin has no detector regions (an imaging network); a classify run needs them")
    n_regions = len(det.centres_m)
    if len(frame) and int(frame["region"].max()) >= n_regions:
        raise UsageError(f"the run measured region {int(frame['region'].max())} but the twin has only "
                         f"{n_regions} detector regions; is this the run's twin?")
    n_classes = det.n_classes
    energies = frame.groupby(["object_id", "region"])["power_w"].mean().unstack("region")
    predictions, confusion_measured, confusion_twin = {}, np.zeros((n_classes,) * 2, int), np.zeros((n_classes,) * 2, int)
    for object_id, row in energies.iterrows():
        info = meta.get("objects", {}).get(object_id, {})
        label, image = info.get("label"), load_object(run_dir, object_id)
        if label is None or image is None:
            continue
        e = torch.tensor(row.reindex(range(n_regions)).fillna(0.0).to_numpy())
        measured = int(det.scores(e).argmax())
        with torch.no_grad():
            twin = int(net(torch.as_tensor(image, dtype=torch.float32)[None]).argmax(-1)[0])
        predictions[object_id] = {"label": int(label), "measured": measured, "twin": twin}
        if int(label) < n_classes:
            confusion_measured[label, measured] += 1
            confusion_twin[label, twin] += 1
    n = len(predictions)
    ratio = (lambda key_a, key_b: sum(p[key_a] == p[key_b] for p in predictions.values()) / n if n else None)
    return {"n": n, "accuracy": ratio("measured", "label"), "twin_accuracy": ratio("twin", "label"),
            "agreement_with_twin": ratio("measured", "twin"), "predictions": predictions,
            "confusion_measured": confusion_measured.tolist(), "confusion_twin": confusion_twin.tolist()}


# ---- the entry point -----------------------------------------------------------------------------
def resolve_aperture_m(meta: dict, aperture_m: float | None) -> tuple[float, str]:
    """An explicit --aperture-mm wins; else the run's public detector config; else the default."""
    if aperture_m is not None:
        return float(aperture_m), "--aperture-mm"
    detector = (((meta.get("bench") or {}).get("config") or {}).get("lockin") or {}).get("detector") or {}
    if detector.get("aperture_mm") is not None:
        return float(detector["aperture_mm"]) * 1e-3, "run's bench config (lockin.detector.aperture_mm)"
    return DEFAULT_APERTURE_M, "default"


def compare_run(run_dir, twin_checkpoint, out_dir, aperture_m: float | None = None) -> dict:
    """Compare a run with the twin; write PNGs and ``report.html`` into ``out_dir``; return the figures
    of merit (JSON-ready, SI units)."""
    from model.checkpoint import file_sha256, load_checkpoint
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    try:
        frame, meta = load_run(run_dir)
    except RunStoreError as exc:
        raise UsageError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{run_dir}: cannot read the run ({type(exc).__name__}: {exc})") from None
    if aperture_m is not None and aperture_m < 0:
        raise UsageError(f"--aperture-mm must be >= 0 (got {aperture_m * 1e3:g})")
    net, _ = load_checkpoint(twin_checkpoint)
    net.eval()
    procedure = meta.get("procedure")
    aperture, aperture_source = resolve_aperture_m(meta, aperture_m)
    sha = file_sha256(twin_checkpoint)
    recorded = (meta.get("twin") or {}).get("sha256")
    warnings = []
    if recorded and recorded != sha:
        warnings.append(f"the twin given ({sha[:12]}…) is not the one recorded in the run ({recorded[:12]}…)")
    if meta.get("status") != "success":
        warnings.append(f"run status is '{meta.get('status')}'" + (f": {meta['reason']}" if meta.get("reason") else ""))
    summary = {"run_dir": str(run_dir), "procedure": procedure, "status": meta.get("status"),
               "reason": meta.get("reason"), "points": int(len(frame)), "twin_checkpoint": str(twin_checkpoint),
               "twin_sha256": sha, "run_twin_sha256": recorded,
               "twin_matches_run": None if recorded is None else recorded == sha,
               "aperture_m": aperture, "aperture_source": aperture_source, "warnings": warnings,
               "objects": {}, "classify": None, "figures": []}
    out_dir.mkdir(parents=True, exist_ok=True)
    if procedure in SCANNED:
        if len(frame) == 0:
            warnings.append("the run holds no measured points")
        xs, ys = scan_axes_m(frame, meta.get("parameters") or {}) if len(frame) else (np.array([]), np.array([]))
        for object_id, rows in frame.groupby("object_id", sort=False):
            info = meta.get("objects", {}).get(object_id, {})
            done = compare_object(object_id, rows, load_object(run_dir, object_id), info, net, aperture)
            summary["objects"][object_id] = done["figures"]
            outside = done["figures"]["points_outside_twin"]
            if outside:
                half_mm = float(net.coords_m()[-1]) * 1e3
                warnings.append(f"{object_id}: {outside} of {len(rows)} points lie outside the twin's output "
                                f"plane (±{half_mm:.1f} mm) and are left out; is this the run's twin?")
            png = object_figure(out_dir, object_id, done, xs, ys, net, aperture)
            summary["figures"].append(png)
    elif procedure == "classify":
        summary["classify"] = classify_summary(frame, meta, net, run_dir)
        summary["classify_recorded"] = {k: (meta.get("result") or {}).get(k)
                                        for k in ("n", "accuracy", "twin_accuracy", "agreement_with_twin")}
        if summary["classify"]["n"]:
            summary["figures"].append(confusion_figure(out_dir, summary["classify"]))
    else:
        raise UsageError(f"{run_dir}: procedure '{procedure}' has nothing to compare "
                         f"(expected one of {', '.join(SCANNED + ('classify',))})")
    summary["report"] = str(write_report(out_dir, summary, meta))
    return jsonable(summary)


# ---- figures ---------------------------------------------------------------------------------------
def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12})
    return plt


def _extent_mm(xs: np.ndarray, ys: np.ndarray) -> list[float]:
    dx = np.diff(xs).min() if len(xs) > 1 else 1e-3
    dy = np.diff(ys).min() if len(ys) > 1 else 1e-3
    return [(xs[0] - dx / 2) * 1e3, (xs[-1] + dx / 2) * 1e3, (ys[0] - dy / 2) * 1e3, (ys[-1] + dy / 2) * 1e3]


def _power_unit(peak_w: float) -> tuple[float, str]:
    """(factor, unit) so that peak_w · factor reads in 1…1000 of a W prefix (pW, nW, µW, mW, W)."""
    for factor, unit in ((1e12, "pW"), (1e9, "nW"), (1e6, "µW"), (1e3, "mW")):
        if abs(peak_w) * factor < 1000:
            return factor, unit
    return 1.0, "W"


def _draw_regions(ax, det, extent, colour: str = "white") -> None:
    from matplotlib.patches import Rectangle
    if det is None:
        return
    size = det.size_m * 1e3
    for region, (cx, cy) in enumerate(det.centres_m):
        cx, cy = cx * 1e3, cy * 1e3
        if not (extent[0] <= cx <= extent[1] and extent[2] <= cy <= extent[3]):
            continue
        ax.add_patch(Rectangle((cx - size / 2, cy - size / 2), size, size, fill=False, lw=0.8, ec=colour, ls="--"))
        ax.text(cx - size / 2, cy + size / 2, str(region), color=colour, fontsize=8, va="bottom", ha="left")


def _map_panel(fig, ax, image, extent, title, det, cmap, vmin, vmax, label):
    import matplotlib
    cm = matplotlib.colormaps[cmap].with_extremes(bad="0.8")
    shown = ax.imshow(image, origin="lower", extent=extent, cmap=cm, vmin=vmin, vmax=vmax,
                      interpolation="nearest", aspect="equal")
    _draw_regions(ax, det, extent, "black" if cmap == "RdBu_r" else "white")
    ax.set(title=title, xlabel="x (mm)", ylabel="y (mm)", xlim=extent[:2], ylim=extent[2:])
    fig.colorbar(shown, ax=ax, shrink=0.85).set_label(label)


def object_figure(out_dir: Path, object_id: str, done: dict, xs, ys, net, aperture_m: float) -> str:
    """One PNG per object: measured | twin at the same points | residual, x / y profiles, region energies."""
    plt = _pyplot()
    f, a = done["figures"], done["arrays"]
    measured = grid_map(xs, ys, a["x_m"], a["y_m"], a["measured"])
    twin = grid_map(xs, ys, a["x_m"], a["y_m"], a["twin"])
    residual = measured - twin
    extent = _extent_mm(xs, ys)
    det = net.detector
    factor, unit = _power_unit(float(np.nanmax(np.abs([measured, twin]))))
    measured, twin, residual = measured * factor, twin * factor, residual * factor
    vmin, vmax = np.nanmin([measured, twin]), np.nanmax([measured, twin])
    limit = np.nanmax(np.abs(residual)) if np.isfinite(residual).any() else 1.0
    fig, axes = plt.subplots(2, 3, figsize=(17, 10.5), layout="constrained")
    gaps = " (grey: not measured)" if np.isnan(measured).any() else ""
    _map_panel(fig, axes[0, 0], measured, extent, f"Measured{gaps}", det, "viridis", vmin, vmax, f"power ({unit})")
    fit = (f"measured ≈ {f['scale']:.3g} · twin + {f['background_w'] * factor:.3g} {unit}"
           if math.isfinite(f["scale"]) else "no fit (flat twin)")
    _map_panel(fig, axes[0, 1], twin, extent, f"Twin at the same points, scaled by least squares\n{fit}", det,
               "viridis", vmin, vmax, f"power ({unit})")
    _map_panel(fig, axes[0, 2], residual, extent, "Residual: measured − fitted twin", det, "RdBu_r",
               -limit, limit, f"power difference ({unit})")
    centre_y, centre_x = ys[len(ys) // 2], xs[len(xs) // 2]
    for ax, along, fixed, row in ((axes[1, 0], "x", centre_y, len(ys) // 2), (axes[1, 1], "y", centre_x, len(xs) // 2)):
        axis_mm = (xs if along == "x" else ys) * 1e3
        m_line = measured[row, :] if along == "x" else measured[:, row]
        t_line = twin[row, :] if along == "x" else twin[:, row]
        ax.plot(axis_mm, m_line, "o", ms=4, label="measured")
        ax.plot(axis_mm, t_line, "-", lw=1.5, label="twin (fitted)")
        other = "y" if along == "x" else "x"
        ax.set(title=f"Profile along {along} at {other} = {fixed * 1e3:.2f} mm", xlabel=f"{along} (mm)",
               ylabel=f"power ({unit})")
        ax.set_xlim(*(extent[:2] if along == "x" else extent[2:]))
        ax.grid(alpha=0.3)
        if np.isnan(m_line).all():
            ax.text(0.5, 0.5, "no point measured on this line", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.legend()
    _energy_panel(axes[1, 2], f, det)
    corr = "n/a" if f["correlation"] is None else f"{f['correlation']:.3f}"
    label = "" if f["label"] is None else f" (label {f['label']})"
    fig.suptitle(f"{object_id}{label}: measured vs twin — correlation {corr}, "
                 f"aperture {aperture_m * 1e3:g} mm", fontsize=14)
    name = f"object_{_safe_name(object_id)}.png"
    fig.savefig(out_dir / name, dpi=90)
    plt.close(fig)
    return name


def _energy_panel(ax, f: dict, det) -> None:
    ax.set(title="Energy per detector region\n(sum of power over the scanned points inside)", xlabel="region")
    if det is None:
        ax.text(0.5, 0.5, "the twin has no detector regions", ha="center", va="center", transform=ax.transAxes)
        return
    counts = f["region_points"]
    regions = np.arange(len(counts))
    if not any(counts):
        ax.text(0.5, 0.5, "the scan does not cover any detector region", ha="center", va="center",
                transform=ax.transAxes)
        return
    e_m = np.array([np.nan if e is None else e for e in f["region_energies_measured_w"]])
    e_t = np.array([np.nan if e is None else e for e in f["region_energies_twin_w"]])
    factor, unit = _power_unit(float(np.nanmax(np.abs([e_m, e_t]))))
    e_m, e_t = e_m * factor, e_t * factor
    ax.set_ylabel(f"summed power ({unit})")
    ax.bar(regions - 0.2, e_m, 0.4, label="measured")
    ax.bar(regions + 0.2, e_t, 0.4, label="twin (fitted)")
    for r in f["regions_uncovered"]:
        ax.text(r, 0, " not scanned", ha="center", va="bottom", rotation=90, fontsize=9, color="0.35")
    if f["label"] is not None and f["label"] < len(regions):
        ax.axvspan(f["label"] - 0.5, f["label"] + 0.5, color="gold", alpha=0.3, zorder=0, label="correct region")
    ax.set_xticks(regions)
    ax.legend()


def confusion_figure(out_dir: Path, c: dict) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), layout="constrained")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    top = max(1, int(np.max(c["confusion_measured"])), int(np.max(c["confusion_twin"])))
    for ax, key, title in ((axes[0], "confusion_measured", f"Measured (accuracy {fmt(c['accuracy'])})"),
                           (axes[1], "confusion_twin", f"Twin (accuracy {fmt(c['twin_accuracy'])})")):
        matrix = np.asarray(c[key])
        shown = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=top)
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center",
                        color="white" if count > top / 2 else "black")
        ticks = np.arange(matrix.shape[0])
        ax.set(title=title, xlabel="predicted class", ylabel="true class", xticks=ticks, yticks=ticks)
        bar = fig.colorbar(shown, ax=ax, shrink=0.8, ticks=np.arange(top + 1) if top <= 10 else None)
        bar.set_label("objects")
    fig.suptitle(f"Classification of {c['n']} objects — agreement measured vs twin "
                 f"{fmt(c['agreement_with_twin'])}", fontsize=14)
    name = "confusion.png"
    fig.savefig(out_dir / name, dpi=90)
    plt.close(fig)
    return name


# ---- report.html -----------------------------------------------------------------------------------
def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value))
    return html.escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out_dir: Path, summary: dict, meta: dict) -> Path:
    e = html.escape
    parts = [f"<h1>Measured vs twin: {e(str(summary['run_dir']))}</h1>"]
    parts += [f'<p class="warn">⚠ {e(w)}</p>' for w in summary["warnings"]]
    twin_state = {True: "matches the run", False: "DIFFERS from the run's", None: "no twin recorded in the run"}
    parts.append("<h2>Run</h2>" + _table(["field", "value"], [
        ["procedure", summary["procedure"]], ["status", summary["status"]], ["reason", summary["reason"]],
        ["start", meta.get("start_time")], ["end", meta.get("end_time")], ["points measured", summary["points"]],
        ["bench", ((meta.get("bench") or {}).get("config") or {}).get("name")],
        ["twin checkpoint", summary["twin_checkpoint"]], ["twin sha256 (given)", summary["twin_sha256"]],
        ["twin sha256 (recorded in run)", summary["run_twin_sha256"]],
        ["twin", twin_state[summary["twin_matches_run"]]],
        ["detector aperture", f"{summary['aperture_m'] * 1e3:g} mm ({summary['aperture_source']})"]]))
    parts.append("<h2>Procedure parameters</h2>"
                 + _table(["parameter", "value"], [[k, v] for k, v in (meta.get("parameters") or {}).items()]))
    if summary["objects"]:
        parts.append("<h2>Figures of merit per object</h2><p>The twin's intensity is box-filtered by the aperture, "
                     "sampled bilinearly at the measured positions and fitted as measured ≈ scale · twin + "
                     "background (least squares). Correlation = Pearson r of measured vs twin at the points "
                     "(independent of the fit). Energy fractions use the sum of power over the scanned points "
                     "inside each detector square; classes use the mean power per point of each region.</p>")
        rows = [[oid, f["label"], f["twin_class"], f["measured_class"], f["twin_sampled_class"], f["correlation"],
                 f["energy_fraction_correct_measured"], f["energy_fraction_correct_twin"], f["scale"],
                 f["background_w"], f["rms_residual_w"], f["points"], f["points_outside_twin"]]
                for oid, f in summary["objects"].items()]
        parts.append(_table(["object", "label", "twin class", "measured class", "twin class at points",
                             "correlation", "energy fraction correct (measured)", "energy fraction correct (twin)",
                             "scale", "background (W)", "rms residual (W)", "points", "points outside twin"], rows))
        for oid, f in summary["objects"].items():
            parts.append(f"<h3>{e(oid)}</h3>")
            if f["region_points"] is not None:
                if f["regions_uncovered"]:
                    parts.append(f"<p>The scan does not cover region(s) {e(str(f['regions_uncovered']))}.</p>")
                parts.append(_table(["region", "points inside", "measured energy (W)", "twin energy (W)"],
                                    [[r, n, m, t] for r, (n, m, t) in enumerate(zip(
                                        f["region_points"], f["region_energies_measured_w"],
                                        f["region_energies_twin_w"]))]))
            png = f"object_{_safe_name(oid)}.png"
            if (out_dir / png).is_file():
                parts.append(f'<img src="{e(png)}" alt="{e(oid)}: measured vs twin">')
    if summary["classify"]:
        c, rec = summary["classify"], summary.get("classify_recorded") or {}
        keys = ["n", "accuracy", "twin_accuracy", "agreement_with_twin"]
        parts.append("<h2>Classification</h2><p>Recomputed from the rows with the given twin "
                     "(class = brightest region by mean power), next to what the run recorded.</p>"
                     + _table(["figure", "recomputed", "recorded in run"], [[k, c[k], rec.get(k)] for k in keys]))
        parts.append(_table(["object", "label", "measured class", "twin class"],
                            [[oid, p["label"], p["measured"], p["twin"]] for oid, p in c["predictions"].items()]))
        if (out_dir / "confusion.png").is_file():
            parts.append('<img src="confusion.png" alt="confusion matrices, measured and twin">')
    style = ("body{font-family:sans-serif;margin:2em;max-width:1600px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left;font-size:0.9em}th{background:#eee}"
             "img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}.warn{color:#a00;font-weight:bold}")
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>compare {e(str(summary["run_dir"]))}'
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


# ---- command line --------------------------------------------------------------------------------
def add_compare_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="measured run vs the twin: figures of merit, PNGs, report.html")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--twin", required=True, help="twin checkpoint (model.pt)")
    p.add_argument("--out", required=True, help="report folder (PNGs + report.html)")
    p.add_argument("--aperture-mm", type=float, default=None,
                   help="detector aperture side, used when the run's bench config gives none (default 0.5)")
    p.add_argument("--json", action="store_true", help="print the figures of merit as one JSON object")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    aperture_m = None if args.aperture_mm is None else args.aperture_mm * 1e-3
    summary = compare_run(args.run_dir, args.twin, args.out, aperture_m)
    if args.json:
        json.dump(jsonable(summary), sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(text_summary(summary))
    return 0


def jsonable(obj):
    """Plain JSON data: numpy scalars → python, NaN/inf → None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def text_summary(summary: dict) -> str:
    lines = [f"compare: {summary['procedure']} run {summary['run_dir']} ({summary['status']}), "
             f"aperture {summary['aperture_m'] * 1e3:g} mm ({summary['aperture_source']})"]
    for object_id, f in summary["objects"].items():
        corr = "n/a" if f["correlation"] is None else f"{f['correlation']:.3f}"
        frac = f["energy_fraction_correct_measured"]
        lines.append(f"  {object_id}: correlation {corr}, classes measured {f['measured_class']} / twin "
                     f"{f['twin_class']} (label {f['label']})"
                     + ("" if frac is None else f", energy in correct region {frac:.2f}"))
    if summary["classify"]:
        c = summary["classify"]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
        lines.append(f"  {c['n']} objects: accuracy {fmt(c['accuracy'])}, twin accuracy {fmt(c['twin_accuracy'])}, "
                     f"agreement with the twin {fmt(c['agreement_with_twin'])}")
    lines += [f"  warning: {w}" for w in summary["warnings"]]
    lines.append(f"  report: {summary['report']}")
    return "\n".join(lines)
