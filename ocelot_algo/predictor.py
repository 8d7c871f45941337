"""Prediction as one object with clear stages: tissue branch (TTA, ensemble) -> crop to the cell field of view
-> cell branch (TTA, ensemble) -> probability maps -> points.

Every test-time view is undone on the probability maps before they are averaged, and the tissue views are
undone *before* the crop, so the crop always looks at the right place of the tissue patch.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict

import numpy as np
import torch

from .geometry import TTA_MODES, Box, apply_dihedral, crop_to_cell, invert_dihedral
from .model import CellTissueNet
from .points import Cells, PostProcess, find_cells
from .preprocess import to_grid
from .weights import TISSUE_FUSIONS, Ensemble


class DeviceError(Exception):
    """The device asked for is not there, or computes no usable numbers on it."""


def select_device(name: str = "auto") -> torch.device:
    """CUDA when present (or asked for); on CPU use every core this process may run on, no more
    (Grand-Challenge's --pids-limit counts threads)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but torch sees no CUDA device (use --device cpu or auto)")
    device = torch.device(name)
    if device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    else:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: autotuning pays off after the first pair
    return device


def cancer_on_cell_grid(tissue_probs: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The tissue map's (2, T, T) cancer-area probability resampled onto the cell grid (size, size), for the late
    fusion of the class decision; 0.5 (no opinion) where the box reaches past the tissue patch."""
    cancer_and_coverage = torch.stack([torch.from_numpy(tissue_probs[1]).float(), torch.ones(tissue_probs.shape[1:])])
    crop = crop_to_cell(cancer_and_coverage[None], torch.tensor([box]), (size, size))[0].numpy()
    return crop[0] + 0.5 * (1.0 - crop[1])


class Predictor:
    """Holds the members on the device. For one pair in a script: `cells(cell, tissue, box)`. The pipeline
    splits that up: `grids` on its reader thread, `probabilities_on_grids` on the device, points on another."""

    def __init__(self, members: list[CellTissueNet], *, tta: str = "all8", tissue_fusion: str = "mean",
                 postprocess: PostProcess = PostProcess(), device: torch.device | str = "cpu"):
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {sorted(TTA_MODES)}, not {tta!r}")
        if tissue_fusion not in TISSUE_FUSIONS:
            raise ValueError(f"tissue_fusion must be one of {TISSUE_FUSIONS}, not {tissue_fusion!r}")
        self.device = torch.device(device)
        self.members = [m.to(self.device, memory_format=torch.channels_last).eval() for m in members]
        self.views = TTA_MODES[tta]
        self.tissue_fusion = tissue_fusion
        self.postprocess = postprocess
        self.cell_size = members[0].config.cell_size
        self.tissue_size = members[0].config.tissue_size
        self.timings: dict[str, float] = defaultdict(float)  # seconds per stage, summed over pairs

    @classmethod
    def from_ensemble(cls, ensemble: Ensemble, device: torch.device | str, tta: str | None = None) -> "Predictor":
        return cls(ensemble.members, tta=tta or ensemble.tta, tissue_fusion=ensemble.tissue_fusion,
                   postprocess=ensemble.postprocess, device=device)

    @contextlib.contextmanager
    def _stage(self, name: str):
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[name] += time.perf_counter() - start

    def _views(self, x: torch.Tensor) -> torch.Tensor:
        """(C, H, W) -> (V, C, H, W): all test-time views in one batch."""
        batch = torch.stack([apply_dihedral(x, view) for view in self.views])
        return batch.contiguous(memory_format=torch.channels_last)

    def _mean_of_views(self, probs: torch.Tensor) -> torch.Tensor:
        """(V, C, H, W) -> (C, H, W), each view mapped back to the original orientation first."""
        return torch.stack([invert_dihedral(p, view) for p, view in zip(probs, self.views)]).mean(0)

    def _forward(self, fn, *args) -> torch.Tensor:
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" \
            else contextlib.nullcontext()
        with autocast:
            return fn(*args).float().softmax(1)

    def grids(self, cell: np.ndarray, tissue: np.ndarray, device: torch.device | str = "cpu"
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1024, 1024, 3) uint8 patches -> the networks' grids (3, S, S) and (3, T, T). Untimed and stateless, so a
        reader thread can call it while the device works on the previous pair."""
        return to_grid(cell, self.cell_size, device)[0], to_grid(tissue, self.tissue_size, device)[0]

    def probabilities(self, cell: np.ndarray, tissue: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray | None]:
        """(1024, 1024, 3) uint8 patches -> cell probabilities (3, S, S) and fused tissue probabilities (2, T, T)."""
        with self._stage("resize"):
            cell_grid, tissue_grid = self.grids(cell, tissue, self.device)
        return self.probabilities_on_grids(cell_grid, tissue_grid, box)

    def _tissue_stage(self, tissue_grid: torch.Tensor) -> tuple[list[int], list[torch.Tensor]]:
        """The members with a tissue branch and each one's tissue probabilities (2, T, T), its views undone and
        averaged; tissue_grid is (3, T, T) 0..255 on the device."""
        with_tissue = [i for i, m in enumerate(self.members) if m.tissue is not None]
        if not with_tissue:
            return [], []
        with self._stage("tissue_forward"):
            views = self._views(tissue_grid)
            per_member = [self._forward(self.members[i].tissue_logits, views) for i in with_tissue]
        with self._stage("tta_ensemble"):
            return with_tissue, [self._mean_of_views(p) for p in per_member]

    @torch.inference_mode()
    def tissue_probabilities(self, tissue: np.ndarray) -> np.ndarray | None:
        """(1024, 1024, 3) uint8 tissue patch -> the members' tissue probabilities (2, T, T) (background, cancer
        area), averaged over views and members as `probabilities` fuses them; None without a tissue branch. The
        tissue branch alone: no cell patch, no cell forward."""
        with self._stage("resize"):
            tissue_grid = to_grid(tissue, self.tissue_size, self.device)[0]
        with_tissue, per_member = self._tissue_stage(tissue_grid.float())
        return torch.stack(per_member).mean(0).cpu().numpy() if with_tissue else None

    @torch.inference_mode()
    def probabilities_on_grids(self, cell_grid: torch.Tensor, tissue_grid: torch.Tensor, box: Box
                               ) -> tuple[np.ndarray, np.ndarray | None]:
        """The same from patches already resized by `preprocess.to_grid` ((3, S, S) and (3, T, T), 0..255)."""
        with self._stage("to_device"):
            cell_grid = cell_grid.to(self.device, torch.float32)
            tissue_grid = tissue_grid.to(self.device, torch.float32)
            boxes = torch.tensor([box], dtype=torch.float32, device=self.device)

        tissue_probs, crops = None, {}
        with_tissue, per_member = self._tissue_stage(tissue_grid)
        if with_tissue:
            with self._stage("tta_ensemble"):
                tissue_probs = torch.stack(per_member).mean(0)
                if self.tissue_fusion == "mean":
                    crop = crop_to_cell(tissue_probs[None], boxes, (self.cell_size,) * 2)[0]
                    crops = {i: crop for i in with_tissue}
                else:
                    stacked = crop_to_cell(torch.stack(per_member), boxes.expand(len(per_member), 4), (self.cell_size,) * 2)
                    crops = dict(zip(with_tissue, stacked))

        cell_views = self._views(cell_grid)
        total = torch.zeros(3, self.cell_size, self.cell_size, device=self.device)
        for i, member in enumerate(self.members):
            with self._stage("tta_ensemble"):
                crop_views = self._views(crops[i]) if i in crops else None
            with self._stage("cell_forward"):
                probs = self._forward(member.cell_logits, cell_views, crop_views)
            with self._stage("tta_ensemble"):
                total += self._mean_of_views(probs)
        if not torch.isfinite(total).all():  # else no peak would pass the threshold: a silent "no cells"
            raise DeviceError(f"the cell probabilities are not finite on {self.device} (on CUDA: a float16 overflow; "
                              "--device cpu computes in float32)")
        with self._stage("to_host"):
            cell_probs = (total / len(self.members)).cpu().numpy()
            tissue_out = tissue_probs.cpu().numpy() if tissue_probs is not None else None
        return cell_probs, tissue_out

    def points(self, cell_probs: np.ndarray, tissue_probs: np.ndarray | None, box: Box) -> Cells:
        """Probability maps (from `probabilities`) -> the pair's cells with the ensemble's post-processing."""
        fuses_tissue = self.postprocess.fuses_tissue and tissue_probs is not None
        cancer = cancer_on_cell_grid(tissue_probs, box, self.cell_size) if fuses_tissue else None
        return find_cells(cell_probs, self.postprocess, cancer)

    def cells(self, cell: np.ndarray, tissue: np.ndarray, box: Box) -> Cells:
        """(1024, 1024, 3) uint8 patches -> the pair's cells with the ensemble's post-processing."""
        cell_probs, tissue_probs = self.probabilities(cell, tissue, box)
        with self._stage("points"):
            return self.points(cell_probs, tissue_probs, box)
