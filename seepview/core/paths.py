"""Where seepview finds its shipped files and keeps per-user data.

``resources/`` and ``models/`` live at the top of the source tree; the wheel build copies them to
``seepview/_data/``. One locator tries the installed location first, then the checkout, so the same
code works from an editable install, a plain wheel and ``python -m seepview`` in a clone.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def shipped_dir(name: str) -> Path:
    """Return the shipped folder ``name`` ("resources" or "models")."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"seepview's shipped '{name}' folder is missing (looked in {_PACKAGE_DIR})")


def resources_dir() -> Path:
    return shipped_dir("resources")


def models_dir() -> Path:
    return shipped_dir("models")


def user_data_dir() -> Path:
    """Per-user data (the demo project, projects made for loose image folders)."""
    path = Path(platformdirs.user_data_dir("seepview", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path
