"""The joint cell-tissue network, built from small swappable parts by `create_model(config)`.

Two U-Nets on an EfficientNet-Lite0 encoder:
- the tissue branch segments the (down-sampled) tissue patch into background / cancer area;
- the cell branch segments the cell patch into background / background cell / tumour cell, and receives the
  tissue branch's probabilities, cropped to the cell field of view (see `geometry.crop_to_cell`), either as
  extra input channels ("input"), added to its encoder features ("features"), or both.
  "none" is the cell-only ablation: no tissue branch at all.

Only plain torch is imported here, so the entrypoint starts fast (segmentation_models_pytorch pulls in
timm and torchvision, ~4 s of imports on a 2-core machine). The encoder reproduces timm's
`tf_efficientnet_lite0` exactly (tested), so its ImageNet weights load unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .files import is_int
from .geometry import crop_to_cell

INJECTIONS = ("none", "input", "features", "both")
TISSUE_CLASSES = ("background", "cancer_area")
CELL_CLASSES = ("background", "background_cell", "tumour_cell")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a member; saved as JSON beside its weights."""

    injection: str = "input"
    cell_size: int = 512  # cell patch side after resizing (1024 px at ~0.2 um/px -> ~0.39 um/px)
    tissue_size: int = 256  # tissue patch side after resizing (1024 px at ~0.8 um/px -> ~3.1 um/px)
    encoder: str = "efficientnet_lite0"
    cell_decoder: tuple[int, ...] = (128, 64, 48, 32)  # 4 blocks: predicts at stride 2, upsampled (see UnetDecoder)
    tissue_decoder: tuple[int, ...] = (96, 48, 32, 24)

    def __post_init__(self):
        if self.injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {INJECTIONS}, not {self.injection!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; known: {sorted(ENCODERS)}")
        for size in (self.cell_size, self.tissue_size):
            if not is_int(size) or size % 32 or not 32 <= size <= 1024:
                raise ValueError(f"patch sizes must be multiples of 32 in 32..1024, not {size!r}")
        for decoder in (self.cell_decoder, self.tissue_decoder):
            if not (isinstance(decoder, (list, tuple)) and 1 <= len(decoder) <= 5
                    and all(is_int(c) and c >= 1 for c in decoder)):
                raise ValueError(f"a decoder is 1..5 positive channel counts (one per encoder stage), not {decoder!r}")
        self.cell_decoder = tuple(self.cell_decoder)
        self.tissue_decoder = tuple(self.tissue_decoder)

    @property
    def uses_tissue(self) -> bool:
        return self.injection != "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


# ----------------------------------------------------------------------------------------------- encoder


def _tf_same_pad(kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TensorFlow 'SAME' padding for inputs whose size is a multiple of the stride (always the case here)."""
    total = max(kernel - stride, 0)
    before, after = total // 2, total - total // 2
    return (before, after, before, after)


class _SameConv(nn.Conv2d):
    """A bias-free convolution with TF 'SAME' padding, as the Lite0 ImageNet weights were trained with."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        self.pad = _tf_same_pad(kernel, stride)

    def forward(self, x):
        return super().forward(F.pad(x, self.pad))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (ReLU6, no squeeze-excitation).

    Attribute names follow the ImageNet checkpoint (`_blocks.N._expand_conv` ...) minus underscores."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self.expand_conv, self.bn0 = _SameConv(cin, mid, 1), _bn(mid)
        self.depthwise_conv, self.bn1 = _SameConv(mid, mid, kernel, stride, groups=mid), _bn(mid)
        self.project_conv, self.bn2 = _SameConv(mid, cout, 1), _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if hasattr(self, "expand_conv"):
            y = F.relu6(self.bn0(self.expand_conv(y)))
        y = F.relu6(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return x + y if self.residual else y


# (kernel, stride, expansion, output channels, repeats) per stage of EfficientNet-Lite0
_LITE0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                 (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))


class EfficientNetLite0Encoder(nn.Module):
    """Features at strides 2, 4, 8, 16, 32 (16, 24, 40, 112, 320 channels)."""

    out_channels = (16, 24, 40, 112, 320)

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv_stem, self.bn0 = _SameConv(in_channels, 32, 3, 2), _bn(32)
        blocks, cin, self.feature_blocks = [], 32, []
        for kernel, stride, expand, cout, repeats in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
            if cout in self.out_channels:
                self.feature_blocks.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x) -> list[torch.Tensor]:
        x = F.relu6(self.bn0(self.conv_stem(x)))
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.feature_blocks:
                features.append(x)
        return features


ENCODERS = {"efficientnet_lite0": EfficientNetLite0Encoder}


# ----------------------------------------------------------------------------------------------- decoder


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UnetDecoder(nn.Module):
    """Upsample x2, concatenate the skip feature, two 3x3 conv-BN-ReLU.

    With one block per encoder stage (5) the output has full resolution; with 4 it stops at stride 2, which
    costs ~40% less to train and is still 4x finer than the 15 px matching radius."""

    def __init__(self, encoder_channels: tuple[int, ...], channels: tuple[int, ...]):
        super().__init__()
        if not 1 <= len(channels) <= len(encoder_channels):
            raise ValueError(f"decoder needs 1..{len(encoder_channels)} channel counts, got {channels}")
        skips = (list(encoder_channels[-2::-1]) + [0])[: len(channels)]
        cin = encoder_channels[-1]
        self.blocks = nn.ModuleList()
        for skip, cout in zip(skips, channels):
            self.blocks.append(nn.Sequential(_conv_bn_relu(cin + skip, cout), _conv_bn_relu(cout, cout)))
            cin = cout

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        skips = (features[-2::-1] + [None])[: len(self.blocks)]
        x = features[-1]
        for block, skip in zip(self.blocks, skips):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            if skip is not None:
                x = torch.cat([x, skip], dim=1)
            x = block(x)
        return x


# ----------------------------------------------------------------------------------------------- networks


class SegmentationUnet(nn.Module):
    """Encoder + U-Net decoder + 3x3 head. Optionally adds a projected context map to every encoder feature."""

    def __init__(self, encoder: str, in_channels: int, classes: int, decoder: tuple[int, ...], context_channels: int = 0):
        super().__init__()
        self.encoder = ENCODERS[encoder](in_channels)
        self.decoder = UnetDecoder(self.encoder.out_channels, decoder)
        self.head = nn.Conv2d(decoder[-1], classes, 3, padding=1)
        self.context = nn.ModuleList(nn.Conv2d(context_channels, c, 1) for c in self.encoder.out_channels) \
            if context_channels else None
        for conv in self.context or ():
            nn.init.zeros_(conv.weight)  # start as the plain U-Net; training learns how much context to use
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        features = self.encoder(x)
        if self.context is not None:
            features = [f + proj(F.adaptive_avg_pool2d(context, f.shape[-2:])) for f, proj in zip(features, self.context)]
        logits = self.head(self.decoder(features))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def normalize(images: torch.Tensor) -> torch.Tensor:
    """0..255 RGB -> the [-1, 1] range the Lite0 ImageNet weights expect."""
    return (images - 127.5) / 127.5


class CellTissueNet(nn.Module):
    """Inputs are float RGB in 0..255 at the configured sizes; outputs are logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        tissue_channels = len(TISSUE_CLASSES)
        self.tissue = SegmentationUnet(config.encoder, 3, tissue_channels, config.tissue_decoder) \
            if config.uses_tissue else None
        self.cell = SegmentationUnet(
            config.encoder,
            3 + (tissue_channels if config.injection in ("input", "both") else 0),
            len(CELL_CLASSES),
            config.cell_decoder,
            context_channels=tissue_channels if config.injection in ("features", "both") else 0,
        )

    def tissue_logits(self, tissue: torch.Tensor) -> torch.Tensor:
        return self.tissue(normalize(tissue))

    def cell_logits(self, cell: torch.Tensor, tissue_crop: torch.Tensor | None) -> torch.Tensor:
        """`tissue_crop`: tissue probabilities on the cell grid (see geometry.crop_to_cell); None for "none"."""
        x = normalize(cell)
        injection = self.config.injection
        if injection in ("input", "both"):
            x = torch.cat([x, tissue_crop.to(x.dtype)], dim=1)
        context = tissue_crop if injection in ("features", "both") else None
        return self.cell(x, context)

    def forward(self, cell, tissue=None, boxes=None, owner=None, teacher=None):
        """Training: both branches at once, so gradients of the cell loss reach the tissue branch.

        cell (N, 3, s, s) crops; tissue (P, 3, T, T); boxes (N, 4) each crop's box in its tissue patch;
        owner (N,) which tissue patch each crop belongs to. `teacher`, optional: (maps (P, 2, T, T), share
        (P, 1, T, T)), annotated tissue and how much of it to blend into the predicted context, so the cell branch
        learns to use tissue context before the tissue branch is any good. Returns (cell logits, tissue logits or
        None); without cell crops (tissue pre-training) the cell logits are None."""
        if self.tissue is None:
            return self.cell_logits(cell, None), None
        tissue_logits = self.tissue_logits(tissue)
        if len(cell) == 0:
            return None, tissue_logits
        context = tissue_logits.float().softmax(1)
        if teacher is not None:
            maps, share = teacher
            context = torch.lerp(context, maps, share)
        crops = crop_to_cell(context[owner], boxes, tuple(cell.shape[-2:]))
        return self.cell_logits(cell, crops.contiguous(memory_format=torch.channels_last)), tissue_logits


def create_model(config: ModelConfig | dict) -> CellTissueNet:
    """The one way to build a network, for training and inference alike."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return CellTissueNet(config)
