"""The entrypoint end to end: outputs that Grand-Challenge accepts, and one-line errors that write nothing."""
import argparse
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import tifffile
import torch

from conftest import ROOT, SAMPLE_INPUT
from ocelot_algo.__main__ import COMMANDS, main as entry_point
from ocelot_algo.output import validate_document
from ocelot_algo.pipeline import main as predict_main


def run_process(*args):
    return subprocess.run([sys.executable, "process.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_process_writes_a_valid_document_for_every_pair(random_weights, tmp_path):
    result = run_process("--input", str(SAMPLE_INPUT), "--output", str(tmp_path), "--weights", str(random_weights),
                         "--tta", "none", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "torch" in result.stdout and "UNTRAINED" in result.stdout  # environment and weights are logged
    assert "pairs: 2/2 pairs, " in result.stdout  # stderr is a pipe: progress as log lines, not a bar
    assert result.stderr == ""  # Grand-Challenge shows stderr as warnings
    document = json.loads((tmp_path / "cell_classification.json").read_text())
    pairs = len(json.loads((SAMPLE_INPUT / "metadata.json").read_text()))
    assert validate_document(document, pair_count=pairs, require_points=True) == []
    assert [p.name for p in tmp_path.iterdir()] == ["cell_classification.json"]

    again = tmp_path / "again"
    assert predict_main(["--input", str(SAMPLE_INPUT), "--output", str(again), "--weights", str(random_weights),
                         "--tta", "none", "--device", "cpu", "--quiet"]) == 0
    assert (again / "cell_classification.json").read_bytes() == (tmp_path / "cell_classification.json").read_bytes()


def test_release_layout_also_writes_one_csv_per_pair(random_weights, tmp_path):
    from ocelot_algo.sample import write_release_sample

    release = write_release_sample(tmp_path / "release", pairs=2, seed=0, split="test", folds=1)
    out = tmp_path / "out"
    assert predict_main(["--input", str(release), "--split", "test", "--output", str(out), "--weights",
                         str(random_weights), "--tta", "none", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["001.csv", "002.csv", "cell_classification.json"]
    rows = [line.split(",") for line in (out / "001.csv").read_text().splitlines()]
    assert rows and all(len(r) == 4 and r[2] in ("1", "2") and 0 <= float(r[3]) <= 1 for r in rows)


def broken_sample(tmp_path, change):
    copy = tmp_path / "input"
    shutil.copytree(SAMPLE_INPUT, copy)
    change(copy)
    return copy


BAD_INPUTS = {
    "missing socket folder": (lambda d: shutil.rmtree(d / "images" / "tissue_patches"), "tissue_patches"),
    "two images in a socket": (lambda d: shutil.copy(d / "images/cell_patches/cell_patches.tif",
                                                     d / "images/cell_patches/second.tif"), "cell_patches"),
    "truncated image": (lambda d: (d / "images/cell_patches/cell_patches.tif").write_bytes(
        (d / "images/cell_patches/cell_patches.tif").read_bytes()[:5000]), "cell_patches.tif"),
    "metadata not JSON": (lambda d: (d / "metadata.json").write_text("[{"), "metadata.json"),
    "metadata count mismatch": (lambda d: (d / "metadata.json").write_text(
        json.dumps(json.loads((d / "metadata.json").read_text())[:1])), "metadata.json"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_on_stderr_exit_2_and_no_output(case, random_weights, tmp_path, capsys):
    change, named = BAD_INPUTS[case]
    out = tmp_path / "out"
    code = predict_main(["--input", str(broken_sample(tmp_path, change)), "--output", str(out),
                         "--weights", str(random_weights), "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and error[0].startswith("error: ") and named in error[0]
    assert not out.exists() or not any(out.iterdir())


def test_data_corrupt_behind_valid_headers_stops_the_run_and_keeps_an_older_output(random_weights, tmp_path, capsys):
    """Found only when pair 1 is decoded, after pair 0's work: one line, exit 2, and the folder as it was."""
    from ocelot_algo.sample import write_sample

    sample = write_sample(tmp_path / "input", pairs=2, seed=0, compression="zlib")
    path = sample / "images/cell_patches/cell_patches.tif"
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset = page.dataoffsets[len(page.dataoffsets) // 2 + 1]  # a tile of pair 1
    data = bytearray(path.read_bytes())
    data[offset:offset + 64] = bytes(64)
    path.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    (out / "cell_classification.json").write_text("an older result")
    code = predict_main(["--input", str(sample), "--output", str(out), "--weights", str(random_weights),
                         "--tta", "none", "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "cell_patches.tif: pair 1: cannot decode" in error[0]
    assert [p.name for p in out.iterdir()] == ["cell_classification.json"]
    assert (out / "cell_classification.json").read_text() == "an older result"


def test_the_bundled_weights_load_and_find_cells_on_the_sample(tmp_path):
    """What ships in weights/: its hashes, configs and manifest settings load; two members on the sample."""
    assert predict_main(["--input", str(SAMPLE_INPUT), "--output", str(tmp_path), "--members", "2",
                         "--tta", "none", "--device", "cpu", "--quiet"]) == 0
    document = json.loads((tmp_path / "cell_classification.json").read_text())
    assert validate_document(document, pair_count=2, require_points=True) == []


@pytest.mark.parametrize("damage", ["missing", "corrupt", "mismatched"])
def test_bad_weights_are_one_line_on_stderr_exit_2_and_no_output(damage, random_weights, tmp_path, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(random_weights, weights)
    tensors = weights / "member0.safetensors"
    if damage == "missing":
        tensors.unlink()
    elif damage == "corrupt":
        tensors.write_bytes(tensors.read_bytes()[:1000])
    else:
        config = json.loads((weights / "member0.json").read_text())
        config["model"]["injection"] = "none"
        (weights / "member0.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    code = predict_main(["--input", str(SAMPLE_INPUT), "--output", str(out), "--weights", str(weights), "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("error: ") and "member0" in error[0]
    assert not out.exists() or not any(out.iterdir())


def test_an_unwritable_output_is_found_before_the_weights_load(tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")
    code = predict_main(["--input", str(SAMPLE_INPUT), "--output", str(blocker), "--weights",
                         str(tmp_path / "no-weights-here"), "--quiet"])  # the weights would fail second
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error == [f"error: {blocker}: is a file, not a folder for the output"]

    (tmp_path / "out2" / "cell_classification.json").mkdir(parents=True)
    code = predict_main(["--input", str(SAMPLE_INPUT), "--output", str(tmp_path / "out2"), "--weights",
                         str(tmp_path / "no-weights-here"), "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].endswith("cell_classification.json: is a folder; the output file cannot replace it")


def test_an_unknown_command_is_named(capsys):
    assert entry_point(["predcit"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: unknown command 'predcit'\nusage:") and captured.out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_one_line(random_weights, tmp_path, capsys):
    code = predict_main(["--input", str(SAMPLE_INPUT), "--output", str(tmp_path / "out"), "--weights",
                         str(random_weights), "--device", "cuda", "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("error: --device cuda") and not (tmp_path / "out").exists()


def test_bench_reports_every_stage(random_weights, tmp_path):
    result = subprocess.run([sys.executable, "-m", "ocelot_algo", "bench", "--pairs", "1", "--tta", "none",
                             "--device", "cpu", "--weights", str(random_weights), "--json", str(tmp_path / "bench.json")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["pairs"] == 1 and report["device"] == "cpu" and report["peak_rss_mb"] > 0
    assert {"read", "tissue_forward", "cell_forward", "tta_ensemble", "points", "write"} <= set(report["stage_per_pair_s"])
    assert 0 < report["forward_share_of_wall"] <= 1
    assert report["gflop_per_pair"] > 0
    assert report["ready_s"] == pytest.approx(report["import_s"] + report["startup_s"], abs=0.02) and report["import_s"] > 0


def test_bench_counts_arithmetic_per_member_and_view(tmp_path):
    """A joint and a cell-only member: the second costs less (no tissue branch), each view costs the same."""
    from conftest import make_weights
    from ocelot_algo.bench import _gflop_per_pair

    weights = str(make_weights(tmp_path, injections=("input", "none"), cell_size=128, tissue_size=64))
    joint, both = _gflop_per_pair(weights, 1, "none"), _gflop_per_pair(weights, None, "none")
    assert joint < both < 2 * joint
    assert _gflop_per_pair(weights, None, "flips") == 4 * both


def test_overlay_draws_cells_and_tissue_with_ground_truth(random_weights, tmp_path):
    from PIL import Image

    from ocelot_algo.overlay import main as overlay_main
    from ocelot_algo.sample import write_release_sample

    release = write_release_sample(tmp_path / "release", pairs=1, seed=0, split="train", folds=1)
    out = tmp_path / "overlays"
    assert overlay_main(["--input", str(release), "--split", "train", "--pairs", "001", "--out", str(out),
                         "--weights", str(random_weights), "--tta", "none"]) == 0
    for name in ("001_cells.png", "001_tissue.png"):
        with Image.open(out / name) as image:
            assert image.size == (1024, 1024) and image.mode == "RGB"
    source = Image.open(release / "images/train/cell/001.jpg")
    assert Image.open(out / "001_cells.png").tobytes() != source.convert("RGB").tobytes()  # something was drawn


def test_overlay_names_the_pairs_it_has_when_asked_for_another(random_weights, tmp_path, capsys):
    from ocelot_algo.overlay import main as overlay_main

    code = overlay_main(["--input", str(SAMPLE_INPUT), "--pairs", "image_0,015", "--out", str(tmp_path / "o"),
                         "--weights", str(random_weights), "--tta", "none"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1
    assert error[0].startswith("error: --pairs: no pair named '015'") and "image_0" in error[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_documents_every_option_and_its_default(command, monkeypatch, capsys):
    """`<command> --help` is the manual: an option without a line there is an option nobody finds. Defaults are
    shown by the shared formatter, the same way in every command, never written into a help text by hand."""
    undocumented, hand_written, with_default = [], [], []
    add_argument = argparse.ArgumentParser.add_argument

    def recording(parser, *names, **options):
        action = add_argument(parser, *names, **options)
        if not options.get("help"):
            undocumented.append(names)
        elif action.default is not None and action.default is not False and action.default is not argparse.SUPPRESS:
            with_default.append(names)
            if "default" in options["help"]:
                hand_written.append(names)
        return action

    monkeypatch.setattr(argparse.ArgumentParser, "add_argument", recording)
    assert help_exit_code(command) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "usage:" in text and undocumented == [] and hand_written == []
    assert text.count("(default: ") == len(with_default)


def help_exit_code(command: str) -> int:
    """What `python -m ocelot_algo <command> --help` exits with (argparse exits; `evaluate` returns the code)."""
    try:
        return entry_point([command, "--help"])
    except SystemExit as exit_:
        return exit_.code


def test_train_help_shows_the_recipe_defaults_and_only_real_ones(capsys):
    assert help_exit_code("train") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "joint optimizer steps; the learning-rate schedule spans them (default: 1200)" in text
    assert "(default: 512)" in text and "(default: None)" not in text and "(default: False)" not in text


def test_a_run_too_long_for_the_cpu_is_announced_after_its_first_pair(caplog):
    from ocelot_algo.pipeline import warn_if_slow

    with caplog.at_level(logging.WARNING, logger="ocelot_algo"):
        warn_if_slow(40.0, 2)  # 1.3 min: fine
        assert caplog.text == ""
        warn_if_slow(40.0, 137)  # a Grand-Challenge phase on the CPU
    assert "on the CPU this run will take about 91 min (137 pairs, 40 s for the first)" in caplog.text


def test_gpu_check_without_a_gpu_says_so_and_does_nothing(tmp_path):
    """test/gpu-check.sh is for a machine with a GPU; elsewhere one line, exit 3, nothing written."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run test/gpu-check.sh itself")
    result = subprocess.run(["bash", str(ROOT / "test" / "gpu-check.sh")], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}, timeout=120)
    assert result.returncode == 3 and result.stdout.count("\n") == 1 and "no CUDA GPU" in result.stdout
    assert list(tmp_path.iterdir()) == []
    usage = subprocess.run(["bash", str(ROOT / "test" / "gpu-check.sh"), "--what"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr
