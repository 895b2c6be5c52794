"""The final report: tables, plotly figures and report.md from a study and its final runs.

Writes into runs/<study>/final/: results.csv and results.json (one row per run and
mean +/- std per configuration), per_class_iou.csv, figures.html (self-contained,
works offline), PNGs when kaleido can render them, and report.md; then attaches
them to the study (Optuna's artifact store and a note) for optuna-dashboard.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import io
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import plotly.graph_objects as go
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna_dashboard import save_note
from plotly.colors import qualitative

from hpo.search import Counts, summary_lines
from hpo.spec import FinalizeOptions, StudySpec
from hpo.storage import dashboard_command, safe_url
from segtrain.data.labels import CLASS_NAMES
from segtrain.fileio import write_atomic, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from hpo.finalize import Configuration, FinalRun

# (column, TrainResult attribute): the per-run numbers averaged over seeds
METRICS = (("miou", "final_miou"), ("pixel_accuracy", "pixel_accuracy"), ("seconds", "seconds"),
           ("images_per_second", "images_per_second"), ("peak_memory_bytes", "peak_memory_bytes"),
           ("parameters", "parameters"))
SLICE_PARAMS = ("lr", "crop_size", "batch_size", "output_stride")
DOCS_RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
# Published DeepLabV3 results on VOC 2012 val (mIoU %, ImageNet-pretrained backbones, train_aug,
# single scale); each checked against its source in docs/results.md, which lists protocols and caveats.
PUBLISHED = (
    ("DeepLabV3 paper (Chen et al. 2017, arXiv:1706.05587)", "ResNet-101", "OS 16, multi-grid + image pooling",
     77.21, "https://arxiv.org/abs/1706.05587"),
    ("VainF/DeepLabV3Plus-Pytorch", "ResNet-50", "OS 16, 513 crops, batch 16, 30k it, 513 center-crop eval",
     76.9, "https://github.com/VainF/DeepLabV3Plus-Pytorch"),
    ("VainF/DeepLabV3Plus-Pytorch", "ResNet-101", "OS 16, 513 crops, batch 16, 30k it, 513 center-crop eval",
     77.3, "https://github.com/VainF/DeepLabV3Plus-Pytorch"),
    ("open-mmlab/mmsegmentation", "ResNet-50-V1c", "OS 8, 512 crops, batch 16, 20k it, aux head",
     76.17, "https://github.com/open-mmlab/mmsegmentation/tree/main/configs/deeplabv3"),
    ("open-mmlab/mmsegmentation", "ResNet-101-V1c", "OS 8, 512 crops, batch 16, 20k it, aux head",
     78.70, "https://github.com/open-mmlab/mmsegmentation/tree/main/configs/deeplabv3"),
)


@dataclass(frozen=True)
class Stat:
    mean: float | None
    std: float | None  # sample standard deviation over seeds; None for fewer than two

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        values = [float(v) for v in values]
        return cls(statistics.fmean(values) if values else None,
                   statistics.stdev(values) if len(values) > 1 else None)

    def format(self, spec: str, scale: float = 1.0, unit: str = "") -> str:
        if self.mean is None:
            return "-"
        text = format(self.mean / scale, spec)
        return text + (f" ± {format(self.std / scale, spec)}" if self.std is not None else "") + unit


@dataclass(frozen=True)
class Summary:
    """One configuration over its seeds."""

    configuration: Configuration
    runs: list[FinalRun]
    stats: dict[str, Stat]
    per_class_iou: list[Stat]
    status: str  # "ok", or what went wrong (e.g. "weights unavailable: ...")

    @property
    def ok(self) -> list[FinalRun]:
        return [run for run in self.runs if run.result is not None]

    @classmethod
    def of(cls, configuration: Configuration, runs: list[FinalRun]) -> Summary:
        results = [run.result for run in runs if run.result is not None]
        stats = {column: Stat.of([getattr(r, attribute) for r in results]) for column, attribute in METRICS}
        per_class = [Stat.of([r.per_class_iou[c] for r in results if r.per_class_iou[c] is not None])
                     for c in range(len(CLASS_NAMES))]
        problems = sorted({run.status for run in runs if run.status != "ok"})
        status = "ok" if not problems else "; ".join(problems) if not results else \
            f"{len(results)} of {len(runs)} runs; " + "; ".join(problems)
        return cls(configuration, runs, stats, per_class, status)

    def role(self, role: str) -> bool:
        return role in self.configuration.roles


def summarize(runs: Sequence[FinalRun]) -> list[Summary]:
    """Per configuration, in the order of the runs."""
    names = list(dict.fromkeys(run.configuration.name for run in runs))
    return [Summary.of(next(r.configuration for r in runs if r.configuration.name == name),
                       [r for r in runs if r.configuration.name == name]) for name in names]


# --- tables

def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A pipe table whose columns line up, so it reads the same in a terminal and in Markdown."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, cells[1:])])


def final_table(summaries: Sequence[Summary]) -> str:
    headers = ["configuration", "what", "seeds", "mIoU", "pixel accuracy", "seconds", "images/s",
               "peak memory", "parameters", "note"]
    rows = []
    for s in summaries:
        stats = s.stats
        rows.append([s.configuration.name, s.configuration.description, f"{len(s.ok)}/{len(s.runs)}",
                     stats["miou"].format(".4f"), stats["pixel_accuracy"].format(".4f"),
                     stats["seconds"].format(".1f"), stats["images_per_second"].format(".1f"),
                     stats["peak_memory_bytes"].format(".0f", 2**20, " MiB"),
                     Stat(stats["parameters"].mean, None).format(".1f", 1e6, "M"),  # the same for every seed
                     "" if s.status == "ok" else s.status])
    return markdown_table(headers, rows)


def present_classes(summaries: Sequence[Summary]) -> list[int]:
    """Classes with an IoU in some run (a synthetic set uses only a few of VOC's 21)."""
    return [c for c in range(len(CLASS_NAMES)) if any(s.per_class_iou[c].mean is not None for s in summaries)]


def per_class_table(summaries: Sequence[Summary]) -> str:
    classes = present_classes(summaries)
    rows = [[s.configuration.name, *(s.per_class_iou[c].format(".3f") for c in classes)]
            for s in summaries if s.ok]
    return markdown_table(["configuration", *(CLASS_NAMES[c] for c in classes)], rows)


def run_record(run: FinalRun) -> dict[str, Any]:
    r = run.result
    return {"kind": "run", "configuration": run.configuration.name, "description": run.configuration.description,
            "seed": run.seed, "runs": 1, "status": run.status,
            **{column: getattr(r, attribute) if r else None for column, attribute in METRICS},
            "best_miou": r.best_miou if r else None, "mean_class_accuracy": r.mean_class_accuracy if r else None,
            "steps": r.steps if r else None, "run_dir": str(run.run_dir)}


def summary_record(s: Summary) -> dict[str, Any]:
    return {"kind": "mean", "configuration": s.configuration.name, "description": s.configuration.description,
            "seed": "mean", "runs": len(s.ok), "status": s.status,
            **{key: value for column, stat in s.stats.items()
               for key, value in ((column, stat.mean), (f"{column}_std", stat.std))}}


def csv_text(records: Sequence[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def results_csv(summaries: Sequence[Summary]) -> str:
    """Each configuration's runs, then its mean +/- std row (kind = mean)."""
    order = ["kind", "configuration", "description", "seed", "runs", "status"] + \
            [key for column, _ in METRICS for key in (column, f"{column}_std")] + \
            ["best_miou", "mean_class_accuracy", "steps", "run_dir"]
    records = [record for s in summaries for record in (*map(run_record, s.runs), summary_record(s))]
    return csv_text([{key: record.get(key) for key in order} for record in records])


def per_class_csv(summaries: Sequence[Summary]) -> str:
    classes = present_classes(summaries)
    records = []
    for s in summaries:
        for run in s.ok:
            records.append({"kind": "run", "configuration": s.configuration.name, "seed": run.seed,
                            **{CLASS_NAMES[c]: run.result.per_class_iou[c] for c in classes}})
        if s.ok:
            records.append({"kind": "mean", "configuration": s.configuration.name, "seed": "mean",
                            **{CLASS_NAMES[c]: s.per_class_iou[c].mean for c in classes}})
            records.append({"kind": "std", "configuration": s.configuration.name, "seed": "std",
                            **{CLASS_NAMES[c]: s.per_class_iou[c].std for c in classes}})
    return csv_text(records)


def results_json(spec: StudySpec, options: FinalizeOptions, summaries: Sequence[Summary]) -> dict[str, Any]:
    return {
        "study": spec.study.name, "spec": str(spec.path), "storage": safe_url(spec.study.storage),
        "epochs": options.epochs, "seeds": list(options.seeds),
        "configurations": [{**summary_record(s), "roles": list(s.configuration.roles),
                            "trial": s.configuration.trial, "params": s.configuration.params,
                            "config": s.configuration.config.to_dict(),
                            "per_class_iou": {CLASS_NAMES[c]: {"mean": s.per_class_iou[c].mean,
                                                               "std": s.per_class_iou[c].std}
                                              for c in present_classes(summaries)}}
                           for s in summaries],
        "runs": [{**run_record(run), "per_class_iou": run.result.per_class_iou if run.result else None,
                  "history": run.result.to_dict()["history"] if run.result else None}
                 for s in summaries for run in s.runs],
    }


# --- sentences derived from the numbers

def find(summaries: Sequence[Summary], role: str) -> Summary | None:
    return next((s for s in summaries if s.role(role)), None)


def difference(a: Summary, b: Summary) -> tuple[float, bool]:
    """mean mIoU of a - b, and whether it is within the spread between seeds (1 combined std)."""
    diff = a.stats["miou"].mean - b.stats["miou"].mean
    stds = [s.stats["miou"].std for s in (a, b)]
    noise = math.hypot(*stds) if None not in stds else None
    return diff, noise is not None and abs(diff) <= noise


def comparison_sentence(summaries: Sequence[Summary], epochs: float) -> str:
    """E.g. 'ImageNet pretraining adds 0.0312 mIoU at this budget (4 epochs): ...'."""
    pretrained, scratch = find(summaries, "r101-imagenet"), find(summaries, "r101-scratch")
    for s, what in ((pretrained, "ImageNet-pretrained"), (scratch, "from-scratch")):
        if s is None or not s.ok:
            return f"No ResNet-101 comparison: the {what} run has no result ({s.status if s else 'not planned'})."
    diff, noisy = difference(pretrained, scratch)
    sentence = (f"ImageNet pretraining {'adds' if diff >= 0 else 'costs'} {abs(diff):.4f} mIoU at this budget "
                f"({epochs:g} epochs): ResNet-101 scores {pretrained.stats['miou'].format('.4f')} pretrained "
                f"vs {scratch.stats['miou'].format('.4f')} from scratch "
                f"({len(pretrained.ok)} and {len(scratch.ok)} seeds).")
    return sentence + (" The difference is within the spread between seeds." if noisy else "")


def baseline_sentence(summaries: Sequence[Summary]) -> str:
    best, baseline = find(summaries, "top"), find(summaries, "baseline")
    if baseline is None:
        return "The spec has no [baseline], so there is no baseline row."
    if best is baseline:
        return "The baseline recipe is also the best configuration of the search."
    if not (best and best.ok and baseline.ok):
        return "No baseline comparison: " + ("the baseline" if best and best.ok else "the best configuration") + \
               " has no result."
    diff, noisy = difference(best, baseline)
    return (f"The best configuration ({best.configuration.name}, {best.configuration.description}) scores "
            f"{best.stats['miou'].format('.4f')} mIoU, {diff:+.4f} against the baseline's "
            f"{baseline.stats['miou'].format('.4f')}"
            + (", within the spread between seeds." if noisy else "."))


# --- figures

Figure = go.Figure | str  # a figure, or why it could not be drawn


def _try(draw: Callable[[], go.Figure]) -> Figure:
    try:
        return draw()
    except (ValueError, RuntimeError, ZeroDivisionError) as error:  # too few trials, one value per param ...
        return " ".join(f"{error.__class__.__name__}: {error}".split())


def figures(study: optuna.Study, summaries: Sequence[Summary]) -> dict[str, tuple[str, Figure]]:
    """id -> (title, figure): the search (Optuna's plots) and the final runs."""
    searched = {name for t in study.get_trials(deepcopy=False) for name in t.params}
    slice_params = [p for p in SLICE_PARAMS if p in searched]
    vis = optuna.visualization
    return {
        "optimization-history": ("Optimization history", _try(lambda: vis.plot_optimization_history(
            study, target_name="val mIoU"))),
        "param-importances": ("Parameter importance (Optuna's default evaluator)",
                              _try(lambda: vis.plot_param_importances(study, target_name="val mIoU"))),
        "parallel-coordinate": ("Parallel coordinates", _try(lambda: vis.plot_parallel_coordinate(
            study, target_name="val mIoU"))),
        "slice": (f"Slice plots: {', '.join(slice_params) or 'none of ' + ', '.join(SLICE_PARAMS)}",
                  _try(lambda: vis.plot_slice(study, params=slice_params, target_name="val mIoU"))
                  if slice_params else f"none of {', '.join(SLICE_PARAMS)} is searched"),
        "learning-curves": ("Learning curves of the final runs", learning_curves(summaries)),
        "per-class-iou": ("Per-class IoU of the final runs (mean ± std over seeds)", per_class_bars(summaries)),
    }


def learning_curves(summaries: Sequence[Summary]) -> go.Figure:
    figure = go.Figure()
    for index, s in enumerate(summaries):
        colour = qualitative.Plotly[index % len(qualitative.Plotly)]
        for run in s.ok:
            history = run.result.history
            figure.add_trace(go.Scatter(x=[h.epoch for h in history], y=[h.miou for h in history],
                                        mode="lines+markers", name=f"{s.configuration.name} seed {run.seed}",
                                        legendgroup=s.configuration.name, line={"color": colour}))
    return figure.update_layout(xaxis_title="epoch", yaxis_title="val mIoU")


def per_class_bars(summaries: Sequence[Summary]) -> go.Figure:
    classes = present_classes(summaries)
    figure = go.Figure()
    for s in summaries:
        if s.ok:
            figure.add_trace(go.Bar(name=s.configuration.name, x=[CLASS_NAMES[c] for c in classes],
                                    y=[s.per_class_iou[c].mean for c in classes],
                                    error_y={"type": "data", "array": [s.per_class_iou[c].std or 0.0
                                                                       for c in classes]}))
    return figure.update_layout(barmode="group", yaxis_title="IoU")


def figures_html(title: str, drawn: dict[str, tuple[str, Figure]]) -> str:
    """One page holding every figure; plotly.js is inlined once, so it works offline."""
    parts, inlined = [], False
    for figure_id, (heading, figure) in drawn.items():
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(figure, str):
            parts.append(f"<p>Not drawn: {html.escape(figure)}</p>")
            continue
        parts.append(figure.to_html(full_html=False, include_plotlyjs=not inlined, div_id=figure_id))
        inlined = True
    return (f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
            f"<body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def write_pngs(drawn: dict[str, tuple[str, Figure]], directory: Path) -> str:
    """PNG files when kaleido (and the browser it drives) can render them; else one line saying why not."""
    if importlib.util.find_spec("kaleido") is None:
        return "PNG figures skipped: kaleido is not installed (pip install kaleido; it also needs Chrome)"
    written = 0
    for figure_id, (_, figure) in drawn.items():
        if isinstance(figure, str):
            continue
        try:
            image = figure.to_image(format="png")
        except Exception as error:  # kaleido's errors vary by version: no Chrome, no display, ...
            return f"PNG figures skipped: kaleido cannot render ({' '.join(str(error).split())[:200]})"
        write_atomic(directory / f"{figure_id}.png", lambda file, data=image: file.write(data))
        written += 1
    return f"PNG figures: {written} files in {directory}"


# --- report.md

def importance_ranking(study: optuna.Study) -> str:
    try:
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        return f"Not available: {' '.join(str(error).split())}"
    if not importances:
        return "Not available: no parameter varies across the complete trials."
    rows = [[rank, name, f"{value:.3f}"] for rank, (name, value) in enumerate(importances.items(), start=1)]
    return markdown_table(["rank", "parameter", "importance"], rows)


def docs_link(final_dir: Path) -> str:
    if DOCS_RESULTS.exists():
        return f"[docs/results.md]({Path(os.path.relpath(DOCS_RESULTS, final_dir.resolve())).as_posix()})"
    return "docs/results.md in the deeplab-hpo repository"


def published_section(spec: StudySpec, final_dir: Path) -> str:
    rows = [[source, backbone, protocol, f"{miou:.2f}", url] for source, backbone, protocol, miou, url in PUBLISHED]
    synthetic = spec.train_config().synthetic
    caveat = ("This study ran on **synthetic** data: these figures are context, not a target."
              if synthetic else
              "They are comparable with this study's numbers only where the protocol matches "
              "(train set, crop, batch, schedule, output stride, eval mode).")
    return "\n".join([
        "## Published reference figures (not measured here)", "",
        "Published DeepLabV3 results on PASCAL VOC 2012 **val**, mIoU in **percent** (this report's own "
        "numbers are fractions), ImageNet-pretrained backbones trained on train_aug, single-scale "
        f"evaluation. Protocols, caveats and how each was checked: {docs_link(final_dir)}. {caveat}", "",
        markdown_table(["source (published)", "backbone", "protocol", "val mIoU %", "link"], rows)])


def report_markdown(spec: StudySpec, study: optuna.Study, options: FinalizeOptions,
                    summaries: Sequence[Summary], png_line: str, files: Sequence[str], final_dir: Path) -> str:
    counts = Counts.of(study)
    final_seconds = sum(run.result.seconds for s in summaries for run in s.ok)
    weights_hint = any(s.status.startswith("weights unavailable") for s in summaries)
    lines = [
        f"# Final results: study `{spec.study.name}`", "",
        f"Spec `{spec.path}`, storage `{safe_url(spec.study.storage)}`. Each configuration was retrained for "
        f"{options.epochs:g} epochs with seeds {', '.join(map(str, options.seeds))}; numbers are the val "
        "scores at the end of training, mean ± sample std over seeds. On a CPU, peak memory is the peak "
        "resident set of the finalize process, so it includes the runs before it.", "",
        "## Final table", "", final_table(summaries), "",
        baseline_sentence(summaries), "",
    ]
    if weights_hint:
        lines += ["To run the pretrained ResNet-101 offline, pass a local torchvision ResNet-101 state_dict: "
                  "`--pretrained-weights PATH` (or `[finalize] pretrained_weights`).", ""]
    lines += [
        "## ResNet-101: ImageNet-pretrained vs from scratch", "",
        comparison_sentence(summaries, options.epochs), "",
        "## Per-class IoU (mean ± std over seeds)", "", per_class_table(summaries), "",
        "## Search summary", "",
        *(f"- {line}" for line in summary_lines(study)),
        f"- trials: {len(study.trials)} in all; {counts.complete} complete, {counts.pruned} pruned, "
        f"{counts.failed} failed",
        f"- final runs: {sum(len(s.ok) for s in summaries)} of {sum(len(s.runs) for s in summaries)} with a "
        f"result, {final_seconds / 3600:.2f} run-hours ({final_seconds:.0f} s)", "",
        "## Parameter importance", "",
        f"Optuna's default evaluator (`optuna.importance.get_param_importances`) over the {counts.complete} "
        "complete trials:", "", importance_ranking(study), "",
        "## Figures", "",
        "[figures.html](figures.html): optimization history, parameter importance, parallel coordinates, "
        "slice plots, learning curves of the final runs and per-class IoU bars (self-contained, works "
        f"offline). {png_line}.", "",
        "Files: " + ", ".join(f"[{name}]({name})" for name in files) + ".", "",
        published_section(spec, final_dir), "",
    ]
    return "\n".join(lines)


def note_markdown(spec: StudySpec, summaries: Sequence[Summary], options: FinalizeOptions,
                  files: Sequence[str]) -> str:
    """The study's dashboard note: the search description, then the final results."""
    return "\n".join([
        spec.to_markdown(), "## Final results", "", final_table(summaries), "",
        baseline_sentence(summaries), "", comparison_sentence(summaries, options.epochs), "",
        f"The full report and figures are attached to this study: {', '.join(files)}.", ""])


# --- publishing

def attach(study: optuna.Study, paths: Sequence[Path], artifact_dir: Path, note: str) -> list[str]:
    """Upload each file to the study's artifact store (skipping an identical copy already there)
    and save the note; returns the ids of new artifacts."""
    artifact_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(artifact_dir)
    existing: dict[str, list[str]] = {}
    for meta in get_all_artifact_meta(study):
        existing.setdefault(meta.filename, []).append(meta.artifact_id)
    uploaded = []
    for path in paths:
        data = path.read_bytes()
        if any(_stored(store, artifact_id) == data for artifact_id in existing.get(path.name, [])):
            continue
        uploaded.append(upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study))
    save_note(study, note)
    return uploaded


def _stored(store: FileSystemArtifactStore, artifact_id: str) -> bytes | None:
    try:
        with store.open_reader(artifact_id) as reader:
            return reader.read()
    except ArtifactNotFound:
        return None


@dataclass(frozen=True)
class Outputs:
    final_dir: Path
    files: list[Path]
    table: str
    sentences: list[str]
    png_line: str
    dashboard: str
    uploaded: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join([self.table, "", *self.sentences, "",
                          f"wrote {', '.join(p.name for p in self.files)} in {self.final_dir}",
                          self.png_line,
                          f"attached to the study ({len(self.uploaded)} new artifacts); "
                          f"dashboard: {self.dashboard}"])


def write(spec: StudySpec, study: optuna.Study, options: FinalizeOptions, runs: Sequence[FinalRun],
          final_dir: Path) -> Outputs:
    """Every output file, atomically, then the study's artifacts and note."""
    summaries = summarize(runs)
    final_dir.mkdir(parents=True, exist_ok=True)
    drawn = figures(study, summaries)
    png_line = write_pngs(drawn, final_dir)
    names = ["report.md", "results.csv", "results.json", "per_class_iou.csv", "figures.html"]
    paths = [final_dir / name for name in names]
    write_text_atomic(final_dir / "results.csv", results_csv(summaries))
    write_json_atomic(final_dir / "results.json", results_json(spec, options, summaries))
    write_text_atomic(final_dir / "per_class_iou.csv", per_class_csv(summaries))
    write_text_atomic(final_dir / "figures.html", figures_html(f"Study {spec.study.name}: figures", drawn))
    write_text_atomic(final_dir / "report.md",
                      report_markdown(spec, study, options, summaries, png_line, names[1:], final_dir))
    artifact_dir = spec.study.output_dir / "artifacts"
    uploaded = attach(study, paths, artifact_dir, note_markdown(spec, summaries, options, names))
    return Outputs(final_dir, paths, final_table(summaries),
                   [baseline_sentence(summaries), comparison_sentence(summaries, options.epochs)],
                   png_line, dashboard_command(spec.study.storage, artifact_dir), uploaded)
