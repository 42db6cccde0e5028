"""The ``tune:`` section of ``moco tune``: plain data here; :mod:`service.sweep.space` turns it into
Ray Tune objects."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, GetJsonSchemaHandler, model_validator
from pydantic_core import CoreSchema

from .base import Compact, Strict

RANGE_KINDS = ("uniform", "loguniform", "randint", "lograndint")


class SearchDim(Compact):
    """One swept field: a list of values or one range. ``[0.1, 0.2]`` is short for ``{values: [0.1, 0.2]}``.

    With ``tune.search: grid`` every combination of the lists is a trial; with ``random`` each trial
    draws one value of each list or range. Integer ranges include both ends.
    """

    values: list[int | float | str] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    lograndint: tuple[int, int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _list_is_values(cls, v: Any) -> Any:
        return {"values": v} if isinstance(v, list) else v

    @model_validator(mode="after")
    def _one_kind(self) -> SearchDim:
        given = [k for k in ("values", *RANGE_KINDS) if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give a list of values or exactly one of {', '.join(RANGE_KINDS)}; got {given or 'none'}"
            )
        if given[0] != "values":
            lo, hi = getattr(self, given[0])
            if not lo < hi:
                raise ValueError(f"{given[0]}: [{lo}, {hi}] needs low < high")
            if given[0].startswith("log") and lo <= 0:
                raise ValueError(f"{given[0]}: [{lo}, {hi}] needs low > 0")
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core: CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        """The list shorthand in the JSON schema too: editors accept ``temperature: [0.1, 0.2]``."""
        mapping = handler(core)
        values = handler.resolve_ref_schema(mapping)["properties"]["values"]["anyOf"][0]
        return {"anyOf": [values, mapping]}

    @property
    def kind(self) -> str:
        return next(k for k in ("values", *RANGE_KINDS) if getattr(self, k) is not None)

    def probes(self) -> list[int | float]:
        """The values to check against the field's constraints: every listed value, or both ends."""
        return list(self.values) if self.values is not None else list(getattr(self, self.kind))


class MocoSpace(Compact):
    mechanism: SearchDim | None = None  # moco, end_to_end, memory_bank, moco_v3
    temperature: SearchDim | None = None  # T
    queue_size: SearchDim | None = None  # K of moco and memory_bank
    # K of each trial's mechanism: moco.queue_size for moco and memory_bank, optim.batch_size = K / 2
    # for end_to_end (whose 2 x batch - 2 negatives are the other views of the batch), optim.batch_size
    # = K for moco_v3 (batch - 1 negatives: the other images' keys)
    negatives: SearchDim | None = None
    momentum: SearchDim | None = None  # m


class OptimSpace(Compact):
    lr: SearchDim | None = None
    batch_size: SearchDim | None = None


NEGATIVES = "moco.negatives"  # a key of the space only: each trial sets the field its mechanism reads


def resolve_negatives(values: dict[str, Any], mechanism: str) -> dict[str, Any]:
    """``values`` with ``moco.negatives`` replaced by the field that holds K for ``mechanism`` (the
    trial's own ``moco.mechanism`` if it is swept)."""
    if NEGATIVES not in values:
        return values
    out = dict(values)
    k = int(out.pop(NEGATIVES))
    chosen = out.get("moco.mechanism", mechanism)
    if chosen == "end_to_end":
        out["optim.batch_size"] = k // 2
    elif chosen == "moco_v3":
        out["optim.batch_size"] = k
    else:
        out["moco.queue_size"] = k
    return out


class TuneSpace(Compact):
    """Search spaces, nested like the config itself: ``moco: {temperature: [0.1, 0.2]}``."""

    moco: MocoSpace | None = None
    optim: OptimSpace | None = None

    def dims(self) -> dict[str, SearchDim]:
        """``{"moco.temperature": SearchDim, ...}`` in a fixed order."""
        out: dict[str, SearchDim] = {}
        for section in ("moco", "optim"):
            sub = getattr(self, section)
            for name in type(sub).model_fields if sub is not None else ():
                dim = getattr(sub, name)
                if dim is not None:
                    out[f"{section}.{name}"] = dim
        return out


class AshaConfig(Strict):
    """Early stopping (ASHA) on the per-epoch metric."""

    grace_period: int = Field(1, ge=1)  # epochs every trial runs before it may be stopped
    reduction_factor: float = Field(2.0, gt=1.0)  # at each rung, the best 1/reduction_factor go on


class TuneConfig(Strict):
    """The ``tune:`` section: what ``moco tune`` sweeps, how it searches, ranks and stops trials."""

    space: TuneSpace
    search: Literal["grid", "random"] = "grid"  # grid: every combination of the lists; random: draws
    num_samples: int = Field(1, ge=1)  # random: trials; grid: repeats of the whole grid
    seed: int | None = None  # of the random draws; default run.seed
    metric: Literal["eval/knn_top1", "eval/knn_auroc", "train/loss"] | None = None  # default by label kind
    mode: Literal["max", "min"] | None = None  # default: min for train/loss, else max
    asha: AshaConfig | None = Field(default_factory=AshaConfig)  # null: no early stopping
    max_concurrent_trials: int | None = Field(None, ge=1)  # default: as many as the cluster's CPUs/GPUs fit
    max_failures: int = Field(1, ge=0)  # restarts of a trial whose driver failed (workers: run.max_failures)
    driver_cpus: float = Field(0.0, ge=0.0)  # CPUs held by each trial's driver (its workers: scaling.*)

    @model_validator(mode="after")
    def _space_fits_search(self) -> TuneConfig:
        dims = self.space.dims()
        if not dims:
            raise ValueError(
                "space is empty: sweep at least one of moco.mechanism, moco.temperature, "
                "moco.queue_size, moco.negatives, moco.momentum, optim.lr, optim.batch_size"
            )
        for key, dim in dims.items():
            words = [v for v in dim.values or () if isinstance(v, str)]
            if words and key != "moco.mechanism":
                raise ValueError(f"space.{key}: {words[0]!r} is not a number")
        if self.search == "grid":
            ranges = [k for k, d in dims.items() if d.kind != "values"]
            if ranges:
                raise ValueError(
                    f"search: grid needs lists of values; {', '.join(ranges)} is a range "
                    "(use search: random, or list the values)"
                )
        return self

    def trial_count(self) -> int:
        """The trials the sweep starts: random: ``num_samples``; grid: every combination of the lists,
        ``num_samples`` times (each sample repeats the whole grid)."""
        if self.search == "random":
            return self.num_samples
        return math.prod(len(d.values or ()) for d in self.space.dims().values()) * self.num_samples

    def resolved_mode(self, metric: str) -> Literal["max", "min"]:
        return self.mode or ("min" if metric == "train/loss" else "max")
