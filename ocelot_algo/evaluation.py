"""Cell-detection scores exactly as the OCELOT 2023 challenge computes them, plus the challenge paper's analyses.

The metric (paper Algorithm 1; lunit-io/ocelot23algo `evaluation/eval.py`): per image and per class, predictions
of that class are taken in descending probability; each is matched to the nearest still-unmatched ground-truth
(GT) cell of the same class within 15 px -> TP, else FP; GT left unmatched -> FN. TP/FP/FN are summed over all
images per class, then precision, recall and F1 per class; mF1 = mean of the BC and TC F1. There is no probability
threshold: every emitted point counts, probabilities only set the matching order. A class error costs 1 FP + 1 FN.

Choices where the description leaves room, each taken to agree with the evaluator's code:
- a GT cell at exactly 15 px is a hit (`distance <= cutoff`); squared distances are compared in float64, which for
  integer coordinates decides every case exactly as the evaluator's float32 norm does;
- two GT cells at the same distance: the one listed first wins (the evaluator's `min` over ascending indices);
- equal probabilities: the prediction listed first goes first (a stable sort; the evaluator's `np.argsort` leaves
  the order of ties unspecified, so its own result may depend on the input size there);
- F1 = 2TP / (2TP + FP + FN), and precision, recall and F1 are 0 wherever their denominator is 0. The evaluator
  gets the same by adding 1e-7 to the denominators, then rounds to 4 decimals; nothing is rounded here.

Analyses of the paper (§4): 95% bootstrap confidence intervals (images resampled with replacement), scores per
organ, and per tissue region (§4.2: only the predictions and GT lying on region R, by the GT tissue mask, are
scored, giving BC on BG and TC on CA (typical) and TC on BG and BC on CA (atypical)).
`main` is the `evaluate` command line; plots live in `plots.py`, imported only when a report is written.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli import HelpFormatter
from .files import write_atomic
from .geometry import PATCH_SIZE, Box, cell_box_in_tissue
from .inputs import pair_id_order

RADIUS = 15.0  # px at ~0.2 um/px = 3 um, the challenge's hit radius
CLASS_NAMES = ("BC", "TC")  # cell class 1, 2
BG, CA, UNKNOWN = 1, 2, 255  # tissue mask labels
# Rows of the per-image count arrays: the two classes on all cells, then the paper's tissue-region subgroups as
# (name, cell class, tissue region).
SUBGROUPS = (("BC on BG", 1, BG), ("TC on CA", 2, CA), ("TC on BG", 2, BG), ("BC on CA", 1, CA))
GROUPS = CLASS_NAMES + tuple(name for name, _, _ in SUBGROUPS)
CONFIDENCE = 0.95


class EvaluationInputError(ValueError):
    """A malformed input file; the message is one line naming the file and what is wrong."""


# --------------------------------------------------------------------------------------------- the metric


def _as_points(a, columns: int, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, columns)
    if a.ndim != 2 or a.shape[1] != columns:
        raise ValueError(f"{what} must have shape (n, {columns}), not {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} has a value that is not finite")
    bad = (a[:, 2] != 1) & (a[:, 2] != 2)
    if bad.any():
        raise ValueError(f"{what} has cell class {a[bad, 2][0]:g}; classes are 1 (BC) and 2 (TC)")
    return a


def _near_pairs(pred_group, pred_xy, gt_group, gt_xy, radius: float):
    """All (prediction, GT) index pairs of the same group within the radius, with their squared distances.

    GT cells are sorted along one key (group, band of rows `radius + 1` high, x), so each prediction is only
    measured against the GT of its own group in the three bands around it and within radius + 1 in x (1 px of
    slack against rounding in the key; the exact test is on the true coordinates).
    """
    reach = radius + 1
    low = np.minimum(pred_xy.min(0), gt_xy.min(0))
    stride = max(pred_xy[:, 0].max(), gt_xy[:, 0].max()) - low[0] + 2 * reach + 1  # x never reaches the next band
    n_bands = int((max(pred_xy[:, 1].max(), gt_xy[:, 1].max()) - low[1]) // reach) + 3

    def key(group, xy):
        band = (xy[:, 1] - low[1]) // reach + 1
        return (group * n_bands + band) * stride + (xy[:, 0] - low[0])

    gt_key = key(gt_group, gt_xy)
    by_key = np.argsort(gt_key, kind="stable")
    gt_key = gt_key[by_key]
    pred_key = key(pred_group, pred_xy)
    pred_by_key = np.argsort(pred_key, kind="stable")  # sorted queries make the binary searches cache-friendly
    pred_key = pred_key[pred_by_key]
    rows, cols = [], []
    for band_shift in (-stride, 0, stride):
        lo = np.searchsorted(gt_key, pred_key + (band_shift - reach), side="left")
        lengths = np.searchsorted(gt_key, pred_key + (band_shift + reach), side="right") - lo
        rows.append(pred_by_key[np.repeat(np.arange(len(pred_xy)), lengths)])
        first_in_range = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
        cols.append(by_key[np.arange(len(rows[-1])) + first_in_range])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    d2 = (pred_xy[rows, 0] - gt_xy[cols, 0]) ** 2 + (pred_xy[rows, 1] - gt_xy[cols, 1]) ** 2
    near = (d2 <= radius * radius) & (pred_group[rows] == gt_group[cols])
    return rows[near], cols[near], d2[near]


def _greedy_match(pred_group, pred_xy, prob, gt_group, gt_xy, radius: float) -> np.ndarray:
    """Which predictions are TPs (bool per prediction) when every group (image and class) is matched apart."""
    matched = np.zeros(len(pred_xy), dtype=bool)
    if len(pred_xy) == 0 or len(gt_xy) == 0:
        return matched
    # Descending probability, ties in input order; one order serves all groups since they never interact.
    order = np.argsort(-prob, kind="stable")
    rows, cols, dist = _near_pairs(pred_group[order], pred_xy[order], gt_group, gt_xy, radius)
    # A prediction whose candidates no other prediction shares is a TP whatever the order; the others are walked
    # in order, each taking its nearest free candidate (ties: the lower GT index).
    contested_gt = np.bincount(cols, minlength=len(gt_xy)) > 1
    contested_row = np.zeros(len(pred_xy), dtype=bool)
    contested_row[rows[contested_gt[cols]]] = True
    walk = contested_row[rows]
    matched[order[rows[~walk]]] = True
    rows, cols, dist = rows[walk], cols[walk], dist[walk]
    pick = np.lexsort((cols, dist, rows))
    taken = bytearray(len(gt_xy))
    hits, last_row = [], -1
    for row, col in zip(rows[pick].tolist(), cols[pick].tolist()):
        if row != last_row and not taken[col]:  # `last_row`: this prediction has matched, skip its other candidates
            taken[col] = 1
            hits.append(row)
            last_row = row
    matched[order[hits]] = True
    return matched


def count_matches_per_image(preds, gts, radius: float = RADIUS) -> np.ndarray:
    """TP/FP/FN of each image: int array (n_images, 2, 3), rows BC, TC, columns TP, FP, FN.

    preds[i]: (N, 4) x, y, class, probability; gts[i]: (M, 3) x, y, class; empty lists or arrays are fine.
    All images are matched in one vectorised pass, which is what makes scoring a whole set fast.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction sets for {len(gts)} ground-truth sets")
    pred = [_as_points(p, 4, f"pred[{i}]") for i, p in enumerate(preds)]
    gt = [_as_points(g, 3, f"gt[{i}]") for i, g in enumerate(gts)]
    n_groups = 2 * len(pred)
    image_of_pred = np.repeat(np.arange(len(pred)), [len(p) for p in pred])
    image_of_gt = np.repeat(np.arange(len(gt)), [len(g) for g in gt])
    pred = np.concatenate([np.zeros((0, 4)), *pred])
    gt = np.concatenate([np.zeros((0, 3)), *gt])
    pred_group = 2 * image_of_pred + pred[:, 2].astype(np.int64) - 1
    gt_group = 2 * image_of_gt + gt[:, 2].astype(np.int64) - 1
    matched = _greedy_match(pred_group, pred[:, :2], pred[:, 3], gt_group, gt[:, :2], radius)
    tp = np.bincount(pred_group[matched], minlength=n_groups)
    fp = np.bincount(pred_group, minlength=n_groups) - tp
    fn = np.bincount(gt_group, minlength=n_groups) - tp
    return np.stack([tp, fp, fn], axis=1).reshape(-1, 2, 3)


def count_matches(pred, gt, radius: float = RADIUS) -> np.ndarray:
    """TP/FP/FN of one image: int array (2, 3), rows BC, TC, columns TP, FP, FN.

    pred: (N, 4) x, y, class, probability; gt: (M, 3) x, y, class (an empty list or array is fine for either).
    """
    return count_matches_per_image([pred], [gt], radius)[0]


def _prf(counts: np.ndarray):
    """Precision, recall, F1 over the last axis (TP, FP, FN) of an array of any shape; 0 where undefined."""
    tp, fp, fn = (counts[..., i].astype(np.float64) for i in range(3))

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)


def _class_scores(counts_row: np.ndarray) -> dict:
    precision, recall, f1 = _prf(counts_row)
    tp, fp, fn = (int(v) for v in counts_row)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "tp": tp, "fp": fp, "fn": fn}


def scores(counts) -> dict:
    """Scores from counts summed over images, shape (2, 3) as `count_matches` returns.

    {"BC": {"precision", "recall", "f1", "tp", "fp", "fn"}, "TC": {...}, "mF1": mean of the two F1}; a ratio whose
    denominator is 0 is 0 (so a class with no predictions and no GT has F1 0, as in the challenge evaluator).
    """
    counts = np.asarray(counts)
    result = {name: _class_scores(counts[row]) for row, name in enumerate(CLASS_NAMES)}
    result["mF1"] = (result["BC"]["f1"] + result["TC"]["f1"]) / 2
    return result


def evaluate_pairs(preds, gts, radius: float = RADIUS) -> dict:
    """`scores` of a list of images: preds[i] (N, 4) scored against gts[i] (M, 3)."""
    return scores(count_matches_per_image(preds, gts, radius).sum(0))


# ----------------------------------------------------------------------------------- reading inputs


@dataclass(frozen=True)
class TruthImage:
    """Ground truth of one image; organ, box and tissue mask only where the release layout provides them."""

    id: str
    cells: np.ndarray  # (M, 3) x, y, class
    organ: str | None = None
    box: Box | None = None  # the cell field of view inside the tissue patch, as fractions
    tissue_path: Path | None = None

    def tissue_mask(self) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.tissue_path) as image:
                mask = np.asarray(image)
        except (OSError, UnidentifiedImageError) as err:
            raise EvaluationInputError(f"{self.tissue_path}: cannot read the tissue mask ({err})") from None
        if mask.ndim != 2:
            raise EvaluationInputError(f"{self.tissue_path}: tissue mask must be one channel, not {mask.shape}")
        return mask


def _parse_points_csv(path: Path, with_probability: bool) -> np.ndarray:
    """Lines x,y,class[,probability] without a header, checked as strictly as the challenge checks its JSON."""
    columns = 4 if with_probability else 3
    layout = "x,y,class,probability" if with_probability else "x,y,class"
    rows = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise EvaluationInputError(f"{path}: cannot read ({err})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(",")
        try:
            if len(fields) != columns:
                raise ValueError
            row = [int(f) for f in fields[:3]] + [float(f) for f in fields[3:]]
        except ValueError:
            raise EvaluationInputError(f"{path}:{number}: expected {layout} (integers, probability a number), "
                                       f"got {line.strip()!r}") from None
        problem = _point_problem(row[:3], row[3] if with_probability else None)
        if problem:
            raise EvaluationInputError(f"{path}:{number}: {problem}")
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(-1, columns)


def _point_problem(point, probability) -> str | None:
    x, y, cls = point
    if not (0 <= x < PATCH_SIZE and 0 <= y < PATCH_SIZE):
        return f"point ({x}, {y}) lies outside 0..{PATCH_SIZE - 1}"
    if cls not in (1, 2):
        return f"cell class {cls} is not 1 (BC) or 2 (TC)"
    if probability is not None and not (0.0 <= probability <= 1.0):
        return f"probability {probability} is not in [0, 1]"
    return None


_IMAGE_NAME = re.compile(r"image_([0-9]+)")


def read_points_json(path: Path, with_probability: bool) -> tuple[dict[int, np.ndarray], int | None]:
    """A GC "Multiple points" file -> ({image index: (n, 3 or 4) array}, the file's `num_images` if it has one).

    Points follow the challenge's validity rules: name image_<i>; point [x, y, class] of ints, x, y in 0..1023,
    class 1 or 2; for predictions exactly the keys name, point, probability, the probability a float in [0, 1]
    (JSON `1` is an int and fails there, as on the challenge). Ground-truth points may omit the probability.
    """
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvaluationInputError(f"{path}: cannot read as JSON ({err})") from None
    if not isinstance(document, dict) or not isinstance(document.get("points"), list):
        raise EvaluationInputError(f"{path}: expected an object with a 'points' list (GC 'Multiple points')")
    num_images = document.get("num_images")
    if num_images is not None and (type(num_images) is not int or num_images < 0):
        raise EvaluationInputError(f"{path}: num_images must be a non-negative integer, not {num_images!r}")
    rows: dict[int, list] = {}
    for k, item in enumerate(document["points"]):
        problem = _json_point_problem(item, with_probability)
        if problem:
            raise EvaluationInputError(f"{path}: points[{k}]: {problem}")
        index = int(_IMAGE_NAME.fullmatch(item["name"]).group(1))
        extra = [item["probability"]] if with_probability else []
        rows.setdefault(index, []).append(list(item["point"]) + extra)
    columns = 4 if with_probability else 3
    return {i: np.array(r, dtype=np.float64).reshape(-1, columns) for i, r in sorted(rows.items())}, num_images


def _json_point_problem(item, with_probability: bool) -> str | None:
    if not isinstance(item, dict):
        return "not an object"
    keys, allowed = set(item), {"name", "point", "probability"}
    required = allowed if with_probability else {"name", "point"}
    if not required <= keys <= allowed:
        return f"keys {sorted(keys)}; expected " + ("name, point, probability" if with_probability else
                                                   "name, point and optionally probability")
    if not isinstance(item["name"], str) or not _IMAGE_NAME.fullmatch(item["name"]):
        return f"name {item['name']!r} is not image_<index>"
    point = item["point"]
    if type(point) is not list or len(point) != 3 or any(type(v) is not int for v in point):
        return f"point {point!r} is not a list of three integers [x, y, class]"
    probability = item.get("probability")
    if with_probability and type(probability) is not float:
        return f"probability {probability!r} is not a float"
    return _point_problem(point, probability if with_probability else None)


def split_ids(root: Path, split: str = "train") -> list[str]:
    """Pair ids of a split of the release, ascending: the order in which the algorithm reads and numbers them."""
    metadata = _read_metadata(Path(root))
    return sorted((k for k, v in metadata["sample_pairs"].items() if v.get("subset", split) == split), key=pair_id_order)


def _read_metadata(root: Path) -> dict:
    path = root / "metadata.json"
    try:
        metadata = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvaluationInputError(f"{path}: cannot read as JSON ({err})") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("sample_pairs"), dict):
        raise EvaluationInputError(f"{path}: expected an object with a 'sample_pairs' object")
    return metadata


def load_release(root: Path, split: str = "train", ids=None) -> list[TruthImage]:
    """Ground truth of a release-layout folder, ascending by id; `ids` restricts it (each must be in the split)."""
    root = Path(root)
    metadata = _read_metadata(root)["sample_pairs"]
    available = split_ids(root, split)
    if ids is None:
        ids = available
    else:
        unknown = sorted(set(ids) - set(available))
        if unknown:
            raise EvaluationInputError(
                f"{root / 'metadata.json'}: ids {', '.join(unknown[:5])} are not in split {split!r}")
        ids = sorted(set(ids))
    if not ids:
        raise EvaluationInputError(f"{root / 'metadata.json'}: no pairs in split {split!r}")
    truth = []
    for pair_id in ids:
        meta = metadata[pair_id]
        try:
            box = cell_box_in_tissue(meta)
        except (KeyError, TypeError, ValueError) as err:
            raise EvaluationInputError(f"{root / 'metadata.json'}: pair {pair_id}: {err!r}") from None
        cells = _parse_points_csv(root / "annotations" / split / "cell" / f"{pair_id}.csv", with_probability=False)
        tissue = root / "annotations" / split / "tissue" / f"{pair_id}.png"
        if not tissue.is_file():
            raise EvaluationInputError(f"{tissue}: tissue annotation missing")
        truth.append(TruthImage(pair_id, cells, meta.get("organ", "unknown"), box, tissue))
    return truth


def read_folds(folds_path: Path, fold: int | None = None) -> list[list[str]]:
    """Every fold of a folds file {"folds": [[ids...], ...]}, checked (with fold `fold`, 0-based, when given) so
    that a bad file or fold number is one line naming the file, for `evaluate --fold` and `train` alike."""
    try:
        folds = json.loads(Path(folds_path).read_text())["folds"]
        if not isinstance(folds, list) or not all(isinstance(f, list) for f in folds) \
                or not all(isinstance(i, str) for f in folds for i in f):
            raise ValueError
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvaluationInputError(f"{folds_path}: cannot read as JSON ({err})") from None
    except (KeyError, TypeError, ValueError):
        raise EvaluationInputError(f"{folds_path}: expected lists of string ids under 'folds'") from None
    if fold is not None and not 0 <= fold < len(folds):
        raise EvaluationInputError(f"{folds_path}: no fold {fold} among its {len(folds)} (0-based)")
    return folds


def load_gt_json(path: Path) -> list[TruthImage]:
    """Ground truth from a GC-format points file: images image_0 .. image_<n-1>, no organ or tissue."""
    per_image, num_images = read_points_json(path, with_probability=False)
    count = num_images if num_images is not None else max(per_image, default=-1) + 1
    if per_image and max(per_image) >= count:
        raise EvaluationInputError(f"{path}: image_{max(per_image)} but num_images is {count}")
    if count == 0:
        raise EvaluationInputError(f"{path}: no images")
    empty = np.zeros((0, 3))
    return [TruthImage(str(i), per_image.get(i, empty)) for i in range(count)]


@dataclass(frozen=True)
class Predictions:
    """Predictions aligned with a ground-truth list; ids without predictions are scored as empty."""

    name: str
    points: list[np.ndarray]  # (N, 4) x, y, class, probability per truth image
    missing_ids: tuple[str, ...] = ()  # no <id>.csv in a folder, or past the last image_<i> of a JSON


def load_predictions(path: Path, truth: list[TruthImage], image_ids: list[str] | None = None,
                     name: str | None = None) -> Predictions:
    """Predictions for `truth` from a folder of <id>.csv files or a GC cell_classification.json.

    In the JSON, image_<i> stands for `image_ids[i]`: the ids of every image the algorithm was run on, in its order
    (for a release folder the split's ids ascending, see `split_ids`; for a GT JSON "0", "1", ...), of which
    `truth` may be a part; by default `truth` is taken to be all of them.
    """
    path = Path(path)
    name = name or path.name or str(path)
    if path.is_dir():
        if truth[0].box is None:
            raise EvaluationInputError(f"{path}: a folder of predictions needs a release folder as ground truth")
        files = {pair.id: path / f"{pair.id}.csv" for pair in truth}
        missing = tuple(pid for pid, f in files.items() if not f.is_file())
        if len(missing) == len(truth):
            raise EvaluationInputError(f"{path}: none of the {len(truth)} ids has a prediction file "
                                       f"(expected e.g. {truth[0].id}.csv)")
        empty = np.zeros((0, 4))
        points = [empty if pid in missing else _parse_points_csv(f, with_probability=True) for pid, f in files.items()]
        return Predictions(name, points, missing)
    per_image, _ = read_points_json(path, with_probability=True)
    index_to_id = image_ids if image_ids is not None else [t.id for t in truth]
    if per_image and max(per_image) >= len(index_to_id):
        raise EvaluationInputError(f"{path}: image_{max(per_image)} but there are only {len(index_to_id)} images")
    by_id = {index_to_id[i]: points for i, points in per_image.items()}
    # images past the last one with points: a JSON made for fewer pairs (another split or fold) would score here as
    # predictions for the wrong pairs, so they are reported (a pair of the middle without cells is not suspicious)
    beyond = set(index_to_id[max(per_image, default=-1) + 1:])
    empty = np.zeros((0, 4))
    return Predictions(name, [by_id.get(pair.id, empty) for pair in truth],
                       tuple(pair.id for pair in truth if pair.id in beyond))


# ----------------------------------------------------------------------------- per-image counts, tissue regions


def tissue_regions(xy: np.ndarray, box: Box, mask: np.ndarray) -> np.ndarray:
    """The tissue label (BG, CA or UNKNOWN) under each cell-patch point (n, 2); outside the tissue patch: UNKNOWN.

    A cell pixel's centre (x + 0.5) / 1024 is placed inside the cell box, then the tissue pixel containing it is read.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    height, width = mask.shape
    col = np.floor((box.x0 + (xy[:, 0] + 0.5) / PATCH_SIZE * (box.x1 - box.x0)) * width).astype(np.int64)
    row = np.floor((box.y0 + (xy[:, 1] + 0.5) / PATCH_SIZE * (box.y1 - box.y0)) * height).astype(np.int64)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    labels = mask[np.clip(row, 0, height - 1), np.clip(col, 0, width - 1)]
    return np.where(inside & np.isin(labels, (BG, CA)), labels, UNKNOWN).astype(np.uint8)


def tissue_mask_on_grid(mask: np.ndarray, size: int) -> np.ndarray:
    """The tissue mask (H, W) on a (size, size) grid over the tissue patch: the label at each grid pixel's centre."""
    rows, cols = (((np.arange(size) + 0.5) * n / size).astype(int) for n in mask.shape)
    return mask[np.ix_(rows, cols)]


def tissue_mask_in_box(mask: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The tissue mask (H, W) on a (size, size) grid over `box` (the cell field of view in the tissue patch): the
    `tissue_regions` label at each grid pixel's centre, UNKNOWN past the tissue patch."""
    centres = (np.arange(size) + 0.5) * PATCH_SIZE / size - 0.5  # in cell-patch pixels
    xs, ys = np.meshgrid(centres, centres)
    return tissue_regions(np.stack([xs.ravel(), ys.ravel()], 1), box, mask).reshape(size, size)


def image_counts(truth: list[TruthImage], runs: list[Predictions], radius: float = RADIUS):
    """Per-image TP/FP/FN of each run, arrays (n_images, groups, 3) over GROUPS (the tissue subgroups only when
    every image has a tissue mask), and how many GT and predicted cells lie on unknown tissue."""
    gts = [t.cells for t in truth]
    with_tissue = all(t.tissue_path is not None for t in truth)
    counts = [np.zeros((len(truth), len(GROUPS) if with_tissue else 2, 3), dtype=np.int64) for _ in runs]
    for run_counts, run in zip(counts, runs):
        run_counts[:, :2] = count_matches_per_image(run.points, gts, radius)
    unknown = {"gt": 0, "pred": [0] * len(runs)}
    if not with_tissue:
        return counts, unknown
    gt_regions, pred_regions = [], [[] for _ in runs]
    for i, pair in enumerate(truth):
        mask = pair.tissue_mask()
        gt_regions.append(tissue_regions(pair.cells[:, :2], pair.box, mask))
        for regions, run in zip(pred_regions, runs):
            regions.append(tissue_regions(run.points[i][:, :2], pair.box, mask))
    unknown["gt"] = int(sum((r == UNKNOWN).sum() for r in gt_regions))
    unknown["pred"] = [int(sum((r == UNKNOWN).sum() for r in regions)) for regions in pred_regions]
    for region in (BG, CA):
        gts_on = [g[r == region] for g, r in zip(gts, gt_regions)]
        for run_counts, run, regions in zip(counts, runs, pred_regions):
            on = count_matches_per_image([p[r == region] for p, r in zip(run.points, regions)], gts_on, radius)
            for group, (_, cls, group_region) in enumerate(SUBGROUPS, start=2):
                if group_region == region:
                    run_counts[:, group] = on[:, cls - 1]
    return counts, unknown


# ----------------------------------------------------------------------------------------- bootstrap, report


def bootstrap_weights(n_images: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """(iterations, n_images) float: how often each image is drawn in each resample with replacement."""
    draws = rng.integers(0, n_images, size=(iterations, n_images))
    draws += np.arange(iterations)[:, None] * n_images
    return np.bincount(draws.ravel(), minlength=iterations * n_images).reshape(iterations, n_images).astype(np.float64)


def _interval(samples: np.ndarray) -> list[float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    return [float(v) for v in np.percentile(samples, [tail, 100 - tail])]


def _score_groups(counts: np.ndarray, weights: np.ndarray | None, names) -> tuple[dict, dict]:
    """Point scores (+ CIs) of each group of per-image counts (n, G, 3), and the bootstrap F1 samples per group."""
    result = {name: _class_scores(row) for name, row in zip(names, counts.sum(0))}
    samples = {}
    if weights is not None:
        totals = (weights @ counts.reshape(len(counts), -1).astype(np.float64)).reshape(len(weights), -1, 3)
        precision, recall, f1 = _prf(totals)
        for g, name in enumerate(names):
            result[name].update(precision_ci=_interval(precision[:, g]), recall_ci=_interval(recall[:, g]),
                                f1_ci=_interval(f1[:, g]))
            samples[name] = f1[:, g]
    return result, samples


def _class_section(counts: np.ndarray, weights: np.ndarray | None) -> tuple[dict, dict]:
    section, samples = _score_groups(counts[:, :2], weights, CLASS_NAMES)
    section["mF1"] = (section["BC"]["f1"] + section["TC"]["f1"]) / 2
    if weights is not None:
        samples["mF1"] = (samples["BC"] + samples["TC"]) / 2
        section["mF1_ci"] = _interval(samples["mF1"])
    return section, samples


def _f1_values(section: dict) -> dict:
    overall = section["overall"]
    values = {"mF1": overall["mF1"], **{name: overall[name]["f1"] for name in CLASS_NAMES}}
    values.update((name, group["f1"]) for name, group in section.get("tissue_regions", {}).items())
    return values


def _difference(values_a: dict, values_b: dict, samples_a: dict, samples_b: dict) -> dict:
    """b - a for each key of values_a, with a paired CI where there are bootstrap samples (same resamples)."""
    result = {}
    for key, value_a in values_a.items():
        result[key] = {"value": values_b[key] - value_a}
        if key in samples_a:
            result[key]["ci"] = _interval(samples_b[key] - samples_a[key])
    return result


def report_settings(truth: list[TruthImage], bootstrap: int, seed: int, radius: float = RADIUS) -> dict:
    return {"radius": radius, "bootstrap_iterations": bootstrap, "seed": seed, "confidence": CONFIDENCE,
            "n_images": len(truth), "ids": [t.id for t in truth]}


def evaluate_dataset(truth: list[TruthImage], preds: Predictions, compare: Predictions | None = None,
                     bootstrap: int = 10_000, seed: int = 0, radius: float = RADIUS) -> dict:
    """The full report of one prediction set, or two side by side (`compare`, e.g. the cell-only ablation).

    Returns {"settings", "runs": [one section per prediction set], "difference" (compare - preds, only with
    compare)}. A run section holds "overall" (BC, TC, mF1), "organs" (the same per organ, where known) and
    "tissue_regions" (the four subgroups, where tissue masks are known), each score with its bootstrap CI.
    Both runs are scored on the same resamples, so the CI of their difference is paired.
    """
    runs = [preds] if compare is None else [preds, compare]
    for run in runs:
        if len(run.points) != len(truth):
            raise ValueError(f"{run.name}: {len(run.points)} prediction sets for {len(truth)} images")
    counts, unknown = image_counts(truth, runs, radius)
    rng = np.random.default_rng(seed)
    weights = bootstrap_weights(len(truth), bootstrap, rng) if bootstrap > 0 else None
    organs = sorted({t.organ for t in truth}) if all(t.organ is not None for t in truth) else []
    organ_members = {o: np.array([i for i, t in enumerate(truth) if t.organ == o]) for o in organs}
    organ_weights = {o: bootstrap_weights(len(m), bootstrap, rng) if bootstrap > 0 else None
                     for o, m in organ_members.items()}

    sections, all_samples = [], []
    for r, (run, c) in enumerate(zip(runs, counts)):
        overall, samples = _class_section(c, weights)
        section = {"name": run.name, "missing_ids": list(run.missing_ids), "overall": overall, "organs": {}}
        organ_samples = {}
        for organ, members in organ_members.items():
            organ_section, organ_samples[organ] = _class_section(c[members], organ_weights[organ])
            section["organs"][organ] = {"n_images": len(members), **organ_section}
        if c.shape[1] > 2:
            regions, region_samples = _score_groups(c[:, 2:], weights, GROUPS[2:])
            section["tissue_regions"] = regions
            samples.update(region_samples)
            section["cells_on_unknown_tissue"] = {"gt": unknown["gt"], "pred": unknown["pred"][r]}
        sections.append(section)
        all_samples.append((samples, organ_samples))

    report = {"settings": report_settings(truth, bootstrap, seed, radius), "runs": sections}
    if compare is not None:
        (samples_a, organs_a), (samples_b, organs_b) = all_samples
        a, b = sections
        difference = _difference(_f1_values(a), _f1_values(b), samples_a, samples_b)
        difference["organs"] = {organ: _difference({"mF1": a["organs"][organ]["mF1"]},
                                                   {"mF1": b["organs"][organ]["mF1"]},
                                                   organs_a[organ], organs_b[organ])["mF1"] for organ in organs}
        report["difference"] = {"of": f"{b['name']} - {a['name']}", **difference}
    return report


# ------------------------------------------------------------------------------------------------ writing


def _value(value: float, interval=None) -> str:
    text = f"{value:.4f}"
    return f"{text} ({interval[0]:.4f}–{interval[1]:.4f})" if interval else text


def _delta(entry: dict) -> str:
    text = f"{entry['value']:+.4f}"
    return f"{text} ({entry['ci'][0]:+.4f}–{entry['ci'][1]:+.4f})" if "ci" in entry else text


def _group_cells(group: dict) -> list[str]:
    """F1 (CI), precision, recall, counts; F1 shows "–" for a group with no cells at all, where it means nothing."""
    empty = group["tp"] + group["fp"] + group["fn"] == 0
    return ["–" if empty else _value(group["f1"], group.get("f1_ci")),
            _value(group["precision"], group.get("precision_ci")), _value(group["recall"], group.get("recall_ci")),
            f"{group['tp']} / {group['fp']} / {group['fn']}"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def format_markdown(report: dict) -> str:
    """The report as Markdown tables; with two runs every table puts them side by side, plus their difference."""
    settings, runs, difference = report["settings"], report["runs"], report.get("difference")
    names = [run["name"] for run in runs]
    delta_header = [f"{difference['of']} (95% CI)"] if difference else []

    def delta_cell(*keys) -> list[str]:
        """The difference column's cell, difference[keys[0]][keys[1]]..., blank without keys; none without it."""
        if difference is None:
            return []
        entry = difference
        for key in keys:
            entry = entry[key]
        return [_delta(entry) if keys else ""]

    ci_note = (f"95% CIs: percentile bootstrap over images, {settings['bootstrap_iterations']} resamples, "
               f"seed {settings['seed']}" + ("; the difference is paired (same resamples)." if difference else ".")
               if settings["bootstrap_iterations"] else "No bootstrap CIs.")
    tissue_lines = []
    if "tissue_at_cells" in report:
        from .tissue_eval import format_markdown as tissue_markdown

        tissue_lines = tissue_markdown(report["tissue_at_cells"])
    if not runs:  # the tissue branch alone (`evaluate --tissue-maps` without --pred)
        return "\n".join(["# Tissue branch evaluation", ""] + tissue_lines)
    lines = ["# Cell detection evaluation", "",
             f"{settings['n_images']} images; OCELOT 2023 metric (greedy matching by descending probability to the "
             f"nearest unmatched GT of the same class within {settings['radius']:g} px, no probability threshold). "
             + ci_note, ""]
    for run in runs:
        missing = run["missing_ids"]
        if missing:
            lines += [f"**{run['name']}: {len(missing)} ids had no predictions** (scored as none): "
                      f"{', '.join(missing[:20])}{' …' if len(missing) > 20 else ''}", ""]

    lines += ["## Overall", ""]
    rows = [["mF1", *(_value(r["overall"]["mF1"], r["overall"].get("mF1_ci")) for r in runs), *delta_cell("mF1")]]
    for cls in CLASS_NAMES:
        for metric in ("f1", "precision", "recall"):
            rows.append([f"{cls} {'F1' if metric == 'f1' else metric}",
                         *(_value(r["overall"][cls][metric], r["overall"][cls].get(f"{metric}_ci")) for r in runs),
                         *(delta_cell(cls) if metric == "f1" else delta_cell())])
        rows.append([f"{cls} TP / FP / FN", *(_group_cells(r["overall"][cls])[3] for r in runs), *delta_cell()])
    lines += _table(["metric", *names, *delta_header], rows) + [""]

    if runs[0]["organs"]:
        lines += ["## Per organ", ""]
        header = ["organ", "images"] + [f"{n}: {m}" for n in names for m in ("mF1", "BC F1", "TC F1")]
        rows = []
        for organ, first in runs[0]["organs"].items():
            cells = [organ, str(first["n_images"])]
            for run in runs:
                o = run["organs"][organ]
                cells += [_value(o["mF1"], o.get("mF1_ci")), _value(o["BC"]["f1"]), _value(o["TC"]["f1"])]
            rows.append(cells + delta_cell("organs", organ))
        lines += _table(header + (["Δ mF1 (95% CI)"] if difference else []), rows) + [""]

    if "tissue_regions" in runs[0]:
        unknown_gt = runs[0]["cells_on_unknown_tissue"]["gt"]
        unknown_pred = ", ".join(f"{r['cells_on_unknown_tissue']['pred']} predicted by {r['name']}"
                                 for r in runs)
        lines += ["## Per tissue region", "",
                  "Only the predicted and GT cells lying on the region (by the GT tissue mask) are scored; cells on "
                  f"unknown tissue or outside the tissue patch are left out: {unknown_gt} GT cells, "
                  f"{unknown_pred}.", ""]
        header = ["subgroup"] + [f"{n}: {m}" for n in names for m in ("F1", "precision", "recall", "TP / FP / FN")]
        rows = []
        for name, _, _ in SUBGROUPS:
            cells = [name + (" (typical)" if name in ("BC on BG", "TC on CA") else " (atypical)")]
            for run in runs:
                cells += _group_cells(run["tissue_regions"][name])
            rows.append(cells + delta_cell(name))
        lines += _table(header + (["Δ F1 (95% CI)"] if difference else []), rows) + [""]
    return "\n".join(lines + tissue_lines)


def format_summary(report: dict) -> str:
    """A few lines for the terminal: mF1 and per-class F1 with CIs of each run, and their difference."""
    lines = []
    for run in report["runs"]:
        o = run["overall"]
        per_class = "  ".join(f"{cls} F1 {_value(o[cls]['f1'], o[cls].get('f1_ci'))}" for cls in CLASS_NAMES)
        lines.append(f"{run['name']}: mF1 {_value(o['mF1'], o.get('mF1_ci'))}  {per_class}  "
                     f"({report['settings']['n_images']} images)")
    if "difference" in report:
        d = report["difference"]
        lines.append(f"{d['of']}: mF1 {_delta(d['mF1'])}  BC F1 {_delta(d['BC'])}  TC F1 {_delta(d['TC'])}")
    if "tissue_at_cells" in report:
        from .tissue_eval import format_summary as tissue_summary

        lines.append(tissue_summary(report["tissue_at_cells"]))
    return "\n".join(lines)


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """report.json, report.md and the plots (see `plots.render_report_plots`) into out_dir; returns the paths."""
    from .plots import render_report_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"report.json": json.dumps(report, indent=2) + "\n", "report.md": format_markdown(report),
             **render_report_plots(report)}
    for name, data in files.items():
        write_atomic(out_dir / name, data)
    return [out_dir / name for name in files]


# --------------------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ocelot_algo evaluate", formatter_class=HelpFormatter,
        description="Score cell predictions as the OCELOT 2023 challenge does (mF1), with bootstrap CIs and the "
                    "per-organ and per-tissue-region analyses of the challenge paper; with --tissue-maps, the "
                    "predicted tissue at the annotated cells (docs/tissue.md).")
    parser.add_argument("--pred", type=Path, help="folder of <id>.csv (x,y,class,probability) or a GC "
                        "cell_classification.json (needed unless --tissue-maps is given)")
    parser.add_argument("--gt", required=True, type=Path,
                        help="release folder (metadata.json, annotations/) or a GC-format ground-truth JSON")
    parser.add_argument("--split", default="train", help="split of the release folder")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--ids", help="comma-separated pair ids to score (without it: the whole split)")
    which.add_argument("--fold", type=int, help="score only fold K (0-based) of --folds")
    parser.add_argument("--folds", type=Path, help="folds file (without it: <gt>/folds.json)")
    parser.add_argument("--compare", type=Path, help="a second prediction set, reported side by side")
    parser.add_argument("--tissue-maps", type=Path,
                        help="folder written by `tissue-maps`: adds the tissue at the cells (needs a release --gt)")
    parser.add_argument("--out", type=Path, help="write report.json, report.md and plots here")
    parser.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples, 0 for none")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return parser


def _load_truth(args) -> tuple[list[TruthImage], list[str]]:
    """Ground truth as asked, and the ids that image_<i> of a prediction JSON stands for (see `load_predictions`)."""
    ids = [i.strip() for i in args.ids.split(",") if i.strip()] if args.ids else None
    if args.gt.is_dir():
        if args.fold is not None:
            ids = read_folds(args.folds or args.gt / "folds.json", args.fold)[args.fold]
        return load_release(args.gt, args.split, ids), split_ids(args.gt, args.split)
    if args.fold is not None:
        raise EvaluationInputError(f"{args.gt}: --fold needs a release folder as --gt")
    truth = load_gt_json(args.gt)
    image_ids = [t.id for t in truth]
    if ids is not None:
        unknown = sorted(set(ids) - {t.id for t in truth})
        if unknown:
            raise EvaluationInputError(f"{args.gt}: no images {', '.join(unknown[:5])} (ids are image indices)")
        truth = [t for t in truth if t.id in set(ids)]
    return truth, image_ids


def _score_predictions(args, truth: list[TruthImage], image_ids: list[str]) -> dict:
    names = [args.pred.name, args.compare.name if args.compare else None]
    if names[0] == names[1]:
        names = [str(args.pred), str(args.compare)]
    preds = load_predictions(args.pred, truth, image_ids, names[0])
    compare = load_predictions(args.compare, truth, image_ids, names[1]) if args.compare else None
    for run in (preds, compare):
        if run is not None and run.missing_ids:
            print(f"warning: {run.name}: {len(run.missing_ids)} of {len(truth)} ids have no predictions (no "
                  f"<id>.csv, or past the JSON's last image_<i>: was it made for these pairs?) and are scored as "
                  f"none: {', '.join(run.missing_ids[:10])}", file=sys.stderr)
    return evaluate_dataset(truth, preds, compare, bootstrap=args.bootstrap, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    """`evaluate` command: prints a summary, writes the report into --out; 2 on bad arguments or input files."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    problem = ("--bootstrap must be >= 0" if args.bootstrap < 0 else
               "--pred or --tissue-maps is needed" if args.pred is None and args.tissue_maps is None else
               "--compare needs --pred" if args.pred is None and args.compare is not None else
               "--tissue-maps needs a release folder as --gt" if args.tissue_maps and not args.gt.is_dir() else None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        truth, image_ids = _load_truth(args)
        report = _score_predictions(args, truth, image_ids) if args.pred else {
            "settings": report_settings(truth, args.bootstrap, args.seed), "runs": []}
        if args.tissue_maps:
            from .tissue_eval import evaluate_tissue_maps

            report["tissue_at_cells"] = evaluate_tissue_maps(truth, args.tissue_maps, args.bootstrap, args.seed)
    except EvaluationInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report["settings"]["sources"] = {"gt": str(args.gt), "split": args.split if args.gt.is_dir() else None,
                                     "pred": str(args.pred) if args.pred else None,
                                     "compare": str(args.compare) if args.compare else None,
                                     "tissue_maps": str(args.tissue_maps) if args.tissue_maps else None}
    print(format_summary(report))
    if args.out:
        try:
            written = write_report(report, args.out)
        except OSError as err:
            print(f"error: {args.out}: cannot write the report ({err})", file=sys.stderr)
            return 2
        print(f"wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0
