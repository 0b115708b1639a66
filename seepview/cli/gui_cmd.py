"""Launching the review app: ``seepview [PATH]`` and ``seepview --screenshot OUT.png [PATH]``."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Iterable

GUI_FORMS = """\
the review app:
  seepview                          open the demo project (made on first run)
  seepview PATH                     open a project folder, a folder of images, or one image
  seepview --screenshot OUT.png [PATH]
                                    render the window offscreen once its first prediction is
                                    shown, save it as OUT.png and exit (no display needed)
"""


def is_gui_invocation(argv: list[str], commands: Iterable[str]) -> bool:
    """True when argv is empty, a bare PATH, or uses --screenshot (not one of the sub-``commands``)."""
    if not argv:
        return True
    if argv[0] in ("-h", "--help", "--version", "-v", "--verbose"):
        return False
    if argv[0] == "--screenshot":
        return True
    return not argv[0].startswith("-") and argv[0] not in set(commands)


def unknown_command(argv: list[str], commands: Iterable[str]) -> str | None:
    """The error for a first word that is neither a command nor an existing path (a typo such as
    ``evalute``), with a did-you-mean; None when argv is fine to dispatch."""
    if not argv or argv[0].startswith("-") or argv[0] in set(commands):
        return None
    word = argv[0]
    if os.path.lexists(word):
        return None
    close = difflib.get_close_matches(word, sorted(commands), n=1, cutoff=0.6)
    if close:
        return f"unknown command {word!r} (did you mean {close[0]}?)"
    if not any(sep in word for sep in "/\\.~"):
        return f"unknown command {word!r}, and no file or folder has that name (see seepview --help)"
    return f"{word}: no such file or folder"


def gui_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seepview", description="Open the seepview review app.", epilog=GUI_FORMS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
