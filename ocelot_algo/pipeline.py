"""`python process.py` / `python -m ocelot_algo predict`: read -> predict -> points -> write, for a folder of pairs.

Everything is checked before the first pair (inputs, device, output folder, then weights), so bad input fails
fast and writes nothing. While the network works on pair i, a reader thread fetches pair i+1 and a second thread
turns pair i-1's probabilities into points, so on a busy device almost all wall time is spent in forward passes.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .cli import DocstringHelpFormatter
from .geometry import TTA_MODES
from .inputs import InputError, log_environment, open_inputs
from .output import OutputError, PointsWriter
from .predictor import DeviceError, Predictor, select_device
from .weights import WeightsError, load_ensemble, resolve_weights_dir

log = logging.getLogger("ocelot_algo")
USER_ERRORS = (InputError, OutputError, WeightsError, DeviceError)  # reported as one line, exit code 2


@dataclass
class RunReport:
    """Where the time went; `bench` prints it, `predict` logs a summary."""

    pairs: int = 0
    cells: int = 0
    device: str = ""
    tta: str = ""  # the views used: --tta or the manifest's
    startup_s: float = 0.0  # opening inputs and loading weights
    wall_s: float = 0.0  # first pair to output written
    stages: dict = field(default_factory=dict)  # seconds summed over pairs
    per_pair: list = field(default_factory=list)  # {"read": s, "points": s, "forward": s, ...} per pair
    output: str = ""


def predict(input_dir: str | Path, output_dir: str | Path, *, weights: str | Path | None = None, device: str = "auto",
            tta: str | None = None, members: int | None = None, split: str = "test", progress: bool = True) -> RunReport:
    started = time.perf_counter()
    with open_inputs(input_dir, split=split) as inputs:
        device = select_device(device)
        log_environment(input_dir, device)
        writer = PointsWriter(output_dir, inputs.layout, inputs.pair_names)
        weights_dir = resolve_weights_dir(weights)
        ensemble = load_ensemble(weights_dir, device, members)
        tta = tta or ensemble.tta
        predictor = Predictor.from_ensemble(ensemble, device, tta)
        log.info("weights %s: %s, tta %s (%d views), %s", weights_dir, ", ".join(ensemble.names), tta,
                 len(predictor.views), "trained" if ensemble.manifest.get("trained") else "UNTRAINED (placeholder weights)")
        report = RunReport(device=str(device), tta=tta, startup_s=time.perf_counter() - started)
        _run_pairs(inputs, predictor, writer, report, progress)
    log.info("%d pairs, %d cells in %.1f s (%.2f s/pair) -> %s", report.pairs, report.cells, report.wall_s,
             report.wall_s / max(report.pairs, 1), report.output)
    return report


def _run_pairs(inputs, predictor: Predictor, writer: PointsWriter, report: RunReport, progress: bool) -> None:
    """Pair i on the device while pair i+1 is read and resized and pair i-1 turned into points; then the output is
    written."""
    loop_start = time.perf_counter()
    n = len(inputs)
    per_pair = [dict() for _ in range(n)]

    def read(i):
        """Pair i from disk, resized to the network's grids here, off the device's thread."""
        t0 = time.perf_counter()
        pair = inputs.read(i)
        t1 = time.perf_counter()
        grids = predictor.grids(pair.cell, pair.tissue)
        per_pair[i]["read"], per_pair[i]["resize"] = t1 - t0, time.perf_counter() - t1
        return pair.box, grids

    def to_points(i, probs, tissue_probs, box):
        t = time.perf_counter()
        cells = predictor.points(probs, tissue_probs, box)
        writer.add(i, cells.x, cells.y, cells.cls, cells.probability)
        per_pair[i]["points"] = time.perf_counter() - t
        return len(cells)

    with ThreadPoolExecutor(1, "reader") as reader, ThreadPoolExecutor(1, "points") as post:
        pending, counts = deque(), []
        next_pair = reader.submit(read, 0) if n else None
        for i in progress_bar(range(n), progress, desc="pairs", unit="pair", mininterval=5):
            box, (cell_grid, tissue_grid) = next_pair.result()
            if i + 1 < n:
                next_pair = reader.submit(read, i + 1)
            before = dict(predictor.timings)
            probs, tissue_probs = predictor.probabilities_on_grids(cell_grid, tissue_grid, box)
            per_pair[i].update({k: v - before.get(k, 0.0) for k, v in predictor.timings.items()})
            pending.append(post.submit(to_points, i, probs, tissue_probs, box))
            if i == 0 and predictor.device.type == "cpu":
                warn_if_slow(time.perf_counter() - loop_start, n)
            while len(pending) > 2:  # bounded: memory must not grow with the number of pairs
                counts.append(pending.popleft().result())
        counts.extend(f.result() for f in pending)
    t = time.perf_counter()
    report.output = str(writer.finish())
    report.pairs, report.cells, report.per_pair = n, sum(counts), per_pair
    report.stages = {k: sum(p.get(k, 0.0) for p in per_pair) for k in sorted({k for p in per_pair for k in p})}
    report.stages["write"] = time.perf_counter() - t
    report.wall_s = time.perf_counter() - loop_start


SLOW_RUN_MINUTES = 15  # Grand-Challenge's jobs have a time limit (20 min by default)


def warn_if_slow(first_pair_s: float, pairs: int) -> None:
    """Said after the first pair, not found out at the time limit: the full ensemble on a CPU takes ~30 s a pair."""
    minutes = first_pair_s * pairs / 60
    if minutes > SLOW_RUN_MINUTES:
        log.warning("on the CPU this run will take about %.0f min (%d pairs, %.0f s for the first); a GPU, or fewer "
                    "members and views (--members, --tta), is much faster", minutes, pairs, first_pair_s)


def progress_bar(iterable, enabled: bool, **tqdm_options):
    """A tqdm bar over `iterable` on a terminal (imported only then), progress log lines when stderr is a file or a
    pipe (where the bar's carriage returns would make one endless line), or the iterable itself."""
    if not enabled:
        return iterable
    if not sys.stderr.isatty():
        return LoggedProgress(iterable, tqdm_options.get("desc", ""), tqdm_options.get("unit", "it"),
                              tqdm_options.get("initial", 0), tqdm_options.get("total"))
    from tqdm import tqdm

    return tqdm(iterable, **tqdm_options)


class LoggedProgress:
    """Iterates like a tqdm bar (with `set_postfix`) but logs a line at most once a minute and at the end."""

    def __init__(self, iterable, desc: str, unit: str, initial: int = 0, total: int | None = None,
                 every_s: float = 60.0):
        self.iterable, self.desc, self.unit, self.every_s = iterable, desc, unit, every_s
        self.initial = initial
        self.total = total if total is not None else initial + len(iterable)
        self.postfix = ""

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = " ".join(f"{key}={value}" for key, value in values.items())

    def __iter__(self):
        start = last = time.perf_counter()
        for done, item in enumerate(self.iterable, self.initial + 1):
            yield item
            now = time.perf_counter()
            if now - last >= self.every_s or done == self.total:
                last, rate = now, (now - start) / (done - self.initial)
                left = rate * (self.total - done)
                log.info("%s: %d/%d %ss, %.2f s per %s, %s left%s", self.desc, done, self.total, self.unit, rate,
                         self.unit, f"{left / 60:.0f} min" if left >= 120 else f"{left:.0f} s",
                         f"; {self.postfix}" if self.postfix else "")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which weights, on which device, with which TTA: the same four options for predict, bench and overlay."""
    parser.add_argument("--weights", default=None,
                        help="weights folder with manifest.json (without it: /opt/ml/model when it holds one, else weights/)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA when available, else the CPU")
    parser.add_argument("--tta", default=None, choices=sorted(TTA_MODES), help="override the manifest's test-time augmentation")
    parser.add_argument("--members", type=int, default=None, help="use only the first N ensemble members (faster)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default="/input", help="Grand-Challenge input folder or a release folder")
    parser.add_argument("--output", default="/output", help="folder for cell_classification.json")
    add_model_arguments(parser)
    parser.add_argument("--split", default="test", help="split to read from a release folder (images/<split>/...)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None, prog: str = "python -m ocelot_algo predict") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=DocstringHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    # the log on stdout, errors alone on stderr: Grand-Challenge shows a job's stderr as warnings
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    return exit_code(lambda: predict(args.input, args.output, weights=args.weights, device=args.device, tta=args.tta,
                                     members=args.members, split=args.split, progress=not args.quiet))


def exit_code(command: Callable[[], object], user_errors: tuple = USER_ERRORS) -> int:
    """0 when `command()` finishes; a user error is one line on stderr and exit code 2, not a traceback."""
    try:
        command()
    except user_errors as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
