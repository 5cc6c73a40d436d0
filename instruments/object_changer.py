"""Object changer: puts the next input object (a printed amplitude mask) in the beam.

On the real bench an operator does it when prompted (:class:`ManualObjectChanger`); on the virtual bench
the emulator swaps it (it implements :class:`ObjectChanger` elsewhere).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Optional

import numpy as np

from .errors import ObjectChangeAborted

__all__ = ["ObjectChanger", "ManualObjectChanger", "ascii_preview"]


class ObjectChanger(abc.ABC):
    """Something that mounts input objects in the beam."""

    @abc.abstractmethod
    def mount(self, object_id: str, image: Optional[np.ndarray] = None) -> None:
        """Mount ``object_id`` (``image``: its amplitude mask, if known); return when it is in place.

        Raises :class:`ObjectChangeAborted` if the change is aborted.
        """

    def snapshot(self) -> dict[str, Any]:
        return {"driver": f"{type(self).__module__}.{type(self).__name__}"}


def ascii_preview(image: np.ndarray, max_size: int = 28) -> str:
    """A small text rendering of a mask (row 0 on top, as seen from the source), to check orientation."""
    array = np.asarray(image, dtype=float)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array (got shape {array.shape})")
    step = max(1, int(np.ceil(max(array.shape) / max_size)))
    small = array[::step, ::step]
    span = float(small.max() - small.min())
    levels = np.zeros_like(small) if span == 0 else (small - small.min()) / span
    chars = np.array([" ", ".", "+", "#"])
    rows = chars[np.minimum((levels * 4).astype(int), 3)]
    return "\n".join("".join(row) for row in rows)


class ManualObjectChanger(ObjectChanger):
    """Asks the operator on a terminal to mount each object and waits for confirmation.

    Answers: ``y`` or an empty line (Enter) confirm; ``q`` aborts (:class:`ObjectChangeAborted`); end of
    input (Ctrl-D) aborts too; anything else asks again. ``input_fn``/``output_fn`` are injected so tests
    (and a GUI) can drive it.
    """

    def __init__(self, input_fn: Callable[[str], str] = input,
                 output_fn: Callable[[str], Any] = print, show_preview: bool = True):
        self._input = input_fn
        self._output = output_fn
        self.show_preview = show_preview
        self.mounted: Optional[str] = None

    def mount(self, object_id: str, image: Optional[np.ndarray] = None) -> None:
        self._output(f"Mount input object '{object_id}' in the object holder.")
        if image is not None and self.show_preview:
            self._output(f"Expected mask ({np.shape(image)[0]}×{np.shape(image)[1]}, top row up, "
                         f"seen from the source):\n{ascii_preview(image)}")
        while True:
            try:
                answer = self._input("Object mounted? [Enter/y = yes, q = abort] ").strip().lower()
            except EOFError:
                answer = "q"
            if answer in ("", "y", "yes"):
                self.mounted = object_id
                return
            if answer in ("q", "quit"):
                raise ObjectChangeAborted(f"operator aborted while mounting input object '{object_id}'")
            self._output(f"Please answer Enter/y when '{object_id}' is mounted, or q to abort "
                         f"(got {answer!r}).")
