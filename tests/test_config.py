"""Config: YAML loading, dotted overrides, unknown keys, cross-field checks."""

import pytest
import yaml

from moco_core.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    dump_yaml,
    json_schema,
    load_config,
)

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


def _write(path, text: str):
    """An experiment file (for the ``base:`` tests: one file extending another)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.timeout(30)
def test_base_merges_mappings_and_the_file_wins(tmp_path):
    _write(
        tmp_path / "lib" / "parent.yaml",
        "name: parent\nmoco: {temperature: 0.2, queue_size: 512}\n"
        "optim: {schedule: step, lr_steps: [10, 20]}\ntracking: {model_name: parent-model}\n",
    )
    child = _write(
        tmp_path / "child.yaml",
        "base: lib/parent.yaml\nname: child\nmoco: {temperature: 0.07}\noptim: {lr_steps: [5]}\n"
        "tracking: {model_name: null}\n",
    )
    cfg = load_config(child)
    assert cfg.name == "child" and cfg.moco.temperature == 0.07
    assert cfg.moco.queue_size == 512 and cfg.optim.schedule == "step"  # the base's, merged key by key
    assert cfg.optim.lr_steps == [5]  # a list replaces the base's
    assert cfg.tracking.model_name is None  # so does null
    assert load_config(child, ["moco.queue_size=64", "name=cli"]).moco.queue_size == 64  # --set comes last
    # a chain: each base is relative to the file that names it
    grandchild = _write(
        tmp_path / "deeper" / "grandchild.yaml", "base: ../child.yaml\nmoco: {momentum: 0.9}\n"
    )
    cfg = load_config(grandchild)
    assert (cfg.name, cfg.moco.temperature, cfg.moco.queue_size, cfg.moco.momentum) == (
        "child",
        0.07,
        512,
        0.9,
    )


@pytest.mark.timeout(30)
def test_a_missing_base_and_a_cycle_name_the_file(tmp_path):
    lost = _write(tmp_path / "lost.yaml", "base: nope.yaml\nname: lost\n")
    with pytest.raises(ConfigError, match=r"lost\.yaml: base 'nope\.yaml' not found"):
        load_config(lost)
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(
        ConfigError, match=r"b\.yaml: base 'a\.yaml' makes a cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"
    ):
        load_config(tmp_path / "a.yaml")
    itself = _write(tmp_path / "self.yaml", "base: ./self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(itself)
    listed = _write(tmp_path / "listed.yaml", "base: [a.yaml, b.yaml]\n")
    with pytest.raises(ConfigError, match=r"listed\.yaml: base: must name one experiment file"):
        load_config(listed)


@pytest.mark.timeout(30)
def test_digits_tune_is_digits_with_its_sweep():
    tune = load_config(REPO / "experiments" / "digits_tune.yaml")
    digits = load_config(REPO / "experiments" / "digits.yaml", ["data.num_workers=0", "optim.epochs=4"])
    assert "base: digits.yaml" in (REPO / "experiments" / "digits_tune.yaml").read_text()
    assert tune.model_dump(exclude={"tune"}) == digits.model_dump(exclude={"tune"})
    assert tune.tune is not None and digits.tune is None


@pytest.mark.timeout(30)
def test_every_experiment_file_round_trips_through_its_dump(tmp_path):
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        cfg = load_config(path)
        dumped = _write(tmp_path / path.name, dump_yaml(cfg))
        assert load_config(dumped) == cfg, path.name


@pytest.mark.timeout(30)
def test_the_json_schema_accepts_every_experiment_file_and_rejects_a_typo():
    import jsonschema  # a dependency of Ray

    schema = json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    assert {"base", "name", "data", "moco", "tune"} <= set(schema["properties"])
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())  # as an editor sees it: base: and list shorthands included
        assert [e.message for e in validator.iter_errors(raw)] == [], path.name
    (typo,) = validator.iter_errors({"moco": {"tempreature": 0.2}})
    assert "tempreature" in typo.message
    assert list(validator.iter_errors({"moco": {"temperature": "warm"}}))


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "overrides, trials",
    [
        ([], 12),  # 3 x 2 x 2
        (["tune.num_samples=4"], 48),  # every sample repeats the whole grid
        (["tune.space.moco.momentum=null"], 6),
        (["tune.search=random", "tune.num_samples=5"], 5),
    ],
)
def test_trial_count(overrides, trials):
    cfg = load_config(REPO / "experiments" / "digits_tune.yaml", overrides)
    assert cfg.tune is not None and cfg.tune.trial_count() == trials
