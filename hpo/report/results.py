"""Final runs as plain data: the configurations finalize trains, their runs, and each one's summary.

hpo.finalize builds these (selection, runs); the rest of hpo.report reads them. Imports go one
way: this module imports segtrain and hpo.report.stats only (no optuna, no plotly, never
hpo.finalize), so every part of the report can use it.

Evaluation protocols: a run's own final evaluation is protocol "ss" (single scale, the
output stride it trained at, no flip). Other protocols (e.g. "os8", "ms_flip") come
from `segtrain.evaluation.evaluate_run(run_dir, protocol)`, stored per run in
`FinalRun.evaluations`; every mIoU statistic, column and comparison is keyed by
protocol, so each one adds a column ("mIoU ss", "mIoU os8") and nothing else changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpo.report.stats import Sample, sample
from segtrain.config import TrainConfig
from segtrain.data.labels import CLASS_NAMES
from segtrain.errors import UserError
from segtrain.evaluation import OWN_PROTOCOL, PER_IMAGE_COUNTS
from segtrain.metrics import read_per_image_counts
from segtrain.records import RUNTIME_FIELDS, TrainResult

RESULT = "result.json"
# A run whose loss became NaN or infinite has the status "diverged: ...". Divergence is an outcome of the
# configuration (its learning rate, its schedule) on that seed, like a low mIoU, so the comparisons count it
# (hpo.report.compare: "unstable"). The other failures say nothing about how the configuration trains:
# "weights unavailable" (offline, a bad file) and "out of memory" (the device's size: it hits a
# configuration on every seed, whatever its accuracy) are listed and left out, as a full disk or Ctrl-C,
# which stop finalize and are resumed, are never recorded at all.
DIVERGED = "diverged"
# (column, TrainResult attribute): the per-run numbers besides mIoU, averaged over seeds
METRICS = (("pixel_accuracy", "pixel_accuracy"), ("seconds", "seconds"),
           ("images_per_second", "images_per_second"), ("peak_memory_bytes", "peak_memory_bytes"),
           ("parameters", "parameters"))


def miou_key(protocol: str) -> str:
    """The results.csv/json key of a protocol's mIoU: "miou" for the run's own evaluation, else miou_<protocol>."""
    return "miou" if protocol == OWN_PROTOCOL else f"miou_{protocol}"


def miou_title(protocol: str) -> str:
    return f"mIoU {protocol}"


@dataclass(frozen=True)
class EvalProtocol:
    """How a val mIoU was measured: the output stride at evaluation, the input scales, flipping, a dense CRF."""

    output_stride: int
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crf: bool = False

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EvalProtocol:
        """From evaluate_run's `protocol` entry: {output_stride, scales, flip[, crf]}."""
        return cls(int(values["output_stride"]), tuple(float(s) for s in values["scales"]), bool(values["flip"]),
                   bool(values.get("crf", False)))


@dataclass(frozen=True)
class Configuration:
    """One configuration of the final table, trained once per seed."""

    name: str  # e.g. "top-1", "baseline", "r101-scratch", "ablation output_stride=8", "variant deeplabv3plus";
    #            also names its run dirs
    description: str  # e.g. "trial 7 = baseline", "ResNet-101, ImageNet-pretrained"
    roles: tuple[str, ...]  # "top", "baseline", "r101-imagenet", "r101-scratch", "ablation", "variant"
    trial: int | None  # the search trial it comes from, if any
    params: dict[str, Any]  # the overrides of the spec's [train] that define it
    config: TrainConfig  # seed 0; each run replaces the seed
    search_value: float | None = None  # its trial's score in the search (short budget, the search's val split)
    factor: tuple[str, Any] | None = None  # an ablation's (field, value); a variant's ("model", model)

    def for_seed(self, seed: int) -> TrainConfig:
        return self.config.replace(seed=seed)

    def role(self, role: str) -> bool:
        return role in self.roles

    @property
    def key(self) -> str:
        """Identifies the training recipe (not where the data is or which device runs it). Only the
        fields that differ from TrainConfig's defaults count, so a field added later with a default
        that keeps what runs did before leaves every key, and so every final run dir, as it was."""
        defaults = TrainConfig().to_dict()
        values = {k: v for k, v in self.config.to_dict().items()
                  if k not in RUNTIME_FIELDS | {"seed"} and v != defaults[k]}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class FinalRun:
    """One (configuration, seed) run: its result, or why it has none."""

    configuration: Configuration
    seed: int
    run_dir: Path
    result: TrainResult | None
    status: str  # "ok", "weights unavailable: ...", "diverged: ..." (DIVERGED), "out of memory: ..."
    how: str  # "trained", "resumed", "reused" or "not run"
    evaluations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # protocol -> evaluate_run's dict

    def miou(self, protocol: str = OWN_PROTOCOL) -> float | None:
        if self.result is None:
            return None
        if protocol == OWN_PROTOCOL:
            return self.result.final_miou
        evaluation = self.evaluations.get(protocol)
        return None if evaluation is None else float(evaluation["miou"])

    @property
    def diverged(self) -> bool:
        return self.status.startswith(DIVERGED)

    def per_image_counts(self, protocol: str = OWN_PROTOCOL) -> tuple[list[str], np.ndarray] | None:
        """(val image ids, per image and class TP, FP, FN) of the `protocol` evaluation, where the run kept
        them (runs trained or evaluated before they were kept have none)."""
        if self.result is None:
            return None
        if protocol == OWN_PROTOCOL:
            path = self.run_dir / PER_IMAGE_COUNTS
        else:
            path = self.evaluations.get(protocol, {}).get("per_image_counts")
        return read_per_image_counts(path) if path is not None and Path(path).is_file() else None

    def protocol(self, protocol: str = OWN_PROTOCOL) -> EvalProtocol | None:
        """How this run's `protocol` mIoU was measured (for matching published figures)."""
        if protocol == OWN_PROTOCOL:
            return EvalProtocol(self.configuration.config.output_stride)
        evaluation = self.evaluations.get(protocol)
        return None if evaluation is None else EvalProtocol.from_dict(evaluation["protocol"])


def read_result(path: Path) -> TrainResult:
    try:
        return TrainResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: unreadable result ({error.__class__.__name__}); delete it to "
                        f"train that run again") from None


@dataclass(frozen=True)
class Summary:
    """One configuration over its seeds: statistics over the finished ones, and why the others failed."""

    configuration: Configuration
    runs: list[FinalRun]
    miou: dict[str, Sample]  # protocol -> mIoU over the seeds with a value
    stats: dict[str, Sample]  # METRICS column -> over the finished seeds
    per_class_iou: list[Sample]

    @property
    def ok(self) -> list[FinalRun]:
        return [run for run in self.runs if run.result is not None]

    @property
    def failed(self) -> list[FinalRun]:
        return [run for run in self.runs if run.result is None]

    def role(self, role: str) -> bool:
        return self.configuration.role(role)

    @property
    def name(self) -> str:
        return self.configuration.name

    @property
    def seeds(self) -> str:
        """finished/planned, e.g. "2/3"."""
        return f"{len(self.ok)}/{len(self.runs)}"

    @property
    def status(self) -> str:
        """"ok", or each failed seed with its reason (the mean is over the finished seeds)."""
        if not self.failed:
            return "ok"
        return "; ".join(f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}: {reason}"
                         for reason, seeds in self.failures.items())

    @property
    def failures(self) -> dict[str, list[int]]:
        """Each reason a seed failed, with the seeds that failed for it, in seed order."""
        reasons: dict[str, list[int]] = {}
        for run in self.failed:
            reasons.setdefault(run.status, []).append(run.seed)
        return reasons

    @property
    def diverged(self) -> tuple[int, ...]:
        """The seeds whose run diverged."""
        return tuple(run.seed for run in self.runs if run.diverged)

    def by_seed(self, protocol: str = OWN_PROTOCOL) -> dict[int, float]:
        return {run.seed: value for run in self.runs if (value := run.miou(protocol)) is not None}

    @classmethod
    def of(cls, configuration: Configuration, runs: list[FinalRun], protocols: Sequence[str]) -> Summary:
        results = [run.result for run in runs if run.result is not None]
        miou = {protocol: sample([v for run in runs if (v := run.miou(protocol)) is not None])
                for protocol in protocols}
        metrics = {column: sample([getattr(r, attribute) for r in results]) for column, attribute in METRICS}
        per_class = [sample([r.per_class_iou[c] for r in results if r.per_class_iou[c] is not None])
                     for c in range(len(CLASS_NAMES))]
        return cls(configuration, runs, miou, metrics, per_class)


def protocols_of(runs: Sequence[FinalRun]) -> list[str]:
    """The runs' own evaluation first, then every protocol some run was evaluated under."""
    return list(dict.fromkeys([OWN_PROTOCOL, *(p for run in runs for p in run.evaluations)]))


def summarize(runs: Sequence[FinalRun], protocols: Sequence[str] | None = None) -> list[Summary]:
    """Per configuration, in the order of the runs; mIoU under `protocols` (default: every one the runs have)."""
    protocols = protocols_of(runs) if protocols is None else protocols
    names = list(dict.fromkeys(run.configuration.name for run in runs))
    return [Summary.of(next(r.configuration for r in runs if r.configuration.name == name),
                       [r for r in runs if r.configuration.name == name], protocols) for name in names]


def find(summaries: Sequence[Summary], role: str) -> Summary | None:
    """The first configuration with `role` (top-1 for "top")."""
    return next((s for s in summaries if s.role(role)), None)


def present_classes(summaries: Sequence[Summary]) -> list[int]:
    """Classes with an IoU in some run (a synthetic set uses only a few of VOC's 21)."""
    return [c for c in range(len(CLASS_NAMES)) if any(s.per_class_iou[c].n for s in summaries)]
