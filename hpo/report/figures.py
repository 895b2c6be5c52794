"""The report's figures: Optuna's plots of the search, what each factor does, and the final runs.

figures() draws them (plotly), figures_html() puts them on one self-contained page
(plotly.js inlined once, so it works offline), write_pngs() renders PNGs where
kaleido can. Reads hpo.report.results, factors and pareto; hpo.report.outputs calls it.
"""

from __future__ import annotations

import html
import importlib.util
import math
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from hpo.report import pareto, trial_budget
from hpo.report.compare import Comparison
from hpo.report.factors import Effect, evaluator, feasible_complete
from hpo.report.results import Summary, present_classes
from segtrain.data.labels import CLASS_NAMES
from segtrain.fileio import write_atomic

SLICE_PARAMS = ("lr", "crop_size", "batch_size", "output_stride")


@dataclass(frozen=True)
class Html:
    """A part of figures.html that is not a plotly figure (the gallery's pictures)."""

    text: str


Figure = go.Figure | Html | str  # a figure, or why it could not be drawn


def _try(draw: Callable[[], go.Figure]) -> Figure:
    try:
        return draw()
    except (ValueError, RuntimeError, ZeroDivisionError) as error:  # too few trials, one value per param ...
        return " ".join(f"{error.__class__.__name__}: {error}".split())


def figures(study: optuna.Study, summaries: Sequence[Summary], effects: Sequence[Effect],
            experiments: Sequence[Comparison] = (),
            confusion: Sequence[Sequence[int]] | None = None) -> dict[str, tuple[str, Figure]]:
    """id -> (title, figure): the search (Optuna's plots), each factor's effect, whether the search had enough
    trials, and the final runs (with the best configuration's confusion matrix over val, when given)."""
    searched = {name for t in study.get_trials(deepcopy=False) for name in t.params}
    slice_params = [p for p in SLICE_PARAMS if p in searched]
    vis = optuna.visualization
    feasible = feasible_complete(study)
    return {
        "optimization-history": ("Optimization history", _try(lambda: vis.plot_optimization_history(
            study, target_name="val mIoU"))),
        "param-importances": ("Parameter importance (PED-ANOVA, feasible complete trials)",
                              _try(lambda: vis.plot_param_importances(
                                  feasible, evaluator=evaluator(len(feasible.trials)), target_name="val mIoU"))),
        "ablation-forest": ("Controlled experiments: each factor's effect, difference from the centre with its "
                            "95% interval (paired by seed)",
                            forest(experiments) if experiments else "no [finalize.ablation] experiment finished"),
        "factor-effects": ("What each factor does: scores per value or range (trials, not a controlled experiment)",
                           effects_figure(effects) if effects else "no searched parameter was sampled"),
        "parallel-coordinate": ("Parallel coordinates", _try(lambda: vis.plot_parallel_coordinate(
            study, target_name="val mIoU"))),
        "slice": (f"Slice plots: {', '.join(slice_params) or 'none of ' + ', '.join(SLICE_PARAMS)}",
                  _try(lambda: vis.plot_slice(study, params=slice_params, target_name="val mIoU"))
                  if slice_params else f"none of {', '.join(SLICE_PARAMS)} is searched"),
        "expected-best": ("Expected best search score against the number of trials (Dodge et al. 2019)",
                          expected_best_figure(trial_budget.scores(study))),
        "cost-final": ("Final configurations: mIoU against device-hours a run (Pareto front marked)",
                       _try(lambda: pareto.figure(pareto.final_points(summaries), "val mIoU (final)"))),
        "cost-search": ("Search trials: score against device-hours (Pareto front marked)",
                        _try(lambda: pareto.figure(pareto.search_points(study), "val mIoU (search)"))),
        "learning-curves": ("Learning curves of the final runs", learning_curves(summaries)),
        "per-class-iou": ("Per-class IoU of the final runs (mean ± std over seeds)", per_class_bars(summaries)),
        "confusion-matrix": ("The best configuration's confusion matrix over val (rows: ground truth, "
                             "normalised per row)",
                             confusion_figure(confusion) if confusion is not None else "no best configuration ran"),
    }


def forest(comparisons: Sequence[Comparison]) -> go.Figure:
    """One row per experiment: its difference from the centre and the interval, coloured by verdict."""
    colours = {"better": "#2ca02c", "worse": "#d62728"}
    figure = go.Figure()
    for c in reversed(comparisons):  # plotly draws the first row at the bottom
        if c.paired.difference is None:
            continue
        low, high = c.paired.ci95 or (c.paired.difference, c.paired.difference)
        figure.add_trace(go.Scatter(
            x=[c.paired.difference], y=[c.a], mode="markers", showlegend=False,
            marker={"size": 10, "color": colours.get(c.verdict, "#7f7f7f")},
            error_x={"type": "data", "symmetric": False, "array": [high - c.paired.difference],
                     "arrayminus": [c.paired.difference - low]},
            hovertext=f"{c.verdict} at {c.paired.n} seeds", name=c.a))
    figure.add_vline(x=0, line_dash="dot")
    return figure.update_layout(xaxis_title=f"mIoU {comparisons[0].protocol} difference from the centre",
                                height=max(300, 40 * len(comparisons) + 120))


def expected_best_figure(values: Sequence[float]) -> Figure:
    if not values:
        return "no complete feasible trial"
    points = trial_budget.curve(values)
    figure = go.Figure(go.Scatter(x=[n for n, _ in points], y=[v for _, v in points], mode="lines+markers",
                                  name="expected best of n trials"))
    figure.add_hline(y=max(values), line_dash="dot", annotation_text=f"best found: {max(values):.4f}")
    return figure.update_layout(xaxis_title="trials (complete, feasible)", yaxis_title="expected best score")


def confusion_figure(matrix: Sequence[Sequence[int]]) -> go.Figure:
    """Row-normalised, over the classes in the ground truth or the predictions (all 21 on VOC val)."""
    classes = [c for c in range(len(matrix)) if sum(matrix[c]) or sum(row[c] for row in matrix)]
    shares = [[matrix[t][p] / max(1, sum(matrix[t])) for p in classes] for t in classes]
    names = [CLASS_NAMES[c] for c in classes]
    return go.Figure(go.Heatmap(z=shares, x=names, y=names, colorscale="Blues", zmin=0, zmax=1,
                                text=[[f"{v:.2f}" for v in row] for row in shares], texttemplate="%{text}")) \
        .update_layout(xaxis_title="predicted", yaxis_title="ground truth", yaxis_autorange="reversed",
                       height=max(400, 28 * len(classes) + 150))


def effects_figure(effects: Sequence[Effect]) -> go.Figure:
    """One panel per parameter: box plots of the scores per value or range, at the first evaluation and at the end."""
    columns = min(3, len(effects))
    rows = math.ceil(len(effects) / columns)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=[e.param for e in effects])
    for index, effect in enumerate(effects):
        row, column = index // columns + 1, index % columns + 1
        for name, colour, scores in (("first evaluation", qualitative.Plotly[0], lambda g: g.first),
                                     ("end (complete trials)", qualitative.Plotly[1], lambda g: g.final)):
            x = [g.label for g in effect.groups for _ in scores(g)]
            y = [v for g in effect.groups for v in scores(g)]
            figure.add_trace(go.Box(x=x, y=y, name=name, legendgroup=name, showlegend=index == 0,
                                    marker_color=colour, boxpoints="all"), row=row, col=column)
    return figure.update_layout(boxmode="group", yaxis_title="val mIoU (search)", height=350 * rows)


def learning_curves(summaries: Sequence[Summary]) -> go.Figure:
    figure = go.Figure()
    for index, s in enumerate(summaries):
        colour = qualitative.Plotly[index % len(qualitative.Plotly)]
        for run in s.ok:
            history = run.result.history
            figure.add_trace(go.Scatter(x=[h.epoch for h in history], y=[h.miou for h in history],
                                        mode="lines+markers", name=f"{s.name} seed {run.seed}",
                                        legendgroup=s.name, line={"color": colour}))
    return figure.update_layout(xaxis_title="epoch", yaxis_title="val mIoU")


def per_class_bars(summaries: Sequence[Summary]) -> go.Figure:
    classes = present_classes(summaries)
    figure = go.Figure()
    for s in summaries:
        if s.ok:
            figure.add_trace(go.Bar(name=s.name, x=[CLASS_NAMES[c] for c in classes],
                                    y=[s.per_class_iou[c].mean for c in classes],
                                    error_y={"type": "data", "array": [s.per_class_iou[c].std or 0.0
                                                                       for c in classes]}))
    return figure.update_layout(barmode="group", yaxis_title="IoU")


def figures_html(title: str, drawn: dict[str, tuple[str, Figure]], captions: dict[str, str]) -> str:
    """One page holding every figure, each with its caption; plotly.js is inlined once, so it works offline."""
    parts, inlined = [], False
    for figure_id, (heading, figure) in drawn.items():
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(figure, str):
            parts.append(f"<p>Not drawn: {html.escape(figure)}</p>")
        elif isinstance(figure, Html):
            parts.append(figure.text)
        else:
            parts.append(figure.to_html(full_html=False, include_plotlyjs=not inlined, div_id=figure_id))
            inlined = True
        if figure_id in captions:
            parts.append(f"<p>{html.escape(captions[figure_id])}</p>")
    return (f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"><title>{html.escape(title)}</title></head>\n'
            f"<body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def write_pngs(drawn: dict[str, tuple[str, Figure]], directory: Path) -> str:
    """PNG files when kaleido (and the browser it drives) can render them; else one line saying why not."""
    if importlib.util.find_spec("kaleido") is None:
        return "PNG figures skipped: kaleido is not installed (pip install kaleido; it also needs Chrome)"
    written = 0
    for figure_id, (_, figure) in drawn.items():
        if not isinstance(figure, go.Figure):
            continue
        try:
            image = figure.to_image(format="png")
        except Exception as error:  # kaleido's errors vary by version: no Chrome, no display, ...
            return f"PNG figures skipped: kaleido cannot render ({' '.join(str(error).split())[:200]})"
        write_atomic(directory / f"{figure_id}.png", lambda file, data=image: file.write(data))
        written += 1
    return f"PNG figures: {written} files in {directory}"
