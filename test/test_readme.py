"""The accuracy figures of README.md and docs/results.md are the committed reports' numbers, not copies that drift
from them."""
import json
import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()
RESULTS = (ROOT / "docs" / "results.md").read_text()


def report(name: str) -> dict:
    return json.loads((ROOT / "weights" / name / "report.json").read_text())


def number(value: float, spec: str = ".4f") -> str:
    """As the documents write numbers: a true minus sign."""
    return format(value, spec).replace("-", "−")


def one_line(text: str) -> str:
    """Line breaks and indentation inside a paragraph or list item do not matter."""
    return re.sub(r"\s+", " ", text)


def table_cells(run: dict, bold: bool) -> str:
    """mF1 (95 % CI) | BC F1 | TC F1 of a run, as the results tables have them."""
    o, mark = run["overall"], "**" if bold else ""
    return (f"| {mark}{number(o['mF1'])} ({number(o['mF1_ci'][0])}–{number(o['mF1_ci'][1])}){mark} "
            f"| {number(o['BC']['f1'])} | {number(o['TC']['f1'])} |")


def test_the_readme_results_table_is_the_report():
    """README's one results table: the shipped ensemble and its cell-only members, as in weights/report."""
    shipped, cell_only = report("report")["runs"]
    table = [line for line in README.splitlines() if line.startswith("| ") and "311 |" in line]
    assert len(table) == 2, table
    assert table[0].endswith(table_cells(shipped, bold=True)) and "shipped" in table[0]
    assert table[1].endswith(table_cells(cell_only, bold=False)) and "cell-only" in table[1]
    manifest = json.loads((ROOT / "weights" / "manifest.json").read_text())
    assert manifest["out_of_fold"]["mF1"] == shipped["overall"]["mF1"]
    assert f"mF1 {number(shipped['overall']['mF1'], '.3f')}" in README  # the Weights note's rounded figure
    difference = report("report")["difference"]  # cell-only minus shipped
    assert difference["of"] == f"{cell_only['name']} - {shipped['name']}"
    low, high = (number(-x, "+.3f") for x in reversed(difference["mF1"]["ci"]))
    assert (f"Shipped minus its cell-only members: **{number(-difference['mF1']['value'], '+.3f')} mF1** "
            f"(paired 95 % CI {low} … {high})") in one_line(README)


def test_the_shipped_ensemble_and_its_cell_only_members_as_in_the_report():
    shipped, cell_only = report("report")["runs"]
    assert table_cells(shipped, bold=True) in RESULTS and table_cells(cell_only, bold=False) in RESULTS


def test_the_single_model_ablation_as_in_its_report():
    joint, cell_only = report("report-ablation")["runs"]
    assert f"{number(joint['overall']['mF1'])} vs {number(cell_only['overall']['mF1'])}" in RESULTS
    assert table_cells(joint, bold=False) in RESULTS and table_cells(cell_only, bold=False) in RESULTS


def test_the_late_fusion_figures_as_tuned_by_ensemble():
    tuning = report("report")["settings"]["tissue_fusion_tuning"]
    plain, best = number(tuning["plain_mF1"]), tuning["best_on_all_pairs"]
    shipped = json.loads((ROOT / "weights" / "manifest.json").read_text())["postprocess"]
    assert not tuning["adopted"] and shipped["tissue_weight"] == shipped["tumour_bias"] == 0
    text = one_line(RESULTS)
    assert "the shipped manifest keeps w = b = 0" in text
    assert f"| {number(tuning['chosen_on_other_folds_mF1'])} vs {plain} |" in RESULTS
    assert f"| {number(tuning['annotated_tissue_mF1'])} vs {plain} |" in RESULTS
    assert (f"w {number(best['tissue_weight'], 'g')}, b {number(best['tumour_bias'], 'g')}, "
            f"mF1 {number(best['mF1'])} against {plain}") in text
