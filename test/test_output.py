"""The output document: what PointsWriter writes passes GC's schema and the evaluator's checks, is written
all-or-nothing, and validate_document rejects everything those two would reject."""
import json
import math
import os
import re

import jsonschema
import numpy as np
import pytest

from ocelot_algo import files, output
from ocelot_algo.output import OutputError, PointsWriter, main_validate, validate_document

# GC's "Multiple points" schema (app/grandchallenge/components/schemas.py, ANSWER_TYPE_SCHEMA, kind MPOI, with
# the point-object and version-object it references), transcribed from ../shared/reference/grand-challenge.md 1.5.
MPOI_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "definitions": {
        "point-object": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "type": {"enum": ["Point"]},
                "point": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
                "probability": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["point"],
            "additionalProperties": False,
        },
        "version-object": {
            "type": "object",
            "properties": {"major": {"type": "integer", "minimum": 0}, "minor": {"type": "integer", "minimum": 0}},
            "required": ["major", "minor"],
            "additionalProperties": False,
        },
    },
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "type": {"enum": ["Multiple points"]},
        "points": {"type": "array", "items": {"allOf": [{"$ref": "#/definitions/point-object"}]}},
        "version": {"$ref": "#/definitions/version-object"},
    },
    "required": ["version", "type", "points"],
    "additionalProperties": False,
}


def gc_accepts(doc) -> bool:
    """GC parses NaN/Infinity as null (json.loads(parse_constant=...)), then validates against the schema."""
    doc = json.loads(json.dumps(doc), parse_constant=lambda constant: None)
    return jsonschema.Draft7Validator(MPOI_SCHEMA).is_valid(doc)


def evaluator_accepts(doc, pair_count) -> bool:
    """The OCELOT evaluator (lunit-io/ocelot23algo evaluation/eval.py): _check_validity on each point, then
    `name` indexes a list of pair_count pairs. Restated here from its rules, as a second opinion."""
    per_pair = [[] for _ in range(pair_count)]
    try:
        for cell in doc["points"]:
            assert sorted(cell) == ["name", "point", "probability"]
            assert re.fullmatch(r"image_[0-9]+", cell["name"])
            assert type(cell["point"]) is list and len(cell["point"]) == 3
            x, y, cls = cell["point"]
            assert type(x) is int and 0 <= x <= 1023 and type(y) is int and 0 <= y <= 1023
            assert type(cls) is int and cls in (1, 2)
            assert type(cell["probability"]) is float and 0.0 <= cell["probability"] <= 1.0
            per_pair[int(cell["name"].split("_")[-1])].append(cell)
        return True
    except (AssertionError, KeyError, TypeError, ValueError, IndexError):
        return False


def written(tmp_path, pair_count=3, layout="grand-challenge", names=None, **cells_by_pair):
    writer = PointsWriter(tmp_path, layout, names or [f"image_{i}" for i in range(pair_count)])
    for pair, cells in cells_by_pair.items():
        writer.add(int(pair[1:]), *cells)
    path = writer.finish()
    return path, json.loads(path.read_text())


def test_written_document_passes_gc_schema_and_evaluator(tmp_path):
    path, doc = written(
        tmp_path,
        p0=(np.array([0, 1023], np.int32), np.array([5.4, 1022.6], np.float32), np.array([1, 2], np.uint8),
            np.array([1, 0.25], np.float32)),
        p2=([np.int64(7)], [np.float64(8)], [np.int16(2)], [np.float16(0)]),  # numpy scalars in lists
    )
    assert path == tmp_path / "cell_classification.json"
    assert set(doc) == {"type", "points", "version"}
    assert doc["type"] == "Multiple points" and doc["version"] == {"major": 1, "minor": 0}
    assert doc["points"] == [
        {"name": "image_0", "point": [0, 5, 1], "probability": 1.0},
        {"name": "image_0", "point": [1023, 1023, 2], "probability": 0.25},
        {"name": "image_2", "point": [7, 8, 2], "probability": 0.0},
    ]
    assert all(type(p["probability"]) is float for p in doc["points"])  # 1 was written as 1.0
    assert gc_accepts(doc) and evaluator_accepts(doc, 3) and validate_document(doc, 3) == []


def test_points_are_ordered_by_pair_then_as_given(tmp_path):
    _, doc = written(tmp_path, p2=([3, 1], [0, 0], [1, 1], [0.1, 0.9]), p0=([9], [9], [2], [0.5]))
    assert [(p["name"], p["point"][0]) for p in doc["points"]] == [("image_0", 9), ("image_2", 3), ("image_2", 1)]


@pytest.mark.parametrize("cells", [{}, {"p0": ([], [], [], [])}], ids=["nothing-added", "zero-cells"])
def test_empty_output_is_still_written(tmp_path, cells):
    _, doc = written(tmp_path, **cells)
    assert doc == {"type": "Multiple points", "points": [], "version": {"major": 1, "minor": 0}}
    assert gc_accepts(doc) and evaluator_accepts(doc, 3)
    assert validate_document(doc, 3, require_points=True) == ["3 pair(s) without points: image_0, image_1, image_2"]


def test_release_layout_also_writes_one_csv_per_pair(tmp_path):
    written(tmp_path, 2, "release", ["003", "010"], p1=([4, 5], [6, 7], [2, 1], [0.5, 1.0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["003.csv", "010.csv", "cell_classification.json"]
    assert (tmp_path / "003.csv").read_text() == ""
    assert (tmp_path / "010.csv").read_text() == "4,6,2,0.5\n5,7,1,1.0\n"


def test_output_is_world_readable_and_replaces_an_old_one(tmp_path):
    written(tmp_path, p0=([1], [1], [1], [0.5]))
    path, doc = written(tmp_path, p1=([2], [2], [2], [0.5]))
    assert [p["name"] for p in doc["points"]] == ["image_1"]
    assert os.stat(path).st_mode & 0o444 == 0o444
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell_classification.json"]


BAD_CELLS = {
    "x-negative": ([-1], [0], [1], [0.5], "x outside 0..1023"),
    "y-rounds-to-1024": ([0], [1023.5], [1], [0.5], "y outside 0..1023"),
    "nan-coordinate": ([math.nan], [0], [1], [0.5], "non-finite"),
    "class-0": ([0], [0], [0], [0.5], "classes must be"),
    "class-1.5": ([0], [0], [1.5], [0.5], "classes must be"),
    "probability-nan": ([0], [0], [1], [math.nan], "probabilities"),
    "probability-above-1": ([0], [0], [1], [1.01], "probabilities"),
    "lengths": ([0, 1], [0], [1], [0.5], "differ in length"),
}


@pytest.mark.parametrize("xs, ys, classes, probabilities, problem", BAD_CELLS.values(), ids=BAD_CELLS.keys())
def test_add_rejects_bad_cells(tmp_path, xs, ys, classes, probabilities, problem):
    writer = PointsWriter(tmp_path, "grand-challenge", ["image_0", "image_1"])
    with pytest.raises(ValueError, match=problem):
        writer.add(1, xs, ys, classes, probabilities)


def test_add_rejects_unknown_and_repeated_pairs(tmp_path):
    writer = PointsWriter(tmp_path, "grand-challenge", ["image_0"])
    with pytest.raises(ValueError, match="out of range"):
        writer.add(1, [0], [0], [1], [0.5])
    writer.add(0, [0], [0], [1], [0.5])
    with pytest.raises(ValueError, match="already added"):
        writer.add(0, [0], [0], [1], [0.5])


# ---------------------------------------------------------------------------------------------- atomicity


def fail_on_call(monkeypatch, target, name, call):
    """Make target.name raise on its call-th call (1-based), passing the earlier calls through."""
    original, calls = getattr(target, name), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise OSError("disk full (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)


@pytest.mark.parametrize("where", ["json-dump", "fsync-of-second-csv", "rename-of-json"])
def test_a_failure_mid_write_leaves_no_file(tmp_path, monkeypatch, where):
    writer = PointsWriter(tmp_path, "release", ["001", "002"])
    writer.add(0, np.arange(500), np.arange(500), np.ones(500), np.full(500, 0.5))
    if where == "json-dump":  # the JSON is written last, after both CSVs were staged
        fail_on_call(monkeypatch, output.json, "dumps", 300)
    elif where == "fsync-of-second-csv":
        fail_on_call(monkeypatch, files.os, "fsync", 2)
    else:  # two CSVs are already renamed into place when the JSON's rename fails
        fail_on_call(monkeypatch, files.os, "replace", 3)
    with pytest.raises(OutputError, match=r"writing the output failed \(disk full \(simulated\)\); nothing was written"):
        writer.finish()
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_output_folder_is_reported_before_any_pair(tmp_path):
    blocker = tmp_path / "output"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(OutputError, match=r"output: is a file, not a folder for the output"):
        PointsWriter(blocker, "grand-challenge", ["image_0"])
    assert [p.name for p in tmp_path.iterdir()] == ["output"]



def test_a_folder_the_user_cannot_write_is_reported_before_any_pair(tmp_path, monkeypatch):
    def refused(*args, **kwargs):  # as for a non-root user in a folder of another (root may write anywhere)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(output.tempfile, "TemporaryFile", refused)
    with pytest.raises(OutputError, match=r"readonly: cannot write the output there \(Permission denied\)"):
        PointsWriter(tmp_path / "readonly", "grand-challenge", ["image_0"])


def test_a_folder_gone_by_the_end_leaves_no_file(tmp_path):
    folder = tmp_path / "output"
    writer = PointsWriter(folder, "grand-challenge", ["image_0"])
    folder.rmdir()
    folder.with_name("output").write_text("replaced by a file")
    with pytest.raises(OutputError, match="writing the output failed"):
        writer.finish()
    assert [p.name for p in tmp_path.iterdir()] == ["output"]


# --------------------------------------------------------------------------------------------- validation

VALID = {"type": "Multiple points", "points": [{"name": "image_1", "point": [3, 4, 2], "probability": 0.5}],
         "version": {"major": 1, "minor": 0}}


def changed(change):
    doc = json.loads(json.dumps(VALID))
    change(doc)
    return doc


def point(**fields):
    return changed(lambda d: d["points"][0].update(fields))


INVALID = {  # every case of grand-challenge.md 1.5, the evaluator's rules, and the pair range
    "missing-version": changed(lambda d: d.pop("version")),
    "missing-points": changed(lambda d: d.pop("points")),
    "missing-type": changed(lambda d: d.pop("type")),
    "extra-top-level-key": changed(lambda d: d.update(num_images=2)),
    "wrong-type": changed(lambda d: d.update(type="Multiple Points")),
    "name-not-string": changed(lambda d: d.update(name=3)),
    "version-extra-key": changed(lambda d: d["version"].update(patch=0)),
    "version-negative": changed(lambda d: d["version"].update(minor=-1)),
    "version-missing-minor": changed(lambda d: d["version"].pop("minor")),
    "points-not-list": changed(lambda d: d.update(points={})),
    "point-not-object": changed(lambda d: d["points"].append([1, 2, 1])),
    "probability-null": point(probability=None),
    "probability-nan": point(probability=math.nan),
    "probability-int": point(probability=1),
    "probability-above-1": point(probability=1.2),
    "probability-missing": changed(lambda d: d["points"][0].pop("probability")),
    "point-two-elements": point(point=[3, 4]),
    "point-four-elements": point(point=[3, 4, 1, 0]),
    "extra-point-key": point(**{"class": 2}),
    "type-key-in-point": point(type="Point"),
    "name-missing": changed(lambda d: d["points"][0].pop("name")),
    "name-pattern": point(name="img_1"),
    "x-float": point(point=[3.0, 4, 2]),
    "y-above-1023": point(point=[3, 1024, 2]),
    "x-negative": point(point=[-1, 4, 2]),
    "x-string": point(point=["3", 4, 2]),
    "class-3": point(point=[3, 4, 3]),
    "class-bool": point(point=[3, 4, True]),
    "pair-out-of-range": point(name="image_2"),
}


def test_references_accept_the_valid_document():
    assert gc_accepts(VALID) and evaluator_accepts(VALID, 2) and validate_document(VALID, 2) == []
    assert validate_document({**VALID, "name": "OCELOT cells"}, 2) == []  # the optional top-level name


@pytest.mark.parametrize("doc", INVALID.values(), ids=INVALID.keys())
def test_validate_document_rejects_what_gc_or_the_evaluator_rejects(doc):
    assert not (gc_accepts(doc) and evaluator_accepts(doc, 2))  # the case is genuinely invalid
    assert validate_document(doc, pair_count=2)


def test_validate_document_rejects_leading_zeros_and_non_objects():
    assert validate_document(point(name="image_01"))  # the evaluator would read it as image_1; never ours
    assert validate_document([VALID]) == ["document must be a JSON object, not a list"]


def test_require_points_needs_pair_count():
    with pytest.raises(ValueError, match="pair_count"):
        validate_document(VALID, require_points=True)


def test_validate_command(tmp_path, capsys):
    good, bad, broken = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "broken.json"
    good.write_text(json.dumps(VALID))
    bad.write_text(json.dumps(INVALID["probability-int"]))
    broken.write_text('{"type": ')
    assert main_validate([str(good), "--pairs", "2"]) == 0
    assert "valid (1 points)" in capsys.readouterr().out
    assert main_validate([str(good), "--pairs", "2", "--require-points"]) == 1
    assert "1 pair(s) without points: image_0" in capsys.readouterr().out
    assert main_validate([str(bad)]) == 1
    assert "probability must be a float" in capsys.readouterr().out
    assert main_validate([str(broken)]) == 1
    assert "not valid JSON" in capsys.readouterr().out
    assert main_validate([str(tmp_path / "absent.json")]) == 1
    with pytest.raises(SystemExit):
        main_validate([str(good), "--require-points"])
