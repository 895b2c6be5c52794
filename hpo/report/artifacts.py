"""Attach finalize's files, figures and a note to the study, for optuna-dashboard (`--artifact-dir`).

The files become artifacts, the report's plotly figures the study's own graphs (shown beside
Optuna's plots), the tables its note. Imports optuna, optuna_dashboard and plotly only;
hpo.report.outputs calls it with what it wrote and drew.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna_dashboard import save_note, save_plotly_graph_object
from plotly import graph_objects as go

# figures the dashboard draws itself, live: saving them would only show a stale copy beside them
DASHBOARD_DRAWS = ("optimization-history", "parallel-coordinate", "slice")


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


def save_figures(study: optuna.Study, drawn: Mapping[str, tuple[str, go.Figure | str]]) -> list[str]:
    """Each drawn figure (id -> (title, figure or why not drawn)) the dashboard does not draw itself, saved
    in the study under its id (a rerun replaces it), titled, at the height of the dashboard's card (a
    taller figure would be cut off there); returns the ids saved."""
    saved = []
    for figure_id, (title, figure) in drawn.items():
        if isinstance(figure, go.Figure) and figure_id not in DASHBOARD_DRAWS:
            card = go.Figure(figure).update_layout(title_text=title)
            card.layout.height = None
            save_plotly_graph_object(study, card, graph_object_id=figure_id)
            saved.append(figure_id)
    return saved


def _stored(store: FileSystemArtifactStore, artifact_id: str) -> bytes | None:
    try:
        with store.open_reader(artifact_id) as reader:
            return reader.read()
    except ArtifactNotFound:
        return None
