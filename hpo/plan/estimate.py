"""A study's bill before it starts: device-hours of the search and of each finalize row, and its disk.

The search: the seeded trials (baseline, recipes) at their own cost, every other trial
at the expected cost of a configuration drawn at random from the space (TPE draws at
random only for its startup trials, then drifts towards what wins, which may be
costlier: the `max` column prices every trial at the costliest configuration that
fits), times the pruner's measured saving. A configuration predicted not to fit the
device costs nothing: the search ends it before it trains.

Finalize (hpo.finalize): top_k configurations, the baseline, ResNet-101 pretrained and
from scratch with the best configuration's hyperparameters, and the best as each [finalize]
variant model (DeepLabV3+, priced from its own probe corners), each trained once per seed for
the [finalize] epochs on finalize's split; the [finalize.ablation] experiments, one
configuration per value that differs from the centre's (and the centre again at the search
budget), at their own budget (the search's epochs on its training split, or finalize's); all
scored under the [finalize] eval protocols
(a forward pass per scale and flip, at the protocol's output stride; a CRF protocol adds
segtrain.crf's measured CPU-seconds per image, shared out over its pool's processes,
the device idle meanwhile). The winners are
unknown before the search, so each such row is priced at the expected cost of a
configuration of the space that fits; once they are known, hpo.finalize prices each
configuration itself (`final_run_hours`).
Runs that finalize merges (the baseline that is also a top configuration) are
counted twice: the figures are an upper bound there.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.markdown import markdown_table
from hpo.plan.cost import PRUNER_SAVING, CostModel, TrialPricer, checkpoint_bytes, sample_space, split_size
from hpo.plan.probe import FINALIZE_BACKBONE, val_image_side
from hpo.spec import Multiple, StudySpec
from segtrain import crf
from segtrain.config import MODELS, TrainConfig
from segtrain.evaluation import OWN_PROTOCOL, PRESETS

SAMPLES = 1000  # random draws of the space for the expected cost: a ~2% standard error here


@dataclass(frozen=True)
class Row:
    """One line of the bill: `runs` trials or configurations, each trained once per seed."""

    name: str
    runs: int
    seeds: int
    epochs: float
    hours: float  # expected
    hours_max: float  # at the costliest configuration that fits
    note: str = ""


@dataclass(frozen=True)
class Disk:
    """Checkpoints on the output dir's file system at the study's peak."""

    directory: Path
    checkpoint_bytes: int  # the search's largest checkpoint while it trains: fp32 weights + optimizer state
    kept_bytes: int  # the best keep_checkpoints trials keep theirs: the weights alone, once finished
    running_bytes: int  # per worker: its trial's checkpoint and the next one being written beside it
    final_bytes: int  # every final run keeps its checkpoint: the weights alone
    free_bytes: int | None  # free now on that file system

    @property
    def total_bytes(self) -> int:
        return self.kept_bytes + self.running_bytes + self.final_bytes


@dataclass(frozen=True)
class Plan:
    """What a study of `trials` trials and these finalize options costs."""

    trials: int
    top_k: int
    seeds: tuple[int, ...]
    epochs: float  # of each final run
    rows: tuple[Row, ...]
    disk: Disk
    notes: tuple[str, ...]

    @property
    def total_hours(self) -> float:
        return sum(row.hours for row in self.rows)

    @property
    def search_hours(self) -> float:
        return self.rows[0].hours

    @property
    def finalize_hours(self) -> float:
        return self.total_hours - self.search_hours


@dataclass(frozen=True)
class _RunCost:
    """The cost of one run of a row, linear in the epochs: seconds = per_epoch x epochs + fixed."""

    per_epoch: float
    fixed: float  # evaluations
    per_epoch_max: float
    fixed_max: float
    checkpoint_bytes: int
    fits: bool = True

    def seconds(self, epochs: float, highest: bool = False) -> float:
        if not self.fits:
            return 0.0
        return (self.per_epoch_max * epochs + self.fixed_max) if highest else self.per_epoch * epochs + self.fixed


class Estimator:
    """A spec and a cost model, with everything a plan needs computed once, so that pricing a plan
    of any size (hpo.plan.budget tries many) is arithmetic."""

    def __init__(self, spec: StudySpec, model: CostModel, workers: int = 1, samples: int = SAMPLES):
        self.spec, self.model, self.workers = spec, model, workers
        self.base = spec.train_config()
        fixed = self.base.to_dict()
        self.points = [{**fixed, **point} for point in sample_space(spec.space, samples, seed=spec.study.seed)]
        self.pricer = TrialPricer(model, self.base)
        self.search_images = (split_size(self.base, self.base.train_split), split_size(self.base, self.base.val_split))
        self.final_images = (split_size(self.base, spec.finalize.train_split),
                             split_size(self.base, spec.finalize.val_split))
        self.saving = PRUNER_SAVING.get(spec.pruner.type, 1.0)
        self._trial_costs = [self.pricer.seconds(point) for point in self.points]
        self._seeded = [self.pricer.seconds({**fixed, **values}) for values, _ in spec.seeded_trials()]

    # --- the search

    @property
    def share_not_fitting(self) -> float:
        return sum(cost == 0.0 for cost in self._trial_costs) / len(self._trial_costs)

    @property
    def cheapest_trial_seconds(self) -> float:
        """The cheapest trial that fits, sampled or seeded: below this, no trial can start."""
        return min((cost for cost in [*self._trial_costs, *self._seeded] if cost > 0), default=0.0)

    @property
    def one_trial_hours(self) -> float:
        """The first trial's cost (the baseline's, else the average one): what a budget must at least hold."""
        fitting = [cost for cost in self._seeded if cost > 0]
        return (fitting[0] if fitting else _mean_fitting(self._trial_costs)) / 3600

    def search_row(self, trials: int) -> Row:
        seeded = self._seeded[:trials]
        sampled = trials - len(seeded)
        expected, highest = _mean_fitting(self._trial_costs), max(self._trial_costs)
        hours = (sum(seeded) + sampled * expected) * self.saving / 3600
        hours_max = (sum(seeded) + sampled * highest) * self.saving / 3600
        pruner = self.spec.pruner.type
        saving = (f"x {self.saving:g} for {pruner} (benchmarks/pruning.py: docs/performance.md)"
                  if pruner in PRUNER_SAVING else f"x 1: no measured saving for the {pruner} pruner")
        note = (f"{len(seeded)} seeded + {sampled} sampled at {expected / 3600:.3g} h expected each, {saving}; "
                f"{self.share_not_fitting:.0%} of the space predicted not to fit (ends at once, costs nothing)")
        return Row("search", trials, 1, self.base.epochs, hours, hours_max, note)

    # --- finalize

    @functools.cached_property
    def _rows(self) -> dict[str, tuple[_RunCost, int, float | None]]:
        """Per finalize row: the cost of one of its runs, how many configurations it holds ("top": as
        many as top_k says), and its epochs where they are not finalize's (the ablation at the search
        budget)."""
        rows: dict[str, tuple[_RunCost, int, float | None]] = {}
        options = self.spec.finalize
        rows["top"] = (self._space_cost({}), options.top_k, None)
        if self.spec.baseline:
            rows["baseline"] = (self._point_cost({**self.base.to_dict(), **self.spec.baseline}), 1, None)
        r101 = self._space_cost({"backbone": FINALIZE_BACKBONE})
        rows["ResNet-101, ImageNet-pretrained"] = (r101, 1, None)
        scratch = options.scratch.epochs_multiplier
        rows[f"ResNet-101, from scratch (x{scratch:g} epochs)"] = (dataclasses.replace(
            r101, per_epoch=r101.per_epoch * scratch, per_epoch_max=r101.per_epoch_max * scratch), 1, None)
        for model in options.variants:  # the best configuration as another DeepLab model
            rows[f"variant: {MODELS[model]}"] = (self._space_cost({"model": model}), 1, None)
        return rows | self._ablation_rows()

    def _ablation_rows(self) -> dict[str, tuple[_RunCost, int, float | None]]:
        """The ablation's experiments, a row per factor, and at the search budget its centre trained again."""
        ablation = self.spec.finalize.ablation
        if not ablation.factors:
            return {}
        search = ablation.budget == "search"
        images, epochs = (self.search_images[0][0], self.base.epochs) if search else (None, None)
        centre = ({**self.base.to_dict(), **self.spec.baseline} if ablation.around == "baseline" else None)

        def cost(override: Mapping[str, Any]) -> _RunCost:
            if centre is not None:
                return self._point_cost({**centre, **override}, images)
            return self._space_cost(override, images)

        rows = {f"ablation centre ({ablation.around}, search budget)": (cost({}), 1, epochs)} if search else {}
        for field, values in ablation.factors.items():
            absolute = [value for value in values if not isinstance(value, Multiple)]
            costs = [cost({field: value}) for value in absolute] or [cost({})]
            rows[f"ablation of {field} ({', '.join(map(str, values))})"] = (
                _average(costs), self._alternatives(field, values), epochs)
        return rows

    def _alternatives(self, field: str, values: Sequence[Any]) -> int:
        """How many of a factor's values will differ from the centre's: one fewer than given when the
        centre's value is surely among them (every value the study can give the field is listed)."""
        possible = {v for param in self.spec.space if param.field == field for v in param.choices}
        if not any(param.field == field for param in self.spec.space):
            possible = {getattr(self.base, field)}
        ranged = any(param.field == field and param.type != "categorical" for param in self.spec.space)
        listed = {value for value in values if not isinstance(value, Multiple)}
        return len(values) - (1 if possible and not ranged and possible <= listed else 0)

    def _space_cost(self, override: Mapping[str, Any], train_images: int | None = None) -> _RunCost:
        """One run of a configuration of the space (those that fit) with `override`: expected and highest."""
        costs = [self._point_cost({**point, **override}, train_images) for point in self.points]
        fitting = [cost for cost in costs if cost.fits] or costs
        return _RunCost(sum(c.per_epoch for c in fitting) / len(fitting), sum(c.fixed for c in fitting) / len(fitting),
                        max(c.per_epoch for c in fitting), max(c.fixed for c in fitting),
                        max(c.checkpoint_bytes for c in fitting), any(c.fits for c in costs))

    def _point_cost(self, config: Mapping[str, Any], train_images: int | None = None) -> _RunCost:
        """One final run: its training (on finalize's split unless `train_images` says otherwise), its
        evaluations, and its scoring under the [finalize] eval protocols."""
        prediction = self.model.predict(config)
        (train, _), (val, _) = self.final_images
        train = train if train_images is None else train_images
        per_epoch = train * prediction.train_seconds_per_image
        fixed = val * (config["eval_points"] * prediction.eval_seconds_per_image + self._protocol_seconds(config))
        if not prediction.fits:
            per_epoch = fixed = 0.0
        return _RunCost(per_epoch, fixed, per_epoch, fixed, checkpoint_bytes(config, finished=True), prediction.fits)

    def _protocol_seconds(self, config: Mapping[str, Any]) -> float:
        """Seconds per val image of the [finalize] eval protocols other than the run's own: a forward pass per
        scale (its cost growing as the scale's pixels) and per flip, at the protocol's output stride, and the
        CRF's share of the wall clock where the protocol has one."""
        own = PRESETS[OWN_PROTOCOL].for_run(config["output_stride"])
        seconds = 0.0
        for name in self.spec.finalize.eval:
            protocol = PRESETS[name].for_run(config["output_stride"])
            if protocol != own:
                passes = sum(scale * scale for scale in protocol.scales) * (2 if protocol.flip else 1)
                seconds += passes * self.model.eval_seconds_per_image(config["model"], config["backbone"],
                                                                      protocol.output_stride)
                seconds += self.crf_seconds_per_image if protocol.crf else 0.0
        return seconds

    @functools.cached_property
    def crf_seconds_per_image(self) -> float:
        """The dense CRF's wall-clock seconds per val image: segtrain.crf's CPU-seconds for a VOC image, scaled
        by the images' pixels (4:3 photos at the val side), over the pool's processes on this machine."""
        pixels = val_image_side(self.base) ** 2 * 3 / 4
        return crf.SECONDS_PER_VOC_IMAGE * pixels / crf.VOC_IMAGE_PIXELS / crf.default_processes()

    def final_run_hours(self, config: TrainConfig) -> float | None:
        """One run of a known final configuration (hpo.finalize's plan), or None where it is predicted not to fit."""
        cost = self._point_cost(config.to_dict())
        return cost.seconds(config.epochs) / 3600 if cost.fits else None

    def finalize_rows(self, top_k: int | None = None, seeds: Sequence[int] | None = None,
                      epochs: float | None = None) -> list[Row]:
        """The finalize rows (the spec's [finalize] unless given), hours predicted for each."""
        options = self.spec.finalize
        top_k = options.top_k if top_k is None else top_k
        seeds = tuple(options.seeds if seeds is None else seeds)
        epochs = options.epochs if epochs is None else epochs
        rows = []
        for name, (cost, count, own_epochs) in self._rows.items():
            if name == "top":
                name, count = f"top-{top_k} configurations", top_k
            runs = count * len(seeds)
            note = "" if cost.fits else "predicted not to fit the device: not counted"
            row_epochs = epochs if own_epochs is None else own_epochs
            rows.append(Row(name, count, len(seeds), row_epochs, runs * cost.seconds(row_epochs) / 3600,
                            runs * cost.seconds(row_epochs, highest=True) / 3600, note))
        return rows

    # --- the whole study

    def plan(self, trials: int | None = None, top_k: int | None = None, seeds: Sequence[int] | None = None,
             epochs: float | None = None) -> Plan:
        """The bill of the study with these sizes (the spec's own where not given)."""
        options = self.spec.finalize
        trials = self.spec.study.trials if trials is None else trials
        top_k = options.top_k if top_k is None else top_k
        seeds = tuple(options.seeds if seeds is None else seeds)
        epochs = options.epochs if epochs is None else epochs
        rows = (self.search_row(trials), *self.finalize_rows(top_k, seeds, epochs))
        return Plan(trials, top_k, seeds, epochs, rows, self._disk(rows), self._notes())

    def _disk(self, rows: Sequence[Row]) -> Disk:
        checkpoint = max(checkpoint_bytes(point) for point in self.points)
        kept = max(checkpoint_bytes(point, finished=True) for point in self.points)
        final = 0
        for row, (cost, _, _) in zip(rows[1:], self._rows.values()):
            final += row.runs * row.seeds * cost.checkpoint_bytes
        return Disk(self.spec.study.output_dir, checkpoint, self.spec.study.keep_checkpoints * kept,
                    self.workers * 2 * checkpoint, final, _free_bytes(self.spec.study.output_dir))

    def _notes(self) -> tuple[str, ...]:
        (train, train_from), (val, val_from) = self.search_images
        (final_train, final_from), (final_val, _) = self.final_images
        probe = self.model.probe
        notes = [f"device: {probe.device} (probe of {probe.created}, torch {probe.torch}); the hours are predictions "
                 f"from the probe's corners, not measurements of whole runs",
                 f"search trials: {train} train images ({train_from}), {val} to select on; final runs: "
                 f"{final_train} train images ({final_from}), {final_val} evaluated"]
        with_crf = [name for name in self.spec.finalize.eval if PRESETS[name].crf]
        if with_crf:
            notes.append(f"dense CRF ({', '.join(with_crf)}): {crf.SECONDS_PER_VOC_IMAGE:g} CPU-seconds a 500x375 "
                         f"image (measured on a 2-core development CPU, segtrain/crf.py) over "
                         f"{crf.default_processes()} processes here: {self.crf_seconds_per_image:.3g} s of the wall "
                         f"clock an image, the device idle meanwhile")
        return (*notes,
                f"memory limit {probe.memory_limit_bytes / 2 ** 30:.1f} GiB ({probe.memory_limit_source})")


def _mean_fitting(costs: Sequence[float]) -> float:
    fitting = [cost for cost in costs if cost > 0]
    return sum(fitting) / len(fitting) if fitting else 0.0


def _average(costs: Sequence[_RunCost]) -> _RunCost:
    count = max(1, len(costs))
    return _RunCost(sum(c.per_epoch for c in costs) / count, sum(c.fixed for c in costs) / count,
                    max((c.per_epoch_max for c in costs), default=0.0), max((c.fixed_max for c in costs), default=0.0),
                    max((c.checkpoint_bytes for c in costs), default=0), all(c.fits for c in costs))


def _free_bytes(directory: Path) -> int | None:
    """Free bytes on the file system that holds (or will hold) `directory`."""
    for candidate in (directory, *directory.absolute().parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return None


def finalize_rows(spec: StudySpec, model: CostModel, top_k: int | None = None, seeds: Sequence[int] | None = None,
                  epochs: float | None = None) -> list[Row]:
    """What hpo.finalize will cost, row by row (for its plan and --dry-run)."""
    return Estimator(spec, model).finalize_rows(top_k, seeds, epochs)



def describe(plan: Plan, unit: str) -> str:
    """The bill as a table whose rows add up to its total, then its notes and the disk it needs."""
    rows = [[row.name, row.runs, row.seeds, f"{row.epochs:g}", f"{row.hours:.3g}", f"{row.hours_max:.3g}"]
            for row in plan.rows]
    rows.append(["total", "", "", "", f"{plan.total_hours:.3g}", f"{sum(r.hours_max for r in plan.rows):.3g}"])
    disk = plan.disk
    free = f", {_gb(disk.free_bytes)} free there now" if disk.free_bytes is not None else ""
    return "\n".join([
        markdown_table(["", "trials / configurations", "seeds", "epochs", unit, "at most"], rows), "",
        *(f"- {row.name}: {row.note}" for row in plan.rows if row.note),
        *(f"- {note}" for note in plan.notes),
        f"- disk, in {disk.directory}: {_gb(disk.total_bytes)} at the peak = {_gb(disk.kept_bytes)} kept checkpoints "
        f"+ {_gb(disk.running_bytes)} for running trials + {_gb(disk.final_bytes)} for the final runs "
        f"({_gb(disk.checkpoint_bytes)} a search checkpoint){free}"])


def _gb(count: int) -> str:
    return f"{count / 1e9:.2f} GB"
