"""Every command in docs/guide.md, run on tiny synthetic data and checked for what the guide says it does.

Commands come from the guide's ```bash blocks, one per line, and run in the guide's
order in a temporary working directory, in-process as `python -m` runs them (runpy).
```text blocks are shown, not run: only the download (it needs the network), see
NOT_RUN. Any other block type, or a command no runner knows, fails the test: a new
command in the guide needs a runner here.

What differs from a real lab, and nothing else:

    /data/voc                      a synthetic VOC tree + fake SBD with .mat labels (test_prepare's
                                   helpers): 3 train, 2 val, 32x32, so train_aug has 6 images
    studies/voc_r50.toml           tiny specs of the same study names (search_helpers.write_spec):
    studies/demo.toml              crop 65, one epoch of 5-7 images, from scratch, on the CPU,
                                   searched on train_aug_search and selected on holdout like the real
                                   ones; voc-r50 reads /data/voc, demo its synthetic set; [finalize] is
                                   top_k 1, seed 0, 1 epoch, ResNet-101 weights from the file below
    /data/weights/resnet101-...    a randomly initialised torchvision ResNet-101 state_dict
    --trials N                     --trials N // 20 (at least 1): 10 -> 1, 40 -> 2, so resuming adds one
    segtrain.train                 TINY_TRAIN_FLAGS appended (the last flag wins)
    optuna-dashboard               not started (a server): its command must be the one hpo.search
                                   printed, and `optuna-dashboard --help` must show --host and --port

The finalize commands are tested on their own, in test_guide_finalize_commands, after the
others have made the studies they finalize.
"""

from __future__ import annotations

import json
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
import torchvision
from optuna.trial import TrialState
from search_helpers import TINY_RUN, TINY_TRAIN, write_spec
from test_prepare import write_sbd, write_voc

from hpo.spec import load_spec
from segtrain.data.voc import read_split_ids

GUIDE = Path(__file__).parents[1] / "docs" / "guide.md"
NOT_RUN = {"python -m segtrain.data prepare --root /data/voc --download": "downloads a few GB"}
TINY_TRAIN_FLAGS = ["--pretrained", "none", "--crop-size", "65", "--batch-size", "2", "--epochs", "1",
                    "--eval-points", "1", "--workers", "0", "--device", "cpu"]
WEIGHTS = "/data/weights/resnet101-63fe2227.pth"
SEARCH_SPLITS = 'train_split = "train_aug_search"\nval_split = "holdout"\n'  # as in studies/*.toml


def guide_blocks() -> list[tuple[str, list[str]]]:
    """(language, non-empty lines) of each fenced block of the guide."""
    fences = re.findall(r"^```(\w*)\n(.*?)^```", GUIDE.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [(language, [line.strip() for line in body.splitlines() if line.strip()]) for language, body in fences]


def guide_commands() -> list[str]:
    return [line for language, lines in guide_blocks() if language == "bash" for line in lines]


class Lab:
    """The guide's world in a tmp dir: data, study files, the working dir, and what commands printed."""

    def __init__(self, tmp: Path, patch: pytest.MonkeyPatch):
        self.patch = patch
        self.voc_root = tmp / "voc"
        voc_dir = write_voc(self.voc_root)
        write_sbd(self.voc_root / "benchmark_RELEASE" / "dataset", voc_dir)
        self.voc_dir = voc_dir
        self.weights = tmp / "resnet101.pth"  # written by the finalize test
        finalize = f'\n[finalize]\ntop_k = 1\nseeds = [0]\nepochs = 1.0\npretrained_weights = "{self.weights}"\n'
        (tmp / "studies").mkdir()
        self.paths = {
            "/data/voc": self.voc_root,
            WEIGHTS: self.weights,
            "studies/voc_r50.toml": write_spec(tmp / "studies", "voc-r50", self.voc_root,
                                               train=TINY_RUN + SEARCH_SPLITS, extra=finalize),
            "studies/demo.toml": write_spec(tmp / "studies", "demo", tmp / "cache",
                                            train=TINY_TRAIN + SEARCH_SPLITS, extra=finalize),
        }
        self.dashboards: set[str] = set()  # the commands hpo.search printed
        self.dashboard_help: str | None = None
        self.state = "new"
        (tmp / "work").mkdir()
        patch.chdir(tmp / "work")

    def substitute(self, words: list[str]) -> list[str]:
        out = []
        for previous, word in zip([None, *words], words):
            if previous == "--trials":
                word = str(max(1, int(word) // 20))
            elif word.startswith(("/", "studies/")):
                assert word in self.paths, f"the guide names {word}, which the test does not provide: add it"
                word = str(self.paths[word])
            out.append(word)
        return out

    def run(self, command: str, capsys: pytest.CaptureFixture[str]) -> None:
        words = shlex.split(command)
        runner_for(words).run(self, words, capsys)

    def run_guide(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Every command but finalize's, once, in the guide's order."""
        if self.state == "done":
            return
        if self.state == "failed":
            pytest.fail("an earlier guide command failed: see test_guide_commands")
        self.state = "failed"
        for command in guide_commands():
            if not runner_for(shlex.split(command)).needs_finalize:
                self.run(command, capsys)
        self.state = "done"


def run_python_module(lab: Lab, words: list[str], capsys: pytest.CaptureFixture[str],
                      extra: list[str] = ()) -> str:
    """`python -m MODULE ARGS` in this process; its stdout, once it exited 0."""
    assert words[:2] == ["python", "-m"]
    module, args = words[2], [*lab.substitute(words[3:]), *extra]
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        patch.setattr(sys, "argv", [module, *args])
        warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)  # runpy
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    output = capsys.readouterr()
    assert code == 0, f"`{' '.join(words)}` exited {code}:\n{output.out}\n{output.err}"
    return output.out


def option(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


def study_name(lab: Lab, words: list[str]) -> str:
    return load_spec(Path(lab.substitute([option(words, "--study")])[0])).study.name


def run_export(lab: Lab, words: list[str], capsys) -> None:
    name, value = words[1].split("=", 1)
    assert name == "VOC_ROOT", "the tools read only VOC_ROOT"
    lab.patch.setenv(name, lab.substitute([value])[0])


def run_prepare(lab: Lab, words: list[str], capsys) -> None:
    output = run_python_module(lab, words, capsys)
    assert "train_aug 6 images, val 2 images" in output
    assert len(read_split_ids(lab.voc_dir, "train_aug")) == 6


def run_check(lab: Lab, words: list[str], capsys) -> None:
    output = run_python_module(lab, words, capsys)
    assert output.splitlines()[2].split() == ["pixels", "train", "val", "trainval", "train_aug", "train_aug_search",
                                            "holdout"]
    assert "no problems found" in output


def run_train(lab: Lab, words: list[str], capsys) -> None:
    output = run_python_module(lab, words, capsys, extra=TINY_TRAIN_FLAGS)
    out = Path(option(words, "--out"))
    assert "val mIoU" in output and f"wrote {out / 'config.json'} and {out / 'result.json'}" in output
    config = (out / "config.json").read_text()
    assert '"train_split": "train_aug"' in config and '"backbone": "resnet50"' in config  # the guide's flags
    assert (out / "result.json").is_file()


def run_search(lab: Lab, words: list[str], capsys) -> None:
    output = run_python_module(lab, words, capsys)
    name = study_name(lab, words)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///runs/{name}/study.db")
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == int(lab.substitute(words)[words.index("--trials") + 1])
    assert f"study {name}: " in output
    lab.dashboards.update(line.removeprefix("dashboard: ") for line in output.splitlines()
                          if line.startswith("dashboard: "))


def run_dashboard(lab: Lab, words: list[str], capsys) -> None:
    printed = [shlex.split(command) for command in lab.dashboards]
    assert words in printed, f"the guide says {shlex.join(words)}; hpo.search printed {lab.dashboards}"
    executable = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert executable, "optuna-dashboard is not installed next to this Python"
    if lab.dashboard_help is None:
        lab.dashboard_help = subprocess.run([executable, "--help"], capture_output=True, text=True,
                                            timeout=120, check=True).stdout
    assert "--host" in lab.dashboard_help and "--port" in lab.dashboard_help


def run_finalize(lab: Lab, words: list[str], capsys) -> None:
    """The guide's promise: the final table (top configuration, baseline, ResNet-101 pretrained and from
    scratch, each with its seeds and mIoU), reported on val while the search selected on holdout; with
    --dry-run, the plan and nothing trained."""
    final = Path("runs") / study_name(lab, words) / "final"
    if "--dry-run" in words:
        out = run_python_module(lab, words, capsys)
        assert re.search(r"finalize: \d+ configurations x 1 seeds: \d+ runs to train", out), out
        assert "| top-1 " in out and "| r101-scratch " in out and not final.exists()
        return
    run_python_module(lab, words, capsys)
    for name in ("report.md", "results.csv", "results.json"):
        assert (final / name).is_file(), f"{final / name} missing"
    assert list(final.glob("*.html")), f"no figures in {final}"
    report = (final / "report.md").read_text()
    configurations = json.loads((final / "results.json").read_text())["configurations"]
    table = report.split("## Final table")[1].split("\n## ")[0]
    lines = [line for line in table.splitlines() if line.startswith("|")][2:]  # below the header and its rule
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]
    names = [row[0] for row in rows]
    assert names == [c["configuration"] for c in configurations]
    assert names[0] == "top-1" and names[-2:] == ["r101-imagenet", "r101-scratch"]
    assert "baseline" in names or configurations[0]["description"].endswith("= baseline")
    for row, configuration in zip(rows, configurations):  # seeds finished/planned, then the mean mIoU
        assert row[2] == "1/1" and row[3] == f"{configuration['miou']['mean']:.4f}", row
    assert "The search trained on `train_aug_search` and selected on `holdout`; this table reports `val`" in report
    assert "results.md" in report, "report.md does not link the published anchors (docs/results.md)"


@dataclass(frozen=True)
class Runner:
    prefix: tuple[str, ...]
    run: Callable[[Lab, list[str], pytest.CaptureFixture[str]], None]
    needs_finalize: bool = False


RUNNERS = [
    Runner(("export",), run_export),
    Runner(("python", "-m", "segtrain.data", "prepare"), run_prepare),
    Runner(("python", "-m", "segtrain.data", "check"), run_check),
    Runner(("python", "-m", "segtrain.train"), run_train),
    Runner(("python", "-m", "hpo.search"), run_search),
    Runner(("optuna-dashboard",), run_dashboard),
    Runner(("python", "-m", "hpo.finalize"), run_finalize, needs_finalize=True),
]


def runner_for(words: list[str]) -> Runner:
    matches = [runner for runner in RUNNERS if tuple(words[:len(runner.prefix)]) == runner.prefix]
    assert len(matches) == 1, f"no runner in tests/test_guide.py for `{shlex.join(words)}`: add one"
    return matches[0]


@pytest.fixture(scope="module")
def lab(module_tmp: Callable[[str], Path]) -> Lab:
    """One intra-op thread, as in test_finalize: on tensors this small a second thread gains nothing, and
    on a shared 2-core machine its spin-waits slow every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            yield Lab(module_tmp("guide"), patch)
    finally:
        torch.set_num_threads(threads)


def test_every_guide_command_has_a_runner_and_only_the_download_is_not_run():
    blocks = guide_blocks()
    assert {language for language, _ in blocks} == {"bash", "text"}, "use ```bash (run) or ```text (not run)"
    assert [line for language, lines in blocks if language == "text" for line in lines] == list(NOT_RUN)
    commands = guide_commands()
    assert len(commands) >= 10
    for command in commands:
        assert not command.endswith("\\"), f"one command per line: {command}"
        runner_for(shlex.split(command))


def test_guide_commands(lab: Lab, capsys: pytest.CaptureFixture[str]):
    """Data, baseline, search in parts, dashboard, demo: every command but finalize's."""
    lab.run_guide(capsys)
    assert len(lab.dashboards) == 2  # voc-r50 and demo


def test_guide_finalize_commands(lab: Lab, capsys: pytest.CaptureFixture[str]):
    lab.run_guide(capsys)
    if not lab.weights.exists():
        torch.save(torchvision.models.resnet101().state_dict(), lab.weights)
    finalize = [command for command in guide_commands() if runner_for(shlex.split(command)).needs_finalize]
    assert len(finalize) == 4
    for command in finalize:
        lab.run(command, capsys)
