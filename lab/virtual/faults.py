"""Fault injection for the emulated instruments, configured per instrument from a config dict.

Keys (all optional; an absent key means "no fault"):

- ``drop_after_messages: N`` (int >= 1): the instrument closes the connection (TCP) or goes dead
  (APT pty: the controller side is closed) after it has received and answered N messages on it.
  Counted per connection for TCP servers.  For SCPI/SR830 a "message" is one received line.
- ``reply_delay_s: x`` (float >= 0): every reply is sent x *real* seconds late (not scaled by the
  clock's time_scale: it is a communication fault, not physics).
- ``garble_replies: k`` (int >= 0, or bool): every k-th reply is corrupted (true = every reply,
  0/false = never).  Text replies keep their line terminator (the client does not hang) but every
  character is replaced by another printable one; binary APT replies have their bytes scrambled.
- ``stall: true`` (stages only): the stage stops moving after ``stall_after_mm`` of travel in a move
  (default 0: it does not move at all) and never reaches its target; the controller keeps reporting
  "moving" and never sends MOVE_COMPLETED/MOVE_HOMED.  MOVE_STOP still stops it.
- ``stall_after_mm: x`` (float >= 0, stages only; requires ``stall``).
- ``overload: true`` (lock-in only): input overload is reported in LIAS? and readings saturate.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

INSTRUMENT_KINDS = ("synth", "lockin", "stage", "changer")
# instrument names used in BENCH.yaml ``virtual.faults`` (lab/config.py) -> kind
BENCH_INSTRUMENT_KINDS = {"source": "synth", "lockin": "lockin", "stage_x": "stage", "stage_y": "stage",
                          "changer": "changer"}
_ONLY_FOR = {"stall": ("stage",), "stall_after_mm": ("stage",), "overload": ("lockin",)}


class FaultConfigError(ValueError):
    """A fault configuration is invalid; the message names the key and what was wrong."""


@dataclass(frozen=True)
class FaultConfig:
    drop_after_messages: int | None = None
    reply_delay_s: float = 0.0
    garble_replies: int = 0
    stall: bool = False
    stall_after_mm: float = 0.0
    overload: bool = False

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None, *, kind: str | None = None,
                  where: str = "faults") -> "FaultConfig":
        """Validate and build from a config mapping.  ``kind`` (one of INSTRUMENT_KINDS) rejects keys
        that do not apply to that instrument; ``where`` prefixes error messages (e.g.
        ``"bench.yaml: faults.lockin"``)."""
        if config is None:
            return cls()
        if not isinstance(config, Mapping):
            raise FaultConfigError(f"{where}: must be a mapping of fault keys (got {type(config).__name__})")
        if kind is not None and kind not in INSTRUMENT_KINDS:
            raise FaultConfigError(f"{where}: unknown instrument kind {kind!r} (one of {INSTRUMENT_KINDS})")
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            if key not in known:
                raise FaultConfigError(f"{where}.{key}: unknown fault key (known: {', '.join(sorted(known))})")
            if kind is not None and key in _ONLY_FOR and kind not in _ONLY_FOR[key]:
                raise FaultConfigError(f"{where}.{key}: only applies to {'/'.join(_ONLY_FOR[key])}, not {kind}")
            values[key] = _validate(key, value, where)
        if values.get("stall_after_mm") and not values.get("stall"):
            raise FaultConfigError(f"{where}.stall_after_mm: requires stall: true")
        return cls(**values)


def _validate(key: str, value: Any, where: str) -> Any:
    name = f"{where}.{key}"
    if key == "drop_after_messages":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FaultConfigError(f"{name}: must be an integer >= 1 (got {value!r})")
        return value
    if key == "garble_replies":
        if isinstance(value, bool):
            return 1 if value else 0
        if not isinstance(value, int) or value < 0:
            raise FaultConfigError(f"{name}: must be true/false or an integer k >= 0 (every k-th reply) (got {value!r})")
        return value
    if key in ("reply_delay_s", "stall_after_mm"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
            raise FaultConfigError(f"{name}: must be a finite number >= 0 (got {value!r})")
        return float(value)
    if key in ("stall", "overload"):
        if not isinstance(value, bool):
            raise FaultConfigError(f"{name}: must be true or false (got {value!r})")
        return value
    raise AssertionError(key)


def faults_by_instrument(config: Mapping[str, Any] | None,
                         kinds: Mapping[str, str] = BENCH_INSTRUMENT_KINDS,
                         *, where: str = "faults") -> dict[str, FaultConfig]:
    """Validate a ``{instrument_name: {fault keys}}`` mapping.  ``kinds`` maps each known instrument
    name to its kind; every name in ``kinds`` gets a FaultConfig (empty when not configured)."""
    config = config or {}
    if not isinstance(config, Mapping):
        raise FaultConfigError(f"{where}: must be a mapping of instrument name -> fault keys")
    for name in config:
        if name not in kinds:
            raise FaultConfigError(f"{where}.{name}: unknown instrument (known: {', '.join(sorted(kinds))})")
    return {name: FaultConfig.from_dict(config.get(name), kind=kind, where=f"{where}.{name}")
            for name, kind in kinds.items()}


def garble_text(payload: bytes) -> bytes:
    """Replace every byte by another printable ASCII byte (never a line terminator)."""
    out = bytearray()
    for b in payload:
        if 0x20 <= b < 0x40 or 0x60 <= b < 0x80:
            c = b ^ 0x40
        elif 0x40 <= b < 0x60:
            c = b ^ 0x20
        else:
            c = ord("?")
        if c in (0x7F, 0x0A, 0x0D) or c < 0x20:
            c = ord("~")
        out.append(c)
    return bytes(out)


def garble_binary(payload: bytes) -> bytes:
    return bytes(b ^ 0x5A for b in payload)


class FaultInjector:
    """Runtime side of a FaultConfig for one connection/controller: counts messages and replies.
    Thread-safe."""

    def __init__(self, config: FaultConfig | None = None):
        self.config = config or FaultConfig()
        self._lock = threading.Lock()
        self._messages = 0
        self._replies = 0

    @property
    def messages_received(self) -> int:
        return self._messages

    def message_received(self) -> bool:
        """Count one received message; True when the connection must be dropped after answering it."""
        with self._lock:
            self._messages += 1
            n = self.config.drop_after_messages
            return n is not None and self._messages >= n

    def before_reply(self) -> None:
        if self.config.reply_delay_s > 0:
            time.sleep(self.config.reply_delay_s)

    def should_garble_reply(self) -> bool:
        with self._lock:
            self._replies += 1
            k = self.config.garble_replies
            return k > 0 and self._replies % k == 0
