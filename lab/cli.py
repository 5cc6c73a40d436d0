"""The ``d2nn-lab`` command line (DESIGN.md section 4).

Every user mistake (bad config, missing file, bad flag value) ends in one line on stderr naming what,
where and how to fix it, and exit code 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UsageError
from .images import load_image

EXIT_USAGE = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message alone tells the user what to fix (config, files, addresses, run data)."""
    from calibration.data import CalibrationDataError
    from instruments.errors import InstrumentError
    from model.schema import ConfigError

    from .store import RunStoreError
    return UsageError, ConfigError, InstrumentError, RunStoreError, CalibrationDataError


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout)
    sys.stdout.write("\n")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _resolve_device(name: str) -> str:
    import torch
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; use --device cpu")
    return name


# ---- commands ------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    import dataclasses

    import torch

    from model.checkpoint import save_checkpoint
    from model.config import load_network_config
    from model.data import load_dataset, train_validation_split
    from model.network import D2NN
    from model.train import evaluate, train

    from .progress import progress

    cfg = load_network_config(args.config)
    if args.max_train_samples is not None:
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, max_train_samples=args.max_train_samples))
    device = _resolve_device(args.device)
    torch.manual_seed(args.seed)
    epochs = args.epochs or cfg.training.epochs
    images, labels = load_dataset(cfg.training.dataset, "train", args.data_dir)
    train_idx, val_idx = train_validation_split(len(images), cfg.training.validation_fraction, args.seed)
    if cfg.training.max_train_samples:
        train_idx = train_idx[:cfg.training.max_train_samples]
    net = D2NN(cfg)
    _log(f"train: {cfg.name}, {len(train_idx)} training / {len(val_idx)} validation samples, "
         f"{epochs} epochs, {cfg.layers.count} layers of {cfg.grid.neurons}² neurons")
    result = train(net, images[train_idx], labels[train_idx], images[val_idx], labels[val_idx],
                   epochs=epochs, seed=args.seed, progress=progress, log=_log, device=device)
    test_images, test_labels = load_dataset(cfg.training.dataset, "test", args.data_dir)
    test = evaluate(net, test_images.to(device), test_labels.to(device), progress=progress)
    metrics = {**result.metrics, "test": {k: v for k, v in test.items() if k != "predictions"},
               "dataset": cfg.training.dataset, "config_file": str(args.config)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model.pt", net.cpu(), metrics, printed_layers=[])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    summary = {"checkpoint": str(out / "model.pt"), "test_accuracy": test.get("accuracy"),
               "test_n": test["n"], "train_time_s": result.metrics["train_time_s"]}
    if args.json:
        _print_json(summary)
    else:
        _log(f"train: wrote {out / 'model.pt'} (test accuracy {test.get('accuracy', float('nan')):.4f} "
             f"on {test['n']} samples)")
    return 0


def cmd_evaluate(args) -> int:
    from model.checkpoint import load_checkpoint
    from model.data import load_dataset
    from model.train import evaluate

    from .progress import progress

    net, _ = load_checkpoint(args.checkpoint)
    dataset = args.dataset or net.cfg.training.dataset
    images, labels = load_dataset(dataset, args.split, args.data_dir)
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    result = evaluate(net, images, labels, progress=progress)
    result.pop("predictions", None)
    result.update(dataset=dataset, split=args.split)
    if args.json:
        _print_json(result)
    else:
        print(f"{dataset} {args.split}: accuracy {result.get('accuracy', float('nan')):.4f} on {result['n']} samples")
    return 0


def cmd_simulate(args) -> int:
    import numpy as np
    import torch

    from model.checkpoint import load_checkpoint

    net, _ = load_checkpoint(args.checkpoint)
    net.eval()
    image = torch.from_numpy(load_image(args.input)).float()[None]
    with torch.no_grad():
        intensity = net.output_intensity(image)[0]
    coords = net.coords_m()
    result = {"pitch_m": net.pitch_m, "origin_m": [float(coords[0]), float(coords[0])],
              "shape": list(intensity.shape), "total_power": float(intensity.sum())}
    if net.detector is not None:
        energies = net.detector.energies(intensity)
        result["detector_energies"] = energies.tolist()
        result["predicted_class"] = int(net.detector.scores(energies).argmax())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.save(args.out, intensity.numpy().astype(np.float64))
        result["out"] = str(args.out)
    if args.json:
        _print_json(result)
    else:
        line = f"simulate: output plane {intensity.shape[0]}×{intensity.shape[1]} at {net.pitch_m * 1e3:g} mm"
        if "predicted_class" in result:
            line += f", predicted class {result['predicted_class']}"
        print(line + (f", written to {args.out}" if args.out else ""))
    return 0


def cmd_export(args) -> int:
    from .export import export_network
    manifest = export_network(args.checkpoint, args.out, base_thickness_mm=args.base_mm, layers=args.layers)
    if args.json:
        _print_json(manifest)
    else:
        print(f"export: {len(manifest['layers'])} layers written to {args.out} (manifest.json)")
    return 0


def cmd_calibrate(args) -> int:
    from calibration import FitOptions, calibrate
    from calibration.data import twin_from_runs
    from calibration.html_report import write_calibration_report

    from .store import RunStoreError, load_run
    for run_dir in args.runs:
        try:
            load_run(run_dir)
        except RunStoreError as exc:
            raise UsageError(str(exc)) from None
    twin = args.twin or twin_from_runs(args.runs)
    if twin is None:
        raise UsageError("no --twin given and no run names its twin checkpoint; give --twin DESIGN.pt")
    options = FitOptions(aperture_m=_run_aperture_m(args.runs[0], args.aperture_mm))

    def report_progress(stage: str, step: int, total: int, loss: float) -> None:
        _log(f"calibrate: {stage} {step}/{total} loss {loss:.4g}")

    result, doc = calibrate(args.runs, twin, args.out, seed=args.seed, options=options, progress=report_progress)
    report = write_calibration_report(args.out, args.runs, twin, doc["as_built_checkpoint"], doc, result.history)
    doc["report"] = str(report)
    if args.json:
        _print_json(doc)
    else:
        print(f"calibrate: loss {doc['loss_before']:.4f} → {doc['loss_after']:.4f}; as-built twin "
              f"{doc['as_built_checkpoint']}; report {report}")
        for line in doc["corrections"]:
            print(f"  {line}")
    return 0


def _run_aperture_m(run_dir, aperture_mm: float | None) -> float:
    from .compare import resolve_aperture_m
    from .store import load_run
    return resolve_aperture_m(load_run(run_dir)[1], None if aperture_mm is None else aperture_mm * 1e-3)[0]


def cmd_finetune(args) -> int:
    from calibration.finetune import finetune

    from .progress import progress
    summary = finetune(args.as_built_twin, args.add_layers, args.out, after=args.after, epochs=args.epochs,
                       seed=args.seed, max_train_samples=args.max_train_samples, data_dir=args.data_dir,
                       progress=progress, log=_log)
    if args.json:
        _print_json(summary)
    else:
        print(f"finetune: accuracy {summary['as_built_accuracy']:.4f} as built → {summary['finetuned_accuracy']:.4f} "
              f"with layers {summary['added_layers']} added; print files in {summary['print_dir']}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    summary = run_demo(Path(args.out), epochs=args.epochs, seed=args.seed, classify_count=args.classify_count)
    if args.json:
        _print_json(summary)
    else:
        print(f"demo: accuracy on {summary['n_test']} held-out digits: design {summary['design_accuracy']:.3f}, "
              f"as built {summary['as_built_accuracy_before']:.3f}, "
              f"after fine-tuning 2 added layers {summary['as_built_accuracy_after_finetune']:.3f}")
        print(f"demo: measured on the bench ({summary['classify_objects']} digits): "
              f"{summary['classify_measured_before']:.3f} before, {summary['classify_measured_after']:.3f} after")
        print(f"demo: report in {summary['report']} ({summary['wall_time_s']:.0f} s)")
    return 0


def _add_run_parsers(sub) -> None:
    """``run PROCEDURE``: the procedures register themselves in ``procedures.PROCEDURES`` (looked up
    by name at run time, so lab does not import procedures at module level)."""
    import importlib

    from .runner import add_run_arguments, run_from_args
    run_parser = sub.add_parser("run", help="run a measurement procedure on a bench")
    run_sub = run_parser.add_subparsers(dest="procedure", required=True, metavar="PROCEDURE")
    for name, cls in importlib.import_module("procedures").PROCEDURES.items():
        p = run_sub.add_parser(name, help=(cls.__doc__ or name).splitlines()[0])
        add_run_arguments(p, cls)
        p.set_defaults(func=lambda args, cls=cls: run_from_args(cls, args))


# ---- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d2nn-lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train the digital twin")
    p.add_argument("--config", required=True, help="network YAML (e.g. configs/small-mnist.yaml)")
    p.add_argument("--out", required=True, help="output folder (model.pt, metrics.json)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="folder of MNIST-style IDX files (default: the built-in data)")
    p.add_argument("--max-train-samples", type=int, help="cap the training set (quick runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test accuracy of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--dataset", choices=("mnist", "fashion-mnist"))
    p.add_argument("--data-dir")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--limit", type=int, help="evaluate only the first N samples")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("simulate", help="output-plane intensity for one input image")
    p.add_argument("checkpoint")
    p.add_argument("--input", required=True, help="image (.npy or .png)")
    p.add_argument("--out", help="write the output intensity (.npy, row = y, column = x)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("export", help="STL + height map per layer, manifest.json")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--base-mm", type=float, default=1.0, help="base plate thickness under the relief")
    p.add_argument("--layers", type=int, nargs="+", help="export only these layer indices")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("calibrate", help="fit the twin's as-built parameters to measured runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--twin", help="design checkpoint (default: the one the runs recorded)")
    p.add_argument("--out", required=True)
    p.add_argument("--aperture-mm", type=float, help="detector aperture (default: from the run's bench config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("finetune", help="train K added layers on an as-built twin (printed layers frozen)")
    p.add_argument("as_built_twin", help="checkpoint of the calibrated as-built twin")
    p.add_argument("--add-layers", type=int, required=True, metavar="K")
    p.add_argument("--after", type=int, help="insert after this layer index (default: append at the end)")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_finetune)

    _add_run_parsers(sub)
    from .bench_cli import add_bench_parser
    add_bench_parser(sub)
    from .compare import add_compare_parser
    add_compare_parser(sub)

    p = sub.add_parser("demo", help="the whole loop on this machine")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the design (if not reused)")
    p.add_argument("--classify-count", type=int, default=50, help="test digits classified on the bench")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"d2nn-lab {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"d2nn-lab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
