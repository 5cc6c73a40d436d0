"""Emulated time for the virtual bench.

One ``Clock`` is shared by all emulators of a bench.  Physics is written once against *emulated*
durations (``elapsed_since``), and the three regimes follow from ``time_scale``:

- ``time_scale == 1``: emulated time is real time.
- ``0 < time_scale < 1``: emulated time runs ``1/time_scale`` times faster than real time, i.e. an
  emulated duration ``d`` takes ``d * time_scale`` real seconds (0.01: a 1 s settling takes 10 ms).
- ``time_scale == 0``: instant.  Every emulated duration has already elapsed:
  ``elapsed_since(t0)`` is ``math.inf``, so a first-order filter is settled (``exp(-inf) == 0``) and a
  stage moving at finite speed has arrived (``min(distance, v * inf)``).

Formulas that use ``elapsed_since`` must accept ``inf`` (use ``math.exp``/``min``, never ``inf - inf``).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable


class Clock:
    """Emulated clock: ``now_s()`` and ``elapsed_since(t0_s)`` in emulated seconds."""

    def __init__(self, time_scale: float = 1.0, *, monotonic: Callable[[], float] = time.monotonic):
        if not (isinstance(time_scale, (int, float)) and math.isfinite(time_scale) and time_scale >= 0):
            raise ValueError(f"time_scale must be a finite number >= 0 (got {time_scale!r})")
        self._time_scale = float(time_scale)
        self._monotonic = monotonic
        self._real_start_s = monotonic()

    @property
    def time_scale(self) -> float:
        return self._time_scale

    @property
    def instant(self) -> bool:
        """True when every emulated duration elapses immediately (time_scale 0)."""
        return self._time_scale == 0.0

    def now_s(self) -> float:
        """Emulated seconds since the clock was created (``math.inf`` when instant).

        Use it as an opaque timestamp to hand back to ``elapsed_since``."""
        if self.instant:
            return math.inf
        return (self._monotonic() - self._real_start_s) / self._time_scale

    def elapsed_since(self, t0_s: float) -> float:
        """Emulated seconds elapsed since the timestamp ``t0_s`` (from ``now_s``); inf when instant."""
        if self.instant:
            return math.inf
        return max(0.0, self.now_s() - t0_s)

    def real_duration_s(self, emulated_s: float) -> float:
        """Real seconds that an emulated duration takes (0 when instant)."""
        if self.instant or emulated_s <= 0:
            return 0.0
        return emulated_s * self._time_scale

    def sleep(self, emulated_s: float, stop_event: threading.Event | None = None) -> None:
        """Sleep for an emulated duration (returns at once when instant).  Returns early if
        ``stop_event`` is set."""
        real_s = self.real_duration_s(emulated_s)
        if real_s <= 0:
            return
        if stop_event is not None:
            stop_event.wait(real_s)
        else:
            time.sleep(real_s)
