"""The HTML report, from store tables alone: a self-contained page (images embedded) and a PNG per figure.

Each job kind draws its own section (robrep/fanout/kinds/); this module owns the page, the models table (paper
Table 4/5), the summary numbers every entry point prints, and the tuning trials.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter

import pandas as pd

from robrep.core.location import absolute, join, redact, write_bytes
from robrep.fanout.kinds.common import in_distribution, judge_of, judged_as_target, judged_rows
from robrep.fanout.registry import KINDS
from robrep.report.figures import labelled_grid, line_chart
from robrep.store import load_images, load_results, read_manifests, read_table


class Report:
    def __init__(self, out: str):  # a folder at a path or a URI
        self.out, self.parts, self.figures, self.missing = out, [], [], []
        self.path: str | None = None  # report.html, once written
        self.block = ""  # "_2": the second block of a kind with several settings; its figures' names end so
        self.cells: dict[str, int] = {}  # per figure, the images (grids) or points (charts) it draws

    def heading(self, text: str) -> None:
        more = f" (block {self.block[1:]})" if self.block else ""
        self.parts.append(f"<h2>{html.escape(text + more)}</h2>")

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
        self.cells[name + self.block] = sum(cell is not None for row in cells for cell in row)

    def chart(self, name: str, series: dict, x_label: str, y_label: str, caption: str,
              marks: dict[str, float] | None = None) -> None:
        self.figure(name, line_chart(series, x_label, y_label, marks=marks), caption)
        self.cells[name + self.block] = sum(len(points) for points in series.values())

    def figure(self, name: str, image, caption: str) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        name = f"{name}{self.block}"
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


def _settings(results: pd.DataFrame) -> pd.Series:
    """Each row's block setting (JobKind.setting: its kind's per-job fields left out); rows of a kind this process
    does not know have none."""
    out = pd.Series(None, index=results.index, dtype=object)
    for name, rows in results.groupby("kind"):
        if name in KINDS:
            kind = KINDS[name]
            names = [c for c in kind.setting_names if c in rows.columns]
            out[rows.index] = [kind.setting(dict(zip(names, values, strict=True)))
                               for values in rows[names].itertuples(index=False, name=None)]
    return out


def latest_setting(results: pd.DataFrame, manifests: list[dict] | None = None) -> pd.DataFrame:
    """Per kind, the rows of the block settings of the last fan-out run that had that kind (its manifest's
    `settings`, committed in that run or before): a sweep keeps every radius, a second block of a kind with other
    steps is kept as its own setting, and an older run's other step size, retrained weights or precision are not
    shown. A store keeps every run. A kind no manifest describes (rows built in memory; stores written before
    manifests had settings): per model and dataset, the setting of its newest row."""
    if results.empty:
        return results
    setting = _settings(results)
    keep = pd.Series(False, index=results.index)
    described = set()
    for manifest in reversed(manifests or []):
        for kind, keys in (manifest.get("settings") or {}).items():
            if kind not in described:
                described.add(kind)
                keep |= (results["kind"] == kind) & setting.isin(set(keys))
    rest = ~results["kind"].isin(described)
    if rest.any():
        ordered = results[rest].assign(_setting=setting[rest])
        if "created_at" in ordered.columns:  # rows built in memory may lack it: their order is the order run
            ordered = ordered.sort_values("created_at", kind="stable")
        # Per model, kind and data: a block on another dataset (invert's targets_from) is its own figure.
        by = ["model_id", "kind", *(["dataset"] if "dataset" in ordered.columns else [])]
        last = ordered.groupby(by, dropna=False)["_setting"].transform("last")
        keep |= (setting == last.reindex(setting.index)) & rest
    return results[keep]


def blocks(rows: pd.DataFrame) -> list[pd.DataFrame]:
    """One kind's rows split by block setting (across models: the same block on every model is one figure)."""
    if rows.empty:
        return []
    names = KINDS[rows["kind"].iloc[0]].setting_names
    key = pd.Series([json.dumps([v for name, v in zip(names, json.loads(k), strict=True)
                                 if name not in ("model_id", "model_digest")]) for k in _settings(rows)],
                    index=rows.index)
    return [rows[key == k] for k in sorted(key.unique())]


def summary_table(models: pd.DataFrame, results: pd.DataFrame, evaluations: pd.DataFrame | None = None) -> pd.DataFrame:
    """The summary numbers: each kind's part (JobKind.summary, e.g. invert's Sec. 4.1 statistics per model and block),
    from its rows on the models' own dataset, with the models table's latest row per model. An imported model has
    no training accuracies: its clean_acc and adv_acc are those of its latest `evaluations` row, where given."""
    models = models.sort_values("created_at").groupby("model_id").last() if not models.empty else models
    if evaluations is not None and not evaluations.empty and not models.empty:
        latest = evaluations.sort_values("created_at").groupby("model_id").last()
        for column in ("clean_acc", "adv_acc"):
            models[column] = models[column].fillna(latest[column].reindex(models.index))
    results = in_distribution(results)
    parts = [kind.summary(models, results[results["kind"] == kind.name]) for kind in KINDS.values() if kind.summary]
    parts = [p for p in parts if p is not None and not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def judged_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per model, kind and start (and lambda, for interpolations): how often the judge labels a result image as its
    target's class. Only where that measures something: kinds that aim at a target (JobKind.judged), on the models'
    own dataset, from noise, gray or an image of another class (a start of the target's own class is there
    already)."""
    results = in_distribution(results)
    judged = judged_rows(results[results["kind"].map(lambda k: k in KINDS and KINDS[k].judged)])
    judged = judged[(judged["source_class"] < 0) | (judged["source_class"] != judged["target_class"])]
    rows = []
    for (model_id, kind, init, lam), group in judged.groupby(["model_id", "kind", "init", "lam"], dropna=False):
        rows.append({"model_id": model_id, "kind": kind, "init": init, "lam": lam, "judge_model_id": judge_of(group),
                     "judged_as_target": judged_as_target(group), "rows": len(group)})
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


def _summary(report: Report, results: pd.DataFrame, models: pd.DataFrame, tune: pd.DataFrame,
             evaluations: pd.DataFrame) -> None:
    report.heading("Summary numbers")
    if results.empty:
        report.missing_section("results", "run python -m jobs.fanout")
    else:
        report.table(results.groupby(["kind", "model_id"]).size().rename("rows").reset_index())
        summary = summary_table(models, results, evaluations)
        if not summary.empty:
            report.table(summary)
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


def _data_of(rows: pd.DataFrame) -> tuple:
    """(dataset, split) of a block's rows: blocks on other data (targets_from) draw figures of other names."""
    return (rows["dataset"].iloc[0], rows["split"].iloc[0]) if len(rows) and "split" in rows.columns else ()


def current_results(store: str, filters: list | None = None) -> pd.DataFrame:
    """The results rows the report and the summaries show: latest_setting over the store's manifests."""
    return latest_setting(load_results(store, filters), read_manifests(store))


def build_report(store: str, out: str, title: str | None = None) -> Report:
    """Write <out>/report.html and a PNG per figure (out: a folder at a path or a URI); returns the Report
    (figures, missing sections)."""
    report = Report(absolute(out))
    models = read_table(store, "models")
    results = load_images(store, current_results(store))  # the images of the rows shown, not of the whole store
    images = read_table(store, "images")
    lookup = {(row.dataset, row.split, int(row.index)): row.image_png for row in images.itertuples()}
    report.text("Every figure and the summary show, per kind, the blocks of the last fan-out run that had that kind "
                "(their weights, constraint, eps, step size, steps and precision); the store keeps every run.")
    evaluations = read_table(store, "evaluations")
    _models_table(report, models, evaluations)
    for kind in KINDS.values():
        if kind.report is None:
            continue
        parts = blocks(results[results["kind"] == kind.name]) or [results.iloc[0:0]]
        per_data = Counter(_data_of(part) for part in parts)
        seen = Counter()
        for part in parts:
            seen[_data_of(part)] += 1
            report.block = f"_{seen[_data_of(part)]}" if per_data[_data_of(part)] > 1 else ""
            if kind.report_with:  # e.g. Fig. 10: regularized beside direct visualization
                kind.report(report, part, lookup, results[results["kind"].isin(kind.report_with)])
            else:
                kind.report(report, part, lookup)
        report.block = ""
    _summary(report, results, models, read_table(store, "tune_trials"), evaluations)
    report.write(title or f"robrep report: {redact(store)}")
    return report
