"""The final runs: each (configuration, seed) trained, reused or resumed in its own run dir, then scored.

Every (configuration, seed) run has its own run dir under <output dir>/final/, so a rerun
reuses finished runs, resumes an interrupted one from its checkpoint and trains only
what is missing. Each finished run is also scored under the [finalize] eval protocols
(segtrain.evaluation: output stride 8 at evaluation, multi-scale + flip), each result
kept as RUN/eval-<protocol>.json and reused by reruns. A run that fails says why in
its status (weights unavailable, diverged, out of memory) instead of stopping the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hpo.report.results import DIVERGED, OWN_PROTOCOL, RESULT, Configuration, FinalRun, read_result
from hpo.search.tracking import StudyTracking
from segtrain.engine import CHECKPOINT, train
from segtrain.errors import WeightsError
from segtrain.evaluation import PER_IMAGE_COUNTS, PRESETS, evaluate_run
from segtrain.progress import progress
from segtrain.records import TrainingDiverged, TrainResult

log = logging.getLogger(__name__)

def run_dir_for(final_dir: Path, configuration: Configuration, seed: int) -> Path:
    """final/<name>-<key>/seed-<seed>; a recipe keeps its dir when its rank (and so its name) changes."""
    existing = sorted(final_dir.glob(f"*-{configuration.key}"))
    folder = existing[0] if existing else final_dir / f"{configuration.name}-{configuration.key}"
    return folder / f"seed-{seed}"


def run_one(configuration: Configuration, seed: int, run_dir: Path, tracking: StudyTracking | None = None) -> FinalRun:
    """Reuse a finished run, resume an interrupted one, or train it (its curves to `tracking`); record why it
    failed if it did."""
    def outcome(result: TrainResult | None, status: str, how: str) -> FinalRun:
        return FinalRun(configuration, seed, run_dir, result, status, how)

    if (run_dir / RESULT).exists():
        return outcome(read_result(run_dir / RESULT), "ok", "reused")
    resume = (run_dir / CHECKPOINT).exists()
    how = "resumed" if resume else "trained"
    params = {**configuration.params, "configuration": configuration.name, "seed": seed, "trial": configuration.trial}
    try:
        with tracking.run(run_dir, params) if tracking else contextlib.nullcontext() as tracker:
            result = train(configuration.for_seed(seed), run_dir=run_dir, resume=resume, tracker=tracker)
    except WeightsError as error:
        return outcome(None, f"weights unavailable: {error}", "not run")
    except TrainingDiverged as error:
        return outcome(None, f"{DIVERGED}: {error}", how)
    except torch.OutOfMemoryError as error:
        return outcome(None, f"out of memory: {str(error).splitlines()[0]}", how)
    return outcome(result, "ok", how)


def evaluations(run: FinalRun, protocols: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    """A finished run scored under each protocol but its own ("ss"): RUN/eval-<protocol>.json when it is there
    for this checkpoint, else evaluated now. A protocol that comes to the run's own (os8 on a run trained at
    output stride 8) is its own evaluation."""
    if run.result is None:
        return {}
    cfg = run.configuration.config
    own = PRESETS[OWN_PROTOCOL].for_run(cfg.output_stride)
    found = {}
    for name in protocols:
        if name == OWN_PROTOCOL:
            continue
        protocol = PRESETS[name].for_run(cfg.output_stride)
        if protocol == own:
            found[name] = {"miou": run.result.final_miou, "protocol": own.to_dict(),
                           "per_image_counts": str(run.run_dir / PER_IMAGE_COUNTS)}
            continue
        try:
            found[name] = evaluate_run(run.run_dir, protocol, reuse=True, device=cfg.device)
        except torch.OutOfMemoryError as error:  # a larger protocol than training needs: that column stays empty
            log.warning("%s seed %d: no %s evaluation, out of memory: %s", run.configuration.name, run.seed,
                        name, str(error).splitlines()[0])
    return found


def run_all(configurations: Sequence[Configuration], seeds: Sequence[int], final_dir: Path,
            protocols: Sequence[str] = (OWN_PROTOCOL,), tracking: StudyTracking | None = None) -> list[FinalRun]:
    """Every (configuration, seed) run, scored under `protocols`, with a progress bar over runs; the curves of
    those it trains go to `tracking`."""
    runs: list[FinalRun] = []
    unavailable: dict[str, str] = {}  # configuration -> why its weights could not be loaded
    todo = [(c, seed) for c in configurations for seed in seeds]
    for configuration, seed in progress(todo, unit="runs", desc="finalize"):
        run_dir = run_dir_for(final_dir, configuration, seed)
        if configuration.name in unavailable and not (run_dir / RESULT).exists():
            final = FinalRun(configuration, seed, run_dir, None, unavailable[configuration.name], "not run")
        else:
            final = run_one(configuration, seed, run_dir, tracking)
        if final.status.startswith("weights unavailable"):
            unavailable[configuration.name] = final.status
        final = dataclasses.replace(final, evaluations=evaluations(final, protocols))
        log.info("%s seed %d: %s (%s)", configuration.name, seed,
                 f"mIoU {final.result.final_miou:.4f}" if final.result else final.status, final.how)
        runs.append(final)
    return runs


