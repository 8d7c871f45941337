"""Tissue at the cells: how well the predicted cancer area classes the annotated cells, out-of-fold.

Per pair the input is the predicted p(cancer area) of the tissue branch on the cell grid, cropped as inference crops
it (`predictor.cancer_on_cell_grid`: 0.5 where the cell field of view reaches past the tissue patch), and, where
known, on the tissue grid (the whole tissue patch). "Predicted cancer area" is p > 0.5. Measured at the annotated
cells (each read at the cell-grid pixel holding it) and on the tissue annotation (unknown, label 255, ignored):

- classed by tissue: every annotated cell becomes a prediction at its own position, TC where p > 0.5 else BC, with
  the probability of its class; scored by the challenge metric against the annotation, so detection is perfect and
  only the class decision by the tissue counts. "Classed by the annotated tissue" (1 on cancer area, 0 on
  background, 0.5 elsewhere) is the same with a perfect tissue branch: the ceiling;
- accuracy at the cells: at annotated cells on known tissue, whether p > 0.5 where the annotation says cancer area;
- BC on predicted BG, TC on predicted CA: the share of annotated BC (TC) cells where p <= 0.5 (> 0.5);
- AUC of p at the cells, threshold-free: against the annotated tissue (cells on known tissue) and against the
  annotated cell class (all cells);
- cancer-area Dice (pooled over pairs) inside the cell field of view (cell grid) and on the whole tissue patch
  (tissue grid, the annotation read at each grid pixel's centre).

Everything is reported overall, per fold and per organ, with percentile bootstrap CIs over pairs. `tissue-maps`
(`main_maps`) writes the out-of-fold maps of the shipped members; `evaluate --tissue-maps` reads them, and
`ensemble` measures the same on its runs' validation maps.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli import HelpFormatter
from .evaluation import (BG, CA, CLASS_NAMES, UNKNOWN, EvaluationInputError, TruthImage, _class_section, _interval,
                         _table, _value, bootstrap_weights, count_matches_per_image, read_folds, tissue_mask_on_grid,
                         tissue_regions)
from .files import replace_atomically
from .geometry import PATCH_SIZE, TTA_MODES

log = logging.getLogger("ocelot_algo.tissue_eval")

MAPS_FILE = "tissue_maps_fold{fold}.npz"
RATIOS = ("accuracy_at_cells", "BC_on_predicted_BG", "TC_on_predicted_CA", "dice_fov", "dice_patch")
AUCS = ("auc_tissue", "auc_class")
LABELS = {"classed_by_tissue": "classed by the predicted tissue: mF1",
          "classed_by_annotated_tissue": "classed by the annotated tissue (ceiling): mF1",
          "accuracy_at_cells": "tissue accuracy at the cells",
          "BC_on_predicted_BG": "BC on predicted BG", "TC_on_predicted_CA": "TC on predicted CA",
          "auc_tissue": "AUC of p(CA) at the cells vs annotated tissue",
          "auc_class": "AUC of p(CA) at the cells vs cell class (TC)",
          "dice_fov": "cancer-area Dice, cell field of view", "dice_patch": "cancer-area Dice, whole tissue patch"}
SHORT_NAMES = {"classed_by_tissue": "mF1 by tissue", "accuracy_at_cells": "accuracy", "BC_on_predicted_BG": "BC on pBG",
               "TC_on_predicted_CA": "TC on pCA", "auc_tissue": "AUC tissue", "auc_class": "AUC class",
               "dice_fov": "Dice FOV", "dice_patch": "Dice patch"}


@dataclass
class PairMeasures:
    """One pair's counts, summed over pairs (and bootstrap resamples) before any ratio is taken."""

    by_tissue: np.ndarray  # (2, 3) TP/FP/FN of the cells classed by the predicted tissue
    by_annotation: np.ndarray  # (2, 3) the same classed by the annotated tissue
    ratios: np.ndarray  # (len(RATIOS), 3) numerator, denominator, cells or pixels; a Dice's is 2 |P & T|, |P| + |T|
    p: np.ndarray  # (n,) p(cancer area) at each annotated cell
    tissue: np.ndarray  # (n,) annotated tissue at each cell: BG, CA or UNKNOWN
    cls: np.ndarray  # (n,) annotated cell class 1 or 2


def classed_by(cells: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The annotated cells as predictions (n, 4): TC where p > 0.5 else BC, the probability that of the class."""
    tumour = p > 0.5
    return np.c_[cells[:, :2], np.where(tumour, 2, 1), np.where(tumour, p, 1 - p)].reshape(-1, 4)


def _dice_counts(predicted: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """2 |P & T|, |P| + |T| and the pixel count over the pixels of known tissue."""
    known = (labels == BG) | (labels == CA)
    truth, predicted = labels[known] == CA, predicted[known]
    return 2.0 * (truth & predicted).sum(), float(truth.sum() + predicted.sum()), float(known.sum())


def measure_pair(pair: TruthImage, cancer_cell: np.ndarray, cancer_tissue: np.ndarray | None = None) -> PairMeasures:
    """The pair's measures from p(cancer area) on the cell grid (S, S), cropped as inference does, and on the
    tissue grid (T, T) when known (else the whole-patch Dice counts are 0 / 0)."""
    mask = pair.tissue_mask()
    cells = pair.cells.reshape(-1, 3)
    size = cancer_cell.shape[-1]
    grid = np.clip(np.floor((cells[:, :2] + 0.5) * size / PATCH_SIZE).astype(np.int64), 0, size - 1)
    p = cancer_cell[grid[:, 1], grid[:, 0]].astype(np.float64)
    tissue = tissue_regions(cells[:, :2], pair.box, mask)
    cls = cells[:, 2].astype(np.int64)
    known = tissue != UNKNOWN
    predicted_ca = p > 0.5
    annotated_p = np.select([tissue == CA, tissue == BG], [1.0, 0.0], 0.5)
    by_tissue, by_annotation = count_matches_per_image([classed_by(cells, p), classed_by(cells, annotated_p)],
                                                       [cells, cells])
    centres = (np.arange(size) + 0.5) * PATCH_SIZE / size - 0.5  # cell-patch pixels whose centre is the grid's
    xx, yy = np.meshgrid(centres, centres)
    fov_labels = tissue_regions(np.c_[xx.ravel(), yy.ravel()], pair.box, mask)
    dice_fov = _dice_counts(cancer_cell.ravel() > 0.5, fov_labels)
    dice_patch = (0.0, 0.0, 0.0) if cancer_tissue is None else _dice_counts(
        cancer_tissue.ravel() > 0.5, tissue_mask_on_grid(mask, cancer_tissue.shape[-1]).ravel())
    at_cells = [[(predicted_ca[known] == (tissue[known] == CA)).sum(), known.sum()],
                [(~predicted_ca[cls == 1]).sum(), (cls == 1).sum()], [predicted_ca[cls == 2].sum(), (cls == 2).sum()]]
    ratios = np.array([[num, den, den] for num, den in at_cells] + [dice_fov, dice_patch], dtype=np.float64)
    return PairMeasures(by_tissue, by_annotation, ratios, p, tissue, cls)


# ------------------------------------------------------------------------------------------------ aggregation


def weighted_auc(scores: np.ndarray, positive: np.ndarray, image: np.ndarray, image_weights: np.ndarray
                 ) -> np.ndarray:
    """AUC (ties count one half) of `scores` separating positive from negative samples, for each row of image
    weights (B, n_images): the Mann-Whitney statistic with each sample counted as often as its image (`image`, per
    sample) is drawn; 0.5 where one class is empty.

    A pair (positive of image i, negative of image j) is counted w_i w_j times, so with C[i, j] the pairs won by
    image i's positives over image j's negatives, AUC = w C w / ((w . positives) (w . negatives)): C is counted
    once and every resample is a matrix product."""
    n = image_weights.shape[1]
    pos_scores, pos_image = scores[positive], image[positive]
    won = np.zeros((n, n))
    for j in np.unique(image[~positive]):
        negatives = np.sort(scores[~positive & (image == j)])
        below = np.searchsorted(negatives, pos_scores, "left")
        ties = np.searchsorted(negatives, pos_scores, "right") - below
        won[:, j] = np.bincount(pos_image, weights=below + 0.5 * ties, minlength=n)
    num = ((image_weights @ won) * image_weights).sum(1)
    den = (image_weights @ np.bincount(pos_image, minlength=n)) * (image_weights @ np.bincount(image[~positive],
                                                                                                 minlength=n))
    return np.divide(num, den, out=np.full(len(image_weights), 0.5), where=den > 0)


def _ratio(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _entry(value: float, samples: np.ndarray | None, n: int) -> dict:
    entry = {"value": float(value), "n": int(n)}
    if samples is not None:
        entry["ci"] = _interval(samples)
    return entry


def summarise(pairs: list[PairMeasures], weights: np.ndarray | None) -> dict:
    """The measures of a group of pairs; CIs from the bootstrap weights (B, len(pairs)) when given."""
    section = {"n_images": len(pairs)}
    for key, counts in (("classed_by_tissue", np.stack([m.by_tissue for m in pairs])),
                        ("classed_by_annotated_tissue", np.stack([m.by_annotation for m in pairs]))):
        section[key], _ = _class_section(counts, weights)
    ratios = np.stack([m.ratios for m in pairs])  # (pairs, measures, 3)
    totals = ratios.sum(0)
    resampled = None if weights is None else np.einsum("bi,imk->bmk", weights, ratios)
    for k, name in enumerate(RATIOS):
        samples = None if resampled is None else _ratio(resampled[:, k, 0], resampled[:, k, 1])
        section[name] = _entry(_ratio(totals[k, 0], totals[k, 1]), samples, totals[k, 2])
    image = np.repeat(np.arange(len(pairs)), [len(m.p) for m in pairs])
    p, tissue, cls = (np.concatenate([getattr(m, f) for m in pairs]) for f in ("p", "tissue", "cls"))
    for name, use, positive in (("auc_tissue", tissue != UNKNOWN, tissue == CA), ("auc_class", cls > 0, cls == 2)):
        args = p[use], positive[use], image[use]
        value = weighted_auc(*args, np.ones((1, len(pairs))))[0]
        samples = None if weights is None else weighted_auc(*args, weights)
        section[name] = _entry(value, samples, use.sum())
    return section


def tissue_report(truth: list[TruthImage], pairs: list[PairMeasures], folds: list[int] | None, name: str,
                  bootstrap: int = 10_000, seed: int = 0) -> dict:
    """{"name", "overall", "folds" (by the fold each pair was held out of, where known), "organs"}; each group is
    resampled on its own (its own bootstrap weights), as the per-organ scores of `evaluation.evaluate_dataset`."""
    rng = np.random.default_rng(seed)

    def group(members: np.ndarray) -> dict:
        weights = bootstrap_weights(len(members), bootstrap, rng) if bootstrap > 0 else None
        return summarise([pairs[i] for i in members], weights)

    report = {"name": name, "bootstrap_iterations": bootstrap, "seed": seed,
              "overall": group(np.arange(len(pairs))), "folds": {}, "organs": {}}
    if folds is not None:
        for fold in sorted(set(folds)):
            report["folds"][str(fold)] = group(np.flatnonzero(np.asarray(folds) == fold))
    if all(t.organ is not None for t in truth):
        for organ in sorted({t.organ for t in truth}):
            report["organs"][organ] = group(np.array([i for i, t in enumerate(truth) if t.organ == organ]))
    if all(m.ratios[RATIOS.index("dice_patch"), 2] == 0 for m in pairs):  # no tissue-grid maps: not measured
        for section in [report["overall"], *report["folds"].values(), *report["organs"].values()]:
            section.pop("dice_patch")
    return report


# -------------------------------------------------------------------------------------------------- writing


def _cell(entry: dict) -> str:
    return _value(entry["value"], entry.get("ci"))


def _mf1(section: dict, key: str = "classed_by_tissue") -> dict:
    scored = section[key]
    return {"value": scored["mF1"], **({"ci": scored["mF1_ci"]} if "mF1_ci" in scored else {})}


def headline(section: dict) -> dict[str, dict]:
    """{measure: {"value", "ci"?}} of a group, in the order of the tables and the plot."""
    values = {"classed_by_tissue": _mf1(section)}
    values.update((name, section[name]) for name in (*RATIOS[:3], *AUCS, *RATIOS[3:]) if name in section)
    return values


def format_markdown(report: dict) -> list[str]:
    """The section's Markdown lines: the measures overall, then per fold and per organ."""
    overall = report["overall"]
    ci = (f"95% CIs: percentile bootstrap over pairs, {report['bootstrap_iterations']} resamples, seed "
          f"{report['seed']}, each group resampled on its own." if report["bootstrap_iterations"] else "No CIs.")
    lines = ["## Tissue at the cells", "",
             f"The predicted cancer area (p > 0.5) of {report['name']} at the {overall['auc_class']['n']} annotated "
             f"cells of {overall['n_images']} pairs, out-of-fold. Classed by tissue: each annotated cell becomes a "
             "prediction at its own position, TC on predicted cancer area, else BC, scored by the challenge metric "
             "(perfect detection: only the class decision by tissue counts). Accuracy and the tissue AUC count the "
             "cells on known tissue; Dice leaves unknown tissue out. " + ci, ""]
    rows = []
    for name, entry in headline(overall).items():
        n = entry.get("n", overall["auc_class"]["n"])
        rows.append([LABELS[name], _cell(entry), str(n)])
        if name == "classed_by_tissue":
            for cls in CLASS_NAMES:
                scored = overall[name][cls]
                rows.append([f"… {cls} F1", _value(scored["f1"], scored.get("f1_ci")), ""])
            rows.append([LABELS["classed_by_annotated_tissue"], _cell(_mf1(overall, "classed_by_annotated_tissue")),
                         str(n)])
    lines += _table(["measure", "value (95% CI)", "cells / pixels"], rows) + [""]
    names = list(headline(overall))
    for title, groups in (("Per fold (the fold each pair was held out of)", report["folds"]),
                          ("Per organ", report["organs"])):
        if groups:
            rows = [[key, str(section["n_images"]), *(_cell(e) for e in headline(section).values())]
                    for key, section in groups.items()]
            lines += [f"### {title}", ""] + _table(["group", "pairs", *(SHORT_NAMES[n] for n in names)], rows) + [""]
    return lines


def format_summary(report: dict) -> str:
    o = report["overall"]
    return (f"tissue at the cells ({report['name']}): mF1 classed by tissue {_cell(_mf1(o))}, accuracy "
            f"{_cell(o['accuracy_at_cells'])}, BC on predicted BG {_cell(o['BC_on_predicted_BG'])}, TC on predicted "
            f"CA {_cell(o['TC_on_predicted_CA'])}, AUC {_cell(o['auc_tissue'])}, Dice FOV {_cell(o['dice_fov'])}")


# ------------------------------------------------------------------------------------------- out-of-fold maps


@dataclass
class TissueMaps:
    """Predicted p(cancer area) on the tissue grid per pair, and the fold each pair's member held out."""

    cancer: dict[str, np.ndarray]  # pair id -> (T, T)
    fold: dict[str, int]
    cell_size: int  # the members' cell grid: where inference crops the map to
    tta: str
    members: list[str]


def read_tissue_maps(folder: Path) -> TissueMaps:
    """Every tissue_maps_fold<K>.npz of a folder written by `tissue-maps`; one-line errors naming the file."""
    folder = Path(folder)
    files = sorted(folder.glob(MAPS_FILE.format(fold="*")))
    if not files:
        raise EvaluationInputError(f"{folder}: no {MAPS_FILE.format(fold='<K>')} (written by `tissue-maps`)")
    cancer, fold, settings, members = {}, {}, set(), []
    for path in files:
        try:
            with np.load(path) as data:
                ids, maps = [str(i) for i in data["ids"]], data["cancer"]
                settings.add((int(data["cell_size"]), str(data["tta"])))
                members.append(str(data["member"]))
                k = int(data["fold"])
        except (OSError, ValueError, KeyError) as err:
            raise EvaluationInputError(f"{path}: not a tissue-maps file ({err})") from None
        if maps.ndim != 3 or len(maps) != len(ids):
            raise EvaluationInputError(f"{path}: expected one (T, T) map per id, got {maps.shape} for {len(ids)} ids")
        clash = next((i for i in ids if i in cancer), None)
        if clash is not None:
            raise EvaluationInputError(f"{path}: pair {clash} is also in another fold's file")
        cancer.update(zip(ids, maps.astype(np.float32)))
        fold.update((i, k) for i in ids)
    if len(settings) > 1:
        raise EvaluationInputError(f"{folder}: the files were made with different cell grids or TTA: {sorted(settings)}")
    cell_size, tta = settings.pop()
    return TissueMaps(cancer, fold, cell_size, tta, members)


def measure_maps(truth: list[TruthImage], maps: TissueMaps, source: Path) -> list[PairMeasures]:
    """Measures of every truth pair from its tissue-grid map (cropped to the cell grid as inference crops it)."""
    from .predictor import cancer_on_cell_grid

    missing = [t.id for t in truth if t.id not in maps.cancer]
    if missing:
        raise EvaluationInputError(f"{source}: no tissue map for {len(missing)} of the {len(truth)} pairs, e.g. "
                                   f"{', '.join(missing[:5])} (made for other pairs?)")
    measures = []
    for pair in truth:
        c = maps.cancer[pair.id]
        measures.append(measure_pair(pair, cancer_on_cell_grid(np.stack([1 - c, c]), pair.box, maps.cell_size), c))
    return measures


def evaluate_tissue_maps(truth: list[TruthImage], folder: Path, bootstrap: int = 10_000, seed: int = 0) -> dict:
    """The tissue-at-the-cells section of `evaluate --tissue-maps` for the truth pairs."""
    maps = read_tissue_maps(folder)
    measures = measure_maps(truth, maps, folder)
    report = tissue_report(truth, measures, [maps.fold[t.id] for t in truth], f"{', '.join(maps.members)} "
                           f"(tta {maps.tta})", bootstrap, seed)
    return {"source": str(folder), "tta": maps.tta, **report}


def _maps_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ocelot_algo tissue-maps", formatter_class=HelpFormatter,
        description="Out-of-fold cancer-area maps of the members' tissue branch: member fold<K> (trained with fold K "
                    "held out) on fold K's pairs, for `evaluate --tissue-maps`. Writes tissue_maps_fold<K>.npz "
                    "(float16 maps on the tissue grid); they derive from the licensed data: never commit them.")
    parser.add_argument("--weights", default="weights", type=Path, help="weights folder with the fold members")
    parser.add_argument("--data", required=True, type=Path, help="release folder (images/, metadata.json)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the maps")
    parser.add_argument("--folds", type=Path, help="folds file (without it: <data>/folds.json)")
    parser.add_argument("--member", default="fold{}", help="member name of fold K, {} standing for K")
    parser.add_argument("--tta", default="all8", choices=sorted(TTA_MODES),
                        help="test-time augmentation of the tissue branch")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when available, else the CPU")
    parser.add_argument("--split", default="train", help="split of the release folder")
    return parser


def main_maps(argv: list[str] | None = None) -> int:
    from .pipeline import exit_code
    from .train import USER_ERRORS

    args = _maps_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    return exit_code(lambda: write_tissue_maps(args), USER_ERRORS)


def _save_npz(path: Path, arrays: dict) -> None:
    with open(path, "wb") as handle:  # a file object: np.savez would append .npz to a temporary file's name
        np.savez_compressed(handle, **arrays)


def write_tissue_maps(args: argparse.Namespace) -> None:
    from .inputs import open_inputs
    from .predictor import Predictor, select_device
    from .weights import MANIFEST, WeightsError, load_member

    folds = read_folds(args.folds or args.data / "folds.json")
    manifest = args.weights / MANIFEST
    try:
        sha256 = json.loads(manifest.read_text()).get("sha256", {}) if manifest.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise WeightsError(f"{manifest}: cannot read ({err})") from None
    device = select_device(args.device)
    members = {}
    for k in range(len(folds)):  # all first: a missing or cell-only member is found before the long run
        name = args.member.format(k)
        members[k] = load_member(args.weights, name, device, sha256.get(name))
        if members[k].tissue is None:
            raise WeightsError(f"{args.weights / name}.json: member {name} has no tissue branch")
    args.out.mkdir(parents=True, exist_ok=True)
    with open_inputs(args.data, split=args.split) as inputs:
        index = {name: i for i, name in enumerate(inputs.pair_names)}
        absent = [i for ids in folds for i in ids if i not in index]
        if absent:
            raise EvaluationInputError(f"{args.data}: pairs {', '.join(absent[:5])} of the folds are not in split "
                                       f"{args.split!r}")
        for k, ids in enumerate(folds):
            name, member = args.member.format(k), members[k]
            predictor = Predictor([member], tta=args.tta, device=device)
            start = time.perf_counter()
            maps = np.stack([predictor.tissue_probabilities(inputs.read(index[i]).tissue)[1] for i in sorted(ids)])
            path = args.out / MAPS_FILE.format(fold=k)
            arrays = {"ids": np.array(sorted(ids)), "cancer": maps.astype(np.float16), "fold": k, "member": name,
                      "tta": args.tta, "cell_size": member.config.cell_size}
            replace_atomically(path, lambda temp: _save_npz(temp, arrays))
            log.info("fold %d: %s on %d pairs (tta %s) in %.0f s -> %s", k, name, len(ids), args.tta,
                     time.perf_counter() - start, path)
