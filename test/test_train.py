"""Training end to end on a few pairs: real ones when ../shared/ocelot is here, else the synthetic release."""
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, SHARED_DATA
from ocelot_algo import train as training
from ocelot_algo.ensemble import (OutOfFold, main as ensemble_main, member_names, out_of_fold_maps, tune_tissue_fusion,
                                  write_weights)
from ocelot_algo.evaluation import TruthImage
from ocelot_algo.data import AugmentConfig, Batcher, cell_targets, load_samples
from ocelot_algo.geometry import Box
from ocelot_algo.model import ModelConfig
from ocelot_algo.points import PostProcess
from ocelot_algo.weights import load_ensemble, load_member

TINY_CELL_ONLY = ["--steps", "3", "--eval-every", "2", "--pairs", "2", "--crops-per-pair", "1", "--crop", "128",
                  "--cell-size", "256", "--tissue-size", "128", "--warmup", "1", "--tta", "flips"]
TINY = [*TINY_CELL_ONLY, "--tissue-steps", "2", "--tissue-batch", "2", "--teacher-tissue", "0.5"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A release-layout folder of 4 pairs in 2 folds."""
    root = tmp_path_factory.mktemp("release")
    if not (SHARED_DATA / "metadata.json").is_file():
        from ocelot_algo.sample import write_release_sample

        return write_release_sample(root, pairs=4, seed=0, split="train", folds=2)
    metadata = json.loads((SHARED_DATA / "metadata.json").read_text())
    folds = [sorted(fold)[:2] for fold in json.loads((SHARED_DATA / "folds.json").read_text())["folds"][:2]]
    ids = folds[0] + folds[1]  # two pairs of each of two slide-level folds: slides stay apart
    metadata["sample_pairs"] = {i: metadata["sample_pairs"][i] for i in ids}
    (root / "metadata.json").write_text(json.dumps(metadata))
    (root / "folds.json").write_text(json.dumps({"folds": folds}))
    for kind, suffix in [("images/train/cell", "jpg"), ("images/train/tissue", "jpg"),
                         ("annotations/train/cell", "csv"), ("annotations/train/tissue", "png")]:
        (root / kind).mkdir(parents=True)
        for i in ids:
            (root / kind / f"{i}.{suffix}").symlink_to(SHARED_DATA / kind / f"{i}.{suffix}")
    return root


def train(*args, launcher=(sys.executable, "-m", "ocelot_algo"), returncode=0, env=None):
    result = subprocess.run([*launcher, "train", *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == returncode, result.stderr[-3000:]
    return result


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_training_stops_at_its_time_budget_resumes_and_exports_a_tuned_member(release, tmp_path, capsys):
    run = tmp_path / "run"
    result = train("--data", str(release), "--fold", "0", "--out", str(run), "--max-minutes", "0", *TINY)
    assert "time budget of 0 min reached at step 1" in result.stderr
    stopped = json.loads((run / "state.json").read_text())
    assert stopped["step"] == 1 and not (run / "model.safetensors").exists()
    assert stopped["history"] == [] and stopped["processes"] == 1  # a checkpoint only: no off-schedule validation
    result = train("--data", str(release), "--fold", "0", "--out", str(run), "--resume", *TINY)
    assert "resumed at step 1" in result.stderr
    straight = tmp_path / "straight"  # the same run without the stop: a resumed run continues exactly
    train("--data", str(release), "--fold", "0", "--out", str(straight), *TINY)
    for name in ("checkpoint.safetensors", "model.safetensors"):
        resumed, direct = load_file(str(run / name)), load_file(str(straight / name))
        assert resumed.keys() == direct.keys() and all(torch.equal(resumed[k], direct[k]) for k in direct), name
    log = (run / "train.log").read_text()
    assert "mF1" in log and "cancer_area_dice" in log
    member = load_member(run, "model")
    info = json.loads((run / "model.json").read_text())["info"]
    assert info["steps"] == 2 + 3 and info["val_tta"] == "flips" and "val_mF1_tuned" in info
    assert set(info["postprocess"]) == {"sigma", "min_distance", "threshold"}  # what it tuned; inference: the manifest's
    assert member.config.injection == "input"
    with np.load(run / "val_maps.npz") as maps:  # the cancer area on the cell grid: for the late fusion's tuning
        assert maps["maps"].shape[1:] == (3, 256, 256) and len(maps["ids"]) == 2
        assert maps["cancer"].shape[1:] == (256, 256) and 0 <= maps["cancer"].min() <= maps["cancer"].max() <= 1
        assert maps["tissue"].shape[1:] == (128, 128)  # and on the tissue grid, for the tissue at the cells

    # one run per folder: resumed only with the arguments that shaped it, never overwritten by a new one
    same_folder = ["--data", str(release), "--fold", "0", "--out", str(run)]
    longer = [a if a != "3" else "4" for a in TINY]  # another schedule: the result would be neither run
    assert training.main([*same_folder, "--resume", *longer]) == 2
    assert one_line_error(capsys) == (f"error: {run / 'state.json'}: --resume with other arguments than the run's: "
                                      "--steps 4 (saved 3)\n")
    assert training.main([*same_folder, *TINY]) == 2
    assert "use --resume to continue it, or another --out" in one_line_error(capsys)
    result = train(*same_folder, "--resume", *TINY, "--eval-every", "1", "--device", "cpu")  # free to change
    assert "resumed at step 5" in result.stderr
    with pytest.raises(training.RunError, match=r"trained by 1 process\(es\), not 2: resume it with as many"):
        training.check_run_folder(run, training.parse_args([*same_folder, "--resume", *TINY]), world=2)


def test_fold_models_become_an_ensemble_tuned_out_of_fold(release, tmp_path):
    runs = [tmp_path / f"fold{k}" for k in (0, 1)]
    for k, run in enumerate(runs):
        train("--data", str(release), "--fold", str(k), "--out", str(run), *TINY)
    runs.append(tmp_path / "fold0-none")  # a second model of fold 0, of another kind: averaged with the first
    train("--data", str(release), "--fold", "0", "--out", str(runs[-1]), "--injection", "none", *TINY_CELL_ONLY)
    weights, report = tmp_path / "weights", tmp_path / "report"
    ensemble_command = [sys.executable, "-m", "ocelot_algo", "ensemble", "--data", str(release), "--bootstrap", "50"]
    result = subprocess.run([*ensemble_command, "--runs", *map(str, runs), "--out", str(weights), "--report", str(report)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ensemble = load_ensemble(weights)
    assert ensemble.names == ["fold0", "fold0-none", "fold1"] and ensemble.manifest["trained"]
    assert ensemble.manifest["tta"] == "flips"  # the TTA its post-processing was tuned with
    assert ensemble.manifest["out_of_fold"]["pairs"] == 4
    assert [m.tissue is None for m in ensemble.members] == [False, True, False]
    assert "CC BY-NC" in ensemble.manifest["licence"]
    licence = (weights / "LICENCE.md").read_text()
    assert "CC BY-NC 4.0" in licence and "fold0, fold0-none, fold1" in licence and "Ryu et al." in licence
    assert (report / "report.md").is_file()
    tuning = json.loads((report / "report.json").read_text())["settings"]["tissue_fusion_tuning"]
    assert ensemble.postprocess.fuses_tissue == tuning["adopted"] and 0 <= tuning["annotated_tissue_mF1"] <= 1
    tissue = json.loads((report / "report.json").read_text())["tissue_at_cells"]
    assert set(tissue["folds"]) == {"0", "1"} and 0 <= tissue["overall"]["dice_patch"]["value"] <= 1
    assert "## Tissue at the cells" in (report / "report.md").read_text()

    # an ablation on fewer folds: only a report, side by side, no weights written, so runs of one fold in
    # folders of the same name (another seed's runs/seed1/fold0) are fine
    ablation, same_name = tmp_path / "ablation", tmp_path / "seed1" / "fold0"
    shutil.copytree(runs[0], same_name)
    result = subprocess.run([*ensemble_command, "--runs", str(runs[0]), str(same_name), "--compare-runs", str(runs[0]),
                             "--report", str(ablation)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cell-only" in (ablation / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablation", "fold0", "fold0-none", "fold1", "report", "seed1",
                                                          "weights"]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs Linux")
def test_distributed_training_with_two_gloo_processes(release, tmp_path):
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ocelot_algo")
    train("--data", str(release), "--fold", "0", "--out", str(tmp_path / "ddp"), "--device", "cpu", *TINY,
          launcher=launcher, env={**os.environ, "TMPDIR": str(tmp_path)})  # torchrun's own files stay in tmp_path
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "ddp" / "state.json").read_text())["processes"] == 2


def test_another_smp_network_from_random_weights_trains_exports_and_loads(release, tmp_path):
    """Any smp architecture and encoder is one setting away; the member's config rebuilds it."""
    run = tmp_path / "fpn"
    train("--data", str(release), "--fold", "0", "--out", str(run), "--arch", "fpn", "--encoder", "resnet18",
          "--init", "random", "--cell-decoder", '{"decoder_segmentation_channels": 32}', *TINY_CELL_ONLY)
    member = load_member(run, "model")
    assert (member.config.arch, member.config.encoder) == ("fpn", "resnet18")
    assert member.config.cell_decoder == {"decoder_segmentation_channels": 32} and member.config.tissue_decoder == {}
    assert type(member.cell.decoder).__name__ == "FPNDecoder"


def test_arguments_that_cannot_train_are_refused(capsys):
    from ocelot_algo.train import parse_args

    for bad, why in ((["--teacher-tissue", "1.5"], "0..1"),
                     (["--injection", "none", "--teacher-tissue", "0.5"], "--injection none has not"),
                     (["--injection", "none", "--tissue-steps", "10"], "--injection none has not"),
                     (["--injection", "none", "--freeze-tissue"], "--injection none has not"),
                     (["--freeze-tissue", "--tissue-steps", "10"], "cannot also take --tissue-steps"),
                     (["--tta", "all4"], "invalid choice"), (["--eval-every", "0"], "--eval-every must be at least 1"),
                     (["--crop", "100"], "--crop must be a multiple of 32"),
                     (["--cell-size", "100"], "patch sizes must be multiples of 32"),
                     (["--steps", "0"], "or 0 for a tissue-only run"),
                     (["--tissue-steps", "4", "--tissue-window", "100"], "--tissue-window must be a multiple of 32"),
                     (["--tissue-window", "128"], "--tissue-window acts on tissue-only steps"),
                     (["--tissue-steps", "4", "--window-at-cell", "2"], "--window-at-cell is a share"),
                     (["--encoder", "resnet34"], "--encoder resnet34 has no offline ImageNet weights"),
                     (["--encoder", "no-such-net", "--init", "random"], "smp cannot build 'unet' on encoder"),
                     (["--arch", "fpn", "--cell-decoder", "[1, 2]"], "must be a JSON object"),
                     (["--arch", "fpn", "--cell-decoder", "{oops"], "not JSON"),
                     (["--arch", "fpn", "--cell-decoder", '{"decoder_channels": [8]}', "--init", "random"],
                      "smp cannot build 'fpn'")):
        with pytest.raises(SystemExit):
            parse_args(["--data", "d", "--fold", "0", "--out", "o", *bad])
        assert why in capsys.readouterr().err
    assert parse_args(["--data", "d", "--fold", "0", "--out", "o"]).teacher_tissue == 0.0


def test_training_reports_user_errors_in_one_line_before_it_starts(release, tmp_path, capsys):
    run = tmp_path / "run"
    missing = tmp_path / "missing"
    assert training.main(["--data", str(missing), "--fold", "0", "--out", str(run)]) == 2
    assert one_line_error(capsys) == f"error: --data {missing}: folder not found\n"
    assert training.main(["--data", str(tmp_path), "--fold", "0", "--out", str(run)]) == 2
    assert f"{tmp_path / 'folds.json'}: cannot read as JSON" in one_line_error(capsys)
    assert training.main(["--data", str(release), "--fold", "2", "--out", str(run)]) == 2
    assert one_line_error(capsys) == f"error: {release / 'folds.json'}: no fold 2 among its 2 (0-based)\n"
    assert not run.exists()
    (tmp_path / "a-file").write_text("")
    assert training.main(["--data", str(release), "--fold", "0", "--out", str(tmp_path / "a-file")]) == 2
    assert one_line_error(capsys) == f"error: --out {tmp_path / 'a-file'}: is a file, not a run folder\n"
    no_images = tmp_path / "no-images"  # an input problem found while loading: InputError, no traceback
    shutil.copytree(release, no_images, symlinks=True, ignore=shutil.ignore_patterns("images"))
    result = train("--data", str(no_images), "--fold", "-1", "--out", str(run), *TINY, returncode=2)
    assert result.stderr.startswith(f"error: {no_images}: no inputs found") and "Traceback" not in result.stderr


def test_folds_that_mix_a_pair_or_a_slide_are_refused(tmp_path):
    pairs = {"001": {"slide_name": "A"}, "002": {"slide_name": "A"}, "003": {"slide_name": "B"}}
    (tmp_path / "metadata.json").write_text(json.dumps({"sample_pairs": pairs}))
    training.check_folds_keep_slides_apart(tmp_path, [["001", "002"], ["003"]])
    with pytest.raises(training.RunError, match=r"folds.json: pair 001 is in folds 0 and 1"):
        training.check_folds_keep_slides_apart(tmp_path, [["001", "002"], ["003", "001"]])
    with pytest.raises(training.RunError, match=r"folds.json: slide A has pairs in folds 0 and 1"):
        training.check_folds_keep_slides_apart(tmp_path, [["001"], ["002", "003"]])


def test_tissue_masks_follow_any_tissue_grid(release):
    """A --tissue-size that does not divide 1024 still gets one label per grid cell, the one at its centre."""
    pair = json.loads((release / "folds.json").read_text())["folds"][0][:1]
    for size in (96, 128, 384):
        assert load_samples(release, pair, 64, size)[0].tissue_mask.shape == (size, size)


def test_batches_are_deterministic_and_targets_follow_the_cells(release):
    samples = load_samples(release, json.loads((release / "folds.json").read_text())["folds"][1], 256, 128)
    batcher = Batcher(samples, crop=128, pairs=2, crops_per_pair=2, target="disk", augment=AugmentConfig(), seed=3)
    first, again, other = batcher(7), batcher(7), batcher(8)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["cell"], other["cell"])
    assert first["cell"].shape == (4, 3, 128, 128) and first["tissue"].shape == (2, 3, 128, 128)
    assert torch.allclose(first["target"].sum(1), torch.ones(4, 128, 128))
    assert first["teacher_share"].eq(0).all()
    teacher = Batcher(samples, crop=128, pairs=2, crops_per_pair=2, target="disk", augment=AugmentConfig(), seed=3,
                      teacher_share=0.5)(7)
    assert all(torch.equal(first[k], teacher[k]) for k in first if k != "teacher_share")  # the same batch otherwise
    assert ((teacher["teacher_share"] > 0) & (teacher["teacher_share"] <= 0.5)).all()


def test_tissue_windows_keep_image_and_mask_together_and_find_the_cell_box(release):
    """Tissue-only batches of windows: the mask is cut where the image is (after the dihedral view), and with
    window_at_cell=1 every window holds part of the cell box, with 0 not always."""
    samples = load_samples(release, json.loads((release / "folds.json").read_text())["folds"][1], 64, 256)
    for s in samples:  # red spells the mask out and green the cell box, so both can be read off a batch
        s.tissue[0] = torch.where(s.tissue_mask == 1, 255, 0).to(s.tissue.dtype)
        s.tissue[1] = 0
        x0, y0, x1, y1 = (round(v * 256) for v in s.box)
        s.tissue[1, max(y0, 0):y1, max(x0, 0):x1] = 255
    still = AugmentConfig(stain=0.0, brightness=0.0, contrast=0.0, blur_p=0.0, noise_p=0.0)

    def windows(at_cell: float) -> list[dict]:
        batcher = Batcher(samples, crop=64, pairs=6, crops_per_pair=2, target="disk", augment=still, seed=1,
                          tissue_window=96, window_at_cell=at_cell)
        assert batcher(0)["tissue"].shape == (6, 3, 256, 256)  # joint batches keep whole patches
        return [batcher(step, crops_per_pair=0) for step in range(4)]

    for batch in windows(1.0):
        assert batch["tissue"].shape == (6, 3, 96, 96) and batch["tissue_mask"].shape == (6, 96, 96)
        known = batch["tissue_mask"] != 255
        assert torch.equal((batch["tissue"][:, 0] > 127)[known], (batch["tissue_mask"] == 1)[known])
        assert (batch["tissue"][:, 1].amax((1, 2)) > 127).all()
    assert not all((batch["tissue"][:, 1].amax((1, 2)) > 127).all() for batch in windows(0.0))


def test_tissue_loss_adds_a_dice_on_cancer_area_and_ignores_unknown():
    mask = torch.tensor([[[0, 1], [1, 255]]])
    right = torch.tensor([[[[4.0, -4.0], [-4.0, 9.0]], [[-4.0, 4.0], [4.0, -9.0]]]])
    wrong = -right
    assert training.tissue_loss(right, mask, 1.0) < training.tissue_loss(right, mask, 0.0) + 0.05
    assert training.tissue_loss(wrong, mask, 1.0) > training.tissue_loss(wrong, mask, 0.0) + 0.5
    flipped_unknown = right.clone()
    flipped_unknown[0, :, 1, 1] *= -1  # the unknown pixel's prediction does not count
    assert torch.allclose(training.tissue_loss(flipped_unknown, mask, 1.0), training.tissue_loss(right, mask, 1.0))
    assert training.tissue_loss(right, torch.full_like(mask, 255), 1.0) == 0


def test_a_tissue_only_run_on_windows_exports_its_last_step(release, tmp_path):
    run = tmp_path / "tissue"
    train("--data", str(release), "--fold", "0", "--out", str(run), "--steps", "0", "--tissue-steps", "2",
          "--tissue-batch", "2", "--tissue-size", "256", "--tissue-window", "128", "--tissue-dice", "1",
          "--cell-size", "128", "--crop", "64", "--tta", "none", "--warmup", "1")
    info = json.loads((run / "model.json").read_text())["info"]
    assert info["steps"] == info["best_step"] == 2 and load_member(run, "model").config.tissue_size == 256
    state = json.loads((run / "state.json").read_text())
    assert "cancer_area_dice" in state["history"][-1] and "mF1" not in state["history"][-1]


def test_disk_and_gaussian_targets():
    points = np.array([[512, 512, 2], [520, 512, 1]])  # two touching cells
    window = Box(0.25, 0.25, 0.75, 0.75)  # 512 px of the patch on a 64-px grid: 8 px per grid px
    disk = cell_targets(points, window, 64, radius_px=2.0, kind="disk")
    assert disk[2, 32, 32] == 1 and disk[1, 32, 33] == 1 and disk[0, 0, 0] == 1  # nearest cell owns each pixel
    gauss = cell_targets(points, window, 64, radius_px=2.0, kind="gaussian")
    assert 0 < gauss[2, 32, 30] < 1 and torch.allclose(gauss.sum(0), torch.ones(64, 64))


def fake_run(folder, ids, value, tta="flips", cancer=None):
    """A run folder as `train` leaves it, with constant maps (and cancer-area maps when given, as a run with a
    tissue branch has) and a placeholder for the weights."""
    folder.mkdir(parents=True)
    extra = {} if cancer is None else {"cancer": np.full((len(ids), 4, 4), cancer, np.float16)}
    np.savez(folder / "val_maps.npz", ids=np.array(ids), maps=np.full((len(ids), 3, 4, 4), value, np.float16), **extra)
    (folder / "model.json").write_text(json.dumps({"model": ModelConfig().to_dict(), "info": {"val_tta": tta}}))
    (folder / "model.safetensors").write_bytes(b"weights of " + folder.name.encode())
    return folder


def test_runs_of_one_fold_are_averaged_out_of_fold_and_partial_overlaps_refused(tmp_path):
    a, b = fake_run(tmp_path / "f0-a", ["001", "002"], 0.2, cancer=0.9), fake_run(tmp_path / "f0-b", ["002", "001"], 0.6)
    c = fake_run(tmp_path / "f1", ["003"], 0.5)
    oof = out_of_fold_maps([a, b, c])
    assert list(oof.maps) == ["001", "002", "003"] and oof.fold == {"001": 0, "002": 0, "003": 1}
    assert np.allclose(oof.maps["001"], 0.4, atol=1e-3) and np.allclose(oof.maps["003"], 0.5, atol=1e-3)
    assert oof.cancer is None  # fold 1 has no run with a tissue branch: no late fusion to tune
    d = fake_run(tmp_path / "f1-tissue", ["003"], 0.5, cancer=0.3)
    cancer = out_of_fold_maps([a, b, c, d]).cancer  # per pair, from the runs that have it
    assert np.allclose(cancer["001"], 0.9, atol=1e-3) and np.allclose(cancer["003"], 0.3, atol=1e-3)
    with pytest.raises(training.RunError, match="pair 002 is also validated"):
        out_of_fold_maps([a, fake_run(tmp_path / "f0-c", ["002", "004"], 0.1)])
    assert member_names([a, c]) == ["f0-a", "f1"]
    with pytest.raises(training.RunError, match="share the folder name 'f1'"):
        member_names([c, fake_run(tmp_path / "other" / "f1", ["005"], 0.1)])


def late_fusion_case(informative: bool) -> tuple[OutOfFold, list[TruthImage]]:
    """12 pairs in 4 folds; each has tumour cells on its left half, background cells on its right. The cell maps
    lean to background everywhere (p_BC = 1.2 p_TC); the cancer-area map is right (left half) or says nothing."""
    maps, cancer, fold, truth = {}, {}, {}, []
    cancer_map = np.where(np.arange(64) < 32, 0.95, 0.05)[None, :].repeat(64, 0) if informative else np.full((64, 64), 0.5)
    for n in range(12):
        pair_id = f"{n:03d}"
        cells = np.array([(x, y, 2 if x < 512 else 1) for x in (100, 300, 700, 900) for y in (200, 600)])
        probs = np.zeros((3, 64, 64), np.float32)
        for x, y, _ in cells:
            probs[1:, y // 16, x // 16] = 0.9 * np.array([1.2, 1.0]) / 2.2
        probs[0] = 1 - probs[1] - probs[2]
        maps[pair_id], cancer[pair_id], fold[pair_id] = probs, cancer_map, n % 4
        truth.append(TruthImage(pair_id, cells.astype(float)))
    return OutOfFold(maps, fold, cancer), truth


def test_late_fusion_is_adopted_only_when_it_wins_on_folds_it_was_not_tuned_on():
    plain = PostProcess(sigma=0, min_distance=2, threshold=0.3)
    params, result = tune_tissue_fusion(*late_fusion_case(informative=True), plain)
    assert result["adopted"] and params.fuses_tissue and (params.sigma, params.threshold) == (0, 0.3)
    assert result["plain_mF1"] == pytest.approx(1 / 3) and result["chosen_on_other_folds_mF1"] == pytest.approx(1.0)
    assert "annotated_tissue_mF1" not in result  # this truth has no tissue masks
    params, result = tune_tissue_fusion(*late_fusion_case(informative=False), plain)
    assert not result["adopted"] and params == plain


def test_ensemble_checks_every_run_before_scoring(tmp_path, capsys):
    """Found at once, in one line: not after the long scoring, nor as maps of one TTA shipped with another."""
    a, b = fake_run(tmp_path / "f0", ["001"], 0.2), fake_run(tmp_path / "f1", ["002"], 0.4, tta="all8")
    settings = ["--data", str(tmp_path / "no-release"), "--report", str(tmp_path / "report")]
    assert ensemble_main(["--runs", str(a), "--compare-runs", str(b), *settings]) == 2
    assert one_line_error(capsys) == ("error: the runs' validation maps were made with different --tta: "
                                      f"all8 ({b}); flips ({a})\n")
    (a / "model.safetensors").unlink()
    assert ensemble_main(["--runs", str(a), *settings, "--out", str(tmp_path / "weights")]) == 2
    assert one_line_error(capsys) == f"error: {a / 'model.safetensors'}: file not found\n"
    other_grid = fake_run(tmp_path / "f0-1024", ["001"], 0.2)
    (other_grid / "model.json").write_text(json.dumps({"model": ModelConfig(cell_size=1024).to_dict(),
                                                       "info": {"val_tta": "flips"}}))
    assert ensemble_main(["--runs", str(b), str(other_grid), *settings]) == 2
    assert one_line_error(capsys).startswith("error: the runs were trained at different --cell-size / --tissue-size: "
                                             f"512/256 ({b}); 1024/256 ({other_grid})")
    (b / "val_maps.npz").unlink()
    assert ensemble_main(["--runs", str(b), *settings]) == 2
    assert one_line_error(capsys) == f"error: {b / 'val_maps.npz'}: file not found\n"
    assert not (tmp_path / "report").exists() and not (tmp_path / "weights").exists()


def test_weights_get_their_manifest_last_and_files_it_does_not_list_are_named(tmp_path, monkeypatch, caplog):
    out, settings = tmp_path / "weights", {"tta": "flips", "postprocess": PostProcess(), "out_of_fold": {"pairs": 2}}
    write_weights(out, [fake_run(tmp_path / "old" / "f0", ["001"], 0.1)], ["f0"], **settings)
    runs = [fake_run(tmp_path / "new" / name, [name], 0.5) for name in ("f0", "f1")]
    copied, copy = [], shutil.copyfile

    def copy_then_fail(source, target):
        if copied:
            raise OSError("disk full")
        copied.append(copy(source, target))

    monkeypatch.setattr(shutil, "copyfile", copy_then_fail)
    with pytest.raises(OSError):
        write_weights(out, runs, ["f0", "f1"], **settings)
    # the old manifest would now list a new f0.safetensors with the old post-processing: better none at all
    assert copied == [out / "f0.safetensors"] and not (out / "manifest.json").exists()
    monkeypatch.undo()
    (out / "stale.json").write_text("{}")
    (out / "stale.safetensors").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="ocelot_algo.ensemble"):
        write_weights(out, runs, ["f0", "f1"], **settings)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["members"] == ["f0", "f1"] and manifest["tta"] == "flips"
    assert (out / "f1.safetensors").read_bytes() == b"weights of f1"
    assert "holds stale.json, stale.safetensors, which its manifest does not list" in caplog.text
    assert (out / "stale.json").exists()


def test_the_cell_branch_learns_on_a_frozen_tissue_branch_taken_from_another_member(release, tmp_path, capsys):
    """--start-from a member, --tissue-from another, --freeze-tissue: only the cell branch changes (item 3 of the
    tissue issue); members whose networks do not fit are refused in one line, before any data is read."""
    from ocelot_algo.model import create_model
    from ocelot_algo.weights import save_member

    config = ModelConfig(cell_size=256, tissue_size=128)
    torch.manual_seed(1)
    save_member(tmp_path, "start", create_model(config))
    save_member(tmp_path, "donor", create_model(config))
    save_member(tmp_path, "finer", create_model(ModelConfig(cell_size=256, tissue_size=256)))
    run = tmp_path / "run"
    common = ["--data", str(release), "--fold", "0", "--start-from", str(tmp_path / "start"), *TINY_CELL_ONLY]
    train(*common, "--out", str(run), "--tissue-from", str(tmp_path / "donor"), "--freeze-tissue")
    trained, start, donor = (load_member(d, n) for d, n in ((run, "model"), (tmp_path, "start"), (tmp_path, "donor")))
    for key, value in donor.tissue.state_dict().items():  # weights and BatchNorm statistics alike
        assert torch.equal(trained.tissue.state_dict()[key], value), key
    changed = [k for k, v in start.cell.state_dict().items() if not torch.equal(trained.cell.state_dict()[k], v)]
    assert len(changed) > len(start.cell.state_dict()) // 2
    assert json.loads((run / "model.json").read_text())["info"]["freeze_tissue"] is True
    scored = tmp_path / "scored"  # --steps 0: the member as it is, with its validation maps for `ensemble`
    train(*common[:4], "--start-from", str(run / "model"), *TINY_CELL_ONLY, "--steps", "0", "--out", str(scored))
    assert load_file(str(scored / "model.safetensors")).keys() == load_file(str(run / "model.safetensors")).keys()
    assert all(torch.equal(v, load_file(str(run / "model.safetensors"))[k])
               for k, v in load_file(str(scored / "model.safetensors")).items())
    assert (scored / "val_maps.npz").is_file()

    for bad, why in ((["--tissue-from", str(tmp_path / "finer")], "its tissue branch"),
                     (["--cell-size", "512"], "is not the one the arguments describe"),
                     (["--tissue-from", str(tmp_path / "missing")], "missing.json: file not found")):
        out = tmp_path / "refused"
        assert training.main([*common, "--out", str(out), *bad]) == 2
        assert why in one_line_error(capsys) and not out.exists()


def test_the_cell_tissue_head_learns_the_annotated_tissue_under_each_cell_crop(release, tmp_path):
    """--cell-tissue-head: the annotated tissue is put on the cell grid (unknown past the tissue patch), cut and
    turned with each cell crop, and a member without the head starts a run with one (item 3 of the tissue issue)."""
    from ocelot_algo.evaluation import tissue_mask_in_box
    from ocelot_algo.model import create_model
    from ocelot_algo.weights import save_member

    mask = np.array([[1, 2], [2, 1]], dtype=np.uint8)
    assert tissue_mask_in_box(mask, Box(0.0, 0.0, 1.0, 1.0), 4).tolist() == [[1, 1, 2, 2]] * 2 + [[2, 2, 1, 1]] * 2
    assert tissue_mask_in_box(mask, Box(0.5, -0.5, 1.5, 0.5), 2).tolist() == [[255, 255], [2, 255]]

    samples = load_samples(release, json.loads((release / "folds.json").read_text())["folds"][1], 256, 128)
    for s in samples:  # red spells out the cell-grid mask, so crops and their masks can be compared
        assert s.cell_tissue_mask.shape == (256, 256)
        s.cell[0] = torch.where(s.cell_tissue_mask == 1, 255, 0).to(s.cell.dtype)
    still = AugmentConfig(scale=(1.0, 1.0), stain=0.0, brightness=0.0, contrast=0.0, blur_p=0.0, noise_p=0.0)
    batch = Batcher(samples, crop=96, pairs=2, crops_per_pair=3, target="disk", augment=still, seed=2)(0)
    labels = batch["cell_tissue_mask"]
    assert labels.shape == (6, 96, 96) and (labels != 255).any()
    assert torch.equal((batch["cell"][:, 0] > 127)[labels != 255], (labels == 1)[labels != 255])

    save_member(tmp_path, "start", create_model(ModelConfig(cell_size=256, tissue_size=128)))
    run = tmp_path / "run"
    train("--data", str(release), "--fold", "0", "--out", str(run), "--start-from", str(tmp_path / "start"),
          "--cell-tissue-head", "0.5", *TINY_CELL_ONLY)
    trained = load_member(run, "model")
    assert trained.config.cell_tissue_head and trained.cell.aux is not None
    assert json.loads((run / "state.json").read_text())["args"]["cell_tissue_head"] == 0.5
