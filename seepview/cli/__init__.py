"""Command-line entry point: argument parsing and dispatch only.

Each sub-command lives in its own module with ``register(subparsers)``; handlers call
``seepview.core``. A ``SeepviewError`` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from seepview import __version__
from seepview.core.errors import SeepviewError

EXIT_USER_ERROR = 2


def _command_modules():
    # Imported lazily so `seepview --version` stays fast and torch loads only where needed.
    from seepview.cli import (
        adapt_cmd,
        export_cmd,
        finetune_cmd,
        gui_cmd,
        io_cmds,
        model_cmds,
        project_cmds,
        queue_cmd,
        train_cmd,
    )

    return (io_cmds, project_cmds, train_cmd, model_cmds, finetune_cmd, adapt_cmd, export_cmd, queue_cmd, gui_cmd)


def build_parser() -> argparse.ArgumentParser:
    from seepview.cli import gui_cmd

    parser = argparse.ArgumentParser(
        prog="seepview",
        description="Review and correct segmentation masks; retrain the model on your corrections. "
        "With no command, opens the review app.",
        epilog=gui_cmd.GUI_FORMS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"seepview {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.register(sub)
    parser.commands = tuple(sub.choices)  # the GUI launcher tells a sub-command from a PATH with these
    return parser


def _reader_left() -> bool:
    """Whether our stdout is a pipe whose reader has gone (its write end polls as an error)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no real stdout: cannot tell
        return True


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from seepview.cli import gui_cmd

    parser = build_parser()
    typo = gui_cmd.unknown_command(argv, parser.commands)  # `seepview evalute` is no path to open
    if typo is not None:
        print(f"seepview: error: {typo}", file=sys.stderr)
        return EXIT_USER_ERROR
    # `seepview`, `seepview PATH` and `seepview --screenshot OUT [PATH]` open the GUI.
    if gui_cmd.is_gui_invocation(argv, parser.commands):
        return gui_cmd.run_from_argv(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="seepview: %(message)s", stream=sys.stderr
    )
    if args.command is None:
        parser.print_help()
        return 0
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that left (``| head``) fails here, inside the handlers below
        return rc
    except BrokenPipeError as exc:
        if not _reader_left():  # another pipe broke (a socket, a subprocess): an error to report
            print(f"seepview: error: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        # the reader of our output left (``| head``): not an error; what would still be flushed goes nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except SeepviewError as exc:
        print(f"seepview: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("seepview: interrupted", file=sys.stderr)
        return 130
