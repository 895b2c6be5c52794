"""Smoke test of benchmarks/: each script runs on its smallest setting (`--quick`) and ends
with a well-formed RESULT line. Correctness only: no timing is asserted, since these
machines are shared and the quick settings are too small to mean anything.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.stem for path in (ROOT / "benchmarks").glob("*.py") if path.stem not in ("common", "gpu"))
RESULT = re.compile(r"RESULT (?P<name>\w+) (?P<value>\S+) \(goal (?P<op>>=|<=|~) (?P<goal>[0-9.]+)\)")


def run_quick(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    # as a user runs it: `python benchmarks/<name>.py` from the repo root, the project importable.
    # One torch thread: on a busy 2-core machine, two threads waiting on each other make the
    # quick runs 5x slower, and no figure is checked here anyway.
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, f"benchmarks/{name}.py", "--quick", *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_benchmarks_are_there():
    assert {"train_loop", "data_pipeline", "metrics", "scaling", "pruning", "evaluation"} <= set(SCRIPTS)
    assert (ROOT / "benchmarks" / "gpu.py").is_file()


def assert_result_line(done: subprocess.CompletedProcess[str], name: str) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.rstrip().splitlines()[-1]
    match = RESULT.fullmatch(last)
    assert match, f"last line is not a RESULT line: {last!r}"
    # named for its script, or for the script's figure (`RESULT pruning_compute ...`)
    assert match["name"] == name or match["name"].startswith(f"{name}_")
    assert math.isfinite(float(match["value"]))


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_runs_and_ends_with_a_result_line(name: str):
    done = run_quick(name)
    assert_result_line(done, name)
    if name == "metrics":  # its figures only count if the implementations agree
        assert "confusion matrices identical: True" in done.stdout
        assert "(equal to 1e-6: True)" in done.stdout
    if name == "evaluation":
        assert "eval batch size 8 and 1 give the same scores: True" in done.stdout


def test_the_gpu_script_writes_every_section_into_its_json_file(tmp_path):
    """On the CPU, as --quick: every section runs its code and lands under its own key, none failed; the
    file is valid JSON after each section (a run cut short keeps the sections done)."""
    out = tmp_path / "gpu.json"
    out.write_text(json.dumps({"earlier": {"kept": True}}))  # merged into, not replaced
    done = run_quick("gpu", "--out", str(out))
    assert_result_line(done, "gpu")
    figures = json.loads(out.read_text())
    sections = ["env", "step", "end_to_end", "loader", "evaluation", "probe", "profile", "checkpoint", "compile"]
    assert set(figures) == {"earlier", *sections} and figures["earlier"] == {"kept": True}
    assert [name for name in sections if "error" in figures[name] or "skipped" in figures[name]] == []
    step = figures["step"]["rows"]
    assert {row["cudnn_benchmark"] for row in step} == {True, False} and all(row["images_per_second"] > 0 for row in step)
    assert {row["output"] for row in figures["loader"]["rows"]} == {"uint8", "float32"}
    assert {(row["output_stride"], row["pass"]) for row in figures["evaluation"]["rows"]} == \
        {(16, "cold"), (16, "warm"), (8, "cold"), (8, "warm")}
    assert 0 < figures["end_to_end"]["efficiency"] and figures["profile"]["top"]
    assert figures["checkpoint"]["bytes"] > 0 and figures["probe"]["total_hours"] > 0
    assert figures["compile"]["compiled"]["backend"] == "eager" and figures["compile"]["speedup"] > 0
