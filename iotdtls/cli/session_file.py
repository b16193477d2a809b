"""--session FILE of iotdtls-client and iotdtls-coap-client: a saved session to offer, and what became of it."""

from __future__ import annotations

import sys

from ..errors import DecodeError
from ..resumption import Session
from ..secret_files import read_bounded, write_secret_file
from .runtime import is_quiet

MAX_SESSION_FILE = 1 << 17


def _say(prog: str, message: str) -> None:
    if not is_quiet():
        print(f"{prog}: {message}", file=sys.stderr, flush=True)


def load_session(prog: str, path: str) -> Session | None:
    """The session saved in ``path``; ``None`` (with a line on stderr) when there is none or it is unusable:
    the client then makes a full handshake and saves the new session there."""
    try:
        return Session.from_bytes(read_bounded(path, MAX_SESSION_FILE, "session file"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        _say(prog, f"cannot read session file {path}: {exc.strerror}; full handshake")
    except (DecodeError, ValueError):
        _say(prog, f"session file {path} is not a saved session; full handshake")
    return None


def report_session(prog: str, path: str, resumed: bool, saved: Session | None, offered: Session | None) -> None:
    """Say on stderr whether the handshake was abbreviated, and save the session (``saved``) for next time."""
    if resumed:
        _say(prog, "session resumed (abbreviated handshake)")
    elif offered is not None:
        _say(prog, "full handshake: the server did not resume the saved session")
    else:
        _say(prog, "full handshake")
    if saved is None:
        _say(prog, "nothing saved: the server gave no session ID or ticket, or the session has no extended master "
             "secret")
        return
    try:
        write_secret_file(path, saved.to_bytes())
    except OSError as exc:
        _say(prog, f"cannot save the session to {path}: {exc.strerror}")
