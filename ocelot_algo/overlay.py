"""`python -m ocelot_algo overlay`: look at what the model does, pair by pair.

For each chosen pair it writes `<name>_cells.png` (predicted cells as filled dots over the cell patch,
ground truth as rings when known) and `<name>_tissue.png` (the predicted cancer-area probability tinted over
the tissue patch, the cell box, and the ground-truth tissue outline when known).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .cli import DocstringHelpFormatter
from .inputs import InputError, open_inputs
from .pipeline import add_model_arguments, exit_code
from .predictor import Predictor, select_device
from .weights import load_ensemble, resolve_weights_dir

COLOURS = {1: (40, 170, 255), 2: (255, 210, 0)}  # background cell: blue, tumour cell: yellow


def draw_cells(cell: np.ndarray, predicted: np.ndarray, truth: np.ndarray | None) -> Image.Image:
    """predicted (N, 4) x, y, class, probability; truth (M, 3) x, y, class."""
    image = Image.fromarray(cell)
    draw = ImageDraw.Draw(image)
    for x, y, cls in (truth if truth is not None else np.zeros((0, 3)))[:, :3].astype(int):
        draw.ellipse((x - 9, y - 9, x + 9, y + 9), outline=COLOURS[cls], width=2)
    for x, y, cls in predicted[:, :3].astype(int):
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=COLOURS[cls], outline=(0, 0, 0))
    _legend(draw, ["dot: predicted", "ring: ground truth" if truth is not None else "",
                   "blue: background cell", "yellow: tumour cell"])
    return image


def draw_tissue(tissue: np.ndarray, cancer_probability: np.ndarray | None, box, truth_mask: np.ndarray | None) -> Image.Image:
    """cancer_probability: (T, T) in [0, 1] on the tissue grid; truth_mask: uint8 1 = BG, 2 = CA, 255 = unknown."""
    image = tissue.astype(np.float32)
    if cancer_probability is not None:  # blue stands out on H&E pink, where a red tint would not
        p = np.asarray(Image.fromarray(cancer_probability.astype(np.float32)).resize(tissue.shape[1::-1], Image.BILINEAR))
        image = image * (1 - 0.4 * p[..., None]) + np.array([0.0, 80, 255]) * 0.4 * p[..., None]
        image[_outline(p > 0.5)] = (255, 220, 0)
    if truth_mask is not None:
        image[_outline(truth_mask == 2)] = (0, 255, 120)
    result = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    size = tissue.shape[0]
    draw.rectangle([box.x0 * size, box.y0 * size, box.x1 * size, box.y1 * size], outline=(0, 0, 0), width=3)
    _legend(draw, ["blue tint, yellow line: predicted cancer area",
                   "green line: annotated cancer area" if truth_mask is not None else "", "black box: cell patch"])
    return result


def _outline(region: np.ndarray) -> np.ndarray:
    """Pixels of `region` (bool) that touch a pixel outside it, thickened to 3 px."""
    edge = region & ~ndimage.binary_erosion(region, border_value=1)
    return ndimage.binary_dilation(edge)


def _legend(draw: ImageDraw.ImageDraw, lines: list[str]) -> None:
    lines = [line for line in lines if line]
    font = ImageFont.load_default(size=22)
    draw.rectangle((0, 0, 520, 28 * len(lines) + 10), fill=(255, 255, 255))
    for i, line in enumerate(lines):
        draw.text((8, 5 + 28 * i), line, fill=(0, 0, 0), font=font)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocelot_algo overlay", description=__doc__,
                                     formatter_class=DocstringHelpFormatter)
    parser.add_argument("--input", required=True, help="Grand-Challenge input folder or release folder")
    parser.add_argument("--split", default="test", help="split of a release folder")
    parser.add_argument("--pairs", default="0:4", help="pair names (e.g. 003,017) or a slice of positions (e.g. 0:4)")
    parser.add_argument("--out", required=True, help="folder for one PNG per pair (created)")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    return exit_code(lambda: _draw(args))


def _draw(args: argparse.Namespace) -> None:
    """Everything is checked (inputs, pairs, device, weights) before the output folder is made."""
    inputs = open_inputs(args.input, split=args.split)
    chosen = _chosen_pairs(inputs.pair_names, args.pairs)
    device = select_device(args.device)
    ensemble = load_ensemble(resolve_weights_dir(args.weights), device, args.members)
    predictor = Predictor.from_ensemble(ensemble, device, args.tta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = inputs.pair_names
    truth = _release_truth(Path(args.input), args.split, [names[i] for i in chosen]) if inputs.layout == "release" else {}
    with inputs:
        for i in chosen:
            pair = inputs.read(i)
            cell_probs, tissue_probs = predictor.probabilities(pair.cell, pair.tissue, pair.box)
            cells = predictor.points(cell_probs, tissue_probs, pair.box).as_array()
            gt = truth.get(pair.name)
            draw_cells(pair.cell, cells, gt.cells if gt else None).save(out / f"{pair.name}_cells.png")
            draw_tissue(pair.tissue, None if tissue_probs is None else tissue_probs[1], pair.box,
                        gt.tissue_mask() if gt else None).save(out / f"{pair.name}_tissue.png")
            logging.info("%s: %d cells -> %s", pair.name, len(cells), out / f"{pair.name}_cells.png")


def _chosen_pairs(names: list[str], spec: str) -> list[int]:
    """Positions of the pairs asked for: a slice of positions ("0:4") or names ("003,017")."""
    if ":" in spec:
        try:
            return list(range(len(names))[slice(*(int(v) if v else None for v in spec.split(":")))])
        except ValueError:
            raise InputError(f"--pairs: {spec!r} is not a slice of positions like 0:4") from None
    unknown = [name for name in spec.split(",") if name not in names]
    if unknown:
        shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise InputError(f"--pairs: no pair named {unknown[0]!r}; this input has {shown}")
    return [names.index(name) for name in spec.split(",")]


def _release_truth(root: Path, split: str, ids: list[str]) -> dict:
    """Ground truth by pair id where the release folder has annotations for the split, else nothing."""
    from .evaluation import EvaluationInputError, load_release

    try:
        return {t.id: t for t in load_release(root, split, ids)}
    except EvaluationInputError as error:  # e.g. a test split without annotations: predictions alone are drawn
        logging.getLogger("ocelot_algo").warning("no ground truth drawn: %s", error)
        return {}
