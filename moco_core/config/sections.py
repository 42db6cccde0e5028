"""The sections of an experiment (``data:``, ``model:``, ``moco:``, ...): their fields and defaults.

Defaults live here and nowhere else.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Literal

from pydantic import Field, field_validator

from ..secrets import has_credentials, without_credentials
from .base import Strict


class DataConfig(Strict):
    """Where the images are and what the model sees of them."""

    root: str = "data/digits"
    splits_dir: str | None = None  # folder holding train.csv/val.csv/test.csv; default: root
    image_size: int = Field(32, ge=8, le=1024)
    channels: Literal[1, 3] = 3
    label_columns: list[str] | None = None  # default: every column but Path
    num_workers: int = Field(2, ge=0)  # DataLoader worker processes (at most scaling.cpus_per_worker)
    # a prepared store (`moco data prepare`): every image decoded once, read a sample at a time
    store: str | None = None
    # auto: prepare data.store on first use (default folder: <run.storage_path>/stores/...)
    prepare: Literal["off", "auto"] = "off"
    store_size: int | None = Field(None, ge=8, le=4096)  # stored side; default image_size (<= 64) or x8/7
    # a store on object storage (s3://...) is read through a cache on each node's disk (LRU, bounded)
    store_cache: str | None = None  # the cache folder; default $XDG_CACHE_HOME/moco/stores
    store_cache_gb: float = Field(20.0, ge=0)  # its bound; 0: no cache, one ranged read per image

    @field_validator("prepare", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    normalization: Literal["imagenet", "cifar10"] = "imagenet"  # per-channel mean/std of the inputs


class ModelConfig(Strict):
    # resnet18 | resnet34 | resnet50 (torchvision), or timm:<name> for any timm model (timm.list_models())
    arch: str = "resnet18"
    # 3x3 stride-1 first conv, no max-pool (images <= 64 px): the ResNets, timm's ResNets and DenseNets;
    # no effect on other timm models
    small_image_stem: bool = True
    head: Literal["linear", "mlp", "mlp_bn"] = "mlp"  # MoCo v1: linear; v2: MLP; v3: 3-layer MLP with BN
    dim: int = Field(128, ge=1)  # embedding size of q and k
    # hidden width of the MLP head (and of moco_v3's predictor); default: the backbone's feature width
    hidden_dim: int | None = Field(None, ge=1)
    # a ViT's patch projection stays at its initial (random) weights: MoCo v3's fix for its instability
    freeze_patch_embed: bool = False
    # what pretraining starts from: random, a state_dict file of the backbone (torch.save of its
    # state_dict, read with weights_only=True), or an encoder reference (models:/NAME@ALIAS, runs:/...,
    # an encoder package folder), which moco pretrain resolves to a file before training
    init: str = "random"
    # set by moco pretrain (leave it unset): the local state_dict file that init resolved to
    init_resolved: str | None = None

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from ..archs import arch_problem

        if problem := arch_problem(v):
            raise ValueError(problem)
        return v

    @field_validator("init")
    @classmethod
    def _init_given(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give random, a state_dict file, or an encoder reference")
        return v.strip()


class MocoConfig(Strict):
    # where the negatives come from (the MoCo paper's Fig. 3): moco: a queue of momentum-encoded keys;
    # end_to_end: the other views of the batch (SimCLR's NT-Xent); memory_bank: stored features of
    # every training image (Wu et al. 2018); moco_v3: the momentum encoder's keys of the batch itself
    # and a prediction head on the query side (Chen, Xie, He 2021)
    mechanism: Literal["moco", "end_to_end", "memory_bank", "moco_v3"] = "moco"
    queue_size: int = Field(4096, gt=0)  # K: number of negatives (moco, memory_bank)
    momentum: float = Field(0.99, ge=0.0, le=1.0)  # m of the key encoder
    momentum_schedule: Literal["constant", "cosine"] = "constant"  # cosine: m -> 1 over training
    temperature: float = Field(0.1, gt=0.0)  # T of InfoNCE
    shuffle_bn: Literal["auto", "distributed", "split", "off"] = "auto"
    split_bn_groups: int = Field(8, ge=2)  # groups of split BN (single-process shuffle BN)
    # both views as queries against the other's key, the two losses averaged (the demo's variant)
    symmetric: bool = False

    @field_validator("shuffle_bn", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false


class AugmentConfig(Strict):
    recipe: Literal["mocov1", "mocov2", "cxr", "cifar"] = "mocov2"


class OptimConfig(Strict):
    optimizer: Literal["sgd", "adamw"] = "sgd"  # adamw: MoCo v3's ViT recipe (betas 0.9, 0.999)
    lr: float = Field(0.06, gt=0.0)
    batch_size: int = Field(256, ge=2)  # global: split across workers
    epochs: int = Field(50, ge=1)
    weight_decay: float = Field(5.0e-4, ge=0.0)
    sgd_momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd only
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    lr_steps: list[int] = Field(default_factory=lambda: [120, 160])  # epochs where step LR x0.1
    warmup_epochs: int = Field(0, ge=0)
    # linear: the learning rate is optim.lr x batch_size / 256 (Goyal et al. 2017); none: optim.lr as is
    lr_scaling: Literal["none", "linear"] = "none"

    @property
    def peak_lr(self) -> float:
        """The learning rate the schedule starts from (after warm-up)."""
        return self.lr * self.batch_size / 256 if self.lr_scaling == "linear" else self.lr


class ScalingConfig(Strict):
    workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=1)
    # on a cluster named by an address (it may add nodes): how long to wait for room for the workers
    wait_for_resources_s: float = Field(300.0, ge=0.0)


class RunConfig(Strict):
    storage_path: str | None = None  # Ray Train storage (local dir, NFS path or s3:// URI)
    checkpoint_every_epochs: int = Field(1, ge=1)
    # also every N optimizer steps within an epoch (an ImageNet epoch is hours): a crash loses less
    checkpoint_every_steps: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0)
    seed: int = 0
    # auto: bf16 autocast on GPUs with native bf16, fp16 + gradient scaler on older GPUs, fp32 on CPU
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False  # torch.compile the encoders
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cap an epoch (quick trials)


def tracking_uri_problem(uri: str) -> str | None:
    """What is wrong with an MLflow tracking URI as written, or None. ``HOST:PORT`` without a scheme
    (``localhost:5000``) is a folder of that name to MLflow, a local store, never the server."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*:\d+(/.*)?", uri.strip()):
        return (
            f"{uri!r} has no scheme, so MLflow would read it as a local folder of that name; "
            f"did you mean http://{uri.strip()}?"
        )
    if has_credentials(uri):  # user[:password]@host: it would be copied into records, params, logs
        hint = (
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            if uri.strip().startswith(("http://", "https://"))
            else "give the database password through PGPASSWORD or ~/.pgpass (or your driver's own file)"
        )
        shown = without_credentials(uri.strip())
        bare = shown.replace("***@", "", 1)
        return f"{shown!r} holds a user or password: give {bare} without them, and {hint}"
    return None


with warnings.catch_warnings():
    # ``register`` is the documented key; it shadows nothing pydantic uses on instances.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class TrackingConfig(Strict):
        uri: str | None = None  # MLFLOW_TRACKING_URI wins; default sqlite:///mlflow.db in the cwd
        experiment: str = "moco"
        register: bool = True
        model_name: str | None = None  # default: moco-<name>
        # which epoch's encoder is published (logged, registered): the monitor's best, or the last
        publish: Literal["best", "last"] = "best"
        # MLflow's system metrics of every worker (CPU, memory; GPU with nvidia-ml-py): the
        # `system-metrics` extra
        system_metrics: bool = False
        system_metrics_every_s: float = Field(10.0, gt=0)

        @field_validator("uri")
        @classmethod
        def _uri_as_meant(cls, v: str | None) -> str | None:
            if v is not None and (problem := tracking_uri_problem(v)):
                raise ValueError(problem)
            return v


class EvalConfig(Strict):
    knn_every_epochs: int = Field(1, ge=0)  # 0: only at the end
    knn_k: int = Field(200, ge=1)
    knn_t: float = Field(0.1, gt=0.0)
    # the monitor's bank: this stratified, seeded (run.seed) fraction of the labelled train images
    knn_label_fraction: float = Field(1.0, gt=0.0, le=1.0)
    # what the monitor votes with: the backbone's features (what is exported), or the head's output
    # (the MoCo CIFAR-10 demo's monitor: its 128-d fc output)
    knn_features: Literal["backbone", "head"] = "backbone"
