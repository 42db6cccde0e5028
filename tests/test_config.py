"""Config: YAML loading, dotted overrides, unknown keys, cross-field checks."""

import pytest

from moco_core.config import ConfigError, ExperimentConfig, apply_overrides, load_config

from .conftest import REPO


def test_every_experiment_file_validates():
    names = {load_config(p).name for p in (REPO / "experiments").glob("*.yaml")}
    assert {"digits", "cifar-mocov2-r18", "mocov1-imagenet-r50", "mocov2-imagenet-r50", "cxr-mocov2"} <= names


def test_paper_hyperparameters():
    v1 = load_config(REPO / "experiments" / "mocov1_imagenet_r50.yaml")
    v2 = load_config(REPO / "experiments" / "mocov2_imagenet_r50.yaml")
    assert (v1.moco.temperature, v1.model.head, v1.optim.schedule) == (0.07, "linear", "step")
    assert (v2.moco.temperature, v2.model.head, v2.optim.schedule) == (0.2, "mlp", "cosine")
    assert v1.moco.queue_size == v2.moco.queue_size == 65536


def test_overrides_are_typed_and_validated():
    cfg = load_config(
        REPO / "experiments" / "digits.yaml",
        ["moco.temperature=0.5", "optim.epochs=3", "moco.shuffle_bn=off", "data.label_columns=[digit]"],
    )
    assert cfg.moco.temperature == 0.5 and cfg.optim.epochs == 3 and cfg.moco.shuffle_bn == "off"
    assert cfg.data.label_columns == ["digit"]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("moco.temprature=0.2", "moco.temprature: unknown key"),
        ("moco.momentum=1.5", "moco.momentum"),
        ("moco.queue_size=0", "moco.queue_size"),
        ("moco.shuffle_bn=sometimes", "moco.shuffle_bn"),
        ("eval.knn_label_fraction=0", "eval.knn_label_fraction"),
        ("eval.knn_label_fraction=1.5", "eval.knn_label_fraction"),
        ("optim=3", "optim"),
        ("nonsense", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(REPO / "experiments" / "digits.yaml", [override])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="divide evenly"):
        load_config(REPO / "experiments" / "digits.yaml", ["scaling.workers=3", "optim.batch_size=128"])
    with pytest.raises(ConfigError, match="needs scaling.workers >= 2"):
        load_config(REPO / "experiments" / "digits.yaml", ["moco.shuffle_bn=distributed"])
    with pytest.raises(ConfigError, match="split_bn_groups"):
        load_config(REPO / "experiments" / "digits.yaml", ["optim.batch_size=2"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_defaults_and_flat_params():
    cfg = ExperimentConfig()
    flat = cfg.flat()
    assert flat["moco.queue_size"] == 4096 and flat["optim.batch_size"] == 256
    assert cfg.registered_model_name == "moco-experiment"
    assert cfg.resolved_shuffle_bn(1) == "split" and cfg.resolved_shuffle_bn(4) == "distributed"


def test_apply_overrides_does_not_mutate_input():
    raw = {"moco": {"temperature": 0.1}}
    out = apply_overrides(raw, ["moco.temperature=0.3"])
    assert raw["moco"]["temperature"] == 0.1 and out["moco"]["temperature"] == 0.3


def test_core_never_imports_ray_or_mlflow():
    import subprocess
    import sys

    code = (
        "import sys, pkgutil, importlib, moco_core\n"
        "for m in pkgutil.iter_modules(moco_core.__path__): importlib.import_module('moco_core.' + m.name)\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('ray', 'mlflow')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
