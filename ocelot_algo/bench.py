"""`python -m ocelot_algo bench`: where the time and memory of a prediction run go.

Generates a synthetic Grand-Challenge input of --pairs pairs (in a child process, so its memory is not
counted), runs the real pipeline on it and prints JSON: per-pair time of each stage, the share of wall time
spent inside forward passes, import and start-up time (and their sum, the wait before the first pair), peak resident memory and the device.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cli import DocstringHelpFormatter
from .geometry import TTA_MODES
from .pipeline import add_model_arguments, exit_code, predict

FORWARD_STAGES = ("tissue_forward", "cell_forward")


def _seconds_to_import() -> float:
    """Interpreter start plus every import the entrypoint makes, in a fresh process, until it says it is ready.

    Not until it exits: tearing torch down again takes another second or more, after the work, not before it."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", "import ocelot_algo.pipeline; print('ready', flush=True)"],
                             stdout=subprocess.PIPE, text=True)
    ready = child.stdout.readline().strip() == "ready"
    seconds = time.perf_counter() - start
    if child.wait() != 0 or not ready:
        raise SystemExit("error: importing ocelot_algo.pipeline failed")
    return seconds


def _gflop_per_pair(weights: str | None, members: int | None, tta: str | None) -> float:
    """Arithmetic of one pair (every member, every view) as torch counts it: the basis for estimating other devices."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .model import TISSUE_CLASSES
    from .weights import load_ensemble, resolve_weights_dir

    ensemble = load_ensemble(resolve_weights_dir(weights), members=members)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        for member in ensemble.members:
            cell, tissue = member.config.cell_size, member.config.tissue_size
            crop = None
            if member.config.uses_tissue:
                member.tissue_logits(torch.zeros(1, 3, tissue, tissue))
                crop = torch.zeros(1, len(TISSUE_CLASSES), cell, cell)
            member.cell_logits(torch.zeros(1, 3, cell, cell), crop)
    return counter.get_total_flops() * len(TTA_MODES[tta or ensemble.tta]) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocelot_algo bench", description=__doc__,
                                     formatter_class=DocstringHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4, help="synthetic pairs to time")
    add_model_arguments(parser)
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    return exit_code(lambda: _bench(args))


def _bench(args: argparse.Namespace) -> None:
    import_s = _seconds_to_import()
    with tempfile.TemporaryDirectory(prefix="ocelot-bench-") as tmp:
        sample, out = Path(tmp) / "input", Path(tmp) / "output"
        subprocess.run([sys.executable, "-m", "ocelot_algo", "make-sample", "--out", str(sample),
                        "--pairs", str(args.pairs), "--seed", "1"], check=True, stdout=subprocess.DEVNULL)
        report = predict(sample, out, weights=args.weights, device=args.device, tta=args.tta, members=args.members,
                         progress=False)

    n = max(report.pairs, 1)
    forward = sum(report.stages.get(k, 0.0) for k in FORWARD_STAGES)
    result = {
        "device": report.device,
        "pairs": report.pairs,
        "tta": report.tta,
        "members": args.members or "all",
        "import_s": round(import_s, 2),
        "startup_s": round(report.startup_s, 2),
        "ready_s": round(import_s + report.startup_s, 2),  # before the first pair: imports, inputs, weights
        "wall_s": round(report.wall_s, 2),
        "wall_per_pair_s": round(report.wall_s / n, 3),
        "forward_share_of_wall": round(forward / report.wall_s, 3) if report.wall_s else None,
        "stage_per_pair_s": {k: round(v / n, 4) for k, v in report.stages.items()},
        "note": "read, resize and points run on their own threads, overlapped with the forward passes",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "gflop_per_pair": round(_gflop_per_pair(args.weights, args.members, args.tta), 1),
        "cells": report.cells,
        "per_pair_s": [{k: round(v, 4) for k, v in p.items()} for p in report.per_pair],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")

