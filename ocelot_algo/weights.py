"""Weights on disk: each member is `<name>.safetensors` + `<name>.json` (its ModelConfig), listed in
`manifest.json` with the ensemble's settings and each member's sha256. No pickle when loading members (only
training's ImageNet start reads a torch file, with weights_only); any problem is a WeightsError naming the file,
never a silent fallback to random weights, nor a run on damaged ones.

Members written before the networks came from segmentation-models-pytorch (config `"encoder":
"efficientnet_lite0"`, a hand-written Lite0 U-Net) are the same networks under other tensor names: they load
converted (`ModelConfig.from_dict`, `_from_hand_written`), their files untouched."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from .files import replace_atomically, write_atomic
from .geometry import TTA_MODES
from .model import HAND_WRITTEN_ENCODER, CellTissueNet, ModelConfig, create_model
from .points import PostProcess
from .pretrained import PretrainedError, lite_to_timm

MANIFEST = "manifest.json"
FORMAT = "ocelot-algo-weights/1"
TISSUE_FUSIONS = ("mean", "member")  # average tissue maps over members before cropping, or each member its own
GC_MODEL_DIR = Path("/opt/ml/model")  # where Grand-Challenge unpacks a separately uploaded model.tar.gz
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"


class WeightsError(Exception):
    """Missing, corrupt or mismatched weights; the message names the file."""


@dataclass
class Ensemble:
    members: list[CellTissueNet]
    names: list[str]
    tta: str
    tissue_fusion: str
    postprocess: PostProcess
    manifest: dict


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def shipped_state(model: CellTissueNet) -> dict[str, torch.Tensor]:
    """The tensors as a member stores them: weights in float16, half the download (they load back into float32
    parameters), BatchNorm statistics in float32, whose range float16 may not hold."""
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        keep = not value.is_floating_point() or key.endswith(("running_mean", "running_var"))
        state[key] = value if keep else value.half()
    return state


def save_member(directory: Path, name: str, model: CellTissueNet, info: dict | None = None) -> None:
    """Writes `<name>.safetensors` (see `shipped_state`) and `<name>.json` ({"model": config, "info": training
    facts})."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = shipped_state(model)
    replace_atomically(directory / f"{name}.safetensors", lambda temp: save_file(state, str(temp)))
    write_json(directory / f"{name}.json", {"model": model.config.to_dict(), "info": info or {}})


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return data


def load_member(directory: Path, name: str, device: torch.device | str = "cpu", sha256: str | None = None
                ) -> CellTissueNet:
    """Rebuilds the member from its config and loads its tensors strictly (every key, every shape, finite values;
    the file's sha256 when the manifest gives one: safetensors checks its header, not the numbers)."""
    config_path, tensor_path = Path(directory) / f"{name}.json", Path(directory) / f"{name}.safetensors"
    member = _read_json(config_path)
    if not isinstance(member.get("model"), dict):
        raise WeightsError(f"{config_path}: no 'model' object (the member's config)")
    hand_written = member["model"].get("encoder") == HAND_WRITTEN_ENCODER  # tensors to rename, see below
    try:
        model = create_model(ModelConfig.from_dict(member["model"]))
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{config_path}: invalid model config ({error})") from None
    if not tensor_path.is_file():
        raise WeightsError(f"{tensor_path}: file not found")
    try:
        data = tensor_path.read_bytes()  # read once: hashed, then parsed
    except OSError as error:
        raise WeightsError(f"{tensor_path}: unreadable ({error.strerror})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise WeightsError(f"{tensor_path}: damaged or replaced (its sha256 is not the one in {MANIFEST})")
    try:
        state = load(data)
    except (SafetensorError, ValueError) as error:
        raise WeightsError(f"{tensor_path}: corrupt or unreadable safetensors file ({error})") from None
    not_finite = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if not_finite:
        raise WeightsError(f"{tensor_path}: {len(not_finite)} tensors hold NaN or infinite values, e.g. {not_finite[0]}")
    if hand_written:
        try:
            state = _from_hand_written(state, model)
        except (PretrainedError, ValueError, IndexError) as error:
            raise WeightsError(f"{tensor_path}: not a hand-written Lite0 member as its config says ({error})") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{tensor_path}: does not match its config {config_path.name} "
            f"(missing {len(missing)} tensors e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]}, "
            f"wrong shape {len(wrong)} e.g. {sorted(wrong)[:2]})")
    model.load_state_dict(state)
    return model.to(device).eval()


def _from_hand_written(state: dict[str, torch.Tensor], model: CellTissueNet) -> dict[str, torch.Tensor]:
    """Tensor names of the hand-written network -> smp's: encoder blocks nested by stage (`lite_to_timm`),
    decoder blocks' two conv-BN-ReLU as `conv1`/`conv2`, the head conv as the first of smp's head."""
    renamed = {k: v for k, v in state.items() if not k.startswith(("tissue.", "cell."))}  # left for the check
    for branch_name in ("tissue", "cell"):
        branch, prefix = getattr(model, branch_name), f"{branch_name}."
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if branch is None:
            renamed.update({prefix + k: v for k, v in own.items()})
            continue
        encoder = {k[len("encoder."):]: v for k, v in own.items() if k.startswith("encoder.")}
        for key, value in lite_to_timm(encoder, branch.encoder.model).items():
            renamed[f"{prefix}encoder.model.{key}"] = value
        for key, value in own.items():
            parts = key.split(".")
            if parts[0] == "decoder":  # decoder.blocks.B.C.L... -> decoder.blocks.B.conv{C+1}.L...
                parts[3] = f"conv{int(parts[3]) + 1}"
            elif parts[0] == "head":
                parts.insert(1, "0")
            if parts[0] != "encoder":
                renamed[prefix + ".".join(parts)] = value
    return renamed


def write_manifest(directory: Path, members: list[str], *, tta: str, tissue_fusion: str, postprocess: PostProcess,
                   trained: bool, **extra) -> None:
    """The members (already written to `directory`) with the settings they are run with and their sha256."""
    sha256 = {name: hashlib.sha256((Path(directory) / f"{name}.safetensors").read_bytes()).hexdigest()
              for name in members}
    write_json(Path(directory) / MANIFEST, {
        "format": FORMAT, "trained": trained, "members": members, "tta": tta, "tissue_fusion": tissue_fusion,
        "postprocess": postprocess.to_dict(), **extra, "sha256": sha256})


def load_ensemble(directory: Path, device: torch.device | str = "cpu", members: int | None = None) -> Ensemble:
    """The manifest's members (only the first `members` when given: a faster, smaller ensemble)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise WeightsError(f"{directory}: weights folder not found")
    manifest = _read_json(manifest_path)
    if manifest.get("format") != FORMAT:
        raise WeightsError(f"{manifest_path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    names = manifest.get("members")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise WeightsError(f"{manifest_path}: 'members' must be a non-empty list of member names")
    if len(set(names)) < len(names):
        raise WeightsError(f"{manifest_path}: 'members' names a member twice")
    absent = [key for key in ("tta", "tissue_fusion", "postprocess") if key not in manifest]
    if absent:  # the settings the members were tuned with: never replaced by defaults
        raise WeightsError(f"{manifest_path}: missing {', '.join(repr(key) for key in absent)}")
    tta, fusion = manifest["tta"], manifest["tissue_fusion"]
    if tta not in TTA_MODES or fusion not in TISSUE_FUSIONS:
        raise WeightsError(f"{manifest_path}: tta must be one of {sorted(TTA_MODES)} and tissue_fusion one of "
                           f"{TISSUE_FUSIONS}, got {tta!r} and {fusion!r}")
    try:
        postprocess = PostProcess(**manifest["postprocess"])
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{manifest_path}: invalid 'postprocess' ({error})") from None
    sha256 = manifest.get("sha256", {})
    if not isinstance(sha256, dict):
        raise WeightsError(f"{manifest_path}: 'sha256' must map member names to hashes")
    if members is not None:
        if not 1 <= members <= len(names):
            raise WeightsError(f"{manifest_path}: asked for {members} members, the manifest lists {len(names)}")
        names = names[:members]
    models = [load_member(directory, name, device, sha256.get(name)) for name in names]
    sizes = {(m.config.cell_size, m.config.tissue_size) for m in models}
    if len(sizes) > 1:
        raise WeightsError(f"{manifest_path}: members disagree on patch sizes {sorted(sizes)}")
    if postprocess.fuses_tissue and all(m.tissue is None for m in models):
        raise WeightsError(f"{manifest_path}: 'postprocess' weighs in the tissue prediction, but none of the members "
                           f"{', '.join(names)} has a tissue branch")
    return Ensemble(models, names, tta, fusion, postprocess, manifest)


def resolve_weights_dir(explicit: str | Path | None, model_dir: Path = GC_MODEL_DIR) -> Path:
    """--weights when given; else Grand-Challenge's /opt/ml/model when it holds a manifest; else weights/.

    An uploaded model that is there but has no manifest at its top is an error, not a quiet fallback to the
    bundled weights (the usual cause: a tarball of the folder instead of its contents)."""
    if explicit:
        return Path(explicit)
    if (model_dir / MANIFEST).is_file():
        return model_dir
    if model_dir.is_dir() and any(model_dir.iterdir()):
        nested = sorted(str(p.relative_to(model_dir)) for p in model_dir.glob(f"*/{MANIFEST}"))
        hint = f"; found {nested[0]}: pack the folder's contents (tar -C weights .)" if nested else ""
        raise WeightsError(f"{model_dir}: holds files but no {MANIFEST} at its top{hint}")
    return BUNDLED_DIR
