"""The joint cell-tissue network, built by `create_model(config)` from segmentation-models-pytorch (smp) parts.

Two smp segmentation networks (encoder -> decoder -> head), each chosen by name in the config:
- the tissue branch segments the (down-sampled) tissue patch into background / cancer area;
- the cell branch segments the cell patch into background / background cell / tumour cell, and receives the
  tissue branch's probabilities, cropped to the cell field of view (see `geometry.crop_to_cell`), either as
  extra input channels ("input"), added to its encoder features ("features"), or both.
  "none" is the cell-only ablation: no tissue branch at all.
Optionally (`cell_tissue_head`) the cell branch has a second head on its decoder that segments the cancer area of its
own field of view, a training-time task supervised by the annotated tissue on the cell grid (~0.39 um/px).

smp is imported only when a network is built: it pulls in timm and torchvision (seconds of imports on a 2-core
machine), which `--help` and input validation do not need.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from .files import is_int
from .geometry import crop_to_cell

INJECTIONS = ("none", "input", "features", "both")
TISSUE_CLASSES = ("background", "cancer_area")
CELL_CLASSES = ("background", "background_cell", "tumour_cell")
# The encoder of configs written before the networks came from smp (a hand-written Lite0 U-Net): the same
# network as smp's timm Lite0 and U-Net decoder, so such configs are read as that (tensors: see weights.py).
HAND_WRITTEN_ENCODER = "efficientnet_lite0"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a member; saved as JSON beside its weights.

    `arch` and `encoder` are smp names (`smp.create_model`; "tu-<name>" is any timm encoder). The decoders are
    keyword arguments of that architecture. A U-Net given fewer `decoder_channels` than `encoder_depth` keeps only
    that many decoder blocks: the shipped 4 of 5 stop at stride 2, ~40% cheaper to train and still 4x finer than
    the 15 px hit radius (the head's output is resized to the input, as for every architecture)."""

    injection: str = "input"
    cell_size: int = 512  # cell patch side after resizing (1024 px at ~0.2 um/px -> ~0.39 um/px)
    tissue_size: int = 256  # tissue patch side after resizing (1024 px at ~0.8 um/px -> ~3.1 um/px)
    arch: str = "unet"
    encoder: str = "tu-tf_efficientnet_lite0"
    encoder_depth: int = 5
    cell_decoder: dict = field(default_factory=lambda: {"decoder_channels": [128, 64, 48, 32]})
    tissue_decoder: dict = field(default_factory=lambda: {"decoder_channels": [96, 48, 32, 24]})
    cell_tissue_head: bool = False  # auxiliary cancer-area head on the cell decoder (training only; see train.py)

    def __post_init__(self):
        if self.injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {INJECTIONS}, not {self.injection!r}")
        for size in (self.cell_size, self.tissue_size):
            if not is_int(size) or size % 32 or not 32 <= size <= 1024:
                raise ValueError(f"patch sizes must be multiples of 32 in 32..1024, not {size!r}")
        for name in ("arch", "encoder"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be an smp name, not {getattr(self, name)!r}")
        if not isinstance(self.cell_tissue_head, bool):
            raise ValueError(f"cell_tissue_head must be true or false, not {self.cell_tissue_head!r}")
        if not is_int(self.encoder_depth) or not 1 <= self.encoder_depth <= 5:
            raise ValueError(f"encoder_depth must be 1..5, not {self.encoder_depth!r}")
        for decoder in (self.cell_decoder, self.tissue_decoder):
            if not isinstance(decoder, dict) or not all(isinstance(k, str) for k in decoder):
                raise ValueError(f"a decoder is a dict of smp keyword arguments, not {decoder!r}")
            channels = decoder.get("decoder_channels", [1])
            if not (isinstance(channels, (list, tuple)) and 1 <= len(channels) <= self.encoder_depth
                    and all(is_int(c) and c >= 1 for c in channels)):
                raise ValueError(f"decoder_channels must be 1..encoder_depth positive channel counts, not {channels!r}")

    @property
    def uses_tissue(self) -> bool:
        return self.injection != "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if data.get("encoder") == HAND_WRITTEN_ENCODER:
            decoders = {k: {"decoder_channels": data[k]} for k in ("cell_decoder", "tissue_decoder") if k in data}
            data = {**data, **decoders, "arch": "unet", "encoder": "tu-tf_efficientnet_lite0", "encoder_depth": 5}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


def _smp_network(config: ModelConfig, in_channels: int, classes: int, decoder: dict) -> nn.Module:
    """`smp.create_model` with no download (encoder_weights=None); a short U-Net is smp's U-Net with its last
    decoder blocks dropped and its head moved up to the last kept block."""
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.base import SegmentationHead
    from segmentation_models_pytorch.base.initialization import initialize_head

    kwargs = dict(decoder)
    channels = list(kwargs.get("decoder_channels", ()))
    short_unet = config.arch.lower() == "unet" and 0 < len(channels) < config.encoder_depth
    if short_unet:  # build the full-depth U-Net, then cut it
        kwargs["decoder_channels"] = channels + channels[-1:] * (config.encoder_depth - len(channels))
    try:
        net = smp.create_model(config.arch, encoder_name=config.encoder, encoder_depth=config.encoder_depth,
                               encoder_weights=None, in_channels=in_channels, classes=classes, **kwargs)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"smp cannot build {config.arch!r} on encoder {config.encoder!r} with {decoder}: "
                         f"{message}") from None
    if short_unet:
        net.decoder.blocks = net.decoder.blocks[: len(channels)]
        net.segmentation_head = SegmentationHead(channels[-1], classes, kernel_size=3)
        initialize_head(net.segmentation_head)
    return net


class Branch(nn.Module):
    """One smp network's encoder, decoder and head; the logits are resized to the input. With `context_channels`
    a context map (the tissue probabilities) is projected and added to every encoder feature ("features"). With
    `aux_classes` a second head on the same decoder output (`forward(..., aux=True)` returns both logits)."""

    def __init__(self, config: ModelConfig, in_channels: int, classes: int, decoder: dict, context_channels: int = 0,
                 aux_classes: int = 0):
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.base.initialization import initialize_head

        net = _smp_network(config, in_channels, classes, decoder)
        self.encoder, self.decoder, self.head = net.encoder, net.decoder, net.segmentation_head
        self.aux = SegmentationHead(self.head[0].in_channels, aux_classes, kernel_size=3) if aux_classes else None
        if self.aux is not None:
            initialize_head(self.aux)
        # feature 0 is the input itself (smp's stride-1 entry); transformer encoders have an empty stride-2 one
        self.context = nn.ModuleList(nn.Conv2d(context_channels, c, 1) for c in self.encoder.out_channels[1:] if c) \
            if context_channels else None
        for conv in self.context or ():
            nn.init.zeros_(conv.weight)  # start as the plain network; training learns how much context to use
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, aux: bool = False):
        features = self.encoder(x)
        if self.context is not None:
            projections = iter(self.context)
            features = features[:1] + [f + next(projections)(F.adaptive_avg_pool2d(context, f.shape[-2:]))
                                       if f.shape[1] else f for f in features[1:]]
        decoded = self.decoder(features)
        logits = _to_size(self.head(decoded), x.shape[-2:])
        return (logits, _to_size(self.aux(decoded), x.shape[-2:])) if aux else logits


def _to_size(logits: torch.Tensor, size) -> torch.Tensor:
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """0..255 RGB -> the [-1, 1] range the EfficientNet-Lite ImageNet weights expect."""
    return (images - 127.5) / 127.5


class CellTissueNet(nn.Module):
    """Inputs are float RGB in 0..255 at the configured sizes; outputs are logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        tissue_channels = len(TISSUE_CLASSES)
        self.tissue = Branch(config, 3, tissue_channels, config.tissue_decoder) \
            if config.uses_tissue else None
        self.cell = Branch(
            config,
            3 + (tissue_channels if config.injection in ("input", "both") else 0),
            len(CELL_CLASSES),
            config.cell_decoder,
            context_channels=tissue_channels if config.injection in ("features", "both") else 0,
            aux_classes=tissue_channels if config.cell_tissue_head else 0,
        )
        self.tissue_frozen = False  # see freeze_tissue

    def freeze_tissue(self) -> None:
        """Keep the tissue branch as it is (a pre-trained one) while the cell branch learns to read it: no gradients,
        and its BatchNorm statistics stay fixed, also after `train()`."""
        self.tissue.requires_grad_(False)
        self.tissue_frozen = True
        self.tissue.eval()

    def train(self, mode: bool = True) -> "CellTissueNet":
        super().train(mode)
        if self.tissue_frozen:
            self.tissue.eval()
        return self

    def tissue_logits(self, tissue: torch.Tensor) -> torch.Tensor:
        return self.tissue(normalize(tissue))

    def cell_logits(self, cell: torch.Tensor, tissue_crop: torch.Tensor | None, aux: bool = False):
        """`tissue_crop`: tissue probabilities on the cell grid (see geometry.crop_to_cell); None for "none".
        `aux`: also the cancer-area logits of the cell_tissue_head."""
        x = normalize(cell)
        injection = self.config.injection
        if injection in ("input", "both"):
            x = torch.cat([x, tissue_crop.to(x.dtype)], dim=1)
        context = tissue_crop if injection in ("features", "both") else None
        return self.cell(x, context, aux=aux)

    def forward(self, cell, tissue=None, boxes=None, owner=None, teacher=None):
        """Training: both branches at once, so gradients of the cell loss reach the tissue branch.

        cell (N, 3, s, s) crops; tissue (P, 3, T, T); boxes (N, 4) each crop's box in its tissue patch;
        owner (N,) which tissue patch each crop belongs to. `teacher`, optional: (maps (P, 2, T, T), share
        (P, 1, T, T)), annotated tissue and how much of it to blend into the predicted context, so the cell branch
        learns to use tissue context before the tissue branch is any good. Returns (cell logits, tissue logits,
        cancer-area logits of the cell_tissue_head), each None where absent; without cell crops (tissue pre-training)
        only the tissue logits."""
        tissue_logits = self.tissue_logits(tissue) if self.tissue is not None else None
        if len(cell) == 0:
            return None, tissue_logits, None
        crops = None
        if tissue_logits is not None:
            context = tissue_logits.float().softmax(1)
            if teacher is not None:
                maps, share = teacher
                context = torch.lerp(context, maps, share)
            crops = crop_to_cell(context[owner], boxes, tuple(cell.shape[-2:])).contiguous(
                memory_format=torch.channels_last)
        aux = self.config.cell_tissue_head
        outputs = self.cell_logits(cell, crops, aux=aux)
        cell_logits, cell_tissue_logits = outputs if aux else (outputs, None)
        return cell_logits, tissue_logits, cell_tissue_logits


def create_model(config: ModelConfig | dict) -> CellTissueNet:
    """The one way to build a network, for training and inference alike."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return CellTissueNet(config)
