"""Bar charts of an evaluation report (see `evaluation.evaluate_dataset`), rendered to PNG bytes.

matplotlib is imported here only, and `evaluation` imports this module only when it writes a report, so scoring
stays light. Figures are built with the object API on the Agg canvas: no pyplot, no global backend state.
"""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .evaluation import CLASS_NAMES, SUBGROUPS

_COLOURS = ("#3b6ea8", "#e0863a")  # first run, comparison


def _bar_chart(title: str, categories: list[str], series: list[tuple[str, list[float], list | None]],
               ylabel: str, dots: list[list[float]] = ()) -> bytes:
    """Grouped bars, one group per category and one bar per series (label, values, [lo, hi] per value or None);
    `dots`: further values per category (e.g. one list per fold), drawn as points over the bars."""
    fig = Figure(figsize=(max(6.0, 0.55 * len(categories) * len(series) + 2.5), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    x = np.arange(len(categories))
    for k, (label, values, intervals) in enumerate(series):
        values = np.asarray(values, dtype=float)
        errors = None
        if intervals is not None:
            bounds = np.asarray(intervals, dtype=float)
            errors = np.abs(np.stack([values - bounds[:, 0], bounds[:, 1] - values]))
        position = x + (k - (len(series) - 1) / 2) * width
        ax.bar(position, values, width, yerr=errors, capsize=3, label=label, color=_COLOURS[k % len(_COLOURS)])
        for px, v in zip(position, values):
            ax.text(px, 0.01, f"{v:.3f}", ha="center", va="bottom", rotation=90, fontsize=7, color="white")
    for values in dots:
        ax.plot(x, values, "o", color="black", markersize=3, alpha=0.6)
    crowded = len(categories) > 5
    ax.set_xticks(x, categories, rotation=20 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _intervals(entries: list[dict], key: str) -> list | None:
    return [e[key] for e in entries] if all(key in e for e in entries) else None


def _tissue_chart(section: dict) -> bytes:
    """The tissue-at-the-cells measures overall (bars with CIs) and, as dots, per fold."""
    from .tissue_eval import SHORT_NAMES, headline

    overall = headline(section["overall"])
    names = list(overall)
    entries = list(overall.values())
    return _bar_chart("Tissue at the cells, out-of-fold (dots: per fold)", [SHORT_NAMES[n] for n in names],
                      [("all pairs", [e["value"] for e in entries], _intervals(entries, "ci"))], "score",
                      dots=[[headline(fold)[n]["value"] for n in names] for fold in section["folds"].values()])


def render_report_plots(report: dict) -> dict[str, bytes]:
    """{file name: PNG} for the report: class scores, per-organ mF1 and tissue subgroup F1 (where known); error
    bars are the bootstrap CIs when the report has them."""
    runs = report["runs"]
    plots = {}

    if "tissue_at_cells" in report:
        plots["tissue_at_cells.png"] = _tissue_chart(report["tissue_at_cells"])
    if not runs:
        return plots

    categories, class_series = [], []
    for cls in CLASS_NAMES:
        categories += [f"{cls} precision", f"{cls} recall", f"{cls} F1"]
    categories.append("mF1")
    for run in runs:
        o = run["overall"]
        entries = [{"value": o[cls][m], **({"ci": o[cls][f"{m}_ci"]} if f"{m}_ci" in o[cls] else {})}
                   for cls in CLASS_NAMES for m in ("precision", "recall", "f1")]
        entries.append({"value": o["mF1"], **({"ci": o["mF1_ci"]} if "mF1_ci" in o else {})})
        class_series.append((run["name"], [e["value"] for e in entries], _intervals(entries, "ci")))
    plots["class_scores.png"] = _bar_chart("Precision, recall and F1 per class", categories, class_series, "score")

    if runs[0]["organs"]:
        organs = list(runs[0]["organs"])
        series = []
        for run in runs:
            entries = [run["organs"][organ] for organ in organs]
            series.append((run["name"], [e["mF1"] for e in entries], _intervals(entries, "mF1_ci")))
        labels = [f"{organ}\n(n={runs[0]['organs'][organ]['n_images']})" for organ in organs]
        plots["organ_mf1.png"] = _bar_chart("mF1 per organ", labels, series, "mF1")

    if "tissue_regions" in runs[0]:
        names = [name for name, _, _ in SUBGROUPS]
        series = []
        for run in runs:
            entries = [run["tissue_regions"][name] for name in names]
            series.append((run["name"], [e["f1"] for e in entries], _intervals(entries, "f1_ci")))
        plots["tissue_regions.png"] = _bar_chart("F1 per tissue region (typical: BC on BG, TC on CA)", names,
                                                 series, "F1")
    return plots
