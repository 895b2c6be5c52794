"""Several machines: workers on one PostgreSQL study (a real server started by the postgres_url fixture)."""

from __future__ import annotations

import optuna
import sqlalchemy
from search_helpers import CHEAP_TRAIN, assert_exactly_finished, python_path_env, write_spec

from hpo.search.cli import main
from hpo.search.storage import StudyLock
from segtrain.cli import run


def test_a_plain_postgresql_url_uses_psycopg_3(postgres_url):
    engine = sqlalchemy.create_engine(postgres_url)
    assert engine.dialect.driver == "psycopg"
    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_two_workers_share_one_postgresql_study(postgres_url, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", python_path_env()["PYTHONPATH"])
    spec = write_spec(tmp_path, "pg", tmp_path / "cache", train=CHEAP_TRAIN)
    argv = ["--study", str(spec), "--trials", "4", "--workers", "2", "--storage", postgres_url]
    assert run(main, argv, prog="hpo.search") == 0
    out, err = capsys.readouterr()
    for trouble in ("rror", "Traceback", "failed", "[W "):
        assert trouble not in err, err
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert_exactly_finished(study, 4)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert "pg-secret-42" not in out + err  # the summary names the storage, masked
    assert "postgres:***@127.0.0.1" in out


def test_the_study_lock_is_one_advisory_lock_at_a_time(postgres_url):
    first, second = StudyLock(postgres_url, "pg"), StudyLock(postgres_url, "pg")
    engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)

    def free() -> bool:
        """Whether another session could take the lock now (given back at once if it could)."""
        with engine.connect() as connection:
            taken = connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"),
                                       {"key": first.key}).scalar()
            if taken:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": first.key})
        return taken

    try:
        assert free()
        with first:
            assert not free()
        assert free()  # released: the next worker gets it ...
        with second:
            assert not free()  # ... and holds it in turn
        assert free()
    finally:
        engine.dispose()
