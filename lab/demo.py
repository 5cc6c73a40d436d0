"""``d2nn-lab demo``: the whole loop on the virtual bench, start to end.

train (or reuse) the small design → export → install on a virtual bench with random hidden
misalignments (seeded) → beam profile + raster scans → compare (shows the mismatch) → calibrate →
recommended corrections → fine-tune 2 added layers on the calibrated twin → install them → classify →
final report: design accuracy, as-built accuracy before and after fine-tuning, recovered vs true
misalignment (the virtual bench knows the truth; on a real bench that column is absent).

The demo plays both roles: the lab (which only sees measurements) and the virtual bench's builder
(who hides the truth in the bench files). Only the final report reads the truth.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import yaml

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEMO_CONFIG = REPO_CONFIGS / "small-mnist.yaml"
BENCH_TEMPLATE = REPO_CONFIGS / "bench-virtual.yaml"
HIDDEN = {"random": {"seed": 7, "lateral_mm": 0.6, "axial_mm": 1.0, "rotation_deg": 1.5},
          "detector_offset_mm": [0.2, -0.15]}
SCAN_OBJECTS = ("mnist:test:0", "mnist:test:100", "mnist:test:200", "mnist:test:300")


def _log(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def _bench_file(out: Path, name: str, design: Path, as_built: dict) -> Path:
    """A virtual bench with ``design`` installed and the hidden ``as_built`` errors."""
    data = yaml.safe_load(BENCH_TEMPLATE.read_text())
    data["name"] = name
    data["virtual"]["design"] = str(design.resolve())
    data["virtual"]["as_built"] = {**{k: v for k, v in data["virtual"]["as_built"].items() if k != "random"},
                                   **as_built}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _as_built_accuracy(bench_file: Path, images, labels) -> float:
    """Accuracy of the printed network as the virtual bench renders it (hidden truth: report only)."""
    from lab.config import load_bench_config
    from lab.virtual.bench import as_built_from_config
    from lab.virtual.optics import AsBuiltOptics
    from model.checkpoint import load_checkpoint
    from model.train import evaluate
    cfg = load_bench_config(bench_file)
    n_layers = len(load_checkpoint(cfg.virtual.design)[0].layers)
    optics = AsBuiltOptics(cfg.virtual.design, as_built_from_config(cfg, n_layers))
    return evaluate(optics.network(cfg.source.freq_ghz * 1e9), images, labels, batch_size=50)["accuracy"]


def _truth_table(bench_file: Path, n_layers: int) -> dict[str, float]:
    from lab.config import load_bench_config
    from lab.virtual.bench import as_built_from_config
    truth = as_built_from_config(load_bench_config(bench_file), n_layers)
    out = {}
    for i, err in enumerate(truth.layers):
        for name in ("dx_m", "dy_m", "dz_m", "rotation_rad"):
            out[f"layer{i}.{name}"] = getattr(err, name)
    return out


def run_demo(out: Path, epochs: int = 3, seed: int = 0, classify_count: int = 50) -> dict:
    from calibration import FitOptions, calibrate
    from calibration.finetune import finetune
    from calibration.html_report import write_calibration_report
    from lab.compare import compare_run
    from lab.config import load_bench_config
    from lab.export import export_network
    from lab.runner import run
    from model.checkpoint import load_checkpoint
    from model.data import load_dataset
    from model.train import evaluate
    from procedures.beam_profile import BeamProfile, BeamProfileParameters
    from procedures.classify import Classify, ClassifyParameters
    from procedures.raster_scan import RasterScan, RasterScanParameters

    from . import cli

    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    design = out / "design" / "model.pt"
    test_x, test_y = load_dataset("mnist", "test")

    # 1. design
    if design.is_file():
        _log(f"1/8 reusing the trained design {design}")
    else:
        _log(f"1/8 training the small design ({DEMO_CONFIG.name}, {epochs} epochs)")
        rc = cli.main(["train", "--config", str(DEMO_CONFIG), "--out", str(design.parent), "--epochs", str(epochs),
                       "--seed", str(seed)])
        if rc != 0:
            raise cli.UsageError(f"training the demo design failed (exit {rc}); see the message above")
    net, _ = load_checkpoint(design)
    design_accuracy = evaluate(net, test_x, test_y)["accuracy"]
    n_layers = len(net.layers)

    # 2. print and install
    _log("2/8 exporting the layers for printing and installing them on the virtual bench")
    export_network(design, out / "print")
    printed_bench = _bench_file(out, "bench-printed", design, HIDDEN)
    cfg = load_bench_config(printed_bench)
    quiet = {"log": lambda m: None}

    # 3. measure
    _log("3/8 measuring: beam profile and raster scans of the output plane")
    runs = out / "runs"
    run(BeamProfile(BeamProfileParameters(size_mm=(36.0, 36.0), step_mm=2.0)), cfg, runs / "beam-profile",
        bench_file=printed_bench, **quiet)
    scan = run(RasterScan(RasterScanParameters(objects=SCAN_OBJECTS, size_mm=(32.0, 32.0), step_mm=0.8,
                                               twin=str(design.resolve()))),
               cfg, runs / "raster", bench_file=printed_bench, **quiet)
    if scan["status"] != "success":
        raise cli.UsageError(f"the raster scan ended {scan['status']}: {scan['reason']}")

    # 4. compare
    _log("4/8 comparing the measurement with the design twin")
    comparison = compare_run(runs / "raster", design, out / "compare")
    correlations = {k: v["correlation"] for k, v in comparison["objects"].items()}

    # 5. calibrate
    _log("5/8 calibrating the twin to the measurement")
    aperture_m = cfg.lockin.detector.aperture_mm * 1e-3
    result, doc = calibrate([runs / "raster"], design, out / "calibration", seed=seed,
                            options=FitOptions(aperture_m=aperture_m))
    truth = _truth_table(printed_bench, n_layers)
    write_calibration_report(out / "calibration", [runs / "raster"], design, doc["as_built_checkpoint"], doc,
                             result.history, truth=truth)
    for line in doc["corrections"]:
        _log(f"   correction: {line}")

    # 6. fine-tune 2 added layers on the calibrated twin
    _log("6/8 fine-tuning 2 added layers on the calibrated as-built twin")
    tuned = finetune(doc["as_built_checkpoint"], 2, out / "finetune", epochs=4, seed=seed)

    # 7. install them and classify
    _log("7/8 installing the added layers and classifying test digits on the bench")
    layers = [{"dx_mm": truth[f"layer{i}.dx_m"] * 1e3, "dy_mm": truth[f"layer{i}.dy_m"] * 1e3,
               "dz_mm": truth[f"layer{i}.dz_m"] * 1e3,
               "rotation_deg": math.degrees(truth[f"layer{i}.rotation_rad"])} for i in range(n_layers)]
    layers += [{"dx_mm": 0.0, "dy_mm": 0.0, "dz_mm": 0.0, "rotation_deg": 0.0}] * len(tuned["added_layers"])
    hidden_tuned = {**{k: v for k, v in HIDDEN.items() if k != "random"}, "layers": layers}
    tuned_bench = _bench_file(out, "bench-finetuned", Path(tuned["checkpoint"]), hidden_tuned)
    classify_before = run(Classify(ClassifyParameters(twin=str(design.resolve()), count=classify_count, seed=seed)),
                          cfg, runs / "classify-printed", bench_file=printed_bench, **quiet)
    classify_after = run(Classify(ClassifyParameters(twin=str(Path(tuned["checkpoint"]).resolve()),
                                                     count=classify_count, seed=seed)),
                         load_bench_config(tuned_bench), runs / "classify-finetuned", bench_file=tuned_bench, **quiet)

    # 8. report
    _log("8/8 writing the report")
    as_built_before = _as_built_accuracy(printed_bench, test_x, test_y)
    as_built_after = _as_built_accuracy(tuned_bench, test_x, test_y)
    recovered = []
    for layer in doc["layers"]:
        i = layer["layer"] - 1
        recovered.append({"layer": layer["layer"], **{f"{n}_fitted": layer[n] for n in ("dx_m", "dy_m", "dz_m", "rotation_rad")},
                          **{f"{n}_true": truth[f"layer{i}.{n}"] for n in ("dx_m", "dy_m", "dz_m", "rotation_rad")}})
    summary = {
        "design_accuracy": design_accuracy,
        "as_built_accuracy_before": as_built_before,
        "as_built_accuracy_after_finetune": as_built_after,
        "twin_accuracy_after_finetune": tuned["finetuned_accuracy"],
        "n_test": len(test_y),
        "classify_measured_before": classify_before["summary"]["accuracy"],
        "classify_measured_after": classify_after["summary"]["accuracy"],
        "classify_objects": classify_count,
        "correlation_with_design_twin": correlations,
        "calibration_loss": [doc["loss_before"], doc["loss_after"]],
        "corrections": doc["corrections"],
        "recovered_vs_true": recovered,
        "wall_time_s": time.monotonic() - t0,
        "report": str(out / "report.html"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _write_report(out, summary)
    return summary


def _write_report(out: Path, s: dict) -> None:
    def mm(v):
        return f"{v * 1e3:+.3f}"
    rows = "".join(
        f"<tr><td>{r['layer']}</td>" + "".join(
            f"<td>{mm(r[f'{n}_fitted'])}</td><td>{mm(r[f'{n}_true'])}</td>" for n in ("dx_m", "dy_m", "dz_m"))
        + f"<td>{math.degrees(r['rotation_rad_fitted']):+.2f}</td><td>{math.degrees(r['rotation_rad_true']):+.2f}</td></tr>"
        for r in s["recovered_vs_true"])
    corrections = "".join(f"<li>{c}</li>" for c in s["corrections"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>d2nn-lab demo</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>The loop on the virtual bench</h1>
<table><tr><th></th><th>accuracy</th></tr>
<tr><td>design (twin, {s['n_test']} held-out digits)</td><td>{s['design_accuracy']:.3f}</td></tr>
<tr><td>as built, before (virtual bench physics, same digits)</td><td>{s['as_built_accuracy_before']:.3f}</td></tr>
<tr><td>as built + 2 fine-tuned layers (same digits)</td><td>{s['as_built_accuracy_after_finetune']:.3f}</td></tr>
<tr><td>measured on the bench, before ({s['classify_objects']} objects)</td><td>{s['classify_measured_before']:.3f}</td></tr>
<tr><td>measured on the bench, after ({s['classify_objects']} objects)</td><td>{s['classify_measured_after']:.3f}</td></tr>
</table>
<h2>Comparison with the design twin</h2><p><a href="compare/report.html">compare report</a> — correlation per object:
{', '.join(f'{k}: {v:.3f}' for k, v in s['correlation_with_design_twin'].items())}</p>
<h2>Calibration</h2><p>loss {s['calibration_loss'][0]:.4f} → {s['calibration_loss'][1]:.4f};
<a href="calibration/report.html">calibration report</a></p><ul>{corrections}</ul>
<h2>Recovered vs true misalignment (mm, degrees)</h2>
<table><tr><th>layer</th><th>dx fit</th><th>dx true</th><th>dy fit</th><th>dy true</th><th>dz fit</th><th>dz true</th>
<th>rot fit</th><th>rot true</th></tr>{rows}</table>
<p>Wall time {s['wall_time_s']:.0f} s.</p></body></html>"""
    (out / "report.html").write_text(page)
