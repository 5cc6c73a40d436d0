"""``d2nn-lab bench serve``: run the virtual bench of a BENCH.yaml in the foreground.

Prints where the emulators listen and writes it to a YAML file that a client BENCH.yaml names as
``virtual.addresses_file``; runs until Ctrl-C or SIGTERM, then stops every emulator and removes the
addresses file (it would point at dead ports).
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path


def add_bench_parser(subparsers) -> None:
    """Add ``bench serve`` to the ``d2nn-lab`` subcommands."""
    p = subparsers.add_parser("bench", help="the virtual bench")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="BENCH_COMMAND")
    s = sub.add_parser("serve", help="start the virtual bench in the foreground (Ctrl-C stops it)")
    s.add_argument("--config", required=True, help="BENCH.yaml with a 'virtual' section")
    s.add_argument("--addresses-out", help="where to write the addresses (default: the config's "
                   "virtual.addresses_file, else <config>.addresses.yaml beside the config)")
    s.set_defaults(func=cmd_bench_serve)


def addresses_path(args, cfg) -> Path:
    config_path = Path(args.config)
    if args.addresses_out:
        return Path(args.addresses_out)
    if cfg.virtual.addresses_file:
        path = Path(cfg.virtual.addresses_file)
        return path if path.is_absolute() else config_path.parent / path
    return config_path.with_suffix(".addresses.yaml")


def cmd_bench_serve(args, stop_event: threading.Event | None = None) -> int:
    """Serve until SIGINT/SIGTERM (or ``stop_event``, for tests). Returns the exit code."""
    from lab.cli import UsageError
    from lab.config import load_bench_config

    cfg = load_bench_config(args.config)
    if cfg.virtual is None:
        raise UsageError(f"{args.config}: no 'virtual' section; `bench serve` runs a virtual bench only")
    out = addresses_path(args, cfg)
    from lab.virtual.bench import VirtualBench

    stop = stop_event or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        with VirtualBench(cfg) as bench:
            try:
                bench.write_addresses(out)
            except OSError as exc:
                raise UsageError(f"--addresses-out {out}: cannot write ({exc.strerror})") from None
            try:
                print(f"bench serve: virtual bench '{cfg.name}' (time_scale {bench.clock.time_scale:g}) on 127.0.0.1",
                      flush=True)
                for key, value in bench.addresses().items():
                    print(f"  {key}: {value}", flush=True)
                print(f"  addresses written to {out}; Ctrl-C to stop", flush=True)
                while not stop.wait(0.2):
                    pass
                print("bench serve: stopping", file=sys.stderr, flush=True)
            finally:
                out.unlink(missing_ok=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
