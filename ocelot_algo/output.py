"""Writing and checking `cell_classification.json`, the one output Grand-Challenge scores.

The document must pass two gates, and `validate_document` checks both without jsonschema:
- GC's "Multiple points" (MPOI) JSON schema, applied when the job ends (a failure voids the whole job);
- the OCELOT evaluator's `_check_validity` (lunit-io/ocelot23algo), which is stricter: exactly the keys name,
  point, probability; `image_<digits>` names; int x, y in 0..1023; int class 1 or 2; a *float* probability in
  [0, 1] (so 1 must be written as 1.0, and NaN, which GC reads back as null, is fatal).

Files appear all at once or not at all: everything goes to temporary files in the output folder first and
is renamed into place at the end, `cell_classification.json` last.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np

from .cli import HelpFormatter
from .files import Writer, is_int, write_all_or_nothing
from .geometry import PATCH_SIZE

OUTPUT_NAME = "cell_classification.json"
DOCUMENT_TYPE = "Multiple points"
VERSION = {"major": 1, "minor": 0}
CLASSES = (1, 2)  # 1 = BC background cell, 2 = TC tumour cell
POINT_KEYS = {"name", "point", "probability"}  # the evaluator's exact set (GC also allows "type")
NAME_PATTERN = re.compile(r"image_(0|[1-9][0-9]*)")  # the evaluator's image_[0-9]+, without leading zeros


class OutputError(Exception):
    """The output folder cannot be written; checked before the first pair, so it is not found after the whole run
    (unless the disk fills up meanwhile)."""


class PointsWriter:
    """Collects each pair's cells, then writes the document (and, for the release layout, one CSV per pair)."""

    def __init__(self, output_dir: str | Path, layout: str, pair_names: list[str]):
        if layout not in ("grand-challenge", "release"):
            raise ValueError(f"layout must be 'grand-challenge' or 'release', not {layout!r}")
        self.output_dir = Path(output_dir)
        self.layout = layout
        self.pair_names = list(pair_names)
        self._cells: dict[int, tuple[np.ndarray, ...]] = {}
        self._check_writable()

    def _check_writable(self) -> None:
        """Create the folder and a probe file in it (removed at once): the only sure test of permissions."""
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise OutputError(f"{self.output_dir}: is a file, not a folder for the output")
        if (self.output_dir / OUTPUT_NAME).is_dir():
            raise OutputError(f"{self.output_dir / OUTPUT_NAME}: is a folder; the output file cannot replace it")
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.output_dir):
                pass
        except OSError as error:
            raise OutputError(f"{self.output_dir}: cannot write the output there ({error.strerror or error})") from None

    def add(self, pair: int, xs, ys, classes, probabilities) -> None:
        """Record one pair's cells: x = column, y = row in the cell patch, class 1/2, probability in [0, 1].

        Coordinates are rounded to the nearest pixel. Anything out of range raises ValueError here, naming
        the pair, rather than voiding the whole job at scoring time."""
        if not 0 <= pair < len(self.pair_names):
            raise ValueError(f"pair {pair} out of range 0..{len(self.pair_names) - 1}")
        if pair in self._cells:
            raise ValueError(f"pair {pair} was already added")
        arrays = [np.asarray(a).reshape(-1) for a in (xs, ys, classes, probabilities)]
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(f"pair {pair}: xs, ys, classes, probabilities differ in length "
                             f"({', '.join(str(len(a)) for a in arrays)})")
        xs, ys, classes, probabilities = (a.astype(np.float64) for a in arrays)
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            raise ValueError(f"pair {pair}: non-finite coordinates")
        xs, ys = np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)
        for axis, values in (("x", xs), ("y", ys)):
            if values.size and (values.min() < 0 or values.max() >= PATCH_SIZE):
                raise ValueError(f"pair {pair}: {axis} outside 0..{PATCH_SIZE - 1} "
                                 f"({values.min()}..{values.max()})")
        if not np.isin(classes, CLASSES).all():
            raise ValueError(f"pair {pair}: classes must be {CLASSES}, got {sorted(set(classes.tolist()))}")
        if not ((probabilities >= 0) & (probabilities <= 1)).all():  # False for NaN too
            raise ValueError(f"pair {pair}: probabilities must be finite and in [0, 1]")
        self._cells[pair] = (xs, ys, classes.astype(np.int64), probabilities)

    def document(self) -> dict:
        """The output document, points ordered by pair index, then in the order given; plain Python types."""
        points = []
        for pair in sorted(self._cells):
            xs, ys, classes, probabilities = self._cells[pair]
            name = f"image_{pair}"
            points.extend({"name": name, "point": [x, y, c], "probability": p}
                          for x, y, c, p in zip(xs.tolist(), ys.tolist(), classes.tolist(), probabilities.tolist()))
        return {"type": DOCUMENT_TYPE, "points": points, "version": dict(VERSION)}

    def finish(self) -> Path:
        """Write everything atomically; returns the path of cell_classification.json."""
        document = self.document()
        problems = validate_document(document, len(self.pair_names))
        if problems:  # a bug here, not bad input: add() already checked every value
            raise AssertionError(f"refusing to write an invalid document: {problems[0]}")
        files: list[tuple[str, Writer]] = []
        if self.layout == "release":
            for pair, name in enumerate(self.pair_names):
                files.append((f"{name}.csv", lambda path, pair=pair: _write_text(path, self._csv(pair))))
        files.append((OUTPUT_NAME, lambda path: _write_text(path, _dumps(document))))
        try:
            write_all_or_nothing(self.output_dir, files)
        except OSError as error:  # e.g. a full disk: checked as far as it can be up front, but it can happen
            raise OutputError(f"{self.output_dir}: writing the output failed ({error}); nothing was written") from None
        return self.output_dir / OUTPUT_NAME

    def _csv(self, pair: int) -> str:
        """x,y,class,probability per line (the release's annotation format plus a probability column)."""
        if pair not in self._cells:
            return ""
        xs, ys, classes, probabilities = self._cells[pair]
        return "".join(f"{x},{y},{c},{p!r}\n"
                       for x, y, c, p in zip(xs.tolist(), ys.tolist(), classes.tolist(), probabilities.tolist()))


def _dumps(document: dict) -> str:
    """JSON with one point per line: a third of the size of an indented dump, and still readable."""
    points = ",\n".join(json.dumps(point) for point in document["points"])
    return (f'{{"type": {json.dumps(document["type"])},\n"points": [\n{points}\n],\n'
            f'"version": {json.dumps(document["version"])}}}\n')


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


# ------------------------------------------------------------------------------------------------ validation


def validate_document(doc: object, pair_count: int | None = None, require_points: bool = False) -> list[str]:
    """Every reason GC or the OCELOT evaluator would reject `doc` ([] when valid).

    pair_count: names must be image_0..image_<pair_count - 1> (the evaluator indexes a list with them).
    require_points: every pair must have a point (needs pair_count); a check for tests and smoke runs."""
    if require_points and pair_count is None:
        raise ValueError("require_points needs pair_count")
    if not isinstance(doc, dict):
        return [f"document must be a JSON object, not {_json_type(doc)}"]
    problems = []
    missing = [key for key in ("version", "type", "points") if key not in doc]
    extra = sorted(set(doc) - {"name", "type", "points", "version"})
    if missing:
        problems.append(f"missing key(s): {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected key(s): {', '.join(extra)}")
    if "name" in doc and not isinstance(doc["name"], str):
        problems.append(f"'name' must be a string, not {_json_type(doc['name'])}")
    if "type" in doc and doc["type"] != DOCUMENT_TYPE:
        problems.append(f"'type' must be {DOCUMENT_TYPE!r}, not {doc['type']!r}")
    if "version" in doc:
        problems += _version_problems(doc["version"])
    if "points" not in doc:
        return problems
    if not isinstance(doc["points"], list):
        return problems + [f"'points' must be a list, not {_json_type(doc['points'])}"]
    seen = set()
    for number, point in enumerate(doc["points"]):
        point_problems, pair = _point_problems(point, pair_count)
        problems += [f"points[{number}]: {problem}" for problem in point_problems]
        seen.add(pair)
    if require_points:
        empty = [i for i in range(pair_count) if i not in seen]
        if empty:
            problems.append(f"{len(empty)} pair(s) without points: "
                            f"{', '.join(f'image_{i}' for i in empty[:10])}{' ...' if len(empty) > 10 else ''}")
    return problems


def _version_problems(version: object) -> list[str]:
    if not isinstance(version, dict):
        return [f"'version' must be an object, not {_json_type(version)}"]
    problems = []
    if set(version) != {"major", "minor"}:
        problems.append(f"'version' must have exactly the keys major, minor, not {sorted(version)}")
    for key in ("major", "minor"):
        if key in version and not (is_int(version[key]) and version[key] >= 0):
            problems.append(f"'version.{key}' must be an integer >= 0, not {version[key]!r}")
    return problems


def _point_problems(point: object, pair_count: int | None) -> tuple[list[str], int | None]:
    """The problems of one point, and its pair index when its name is valid."""
    if not isinstance(point, dict):
        return [f"must be an object, not {_json_type(point)}"], None
    problems = []
    if set(point) != POINT_KEYS:
        problems.append(f"keys must be exactly name, point, probability, not {', '.join(sorted(point))}")
    pair = None
    name = point.get("name")
    if "name" in point:
        match = NAME_PATTERN.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            problems.append(f"name must be 'image_<index>', not {name!r}")
        else:
            pair = int(match.group(1))
            if pair_count is not None and pair >= pair_count:
                problems.append(f"name {name!r}: there are only {pair_count} pairs (image_0..image_{pair_count - 1})")
                pair = None
    if "point" in point:
        xyc = point["point"]
        if not (isinstance(xyc, list) and len(xyc) == 3):
            problems.append(f"point must be a list [x, y, class], not {xyc!r}")
        else:
            for axis, value in zip("xy", xyc[:2]):
                if not (is_int(value) and 0 <= value < PATCH_SIZE):
                    problems.append(f"{axis} must be an integer in 0..{PATCH_SIZE - 1}, not {value!r}")
            if not (is_int(xyc[2]) and xyc[2] in CLASSES):
                problems.append(f"class must be the integer 1 or 2, not {xyc[2]!r}")
    if "probability" in point:
        p = point["probability"]
        if not (type(p) is float and math.isfinite(p) and 0 <= p <= 1):
            why = " (NaN/Infinity, which GC reads as null)" if type(p) is float and not math.isfinite(p) else ""
            problems.append(f"probability must be a float in [0, 1], not {p!r}{why}")
    return problems, pair


def _json_type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def main_validate(argv: list[str] | None = None) -> int:
    """`python -m ocelot_algo validate FILE [--pairs N] [--require-points]`: 0 when valid, 1 when not."""
    parser = argparse.ArgumentParser(prog="python -m ocelot_algo validate", formatter_class=HelpFormatter,
                                     description="Check an output file against GC's schema and the OCELOT "
                                                 "evaluator's rules.")
    parser.add_argument("file", type=Path, help="a cell_classification.json to check against the schema")
    parser.add_argument("--pairs", type=int, help="number of pairs in the input: names must be image_0..N-1")
    parser.add_argument("--require-points", action="store_true", help="every pair must have a point")
    args = parser.parse_args(argv)
    if args.require_points and args.pairs is None:
        parser.error("--require-points needs --pairs")
    try:
        doc = json.loads(args.file.read_bytes())
    except OSError as error:
        print(f"{args.file}: cannot read ({error.strerror})")
        return 1
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        print(f"{args.file}: not valid JSON ({error})")
        return 1
    problems = validate_document(doc, args.pairs, args.require_points)
    shown = 20
    for problem in problems[:shown]:
        print(f"{args.file}: {problem}")
    if len(problems) > shown:
        print(f"{args.file}: ... and {len(problems) - shown} more problems")
    if problems:
        return 1
    print(f"{args.file}: valid ({len(doc['points'])} points)")
    return 0
