"""Exceptions shared by the instrument drivers.

Every driver error derives from :class:`InstrumentError`, so a bench can catch "anything the hardware
said no to" in one place. Errors that are really a bad argument (a setting outside what the hardware or
the safety limits allow) also derive from :class:`ValueError`: the caller asked for something invalid,
and nothing was sent to the instrument.
"""

from __future__ import annotations

__all__ = [
    "InstrumentError",
    "SourceLimitError",
    "SoftLimitError",
    "StageError",
    "StageTimeout",
    "LockInError",
    "LockInOverload",
    "ReferenceUnlocked",
    "ObjectChangeAborted",
]


class InstrumentError(Exception):
    """Base class of every error raised by the ``instruments`` package."""


class SourceLimitError(InstrumentError, ValueError):
    """A THz-source setting (RF frequency or power) was refused before anything was sent."""


class SoftLimitError(InstrumentError, ValueError):
    """A stage move beyond its soft limits was refused before anything was sent."""


class StageError(InstrumentError):
    """The motor controller answered wrongly (garbled/unexpected reply, move aborted, limit hit)."""


class StageTimeout(StageError, TimeoutError):
    """The motor controller did not answer (or a move did not finish) within the allowed time."""


class LockInError(InstrumentError):
    """Base class of lock-in reading errors."""


class LockInOverload(LockInError):
    """A lock-in reading was taken while the input, filter or output was overloaded."""


class ReferenceUnlocked(LockInError):
    """A lock-in reading was taken while the reference PLL was not locked."""


class ObjectChangeAborted(InstrumentError):
    """The operator (or the changer) aborted mounting an input object."""
