"""write(): every file finalize leaves in <output dir>/final/, written atomically, then attached to the study.

report.md, results.csv, results.json, per_class_iou.csv, figures.html (and PNGs where
kaleido can render them); the same files become artifacts of the study, the report's
figures its graphs and its tables its note, for optuna-dashboard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from hpo.report import tables
from hpo.report.analysis import Analysis, analyse
from hpo.report.artifacts import attach, save_figures
from hpo.report.document import FACTOR_CAVEAT, FILES, key_sentences, note_markdown, report_markdown, search_schedule
from hpo.report import gallery
from hpo.report.compare import ABLATION
from hpo.report.figures import Html, figures, figures_html, write_pngs
from hpo.report.gallery import Gallery
from hpo.report.results import OWN_PROTOCOL, FinalRun
from hpo.spec import FinalizeOptions, StudySpec
from hpo.storage_urls import dashboard_command, safe_url
from segtrain.fileio import write_json_atomic, write_text_atomic

PREDICTIONS = "predictions"  # <final>/predictions/: the gallery's pictures, and its masks below


@dataclass(frozen=True)
class Outputs:
    final_dir: Path
    files: list[Path]
    table: str
    sentences: list[str]
    png_line: str
    dashboard: str
    uploaded: list[str] = field(default_factory=list)
    graphs: list[str] = field(default_factory=list)  # the figures saved in the study for the dashboard

    def summary(self) -> str:
        return "\n".join([self.table, "", *self.sentences, "",
                          f"wrote {', '.join(p.name for p in self.files)} in {self.final_dir}",
                          self.png_line,
                          f"attached to the study ({len(self.uploaded)} new artifacts, {len(self.graphs)} figures); "
                          f"dashboard: {self.dashboard}"])


def results_header(spec: StudySpec, options: FinalizeOptions, analysis: Analysis) -> dict[str, Any]:
    search = spec.train_config()
    return {"study": spec.study.name, "spec": str(spec.path), "storage": safe_url(spec.study.storage),
            "epochs": options.epochs, "seeds": list(options.seeds), "search_seed": search.seed,
            "seeds_shared_with_search": [seed for seed in options.seeds if seed == search.seed],
            "primary_protocol": analysis.primary,
            "splits": {"search_train": search.train_split, "search_val": search.val_split,
                       "final_train": options.train_split, "final_val": options.val_split,
                       "selected_on_reported_split": search.val_split == options.val_split}}


def results_extra(spec: StudySpec, analysis: Analysis) -> dict[str, Any]:
    rank = analysis.agreement.rank
    factors = {s.name: s.configuration.factor for s in analysis.summaries if s.configuration.factor}
    experiments = [{"factor": factors[c.a][0], "value": factors[c.a][1], **c.record()}
                   for c in analysis.family(ABLATION) if c.a in factors]
    return {"experiments": experiments,
            "rank_agreement": {"configurations": list(analysis.agreement.names), "n": rank.n, "tau": rank.tau,
                               "p": rank.p, "p_method": rank.method, "p_floor": rank.p_floor,
                               "protocol": OWN_PROTOCOL, "search_schedule": search_schedule(spec)},
            "importance": [{"trials": r.trials, "n": r.n, "importances": r.importances, "problem": r.problem,
                            "target_quantile": r.target_quantile, "top_set": r.top}
                           for r in analysis.rankings]}


def write(spec: StudySpec, study: optuna.Study, options: FinalizeOptions, runs: Sequence[FinalRun],
          final_dir: Path, shown: Gallery | None = None) -> Outputs:
    """Every output file, atomically, then the study's artifacts and note; with `shown`, the gallery's
    pictures in <final>/predictions/ too."""
    analysis = analyse(spec, study, runs, options)
    final_dir.mkdir(parents=True, exist_ok=True)
    pictures = gallery.draw(shown, final_dir / PREDICTIONS) if shown is not None else []
    experiments = [c for c in analysis.family(ABLATION) if c.protocol == analysis.primary]
    drawn = figures(study, analysis.summaries, analysis.effects, experiments,
                    shown.confusion if shown is not None else None)
    if shown is not None:
        drawn = {"gallery": (f"Predictions on {len(pictures)} val images ({shown.protocol}): image, ground truth, "
                             "and the first seed of each configuration", Html(gallery.html_section(pictures, shown))),
                 **drawn}
    png_line = write_pngs(drawn, final_dir)
    write_text_atomic(final_dir / "results.csv", tables.results_csv(analysis.summaries))
    write_json_atomic(final_dir / "results.json", tables.results_json(
        results_header(spec, options, analysis), analysis.summaries, analysis.comparisons,
        {**results_extra(spec, analysis), "gallery": shown.record() if shown is not None else None}))
    write_text_atomic(final_dir / "per_class_iou.csv", tables.per_class_csv(analysis.summaries))
    write_text_atomic(final_dir / "figures.html", figures_html(f"Study {spec.study.name}: figures", drawn,
                                                               {"factor-effects": FACTOR_CAVEAT}))
    write_text_atomic(final_dir / "report.md", report_markdown(spec, study, options, analysis, png_line, final_dir, shown))
    paths = [final_dir / name for name in FILES]
    artifact_dir = spec.study.output_dir / "artifacts"
    uploaded = attach(study, [*paths, *pictures], artifact_dir, note_markdown(spec, analysis))
    graphs = save_figures(study, drawn)
    return Outputs(final_dir, paths, tables.final_table(analysis.summaries), key_sentences(analysis),
                   png_line, dashboard_command(spec.study.storage, artifact_dir), uploaded, graphs)
