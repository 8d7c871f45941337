"""The synthetic sample: deterministic, GC-shaped, and its two fields of view show the same scene."""
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from ocelot_algo import geometry, sample

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


@pytest.mark.parametrize("options", [{"rowsperstrip": 100}, {"tile": 200}])
def test_write_tiff_refuses_segments_that_straddle_pairs(tmp_path, options):
    with pytest.raises(ValueError, match="divide"):
        sample.write_tiff(tmp_path / "x.tif", [], 1, mpp=0.2, **options)
