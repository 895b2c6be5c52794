"""Optuna storage URLs as text: their scheme, the file behind one, one safe to print, the dashboard command.

Below the search (which opens storages: hpo.search.storage) and the report (which names
them): imports sqlalchemy's URL parser only.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

from segtrain.errors import UserError

RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
JOURNAL_PREFIX = "journal://"


def scheme(url: str) -> str:
    if url.startswith(JOURNAL_PREFIX):
        return "journal"
    try:
        name = make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        name = url.split(":", 1)[0] if ":" in url else url
    if name not in RDB_SCHEMES:
        raise UserError(f"storage {safe_url(url)}: unknown scheme '{name}'; use sqlite:///PATH, "
                        f"postgresql://USER@HOST/DB, mysql://USER@HOST/DB or journal://PATH")
    return name


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url.split("@", 1)[-1] if "@" in url else url


def local_path(url: str) -> Path | None:
    """The file behind a SQLite or journal storage (None for a database server)."""
    kind = scheme(url)
    if kind == "journal":
        return Path(url[len(JOURNAL_PREFIX):])
    if kind == "sqlite":
        database = make_url(url).database
        return Path(database) if database and database != ":memory:" else None
    return None


def dashboard_command(url: str, artifact_dir: Path | None = None) -> str:
    """The optuna-dashboard command for this storage, bound to this machine only;
    with `artifact_dir`, the dashboard also shows the files attached to the study there."""
    target = str(local_path(url)) if scheme(url) == "journal" else safe_url(url)
    artifacts = f" --artifact-dir '{artifact_dir}'" if artifact_dir is not None else ""
    return f"optuna-dashboard --host 127.0.0.1 --port 8080{artifacts} '{target}'"
