"""Launching the review app: ``seepview [PATH]`` and ``seepview --screenshot OUT.png [PATH]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable


def is_gui_invocation(argv: list[str], commands: Iterable[str]) -> bool:
    """True when argv is empty, a bare PATH, or uses --screenshot (not one of the sub-``commands``)."""
    if not argv:
        return True
    if argv[0] in ("-h", "--help", "--version", "-v", "--verbose"):
        return False
    if argv[0] == "--screenshot":
        return True
    return not argv[0].startswith("-") and argv[0] not in set(commands)


def gui_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seepview", description="Open the seepview review app.")
    p.add_argument("path", nargs="?", help="project folder, folder of images, or one image (default: the demo)")
    p.add_argument("--screenshot", metavar="OUT.png", help="render offscreen, wait for the first prediction, save, exit")
    return p


def run_from_argv(argv: list[str]) -> int:
    args = gui_parser().parse_args(argv)
    try:
        from seepview.qt.app import run_app
    except ImportError:
        print("seepview: the GUI is not available yet in this build", file=sys.stderr)
        return 1
    return run_app(path=args.path, screenshot=args.screenshot)


def register(sub) -> None:  # the GUI has no sub-command; kept for symmetry with other modules
    return None
