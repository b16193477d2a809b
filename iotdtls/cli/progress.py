"""The clients' handshake progress lines on stderr ("handshake with HOST:PORT: no answer yet, retrying (2/17)"),
one per retransmission, unless ``-q``."""

from __future__ import annotations

import argparse
import sys

from ..aio.liveness import ProgressCallback


def progress_printer(prog: str, args: argparse.Namespace) -> ProgressCallback | None:
    """A callback for :func:`iotdtls.aio.connect`'s and ``client_context``'s ``on_progress``; None with ``-q``
    (the library then logs the lines at INFO on ``iotdtls.aio``, which ``-q`` silences)."""
    if getattr(args, "quiet", False):
        return None

    def show(line: str) -> None:
        print(f"{prog}: {line}", file=sys.stderr, flush=True)

    return show
