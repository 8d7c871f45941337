"""Synthetic pairs: Grand-Challenge inputs (the committed `test/input` sample, benchmark inputs of any size) and
release-layout folders with exact ground truth (cell points, tissue masks, folds) for training and evaluation.

No licensed data is involved: every pair is a procedurally drawn H&E-like scene, defined in micrometres around
its tissue patch, and both fields of view are rendered from that same scene. So the cell patch is the 4x
magnified view of its box in the tissue patch (the box `geometry.cell_box_in_tissue` computes from the
metadata), and it carries detail (chromatin texture) the coarser tissue pixels average away. The ground truth
is read off the same scene: each nucleus centre and its tumour membership, and the tumour regions as the mask.

Everything is a pure function of (seed, pair index), so files are byte-identical across runs, and large stacks
are written one pair at a time without holding the stack in memory.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy.spatial import cKDTree

from .cli import HelpFormatter
from .evaluation import BG, CA, UNKNOWN
from .files import write_atomic
from .geometry import PATCH_SIZE, cell_box_in_tissue
from .output import DOCUMENT_TYPE, VERSION

TISSUE_MPP = 0.7778  # nominal resized mpp of the release's tissue patches
CELL_FRACTION = 0.25  # cell field of view / tissue field of view, per side
ORGANS = ("kidney", "endometrium", "bladder", "prostate", "stomach", "head-and-neck")

# Optical densities per unit stain (R, G, B), Macenko's reference H&E vectors: haematoxylin stains nuclei
# purple-blue, eosin stains cytoplasm and stroma pink. Intensity = 255 * 10^(-OD).
HAEMATOXYLIN_OD = np.array([0.5626, 0.7201, 0.4062])
EOSIN_OD = np.array([0.2159, 0.8012, 0.5581])

NUCLEI_PER_MM2 = 7000.0  # densest (tumour) packing; stroma keeps ~30 % of it
MIN_NUCLEUS_SPACING_UM = 7.5
TEXTURE_CUTOFF_UM = 0.8  # chromatin texture fades out as pixels approach this size


@dataclass(frozen=True)
class Waves:
    """A smooth random field: sum of plane waves, evaluated exactly at any resolution."""

    kx: np.ndarray  # wave vectors, radians per micrometre
    ky: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, count: int, wavelengths_um: tuple[float, float]) -> "Waves":
        wavelength = rng.uniform(*wavelengths_um, count)
        angle = rng.uniform(0, 2 * np.pi, count)
        k = 2 * np.pi / wavelength
        return cls(k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi, count),
                   rng.uniform(0.5, 1.0, count) / count)

    def grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """float32 values on the grid ys x xs; cos(a + b) = cos a cos b - sin a sin b makes each wave two outer
        products of 1-D vectors (fast)."""
        total = np.zeros((len(ys), len(xs)), np.float32)
        for kx, ky, phase, amp in zip(self.kx, self.ky, self.phase, self.amplitude):
            a, b = (ky * ys + phase).astype(np.float32), (kx * xs).astype(np.float32)
            total += np.outer(amp * np.cos(a), np.cos(b))
            total -= np.outer(amp * np.sin(a), np.sin(b))
        return total

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.cos(np.multiply.outer(x, self.kx) + np.multiply.outer(y, self.ky) + self.phase) @ self.amplitude


@dataclass(frozen=True)
class Blobs:
    """Tumour regions: discs with wavy borders (radius modulated by a few angular harmonics)."""

    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    harmonics: np.ndarray  # (blobs, orders, 2): amplitude and phase of orders 2, 3, ...

    def membership(self, x: np.ndarray, y: np.ndarray, edge_um: float = 6.0) -> np.ndarray:
        """1 inside a region, 0 outside, a smooth ramp of ~edge_um across the border; x, y broadcast (float32).

        The border harmonics cos(k theta + p) are the real parts of e^(ip) times powers of the unit vector."""
        inside = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y)), np.float32)
        for cx, cy, radius, harmonics in zip(self.cx, self.cy, self.radius, self.harmonics):
            dx, dy = np.float32(x - cx), np.float32(y - cy)
            distance = np.hypot(dx, dy)
            unit = (dx + 1j * dy) / np.maximum(distance, 1e-6)
            power, wobble = unit * unit, np.ones_like(distance)
            for amplitude, phase in harmonics:
                wobble += np.float32(amplitude) * np.real(np.complex64(np.exp(1j * phase)) * power)
                power *= unit
            ramp = 0.5 - 0.5 * np.tanh((distance - np.float32(radius) * wobble) / np.float32(2 * edge_um))
            np.maximum(inside, ramp, out=inside)
        return inside


@dataclass(frozen=True)
class Scene:
    """One pair: its metadata and everything needed to render any view of it (micrometres, tissue origin)."""

    meta: dict
    stroma: Waves  # eosin density variation
    fibres: Waves  # fine collagen striation
    lumen: Waves  # white spaces where it exceeds LUMEN_LEVEL
    chromatin: Waves  # granular texture inside nuclei, resolved only in the cell view
    tumour: Blobs
    nuclei: np.ndarray  # (n, 7): centre x, y, semi-axes a >= b, angle, haematoxylin, texture strength
    noise_seed: tuple[int, ...]


LUMEN_LEVEL = 0.4


def pair_scene(seed: int, index: int) -> Scene:
    """The scene of pair `index` of a sample drawn with `seed`; independent of how many pairs are drawn."""
    rng = np.random.default_rng([seed, index])
    meta = _pair_metadata(rng, seed, index)
    box = cell_box_in_tissue(meta)
    extent = PATCH_SIZE * meta["tissue"]["resized_mpp_x"]  # tissue field of view, micrometres

    # Most pairs centre a tumour region near the cell box, so cell patches show both cell classes.
    count = int(rng.integers(1, 4))
    centres = rng.uniform(0, extent, (count, 2))
    if rng.random() < 0.75:
        centres[0] = (np.array([box.x0 + box.x1, box.y0 + box.y1]) / 2 + rng.normal(0, 0.08, 2)) * extent
    tumour = Blobs(centres[:, 0], centres[:, 1], rng.uniform(0.1, 0.3, count) * extent,
                   np.stack([rng.uniform(0, 0.15, (count, 4)), rng.uniform(0, 2 * np.pi, (count, 4))], axis=-1))
    stroma = Waves.random(rng, 8, (40.0, 300.0))
    fibres = Waves.random(rng, 3, (6.0, 14.0))
    lumen = Waves.random(rng, 6, (80.0, 400.0))
    chromatin = Waves.random(rng, 7, (1.2, 3.0))
    return Scene(meta, stroma, fibres, lumen, chromatin, tumour, _draw_nuclei(rng, extent, tumour, lumen),
                 (seed, index, int(rng.integers(2**31))))


def _pair_metadata(rng: np.random.Generator, seed: int, index: int) -> dict:
    """Metadata shaped like the release's: slide-pixel boxes (ends inclusive) that agree with the offsets."""
    mpp = round(float(rng.uniform(0.227, 0.253)), 4)
    tissue_px = round(PATCH_SIZE * TISSUE_MPP / mpp)  # tissue side in slide pixels
    cell_px = round(tissue_px * CELL_FRACTION)
    offset_x, offset_y = (round(float(v), 3) for v in rng.uniform(0.125, 0.875, 2))
    tx, ty = (int(v) for v in rng.integers(10_000, 90_000, 2))
    cx, cy = tx + round(offset_x * tissue_px - cell_px / 2), ty + round(offset_y * tissue_px - cell_px / 2)
    return {
        "slide_name": f"SYNTHETIC-{seed}-{index:03d}",
        "cell": {"x_start": cx, "y_start": cy, "x_end": cx + cell_px, "y_end": cy + cell_px,
                 "resized_mpp_x": cell_px * mpp / PATCH_SIZE, "resized_mpp_y": cell_px * mpp / PATCH_SIZE},
        "tissue": {"x_start": tx, "y_start": ty, "x_end": tx + tissue_px, "y_end": ty + tissue_px,
                   "resized_mpp_x": tissue_px * mpp / PATCH_SIZE, "resized_mpp_y": tissue_px * mpp / PATCH_SIZE},
        "patch_x_offset": offset_x,
        "patch_y_offset": offset_y,
        "mpp_x": mpp,
        "mpp_y": mpp,
        "organ": ORGANS[int(rng.integers(len(ORGANS)))],
        "subset": "test",
    }


def _draw_nuclei(rng: np.random.Generator, extent: float, tumour: Blobs, lumen: Waves) -> np.ndarray:
    """Poisson nuclei, thinned by tissue type and spacing: dense large vesicular tumour nuclei, sparse
    spindle-shaped fibroblasts and small dark lymphocytes in the stroma, none in white spaces."""
    margin = 20.0
    count = rng.poisson(NUCLEI_PER_MM2 * ((extent + 2 * margin) / 1000) ** 2)
    x, y = rng.uniform(-margin, extent + margin, (2, count))
    in_tumour = tumour.membership(x, y) > 0.5
    keep = (rng.random(count) < np.where(in_tumour, 1.0, 0.3)) & (lumen.at(x, y) < LUMEN_LEVEL)
    x, y, in_tumour = x[keep], y[keep], in_tumour[keep]
    too_close = cKDTree(np.stack([x, y], 1)).query_pairs(MIN_NUCLEUS_SPACING_UM, output_type="ndarray")
    keep = np.ones(len(x), bool)
    keep[too_close[:, 1]] = False
    x, y, in_tumour = x[keep], y[keep], in_tumour[keep]

    n = len(x)
    lymphocyte = ~in_tumour & (rng.random(n) < 0.3)
    kinds = [in_tumour, lymphocyte]  # the rest: fibroblasts

    def per_kind(tumour_range, lymphocyte_range, fibroblast_range):
        return np.select(kinds, [rng.uniform(*tumour_range, n), rng.uniform(*lymphocyte_range, n)],
                         rng.uniform(*fibroblast_range, n))

    diameter = per_kind((9, 13), (5.5, 7), (9, 14))
    aspect = per_kind((1, 1.3), (1, 1.1), (2.5, 3.5))
    darkness = per_kind((0.5, 0.8), (1.1, 1.4), (0.8, 1.1))
    texture = per_kind((0.5, 0.8), (0.1, 0.2), (0.1, 0.2))
    return np.stack([x, y, diameter / 2, diameter / 2 / aspect, rng.uniform(0, np.pi, n), darkness, texture], 1)


def _view_frame(scene: Scene, view: str) -> tuple[np.ndarray, float]:
    """The top-left corner of a view (micrometres from the tissue patch's corner) and its pixel size: the one
    mapping from scene to pixels, shared by the renderer and the ground truth so that they cannot disagree."""
    tissue_mpp = scene.meta["tissue"]["resized_mpp_x"]
    if view == "tissue":
        return np.zeros(2), tissue_mpp
    if view == "cell":
        box = cell_box_in_tissue(scene.meta)
        return np.array([box.x0, box.y0]) * PATCH_SIZE * tissue_mpp, scene.meta["cell"]["resized_mpp_x"]
    raise ValueError(f"view must be 'cell' or 'tissue', not {view!r}")


def _pixel_centres(origin: np.ndarray, pixel: float) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(PATCH_SIZE) + 0.5) * pixel
    return origin[0] + centres, origin[1] + centres


def _whiteness(scene: Scene, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """0 in tissue, 1 in white spaces; crosses 0.5 where the lumen field reaches LUMEN_LEVEL, the level above
    which no nucleus is drawn."""
    return np.clip((scene.lumen.grid(xs, ys) - (LUMEN_LEVEL - 0.05)) * 10, 0, 1)


def render(scene: Scene, view: str) -> np.ndarray:
    """The (1024, 1024, 3) uint8 RGB `view` ("cell" or "tissue") of the scene."""
    origin, pixel = _view_frame(scene, view)
    xs, ys = _pixel_centres(origin, pixel)

    tumour = scene.tumour.membership(xs[None, :], ys[:, None])
    white = _whiteness(scene, xs, ys)
    eosin = (0.3 + 0.25 * scene.stroma.grid(xs, ys) + 0.06 * scene.fibres.grid(xs, ys)) * (1 - 0.3 * tumour)
    haematoxylin = 0.04 + 0.1 * tumour
    # Chromatin granules (~1-3 um) are resolved at cell resolution and averaged away in tissue pixels.
    chromatin = scene.chromatin.grid(xs, ys) * max(0.0, 1 - pixel / TEXTURE_CUTOFF_UM)
    nucleus_stain, nucleus_cover = _rasterise_nuclei(scene.nuclei, xs, ys, pixel, chromatin)
    haematoxylin = (haematoxylin * (1 - nucleus_cover) + nucleus_stain) * (1 - white)
    eosin = eosin * (1 - 0.6 * nucleus_cover) * (1 - white)

    density = haematoxylin[..., None] * HAEMATOXYLIN_OD.astype(np.float32)
    density += eosin[..., None] * EOSIN_OD.astype(np.float32)
    image = 255 * np.exp(-np.log(10) * density)
    noise_rng = np.random.default_rng([*scene.noise_seed, view == "cell"])
    image += noise_rng.standard_normal(image.shape, dtype=np.float32) * 2
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _rasterise_nuclei(nuclei: np.ndarray, xs: np.ndarray, ys: np.ndarray, pixel: float, chromatin: np.ndarray):
    """Haematoxylin and coverage maps of the anti-aliased elliptical nuclei that touch the grid."""
    stain = np.zeros((len(ys), len(xs)), np.float32)
    cover = np.zeros_like(stain)
    for cx, cy, a, b, angle, darkness, texture in nuclei:
        c0, c1 = np.searchsorted(xs, [cx - a - pixel, cx + a + pixel])
        r0, r1 = np.searchsorted(ys, [cy - a - pixel, cy + a + pixel])
        if c0 >= c1 or r0 >= r1:
            continue
        dx, dy = xs[None, c0:c1] - cx, ys[r0:r1, None] - cy
        u, v = dx * math.cos(angle) + dy * math.sin(angle), dy * math.cos(angle) - dx * math.sin(angle)
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        coverage = np.clip((1 - rho) * b / pixel + 0.5, 0, 1)
        granular = darkness * coverage * (1 + texture * chromatin[r0:r1, c0:c1])
        np.maximum(stain[r0:r1, c0:c1], granular, out=stain[r0:r1, c0:c1])
        np.maximum(cover[r0:r1, c0:c1], coverage, out=cover[r0:r1, c0:c1])
    return stain, cover


# -------------------------------------------------------------------------------------------- ground truth


def cell_annotations(scene: Scene) -> np.ndarray:
    """(n, 3) int64 x, y, class of every nucleus centred in the cell field of view, in reading order (rows, then
    columns): the cell-patch pixel holding the centre, class TC (2) where the nucleus lies in a tumour region
    (membership > 0.5, the rule that also drew it as a tumour nucleus), else BC (1)."""
    origin, pixel = _view_frame(scene, "cell")
    x, y = scene.nuclei[:, 0], scene.nuclei[:, 1]
    col, row = np.floor((x - origin[0]) / pixel), np.floor((y - origin[1]) / pixel)
    inside = (col >= 0) & (col < PATCH_SIZE) & (row >= 0) & (row < PATCH_SIZE)
    classes = np.where(scene.tumour.membership(x[inside], y[inside]) > 0.5, 2, 1)
    points = np.stack([col[inside], row[inside], classes], axis=1).astype(np.int64)
    return points[np.lexsort((points[:, 0], points[:, 1]))]


def tissue_annotation(scene: Scene) -> np.ndarray:
    """(1024, 1024) uint8 tissue mask at tissue resolution: cancer area (2) where tumour membership > 0.5, else
    background (1); white spaces, which hold no cells, are unknown (255) as unlabelled areas are in the release."""
    xs, ys = _pixel_centres(*_view_frame(scene, "tissue"))
    mask = np.where(scene.tumour.membership(xs[None, :], ys[:, None]) > 0.5, CA, BG).astype(np.uint8)
    mask[_whiteness(scene, xs, ys) > 0.5] = UNKNOWN
    return mask


# ------------------------------------------------------------------------------------------------- writing


def write_tiff(path: str | Path, images: Iterable[np.ndarray], count: int, *, mpp: float, bigtiff: bool = True,
               multipage: bool = False, compression: str | None = None, rowsperstrip: int | None = None,
               tile: int | None = None) -> Path:
    """Write `count` (1024, 1024, C) images as one tall page (GC's layout) or as one page per image.

    Images are consumed one at a time, except for compressed strips of a tall page: tifffile encodes strips
    from whole pages, so that one case holds the stack in memory. Strip heights and tile sides must divide 1024
    so that every strip or tile holds rows of one image. Resolution tags are in pixels per cm, as GC's TIFF
    validation requires a physical unit."""
    for size in (rowsperstrip, tile):
        if size is not None and PATCH_SIZE % size:
            raise ValueError(f"strip height / tile side must divide {PATCH_SIZE}, not {size}")
    options = {"photometric": "rgb", "compression": compression, "resolution": (1e4 / mpp, 1e4 / mpp),
               "resolutionunit": "CENTIMETER", "tile": None if tile is None else (tile, tile)}
    images = iter(images)
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        if multipage:
            for _ in range(count):
                tif.write(next(images), rowsperstrip=rowsperstrip, **options)
        elif compression and tile is None:
            tif.write(np.concatenate([next(images) for _ in range(count)]), rowsperstrip=rowsperstrip, **options)
        else:
            first = next(images)
            shape = (PATCH_SIZE * count, PATCH_SIZE, first.shape[2])
            stream = itertools.chain([first], itertools.islice(images, count - 1))
            tif.write(_segments(stream, tile), shape=shape, dtype=np.uint8,
                      rowsperstrip=rowsperstrip or shape[0], **options)
    return Path(path)


def _segments(images: Iterable[np.ndarray], tile: int | None) -> Iterator[np.ndarray]:
    """A stream of images as tifffile takes it: tiles in file order, or (uncompressed strips) the images."""
    for image in images:
        if tile is None:
            yield image
        else:
            for row in range(0, PATCH_SIZE, tile):
                for col in range(0, PATCH_SIZE, tile):
                    yield np.ascontiguousarray(image[row:row + tile, col:col + tile])


def write_mha(path: str | Path, images: Iterable[np.ndarray], *, volume: bool = False,
              compress: bool = False) -> Path:
    """Write images as one MetaImage vector image: tall 2-D (1024N, 1024) or a 3-D volume of N slices,
    the two forms panimg produces. Holds the stack in memory (tests only)."""
    import SimpleITK as sitk

    stack = np.stack(list(images)) if volume else np.concatenate(list(images))
    sitk.WriteImage(sitk.GetImageFromArray(stack, isVector=True), str(path), compress)
    return Path(path)


def gc_inputs_json(pair_count: int) -> list[dict]:
    """An `inputs.json` shaped like the one GC adds for each job (serialised socket values); the slugs and
    keys are invented, the relative paths are OCELOT's."""
    def socket(pk: int, slug: str, kind: str, super_kind: str, relative_path: str, **value) -> dict:
        return {"interface": {"title": slug.replace("-", " ").title(), "description": "", "slug": slug,
                              "kind": kind, "pk": pk, "default_value": None, "super_kind": super_kind,
                              "relative_path": relative_path, "overlay_segments": [], "look_up_table": None},
                "value": None, "file": None, "image": None, "pk": 1000 + pk, **value}

    return [
        socket(1, "cell-patches", "Image", "Image", "images/cell_patches",
               image={"pk": "00000000-0000-0000-0000-000000000001", "name": "cell_patches.tif"}),
        socket(2, "tissue-patches", "Image", "Image", "images/tissue_patches",
               image={"pk": "00000000-0000-0000-0000-000000000002", "name": "tissue_patches.tif"}),
        socket(3, "metadata", "Anything", "File", "metadata.json", file=f"metadata.json ({pair_count} pairs)"),
    ]


def write_sample(out_dir: str | Path, pairs: int, seed: int, compression: str | None = None) -> Path:
    """Write a complete GC input folder of `pairs` synthetic pairs; returns out_dir.

    Uncompressed (the default) gives GC's own layout: one tall single-strip BigTIFF per socket. Compressed
    stacks are tiled (256 px), which keeps both writing and reading one pair at a time."""
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1, not {pairs}")
    out_dir = Path(out_dir)
    scenes = [pair_scene(seed, i) for i in range(pairs)]
    for view in ("cell", "tissue"):
        folder = out_dir / "images" / f"{view}_patches"
        folder.mkdir(parents=True, exist_ok=True)
        mpp = float(np.mean([s.meta[view]["resized_mpp_x"] for s in scenes]))
        write_tiff(folder / f"{view}_patches.tif", (render(s, view) for s in scenes), pairs, mpp=mpp,
                   compression=compression, tile=256 if compression else None)
    (out_dir / "metadata.json").write_text(json.dumps([s.meta for s in scenes], indent=2) + "\n")
    (out_dir / "inputs.json").write_text(json.dumps(gc_inputs_json(pairs), indent=2) + "\n")
    return out_dir


def write_truth(path: str | Path, pairs: int, seed: int) -> Path:
    """The exact cell annotations of `write_sample`'s pairs as a "Multiple points" document (image_<i> = pair i,
    no probabilities, `num_images`), the ground-truth JSON that `evaluate --gt` reads: test.sh scores the
    container's output on the sample with it."""
    points = [{"name": f"image_{i}", "point": [int(x), int(y), int(c)]}
              for i in range(pairs) for x, y, c in cell_annotations(pair_scene(seed, i))]
    document = {"type": DOCUMENT_TYPE, "points": points, "num_images": pairs, "version": dict(VERSION)}
    write_atomic(path, json.dumps(document, indent=1) + "\n")
    return Path(path)


RELEASE_INFO = {
    "description": "Synthetic stand-in for the OCELOT 2023 release, same layout: procedurally drawn H&E-like "
                   "scenes with exact ground truth, written by ocelot_algo.sample. No patient or licensed data.",
    "organization": "ocelot_algo (generated)",
    "license": "Generated data; the licence of the ocelot_algo project that generated it applies.",
}
RELEASE_LABELS = {"cell": {"1": "BC (Background Cell)", "2": "TC (Tumor Cell)"},
                  "tissue": {"1": "BG (Background)", "2": "CA (Cancer Area)", "255": "UNK (Unknown)"}}
JPEG_QUALITY = 90


def write_release_sample(out_dir: str | Path, pairs: int, seed: int, split: str = "train", folds: int = 2) -> Path:
    """Write `pairs` synthetic pairs with ground truth in the OCELOT release's layout; returns out_dir.

    So training, evaluation and the release reader run without the licensed data. Ids are "001".."NNN" as in
    the release, and pair id n is `pair_scene(seed, n)` (slide name SYNTHETIC-<seed>-<n>), so a pair's files do
    not depend on how many pairs are written. folds.json deals the ids round-robin into `folds` folds. Every
    file is written atomically and metadata.json last, so a folder with a metadata.json is complete. Files of
    the same names are replaced; pair files of other ids in the split's folders are refused (they would be
    read as pairs the metadata lacks)."""
    if not 1 <= pairs <= 999:
        raise ValueError(f"pairs must be 1..999 (three-digit ids, as in the release), not {pairs}")
    if not 1 <= folds <= pairs:
        raise ValueError(f"folds must be 1..pairs ({pairs}) so that no fold is empty, not {folds}")
    out_dir = Path(out_dir)
    ids = [f"{n:03d}" for n in range(1, pairs + 1)]
    folders = {(kind, view): out_dir / kind / split / view for kind in ("images", "annotations")
               for view in ("cell", "tissue")}
    stale = sorted(path for folder in folders.values() if folder.is_dir() for path in folder.iterdir()
                   if path.stem not in ids)
    if stale:
        raise ValueError(f"{stale[0]}: not a pair of this sample ({len(stale)} such files under {out_dir}); "
                         f"write into an empty folder")
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)

    entries = {}
    for pair_id in ids:
        scene = pair_scene(seed, int(pair_id))
        for view in ("cell", "tissue"):
            write_atomic(folders["images", view] / f"{pair_id}.jpg",
                         _encoded(render(scene, view), "JPEG", quality=JPEG_QUALITY))
        write_atomic(folders["annotations", "cell"] / f"{pair_id}.csv",
                     "".join(f"{x},{y},{cls}\n" for x, y, cls in cell_annotations(scene)))
        write_atomic(folders["annotations", "tissue"] / f"{pair_id}.png", _encoded(tissue_annotation(scene), "PNG"))
        entries[pair_id] = {**scene.meta, "subset": split}
    write_atomic(out_dir / "folds.json", json.dumps({"folds": [ids[k::folds] for k in range(folds)]}) + "\n")
    metadata = {"general_info": RELEASE_INFO, "label_info": RELEASE_LABELS, "sample_pairs": entries}
    write_atomic(out_dir / "metadata.json", json.dumps(metadata, indent=2) + "\n")
    return out_dir


def _encoded(pixels: np.ndarray, image_format: str, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format, **options)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ocelot_algo make-sample", formatter_class=HelpFormatter,
        description="Write synthetic pairs: a Grand-Challenge input folder (default) or, with --layout release, "
                    "the OCELOT release's layout with ground truth and folds.")
    parser.add_argument("--out", required=True, help="folder to write (created; files of the same name replaced)")
    parser.add_argument("--pairs", type=int, default=2, help="pairs to draw")
    parser.add_argument("--seed", type=int, default=0, help="the same seed draws the same pairs")
    parser.add_argument("--layout", choices=("gc", "release"), default="gc",
                        help="gc: one image file per socket and metadata.json, as Grand-Challenge gives; "
                             "release: the OCELOT release's folders")
    parser.add_argument("--truth", default=None,
                        help="gc layout: also write the pairs' exact cell annotations to this JSON (for evaluate --gt)")
    parser.add_argument("--compression", choices=("zlib",), default=None,
                        help="gc layout: zlib-compressed 256 px tiles (without it: uncompressed single strips, as GC stores them)")
    parser.add_argument("--split", default="train", help="release layout: the subset folder and metadata value")
    parser.add_argument("--folds", type=int, default=2, help="release layout: folds in folds.json")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.layout == "release" and (args.compression or args.truth):
        parser.error("--compression and --truth apply to the gc layout only (the release layout has annotations/)")
    try:
        out = write_release_sample(args.out, args.pairs, args.seed, args.split, args.folds) \
            if args.layout == "release" else write_sample(args.out, args.pairs, args.seed, args.compression)
        if args.truth:
            write_truth(args.truth, args.pairs, args.seed)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.pairs} synthetic pairs ({args.layout} layout) to {out}")
    return 0
