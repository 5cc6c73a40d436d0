"""Virtual object changer: a tiny TCP line server (127.0.0.1) that mounts input objects, and its client.

Protocol (one command per ``\\n``-terminated line, one reply line each):

- ``OBJ:LOAD <id>,<h>,<w>,<hex>`` -> ``OK``: mount object ``id`` with an ``h x w`` uint8 image given as
  hex (row-major); ``OBJ:LOAD <id>`` mounts an object without an image (the optics look it up by id).
- ``OBJ:LOAD?`` -> the mounted id (empty line when none).   ``OBJ:UNLOAD`` -> ``OK``.
- ``*IDN?`` -> identification.   Anything else -> ``ERR <reason>``.

``VirtualObjectChanger(host, port).mount(object_id, image)`` matches the interface of
``instruments.object_changer.ObjectChanger.mount`` (duck-typed).  The server keeps
``current_object() -> (id, image array | None)`` for the optics.
"""

from __future__ import annotations

import re
import socket
import threading

import numpy as np

from lab.virtual.faults import FaultConfig
from lab.virtual.scpi_server import LineDevice, LineServer

_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


class _ChangerDevice(LineDevice):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.object_id: str | None = None
        self.image: np.ndarray | None = None
        self.mount_count = 0

    def process_line(self, line: str) -> list[str]:
        line = line.strip()
        upper = line.upper()
        with self.lock:
            if upper == "*IDN?":
                return ["d2nn-lab,virtual object changer,0,1.0"]
            if upper == "OBJ:LOAD?":
                return [self.object_id or ""]
            if upper == "OBJ:UNLOAD":
                self.object_id, self.image = None, None
                return ["OK"]
            if upper.startswith("OBJ:LOAD "):
                try:
                    self._load(line[len("OBJ:LOAD "):].strip())
                except ValueError as err:
                    return [f"ERR {err}"]
                return ["OK"]
            return [f"ERR unknown command {line[:40]!r}"]

    def _load(self, text: str) -> None:
        parts = text.split(",")
        object_id = parts[0].strip()
        if not _ID.match(object_id):
            raise ValueError("object id must be letters, digits, '_', '-', '.'")
        if len(parts) == 1:
            image = None
        elif len(parts) == 4:
            try:
                h, w = int(parts[1]), int(parts[2])
                raw = bytes.fromhex(parts[3].strip())
            except ValueError:
                raise ValueError("expected <id>,<h>,<w>,<hex bytes>") from None
            if h <= 0 or w <= 0 or len(raw) != h * w:
                raise ValueError(f"image is {len(raw)} bytes, expected h*w = {h * w}")
            image = np.frombuffer(raw, dtype=np.uint8).reshape(h, w).copy()
        else:
            raise ValueError("expected <id> or <id>,<h>,<w>,<hex bytes>")
        self.object_id, self.image = object_id, image
        self.mount_count += 1


class ChangerServer(LineServer):
    """The changer's server side.  ``current_object()`` is what the optics see."""

    def __init__(self, port: int = 0, faults: FaultConfig | None = None):
        self.changer = _ChangerDevice()
        super().__init__(self.changer, port=port, faults=faults)

    def current_object(self) -> tuple[str | None, np.ndarray | None]:
        with self.changer.lock:
            image = None if self.changer.image is None else self.changer.image.copy()
            return self.changer.object_id, image


class VirtualObjectChanger:
    """Client: tells the virtual changer which object to mount."""

    def __init__(self, host: str, port: int, timeout_s: float = 5.0):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._sock: socket.socket | None = None
        self._file = None

    def _ask(self, command: str) -> str:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            self._file = self._sock.makefile("rb")
        self._sock.sendall(command.encode("ascii") + b"\n")
        reply = self._file.readline()
        if not reply.endswith(b"\n"):
            self.close()
            raise ConnectionError(f"object changer at {self.host}:{self.port} closed the connection")
        return reply.decode("ascii", errors="replace").rstrip("\r\n")

    def mount(self, object_id: str, image: np.ndarray | None = None) -> None:
        """Mount ``object_id`` (with its uint8 image, 2-D) and wait until the changer confirms."""
        command = f"OBJ:LOAD {object_id}"
        if image is not None:
            array = np.asarray(image)
            if array.ndim != 2:
                raise ValueError(f"image must be 2-D (got shape {array.shape})")
            if array.dtype != np.uint8:
                if array.size and (array.min() < 0 or array.max() > 255):
                    raise ValueError("image values must be in 0..255 to send as uint8")
                array = array.astype(np.uint8)
            h, w = array.shape
            command += f",{h},{w},{array.tobytes().hex()}"
        reply = self._ask(command)
        if reply != "OK":
            raise RuntimeError(f"object changer refused {object_id!r}: {reply}")

    def mounted(self) -> str | None:
        return self._ask("OBJ:LOAD?") or None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._file.close()
                self._sock.close()
            finally:
                self._sock = self._file = None

    def __enter__(self) -> "VirtualObjectChanger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
