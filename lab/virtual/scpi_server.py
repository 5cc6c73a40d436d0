"""A small threaded TCP line server (127.0.0.1 only) and an IEEE-488.2/SCPI device base.

``LineServer`` carries lines: it reads ``\\n``-terminated lines (a trailing ``\\r`` is dropped), hands
each to ``device.process_line(line) -> list[str]`` and writes every returned reply followed by
``\\n``.  Fault injection (drop after N messages, reply delay, garbled replies) happens here.

``ScpiDevice`` implements the IEEE-488.2 parts shared by SCPI instruments: ``;``-separated program
message units with the SCPI current-path rule, the common commands (``*IDN? *RST *CLS *OPC *OPC?
*ESR? *ESE *STB? *SRE *WAI *OPT? *TST?``), the event status register and the error queue read with
``:SYSTem:ERRor[:NEXT]?``, and a header tree with short/long-form matching (``FREQ`` ==
``FREQUENCY``, case-insensitive, optional nodes in brackets).
"""

from __future__ import annotations

import collections
import re
import socket
import socketserver
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from lab.virtual.faults import FaultConfig, FaultInjector, garble_text

BIND_HOST = "127.0.0.1"


# --------------------------------------------------------------------------------------------------
# Transport
# --------------------------------------------------------------------------------------------------

class _Handler(socketserver.StreamRequestHandler):
    server: "_TCPServer"

    def handle(self) -> None:
        owner = self.server.owner
        faults = FaultInjector(owner.faults)
        owner._register(self.request)
        try:
            while not owner._stopping.is_set():
                try:
                    raw = self.rfile.readline(65536)
                except OSError:
                    return
                if not raw:
                    return
                line = raw.decode("latin-1").rstrip("\r\n")
                drop = faults.message_received()
                replies = owner.device.process_line(line)
                for reply in replies:
                    faults.before_reply()
                    payload = reply.encode("latin-1", errors="replace")
                    if faults.should_garble_reply():
                        payload = garble_text(payload)
                    try:
                        self.wfile.write(payload + b"\n")
                        self.wfile.flush()
                    except OSError:
                        return
                if drop:
                    owner.dropped_connections += 1
                    return
        finally:
            owner._unregister(self.request)
            try:
                self.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = False      # server_close() joins the connection threads
    block_on_close = True

    def __init__(self, owner: "LineServer", port: int):
        self.owner = owner
        super().__init__((BIND_HOST, port), _Handler)


class LineServer:
    """Threaded TCP line server on 127.0.0.1 for one emulated device.

    ``port=0`` picks a free port; ``.port`` and ``.resource`` (``TCPIP0::127.0.0.1::<port>::SOCKET``)
    are valid after ``start()``.  Use as a context manager or call ``start()``/``stop()``.
    """

    def __init__(self, device: "LineDevice", port: int = 0, faults: FaultConfig | None = None):
        self.device = device
        self.faults = faults or FaultConfig()
        self._requested_port = port
        self._server: _TCPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self.dropped_connections = 0

    @property
    def host(self) -> str:
        return BIND_HOST

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return self._server.server_address[1]

    @property
    def resource(self) -> str:
        """VISA resource string for pyvisa (``@py`` backend)."""
        return f"TCPIP0::{BIND_HOST}::{self.port}::SOCKET"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "LineServer":
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _TCPServer(self, self._requested_port)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{type(self.device).__name__}-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close open connections, join all threads, close the listening socket."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        with self._conn_lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> "LineServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def open_connections(self) -> int:
        with self._conn_lock:
            return len(self._connections)

    def _register(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.add(conn)

    def _unregister(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.discard(conn)


class LineDevice:
    """Interface of a device served by LineServer."""

    def process_line(self, line: str) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# SCPI errors, parameters and header tree
# --------------------------------------------------------------------------------------------------

class ScpiError(Exception):
    """Raised by a command handler; becomes an entry of the error queue."""

    def __init__(self, code: int, message: str):
        super().__init__(f'{code},"{message}"')
        self.code = code
        self.message = message


UNDEFINED_HEADER = (-113, "Undefined header")
SYNTAX_ERROR = (-102, "Syntax error")
DATA_TYPE_ERROR = (-104, "Data type error")
PARAMETER_NOT_ALLOWED = (-108, "Parameter not allowed")
MISSING_PARAMETER = (-109, "Missing parameter")
INVALID_SUFFIX = (-131, "Invalid suffix")
ILLEGAL_PARAMETER = (-224, "Illegal parameter value")
DATA_OUT_OF_RANGE = (-222, "Data out of range")
QUERY_ONLY = (-113, "Undefined header; query only")
QUEUE_OVERFLOW = (-350, "Queue overflow")

_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)$")

FREQUENCY_UNITS = {"": 1.0, "HZ": 1.0, "KHZ": 1e3, "MHZ": 1e6, "GHZ": 1e9}
POWER_UNITS = {"": 1.0, "DBM": 1.0}
VOLTAGE_UNITS = {"": 1.0, "V": 1.0, "VP": 1.0, "MV": 1e-3, "MVP": 1e-3}
TIME_UNITS = {"": 1.0, "S": 1.0, "MS": 1e-3, "US": 1e-6, "NS": 1e-9}
PERCENT_UNITS = {"": 1.0, "PCT": 1.0, "%": 1.0}
NO_UNITS = {"": 1.0}


def parse_number(text: str, units: dict[str, float] = NO_UNITS,
                 minimum: float | None = None, maximum: float | None = None,
                 default: float | None = None) -> float:
    """Parse an SCPI numeric parameter with an optional unit suffix (``11.1GHz``, ``1e3 Hz``) or the
    keywords ``MIN``/``MAX``/``DEF``; check the range (-222 out of range)."""
    text = text.strip()
    key = text.upper()
    if key in ("MIN", "MINIMUM") and minimum is not None:
        return minimum
    if key in ("MAX", "MAXIMUM") and maximum is not None:
        return maximum
    if key in ("DEF", "DEFAULT") and default is not None:
        return default
    m = _NUMBER.match(text)
    if m is None:
        raise ScpiError(*DATA_TYPE_ERROR)
    unit = m.group(2).upper()
    if unit not in units:
        raise ScpiError(*INVALID_SUFFIX)
    value = float(m.group(1)) * units[unit]
    if (minimum is not None and value < minimum * (1 - 1e-12) - 1e-300) or \
            (maximum is not None and value > maximum * (1 + 1e-12) + 1e-300):
        raise ScpiError(*DATA_OUT_OF_RANGE)
    return value


def parse_bool(text: str) -> bool:
    key = text.strip().upper()
    if key in ("ON", "1"):
        return True
    if key in ("OFF", "0"):
        return False
    m = _NUMBER.match(key)
    if m and not m.group(2):
        return round(float(m.group(1))) != 0
    raise ScpiError(*ILLEGAL_PARAMETER)


def parse_choice(text: str, choices: Sequence[str]) -> str:
    """Match a character parameter against long-form choices like ``"SQUare"`` (short = capitals);
    returns the canonical short form in capitals."""
    key = text.strip().upper()
    for choice in choices:
        short = "".join(c for c in choice if not c.islower()).upper()
        if key in (short, choice.upper()):
            return short
    raise ScpiError(*ILLEGAL_PARAMETER)


def split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, current, quote = [], [], None
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            current.append(ch)
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


@dataclass
class _Node:
    mnemonics: tuple[tuple[str, str], ...]   # (short, long), upper case
    optional: bool


def _parse_pattern(pattern: str) -> list[_Node]:
    """``"[:SOURce]:FREQuency[:CW|:FIXed]"`` -> nodes (bracketed = optional, ``|`` = alternatives)."""
    nodes: list[_Node] = []
    for group in re.findall(r"\[[^\]]*\]|[^\[\]]+", pattern):
        optional = group.startswith("[")
        bodies = [group.strip("[]")] if optional else [w for w in group.split(":") if w]
        for body in bodies:
            alternatives = []
            for mnemonic in body.split("|"):
                mnemonic = mnemonic.strip(":")
                short = "".join(c for c in mnemonic if not c.islower()).upper()
                alternatives.append((short, mnemonic.upper()))
            nodes.append(_Node(tuple(alternatives), optional))
    return nodes


def _node_matches(node: _Node, word: str) -> bool:
    word = word.upper()
    m = re.match(r"^([A-Z*]+?)(\d*)$", word)
    if m is None:
        return False
    stem, suffix = m.groups()
    if suffix not in ("", "1"):
        # numeric suffixes other than 1 only when the mnemonic itself ends in the digits (INT2 etc.)
        return any(word in alt for alt in node.mnemonics)
    return any(stem in alt or word in alt for alt in node.mnemonics)


def _match(nodes: list[_Node], words: list[str]) -> bool:
    if not nodes:
        return not words
    head, rest = nodes[0], nodes[1:]
    if words and _node_matches(head, words[0]) and _match(rest, words[1:]):
        return True
    return head.optional and _match(rest, words)


Setter = Callable[[list[str]], None]
Getter = Callable[[list[str]], str]


@dataclass
class _Command:
    pattern: str
    nodes: list[_Node]
    setter: Setter | None
    getter: Getter | None


# --------------------------------------------------------------------------------------------------
# SCPI device
# --------------------------------------------------------------------------------------------------

# Standard event status register bits
ESR_OPC, ESR_QUERY_ERROR, ESR_DEVICE_ERROR, ESR_EXECUTION_ERROR, ESR_COMMAND_ERROR, ESR_PON = 1, 4, 8, 16, 32, 128


class ScpiDevice(LineDevice):
    """Base of SCPI emulators.  Subclasses register commands with ``add(pattern, setter, getter)`` and
    implement ``reset()`` (``*RST``) and ``idn``."""

    idn = "d2nn-lab,virtual SCPI device,0,0"
    options = ""
    ERROR_QUEUE_LENGTH = 30

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._commands: list[_Command] = []
        self._errors: collections.deque[tuple[int, str]] = collections.deque()
        self.esr = ESR_PON
        self.ese = 0
        self.sre = 0
        self.add(":SYSTem:ERRor[:NEXT]", None, self._q_next_error)
        self.add(":SYSTem:ERRor:ALL", None, self._q_all_errors)

    # ---- registration -----------------------------------------------------------------------------
    def add(self, pattern: str, setter: Setter | None = None, getter: Getter | None = None) -> None:
        self._commands.append(_Command(pattern, _parse_pattern(pattern), setter, getter))

    # ---- error queue --------------------------------------------------------------------------------
    def push_error(self, code: int, message: str) -> None:
        with self.lock:
            if code <= -100 and code > -200:
                self.esr |= ESR_COMMAND_ERROR
            elif code <= -200 and code > -300:
                self.esr |= ESR_EXECUTION_ERROR
            elif code <= -300 and code > -400:
                self.esr |= ESR_DEVICE_ERROR
            elif code <= -400 and code > -500:
                self.esr |= ESR_QUERY_ERROR
            if len(self._errors) >= self.ERROR_QUEUE_LENGTH:
                self._errors.pop()
                self._errors.append(QUEUE_OVERFLOW)
            else:
                self._errors.append((code, message))

    def errors(self) -> list[tuple[int, str]]:
        """Pending errors (not consumed), for tests."""
        with self.lock:
            return list(self._errors)

    def _q_next_error(self, args: list[str]) -> str:
        code, message = self._errors.popleft() if self._errors else (0, "No error")
        return f'{code:+d},"{message}"'

    def _q_all_errors(self, args: list[str]) -> str:
        if not self._errors:
            return '+0,"No error"'
        items = [f'{c:+d},"{m}"' for c, m in self._errors]
        self._errors.clear()
        return ",".join(items)

    # ---- status ------------------------------------------------------------------------------------
    def status_byte(self) -> int:
        stb = 0
        if self._errors:
            stb |= 4
        if self.esr & self.ese:
            stb |= 32
        if stb & self.sre & ~64:
            stb |= 64
        return stb

    def reset(self) -> None:
        """*RST: subclasses restore their settings."""

    # ---- parsing ------------------------------------------------------------------------------------
    def process_line(self, line: str) -> list[str]:
        responses: list[str] = []
        with self.lock:
            path: list[str] = []
            for unit in split_outside_quotes(line, ";"):
                unit = unit.strip()
                if not unit:
                    continue
                try:
                    response = self._execute(unit, path)
                except ScpiError as err:
                    self.push_error(err.code, err.message)
                    continue
                if response is not None:
                    responses.append(response)
        return [";".join(responses)] if responses else []

    def _execute(self, unit: str, path: list[str]) -> str | None:
        m = re.match(r"^(\S+?)(\?)?(?:\s+(.*))?$", unit, re.S)
        if m is None:
            raise ScpiError(*SYNTAX_ERROR)
        header, query, arg_text = m.group(1), bool(m.group(2)), (m.group(3) or "").strip()
        if header.endswith("?"):
            raise ScpiError(*SYNTAX_ERROR)
        args = [a.strip() for a in split_outside_quotes(arg_text, ",")] if arg_text else []
        if header.startswith("*"):
            path.clear()
            return self._common(header.upper(), query, args)
        absolute = header.startswith(":")
        words = [w for w in header.split(":") if w != ""] if header != ":" else []
        if not words or any(not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", w) for w in words):
            raise ScpiError(*SYNTAX_ERROR)
        full = words if absolute else path + words
        command = self._find(full)
        if command is None:
            raise ScpiError(*UNDEFINED_HEADER)
        path[:] = full[:-1]
        if query:
            if command.getter is None:
                raise ScpiError(*UNDEFINED_HEADER)
            return command.getter(args)
        if command.setter is None:
            raise ScpiError(*QUERY_ONLY)
        command.setter(args)
        return None

    def _find(self, words: list[str]) -> _Command | None:
        for command in self._commands:
            if _match(command.nodes, words):
                return command
        return None

    def _common(self, header: str, query: bool, args: list[str]) -> str | None:
        name = header + ("?" if query else "")
        if name == "*IDN?":
            return self.idn
        if name == "*OPT?":
            return f'"{self.options}"'
        if name == "*RST":
            self.reset()
            return None
        if name == "*CLS":
            self._errors.clear()
            self.esr = 0
            return None
        if name == "*OPC":
            self.esr |= ESR_OPC
            return None
        if name == "*OPC?":
            return "1"
        if name == "*WAI":
            return None
        if name == "*TST?":
            return "0"
        if name == "*ESR?":
            value, self.esr = self.esr, 0
            return str(value)
        if name == "*STB?":
            return str(self.status_byte())
        if name == "*ESE":
            self.ese = int(parse_number(_one(args), minimum=0, maximum=255))
            return None
        if name == "*ESE?":
            return str(self.ese)
        if name == "*SRE":
            self.sre = int(parse_number(_one(args), minimum=0, maximum=255))
            return None
        if name == "*SRE?":
            return str(self.sre)
        raise ScpiError(*UNDEFINED_HEADER)


def _one(args: list[str]) -> str:
    if not args:
        raise ScpiError(*MISSING_PARAMETER)
    if len(args) > 1:
        raise ScpiError(*PARAMETER_NOT_ALLOWED)
    return args[0]


one_arg = _one
