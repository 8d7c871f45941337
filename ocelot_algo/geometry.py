"""Where the cell patch lies in the tissue patch, and the dihedral transforms used for augmentation and TTA.

Boxes are fractions of the tissue patch: (x0, y0, x1, y1) with 0 = left/top edge and 1 = right/bottom edge, so
they hold at any resolution the tissue patch is resized to.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

PATCH_SIZE = 1024  # both patches, in pixels, as the challenge delivers them
BOX_TOLERANCE_PX = 4.0  # allowed disagreement between the offset-based and the slide-pixel box, in tissue pixels


class Box(NamedTuple):
    x0: float
    y0: float
    x1: float
    y1: float


def cell_box_in_tissue(meta: dict, tolerance_px: float = BOX_TOLERANCE_PX) -> Box:
    """The cell field of view inside the tissue patch.

    Centre = (patch_x_offset, patch_y_offset), which the release defines as the centre of the cell patch;
    size = cell mpp / tissue mpp of the whole tissue patch (~1/4, not hard-coded). When the slide-pixel boxes
    are present (their ends are inclusive) they must agree within `tolerance_px` tissue pixels, else
    ValueError: a mix-up of centre and corner would otherwise silently shift every tissue crop.
    """
    cell, tissue = meta["cell"], meta["tissue"]
    half_w = 0.5 * cell["resized_mpp_x"] / tissue["resized_mpp_x"]
    half_h = 0.5 * cell["resized_mpp_y"] / tissue["resized_mpp_y"]
    if not (0 < half_w <= 0.5 and 0 < half_h <= 0.5):
        raise ValueError(f"cell mpp / tissue mpp make the cell field of view {2 * half_w:.3g} x {2 * half_h:.3g} "
                         "times the tissue patch; it cannot be larger (are the cell and tissue mpp swapped?)")
    cx, cy = meta["patch_x_offset"], meta["patch_y_offset"]
    box = Box(cx - half_w, cy - half_h, cx + half_w, cy + half_h)

    if all(k in d for d in (cell, tissue) for k in ("x_start", "y_start", "x_end", "y_end")):
        width = tissue["x_end"] - tissue["x_start"] + 1
        height = tissue["y_end"] - tissue["y_start"] + 1
        slide_box = Box((cell["x_start"] - tissue["x_start"]) / width, (cell["y_start"] - tissue["y_start"]) / height,
                        (cell["x_end"] + 1 - tissue["x_start"]) / width, (cell["y_end"] + 1 - tissue["y_start"]) / height)
        worst = max(abs(a - b) for a, b in zip(box, slide_box)) * PATCH_SIZE
        if worst > tolerance_px:
            raise ValueError(
                f"cell box from patch offsets {tuple(round(v * PATCH_SIZE, 1) for v in box)} and from slide pixels "
                f"{tuple(round(v * PATCH_SIZE, 1) for v in slide_box)} differ by {worst:.1f} tissue px "
                f"(> {tolerance_px}); the metadata is inconsistent")
    if box.x1 <= 0 or box.y1 <= 0 or box.x0 >= 1 or box.y0 >= 1:
        raise ValueError(f"cell box {tuple(round(v, 3) for v in box)} lies outside its tissue patch")
    return box


def sub_box(box: Box, window: Box) -> Box:
    """The tissue box of a window of the cell patch (window in fractions of the cell patch)."""
    w, h = box.x1 - box.x0, box.y1 - box.y0
    return Box(box.x0 + window.x0 * w, box.y0 + window.y0 * h, box.x0 + window.x1 * w, box.y0 + window.y1 * h)


def crop_to_cell(tissue_maps: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample (B, C, H, W) tissue maps inside each box (B, 4) onto a grid of `size`; zeros past the border.

    Bilinear sampling at output pixel centres, so a box reaching past the tissue edge is padded, never shifted.
    """
    boxes = boxes.to(device=tissue_maps.device, dtype=torch.float32)
    x0, y0, x1, y1 = boxes.unbind(1)
    zeros = torch.zeros_like(x0)
    theta = torch.stack([torch.stack([x1 - x0, zeros, x0 + x1 - 1], 1),
                         torch.stack([zeros, y1 - y0, y0 + y1 - 1], 1)], 1)
    grid = F.affine_grid(theta, [len(boxes), 1, *size], align_corners=False)
    return F.grid_sample(tissue_maps.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ----------------------------------------------------------------------------------------------- dihedral group


class Dihedral(NamedTuple):
    """Horizontal flip (last axis) first, then `rot` counter-clockwise quarter turns (torch.rot90 on H, W)."""

    rot: int
    flip: bool


IDENTITY = Dihedral(0, False)
ALL_DIHEDRAL = tuple(Dihedral(rot, flip) for flip in (False, True) for rot in range(4))
TTA_MODES = {
    "none": (IDENTITY,),
    "flips": (IDENTITY, Dihedral(0, True), Dihedral(2, True), Dihedral(2, False)),  # id, h-flip, v-flip, both
    "all8": ALL_DIHEDRAL,
}


def apply_dihedral(x: torch.Tensor, t: Dihedral) -> torch.Tensor:
    """Transform the last two axes (H, W) of a tensor."""
    if t.flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, t.rot, dims=(-2, -1)) if t.rot % 4 else x


def invert_dihedral(x: torch.Tensor, t: Dihedral) -> torch.Tensor:
    """Exactly undo `apply_dihedral(., t)`."""
    if t.rot % 4:
        x = torch.rot90(x, -t.rot, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if t.flip else x


def dihedral_points(xy: np.ndarray, t: Dihedral, extent: float) -> np.ndarray:
    """Map (N, 2) x/y coordinates the way `apply_dihedral` maps pixels.

    extent = size - 1 for pixel indices, 1.0 for fractions of the image edge-to-edge."""
    x, y = np.asarray(xy, dtype=float).T
    if t.flip:
        x = extent - x
    for _ in range(t.rot % 4):  # one counter-clockwise quarter turn: column -> row from the bottom
        x, y = y, extent - x
    return np.stack([x, y], axis=1)


def dihedral_box(box: Box, t: Dihedral) -> Box:
    corners = dihedral_points(np.array([[box.x0, box.y0], [box.x1, box.y1]]), t, 1.0)
    (x0, y0), (x1, y1) = corners.min(0), corners.max(0)
    return Box(float(x0), float(y0), float(x1), float(y1))
