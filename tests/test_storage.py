"""Storage URLs never shown with their password; the dashboard bound to this machine; no pickled code loaded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from search_helpers import CHEAP_TRAIN, write_spec

from hpo.search.cli import main
from hpo.storage_urls import dashboard_command, safe_url
from segtrain.cli import run

REPO = Path(__file__).resolve().parents[1]
URL = "postgresql://alice:hunter2-secret@127.0.0.1:1/studies"  # port 1: nothing listens there


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, "secret", tmp_path / "cache", train=CHEAP_TRAIN)
    assert run(main, ["--study", str(spec), "--storage", URL], prog="hpo.search") == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert "storage postgresql://alice:***@127.0.0.1:1/studies: cannot open" in captured.err
    assert "hunter2" not in captured.out + captured.err


@pytest.mark.parametrize("url, shown", [
    (URL, "postgresql://alice:***@127.0.0.1:1/studies"),
    ("postgresql+psycopg://bob:p%40ss@db.lan/hpo", "postgresql+psycopg://bob:***@db.lan/hpo"),
    ("sqlite:///runs/demo/study.db", "sqlite:///runs/demo/study.db"),
    ("journal://runs/demo/journal.log", "journal://runs/demo/journal.log"),
])
def test_urls_are_shown_with_their_password_masked(url, shown):
    assert safe_url(url) == shown


def test_the_dashboard_command_binds_this_machine_only():
    assert dashboard_command(URL) == "optuna-dashboard --host 127.0.0.1 --port 8080 " \
                                     "'postgresql://alice:***@127.0.0.1:1/studies'"
    assert dashboard_command("journal://runs/demo/journal.log") == \
        "optuna-dashboard --host 127.0.0.1 --port 8080 'runs/demo/journal.log'"


def test_every_torch_load_refuses_pickled_code():
    calls = [(path, call) for package in ("segtrain", "hpo", "benchmarks")
             for path in sorted((REPO / package).rglob("*.py"))
             for call in re.findall(r"torch\.load\([^)]*\)", path.read_text())]
    assert calls, "torch.load is used to resume checkpoints and load weights"
    assert [(path, call) for path, call in calls if "weights_only=True" not in call] == []
