"""The whole experiment: one YAML file, validated once, and its cross-field rules."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .base import Strict
from .dotted import flatten, set_values
from .sections import (
    AugmentConfig,
    DataConfig,
    EvalConfig,
    MocoConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScalingConfig,
    TrackingConfig,
)
from .sweep import NEGATIVES, TuneConfig, resolve_negatives

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# what each mechanism other than moco lacks of MoCo's key encoder and queue (in its error messages)
WITHOUT_MOCO_KEYS = {
    "end_to_end": "no key encoder",
    "memory_bank": "no key encoder",
    "moco_v3": "no queue: its keys are the batch's own (the reference syncs BN across workers instead)",
}
NAME_MAX = 100  # a run folder is <name>-<timestamp>, a sweep's <name>-tune-<timestamp>; a name, moco-<name>


class ExperimentConfig(Strict):
    """The whole experiment: one YAML file, validated once."""

    name: str = Field("experiment", max_length=NAME_MAX, pattern=NAME_PATTERN)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    moco: MocoConfig = Field(default_factory=MocoConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tune: TuneConfig | None = None  # the sweep of `moco tune`; ignored by `moco pretrain`

    @field_validator("name", mode="before")
    @classmethod
    def _name_fits(cls, v: Any) -> Any:
        """Said in words before the pattern and length checks: the name becomes folder names and the
        registered model's name ``moco-<name>``."""
        if isinstance(v, str):
            why = "it names the run folders and the registered model moco-<name>"
            if len(v) > NAME_MAX:
                raise ValueError(f"{len(v)} characters, at most {NAME_MAX} ({why})")
            if not re.match(NAME_PATTERN, v):
                raise ValueError(
                    f"{v!r}: letters, digits, '_', '.' and '-' only, starting with a letter or digit ({why})"
                )
        return v

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, v: str) -> str:
        return v.strip()

    @field_validator("tune")
    @classmethod
    def _tune_values_are_valid(cls, tune: TuneConfig | None, info: ValidationInfo) -> TuneConfig | None:
        """Every listed value and both ends of every range must pass the field's own checks (and the
        cross-field ones) when applied to this config."""
        sections = [k for k in cls.model_fields if k != "tune"]
        if tune is None or any(k not in info.data for k in sections):
            return tune  # another field is invalid: that error is reported instead
        base = {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in info.data.items()}
        dims = tune.space.dims()
        swept_mechanisms = dims["moco.mechanism"].values if "moco.mechanism" in dims else None
        for key, dim in dims.items():
            if key == NEGATIVES:
                annotation: Any = int
            else:
                section, field = key.split(".")
                section_model = cls.model_fields[section].annotation
                annotation = section_model.model_fields[field].annotation  # type: ignore[union-attr]
            if annotation is int and dim.kind in ("uniform", "loguniform"):
                raise ValueError(
                    f"tune.space.{key}: {key} takes whole numbers; use randint or lograndint, or a list"
                )
            # K means another field for each mechanism: check it against every swept mechanism
            mechanisms = (swept_mechanisms or [base["moco"]["mechanism"]]) if key == NEGATIVES else [None]
            for value in dim.probes():
                for mechanism in mechanisms:
                    values = {key: value} if mechanism is None else {key: value, "moco.mechanism": mechanism}
                    try:
                        ExperimentConfig.model_validate(set_values(base, resolve_negatives(values, "moco")))
                    except ValidationError as e:
                        reasons = "; ".join(
                            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" if err["loc"] else err["msg"]
                            for err in e.errors()
                        )
                        which = f" for moco.mechanism={mechanism}" if mechanism else ""
                        raise ValueError(
                            f"tune.space.{key}: {value!r} is not a valid {key}{which} ({reasons})"
                        ) from None
        ev, optim = info.data["eval"], info.data["optim"]
        metric = tune.metric
        if metric != "train/loss" and ev.knn_every_epochs != 1:
            raise ValueError(
                f"tune.metric {metric or 'eval/knn_*'} is compared at every epoch: "
                f"it needs eval.knn_every_epochs: 1 "
                f"(it is {ev.knn_every_epochs}), or use tune.metric: train/loss"
            )
        if tune.asha is not None and tune.asha.grace_period >= optim.epochs:
            raise ValueError(
                f"tune.asha.grace_period={tune.asha.grace_period} must be below optim.epochs={optim.epochs} "
                "(or set tune.asha: null for no early stopping)"
            )
        return tune

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        w = self.scaling.workers
        if self.optim.batch_size % w:
            raise ValueError(
                f"optim.batch_size={self.optim.batch_size} is the global batch and must divide evenly "
                f"across scaling.workers={w}; use a multiple of {w}"
            )
        per_worker = self.optim.batch_size // w
        if per_worker < 2:
            why = (
                " (moco.mechanism=end_to_end: the other images of the batch are the negatives)"
                if self.moco.mechanism == "end_to_end"
                else ""
            )
            raise ValueError(
                f"optim.batch_size / scaling.workers = {per_worker}; each worker needs >= 2 images{why}"
            )
        mechanism = self.moco.mechanism
        if mechanism != "moco" and self.moco.shuffle_bn in ("distributed", "split"):
            raise ValueError(
                f"moco.shuffle_bn={self.moco.shuffle_bn} shuffles the batch of MoCo's key encoder and "
                f"moco.mechanism={mechanism} has {WITHOUT_MOCO_KEYS[mechanism]}; "
                "use shuffle_bn: auto (or off)"
            )
        if mechanism != "moco" and self.moco.symmetric:
            raise ValueError(
                f"moco.symmetric swaps query and key views, a choice of moco.mechanism=moco only "
                f"({mechanism} has {WITHOUT_MOCO_KEYS[mechanism]}); remove moco.symmetric"
            )
        if self.model.freeze_patch_embed and not self.model.arch.startswith("timm:"):
            raise ValueError(
                f"model.freeze_patch_embed freezes a ViT's patch projection and model.arch={self.model.arch} "
                "has none; use a timm ViT (e.g. timm:vit_small_patch16_224) or remove it"
            )
        if self.moco.shuffle_bn == "distributed" and w < 2:
            raise ValueError(
                "moco.shuffle_bn=distributed needs scaling.workers >= 2; "
                "use 'split' (or 'auto') for one worker"
            )
        if self.resolved_shuffle_bn(w) == "split":
            g = self.moco.split_bn_groups
            if per_worker % g:
                raise ValueError(
                    f"split BN puts each worker's {per_worker} images into moco.split_bn_groups={g} groups "
                    f"of equal size: optim.batch_size / scaling.workers must be a multiple of {g}"
                )
            if per_worker < 2 * self.moco.split_bn_groups:
                raise ValueError(
                    f"split BN puts {per_worker} images into "
                    f"moco.split_bn_groups={self.moco.split_bn_groups} "
                    f"groups; each group needs >= 2 images: lower split_bn_groups or raise optim.batch_size"
                )
        if self.optim.warmup_epochs >= self.optim.epochs:
            raise ValueError(
                f"optim.warmup_epochs={self.optim.warmup_epochs} must be below "
                f"optim.epochs={self.optim.epochs}"
            )
        return self

    @property
    def registered_model_name(self) -> str:
        return self.tracking.model_name or f"moco-{self.name}"

    def resolved_shuffle_bn(self, world_size: int) -> Literal["distributed", "split", "off"]:
        """``auto`` means distributed when there is more than one worker, else split BN; off for the
        mechanisms without a key encoder."""
        mode = self.moco.shuffle_bn
        if self.moco.mechanism != "moco":
            return "off"
        if mode == "auto":
            return "distributed" if world_size > 1 else "split"
        return mode

    @property
    def negatives(self) -> int:
        """K, the negatives each query is contrasted with: the queue or the bank's draw, the other
        views of the global batch (end-to-end), or the other images' keys of it (MoCo v3)."""
        if self.moco.mechanism == "end_to_end":
            return 2 * self.optim.batch_size - 2
        if self.moco.mechanism == "moco_v3":
            return self.optim.batch_size - 1
        return self.moco.queue_size

    def trial(self, values: dict[str, Any]) -> ExperimentConfig:
        """The config of one sweep trial: ``values`` (dotted keys; ``moco.negatives`` sets the field
        of the trial's mechanism) applied, no ``tune`` section."""
        raw = set_values(self.model_dump(mode="json"), resolve_negatives(values, self.moco.mechanism))
        raw["tune"] = None
        return ExperimentConfig.model_validate(raw)

    def flat(self) -> dict[str, Any]:
        """The config as ``{"moco.temperature": 0.2, ...}`` (for tracking params)."""
        return flatten(self.model_dump(mode="json"))
