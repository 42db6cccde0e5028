"""Encoder package, champion rule and MLflow registry, against a real MLflow (sqlite) store; no mocks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from moco_core.augment import build_eval_transform, normalization
from moco_core.backbones import create_backbone
from moco_core.config import ExperimentConfig
from service.registry import (
    ENCODER_JSON,
    WEIGHTS,
    EncoderError,
    champion_should_move,
    list_encoders,
    load_encoder,
    pull,
    read_encoder_package,
    register_encoder,
    resolve_ref,
    write_encoder_package,
)

METRIC = "eval/knn_top1"
FP = "sha256:digits-tiny"
MODEL = "moco-tiny"


def _cfg() -> ExperimentConfig:
    return ExperimentConfig(
        name="tiny",
        data={"channels": 1, "image_size": 16},
        model={"arch": "resnet18", "small_image_stem": True},
    )


def _trained_backbone(seed: int) -> torch.nn.Module:
    """A backbone with its own weights and non-default BN running statistics (so buffers must travel too)."""
    torch.manual_seed(seed)
    net = create_backbone("resnet18", 1, True)
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(4, 1, 16, 16) * 2 + 0.5)
    return net.eval()


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(123))


# ---------------------------------------------------------------------------------------------
# the package, no MLflow


def test_package_round_trip_gives_identical_outputs(tmp_path):
    net = _trained_backbone(0)
    out = write_encoder_package(
        tmp_path / "pkg", net, _cfg(), fingerprint=FP, run_id=None, metrics={METRIC: 0.5}
    )
    assert sorted(os.listdir(out)) == [ENCODER_JSON, WEIGHTS]
    back, meta = read_encoder_package(out)
    assert not back.training
    x = _x()
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    mean, std = normalization(1)
    assert meta["arch"] == "resnet18" and meta["small_image_stem"] is True and meta["in_channels"] == 1
    assert meta["feature_dim"] == 512 and meta["image_size"] == 16
    assert (meta["mean"], meta["std"]) == (mean, std)
    assert meta["data_fingerprint"] == FP and meta["source_run_id"] is None
    assert meta["metrics"] == {METRIC: 0.5}
    assert meta["moco"]["queue_size"] == _cfg().moco.queue_size and meta["model"]["arch"] == "resnet18"
    assert meta["arch_source"]["library"] == "torchvision" and meta["arch_source"]["name"] == "resnet18"
    assert meta["init"] == {"given": "random", "resolved": None}
    # the weights file holds tensors only: it loads with the restricted unpickler
    state = torch.load(out / WEIGHTS, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_write_refuses_a_backbone_that_does_not_match_the_config(tmp_path):
    net = create_backbone("resnet18", 3, True)  # config says 1 channel
    with pytest.raises(EncoderError, match="data.channels=1"):
        write_encoder_package(tmp_path / "pkg", net, _cfg(), fingerprint=FP, run_id=None, metrics={})
    assert not (tmp_path / "pkg" / WEIGHTS).exists()


def _score(value: float, metric: str = METRIC, fingerprint: str = FP, scored_on: str | None = None) -> dict:
    return {"metric": metric, "value": value, "fingerprint": fingerprint, "scored_on": scored_on}


@pytest.mark.parametrize(
    "current, candidate, moves",
    [
        (None, _score(0.1), True),  # no champion yet
        (_score(0.5), _score(0.6), True),
        (_score(0.5), _score(0.4), False),
        (_score(0.5), _score(0.5), False),  # a tie keeps the champion
        (_score(0.5), _score(0.9, metric="eval/knn_auroc"), False),  # other metric
        (_score(0.5), _score(0.9, fingerprint="sha256:other"), False),  # other data
        (_score(float("nan")), _score(0.1), True),  # an unscored champion is displaced
        (_score(0.5), _score(float("nan")), False),  # an unscored candidate never wins
        (_score(0.5, scored_on="a"), _score(0.9, scored_on="b"), False),  # other labels or val images
        (_score(0.5, scored_on="a"), _score(0.9, scored_on="a"), True),
        (_score(0.5), _score(0.9, scored_on="a"), True),  # a champion registered before scored_on existed
    ],
    ids=[
        "none",
        "better",
        "worse",
        "equal",
        "other-metric",
        "other-fingerprint",
        "nan-current",
        "nan-candidate",
        "other-scoring-data",
        "same-scoring-data",
        "champion-without-scored-on",
    ],
)
def test_champion_rule(current, candidate, moves):
    assert champion_should_move(current, candidate) is moves


# ---------------------------------------------------------------------------------------------
# package errors


@pytest.fixture
def package(tmp_path):
    net = _trained_backbone(1)
    return write_encoder_package(tmp_path / "pkg", net, _cfg(), fingerprint=FP, run_id=None, metrics={})


def test_wrong_arch_in_encoder_json_is_refused(package):
    meta = json.loads((package / ENCODER_JSON).read_text())
    meta["arch"] = "resnet34"
    (package / ENCODER_JSON).write_text(json.dumps(meta))
    with pytest.raises(EncoderError, match=r"weights\.pt does not fit.*resnet34"):
        read_encoder_package(package)


def test_a_package_written_before_timm_and_model_init_still_reads(package):
    meta = json.loads((package / ENCODER_JSON).read_text())
    for key in ("arch_source", "init"):
        del meta[key]
    for key in ("init", "init_resolved"):
        del meta["model"][key]
    (package / ENCODER_JSON).write_text(json.dumps(meta))
    back, read = read_encoder_package(package)
    assert read["arch"] == "resnet18" and back.feature_dim == 512


def test_missing_keys_in_weights_are_refused(package):
    state = torch.load(package / WEIGHTS, weights_only=True)
    del state["layer4.1.bn2.running_var"]
    torch.save(state, package / WEIGHTS)
    with pytest.raises(EncoderError, match=r"layer4\.1\.bn2\.running_var"):
        read_encoder_package(package)


def test_missing_weights_file_is_refused(package):
    (package / WEIGHTS).unlink()
    with pytest.raises(EncoderError, match=r"weights\.pt is missing"):
        read_encoder_package(package)


def _touch(path: str) -> str:  # what a malicious pickle would run on load
    Path(path).write_text("pwned")
    return "x"


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_pickled_object_in_weights_is_refused_and_never_run(package, tmp_path):
    marker = tmp_path / "marker"
    torch.save({"conv1.weight": _Payload(str(marker))}, package / WEIGHTS)
    with pytest.raises(EncoderError, match=r"weights\.pt is not a plain tensor state_dict"):
        read_encoder_package(package)
    with pytest.raises(EncoderError):
        load_encoder(str(package))
    assert not marker.exists()
    # the payload is live: an unrestricted load would have run it
    torch.load(package / WEIGHTS, weights_only=False)
    assert marker.read_text() == "pwned"


# ---------------------------------------------------------------------------------------------
# MLflow registry: one store, three runs registered in order (scores 0.5, 0.4, 0.6)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    root = tmp_path_factory.mktemp("mlflow")
    previous_uri = tracking_utils._tracking_uri
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # nothing may land in the repository's ./mlruns
        mp.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        exp_id = mlflow.create_experiment("moco-test", artifact_location=(root / "artifacts").as_uri())
        results, runs, nets = [], [], []
        for i, value in enumerate([0.5, 0.4, 0.6]):
            net = _trained_backbone(10 + i)
            with mlflow.start_run(experiment_id=exp_id) as run:
                pkg = write_encoder_package(
                    root / f"pkg{i}",
                    net,
                    _cfg(),
                    fingerprint=FP,
                    run_id=run.info.run_id,
                    metrics={METRIC: value},
                )
            # registered after the run ended, as the driver does
            results.append(
                register_encoder(
                    pkg, run_id=run.info.run_id, model_name=MODEL, metric=METRIC, value=value, fingerprint=FP
                )
            )
            runs.append(run.info.run_id)
            nets.append(net)
        with mlflow.start_run(experiment_id=exp_id) as empty:
            pass
        yield {"root": root, "results": results, "runs": runs, "nets": nets, "empty_run": empty.info.run_id}
        mlflow.set_tracking_uri(previous_uri)


def test_champion_moves_only_on_a_better_score(registry):
    from mlflow import MlflowClient

    r1, r2, r3 = registry["results"]
    assert (r1["version"], r1["champion"], r1["previous_champion"]) == (1, True, None)
    assert (r2["version"], r2["champion"], r2["previous_champion"]) == (2, False, 1)
    assert (r3["version"], r3["champion"], r3["previous_champion"]) == (3, True, 1)
    assert r3["model_uri"] == f"models:/{MODEL}/3" and r3["name"] == MODEL
    client = MlflowClient()
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == 3
    mv2 = client.get_model_version(MODEL, "2")
    assert mv2.tags["moco.metric"] == METRIC and float(mv2.tags["moco.value"]) == 0.4
    assert mv2.tags["moco.fingerprint"] == FP and mv2.tags["moco.source_run_id"] == registry["runs"][1]
    # the logged model is attached to its run, and the run keeps its encoder/ artifacts
    run = client.get_run(registry["runs"][1])
    assert run.info.status == "FINISHED"
    assert [o.model_id for o in run.outputs.model_outputs] == [mv2.source.split("/")[-1]]
    # (MLflow 3 lists the LoggedModel named "encoder" under the run's "encoder/" too, hence a subset)
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "encoder")}
    assert {"encoder/encoder.json", "encoder/weights.pt"} <= listed


def test_load_encoder_champion_gives_the_packaged_features(registry):
    enc = load_encoder(f"models:/{MODEL}@champion")
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), registry["nets"][2](x), rtol=0, atol=0)
    assert not enc.training
    assert enc.encoder_meta["source_run_id"] == registry["runs"][2]
    assert enc.encoder_meta["metrics"] == {METRIC: 0.6}
    img = torch.randint(0, 256, (1, 20, 24), dtype=torch.uint8)
    pre = enc.preprocess(img)
    assert pre.shape == (1, 16, 16) and pre.dtype == torch.float32
    torch.testing.assert_close(pre, build_eval_transform(16, 1)(img))
    rgb = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)  # a batch of colour images -> gray
    assert enc.preprocess(rgb).shape == (2, 1, 16, 16)
    assert enc(enc.preprocess(img)[None]).shape == (1, 512)


def test_mlflow_load_model_loads_the_pt2_version_without_pickle(registry):
    import mlflow

    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" not in os.environ  # pickle-free check is on
    dst = registry["root"] / "pt2-download"
    dst.mkdir()
    model = mlflow.pytorch.load_model(f"models:/{MODEL}/1", dst_path=str(dst))
    assert list(dst.rglob("model.pt2")) and not list(dst.rglob("model.pth"))
    x = _x(5)  # another batch size than the input example's (2): the batch dimension is dynamic
    with torch.no_grad():
        torch.testing.assert_close(model(x), registry["nets"][0](x), rtol=0, atol=1e-5)


def test_run_refs_resolve_to_the_runs_encoder(registry, tmp_path):
    run_id = registry["runs"][1]
    for ref in (f"runs:/{run_id}", run_id):
        folder = resolve_ref(ref, tmp_path / ref.replace(":", "").replace("/", "_"))
        net, meta = read_encoder_package(folder)
        assert meta["source_run_id"] == run_id
        x = _x()
        with torch.no_grad():
            assert torch.equal(net(x), registry["nets"][1](x))


def test_pull_leaves_exactly_the_package(registry, tmp_path):
    out = pull(f"models:/{MODEL}/2", tmp_path / "enc")
    assert sorted(os.listdir(out)) == [ENCODER_JSON, WEIGHTS]
    net, meta = read_encoder_package(out)
    assert meta["source_run_id"] == registry["runs"][1]
    out2 = pull(str(out), tmp_path / "copy")  # a local folder is a ref too
    assert (out2 / WEIGHTS).read_bytes() == (out / WEIGHTS).read_bytes()


def test_list_encoders(registry):
    (entry,) = [e for e in list_encoders() if e["name"] == MODEL]
    assert entry["aliases"] == {"champion": 3}
    assert [v["version"] for v in entry["versions"]] == [1, 2, 3]
    assert [v["value"] for v in entry["versions"]] == [0.5, 0.4, 0.6]
    assert [v["run_id"] for v in entry["versions"]] == registry["runs"]
    assert entry["versions"][2]["aliases"] == ["champion"] and entry["versions"][2]["metric"] == METRIC
    assert all(isinstance(v["creation_time"], int) for v in entry["versions"])


@pytest.mark.parametrize(
    "ref, message",
    [
        ("models:/moco-nope@champion", r"no registered model named 'moco-nope'.*moco-tiny"),
        (f"models:/{MODEL}@best", r"no alias 'best'; aliases: @champion -> 3"),
        (f"models:/{MODEL}/7", r"no version '7'; versions: \[1, 2, 3\]"),
        ("models:/moco-tiny", r"give a version or an alias"),
        ("not-a-ref", r"not an encoder reference"),
    ],
    ids=["unknown-model", "unknown-alias", "missing-version", "no-version", "garbage"],
)
def test_bad_refs_name_what_exists(registry, ref, message, tmp_path):
    with pytest.raises(EncoderError, match=message):
        resolve_ref(ref, tmp_path)
    with pytest.raises(EncoderError):
        load_encoder(ref)


def test_run_without_encoder_and_unknown_run(registry, tmp_path):
    run_id = registry["empty_run"]
    with pytest.raises(EncoderError, match=f"run {run_id} has no encoder package"):
        resolve_ref(f"runs:/{run_id}", tmp_path)
    with pytest.raises(EncoderError, match="no run 0123456789abcdef0123456789abcdef"):
        resolve_ref("0123456789abcdef0123456789abcdef", tmp_path)
    with pytest.raises(EncoderError, match="not found"):
        register_encoder(
            registry["root"] / "pkg0",
            run_id="0123456789abcdef0123456789abcdef",
            model_name=MODEL,
            metric=METRIC,
            value=1.0,
            fingerprint=FP,
        )
