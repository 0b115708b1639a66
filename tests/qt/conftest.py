"""Qt test set-up shared by every window test."""

from __future__ import annotations

import pytest
from PySide6 import QtCore


@pytest.fixture(autouse=True)
def _own_qsettings(tmp_path):
    """Qt caches the QSettings location per process: point it at this test's folder."""
    for fmt in (QtCore.QSettings.Format.NativeFormat, QtCore.QSettings.Format.IniFormat):
        QtCore.QSettings.setPath(fmt, QtCore.QSettings.Scope.UserScope, str(tmp_path / "qsettings"))
