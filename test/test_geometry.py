import json

import numpy as np
import pytest
import torch

from ocelot_algo.geometry import (ALL_DIHEDRAL, TTA_MODES, Box, apply_dihedral, cell_box_in_tissue, crop_to_cell,
                                  dihedral_box, dihedral_points, invert_dihedral, sub_box)


def meta(cx=0.5, cy=0.5, cell_mpp=0.2, tissue_mpp=0.8, slide=None):
    m = {"patch_x_offset": cx, "patch_y_offset": cy,
         "cell": {"resized_mpp_x": cell_mpp, "resized_mpp_y": cell_mpp},
         "tissue": {"resized_mpp_x": tissue_mpp, "resized_mpp_y": tissue_mpp}}
    if slide:
        m["cell"].update(slide[0])
        m["tissue"].update(slide[1])
    return m


def test_box_is_centred_on_the_offsets_and_sized_by_mpp():
    box = cell_box_in_tissue(meta(0.625, 0.125))
    assert box == pytest.approx(Box(0.5, 0.0, 0.75, 0.25))
    wide = cell_box_in_tissue(meta(0.5, 0.5, cell_mpp=0.3, tissue_mpp=0.6))  # ratio 2, not a hard-coded 4
    assert wide == pytest.approx(Box(0.25, 0.25, 0.75, 0.75))


def test_slide_boxes_must_agree_with_offsets():
    slide = ({"x_start": 1000, "y_start": 2000, "x_end": 1999, "y_end": 2999},
             {"x_start": 0, "y_start": 0, "x_end": 3999, "y_end": 3999})
    box = cell_box_in_tissue(meta(0.375, 0.625, slide=slide))  # centre (1500, 2500) of 4000
    assert box == pytest.approx(Box(0.25, 0.5, 0.5, 0.75))
    with pytest.raises(ValueError, match="differ by"):
        cell_box_in_tissue(meta(0.375 + 8 / 1024, 0.625, slide=slide))  # 8 tissue px off: a corner/centre mix-up


def test_box_outside_the_tissue_patch_is_an_error_but_a_partial_one_is_kept():
    with pytest.raises(ValueError, match="outside"):
        cell_box_in_tissue(meta(1.2, 0.5))
    partial = cell_box_in_tissue(meta(0.02, 0.5))
    assert partial.x0 < 0 < partial.x1


def test_real_metadata_boxes_agree(shared_data):
    pairs = json.loads((shared_data / "metadata.json").read_text())["sample_pairs"]
    sizes = []
    for pair in pairs.values():
        box = cell_box_in_tissue(pair, tolerance_px=1.0)  # the release agrees to under a tissue pixel
        sizes.append((box.x1 - box.x0) * 1024)
    assert 255 < min(sizes) and max(sizes) < 257


def test_crop_samples_the_box_and_pads_past_the_border():
    tissue = torch.arange(16.0).view(1, 1, 4, 4)  # pixel (r, c) = 4r + c
    inner = crop_to_cell(tissue, torch.tensor([[0.5, 0.25, 1.0, 0.75]]), (2, 2))
    assert torch.allclose(inner[0, 0], torch.tensor([[6.0, 7.0], [10.0, 11.0]]))
    past = crop_to_cell(tissue, torch.tensor([[0.75, 0.0, 1.25, 0.5]]), (2, 2))
    assert torch.allclose(past[0, 0], torch.tensor([[3.0, 0.0], [7.0, 0.0]]))  # padded, not shifted


def test_every_dihedral_inverse_is_exact():
    x = torch.randn(2, 3, 8, 8)
    for view in ALL_DIHEDRAL:
        assert torch.equal(invert_dihedral(apply_dihedral(x, view), view), x)
    assert len({tuple(apply_dihedral(x, v).flatten().tolist()) for v in ALL_DIHEDRAL}) == 8
    assert set(TTA_MODES["flips"]) <= set(ALL_DIHEDRAL)


@pytest.mark.parametrize("view", ALL_DIHEDRAL)
def test_points_and_boxes_move_with_the_pixels(view):
    image = torch.zeros(10, 10)
    image[2, 7] = 1  # x = 7, y = 2
    moved = apply_dihedral(image, view)
    row, col = map(int, torch.nonzero(moved)[0])
    assert dihedral_points(np.array([[7, 2]]), view, 9).tolist() == [[col, row]]

    tissue = torch.zeros(1, 1, 16, 16)
    tissue[..., 2:6, 9:15] = 1  # a block inside the box below
    box = Box(8 / 16, 1 / 16, 15 / 16, 7 / 16)
    crop = crop_to_cell(tissue, torch.tensor([box]), (14, 12))
    moved_crop = crop_to_cell(apply_dihedral(tissue, view), torch.tensor([dihedral_box(box, view)]),
                              tuple(apply_dihedral(crop, view).shape[-2:]))
    assert torch.allclose(moved_crop, apply_dihedral(crop, view), atol=1e-6)


def test_sub_box_of_a_window():
    box = Box(0.2, 0.4, 0.6, 0.8)
    assert sub_box(box, Box(0, 0, 1, 1)) == box
    assert sub_box(box, Box(0.5, 0.25, 1.0, 0.5)) == pytest.approx(Box(0.4, 0.5, 0.6, 0.6))
