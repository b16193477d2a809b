"""The frame every command-line tool runs in (issue 17): ``--version``, ``-v``/``-vv``/``-q`` and the log handler
they select, help that shows every default, one-line argparse errors, numeric range checks, and a ``main()``
guard that turns any failure into one line on stderr and a closed stdout (``| head``) into a quiet exit.

The gateway's command-line tools import it too (through :mod:`iotdtls.cli.common`)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, NoReturn

#: The loggers ``-v``/``-vv`` open up: the DTLS stack's and the gateway's (``iotdtls.*``, ``iotdtls_gateway.*``).
LOGGERS = ("iotdtls", "iotdtls_gateway")
#: Exit status after stdout was closed by its reader: 128 + SIGPIPE, what a shell reports for ``yes | head -1``.
EXIT_STDOUT_CLOSED = 141
QUIET, NORMAL, VERBOSE, DEBUG = -1, 0, 1, 2

_verbosity = NORMAL


class UsageError(Exception):
    """Bad command-line input: reported on one line, exit status 2."""


class StdoutClosed(Exception):
    """The reader of stdout went away (``| head -1``): stop, quietly."""


def package_version() -> str:
    try:
        return metadata.version("iotdtls")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


# -- argparse: defaults in the help, one-line errors, ranges ----------------------------------------------------
class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to every option whose help does not already state its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text is None or text == argparse.SUPPRESS or not action.option_strings:
            return text
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS:
            return text
        if isinstance(default, (list, tuple, dict, set)) and not default:
            return text
        if "%(default)" in text or "default" in text.lower():
            return text
        return text + " (default: %(default)s)"


class ToolParser(argparse.ArgumentParser):
    """argparse with :class:`HelpFormatter` and errors on one line: "PROG: message (see --help)", exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        tool, _, command = self.prog.partition(" ")  # a subcommand's parser: "iotdtls-gateway run"
        print(f"{tool}: {command + ': ' if command else ''}{message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _number(text: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value != value or value in (float("inf"), float("-inf")):  # nan, inf
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def int_range(low: int, high: int | None = None, what: str | None = None) -> Callable[[str], int]:
    """argparse type: an integer in [low, high] (no upper bound with ``high=None``)."""
    desc = what or (f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}")

    def parse(text: str) -> int:
        value: int = _number(text, int, desc)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {desc}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(low: float, high: float | None = None, *, low_open: bool = False,
                what: str | None = None) -> Callable[[str], float]:
    """argparse type: a finite number in [low, high] ((low, high] with ``low_open``)."""
    if what is None:
        what = f"a number {'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")

    def parse(text: str) -> float:
        value: float = _number(text, float, what)
        if value < low or (low_open and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = "number"
    return parse


#: ``--port`` of a client (1-65535) and of a server (0: the kernel picks one).
port = int_range(1, 65535, "a port from 1 to 65535")
bind_port = int_range(0, 65535, "a port from 0 to 65535 (0: any free port)")
#: Timeouts and periods: seconds above 0.
seconds = float_range(0.0, low_open=True, what="a number of seconds above 0")
#: A probability (loss, duplication, reordering).
probability = float_range(0.0, 1.0, what="a probability from 0 to 1")


def mtu_type() -> Callable[[str], int]:
    """argparse type of ``--mtu``: at least the smallest datagram budget the stack supports (65535 at most)."""
    from ..config import MIN_MTU

    return int_range(MIN_MTU, 65535, f"a datagram budget from {MIN_MTU} to 65535 bytes")


# -- -v / -vv / -q and the log handler ---------------------------------------------------------------------------
def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"{parser.prog} {package_version()}",
                        help="print the version and exit")


def add_verbosity(parser: argparse.ArgumentParser, verbose_help: str = "") -> None:
    """``-v`` (repeatable) and ``-q``, mutually exclusive; read them with :func:`verbosity`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=None,
                       help=(verbose_help + "; " if verbose_help else "") + "-v: info log lines of iotdtls on "
                       "stderr, -vv: debug lines and tracebacks (default: warnings and errors only)")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="errors only: no progress or ready lines, no warnings")


def add_standard(parser: argparse.ArgumentParser, verbose_help: str = "") -> None:
    """``--version``, ``-v``/``-vv`` and ``-q``."""
    add_version(parser)
    add_verbosity(parser, verbose_help)


def verbosity(args: argparse.Namespace) -> int:
    """-1 with ``-q``, 0 by default, the number of ``-v`` otherwise."""
    if getattr(args, "quiet", False):
        return QUIET
    return int(getattr(args, "verbose", None) or 0)


def current_verbosity() -> int:
    """The verbosity :func:`setup_logging` was last called with (0 before): progress lines check it."""
    return _verbosity


def is_quiet() -> bool:
    return _verbosity <= QUIET


def set_verbosity(level: int) -> None:
    """Record ``-v``/``-q`` for a tool that sets up its own log handler (``iotdtls-gateway run``)."""
    global _verbosity
    _verbosity = level


def log_level(level: int) -> int:
    return {QUIET: logging.ERROR, NORMAL: logging.WARNING, VERBOSE: logging.INFO}.get(level, logging.DEBUG)


class _Secrets:
    """Keys the tool holds, masked in every log line should one ever get there (the library never logs them)."""

    MAX_TEXT = 64
    MIN_BYTES = 6  # a shorter key's hex would match by chance

    def __init__(self) -> None:
        self.hex: set[str] = set()
        self.lengths: set[int] = set()
        self.text: list[str] = []

    def add(self, key: bytes) -> None:
        if len(key) < self.MIN_BYTES:
            return
        self.hex.add(key.hex())
        self.lengths.add(2 * len(key))
        if len(self.text) < self.MAX_TEXT and key.isascii() and key.decode().isprintable():
            self.text.append(key.decode())

    def redact(self, line: str) -> str:
        for text in self.text:
            line = line.replace(text, "<secret>")
        if not self.hex:
            return line
        shortest = min(self.lengths)
        return re.sub(f"[0-9a-fA-F]{{{shortest},}}", self._mask_run, line)

    def _mask_run(self, match: re.Match[str]) -> str:
        run = match.group()
        low = run.lower()
        out, i = [], 0
        while i < len(run):
            hit = next((n for n in sorted(self.lengths, reverse=True) if low[i:i + n] in self.hex), 0)
            if hit:
                out.append("<secret>")
                i += hit
            else:
                out.append(run[i])
                i += 1
        return "".join(out)


_secrets = _Secrets()


def register_secrets(keys: Iterable[bytes]) -> None:
    """Mask these keys (raw or hex) in log lines and one-line errors."""
    for key in keys:
        _secrets.add(key)


def redact(text: str) -> str:
    return _secrets.redact(text)


class ToolFormatter(logging.Formatter):
    """``PROG: message`` (with ``-v``: ``PROG: LEVEL LOGGER: message``); registered keys masked; a traceback only
    at ``-vv``."""

    def __init__(self, prog: str, detailed: bool) -> None:
        super().__init__()
        self.prog, self.detailed = prog, detailed

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if _verbosity >= DEBUG:
                message += "\n" + "".join(traceback.format_exception(exc)).rstrip()
            else:
                message += f" ({type(exc).__name__}: {exc})"
        head = f"{self.prog}: {record.levelname.lower()} {record.name}: " if self.detailed else f"{self.prog}: "
        return redact(head + message)


def setup_logging(prog: str, level: int) -> None:
    """One handler on stderr for every logger; ``iotdtls.*``/``iotdtls_gateway.*`` at the level ``-v``/``-q`` ask
    for, everything else (aiocoap) at warnings (errors with ``-q``)."""
    global _verbosity
    _verbosity = level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ToolFormatter(prog, detailed=level >= VERBOSE))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.ERROR if level <= QUIET else logging.WARNING)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(log_level(level))


# -- stdout that may close, and the main() guard -----------------------------------------------------------------
def silence_stdout() -> None:
    """After the reader of stdout left: point fd 1 at /dev/null, so that the flush at exit cannot fail again (the
    recipe of Python's signal module documentation, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def write_stdout(text: str) -> None:
    """Print ``text`` as one line and flush; a closed stdout raises :class:`StdoutClosed` (stdout silenced)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence_stdout()
        raise StdoutClosed from None


def _flush_stdout() -> bool:
    """Flush stdout; False when its reader had gone."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        return False
    except (OSError, ValueError):
        pass
    return True


def run_tool(prog: str, body: Callable[[], int | None]) -> NoReturn:
    """Run a tool's ``body`` and exit with its status: :class:`UsageError` -> one line, 2; a closed stdout ->
    quietly, 141; Ctrl-C -> 130; anything unexpected -> one line, 1 (the traceback too with ``-vv``)."""
    status: int
    try:
        result = body()
        status = 0 if result is None else result
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            status = 1
    except UsageError as exc:
        print(f"{prog}: {redact(str(exc))}", file=sys.stderr)
        status = 2
    except (BrokenPipeError, StdoutClosed):
        silence_stdout()
        status = EXIT_STDOUT_CLOSED
    except KeyboardInterrupt:
        status = 130
    except Exception as exc:
        if _verbosity >= DEBUG:
            traceback.print_exc()
            hint = ""
        else:
            hint = " (-vv shows the traceback)"
        print(f"{prog}: internal error: {type(exc).__name__}: {redact(str(exc))}{hint}", file=sys.stderr)
        status = 1
    if not _flush_stdout() and status == 0:
        status = EXIT_STDOUT_CLOSED
    sys.exit(status)


__all__ = [
    "DEBUG", "EXIT_STDOUT_CLOSED", "LOGGERS", "NORMAL", "QUIET", "VERBOSE", "HelpFormatter", "StdoutClosed",
    "ToolFormatter", "ToolParser", "UsageError", "add_standard", "add_verbosity", "add_version", "bind_port",
    "current_verbosity", "float_range", "int_range", "is_quiet", "log_level", "mtu_type", "package_version",
    "probability", "redact", "register_secrets", "run_tool", "seconds", "set_verbosity", "setup_logging",
    "silence_stdout", "verbosity", "write_stdout",
]
