"""Probability maps -> cell points: smooth the foreground, keep local maxima, class = argmax(BC, TC)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .geometry import PATCH_SIZE


@dataclass(frozen=True)
class PostProcess:
    """Stored with the weights; training tunes them on held-out pairs."""

    sigma: float = 1.0  # Gaussian smoothing of the foreground, in grid pixels
    min_distance: int = 3  # peaks closer than this (grid pixels, Chebyshev) are merged
    threshold: float = 0.4  # minimum smoothed foreground probability

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Cells:
    """One pair's cells in cell-patch pixels (x = column, y = row), sorted by descending probability."""

    x: np.ndarray  # int
    y: np.ndarray  # int
    cls: np.ndarray  # int, 1 = background cell, 2 = tumour cell
    probability: np.ndarray  # float in [0, 1]

    def __len__(self) -> int:
        return len(self.x)

    def as_array(self) -> np.ndarray:
        """(N, 4) float columns x, y, class, probability, the layout the evaluation takes."""
        return np.stack([self.x, self.y, self.cls, self.probability], axis=1).astype(float).reshape(-1, 4)


def find_cells(probs: np.ndarray, params: PostProcess) -> Cells:
    """probs: (3, H, W) softmax of background / BC / TC on a square grid covering the 1024 px cell patch."""
    foreground = 1.0 - probs[0]
    if params.sigma > 0:
        foreground = ndimage.gaussian_filter(foreground, params.sigma, mode="nearest")
    window = 2 * params.min_distance + 1
    peaks = (foreground == ndimage.maximum_filter(foreground, size=window, mode="nearest")) & (foreground > params.threshold)
    # a flat top gives several equal maxima side by side: keep one (the first in scan order) per touching group
    labels, count = ndimage.label(peaks, structure=np.ones((3, 3)))
    flat = labels.ravel()
    _, first = np.unique(flat, return_index=True)
    rows, cols = np.unravel_index(first[1:] if count else first[:0], labels.shape)

    score = np.clip(foreground[rows, cols], 0.0, 1.0)
    cls = np.where(probs[2, rows, cols] > probs[1, rows, cols], 2, 1)
    scale = PATCH_SIZE / probs.shape[-1]
    x = np.clip(np.rint((cols + 0.5) * scale - 0.5), 0, PATCH_SIZE - 1).astype(int)
    y = np.clip(np.rint((rows + 0.5) * scale - 0.5), 0, PATCH_SIZE - 1).astype(int)
    order = np.lexsort((x, y, -score))  # stable output: by probability, then position
    return Cells(x[order], y[order], cls[order], score[order].astype(float))
