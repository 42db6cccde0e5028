"""Experiment configuration: pydantic models, YAML loading and dotted ``--set`` overrides.

Defaults live here and nowhere else. Every model forbids unknown keys, so a typo in a YAML file or
in ``--set`` is an error that names the key rather than a setting that silently does nothing.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says which key and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the images are and what the model sees of them."""

    root: str = "data/digits"
    splits_dir: str | None = None  # folder holding train.csv/val.csv/test.csv; default: root
    image_size: int = Field(32, ge=8, le=1024)
    channels: Literal[1, 3] = 3
    label_columns: list[str] | None = None  # default: every column but Path
    num_workers: int = Field(2, ge=0)  # DataLoader worker processes
    cache_decoded: bool = True  # decode every image once into memory (small datasets)


class ModelConfig(_Strict):
    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    small_image_stem: bool = True  # 3x3 stride-1 first conv, no max-pool (images <= 64 px)
    head: Literal["linear", "mlp"] = "mlp"  # MoCo v1: linear; v2: MLP
    dim: int = Field(128, ge=1)  # embedding size of q and k
    hidden_dim: int | None = Field(None, ge=1)  # MLP hidden size; default: the backbone's


class MocoConfig(_Strict):
    queue_size: int = Field(4096, gt=0)  # K: number of negatives
    momentum: float = Field(0.99, ge=0.0, le=1.0)  # m of the key encoder
    momentum_schedule: Literal["constant", "cosine"] = "constant"  # cosine: m -> 1 over training
    temperature: float = Field(0.1, gt=0.0)  # T of InfoNCE
    shuffle_bn: Literal["auto", "distributed", "split", "off"] = "auto"
    split_bn_groups: int = Field(8, ge=2)  # groups of split BN (single-process shuffle BN)

    @field_validator("shuffle_bn", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false


class AugmentConfig(_Strict):
    recipe: Literal["mocov1", "mocov2", "cxr"] = "mocov2"


class OptimConfig(_Strict):
    lr: float = Field(0.06, gt=0.0)
    batch_size: int = Field(256, ge=2)  # global: split across workers
    epochs: int = Field(50, ge=1)
    weight_decay: float = Field(5.0e-4, ge=0.0)
    sgd_momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    lr_steps: list[int] = Field(default_factory=lambda: [120, 160])  # epochs where step LR x0.1
    warmup_epochs: int = Field(0, ge=0)


class ScalingConfig(_Strict):
    workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=1)


class RunConfig(_Strict):
    storage_path: str | None = None  # Ray Train storage (local dir, NFS path or s3:// URI)
    checkpoint_every_epochs: int = Field(1, ge=1)
    max_failures: int = Field(2, ge=0)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    channels_last: bool = True
    compile: bool = False  # torch.compile the encoders
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cap an epoch (quick trials)


with warnings.catch_warnings():
    # ``register`` is the documented key; it shadows nothing pydantic uses on instances.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class TrackingConfig(_Strict):
        uri: str | None = None  # MLFLOW_TRACKING_URI wins; default sqlite:///mlflow.db in the cwd
        experiment: str = "moco"
        register: bool = True
        model_name: str | None = None  # default: moco-<name>


class EvalConfig(_Strict):
    knn_every_epochs: int = Field(1, ge=0)  # 0: only at the end
    knn_k: int = Field(200, ge=1)
    knn_t: float = Field(0.1, gt=0.0)
    # the monitor's bank: this stratified, seeded (run.seed) fraction of the labelled train images
    knn_label_fraction: float = Field(1.0, gt=0.0, le=1.0)


# ---------------------------------------------------------------------------------------------
# the sweep section of `moco tune`: plain data here; service/tune.py turns it into Ray Tune objects

RANGE_KINDS = ("uniform", "loguniform", "randint", "lograndint")
TUNE_METRICS = ("eval/knn_top1", "eval/knn_auroc", "train/loss")


class _Compact(_Strict):
    """Dumped without its unset (None) entries: YAML and MLflow params show what was given."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class SearchDim(_Compact):
    """One swept field: a list of values or one range. ``[0.1, 0.2]`` is short for ``{values: [0.1, 0.2]}``.

    With ``tune.search: grid`` every combination of the lists is a trial; with ``random`` each trial
    draws one value of each list or range. Integer ranges include both ends.
    """

    values: list[int | float] | None = Field(None, min_length=1)
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

    @property
    def kind(self) -> str:
        return next(k for k in ("values", *RANGE_KINDS) if getattr(self, k) is not None)

    def probes(self) -> list[int | float]:
        """The values to check against the field's constraints: every listed value, or both ends."""
        return list(self.values) if self.values is not None else list(getattr(self, self.kind))


class MocoSpace(_Compact):
    temperature: SearchDim | None = None  # T
    queue_size: SearchDim | None = None  # K
    momentum: SearchDim | None = None  # m


class OptimSpace(_Compact):
    lr: SearchDim | None = None


class TuneSpace(_Compact):
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


class AshaConfig(_Strict):
    """Early stopping (ASHA) on the per-epoch metric."""

    grace_period: int = Field(1, ge=1)  # epochs every trial runs before it may be stopped
    reduction_factor: float = Field(2.0, gt=1.0)  # at each rung, the best 1/reduction_factor go on


class TuneConfig(_Strict):
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
            raise ValueError("space is empty: sweep at least one of moco.temperature, moco.queue_size, "
                             "moco.momentum, optim.lr")
        if self.search == "grid":
            ranges = [k for k, d in dims.items() if d.kind != "values"]
            if ranges:
                raise ValueError(f"search: grid needs lists of values; {', '.join(ranges)} is a range "
                                 "(use search: random, or list the values)")
        return self

    def resolved_mode(self, metric: str) -> Literal["max", "min"]:
        return self.mode or ("min" if metric == "train/loss" else "max")


class ExperimentConfig(_Strict):
    """The whole experiment: one YAML file, validated once."""

    name: str = Field("experiment", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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
        for key, dim in tune.space.dims().items():
            section, field = key.split(".")
            section_model = cls.model_fields[section].annotation
            annotation = section_model.model_fields[field].annotation  # type: ignore[union-attr]
            if annotation is int and dim.kind in ("uniform", "loguniform"):
                raise ValueError(
                    f"tune.space.{key}: {key} takes whole numbers; use randint or lograndint, or a list"
                )
            for value in dim.probes():
                try:
                    ExperimentConfig.model_validate(set_values(base, {key: value}))
                except ValidationError as e:
                    reasons = "; ".join(err["msg"] for err in e.errors())
                    raise ValueError(f"tune.space.{key}: {value!r} is not a valid {key} ({reasons})") from None
        ev, optim = info.data["eval"], info.data["optim"]
        metric = tune.metric
        if metric != "train/loss" and ev.knn_every_epochs != 1:
            raise ValueError(
                f"tune.metric {metric or 'eval/knn_*'} is compared at every epoch: it needs eval.knn_every_epochs: 1 "
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
            raise ValueError(f"optim.batch_size / scaling.workers = {per_worker}; each worker needs >= 2 images")
        if self.moco.shuffle_bn == "distributed" and w < 2:
            raise ValueError(
                "moco.shuffle_bn=distributed needs scaling.workers >= 2; use 'split' (or 'auto') for one worker"
            )
        if self.moco.shuffle_bn in ("split", "auto") and w == 1:
            if per_worker < 2 * self.moco.split_bn_groups:
                raise ValueError(
                    f"split BN puts {per_worker} images into moco.split_bn_groups={self.moco.split_bn_groups} "
                    f"groups; each group needs >= 2 images: lower split_bn_groups or raise optim.batch_size"
                )
        if self.optim.warmup_epochs >= self.optim.epochs:
            raise ValueError(
                f"optim.warmup_epochs={self.optim.warmup_epochs} must be below optim.epochs={self.optim.epochs}"
            )
        return self

    @property
    def registered_model_name(self) -> str:
        return self.tracking.model_name or f"moco-{self.name}"

    def resolved_shuffle_bn(self, world_size: int) -> Literal["distributed", "split", "off"]:
        """``auto`` means distributed when there is more than one worker, else split BN."""
        mode = self.moco.shuffle_bn
        if mode == "auto":
            return "distributed" if world_size > 1 else "split"
        return mode

    def trial(self, values: dict[str, Any]) -> ExperimentConfig:
        """The config of one sweep trial: ``values`` (dotted keys) applied, no ``tune`` section."""
        raw = set_values(self.model_dump(mode="json"), values)
        raw["tune"] = None
        return ExperimentConfig.model_validate(raw)

    def flat(self) -> dict[str, Any]:
        """The config as ``{"moco.temperature": 0.2, ...}`` (for tracking params)."""
        return flatten(self.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------
# loading and overrides


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys. Lists and None stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"moco.temperature=0.2"`` -> ``(["moco", "temperature"], 0.2)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. moco.temperature=0.2")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"--set {item!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from e
    return parts, value


def _set_in(node: dict[str, Any], parts: list[str], value: Any, what: str) -> None:
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"{what}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``--set`` items to a raw config dict (a copy); validation happens afterwards."""
    out = _deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        _set_in(out, parts, value, f"--set {item!r}")
    return out


def set_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with ``{"moco.temperature": 0.2, ...}`` set (values as they are, not parsed)."""
    out = _deepcopy(raw)
    for key, value in values.items():
        _set_in(out, key.split("."), value, key)
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the experiment files in experiments/)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (name, data, model, ...)")
    return raw


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML experiment file, apply ``--set`` overrides, validate the result."""
    raw = apply_overrides(read_yaml(path), overrides)
    src = str(path) + (" with --set " + " ".join(overrides) if overrides else "")
    return config_from_dict(raw, src)


def dump_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
