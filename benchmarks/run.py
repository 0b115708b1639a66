"""Run one benchmark: ``python benchmarks/run.py NAME [--json] [options]``.

Each benchmark is ``benchmarks/bench_<name>.py`` with ``add_arguments(parser)`` and ``run(args) -> dict``.
The result is printed as one JSON object with ``--json`` (machine-readable) or as indented text, and it
always carries the machine description so figures in docs/benchmarks.md can be traced.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def load(name: str):
    path = HERE / f"bench_{name}.py"
    if not path.is_file():
        raise SystemExit(f"unknown benchmark {name!r}; available: {', '.join(available())}")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HERE))
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print(f"usage: python benchmarks/run.py NAME [--json] [options]; NAME in {available()}")
        return 2
    module = load(argv[0])
    parser = argparse.ArgumentParser(prog=f"benchmarks/run.py {argv[0]}")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    result = {"benchmark": argv[0], "command": "python benchmarks/run.py " + " ".join(argv), "machine": machine()}
    result.update(module.run(args))
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
