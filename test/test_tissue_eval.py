"""The tissue at the cells (`tissue_eval`) on synthetic pairs whose answers are known: a perfect map, an inverted one,
a constant one; the AUC against a plain pairwise count; the `evaluate --tissue-maps` and `tissue-maps` command lines.
Plus the real out-of-fold maps of the shipped members where ../shared/ocelot is present."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHARED_DATA
from ocelot_algo import evaluation as ev
from ocelot_algo import tissue_eval as te
from ocelot_algo.geometry import Box

SIZE = 64  # cell grid and tissue grid of the synthetic pairs
BOX = Box(0.25, 0.25, 0.75, 0.75)  # whose edges fall on grid pixel edges, so no cell straddles a tissue border


def tissue_mask() -> np.ndarray:
    """Cancer area left of the middle, background right; the top rows of the field of view unknown."""
    mask = np.full((1024, 1024), ev.BG, np.uint8)
    mask[:, :512] = ev.CA
    mask[256:320] = ev.UNKNOWN
    return mask


def pair(tmp_path: Path, name: str, seed: int, organ: str = "kidney") -> ev.TruthImage:
    """Cells mostly of the class their tissue suggests, some atypical, some on unknown tissue."""
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 1024, (60, 2))
    on_ca = xy[:, 0] < 512
    cls = np.where(rng.random(60) < 0.8, np.where(on_ca, 2, 1), np.where(on_ca, 1, 2))
    path = tmp_path / f"{name}.png"
    Image.fromarray(tissue_mask()).save(path)
    return ev.TruthImage(name, np.c_[xy, cls].astype(float), organ, BOX, path)


def perfect_maps(truth: ev.TruthImage) -> tuple[np.ndarray, np.ndarray]:
    """p(cancer area) 1 on annotated cancer area, else 0: on the cell grid and on the tissue grid."""
    centres = (np.arange(SIZE) + 0.5) * 1024 / SIZE - 0.5
    xx, yy = np.meshgrid(centres, centres)
    on_cells = ev.tissue_regions(np.c_[xx.ravel(), yy.ravel()], truth.box, truth.tissue_mask()).reshape(SIZE, SIZE)
    on_tissue = ev.tissue_mask_on_grid(truth.tissue_mask(), SIZE)
    return (on_cells == ev.CA).astype(float), (on_tissue == ev.CA).astype(float)


@pytest.fixture
def pairs(tmp_path):
    return [pair(tmp_path, f"{i:03d}", i, "kidney" if i % 2 else "bladder") for i in range(6)]


def report_of(pairs, transform, bootstrap=0):
    measures = [te.measure_pair(p, *(transform(m) for m in perfect_maps(p))) for p in pairs]
    return te.tissue_report(pairs, measures, [i % 3 for i in range(len(pairs))], "test", bootstrap=bootstrap)


def test_a_perfect_map_scores_one_and_classes_cells_as_the_annotated_tissue(pairs):
    report = report_of(pairs, lambda m: m)
    o = report["overall"]
    for name in ("accuracy_at_cells", "auc_tissue", "dice_fov", "dice_patch"):
        assert o[name]["value"] == 1.0, name
    assert o["classed_by_tissue"] == o["classed_by_annotated_tissue"]
    # the same as classing each annotated cell by the annotated tissue under it, by hand
    preds = []
    for p in pairs:
        on_ca = ev.tissue_regions(p.cells[:, :2], p.box, p.tissue_mask()) == ev.CA
        preds.append(np.c_[p.cells[:, :2], np.where(on_ca, 2, 1), np.ones(len(p.cells))])
    assert o["classed_by_tissue"]["mF1"] == pytest.approx(ev.evaluate_pairs(preds, [p.cells for p in pairs])["mF1"])
    cells = np.concatenate([p.cells for p in pairs])
    on_ca = np.concatenate([ev.tissue_regions(p.cells[:, :2], p.box, p.tissue_mask()) == ev.CA for p in pairs])
    assert o["TC_on_predicted_CA"]["value"] == pytest.approx(on_ca[cells[:, 2] == 2].mean())
    assert o["BC_on_predicted_BG"]["value"] == pytest.approx((~on_ca[cells[:, 2] == 1]).mean())


def test_an_inverted_map_scores_zero(pairs):
    o = report_of(pairs, lambda m: 1 - m)["overall"]
    for name in ("accuracy_at_cells", "auc_tissue", "dice_fov", "dice_patch"):
        assert o[name]["value"] == 0.0, name


def test_cells_on_unknown_tissue_are_left_out_of_accuracy_and_tissue_auc(pairs):
    o = report_of(pairs, lambda m: m)["overall"]
    unknown = sum(int((ev.tissue_regions(p.cells[:, :2], p.box, p.tissue_mask()) == ev.UNKNOWN).sum()) for p in pairs)
    total = sum(len(p.cells) for p in pairs)
    assert unknown > 0
    assert o["accuracy_at_cells"]["n"] == o["auc_tissue"]["n"] == total - unknown
    assert o["auc_class"]["n"] == total


def test_a_constant_map_has_auc_one_half(pairs):
    o = report_of(pairs, lambda m: np.full_like(m, 0.3))["overall"]
    assert o["auc_tissue"]["value"] == o["auc_class"]["value"] == 0.5
    assert o["BC_on_predicted_BG"]["value"] == 1.0 and o["TC_on_predicted_CA"]["value"] == 0.0


def test_report_groups_cis_and_markdown(pairs):
    report = report_of(pairs, lambda m: np.clip(m + 0.3 * np.sin(np.arange(SIZE)), 0, 1), bootstrap=300)
    assert set(report["folds"]) == {"0", "1", "2"} and set(report["organs"]) == {"bladder", "kidney"}
    for section in (report["overall"], *report["folds"].values(), *report["organs"].values()):
        for entry in te.headline(section).values():
            assert entry["ci"][0] - 1e-9 <= entry["value"] <= entry["ci"][1] + 1e-9
    markdown = "\n".join(te.format_markdown(report))
    assert "## Tissue at the cells" in markdown and "### Per fold" in markdown and "### Per organ" in markdown


def plain_auc(scores, positive):
    pos, neg = scores[positive], scores[~positive]
    return np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)])


def test_weighted_auc_is_mann_whitney_with_ties_and_weights_repeat_images():
    rng = np.random.default_rng(1)
    scores = rng.choice([0.1, 0.4, 0.5, 0.9], 50)  # many ties
    positive = rng.random(50) < scores
    image = rng.integers(0, 5, 50)
    assert te.weighted_auc(scores, positive, image, np.ones((1, 5)))[0] == pytest.approx(plain_auc(scores, positive))
    weights = np.array([[2, 0, 1, 3, 1], [0, 0, 0, 0, 5]], float)
    for row in weights:
        repeated = np.repeat(np.arange(50), row[image].astype(int))
        expected = plain_auc(scores[repeated], positive[repeated]) if positive[repeated].any() and \
            (~positive[repeated]).any() else 0.5
        assert te.weighted_auc(scores, positive, image, row[None])[0] == pytest.approx(expected)
    assert te.weighted_auc(np.zeros(0), np.zeros(0, bool), np.zeros(0, int), np.ones((3, 5))).tolist() == [0.5] * 3


# ------------------------------------------------------------------------------------------- command lines


def write_release(root: Path, pairs: list[ev.TruthImage]) -> None:
    """A release folder of the synthetic pairs (box 0.25..0.75: offsets 0.5, cell mpp a quarter of tissue's)."""
    meta = {"patch_x_offset": 0.5, "patch_y_offset": 0.5, "cell": {"resized_mpp_x": 0.2, "resized_mpp_y": 0.2},
            "tissue": {"resized_mpp_x": 0.8, "resized_mpp_y": 0.8}}
    for kind in ("cell", "tissue"):
        (root / "annotations" / "train" / kind).mkdir(parents=True)
    for p in pairs:
        text = "".join(f"{int(x)},{int(y)},{int(c)}\n" for x, y, c in p.cells)
        (root / "annotations" / "train" / "cell" / f"{p.id}.csv").write_text(text)
        Image.fromarray(tissue_mask()).save(root / "annotations" / "train" / "tissue" / f"{p.id}.png")
    (root / "metadata.json").write_text(json.dumps({"sample_pairs": {p.id: {**meta, "organ": p.organ} for p in pairs}}))


def write_maps(folder: Path, pairs: list[ev.TruthImage], fold: int, transform=lambda m: m) -> None:
    folder.mkdir(exist_ok=True)
    np.savez(folder / te.MAPS_FILE.format(fold=fold), ids=np.array([p.id for p in pairs]), fold=fold,
             cancer=np.stack([transform(perfect_maps(p)[1]) for p in pairs]).astype(np.float16),
             member=f"fold{fold}", tta="none", cell_size=SIZE)


def test_evaluate_tissue_maps_alone_writes_the_report(tmp_path, pairs, capsys):
    write_release(tmp_path / "gt", pairs)
    write_maps(tmp_path / "maps", pairs[:3], 0)
    write_maps(tmp_path / "maps", pairs[3:], 1)
    out = tmp_path / "report"
    assert ev.main(["--gt", str(tmp_path / "gt"), "--tissue-maps", str(tmp_path / "maps"), "--out", str(out),
                    "--bootstrap", "100"]) == 0
    assert "tissue at the cells (fold0, fold1 (tta none)): mF1 classed by tissue" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    section = report["tissue_at_cells"]
    assert report["runs"] == [] and set(section["folds"]) == {"0", "1"}
    # through the crop to the cell grid, as inference does: a perfect map stays perfect
    assert section["overall"]["accuracy_at_cells"]["value"] == 1.0 == section["overall"]["dice_fov"]["value"]
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "tissue_at_cells.png"}
    assert (out / "tissue_at_cells.png").stat().st_size < 300_000
    assert (out / "report.md").read_text().startswith("# Tissue branch evaluation")


def test_evaluate_tissue_maps_beside_predictions(tmp_path, pairs, capsys):
    write_release(tmp_path / "gt", pairs)
    write_maps(tmp_path / "maps", pairs, 0)
    preds = tmp_path / "pred"
    preds.mkdir()
    for p in pairs:
        (preds / f"{p.id}.csv").write_text("".join(f"{int(x)},{int(y)},{int(c)},1.0\n" for x, y, c in p.cells))
    out = tmp_path / "report"
    assert ev.main(["--pred", str(preds), "--gt", str(tmp_path / "gt"), "--tissue-maps", str(tmp_path / "maps"),
                    "--out", str(out), "--bootstrap", "0"]) == 0
    markdown = (out / "report.md").read_text()
    assert "## Overall" in markdown and "## Tissue at the cells" in markdown
    assert "tissue_at_cells.png" in {p.name for p in out.iterdir()}


@pytest.mark.parametrize("args, problem", [
    ([], "--pred or --tissue-maps is needed"),
    (["--tissue-maps", "{tmp}/none"], "no tissue_maps_fold<K>.npz"),
    (["--tissue-maps", "{tmp}/partial"], "no tissue map for 3 of the 6 pairs"),
    (["--tissue-maps", "{tmp}/clash"], "is also in another fold's file"),
])
def test_tissue_maps_errors_are_one_line(tmp_path, pairs, capsys, args, problem):
    write_release(tmp_path / "gt", pairs)
    (tmp_path / "none").mkdir()
    write_maps(tmp_path / "partial", pairs[:3], 0)
    write_maps(tmp_path / "clash", pairs[:3], 0)
    write_maps(tmp_path / "clash", pairs[2:], 1)
    argv = ["--gt", str(tmp_path / "gt"), *(a.format(tmp=tmp_path) for a in args)]
    assert ev.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and problem in error[0]


def test_tissue_maps_command_writes_out_of_fold_maps(tmp_path):
    """Member fold<K> on fold K's pairs of a synthetic release, through the predictor's own tissue stage."""
    from conftest import make_weights
    from ocelot_algo.__main__ import main as entry_point
    from ocelot_algo.inputs import open_inputs
    from ocelot_algo.predictor import Predictor
    from ocelot_algo.sample import write_release_sample
    from ocelot_algo.weights import load_member

    release = write_release_sample(tmp_path / "release", pairs=3, seed=0, split="train", folds=2)
    weights = make_weights(tmp_path / "w", injections=("input", "input"), cell_size=128, tissue_size=64)
    for i in range(2):
        for suffix in (".json", ".safetensors"):
            (weights / f"member{i}{suffix}").rename(weights / f"fold{i}{suffix}")
    out = tmp_path / "maps"
    assert entry_point(["tissue-maps", "--weights", str(weights), "--data", str(release), "--out", str(out),
                        "--tta", "flips", "--device", "cpu"]) == 0
    maps = te.read_tissue_maps(out)
    folds = json.loads((release / "folds.json").read_text())["folds"]
    assert maps.fold == {i: k for k, ids in enumerate(folds) for i in ids} and maps.tta == "flips"
    assert maps.cell_size == 128 and maps.members == ["fold0", "fold1"]
    pair_id = folds[1][0]
    with open_inputs(release, split="train") as inputs:
        tissue = inputs.read(inputs.pair_names.index(pair_id)).tissue
    expected = Predictor([load_member(weights, "fold1")], tta="flips").tissue_probabilities(tissue)[1]
    np.testing.assert_allclose(maps.cancer[pair_id], expected, atol=2e-3)  # stored as float16


def test_tissue_maps_command_refuses_a_member_without_tissue_branch(tmp_path, capsys):
    from conftest import make_weights
    from ocelot_algo.__main__ import main as entry_point

    weights = make_weights(tmp_path / "w", injections=("none",), cell_size=128, tissue_size=64)
    (weights / "member0.json").rename(weights / "fold0.json")
    (weights / "member0.safetensors").rename(weights / "fold0.safetensors")
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"folds": [["image_0"]]}))
    code = entry_point(["tissue-maps", "--weights", str(weights), "--data", str(tmp_path / "absent"),
                        "--folds", str(folds), "--out", str(tmp_path / "maps"), "--device", "cpu"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "has no tissue branch" in error[0]


# ------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (SHARED_DATA / "metadata.json").is_file(), reason="../shared/ocelot is absent")
def test_real_annotated_tissue_ceiling_matches_the_data_readme():
    """Classing every annotated cell by the annotated tissue under it scores mF1 ~0.88 (../shared/ocelot/README.md)."""
    truth = ev.load_release(SHARED_DATA)[::10]
    measures = []
    for p in truth:
        measures.append(te.measure_pair(p, np.full((8, 8), 0.5)))  # the map does not matter for the ceiling
    ceiling = te.summarise(measures, None)["classed_by_annotated_tissue"]["mF1"]
    assert ceiling == pytest.approx(0.88, abs=0.04)


# ------------------------------------------------------------------------------------- committed baseline


def test_the_docs_figures_are_the_committed_baseline_report():
    """docs/tissue.md quotes weights/report-tissue/report.json (the shipped members out-of-fold), not copies that drift."""
    report = json.loads((ROOT / "weights" / "report-tissue" / "report.json").read_text())["tissue_at_cells"]
    doc = (ROOT / "docs" / "tissue.md").read_text()
    for name, entry in te.headline(report["overall"]).items():
        lo, hi = entry["ci"]
        assert f"| {te.LABELS[name]} | {entry['value']:.3f} ({lo:.3f}–{hi:.3f}) |" in doc, name
    for fold, section in report["folds"].items():
        assert f"| {fold} | {section['n_images']} | " + " | ".join(
            f"{e['value']:.3f}" for e in te.headline(section).values()) in doc, fold
    assert report["bootstrap_iterations"] == 10_000 and report["tta"] == "all8" and len(report["folds"]) == 5
    assert sum(s["n_images"] for s in report["folds"].values()) == report["overall"]["n_images"] == 311
    assert (ROOT / "weights" / "report-tissue" / "tissue_at_cells.png").stat().st_size < 300_000
