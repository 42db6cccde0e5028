"""Augmentation: the named recipes, each view's parameters drawn per sample (seeded by seed, epoch and
index, so resume is exact), and the views computed for whole batches on the training device."""

from .params import COLUMNS, draw_view, eval_box, eval_fraction
from .recipes import RECIPES, Recipe, recipe
from .single import STATISTICS, build_eval_transform, normalization
from .views import BatchViews, EvalView, to_channels

__all__ = [
    "RECIPES",
    "Recipe",
    "recipe",
    "COLUMNS",
    "draw_view",
    "eval_box",
    "eval_fraction",
    "STATISTICS",
    "normalization",
    "build_eval_transform",
    "BatchViews",
    "EvalView",
    "to_channels",
]
