"""The study file: what a study trains, searches, selects and retrains, as validated plain data.

`load_spec(path)` reads studies/*.toml (hpo.spec.load) into a `StudySpec` (hpo.spec.sections).
At the bottom of hpo with hpo.space: imports only hpo.space and segtrain; everything else
of hpo may import it.
"""

from hpo.spec.load import load_spec
from hpo.spec.sections import (Ablation, Component, FinalizeOptions, Multiple, Recipe, ScratchRecipe, StudyOptions,
                               StudySpec, default_storage)

__all__ = ["Ablation", "Component", "FinalizeOptions", "Multiple", "Recipe", "ScratchRecipe", "StudyOptions",
           "StudySpec", "default_storage", "load_spec"]
