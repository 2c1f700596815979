"""The HTML report, from store tables alone: a self-contained page (images embedded) and a PNG per figure.

Each job kind draws its own section (robrep/kinds/); this module owns the page, the models table (paper
Table 4/5), the summary numbers every entry point prints, and the tuning trials.
"""

from __future__ import annotations

import base64
import html
import io

import pandas as pd

from robrep.figures import labelled_grid, line_chart
from robrep.kinds import KINDS
from robrep.location import absolute, join, redact, write_bytes
from robrep.store import read_table

MAX_ROWS = 6  # figure rows per model


class Report:
    def __init__(self, out: str):  # a folder at a path or a URI
        self.out, self.parts, self.figures, self.missing = out, [], [], []
        self.path: str | None = None  # report.html, once written

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def note(self, text: str) -> None:
        self.parts.append(f"<p class='note'>{html.escape(text)}</p>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def section(self, title: str, rows: pd.DataFrame, what: str, how: str) -> bool:
        """A section's heading; False (with a note on what is missing and how to add it) when rows is empty."""
        self.heading(title)
        if rows.empty:
            self.missing_section(what, how)
        return not rows.empty

    def missing_section(self, what: str, how: str) -> None:
        self.missing.append(what)
        self.note(f"Missing: {what} — {how}")

    def table(self, frame: pd.DataFrame) -> None:
        self.parts.append(frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="—", border=0))

    def grid(self, name: str, cells: list, row_labels: list[str], col_labels: list[str], caption: str) -> None:
        self.figure(name, labelled_grid(cells, row_labels, col_labels), caption)

    def chart(self, name: str, series: dict, x_label: str, y_label: str, caption: str) -> None:
        self.figure(name, line_chart(series, x_label, y_label), caption)

    def figure(self, name: str, image, caption: str) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        path = write_bytes(join(self.out, f"{name}.png"), buffer.getvalue())
        data = base64.b64encode(buffer.getvalue()).decode()
        self.figures.append(path)
        self.parts.append(f"<figure id='{html.escape(name)}'><img alt='{html.escape(name)}' "
                          f"src='data:image/png;base64,{data}'><figcaption>{html.escape(caption)}</figcaption></figure>")

    def write(self, title: str) -> str:
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
                 "td,th{padding:2px 8px;border-bottom:1px solid #ddd}.note{color:#a33}img{image-rendering:pixelated}")
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(self.parts)}</body></html>")
        self.path = write_bytes(join(self.out, "report.html"), page.encode())
        return self.path


SETTING = ("model_digest", "constraint", "eps", "step_size", "steps", "precision")


def latest_setting(results: pd.DataFrame) -> pd.DataFrame:
    """Per model and kind, only the rows of the setting (weights, constraint, eps, step size, steps, precision) run
    last. A store keeps every run (a tuned rerun, another step size, a retrained model, bf16 beside fp32); a figure's
    cell or a summary number must be one experiment, not a mix."""
    if results.empty:
        return results
    keys = [c for c in SETTING if c in results.columns]
    setting = pd.Series([str(t) for t in results[keys].itertuples(index=False, name=None)], index=results.index)
    ordered = results.assign(_setting=setting)
    if "created_at" in ordered.columns:  # rows built in memory may lack it: their order is the order run
        ordered = ordered.sort_values("created_at", kind="stable")
    last = ordered.groupby(["model_id", "kind"])["_setting"].transform("last")  # aligned to each row's index
    return results[setting == last.reindex(setting.index)]


def summary_table(models: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Per model: accuracies and the inversion statistics of the paper's Sec. 4.1, from invert rows.

    other_class_nearer_target: the fraction of inversions started from an image of another class that end
    nearer the target than their source in pixel L2 (the Fig. 3 observation as a number).
    """
    models = models.sort_values("created_at").groupby("model_id").last() if not models.empty else models
    results = in_distribution(latest_setting(results))
    rows = []
    for model_id, group in results[results["kind"] == "invert"].groupby("model_id"):
        other = group[(group["init"] == "image") & (group["source_class"] != group["target_class"])]
        model = models.loc[model_id] if model_id in models.index else None
        rows.append({
            "model_id": model_id,
            "robust": bool(model["robust"]) if model is not None else None,
            "eps": float(model["eps"]) if model is not None else None,
            "clean_acc": float(model["clean_acc"]) if model is not None else None,
            "adv_acc": float(model["adv_acc"]) if model is not None else None,
            "jobs": len(group),
            "mean_rep_dist_rel": group["rep_dist_rel"].mean(),
            "mean_pix_dist_target": group["pix_dist_target"].mean(),
            "other_class_nearer_target": (other["pix_dist_target"] < other["pix_dist_source"]).mean(),
            "other_class_judged_target": _judged_as_target(other),
            "judge_model_id": _judge(other),
            "other_class_jobs": len(other),
        })
    return pd.DataFrame(rows)


def _judged(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows a judge labelled (judge_pred >= 0) that have a target class."""
    if "judge_pred" not in rows.columns:
        return rows.iloc[0:0]
    return rows[(rows["judge_pred"].fillna(-1) >= 0) & (rows["target_class"] >= 0)]


def _judged_as_target(rows: pd.DataFrame) -> float:
    """The fraction of judged rows whose judge labels the image as the target's class (NaN: none judged)."""
    judged = _judged(rows)
    return float((judged["judge_pred"] == judged["target_class"]).mean()) if len(judged) else float("nan")


def _judge(rows: pd.DataFrame) -> str | None:
    judged = _judged(rows)
    return ",".join(sorted(judged["judge_model_id"].dropna().unique())) or None if len(judged) else None


def in_distribution(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of the dataset most rows come from (the models' own): out-of-distribution targets (invert's
    targets_from) have classes the models and the judge do not know."""
    if results.empty or "dataset" not in results.columns:  # rows built in memory may lack it: one dataset
        return results
    return results[results["dataset"] == results["dataset"].value_counts().index[0]]


def judged_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per model and kind (and start): how often the judge labels a result image as its target's class (the
    models' own dataset: out-of-distribution targets have no class the judge knows)."""
    results = in_distribution(latest_setting(results))
    rows = []
    for (model_id, kind, init), group in _judged(results).groupby(["model_id", "kind", "init"], dropna=False):
        rows.append({"model_id": model_id, "kind": kind, "init": init, "judge_model_id": _judge(group),
                     "judged_as_target": _judged_as_target(group), "rows": len(group)})
    return pd.DataFrame(rows)


def _models_table(report: Report, models: pd.DataFrame, evaluations: pd.DataFrame) -> None:
    report.heading("Models (paper Table 4/5)")
    if models.empty:
        report.missing_section("models", "train some with python -m jobs.train")
        return
    table = models[["model_id", "arch", "dataset", "robust", "eps", "clean_acc", "adv_acc", "adv_eps", "adv_steps",
                    "epochs"]].rename(columns={"clean_acc": "Standard", "adv_acc": "Adversarial"})
    report.table(table)
    if not evaluations.empty:
        report.text("jobs.evaluate runs:")
        report.text("Adversarial: right under every attack; PGD: ours alone; APGD-CE/-DLR: torchattacks' (an "
                    "independent implementation), at the same eps and norm.")
        columns = ["model_id", "clean_acc", "adv_acc", "pgd_acc", "apgd_ce_acc", "apgd_dlr_acc", "constraint", "eps",
                   "steps", "step_size", "restarts", "apgd_steps", "n"]
        report.table(evaluations[[c for c in columns if c in evaluations.columns]].rename(
            columns={"clean_acc": "Standard", "adv_acc": "Adversarial", "pgd_acc": "PGD", "apgd_ce_acc": "APGD-CE",
                     "apgd_dlr_acc": "APGD-DLR"}))


def _summary(report: Report, results: pd.DataFrame, models: pd.DataFrame, tune: pd.DataFrame) -> None:
    report.heading("Summary numbers")
    if results.empty:
        report.missing_section("results", "run python -m jobs.fanout")
    else:
        report.table(results.groupby(["kind", "model_id"]).size().rename("rows").reset_index())
        if (results["kind"] == "invert").any():
            report.table(summary_table(models, results))
        judged = judged_table(results)
        if not judged.empty:
            report.text("Judged as target: the fraction of result images that a classifier which did not produce "
                        "them (fanout.judge; default: the other model of the pair) labels as the target's class.")
            report.table(judged)
    report.heading("Tuning (jobs.tune)")
    if tune.empty:
        report.missing_section("tune_trials", "run python -m jobs.tune")
    else:
        report.table(tune[["run_id", "model_id", "objective", "step_size", "steps", "steps_done", "metric"]]
                     .sort_values("metric"))


def build_report(store: str, out: str, title: str | None = None) -> Report:
    """Write <out>/report.html and a PNG per figure (out: a folder at a path or a URI); returns the Report
    (figures, missing sections)."""
    report = Report(absolute(out))
    models, results = read_table(store, "models"), latest_setting(read_table(store, "results"))
    images = read_table(store, "images")
    lookup = {(row.dataset, row.split, int(row.index)): row.image_png for row in images.itertuples()}
    report.text("Every figure and the summary show, per model and kind, the setting (weights, constraint, eps, step "
                "size, steps) run last; the store keeps every run.")
    _models_table(report, models, read_table(store, "evaluations"))
    for kind in KINDS.values():
        if kind.name == "regularized_visualize":  # beside direct visualization (Fig. 10)
            kind.report(report, results[results["kind"] == kind.name], lookup, results[results["kind"] == "visualize"])
        elif kind.report is not None:
            kind.report(report, results[results["kind"] == kind.name], lookup)
    _summary(report, results, models, read_table(store, "tune_trials"))
    report.write(title or f"robrep report: {redact(store)}")
    return report
