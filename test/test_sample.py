"""The synthetic sample: deterministic, GC-shaped, and its two fields of view show the same scene."""
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from ocelot_algo import evaluation, geometry, inputs, sample

COMMITTED = Path(__file__).parent / "input"


@pytest.fixture(scope="module")
def scene():
    return sample.pair_scene(seed=5, index=0)


@pytest.fixture(scope="module")
def views(scene):
    return sample.render(scene, "cell"), sample.render(scene, "tissue")


def test_views_are_rgb_patches_with_he_colours(views):
    for image in views:
        assert image.shape == (1024, 1024, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
        red, green, blue = image.reshape(-1, 3).astype(float).mean(0)
        assert red > blue > green  # pink-purple: eosin and haematoxylin both absorb green most
        dark = (image.sum(-1) < 400).mean()  # nuclei
        assert 0.02 < dark < 0.6


def _tissue_box_resampled(tissue: np.ndarray, box: geometry.Box, size: int) -> np.ndarray:
    """The tissue patch resampled inside `box` onto size x size pixels (the model's own cropping)."""
    maps = torch.from_numpy(tissue).permute(2, 0, 1)[None].float()
    return geometry.crop_to_cell(maps, torch.tensor([box]), (size, size))[0].permute(1, 2, 0).numpy()


def test_cell_patch_is_the_magnified_box_of_its_tissue_patch(scene, views):
    cell, tissue = views
    cell_low = cell.reshape(256, 4, 256, 4, 3).astype(float).mean((1, 3))  # cell patch at tissue resolution
    box = geometry.cell_box_in_tissue(scene.meta)
    right = np.abs(_tissue_box_resampled(tissue, box, 256) - cell_low).mean()
    shift = 0.003  # ~3 tissue px
    wrong = np.abs(_tissue_box_resampled(tissue, geometry.Box(box.x0 + shift, box.y0 + shift, box.x1 + shift,
                                                                box.y1 + shift), 256) - cell_low).mean()
    assert right < 4  # grey levels; resampling and independent noise explain the rest
    assert wrong > 2 * right


def test_cell_patch_has_detail_the_tissue_patch_lacks(views):
    cell, tissue = views
    cell_low = cell.reshape(256, 4, 256, 4, 3).astype(float).mean((1, 3))
    detail = np.abs(cell.astype(float) - np.repeat(np.repeat(cell_low, 4, 0), 4, 1)).mean()
    assert detail > 2.5  # sensor noise alone gives ~1.6; the rest is chromatin and sharp nucleus borders


def test_metadata_is_consistent_and_realistic(scene):
    meta = scene.meta
    geometry.cell_box_in_tissue(meta)  # raises if offsets and slide boxes disagree
    assert meta["cell"]["resized_mpp_x"] == pytest.approx(0.194, abs=0.003)
    assert meta["tissue"]["resized_mpp_x"] == pytest.approx(0.778, abs=0.003)
    assert {"slide_name", "mpp_x", "mpp_y", "organ", "subset"} <= meta.keys()


def test_pair_scene_is_deterministic_and_independent_of_pair_count(scene):
    again = sample.pair_scene(seed=5, index=0)
    assert again.meta == scene.meta and np.array_equal(again.nuclei, scene.nuclei)
    assert sample.pair_scene(seed=6, index=0).meta != scene.meta


def test_make_sample_cli_writes_identical_files_for_the_same_seed(tmp_path):
    for name in ("a", "b"):
        assert sample.main(["--out", str(tmp_path / name), "--pairs", "1", "--seed", "3"]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert [str(p) for p in files] == ["images/cell_patches/cell_patches.tif",
                                       "images/tissue_patches/tissue_patches.tif", "inputs.json", "metadata.json"]
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()


def test_committed_sample_is_gc_shaped_and_matches_the_generator():
    metas = json.loads((COMMITTED / "metadata.json").read_text())
    assert [m["slide_name"] for m in metas] == ["SYNTHETIC-0-000", "SYNTHETIC-0-001"]
    for view in ("cell", "tissue"):
        with tifffile.TiffFile(COMMITTED / "images" / f"{view}_patches" / f"{view}_patches.tif") as tif:
            page = tif.pages[0]
            assert tif.is_bigtiff and len(tif.pages) == 1 and page.shape == (2048, 1024, 3)
            assert page.compression == 1 and len(page.dataoffsets) == 1  # GC's own single-strip layout
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER  # panimg demands a unit
            stack = page.asarray()
        for index, meta in enumerate(metas):
            scene = sample.pair_scene(0, index)
            assert scene.meta == meta
            assert np.array_equal(stack[index * 1024:(index + 1) * 1024], sample.render(scene, view))
    sockets = json.loads((COMMITTED / "inputs.json").read_text())
    assert sorted(s["interface"]["relative_path"] for s in sockets) == [
        "images/cell_patches", "images/tissue_patches", "metadata.json"]


def test_committed_truth_is_the_samples_annotations_and_scores_itself_perfectly(tmp_path):
    """test.sh scores the container's output with it: it must be the sample's own cells, image by image."""
    committed = Path(__file__).parent / "sample-truth.json"
    metas = json.loads((COMMITTED / "metadata.json").read_text())
    assert committed.read_text() == sample.write_truth(tmp_path / "t.json", len(metas), seed=0).read_text()
    truth = evaluation.load_gt_json(committed)
    assert [len(t.cells) for t in truth] == [len(sample.cell_annotations(sample.pair_scene(0, i))) for i in range(2)]
    as_predictions = [np.c_[t.cells, np.ones(len(t.cells))] for t in truth]
    assert evaluation.evaluate_pairs(as_predictions, [t.cells for t in truth])["mF1"] == 1.0


@pytest.mark.parametrize("options", [{"rowsperstrip": 100}, {"tile": 200}])
def test_write_tiff_refuses_segments_that_straddle_pairs(tmp_path, options):
    with pytest.raises(ValueError, match="divide"):
        sample.write_tiff(tmp_path / "x.tif", [], 1, mpp=0.2, **options)


# ------------------------------------------------------------------------------------- release layout

RELEASE_IDS = ["001", "002", "003"]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return sample.write_release_sample(tmp_path_factory.mktemp("release"), pairs=3, seed=0)


def _cell_points(release: Path, pair_id: str) -> np.ndarray:
    return evaluation.load_release(release, "train", [pair_id])[0].cells.astype(int)


def _haematoxylin(image: np.ndarray) -> np.ndarray:
    """Haematoxylin concentration per pixel, unmixed with the renderer's stain vectors."""
    density = np.log10(255 / np.maximum(image.astype(float), 1)).reshape(-1, 3)
    stains = np.stack([sample.HAEMATOXYLIN_OD, sample.EOSIN_OD], axis=1)
    return np.linalg.lstsq(stains, density.T, rcond=None)[0][0].reshape(image.shape[:2])


def test_release_sample_has_the_release_layout(release):
    files = sorted(str(p.relative_to(release)) for p in release.rglob("*") if p.is_file())
    assert files == sorted(["metadata.json", "folds.json"] + [
        f"{kind}/train/{view}/{i}.{ext}" for i in RELEASE_IDS
        for kind, view, ext in [("images", "cell", "jpg"), ("images", "tissue", "jpg"),
                                ("annotations", "cell", "csv"), ("annotations", "tissue", "png")]])
    metadata = json.loads((release / "metadata.json").read_text())
    assert "synthetic" in metadata["general_info"]["description"].lower()
    assert list(metadata["sample_pairs"]) == RELEASE_IDS
    assert all(entry["subset"] == "train" for entry in metadata["sample_pairs"].values())
    assert json.loads((release / "folds.json").read_text()) == {"folds": [["001", "003"], ["002"]]}
    for pair_id in RELEASE_IDS:
        with Image.open(release / "images" / "train" / "cell" / f"{pair_id}.jpg") as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (1024, 1024))


def test_release_sample_opens_as_the_rendered_scenes(release):
    with inputs.open_inputs(release, split="train") as opened:
        assert opened.layout == "release" and opened.pair_names == tuple(RELEASE_IDS)
        pair = opened.read(1)
    scene = sample.pair_scene(0, 2)
    assert pair.meta == {**scene.meta, "subset": "train"}
    for pixels, view in ((pair.cell, "cell"), (pair.tissue, "tissue")):
        assert np.abs(pixels.astype(float) - sample.render(scene, view)).mean() < 3  # JPEG loss only


def test_cell_points_sit_on_the_rendered_nuclei(release):
    at_points, at_random, transposed = [], [], []
    rng = np.random.default_rng(0)
    for pair_id in RELEASE_IDS:
        with Image.open(release / "images" / "train" / "cell" / f"{pair_id}.jpg") as image:
            stain = _haematoxylin(np.asarray(image))
        x, y = _cell_points(release, pair_id)[:, :2].T
        at_points.append(stain[y, x])
        transposed.append(stain[x, y])  # a row/column mix-up lands off the nuclei
        at_random.append(stain[tuple(rng.integers(0, 1024, (2, 500)))])
    points, random, transposed = (np.concatenate(v).mean() for v in (at_points, at_random, transposed))
    assert points > 2 * random and points > 2 * transposed


def test_cell_points_are_the_nucleus_centres_in_the_cell_box(release):
    """Independently of the writer's arithmetic: micrometres -> fractions of the tissue patch -> cell box."""
    for pair_id in RELEASE_IDS:
        scene = sample.pair_scene(0, int(pair_id))
        box = geometry.cell_box_in_tissue(scene.meta)
        x, y = scene.nuclei[:, :2].T / (1024 * scene.meta["tissue"]["resized_mpp_x"])
        col, row = np.floor((x - box.x0) / (box.x1 - box.x0) * 1024), np.floor((y - box.y0) / (box.y1 - box.y0) * 1024)
        inside = (col >= 0) & (col < 1024) & (row >= 0) & (row < 1024)
        tumour = scene.tumour.membership(scene.nuclei[inside, 0], scene.nuclei[inside, 1]) > 0.5
        expected = np.stack([col[inside], row[inside], np.where(tumour, 2, 1)], axis=1)
        assert sorted(map(tuple, _cell_points(release, pair_id))) == sorted(map(tuple, expected.astype(int)))


def test_tissue_mask_agrees_with_the_cell_classes(release):
    classes, regions = [], []
    for truth in evaluation.load_release(release, "train"):
        mask = truth.tissue_mask()
        assert mask.shape == (1024, 1024) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {evaluation.BG, evaluation.CA, evaluation.UNKNOWN}
        classes.append(truth.cells[:, 2])
        regions.append(evaluation.tissue_regions(truth.cells[:, :2], truth.box, mask))
    classes, regions = np.concatenate(classes), np.concatenate(regions)
    assert (classes == 1).sum() > 50 and (classes == 2).sum() > 50  # both classes present, so the check bites
    assert (regions[classes == 2] == evaluation.CA).mean() > 0.95
    assert (regions[classes == 1] == evaluation.BG).mean() > 0.95


def test_ground_truth_as_predictions_scores_perfectly(release):
    truth = evaluation.load_release(release, "train")
    assert [t.id for t in truth] == RELEASE_IDS
    predictions = [np.column_stack([t.cells, np.ones(len(t.cells))]) for t in truth]
    assert evaluation.evaluate_pairs(predictions, [t.cells for t in truth])["mF1"] == 1.0


def test_release_cli_writes_each_pair_independently_of_the_pair_count(release, tmp_path):
    assert sample.main(["--layout", "release", "--out", str(tmp_path), "--pairs", "1", "--folds", "1"]) == 0
    for path in (release / "images", release / "annotations"):
        for original in sorted(p for p in path.rglob("001.*")):
            assert (tmp_path / original.relative_to(release)).read_bytes() == original.read_bytes()
    metadata = json.loads((tmp_path / "metadata.json").read_text())["sample_pairs"]
    assert metadata == {"001": json.loads((release / "metadata.json").read_text())["sample_pairs"]["001"]}


def test_write_release_sample_refuses_empty_folds_and_foreign_pairs(tmp_path):
    with pytest.raises(ValueError, match="no fold is empty"):
        sample.write_release_sample(tmp_path, pairs=2, seed=0, folds=3)
    foreign = tmp_path / "annotations" / "train" / "cell" / "007.csv"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("")
    with pytest.raises(ValueError, match="007.csv: not a pair of this sample"):
        sample.write_release_sample(tmp_path, pairs=2, seed=0)
    assert not (tmp_path / "metadata.json").exists() and not (tmp_path / "images").exists()


def test_make_sample_cli_reports_what_it_cannot_write_in_one_line(tmp_path, capsys):
    foreign = tmp_path / "annotations" / "train" / "cell" / "007.csv"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("")
    assert sample.main(["--out", str(tmp_path), "--layout", "release", "--pairs", "2"]) == 2
    assert capsys.readouterr().err == (f"error: {foreign}: not a pair of this sample (1 such files under {tmp_path}); "
                                       "write into an empty folder\n")
    with pytest.raises(SystemExit):
        sample.main(["--out", str(tmp_path / "x"), "--pairs", "0"])
    assert "--pairs must be at least 1" in capsys.readouterr().err
