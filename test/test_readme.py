"""The README's headline accuracy figures are the committed reports' numbers, not copies that drift from them."""
import json

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def report(name: str) -> dict:
    return json.loads((ROOT / "weights" / name / "report.json").read_text())


def number(value: float, spec: str = ".4f") -> str:
    """As README writes numbers: a true minus sign."""
    return format(value, spec).replace("-", "−")


def table_cells(run: dict, bold: bool) -> str:
    """mF1 (95 % CI) | BC F1 | TC F1 of a run, as the results table has them."""
    o, mark = run["overall"], "**" if bold else ""
    return (f"| {mark}{number(o['mF1'])} ({number(o['mF1_ci'][0])}–{number(o['mF1_ci'][1])}){mark} "
            f"| {number(o['BC']['f1'])} | {number(o['TC']['f1'])} |")


def test_the_shipped_ensemble_and_its_cell_only_members_as_in_the_report():
    shipped, cell_only = report("report")["runs"]
    assert table_cells(shipped, bold=True) in README and table_cells(cell_only, bold=False) in README
    manifest = json.loads((ROOT / "weights" / "manifest.json").read_text())
    assert manifest["out_of_fold"]["mF1"] == shipped["overall"]["mF1"]


def test_the_single_model_ablation_as_in_its_report():
    joint, cell_only = (run["overall"]["mF1"] for run in report("report-ablation")["runs"])
    assert f"{number(joint)} vs {number(cell_only)}" in README


def test_the_late_fusion_figures_as_tuned_by_ensemble():
    tuning = report("report")["settings"]["tissue_fusion_tuning"]
    plain, best = number(tuning["plain_mF1"]), tuning["best_on_all_pairs"]
    shipped = json.loads((ROOT / "weights" / "manifest.json").read_text())["postprocess"]
    assert not tuning["adopted"] and shipped["tissue_weight"] == shipped["tumour_bias"] == 0
    assert "the shipped manifest keeps w = b = 0" in README
    assert f"| {number(tuning['chosen_on_other_folds_mF1'])} vs {plain} |" in README
    assert f"| {number(tuning['annotated_tissue_mF1'])} vs {plain} |" in README
    assert (f"w {number(best['tissue_weight'], 'g')}, b {number(best['tumour_bias'], 'g')},\n"
            f"  mF1 {number(best['mF1'])} against {plain}") in README
