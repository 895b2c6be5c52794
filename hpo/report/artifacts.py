"""Attach finalize's files and a note to the study, for optuna-dashboard (`--artifact-dir`).

Imports optuna and optuna_dashboard only; hpo.report.outputs calls it with the files it wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna_dashboard import save_note


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
