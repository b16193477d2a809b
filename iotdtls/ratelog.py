"""Log lines limited per cause: a flood of refusals becomes one line a minute with a count, not a million lines."""

from __future__ import annotations

import logging


class RateLimitedLog:
    """Log each cause at most once per ``interval`` seconds of the caller's clock (``now``).

    The first occurrence of a cause is logged at once; later ones within the interval are only counted, and the
    count is reported on the next line of that cause (``... (12 more since the last report)``).
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, cause: str, now: float, level: int, message: str, *args: object) -> None:
        last = self._last.get(cause)
        if last is not None and now - last < self.interval:
            self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
            return
        if not self.logger.isEnabledFor(level):
            self._last[cause] = now
            self._suppressed.pop(cause, None)
            return
        self._last[cause] = now
        more = self._suppressed.pop(cause, 0)
        if more:
            message += " (%d more since the last report)"
            args = (*args, more)
        self.logger.log(level, message, *args)
