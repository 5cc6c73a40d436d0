"""Progress for long work: a tqdm bar with ETA on a terminal, plain log lines otherwise."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator


def progress(iterable: Iterable, total: int, desc: str, stream=None, every_s: float = 10.0) -> Iterator:
    stream = stream or sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        from tqdm import tqdm
        yield from tqdm(iterable, total=total, desc=desc, file=stream, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s or done == total:
            last = now
            rate = done / max(now - start, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("nan")
            print(f"{desc}: {done}/{total} ({100 * done / max(total, 1):.0f}%) "
                  f"elapsed {now - start:.0f} s, ETA {eta:.0f} s", file=stream, flush=True)
