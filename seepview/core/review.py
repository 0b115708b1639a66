"""Marking an image reviewed saves exactly what the reviewer saw.

"Reviewed" means "what is shown is right": unlabeled pixels take the prediction (background where
there is none, and always on no-data pixels). That is only honest when the prediction was on screen
as the labels it becomes. With the prediction drawn as outlines only, or hidden, a predicted seep
would turn into a filled label the reviewer never saw filled; those labels train the next model and
fill its validation set. So ``ReviewSession.mark_reviewed(..., shown=...)`` refuses with
``UnseenLabels`` in that case, and changes nothing. The window then fills the prediction into the
labels as one undoable step (``ReviewSession.fill_unlabeled``), shows it filled and lets a second
Enter save it.
"""

from __future__ import annotations

import numpy as np

from seepview.core.classes import IGNORE
from seepview.core.errors import SeepviewError

BACKGROUND = 0
#: How the prediction is drawn at unlabeled pixels: filled (the window's "Prediction" mode), as
#: outlines ("Labels + prediction outlines") or not at all ("Labels", "Confidence").
SHOWN = ("filled", "outlines", "hidden")


class UnseenLabels(SeepviewError):
    """Marking reviewed would save predicted classes that were not on screen as filled labels."""

    def __init__(self, image_id: str, pixels: int):
        super().__init__(
            None,
            f"{image_id}: {pixels} predicted pixel(s) would become labels without having been shown filled",
        )
        self.image_id, self.pixels = image_id, int(pixels)


def review_fill(
    labels: np.ndarray, prediction: np.ndarray | None, nodata: np.ndarray | None = None
) -> tuple[np.ndarray | None, int]:
    """(labels as marking reviewed saves them, or None when no pixel is unlabeled; the number of
    unlabeled pixels that take a predicted class other than background)."""
    unlabeled = labels == IGNORE
    if not unlabeled.any():
        return None, 0
    fill = np.zeros(labels.shape, np.uint8) if prediction is None else prediction.copy()
    fill[fill == IGNORE] = BACKGROUND  # "no prediction" there: what is shown is nothing, i.e. background
    if nodata is not None:
        fill[nodata] = BACKGROUND  # no-data is never a seep, whatever an older cached prediction says
    new = labels.copy()
    new[unlabeled] = fill[unlabeled]
    return new, int(np.count_nonzero(new[unlabeled]))


def check_shown(shown: str) -> str:
    if shown not in SHOWN:
        raise ValueError(f"unknown prediction display {shown!r}; one of {', '.join(SHOWN)}")
    return shown
