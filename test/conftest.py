"""Shared fixtures: the licensed data when this machine has it (tests skip cleanly otherwise) and untrained
weights of the real architecture, for tests that need a model but not a good one."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "ocelot"
SAMPLE_INPUT = ROOT / "test" / "input"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "metadata.json").is_file():
        pytest.skip("the OCELOT data is not at ../shared/ocelot")
    return SHARED_DATA


def make_weights(directory: Path, injections=("input",), tta="none", seed=0, **config) -> Path:
    """Randomly initialised members (one per injection) and a manifest marked untrained."""
    import torch

    from ocelot_algo.model import ModelConfig, create_model
    from ocelot_algo.points import PostProcess
    from ocelot_algo.weights import save_member, write_manifest

    names = []
    for i, injection in enumerate(injections):
        torch.manual_seed(seed + i)
        model = create_model(ModelConfig(injection=injection, **config))
        with torch.no_grad():  # random BN statistics, so outputs vary across the image like a real model's
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
            # the tissue paths into the cell branch start at zero for training; make them matter here
            torch.nn.init.normal_(model.cell.encoder.model.conv_stem.weight[:, 3:], std=0.5)
            for conv in model.cell.context or ():
                torch.nn.init.normal_(conv.weight, std=0.5)
            for branch in (model.cell, model.tissue):  # decisive outputs, as a trained model's, not ~uniform ones
                if branch is not None:
                    branch.head[0].weight.mul_(30)
        names.append(f"member{i}")
        save_member(directory, names[-1], model, {"note": "untrained, for tests"})
    write_manifest(directory, names, tta=tta, tissue_fusion="mean", postprocess=PostProcess(threshold=0.2), trained=False)
    return directory


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    return make_weights(tmp_path_factory.mktemp("weights"))
