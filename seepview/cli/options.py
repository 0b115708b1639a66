"""Range checks for numeric command-line options: one line naming the option, before any work.

argparse checks that a value is a number; these check that it makes sense (a zero batch, a negative patch or
a NaN learning rate would otherwise fail deep inside torch or numpy, or silently train nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from seepview.core.errors import UsageError


@dataclass(frozen=True)
class Bound:
    """``low`` <= value <= ``high`` (``open_low``: strictly above ``low``); ``whole``: an integer."""

    low: float | None = None
    high: float | None = None
    whole: bool = False
    open_low: bool = False

    def rule(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        if self.low is None:
            return f"{kind} <= {_show(self.high)}"
        if self.high is None:
            return f"{kind} {'>' if self.open_low else '>='} {_show(self.low)}"
        if self.open_low:
            return f"{kind} above {_show(self.low)} and at most {_show(self.high)}"
        return f"{kind} from {_show(self.low)} to {_show(self.high)}"

    def ok(self, value) -> bool:
        if self.whole and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high


def check_options(args, bounds: dict[str, Bound]) -> None:
    """Raise ``UsageError`` for the first option in ``bounds`` (by its ``--dashed-name``) out of range;
    options left at None (not given, no default) pass."""
    for option, bound in bounds.items():
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if value is not None and not bound.ok(value):
            raise UsageError(None, f"{option} must be {bound.rule()}, got {_show(value)}")


def _show(value) -> str:
    """10 and 4294967295 as themselves, 0.95 and nan as floats."""
    if isinstance(value, int) or (math.isfinite(value) and float(value).is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


def check_output_file(path, option: str) -> None:
    """Fail before the work, not after it, when ``path`` cannot be written (``atomic.unwritable``)."""
    from seepview.core.atomic import unwritable

    why = unwritable(path)
    if why is not None:
        raise UsageError(path, f"{option} cannot be written: {why}")
