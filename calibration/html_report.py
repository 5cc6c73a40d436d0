"""The calibration's report: measured vs twin before vs twin after, the loss curve, the corrections.

The before/after maps are ``lab.compare`` reports of the same runs against the design twin and the
fitted as-built twin (one mechanism for "twin vs measurement"). ``truth`` — only a virtual bench has
it — adds a column of the hidden misalignments next to the recovered ones.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

POSE = ("dx_m", "dy_m", "dz_m", "rotation_rad")


def _loss_curve(history: list[dict], path: Path) -> bool:
    losses = [h["loss"] for h in history if isinstance(h, dict) and "loss" in h]
    if not losses:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(range(1, len(losses) + 1), losses, marker="o", ms=3)
    ax.set_xlabel("fit step")
    ax.set_ylabel("loss (unexplained variance fraction)")
    ax.set_title("calibration loss")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(value: float, name: str) -> str:
    if name.endswith("rotation_rad"):
        return f"{math.degrees(value):+.3f}°"
    return f"{value * 1e3:+.3f} mm"


def write_calibration_report(out_dir: str | Path, run_dirs: list[str | Path], design: str | Path,
                             as_built: str | Path, doc: dict, history: list[dict],
                             truth: dict[str, float] | None = None) -> Path:
    """``out_dir``/report.html (+ before/ and after/ compare reports, loss.png)."""
    from lab.compare import compare_run

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for i, run_dir in enumerate(run_dirs):
        before = compare_run(run_dir, design, out / f"before-{i}")
        after = compare_run(run_dir, as_built, out / f"after-{i}")
        for object_id in before["objects"]:
            b, a = before["objects"][object_id], after["objects"][object_id]
            figure = f"object_{object_id}.png"
            sections.append(
                f"<h3>{html.escape(object_id)} (run {html.escape(str(run_dir))})</h3>"
                f"<p>correlation measured–twin: before {b['correlation']:.3f}, after {a['correlation']:.3f}</p>"
                f"<p>before (design twin):<br><img src='before-{i}/{figure}' width='900'></p>"
                f"<p>after (calibrated as-built twin):<br><img src='after-{i}/{figure}' width='900'></p>")
    has_curve = _loss_curve(history, out / "loss.png")
    rows = []
    for layer in doc["layers"]:
        for name in POSE:
            key = f"layer{layer['layer'] - 1}.{name}"
            sigma_key = next(k for k in layer if k.startswith(name.removesuffix("_m").removesuffix("_rad") + "_sigma"))
            true = f"<td>{_fmt(truth[key], name)}</td>" if truth and key in truth else ("<td>–</td>" if truth else "")
            flag = "" if layer["identifiable"][name] else " ⚠ not identifiable"
            rows.append(f"<tr><td>{layer['layer']}</td><td>{name}</td><td>{_fmt(layer[name], name)}</td>"
                        f"<td>±{_fmt(layer[sigma_key], name).lstrip('+')}</td>{true}<td>{flag}</td></tr>")
    truth_head = "<th>true (virtual bench)</th>" if truth else ""
    corrections = "".join(f"<li>{html.escape(c)}</li>" for c in doc.get("corrections", []))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>calibration report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>Calibration of the as-built twin</h1>
<p>loss {doc['loss_before']:.4f} → {doc['loss_after']:.4f} ({html.escape(str(doc.get('strategy')))}),
{doc['n_points']} points of {doc['n_objects']} objects, {doc['wall_time_s']:.1f} s.</p>
<h2>Corrections for the bench</h2><ul>{corrections or '<li>none above the thresholds</li>'}</ul>
<h2>Fitted as-built errors (as-built − design)</h2>
<table><tr><th>layer</th><th>parameter</th><th>fitted</th><th>σ</th>{truth_head}<th></th></tr>{''.join(rows)}</table>
{"<h2>Loss</h2><img src='loss.png'>" if has_curve else ''}
<h2>Measured vs twin, before and after</h2>{''.join(sections)}
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
