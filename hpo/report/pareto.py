"""Accuracy against compute: which configurations no other one beats on both (the Pareto front).

A lab pays in device-hours, so a configuration is worth its cost when no other reaches
at least its mIoU for at most its hours. The points (name -> hours, mIoU) go into an
in-memory two-objective Optuna study, whose `best_trials` are that front and whose
`plot_pareto_front` draws it: the search's complete trials (device-hours recorded by
the search, scored on the search's val split) and the final configurations (mean
hours of a run and mean mIoU over the seeds, on finalize's split).

Reads hpo.report.results, hpo.trials and the search study; hpo.report.document and figures use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from hpo.report.results import OWN_PROTOCOL, Summary
from hpo.trials import DEVICE_SECONDS, feasible

NAME = "name"  # user attr of a point: the trial or configuration it stands for


def cost_study(points: Mapping[str, tuple[float, float]]) -> optuna.Study:
    """name -> (hours, mIoU), as trials of a study that minimises the first and maximises the second."""
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.add_trials([optuna.trial.create_trial(values=[hours, miou], user_attrs={NAME: name})
                      for name, (hours, miou) in points.items()])
    return study


def front(study: optuna.Study) -> list[str]:
    """The points on the Pareto front, cheapest first."""
    return [t.user_attrs[NAME] for t in sorted(study.best_trials, key=lambda t: t.values[0])]


def final_points(summaries: Sequence[Summary], protocol: str = OWN_PROTOCOL) -> dict[str, tuple[float, float]]:
    """Each final configuration with a result: mean wall hours of a run on its one device, mean mIoU."""
    return {s.name: (s.stats["seconds"].mean / 3600, s.miou[protocol].mean)
            for s in summaries if s.miou[protocol].mean is not None and s.stats["seconds"].mean is not None}


def search_points(study: optuna.Study) -> dict[str, tuple[float, float]]:
    """The search's complete, feasible trials: device-hours spent and their score."""
    return {f"trial {t.number}": (t.user_attrs[DEVICE_SECONDS] / 3600, t.value)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if feasible(t) and DEVICE_SECONDS in t.user_attrs}


def figure(points: Mapping[str, tuple[float, float]], score: str) -> go.Figure:
    """Optuna's Pareto-front plot of these points (the front in its own colour; hover: the point's name)."""
    return optuna.visualization.plot_pareto_front(cost_study(points), target_names=["device-hours", score])
