"""Training data: the release layout read through the same input and resizing code as inference, targets,
and augmentation that keeps cell patch, tissue patch and the cell box consistent."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .evaluation import load_release, tissue_mask_in_box, tissue_mask_on_grid
from .geometry import ALL_DIHEDRAL, PATCH_SIZE, Box, apply_dihedral, dihedral_box, dihedral_points, sub_box
from .inputs import open_inputs
from .preprocess import to_grid

CELL_RADIUS_UM = 1.4  # target radius around each annotated cell centre
IGNORE = 255


@dataclass
class Sample:
    """One pair, resized to the model's grids once at load time."""

    pair_id: str
    organ: str
    cell: torch.Tensor  # (3, S, S) float16, 0..255
    tissue: torch.Tensor  # (3, T, T) float16, 0..255
    tissue_mask: torch.Tensor  # (T, T) uint8: 0 background, 1 cancer area, 255 unknown
    cell_tissue_mask: torch.Tensor  # (S, S) uint8: the same labels on the cell grid (the cell field of view)
    points: np.ndarray  # (N, 3) x, y, class in cell-patch pixels
    box: Box
    cell_mpp: float


def load_samples(root: Path, ids: list[str], cell_size: int, tissue_size: int, split: str = "train") -> list[Sample]:
    """Pairs `ids` of the release at `root` (images, ground truth, metadata) on the model's grids."""
    truth = {t.id: t for t in load_release(Path(root), split, ids)}
    samples = []
    with open_inputs(root, split=split) as inputs:
        for i, name in enumerate(inputs.pair_names):
            if name not in truth:
                continue
            pair, gt = inputs.read(i), truth[name]
            mask = gt.tissue_mask()
            samples.append(Sample(
                pair_id=name, organ=gt.organ or "unknown",
                cell=to_grid(pair.cell, cell_size)[0].to(torch.float16).contiguous(),
                tissue=to_grid(pair.tissue, tissue_size)[0].to(torch.float16).contiguous(),
                tissue_mask=_labels(tissue_mask_on_grid(mask, tissue_size)),
                cell_tissue_mask=_labels(tissue_mask_in_box(mask, pair.box, cell_size)),
                points=gt.cells.astype(int), box=pair.box, cell_mpp=float(pair.meta["cell"]["resized_mpp_x"])))
    return samples


def _labels(mask: np.ndarray) -> torch.Tensor:
    """The release's tissue labels (1 background, 2 cancer area, 255 unknown) as training labels (0, 1, IGNORE)."""
    return torch.from_numpy(np.select([mask == 1, mask == 2], [0, 1], IGNORE).astype(np.uint8))


# ----------------------------------------------------------------------------------------------- targets


def cell_targets(points: np.ndarray, window: Box, size: int, radius_px: float, kind: str) -> torch.Tensor:
    """(3, size, size) soft targets (background, BC, TC) for a window (fractions) of the cell patch.

    Every pixel belongs to its nearest annotated cell: within `radius_px` of it ("disk"), or with weight
    exp(-d^2 / 2 r^2) ("gaussian"); the rest is background. Touching cells therefore never merge."""
    target = torch.zeros(3, size, size)
    target[0] = 1.0
    if len(points) == 0:
        return target
    u = ((points[:, :2] + 0.5) / PATCH_SIZE - [window.x0, window.y0]) / [window.x1 - window.x0, window.y1 - window.y0]
    grid = np.floor(u * size).astype(int)
    margin = int(math.ceil(3 * radius_px))
    keep = np.all((grid >= -margin) & (grid < size + margin), axis=1)
    grid, classes = grid[keep], points[keep, 2]
    if len(grid) == 0:
        return target
    padded = size + 2 * margin
    owner = np.full((padded, padded), -1)
    owner[grid[:, 1] + margin, grid[:, 0] + margin] = np.arange(len(grid))
    distance, (rows, cols) = ndimage.distance_transform_edt(owner < 0, return_indices=True)
    nearest_class = classes[owner[rows, cols]]
    inner = slice(margin, margin + size)
    distance, nearest_class = distance[inner, inner], nearest_class[inner, inner]
    if kind == "disk":
        weight = (distance <= radius_px).astype(np.float32)
    elif kind == "gaussian":
        weight = np.exp(-(distance ** 2) / (2 * radius_px ** 2)).astype(np.float32)
        weight[distance > 3 * radius_px] = 0
    else:
        raise ValueError(f"target kind must be 'disk' or 'gaussian', not {kind!r}")
    weight = torch.from_numpy(weight)
    for cls in (1, 2):
        target[cls] = weight * torch.from_numpy(nearest_class == cls)
    target[0] = 1.0 - target[1] - target[2]
    return target


# ----------------------------------------------------------------------------------------------- augmentation

# Ruifrok & Johnston's haematoxylin, eosin and DAB optical-density vectors (rows), unit-normalised.
_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED = _HED / _HED.norm(dim=1, keepdim=True)
_HED_INV = torch.linalg.inv(_HED)


def stain_jitter(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Perturb haematoxylin/eosin/DAB concentrations: (B, 3, H, W) 0..255 with per-image (B, 3) factors."""
    od = -torch.log((images.clamp(0, 255) + 1.0) / 256.0)
    hed = torch.einsum("bchw,cd->bdhw", od, _HED_INV)
    hed = hed * scale[:, :, None, None] + shift[:, :, None, None]
    od = torch.einsum("bdhw,dc->bchw", hed, _HED)
    return (256.0 * torch.exp(-od) - 1.0).clamp(0, 255)


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(images.dtype)
    c = images.shape[1]
    x = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@dataclass
class AugmentConfig:
    dihedral: bool = True
    scale: tuple[float, float] = (0.8, 1.25)  # zoom of the cell crop
    stain: float = 0.05  # std of the H/E/D concentration scale and shift
    brightness: float = 12.0  # +- gray levels
    contrast: float = 0.12  # +- relative
    blur_p: float = 0.2
    noise_p: float = 0.2


class Batcher:
    """Deterministic random batches: batch `step` of rank `rank` depends only on (seed, rank, step), so a resumed
    run continues exactly where it stopped. Each batch holds `pairs` tissue patches and `crops_per_pair` cell crops
    of each (the tissue branch is as costly per image as the cell branch; sharing it halves that cost).

    `teacher_share`: each pair draws a share uniform in 0..teacher_share of its ground-truth tissue mask to blend
    into the tissue context its cell crops see (see `CellTissueNet.forward`).

    `tissue_window`: tissue-only batches hold windows of that side of the tissue grid instead of whole patches, so a
    finer grid costs per step what the coarse one does; a share `window_at_cell` of them contains the cell box,
    where the cell branch reads the tissue prediction, the rest lie anywhere."""

    def __init__(self, samples: list[Sample], *, crop: int, pairs: int, crops_per_pair: int, target: str,
                 augment: AugmentConfig, seed: int, rank: int = 0, teacher_share: float = 0.0,
                 tissue_window: int = 0, window_at_cell: float = 0.5):
        self.samples, self.crop, self.pairs, self.crops_per_pair = samples, crop, pairs, crops_per_pair
        self.target, self.augment, self.seed, self.rank = target, augment, seed, rank
        self.teacher_share, self.tissue_window, self.window_at_cell = teacher_share, tissue_window, window_at_cell

    def __call__(self, step: int, pairs: int | None = None, crops_per_pair: int | None = None) -> dict[str, torch.Tensor]:
        """Batch `step`; `crops_per_pair=0` gives tissue patches only (tissue pre-training)."""
        pairs = self.pairs if pairs is None else pairs
        crops_per_pair = self.crops_per_pair if crops_per_pair is None else crops_per_pair
        rng = np.random.default_rng([self.seed, self.rank, step])
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        aug = self.augment
        cells, tissues, masks, boxes, targets, owners, cell_masks = [], [], [], [], [], [], []
        for p, index in enumerate(rng.choice(len(self.samples), pairs, replace=len(self.samples) < pairs)):
            s = self.samples[index]
            view = ALL_DIHEDRAL[rng.integers(8)] if aug.dihedral else ALL_DIHEDRAL[0]
            cell, tissue = apply_dihedral(s.cell, view), apply_dihedral(s.tissue, view)
            points = s.points.copy()
            if len(points):
                points[:, :2] = np.rint(dihedral_points(points[:, :2], view, PATCH_SIZE - 1))
            box = dihedral_box(s.box, view)
            mask = apply_dihedral(s.tissue_mask, view)
            cell_mask = apply_dihedral(s.cell_tissue_mask, view)
            if crops_per_pair == 0 and 0 < self.tissue_window < tissue.shape[-1]:
                tissue, mask = self._window(tissue, mask, box, rng)
            tissues.append(tissue)
            masks.append(mask)
            grid = cell.shape[-1]
            for _ in range(crops_per_pair):
                side = min(grid, int(round(self.crop * rng.uniform(*aug.scale))))
                x0, y0 = rng.integers(0, grid - side + 1, size=2)
                window = Box(x0 / grid, y0 / grid, (x0 + side) / grid, (y0 + side) / grid)
                patch = cell[:, y0:y0 + side, x0:x0 + side].float()[None]
                if side != self.crop:
                    patch = F.interpolate(patch, size=(self.crop, self.crop), mode="bilinear", antialias=True,
                                          align_corners=False)
                cells.append(patch[0])
                window_mask = cell_mask[y0:y0 + side, x0:x0 + side]
                cell_masks.append(window_mask if side == self.crop else
                                  F.interpolate(window_mask[None, None].float(), size=(self.crop, self.crop),
                                                mode="nearest")[0, 0].to(torch.uint8))
                radius = CELL_RADIUS_UM / (s.cell_mpp * PATCH_SIZE / grid) * self.crop / side
                targets.append(cell_targets(points, window, self.crop, radius, self.target))
                boxes.append(sub_box(box, window))
                owners.append(p)
        cell = torch.stack(cells) if cells else torch.zeros(0, 3, self.crop, self.crop)
        tissue = torch.stack(tissues).float()
        cell, tissue = self._photometric(cell, tissue, torch.tensor(owners, dtype=torch.long), rng, gen)
        teacher_share = rng.uniform(0.0, self.teacher_share, pairs) if self.teacher_share else np.zeros(pairs)
        return {
            "cell": cell.contiguous(memory_format=torch.channels_last),
            "tissue": tissue.contiguous(memory_format=torch.channels_last),
            "tissue_mask": torch.stack(masks).long(),
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "owner": torch.tensor(owners, dtype=torch.long),
            "target": torch.stack(targets) if targets else torch.zeros(0, 3, self.crop, self.crop),
            "cell_tissue_mask": torch.stack(cell_masks).long() if cell_masks else
            torch.zeros(0, self.crop, self.crop, dtype=torch.long),
            "teacher_share": torch.tensor(teacher_share, dtype=torch.float32),
        }

    def _window(self, tissue: torch.Tensor, mask: torch.Tensor, box: Box, rng) -> tuple[torch.Tensor, torch.Tensor]:
        """A `tissue_window` square of the tissue grid: one holding the cell box's centre (shifted at random
        within the window's middle half), or one anywhere."""
        grid, side = tissue.shape[-1], self.tissue_window
        if rng.random() < self.window_at_cell:
            centre = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2]) * grid
            x0, y0 = np.clip(np.rint(centre - side / 2 + rng.uniform(-side / 4, side / 4, 2)), 0, grid - side).astype(int)
        else:
            x0, y0 = rng.integers(0, grid - side + 1, size=2)
        return tissue[:, y0:y0 + side, x0:x0 + side], mask[y0:y0 + side, x0:x0 + side]

    def _photometric(self, cell, tissue, owners, rng, gen):
        """Stain, brightness and contrast shared by a pair's cell and tissue patch (same slide, same stain);
        blur and noise drawn per image."""
        aug, n = self.augment, len(tissue)
        scale = 1 + aug.stain * torch.randn(n, 3, generator=gen)
        shift = aug.stain * torch.randn(n, 3, generator=gen)
        gain = 1 + aug.contrast * (2 * torch.rand(n, generator=gen) - 1)
        offset = aug.brightness * (2 * torch.rand(n, generator=gen) - 1)

        def apply(images, idx):
            images = stain_jitter(images, scale[idx], shift[idx])
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * gain[idx, None, None, None] + mean + offset[idx, None, None, None]
            out = []
            for image in images:
                if rng.random() < aug.blur_p:
                    image = _blur(image[None], float(rng.uniform(0.3, 1.2)))[0]
                if rng.random() < aug.noise_p:
                    image = image + float(rng.uniform(1, 6)) * torch.randn(image.shape, generator=gen)
                out.append(image)
            return torch.stack(out).clamp(0, 255) if out else images

        return apply(cell, owners), apply(tissue, torch.arange(n))
