import json
import shutil

import pytest
import torch

from conftest import make_weights
from ocelot_algo.weights import BUNDLED_DIR, WeightsError, load_ensemble, resolve_weights_dir


def test_round_trip_is_exact(tmp_path):
    make_weights(tmp_path, injections=("input", "none"))
    ensemble = load_ensemble(tmp_path)
    assert ensemble.names == ["member0", "member1"] and not ensemble.manifest["trained"]
    again = load_ensemble(tmp_path)
    for a, b in zip(ensemble.members, again.members):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, w), k


def test_members_store_float16_weights_and_float32_batchnorm_statistics(tmp_path):
    from safetensors.torch import load_file

    from ocelot_algo.model import ModelConfig, create_model
    from ocelot_algo.weights import load_member, save_member

    model = create_model(ModelConfig(cell_size=64, tissue_size=64)).eval()
    save_member(tmp_path, "m", model)
    stored = load_file(str(tmp_path / "m.safetensors"))
    assert stored["cell.head.0.weight"].dtype == torch.float16
    assert stored["cell.encoder.model.bn1.running_var"].dtype == torch.float32
    assert stored["cell.encoder.model.bn1.num_batches_tracked"].dtype == torch.int64
    loaded = load_member(tmp_path, "m")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.allclose(loaded.tissue_logits(x).softmax(1), model.tissue_logits(x).softmax(1), atol=1e-2)


@pytest.fixture
def weights(tmp_path):
    return make_weights(tmp_path / "w")


def test_missing_folder_or_manifest(tmp_path, weights):
    with pytest.raises(WeightsError, match="not found"):
        load_ensemble(tmp_path / "nowhere")
    (weights / "manifest.json").unlink()
    with pytest.raises(WeightsError, match="manifest.json: file not found"):
        load_ensemble(weights)


def test_manifest_problems_name_the_file(weights):
    path = weights / "manifest.json"
    manifest = json.loads(path.read_text())
    settings_dropped = {k: v for k, v in manifest.items() if k not in ("tta", "postprocess")}
    for broken, message in [("{not json", "not readable JSON"), (json.dumps({**manifest, "members": []}), "non-empty list"),
                            (json.dumps({**manifest, "members": ["member0", "member0"]}), "names a member twice"),
                            (json.dumps({**manifest, "tta": "all16"}), "tta must be"),
                            (json.dumps(settings_dropped), "missing 'tta', 'postprocess'"),
                            (json.dumps({**manifest, "postprocess": {**manifest["postprocess"], "threshold": "0.3"}}),
                             "invalid 'postprocess' .threshold must be a finite number, not '0.3'"),
                            (json.dumps({**manifest, "postprocess": {**manifest["postprocess"], "min_distance": 2.5}}),
                             "invalid 'postprocess' .min_distance must be an integer >= 1"),
                            (json.dumps({**manifest, "format": "other"}), "format")]:
        path.write_text(broken)
        with pytest.raises(WeightsError, match=message) as info:
            load_ensemble(weights)
        assert "manifest.json" in str(info.value)


def test_a_tissue_weighted_class_decision_needs_a_member_with_a_tissue_branch(tmp_path):
    weights = make_weights(tmp_path, injections=("none",))
    path = weights / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "postprocess": {**manifest["postprocess"], "tissue_weight": 0.5}}))
    with pytest.raises(WeightsError, match="manifest.json: 'postprocess' weighs in the tissue prediction, but none of"):
        load_ensemble(weights)


def without_hashes(weights):
    """The manifest without its sha256 entries (as a hand-made one), so the checks behind the hash are reached."""
    path = weights / "manifest.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "sha256"}))


def test_damaged_tensor_data_is_found_by_its_hash_or_as_non_finite_values(weights):
    """safetensors checks its header, not the numbers: NaNs written into the data would load and find no cells."""
    tensors = weights / "member0.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-4000:-3992] = b"\xff" * 8  # NaN in float16
    tensors.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"member0.safetensors: damaged or replaced \(its sha256"):
        load_ensemble(weights)
    without_hashes(weights)
    with pytest.raises(WeightsError, match=r"member0.safetensors: 1 tensors hold NaN or infinite values"):
        load_ensemble(weights)


def test_missing_corrupt_or_truncated_tensors(weights):
    without_hashes(weights)
    tensors = weights / "member0.safetensors"
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="member0.safetensors: corrupt"):
        load_ensemble(weights)
    tensors.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="corrupt"):
        load_ensemble(weights)
    tensors.unlink()
    with pytest.raises(WeightsError, match="member0.safetensors: file not found"):
        load_ensemble(weights)


def test_tensors_that_do_not_match_their_config(weights, tmp_path):
    other = make_weights(tmp_path / "other", injections=("none",))
    shutil.copy(other / "member0.safetensors", weights / "member0.safetensors")  # cell-only tensors, "input" config
    with pytest.raises(WeightsError, match="damaged or replaced"):
        load_ensemble(weights)
    without_hashes(weights)
    with pytest.raises(WeightsError, match="does not match its config"):
        load_ensemble(weights)


@pytest.mark.parametrize("config, problem", [
    ({"model": {"injection": "sideways"}}, "invalid model config .injection must be one of"),
    ({"modl": {}}, "no 'model' object"),
    ({"model": {"cell_size": 512.0}}, "invalid model config .patch sizes must be multiples of 32"),
    ({"model": {"cell_decoder": {"decoder_channels": []}}}, "invalid model config .decoder_channels must be"),
    ({"model": {"cell_decoder": {"decoder_channels": ["128", 64]}}}, "invalid model config .decoder_channels must"),
    ({"model": {"cell_decoder": [128, 64]}}, "invalid model config .a decoder is a dict of smp keyword arguments"),
    ({"model": {"encoder": "no-such-encoder"}}, "invalid model config .smp cannot build 'unet' on encoder"),
    ({"model": {"arch": "unet", "cell_decoder": {"decoder_chanels": [8]}}}, "invalid model config .smp cannot build"),
])
def test_invalid_member_config(weights, config, problem):
    (weights / "member0.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=f"member0.json: {problem}"):
        load_ensemble(weights)


def test_explicit_weights_folder_wins(tmp_path):
    assert resolve_weights_dir(tmp_path) == tmp_path
    assert resolve_weights_dir(None, model_dir=tmp_path / "no-upload") == BUNDLED_DIR  # nothing uploaded: bundled


def test_uploaded_model_folder_is_used_when_it_has_a_manifest(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    assert resolve_weights_dir(None, model_dir) == BUNDLED_DIR  # empty: nothing uploaded
    (model_dir / "manifest.json").write_text("{}")
    assert resolve_weights_dir(None, model_dir) == model_dir


def test_uploaded_model_folder_without_manifest_is_an_error(tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "weights").mkdir(parents=True)
    (model_dir / "weights" / "manifest.json").write_text("{}")  # tar of the folder, not of its contents
    with pytest.raises(WeightsError, match=r"model: holds files but no manifest.json at its top; found "
                                           r"weights/manifest.json: pack the folder's contents"):
        resolve_weights_dir(None, model_dir)


# The shipped members were written by the hand-written network this project had before smp (config "encoder":
# "efficientnet_lite0"); they load converted. What the code of 29f6e63 (the last hand-written one) predicted with
# them, run there: (points, sha256 of [name, x, y, class] in output order, first 16 hex digits, probability sum).
# Here the whole JSON documents were byte-identical; the sum leaves room for other CPUs' last bits.
HAND_WRITTEN_PREDICTIONS = {
    ("sample", "none"): (191, "ac381b5602ea3feb", 165.70993185043335),
    ("sample", "all8"): (192, "bea6c55079221204", 166.2816622555256),
    ("real10", "none"): (1336, "6bc432dd14aa323d", 959.5534451901913),
}


def _points_digest(document: dict) -> tuple[int, str, float]:
    import hashlib

    points = [[p["name"], *p["point"]] for p in document["points"]]
    digest = hashlib.sha256(json.dumps(points).encode()).hexdigest()[:16]
    return len(points), digest, sum(p["probability"] for p in document["points"])


def _ten_real_pairs(data, root):
    """Every 31st pair of the release (10 pairs, several organs) as a release-layout folder of links."""
    meta = json.loads((data / "metadata.json").read_text())
    ids = sorted(meta["sample_pairs"])[::31][:10]
    for view in ("cell", "tissue"):
        (root / "images" / "train" / view).mkdir(parents=True)
        for pair_id in ids:
            (root / "images" / "train" / view / f"{pair_id}.jpg").symlink_to(data / "images" / "train" / view / f"{pair_id}.jpg")
    (root / "metadata.json").write_text(json.dumps({**meta, "sample_pairs": {i: meta["sample_pairs"][i] for i in ids}}))
    return root


@pytest.mark.parametrize("inputs, tta", sorted(HAND_WRITTEN_PREDICTIONS))
def test_shipped_hand_written_members_predict_as_before_the_conversion(inputs, tta, tmp_path, request):
    from conftest import SAMPLE_INPUT
    from ocelot_algo.pipeline import main as predict_main

    if inputs == "sample":
        args = ["--input", str(SAMPLE_INPUT)]
    else:
        args = ["--input", str(_ten_real_pairs(request.getfixturevalue("shared_data"), tmp_path / "in")), "--split", "train"]
    assert json.loads((BUNDLED_DIR / "fold0.json").read_text())["model"]["encoder"] == "efficientnet_lite0"
    assert predict_main([*args, "--output", str(tmp_path / "out"), "--weights", str(BUNDLED_DIR), "--tta", tta,
                         "--device", "cpu", "--quiet"]) == 0
    count, digest, total = _points_digest(json.loads((tmp_path / "out" / "cell_classification.json").read_text()))
    expected = HAND_WRITTEN_PREDICTIONS[inputs, tta]
    assert (count, digest) == expected[:2]
    assert total == pytest.approx(expected[2], abs=1e-4)


def test_hand_written_tensor_names_map_onto_smp_one_to_one():
    """Every tensor of a hand-written member has one place in the smp network, shapes equal (strict loading
    checks the rest); a member whose tensors do not fit its config is refused, not half-loaded."""
    from safetensors.torch import load_file

    from ocelot_algo.model import ModelConfig, create_model
    from ocelot_algo.weights import _from_hand_written

    for name in ("fold0", "fold0-none"):
        config = json.loads((BUNDLED_DIR / f"{name}.json").read_text())["model"]
        state = load_file(str(BUNDLED_DIR / f"{name}.safetensors"))
        model = create_model(ModelConfig.from_dict(config))
        renamed = _from_hand_written(state, model)
        expected = model.state_dict()
        assert len(renamed) == len(state) == len(expected) and set(renamed) == set(expected)
        assert all(renamed[k].shape == expected[k].shape for k in expected)
