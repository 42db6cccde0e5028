"""Experiment configuration: pydantic models (one file per concept), YAML loading and ``--set``.

Every model forbids unknown keys, so a typo in a YAML file or in ``--set`` is an error that names the
key rather than a setting that silently does nothing. Import from here: ``from moco_core.config import
ExperimentConfig, load_config``.
"""

from .base import ConfigError
from .dotted import flatten, set_values
from .experiment import ExperimentConfig
from .io import (
    apply_overrides,
    config_from_dict,
    dump_yaml,
    json_schema,
    load_config,
    parse_override,
    read_experiment,
    read_yaml,
)
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
    tracking_uri_problem,
)
from .sweep import AshaConfig, SearchDim, TuneConfig, TuneSpace

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "parse_override",
    "read_yaml",
    "read_experiment",
    "dump_yaml",
    "json_schema",
    "flatten",
    "set_values",
    "DataConfig",
    "ModelConfig",
    "MocoConfig",
    "AugmentConfig",
    "OptimConfig",
    "ScalingConfig",
    "RunConfig",
    "TrackingConfig",
    "tracking_uri_problem",
    "EvalConfig",
    "TuneConfig",
    "TuneSpace",
    "SearchDim",
    "AshaConfig",
]
