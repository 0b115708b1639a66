"""Long jobs in core are generators: progress is what they yield, the result is what they return.

``drive`` runs one to its end outside a GUI (CLI, scripts, tests, a child process); the Qt layer runs the
same generators in its worker wrapper instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def drive(gen: Iterator, on_event: Callable[[Any], None] | None = None):
    """Run a generator to its end and return its return value; ``on_event`` sees every yielded value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)
