"""Probability maps -> cell points: smooth the foreground, keep local maxima, class = argmax(BC, TC), optionally
shifted by the predicted cancer area under the cell (late fusion, as several challenge entries did)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .files import is_int, is_number
from .geometry import PATCH_SIZE


@dataclass(frozen=True)
class PostProcess:
    """Stored with the weights; training tunes them on held-out pairs."""

    sigma: float = 1.0  # Gaussian smoothing of the foreground, in grid pixels
    min_distance: int = 3  # peaks closer than this (grid pixels, Chebyshev) are merged
    threshold: float = 0.4  # minimum smoothed foreground probability
    # Class = tumour where log(p_TC / p_BC) + tissue_weight * logit p(cancer area) + tumour_bias > 0; 0 and 0 is
    # the plain argmax. A tissue_weight needs the tissue prediction on the cell grid (a member with a tissue branch).
    tissue_weight: float = 0.0
    tumour_bias: float = 0.0

    def __post_init__(self):
        """Checked here, as they are read from a manifest: a bad value must fail at load, not after the first pair."""
        numbers = {name: getattr(self, name) for name in ("sigma", "threshold", "tissue_weight", "tumour_bias")}
        for name, value in numbers.items():
            if not (is_number(value) and np.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, not {value!r}")
        if not (is_int(self.min_distance) and self.min_distance >= 1):
            raise ValueError(f"min_distance must be an integer >= 1, not {self.min_distance!r}")
        if self.sigma < 0 or not 0 <= self.threshold < 1:
            raise ValueError(f"sigma must be >= 0 and threshold in [0, 1), not {self.sigma!r} and {self.threshold!r}")

    @property
    def fuses_tissue(self) -> bool:
        """Whether the class decision weighs in the predicted cancer area (late fusion)."""
        return self.tissue_weight != 0.0

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


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def tumour_score(p_bc: np.ndarray, p_tc: np.ndarray, cancer: np.ndarray | None, params: PostProcess) -> np.ndarray:
    """Positive where a cell is classed tumour: the cell branch's odds of TC over BC, plus the tissue's."""
    p_bc, p_tc = (np.maximum(np.asarray(p, dtype=np.float64), 1e-12) for p in (p_bc, p_tc))
    score = np.log(p_tc) - np.log(p_bc) + params.tumour_bias
    if params.fuses_tissue:
        if cancer is None:
            raise ValueError("this post-processing weighs in the tissue prediction, but none was given")
        score = score + params.tissue_weight * logit(cancer)
    return score


def find_peaks(probs: np.ndarray, params: PostProcess) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """probs: (3, H, W) softmax of background / BC / TC on a square grid covering the 1024 px cell patch -> grid
    rows, columns and smoothed foreground probability of the cells, in output order (by probability, then
    position: stable output)."""
    foreground = 1.0 - probs[0]
    if params.sigma > 0:
        foreground = ndimage.gaussian_filter(foreground, params.sigma, mode="nearest")
    window = 2 * params.min_distance + 1
    peaks = (foreground == ndimage.maximum_filter(foreground, size=window, mode="nearest")) & (foreground > params.threshold)
    # a flat top gives several equal maxima side by side: keep one (the first in scan order) per touching group
    labels, _ = ndimage.label(peaks, structure=np.ones((3, 3)))
    groups, first = np.unique(labels.ravel(), return_index=True)
    rows, cols = np.unravel_index(first[groups > 0], labels.shape)  # label 0 is no peak (absent if all are)
    score = np.clip(foreground[rows, cols], 0.0, 1.0).astype(float)
    order = np.lexsort((cols, rows, -score))
    return rows[order], cols[order], score[order]


def classify_peaks(probs: np.ndarray, rows: np.ndarray, cols: np.ndarray, score: np.ndarray, params: PostProcess,
                   cancer_at_peaks: np.ndarray | None = None) -> Cells:
    """Peaks (from `find_peaks`) -> cells: the class decision, and grid positions -> cell-patch pixels."""
    cls = np.where(tumour_score(probs[1, rows, cols], probs[2, rows, cols], cancer_at_peaks, params) > 0, 2, 1)
    x, y = peak_pixels(rows, cols, probs.shape[-1])
    return Cells(x, y, cls, score)


def peak_pixels(rows: np.ndarray, cols: np.ndarray, grid_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid rows and columns -> cell-patch pixels x, y (the grid's pixel centres, rounded)."""
    scale = PATCH_SIZE / grid_size
    x = np.clip(np.rint((cols + 0.5) * scale - 0.5), 0, PATCH_SIZE - 1).astype(int)
    y = np.clip(np.rint((rows + 0.5) * scale - 0.5), 0, PATCH_SIZE - 1).astype(int)
    return x, y


def find_cells(probs: np.ndarray, params: PostProcess, cancer: np.ndarray | None = None) -> Cells:
    """probs: (3, H, W) as for `find_peaks`; cancer: (H, W) predicted probability of cancer area on the same grid
    (see `predictor.cancer_on_cell_grid`), needed when the post-processing weighs it in."""
    rows, cols, score = find_peaks(probs, params)
    return classify_peaks(probs, rows, cols, score, params, None if cancer is None else cancer[rows, cols])
