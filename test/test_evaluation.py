"""The challenge metric against a plain re-implementation of the paper's Algorithm 1, the report's analyses, the
input readers and the command line; plus facts of the real data (skipped where ../shared/ocelot is absent)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA
from ocelot_algo import evaluation as ev
from ocelot_algo.geometry import Box


# ------------------------------------------------------------------ reference: Algorithm 1, written plainly


def reference_counts(pred, gt, radius=15.0):
    """Per class: predictions by descending probability (ties: input order), each takes the nearest unmatched GT of
    its class within `radius` (ties: the GT listed first) -> TP, else FP; unmatched GT -> FN."""
    counts = []
    for cls in (1, 2):
        predictions = sorted([p for p in pred if p[2] == cls], key=lambda p: -p[3])
        truths = [g for g in gt if g[2] == cls]
        matched = [False] * len(truths)
        tp = fp = 0
        for p in predictions:
            best, best_distance = None, None
            for j, g in enumerate(truths):
                if matched[j]:
                    continue
                distance = math.dist(p[:2], g[:2])
                if distance <= radius and (best is None or distance < best_distance):
                    best, best_distance = j, distance
            if best is None:
                fp += 1
            else:
                tp += 1
                matched[best] = True
        counts.append([tp, fp, len(truths) - tp])
    return np.array(counts)


def random_image(rng, integer=True):
    """A crowded image: many points within 15 px of each other, repeated points, ties in probability, points at
    exactly 15 px from a GT cell, and predictions of the wrong class."""
    size = int(rng.integers(20, 90))
    n_gt, n_pred = int(rng.integers(0, 25)), int(rng.integers(0, 30))
    gt = np.c_[rng.integers(0, size, (n_gt, 2)), rng.integers(1, 3, n_gt)].astype(float)
    if n_gt and rng.random() < 0.5:
        gt = np.r_[gt, gt[rng.integers(0, n_gt, 3)]]  # duplicated GT cells
    pred = np.c_[rng.integers(0, size, (n_pred, 2)), rng.integers(1, 3, n_pred),
                 rng.choice([0.2, 0.5, 0.9, 1.0], n_pred)].astype(float)
    if len(gt):
        at_radius = gt[rng.integers(0, len(gt), 6)]
        steps = np.array([[9, 12], [-12, 9], [15, 0], [0, -15], [11, 11], [16, 0]])  # 15 px x4, then 15.6, 16
        extra = np.c_[at_radius[:, :2] + steps, at_radius[:, 2], rng.choice([0.5, 0.9], 6)]
        pred = np.r_[pred, extra]
    if len(pred) and rng.random() < 0.5:
        pred = np.r_[pred, pred[rng.integers(0, len(pred), 4)]]  # duplicated predictions, equal probabilities
    if not integer:
        pred[:, :2] += rng.random((len(pred), 2)) * 3
        gt[:, :2] += rng.random((len(gt), 2)) * 3
    return pred, gt


@pytest.mark.parametrize("integer", [True, False])
def test_count_matches_agrees_with_plain_algorithm_1(integer):
    rng = np.random.default_rng(7 if integer else 8)
    images = [random_image(rng, integer) for _ in range(400)]
    images += [(np.zeros((0, 4)), images[0][1]), (images[1][0], np.zeros((0, 3))), (np.zeros((0, 4)), np.zeros((0, 3)))]
    expected = [reference_counts(pred.tolist(), gt.tolist()) for pred, gt in images]
    for (pred, gt), want in zip(images, expected):
        np.testing.assert_array_equal(ev.count_matches(pred, gt), want)
    # All images at once, as the dataset-level functions score them: images must not interact.
    per_image = ev.count_matches_per_image([p for p, _ in images], [g for _, g in images])
    np.testing.assert_array_equal(per_image, np.array(expected))
    assert per_image[..., 0].sum() > 1000 and per_image[..., 1].sum() > 1000  # the cases are not trivial


def test_radius_is_a_parameter():
    rng = np.random.default_rng(3)
    for _ in range(50):
        pred, gt = random_image(rng)
        np.testing.assert_array_equal(ev.count_matches(pred, gt, radius=7.5),
                                      reference_counts(pred.tolist(), gt.tolist(), radius=7.5))


# ----------------------------------------------------------------------------------- hand-made cases


def test_higher_probability_matches_first_and_takes_its_nearest():
    gt = [[100, 100, 1], [125, 100, 1]]
    # A (0.9) is 10 px from the first GT and exactly 15 px from the second; B (0.5) is 1 px from the first.
    # A goes first and takes its nearest, the first GT; B then has nothing within 15 px.
    pred = [[101, 100, 1, 0.5], [110, 100, 1, 0.9]]
    np.testing.assert_array_equal(ev.count_matches(pred, gt), [[1, 1, 1], [0, 0, 0]])
    # With the probabilities the other way round B takes the first GT and A the second, at exactly 15 px.
    pred = [[101, 100, 1, 0.9], [110, 100, 1, 0.5]]
    np.testing.assert_array_equal(ev.count_matches(pred, gt), [[2, 0, 0], [0, 0, 0]])


def test_equal_probabilities_go_in_input_order():
    gt = [[100, 100, 2], [125, 100, 2]]
    np.testing.assert_array_equal(ev.count_matches([[110, 100, 2, 0.7], [101, 100, 2, 0.7]], gt)[1], [1, 1, 1])
    np.testing.assert_array_equal(ev.count_matches([[101, 100, 2, 0.7], [110, 100, 2, 0.7]], gt)[1], [2, 0, 0])


def test_hit_radius_is_inclusive():
    gt = [[500, 500, 1]]
    assert ev.count_matches([[509, 512, 1, 0.5]], gt)[0].tolist() == [1, 0, 0]  # 15 px exactly
    assert ev.count_matches([[500.0, 515.001, 1, 0.5]], gt)[0].tolist() == [0, 1, 1]
    assert ev.count_matches([[511, 511, 1, 0.5]], gt)[0].tolist() == [0, 1, 1]  # 15.56 px


def test_a_class_error_costs_one_fp_and_one_fn():
    np.testing.assert_array_equal(ev.count_matches([[10, 10, 2, 0.9]], [[10, 10, 1]]), [[0, 0, 1], [0, 1, 0]])


def test_no_threshold_every_point_counts():
    gt = [[10, 10, 2]]
    low = [[10, 10, 2, 0.0], [300, 300, 2, 0.0]]
    np.testing.assert_array_equal(ev.count_matches(low, gt), [[0, 0, 0], [1, 1, 0]])


def test_empty_inputs():
    np.testing.assert_array_equal(ev.count_matches([], [[1, 2, 1], [3, 4, 2], [5, 6, 2]]), [[0, 0, 1], [0, 0, 2]])
    np.testing.assert_array_equal(ev.count_matches([[1, 2, 1, 0.5]], []), [[0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(ev.count_matches(np.zeros((0, 4)), np.zeros((0, 3))), np.zeros((2, 3)))


@pytest.mark.parametrize("pred, gt", [([[1, 2, 3, 0.5]], []), ([], [[1, 2, 0]]), ([[1, 2, 1]], []),
                                      (np.zeros((2, 6)), []), ([[np.nan, 2, 1, 0.5]], [])])
def test_bad_arrays_are_refused(pred, gt):
    with pytest.raises(ValueError):
        ev.count_matches(pred, gt)


# ----------------------------------------------------------------------------------------------- scores


def test_scores_values_and_undefined_ratios():
    result = ev.scores([[6, 2, 4], [0, 0, 0]])
    bc = result["BC"]
    assert (bc["tp"], bc["fp"], bc["fn"]) == (6, 2, 4)
    assert bc["precision"] == pytest.approx(0.75) and bc["recall"] == pytest.approx(0.6)
    assert bc["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert result["TC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 0}
    assert result["mF1"] == pytest.approx(bc["f1"] / 2)
    only_fp = ev.scores([[0, 5, 0], [3, 0, 0]])
    assert only_fp["BC"]["f1"] == 0.0 and only_fp["BC"]["recall"] == 0.0
    assert only_fp["TC"]["f1"] == 1.0 and only_fp["mF1"] == 0.5


def test_evaluate_pairs_sums_counts_over_images():
    a = ([[0, 0, 1, 0.9]], [[0, 0, 1]])
    b = ([[50, 50, 2, 0.9]], [[500, 500, 2]])
    result = ev.evaluate_pairs([a[0], b[0]], [a[1], b[1]])
    assert (result["BC"]["tp"], result["TC"]["fp"], result["TC"]["fn"]) == (1, 1, 1)
    assert result["mF1"] == pytest.approx((1.0 + 0.0) / 2)
    with pytest.raises(ValueError):
        ev.evaluate_pairs([a[0]], [])


# --------------------------------------------------------------------------- tissue regions, subgroups


def test_tissue_regions_maps_pixel_centres_into_the_box():
    mask = np.full((1024, 1024), ev.BG, np.uint8)
    mask[512, 256] = ev.CA  # the tissue pixel under cell pixel (0, 0) for this box
    mask[767, 511] = ev.UNKNOWN  # under cell pixel (1023, 1023)
    box = Box(0.25, 0.5, 0.5, 0.75)
    regions = ev.tissue_regions(np.array([[0, 0], [1023, 1023], [3, 0], [0, 3], [4, 0], [0, 4]]), box, mask)
    assert regions.tolist() == [ev.CA, ev.UNKNOWN, ev.CA, ev.CA, ev.BG, ev.BG]  # 4 cell px per tissue px
    # A box reaching past the tissue patch: the part outside is unknown.
    outside = ev.tissue_regions(np.array([[0, 500], [600, 500]]), Box(-0.125, 0.0, 0.125, 0.25), mask)
    assert outside.tolist() == [ev.UNKNOWN, ev.BG]


def write_mask(path: Path, mask: np.ndarray) -> Path:
    Image.fromarray(mask).save(path)
    return path


def subgroup_case(tmp_path):
    """Left half of the tissue BG, right half CA, bottom rows unknown; the box is the whole patch."""
    mask = np.full((1024, 1024), ev.BG, np.uint8)
    mask[:, 512:] = ev.CA
    mask[1000:] = ev.UNKNOWN
    gt = np.array([[100, 100, 1], [900, 100, 2], [200, 300, 2], [800, 300, 1], [700, 1010, 2]], float)
    pred = np.array([[102, 100, 1, 0.9],   # BC on BG: TP
                     [900, 104, 2, 0.8],   # TC on CA: TP
                     [200, 300, 1, 0.7],   # BC on BG: FP (the GT there is TC on BG: FN)
                     [800, 300, 1, 0.6],   # BC on CA: TP
                     [600, 600, 2, 0.5],   # TC on CA: FP
                     [700, 1010, 2, 0.5]], float)  # on unknown tissue: in no subgroup
    truth = [ev.TruthImage("001", gt, "kidney", Box(0, 0, 1, 1), write_mask(tmp_path / "001.png", mask))]
    return truth, ev.Predictions("model", [pred])


def test_subgroups_score_only_cells_on_their_region(tmp_path):
    truth, preds = subgroup_case(tmp_path)
    counts, unknown = ev.image_counts(truth, [preds])
    by_group = dict(zip(ev.GROUPS, counts[0][0].tolist()))
    assert by_group["BC"] == [2, 1, 0] and by_group["TC"] == [2, 1, 1]
    assert by_group["BC on BG"] == [1, 1, 0]
    assert by_group["TC on CA"] == [1, 1, 0]
    assert by_group["TC on BG"] == [0, 0, 1]
    assert by_group["BC on CA"] == [1, 0, 0]
    assert unknown == {"gt": 1, "pred": [1]}


# ------------------------------------------------------------------------------------------- bootstrap


def synthetic_truth_and_predictions(n_images=40, seed=0):
    rng = np.random.default_rng(seed)
    truth, points = [], []
    for i in range(n_images):
        gt = np.c_[rng.integers(0, 1024, (60, 2)), rng.integers(1, 3, 60)].astype(float)
        keep = rng.random(60) < rng.uniform(0.5, 1.0)
        pred = np.c_[gt[keep, :2] + rng.integers(-5, 6, (keep.sum(), 2)),
                     np.where(rng.random(keep.sum()) < 0.2, 3 - gt[keep, 2], gt[keep, 2]), rng.random(keep.sum())]
        truth.append(ev.TruthImage(f"{i:03d}", gt, organ="kidney" if i % 3 else "bladder"))
        points.append(pred)
    return truth, ev.Predictions("model", points)


def test_bootstrap_cis_contain_the_estimate_and_are_seeded():
    truth, preds = synthetic_truth_and_predictions()
    report = ev.evaluate_dataset(truth, preds, bootstrap=2000, seed=5)
    overall = report["runs"][0]["overall"]
    assert overall["mF1"] == pytest.approx(ev.evaluate_pairs(preds.points, [t.cells for t in truth])["mF1"])
    lo, hi = overall["mF1_ci"]
    assert lo < overall["mF1"] < hi and hi - lo < 0.2
    for cls in ev.CLASS_NAMES:
        for metric in ("precision", "recall", "f1"):
            lo, hi = overall[cls][f"{metric}_ci"]
            assert lo <= overall[cls][metric] <= hi
    for organ in report["runs"][0]["organs"].values():
        assert organ["mF1_ci"][0] <= organ["mF1"] <= organ["mF1_ci"][1]
    assert report == ev.evaluate_dataset(truth, preds, bootstrap=2000, seed=5)
    other_seed = ev.evaluate_dataset(truth, preds, bootstrap=2000, seed=6)
    assert other_seed["runs"][0]["overall"]["mF1_ci"] != overall["mF1_ci"]
    assert "tissue_regions" not in report["runs"][0]  # no tissue masks, no subgroups


def test_bootstrap_weights_are_resamples_of_all_images():
    weights = ev.bootstrap_weights(30, 500, np.random.default_rng(0))
    assert weights.shape == (500, 30) and (weights.sum(1) == 30).all()
    assert (weights == 0).mean() == pytest.approx((29 / 30) ** 30, abs=0.02)  # images left out of a resample


def test_comparison_difference_is_paired(tmp_path):
    truth, preds = synthetic_truth_and_predictions()
    report = ev.evaluate_dataset(truth, preds, ev.Predictions("same", preds.points), bootstrap=500)
    difference = report["difference"]
    assert difference["of"] == "same - model"
    assert difference["mF1"] == {"value": 0.0, "ci": [0.0, 0.0]}  # same resamples for both runs
    assert set(difference["organs"]) == {"bladder", "kidney"}
    markdown = ev.format_markdown(report)
    assert "| metric | model | same | same - model (95% CI) |" in markdown


# ------------------------------------------------------------------------------------------ input files


def write_release(root: Path, cells: dict[str, str], subset="train"):
    """A minimal release layout with whole-patch boxes and all-BG tissue."""
    mpp = {"resized_mpp_x": 0.8, "resized_mpp_y": 0.8}
    meta = {"patch_x_offset": 0.5, "patch_y_offset": 0.5, "organ": "kidney", "subset": subset,
            "cell": mpp, "tissue": mpp}
    (root / "annotations" / subset / "cell").mkdir(parents=True)
    (root / "annotations" / subset / "tissue").mkdir(parents=True)
    for pair_id, text in cells.items():
        (root / "annotations" / subset / "cell" / f"{pair_id}.csv").write_text(text)
        write_mask(root / "annotations" / subset / "tissue" / f"{pair_id}.png", np.full((64, 64), ev.BG, np.uint8))
    (root / "metadata.json").write_text(json.dumps({"sample_pairs": {k: meta for k in cells}}))
    (root / "folds.json").write_text(json.dumps({"folds": [sorted(cells)[:1], sorted(cells)[1:]]}))


def points_json(points):
    return json.dumps({"type": "Multiple points", "points": points, "version": {"major": 1, "minor": 0}})


def test_release_csv_and_json_predictions(tmp_path, capsys):
    write_release(tmp_path / "gt", {"002": "10,10,1\r\n20,20,2\r\n", "005": "", "007": "500,500,2\n"})
    preds = tmp_path / "pred"
    preds.mkdir()
    (preds / "002.csv").write_text("10,10,1,0.9\n20,20,1,0.4\n")
    (preds / "007.csv").write_text("500,500,2,1.0\n")
    truth = ev.load_release(tmp_path / "gt")
    assert [t.id for t in truth] == ["002", "005", "007"] and len(truth[1].cells) == 0
    from_dir = ev.load_predictions(preds, truth)
    assert from_dir.missing_ids == ("005",)
    # The same predictions as the algorithm's JSON: image_i is the i-th id of the split.
    as_json = tmp_path / "cell_classification.json"
    as_json.write_text(points_json([{"name": "image_0", "point": [10, 10, 1], "probability": 0.9},
                                    {"name": "image_0", "point": [20, 20, 1], "probability": 0.4},
                                    {"name": "image_2", "point": [500, 500, 2], "probability": 1.0}]))
    from_json = ev.load_predictions(as_json, truth, ev.split_ids(tmp_path / "gt"))
    for a, b in zip(from_dir.points, from_json.points):
        np.testing.assert_array_equal(a, b)
    expected = {"BC": [1, 1, 0], "TC": [1, 0, 1]}
    result = ev.evaluate_pairs(from_dir.points, [t.cells for t in truth])
    assert {c: [result[c][k] for k in ("tp", "fp", "fn")] for c in expected} == expected

    assert ev.main(["--pred", str(as_json), "--gt", str(tmp_path / "gt"), "--fold", "1", "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "mF1 0.5000" in out  # fold 1 = 005, 007: TC 1/0/0, no BC at all


@pytest.mark.parametrize("content, problem", [
    ("10,10,1\n", "002.csv:1: expected x,y,class,probability"),
    ("10,10,1,0.5\n10,x,1,0.5\n", "002.csv:2: expected"),
    ("10,10,3,0.5\n", "002.csv:1: cell class 3"),
    ("1024,10,1,0.5\n", "002.csv:1: point (1024, 10) lies outside"),
    ("10,10,1,1.5\n", "002.csv:1: probability 1.5"),
    ("10.5,10,1,0.5\n", "002.csv:1: expected"),
])
def test_malformed_csv_is_one_clear_error(tmp_path, capsys, content, problem):
    write_release(tmp_path / "gt", {"002": "10,10,1\n"})
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "002.csv").write_text(content)
    assert ev.main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert problem in err and str(tmp_path / "pred") in err and "\n" not in err


@pytest.mark.parametrize("point, problem", [
    ({"name": "image_0", "point": [1, 2, 1], "probability": 1}, "probability 1 is not a float"),
    ({"name": "img_0", "point": [1, 2, 1], "probability": 0.5}, "not image_<index>"),
    ({"name": "image_0", "point": [1.0, 2, 1], "probability": 0.5}, "three integers"),
    ({"name": "image_0", "point": [1, 2, 1], "probability": 0.5, "class": 1}, "keys"),
    ({"name": "image_0", "point": [1, 2, 1]}, "keys"),
    ({"name": "image_9", "point": [1, 2, 1], "probability": 0.5}, "image_9 but there are only 1 images"),
])
def test_invalid_prediction_json_is_refused_like_the_challenge(tmp_path, capsys, point, problem):
    gt = tmp_path / "gt.json"
    gt.write_text(points_json([{"name": "image_0", "point": [1, 2, 1], "probability": 1.0}]))
    pred = tmp_path / "pred.json"
    pred.write_text(points_json([point]))
    assert ev.main(["--pred", str(pred), "--gt", str(gt), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert problem in err and "pred.json" in err


def test_json_ground_truth_and_comparison_report(tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({**json.loads(points_json(
        [{"name": "image_0", "point": [1, 2, 1], "probability": 1.0},
         {"name": "image_1", "point": [300, 300, 2]}])), "num_images": 3}))
    exact, miss = tmp_path / "exact.json", tmp_path / "miss.json"
    exact.write_text(points_json([{"name": "image_0", "point": [1, 2, 1], "probability": 0.5},
                                  {"name": "image_1", "point": [300, 300, 2], "probability": 0.5}]))
    miss.write_text(points_json([{"name": "image_2", "point": [1, 2, 1], "probability": 0.5}]))
    out = tmp_path / "report"
    code = ev.main(["--pred", str(exact), "--gt", str(gt), "--compare", str(miss), "--out", str(out),
                    "--bootstrap", "200"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["overall"]["mF1"] for r in report["runs"]] == [1.0, 0.0]
    assert report["difference"]["mF1"]["value"] == -1.0
    assert sorted(p.name for p in out.iterdir()) == ["class_scores.png", "report.json", "report.md"]
    assert "miss.json - exact.json" in (out / "report.md").read_text()
    assert "exact.json: mF1 1.0000" in capsys.readouterr().out


def test_json_ids_keep_their_image_index(tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(points_json([{"name": f"image_{i}", "point": [10 * i, 5, 2]} for i in range(3)]))
    pred = tmp_path / "pred.json"
    pred.write_text(points_json([{"name": "image_2", "point": [20, 5, 2], "probability": 0.5}]))
    assert ev.main(["--pred", str(pred), "--gt", str(gt), "--ids", "0,2", "--bootstrap", "0"]) == 0
    assert "TC F1 0.6667" in capsys.readouterr().out  # image_2 scored against image 2: 1 TP, 1 FN (image 0)


def test_a_json_made_for_fewer_pairs_is_flagged(tmp_path, capsys):
    """image_<i> is the i-th pair of the split: a JSON of a 2-pair run scored against 3 pairs is reported."""
    write_release(tmp_path / "gt", {"002": "10,10,1\n", "005": "", "007": "500,500,2\n"})
    pred = tmp_path / "pred.json"
    pred.write_text(points_json([{"name": "image_1", "point": [10, 10, 1], "probability": 0.5}]))
    assert ev.main(["--pred", str(pred), "--gt", str(tmp_path / "gt"), "--bootstrap", "0"]) == 0
    err = capsys.readouterr().err
    assert "1 of 3 ids have no predictions" in err and "past the JSON's last image_<i>" in err and err.endswith(": 007\n")


def test_unknown_ids_and_folds_are_errors(tmp_path, capsys):
    write_release(tmp_path / "gt", {"002": "10,10,1\n"})
    args = ["--pred", str(tmp_path), "--gt", str(tmp_path / "gt")]
    assert ev.main(args + ["--ids", "003"]) == 2
    assert "ids 003 are not in split 'train'" in capsys.readouterr().err
    assert ev.main(args + ["--fold", "7"]) == 2
    assert "no fold 7" in capsys.readouterr().err
    assert ev.main(args) == 2  # no prediction file for any id
    assert "none of the 1 ids has a prediction file" in capsys.readouterr().err
    assert ev.main(args + ["--unknown-option"]) == 2


# ------------------------------------------------------------------------------------------- real data

needs_data = pytest.mark.skipif(not (SHARED_DATA / "metadata.json").is_file(), reason="../shared/ocelot is absent")


@pytest.fixture(scope="module")
def real_truth():
    return ev.load_release(SHARED_DATA)


@needs_data
def test_real_ground_truth_as_prediction_scores_one_and_swapped_zero(real_truth):
    assert len(real_truth) == 311
    gts = [t.cells for t in real_truth]
    as_pred = [np.c_[g, np.ones(len(g))] for g in gts]
    assert ev.evaluate_pairs(as_pred, gts)["mF1"] == 1.0
    # Swapped classes score ~0, not exactly 0: in the whole set one BC and one TC cell lie within 15 px of each
    # other (pair 155, 14.9 px), so each swapped prediction there hits the other cell.
    swapped = ev.evaluate_pairs([np.c_[g[:, :2], 3 - g[:, 2], np.ones(len(g))] for g in gts], gts)
    assert swapped["BC"]["tp"] == swapped["TC"]["tp"] == 1 and swapped["mF1"] < 1e-4


@needs_data
def test_real_tissue_context_ceiling_matches_the_readme(real_truth):
    """README (Results, "What tissue context can give"): classing each GT point by the GT tissue under it (tumour iff on cancer area) scores mF1 ~0.88; 92% of
    tumour cells lie on cancer area and 81% of background cells on background. A centre/corner mix-up of the cell
    box scores ~0.68 and swapped x/y ~0.73, so this pins down the geometry."""
    preds, on_own_region = [], {1: [0, 0], 2: [0, 0]}
    for pair in real_truth:
        regions = ev.tissue_regions(pair.cells[:, :2], pair.box, pair.tissue_mask())
        preds.append(np.c_[pair.cells[:, :2], np.where(regions == ev.CA, 2, 1), np.ones(len(pair.cells))])
        for cls, region in ((1, ev.BG), (2, ev.CA)):
            on_own_region[cls][0] += int(((pair.cells[:, 2] == cls) & (regions == region)).sum())
            on_own_region[cls][1] += int((pair.cells[:, 2] == cls).sum())
    assert ev.evaluate_pairs(preds, [t.cells for t in real_truth])["mF1"] == pytest.approx(0.88, abs=0.02)
    assert on_own_region[2][0] / on_own_region[2][1] == pytest.approx(0.92, abs=0.01)
    assert on_own_region[1][0] / on_own_region[1][1] == pytest.approx(0.81, abs=0.01)


@needs_data
def test_real_subset_report_end_to_end(tmp_path, real_truth):
    ids = [t.id for t in real_truth[:12]]
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for pair in real_truth[:12]:
        (pred_dir / f"{pair.id}.csv").write_text("".join(f"{int(x)},{int(y)},{int(c)},1.0\n" for x, y, c in pair.cells))
    out = tmp_path / "out"
    assert ev.main(["--pred", str(pred_dir), "--gt", str(SHARED_DATA), "--ids", ",".join(ids), "--out", str(out),
                    "--bootstrap", "300"]) == 0
    report = json.loads((out / "report.json").read_text())
    run = report["runs"][0]
    assert run["overall"]["mF1"] == 1.0 and report["settings"]["ids"] == ids
    typical = [run["tissue_regions"][name] for name in ("BC on BG", "TC on CA")]
    assert all(group["f1"] == 1.0 and group["fp"] == group["fn"] == 0 for group in typical)
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "class_scores.png", "organ_mf1.png",
                                              "tissue_regions.png"}
