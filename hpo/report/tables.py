"""The report's tables as Markdown, and results.csv, per_class_iou.csv and results.json records.

Markdown pipe tables line up in a terminal too. Every mIoU column is named with its
protocol ("mIoU ss"), and results.csv/json use miou (the run's own evaluation) and
miou_<protocol> for others, each with mean, std, n and the 95% interval.

Reads hpo.report.results, compare, factors and published; hpo.report.document and outputs call it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from hpo.markdown import markdown_table
from hpo.report.compare import MIOU_RANGE, Comparison
from hpo.report.factors import Effect, Ranking
from hpo.report.published import Match, PublishedFigure
from hpo.report.results import METRICS, FinalRun, Summary, miou_key, miou_title, present_classes
from hpo.report.stats import Sample
from segtrain.config import MODELS
from segtrain.data.labels import CLASS_NAMES
from segtrain.records import RUNTIME_FIELDS


def mean_std(stat: Sample, spec: str = ".4f", scale: float = 1.0, unit: str = "") -> str:
    if stat.mean is None:
        return "-"
    text = format(stat.mean / scale, spec)
    return text + (f" ± {format(stat.std / scale, spec)}" if stat.std is not None else "") + unit


def interval(ci95: tuple[float, float] | None, spec: str = ".4f") -> str:
    return "-" if ci95 is None else f"[{format(ci95[0], spec)}, {format(ci95[1], spec)}]"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def protocol_columns(summaries: Sequence[Summary]) -> list[str]:
    """The protocols the summaries hold an mIoU for, in column order."""
    return list(summaries[0].miou) if summaries else []


def final_table(summaries: Sequence[Summary]) -> str:
    """Per configuration: seeds finished/planned (failures by note number), mIoU per protocol (mean ± std, 95%
    interval), cost; then the notes, each failure's reason once (a reason is often a paragraph)."""
    protocols = protocol_columns(summaries)
    notes = failure_notes(summaries)
    headers = ["configuration", "what", "seeds", *(h for p in protocols for h in (miou_title(p), "95% CI")),
               "pixel accuracy", "seconds", "images/s", "peak memory", "parameters"]
    rows = []
    for s in summaries:
        stats = s.stats
        rows.append([s.name, s.configuration.description, seeds_cell(s, notes),
                     *(c for p in protocols for c in (mean_std(s.miou[p]), interval(s.miou[p].ci95))),
                     mean_std(stats["pixel_accuracy"]), mean_std(stats["seconds"], ".1f"),
                     mean_std(stats["images_per_second"], ".1f"),
                     mean_std(stats["peak_memory_bytes"], ".0f", 2**20, " MiB"),
                     "-" if stats["parameters"].mean is None else f"{stats['parameters'].mean / 1e6:.1f}M"])
    table = markdown_table(headers, rows)
    if not notes:
        return table
    failed = {reason: [f"`{s.name}` seed {run.seed}" for s in summaries for run in s.failed if run.status == reason]
              for reason in notes}
    return "\n".join([table, "", *(f"{number}. {', '.join(failed[reason])}: {reason}"
                                   for number, reason in enumerate(notes, start=1))])


def failure_notes(summaries: Sequence[Summary]) -> list[str]:
    """The distinct reasons seeds failed, in table order: the final table's notes, numbered from 1."""
    return list(dict.fromkeys(run.status for s in summaries for run in s.failed))


def failure_reference(s: Summary, summaries: Sequence[Summary]) -> str:
    """A configuration's failed seeds, each kind of failure named briefly with its note under the final table
    (where the reason, often a paragraph, is given once): "seeds 0, 1: weights unavailable, note 1 under the
    final table"."""
    notes = failure_notes(summaries)
    return "; ".join(f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}: "
                     f"{reason.split(':')[0]}, note {notes.index(reason) + 1}"
                     for reason, seeds in s.failures.items()) + " under the final table"


def seeds_cell(s: Summary, notes: Sequence[str]) -> str:
    """finished/planned, and how many failed with which notes: "2/3 (1 failed, note 1)"."""
    if not s.failed:
        return s.seeds
    numbers = sorted({notes.index(run.status) + 1 for run in s.failed})
    return (f"{s.seeds} ({len(s.failed)} failed, note{'s' if len(numbers) > 1 else ''} "
            f"{', '.join(map(str, numbers))})")


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    headers = ["a", "b", "protocol", "seeds", "a - b", "95% CI (seeds)", "95% CI (val images)", "p (paired t)",
               "p Holm", "p sign-flip", "detectable (80%)", "verdict"]
    rows = [[c.a, c.b, c.protocol, c.paired.n, "-" if c.paired.difference is None else f"{c.paired.difference:+.4f}",
             interval(c.paired.ci95, "+.4f"), interval(c.bootstrap.ci95 if c.bootstrap else None, "+.4f"),
             _p(c.paired.p), _p(c.p_holm), _p(c.paired.p_permutation),
             "-" if c.paired.mdd is None else f"{c.paired.mdd:.4f}" if c.paired.mdd < MIOU_RANGE else "> 1",
             c.verdict] for c in comparisons]
    return markdown_table(headers, rows)


def ablation_table(centre: Summary, rows_for: Sequence[tuple[Summary, Comparison]], protocol: str) -> str:
    """Every experiment of the ablation: its factor and value, its mIoU, and its difference from the centre
    (paired by seed, Holm-adjusted over the experiments; its interval over seeds and over val images) with
    the verdict; the centre first, for reference."""
    headers = ["factor", "value", "configuration", "seeds", miou_title(protocol), "95% CI", "vs centre",
               "95% CI (seeds)", "95% CI (val images)", "p Holm", "verdict"]
    stat = centre.miou[protocol]
    rows = [["(centre)", "", centre.name, centre.seeds, mean_std(stat), interval(stat.ci95), "", "", "", "", ""]]
    for s, c in rows_for:
        stat = s.miou[protocol]
        field, value = s.configuration.factor
        rows.append([field, _value(value), s.name, s.seeds, mean_std(stat), interval(stat.ci95),
                     "-" if c.paired.difference is None else f"{c.paired.difference:+.4f}",
                     interval(c.paired.ci95, "+.4f"), interval(c.bootstrap.ci95 if c.bootstrap else None, "+.4f"),
                     _p(c.p_holm), c.verdict])
    return markdown_table(headers, rows)


def recipe_table(a: Summary, b: Summary) -> str:
    """The TrainConfig settings in which two configurations differ, side by side."""
    left, right = a.configuration.config.to_dict(), b.configuration.config.to_dict()
    keys = [k for k in left if left[k] != right[k] and k not in RUNTIME_FIELDS | {"seed"}]
    return markdown_table(["setting", a.name, b.name], [[k, _value(left[k]), _value(right[k])] for k in keys])


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def per_class_table(summaries: Sequence[Summary]) -> str:
    classes = present_classes(summaries)
    rows = [[s.name, *(mean_std(s.per_class_iou[c], ".3f") for c in classes)] for s in summaries if s.ok]
    return markdown_table(["configuration", *(CLASS_NAMES[c] for c in classes)], rows)


def effect_table(effect: Effect) -> str:
    headers = [effect.param, "trials at 1st eval", "median there", "best there", "complete", "median at end",
               "best at end"]

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [[g.label, len(g.first), number(g.median_first), number(g.best_first), len(g.final),
             number(g.median_final), number(g.best_final)] for g in effect.groups]
    return markdown_table(headers, rows)


def importance_table(rankings: Sequence[Ranking]) -> str:
    """The rankings side by side, one column each; a ranking that failed says why under the table."""
    shown = [r for r in rankings if r.importances]
    params = list(dict.fromkeys(name for r in shown for name in r.importances))
    params.sort(key=lambda name: -(shown[0].importances.get(name, 0.0) if shown else 0.0))
    table = markdown_table(["parameter", *(f"{r.trials}, n = {r.n}" for r in shown)],
                           [[name, *(f"{r.importances[name]:.3f}" if name in r.importances else "-"
                                     for r in shown)] for name in params]) if shown else ""
    problems = [f"Not available over the {r.trials} (n = {r.n}): {r.problem}" for r in rankings if not r.importances]
    return "\n\n".join(filter(None, [table, *problems]))


def published_table(figures: Sequence[PublishedFigure], found: Sequence[Match]) -> str:
    rows = []
    for figure in figures:
        here = "; ".join(f"{m.configuration} {miou_title(m.protocol)} = {100 * m.miou:.2f}"
                         for m in found if m.figure is figure) or "-"
        rows.append([figure.source, f"{MODELS[figure.model]} {figure.backbone}", figure.label, figure.training, f"{figure.miou_percent:.2f}",
                     here, ", ".join(figure.differs), figure.url])
    return markdown_table(["source (published)", "model", "protocol", "training", "val mIoU %",
                           "same protocol here (%)", "still differs", "link"], rows)


# --- results.csv, per_class_iou.csv, results.json

def run_record(run: FinalRun, protocols: Sequence[str]) -> dict[str, Any]:
    r = run.result
    return {"kind": "run", "configuration": run.configuration.name, "description": run.configuration.description,
            "seed": run.seed, "runs": 1, "status": run.status,
            **{miou_key(p): run.miou(p) for p in protocols},
            **{column: getattr(r, attribute) if r else None for column, attribute in METRICS},
            "best_miou": r.best_miou if r else None, "mean_class_accuracy": r.mean_class_accuracy if r else None,
            "steps": r.steps if r else None, "run_dir": str(run.run_dir)}


def _flat(key: str, stat: Sample) -> dict[str, Any]:
    return {key: stat.mean, f"{key}_std": stat.std, f"{key}_n": stat.n,
            f"{key}_ci95_low": stat.ci95[0] if stat.ci95 else None,
            f"{key}_ci95_high": stat.ci95[1] if stat.ci95 else None}


def summary_record(s: Summary) -> dict[str, Any]:
    """The configuration's row of results.csv (kind = mean): each statistic flat."""
    return {"kind": "mean", "configuration": s.name, "description": s.configuration.description,
            "seed": "mean", "runs": len(s.ok), "status": s.status,
            **{k: v for p, stat in s.miou.items() for k, v in _flat(miou_key(p), stat).items()},
            **{k: v for column, stat in s.stats.items() for k, v in _flat(column, stat).items()}}


def csv_text(records: Sequence[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def results_csv(summaries: Sequence[Summary]) -> str:
    """Each configuration's runs, then its row over the seeds (kind = mean)."""
    protocols = protocol_columns(summaries)
    records = [record for s in summaries
               for record in (*(run_record(run, protocols) for run in s.runs), summary_record(s))]
    means_first = sorted(records, key=lambda record: record["kind"] != "mean")  # their columns lead
    order = list(dict.fromkeys(key for record in means_first for key in record))
    return csv_text([{key: record.get(key) for key in order} for record in records])


def per_class_csv(summaries: Sequence[Summary]) -> str:
    classes = present_classes(summaries)
    records = []
    for s in summaries:
        for run in s.ok:
            records.append({"kind": "run", "configuration": s.name, "seed": run.seed,
                            **{CLASS_NAMES[c]: run.result.per_class_iou[c] for c in classes}})
        if s.ok:
            records.append({"kind": "mean", "configuration": s.name, "seed": "mean",
                            **{CLASS_NAMES[c]: s.per_class_iou[c].mean for c in classes}})
            records.append({"kind": "std", "configuration": s.name, "seed": "std",
                            **{CLASS_NAMES[c]: s.per_class_iou[c].std for c in classes}})
    return csv_text(records)


def configuration_record(s: Summary, classes: Sequence[int]) -> dict[str, Any]:
    """A configuration in results.json: what it is, and each statistic as {mean, std, n, ci95}."""
    c = s.configuration
    return {"configuration": s.name, "description": c.description, "roles": list(c.roles), "trial": c.trial,
            "search_value": c.search_value, "factor": list(c.factor) if c.factor else None, "params": c.params,
            "config": c.config.to_dict(), "seeds_planned": len(s.runs), "seeds_finished": len(s.ok),
            "status": s.status, "failed": [{"seed": run.seed, "reason": run.status} for run in s.failed],
            "diverged_seeds": list(s.diverged),
            **{miou_key(p): stat.record() for p, stat in s.miou.items()},
            **{column: stat.record() for column, stat in s.stats.items()},
            "per_class_iou": {CLASS_NAMES[k]: s.per_class_iou[k].record() for k in classes}}


def results_json(header: Mapping[str, Any], summaries: Sequence[Summary], comparisons: Sequence[Comparison],
                 extra: Mapping[str, Any]) -> dict[str, Any]:
    protocols = protocol_columns(summaries)
    classes = present_classes(summaries)
    return {**header, "protocols": protocols,
            "configurations": [configuration_record(s, classes) for s in summaries],
            "comparisons": [c.record() for c in comparisons], **extra,
            "runs": [{**run_record(run, protocols), "per_class_iou": run.result.per_class_iou if run.result else None,
                      "history": run.result.to_dict()["history"] if run.result else None,
                      "evaluations": dict(run.evaluations)}
                     for s in summaries for run in s.runs]}


def cost_table(points: Mapping[str, tuple[float, float]], front: Sequence[str], score: str) -> str:
    """Each final configuration's hours a run and mean mIoU, and whether it is on the Pareto front."""
    return markdown_table(["configuration", "hours a run", score, "on the front"],
                          [[name, f"{hours:.3g}", f"{miou:.4f}", "yes" if name in front else ""]
                           for name, (hours, miou) in points.items()])
