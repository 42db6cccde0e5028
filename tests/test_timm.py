"""timm backbones (``model.arch: timm:<name>``) and a pretrained start (``model.init``): building, split
BN, the input-size check, pretraining, the encoder package and the registry, and the errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from moco_core.backbones import (
    backbone_for,
    check_arch_fits,
    create_backbone,
    initial_backbone,
)
from moco_core.config import ConfigError, ExperimentConfig
from moco_core.shuffle_bn import SplitBatchNorm2d, SplitBatchNormAct2d, convert_split_bn

from .conftest import small_config

VIT = "timm:vit_small_patch16_224"


def _cfg(arch: str = "resnet18", size: int = 16, channels: int = 1, **model) -> ExperimentConfig:
    return ExperimentConfig(
        name="timm-test",
        data={"image_size": size, "channels": channels},
        model={"arch": arch, **model},
        moco={"queue_size": 16, "split_bn_groups": 2},
        optim={"batch_size": 4, "epochs": 1},
    )


def _x(n: int = 2, channels: int = 1, size: int = 16) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(7))


# ---------------------------------------------------------------------------------------------
# arch names and input sizes


def test_arch_names_are_validated_with_close_matches():
    for arch in ("resnet18", "resnet34", "resnet50", "timm:densenet121", VIT):
        assert _cfg(arch, size=32).model.arch == arch
    with pytest.raises(ValueError, match=r"unknown timm model 'densenet12'.*timm:densenet121"):
        _cfg("timm:densenet12")
    with pytest.raises(ValueError, match=r"did you mean timm:densenet121"):
        _cfg("densenet121")
    with pytest.raises(ValueError, match=r"did you mean resnet18"):
        _cfg("resnet19")
    with pytest.raises(ValueError, match="needs a model name"):
        _cfg("timm:")


def test_vit_small_at_32_px_has_4_patches_and_no_batch_norm():
    vit = create_backbone(VIT, 3, True, image_size=32).eval()
    assert vit.patch_embed.num_patches == 4 and vit.pos_embed.shape[1] == 4 + 1  # and the class token
    assert vit.patch_embed.proj.stride == (16, 16)  # model.small_image_stem changes nothing here
    x = _x(2, 3, 32)
    with torch.no_grad():
        before = vit(x)
        assert before.shape == (2, 384) == (2, vit.feature_dim)
        converted = convert_split_bn(vit, 2)  # no BatchNorm2d: nothing to convert
        assert converted is vit and not any(isinstance(m, nn.BatchNorm2d) for m in vit.modules())
        assert torch.equal(vit(x), before)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert vit(x.contiguous(memory_format=torch.channels_last)).shape == (2, 384)
    check_arch_fits(_cfg(VIT, size=32, channels=3))


def test_an_image_size_that_is_not_a_multiple_of_the_patch_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.image_size=40.*patches of 16x16.*e\.g\. 32 or 48"):
        check_arch_fits(_cfg(VIT, size=40, channels=3))
    # a CNN too small for the image: the message names the keys
    with pytest.raises(ConfigError, match=r"model\.arch=timm:densenet121 with data\.image_size=8"):
        check_arch_fits(_cfg("timm:densenet121", size=8, small_image_stem=False))
    check_arch_fits(_cfg("resnet18", size=8))


def test_small_image_stem_of_timm_resnets_and_densenets():
    net = create_backbone("timm:resnet18", 1, True)
    assert net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert isinstance(net.maxpool, nn.Identity) and net.conv1.in_channels == 1
    deep = create_backbone("timm:resnet18d", 1, True)  # a deep stem: its first conv at stride 1
    assert deep.conv1[0].stride == (1, 1) and isinstance(deep.maxpool, nn.Identity)
    assert create_backbone("timm:resnet18", 1, False).conv1.stride == (2, 2)
    with torch.no_grad():
        assert net.eval()(_x(2, 1, 8)).shape == (2, 512) == (2, net.feature_dim)


def test_split_bn_converts_every_densenet_bn_and_keeps_its_activation():
    torch.manual_seed(0)
    net = create_backbone("timm:densenet121", 1, True)
    bns = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    split = convert_split_bn(copy.deepcopy(net), 2)
    converted = {n: m for n, m in split.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(bns) == 121 and sorted(converted) == sorted(bns)
    assert all(isinstance(m, SplitBatchNorm2d) and m.num_splits == 2 for m in converted.values())
    # timm's BatchNormAct2d (BN + ReLU) keeps its ReLU; the state dict is the original's key by key
    assert isinstance(split.features.norm0, SplitBatchNormAct2d)
    assert isinstance(split.features.norm0.act, nn.ReLU)
    assert list(split.state_dict()) == list(net.state_dict())
    x = _x(4, 1, 16)
    with torch.no_grad():
        torch.testing.assert_close(split.eval()(x), net.eval()(x))  # eval: plain BN, same function
        net.train(), split.train()
        halves = torch.cat([net(x[:2]), net(x[2:])])  # training BN: the batch's statistics
        torch.testing.assert_close(split(x), halves, atol=1e-4, rtol=1e-4)  # one BN per group


# ---------------------------------------------------------------------------------------------
# model.init from a state_dict file


def _saved(tmp_path, arch="resnet18", channels=1, seed=123, extra=None):
    torch.manual_seed(seed)
    net = create_backbone(arch, channels, True, 16)
    state = {**net.state_dict(), **(extra or {})}
    path = tmp_path / f"{arch.replace(':', '-')}-{channels}.pt"
    torch.save(state, path)
    return net, path


def test_init_from_a_state_dict_file_starts_both_encoders_from_it(tmp_path):
    from moco_core.model import build_moco
    from service.registry.init import resolve_init

    # a full state_dict with its classifier (fc.*): the backbone has none, so those keys are dropped
    saved, path = _saved(tmp_path, extra={"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)})
    cfg = resolve_init(_cfg(init=str(path)))
    assert cfg.model.init == str(path) and cfg.model.init_resolved == str(path.resolve())
    torch.manual_seed(0)
    model = build_moco(cfg)
    torch.manual_seed(0)
    random = build_moco(_cfg())
    want = saved.state_dict()
    for enc in (model.encoder_q, model.encoder_k):
        got = enc.backbone.state_dict()
        assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    x = _x(4)
    with torch.no_grad():
        first = model.encoder_q.backbone.eval()(x)
        torch.testing.assert_close(first, saved.eval()(x))
        assert not torch.allclose(first, random.encoder_q.backbone.eval()(x))
    assert resolve_init(_cfg()).model.init_resolved is None  # random: nothing to resolve


def test_init_errors_name_the_key_the_file_and_the_keys(tmp_path):
    from service.registry.init import resolve_init

    whole = tmp_path / "whole-model.pt"
    torch.save(create_backbone("resnet18", 1, True), whole)  # a pickled model, not a state_dict
    with pytest.raises(ConfigError, match=r"model\.init: .*whole-model\.pt holds pickled objects"):
        resolve_init(_cfg(init=str(whole)))
    with pytest.raises(ConfigError, match=r"whole-model\.pt holds pickled objects"):
        initial_backbone(_cfg(init=str(whole)))  # the workers' check is the same

    _, r18 = _saved(tmp_path)  # weights of another arch: resnet18's into resnet34
    with pytest.raises(
        ConfigError, match=r"model\.init: .*resnet18-1\.pt does not fit model\.arch=resnet34"
    ) as e:
        resolve_init(_cfg("resnet34", init=str(r18)))
    assert "missing" in str(e.value) and "layer1.2.conv1.weight" in str(e.value)
    _, rgb = _saved(tmp_path, channels=3)  # or of another number of channels
    with pytest.raises(
        ConfigError, match=r"wrongly shaped: conv1\.weight \(file \[64, 3, 3, 3\], backbone \[64, 1, 3, 3\]\)"
    ):
        resolve_init(_cfg(init=str(rgb)))
    with pytest.raises(ConfigError, match=r"unexpected .*features\.conv0\.weight"):
        resolve_init(_cfg("resnet18", init=str(_saved(tmp_path, "timm:densenet121")[1])))

    with pytest.raises(ConfigError, match=r"model\.init: .*nope\.pt is not an existing file or folder"):
        resolve_init(_cfg(init=str(tmp_path / "nope.pt")))
    with pytest.raises(ConfigError, match=r"nope\.pt does not exist"):
        initial_backbone(_cfg(init=str(tmp_path / "nope.pt")))
    with pytest.raises(ConfigError, match=r"models:/x@champion is an encoder reference, which needs MLflow"):
        initial_backbone(_cfg(init="models:/x@champion"))  # unresolved: moco_core says who resolves it


def test_init_from_an_encoder_package_folder_checks_its_arch(tmp_path):
    from service.registry import read_encoder_package, write_encoder_package
    from service.registry.init import resolve_init

    saved, _ = _saved(tmp_path)
    pkg = write_encoder_package(
        tmp_path / "pkg", saved, _cfg(), fingerprint="sha256:x", run_id=None, metrics={}
    )
    cfg = resolve_init(_cfg(init=str(pkg)))
    assert cfg.model.init_resolved == str((pkg / "weights.pt").resolve())
    back, _ = read_encoder_package(pkg)
    assert all(
        torch.equal(a, b)
        for a, b in zip(initial_backbone(cfg).state_dict().values(), back.state_dict().values())
    )
    with pytest.raises(
        ConfigError, match=r"model\.init: .*pkg is an encoder of arch=resnet18.*model\.arch=resnet34"
    ):
        resolve_init(_cfg("resnet34", init=str(pkg)))


def test_a_vit_package_records_its_image_size_and_reads_back(tmp_path):
    from service.registry import read_encoder_package, write_encoder_package

    cfg = _cfg(VIT, size=32, channels=3)
    net = backbone_for(cfg).eval()
    pkg = write_encoder_package(tmp_path / "vit", net, cfg, fingerprint="sha256:x", run_id=None, metrics={})
    back, meta = read_encoder_package(pkg)
    assert meta["arch"] == VIT and meta["image_size"] == 32 and meta["feature_dim"] == 384
    assert meta["arch_source"]["library"] == "timm" and meta["arch_source"]["name"] == "vit_small_patch16_224"
    assert meta["init"] == {"given": "random", "resolved": None}
    x = _x(2, 3, 32)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


# ---------------------------------------------------------------------------------------------
# a timm DenseNet on 1-channel images: pretrain a few steps, register, load back, start from it


@pytest.mark.timeout(300)
def test_densenet_pretrains_registers_loads_back_and_starts_a_run(digits_root, tmp_path):
    from moco_core.checkpoint import backbone_from_checkpoint
    from moco_core.data import read_dataset
    from moco_core.engine import build_train_state, fit
    from moco_core.pipeline import pretrain_loader, steps_per_epoch
    from service import tracking
    from service.registry import load_encoder, write_encoder_package
    from service.registry.init import INITS, resolve_init
    from service.registry.publish import publish_encoder

    torch.set_num_threads(2)
    arch = "timm:densenet121"
    tiny = (
        f"model.arch={arch}",
        "model.small_image_stem=false",  # timm's own stem: a quarter of the work at 32 px
        "data.image_size=32",
        "optim.batch_size=8",
        "moco.queue_size=16",
        "optim.epochs=1",
        "run.max_steps_per_epoch=2",
        "name=densenet-tiny",
        "run.channels_last=false",  # on the CPU its first steps cost seconds more (the ViT test runs it)
    )
    cfg = small_config(digits_root, tmp_path, *tiny)  # 1 channel, split BN in groups of 2
    assert cfg.data.channels == 1 and cfg.resolved_shuffle_bn(1) == "split"
    check_arch_fits(cfg)
    parts = read_dataset(digits_root, partitions=("train",))
    state = build_train_state(cfg, steps_per_epoch(len(parts["train"]), cfg))
    assert any(isinstance(m, SplitBatchNormAct2d) for m in state.model.encoder_k.modules())
    history = fit(state, pretrain_loader(cfg, parts["train"]), cfg)
    assert state.step == 2 and torch.isfinite(torch.tensor(history[-1]["train/loss"]))

    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    run_id = tracking.start_run(uri, cfg, "densenet-tiny-run")
    registered = publish_encoder(cfg, state.state_dict(), run_id, uri, history[-1], "sha256:digits", epoch=1)
    assert registered is not None and registered["champion"]
    ref = f"models:/{cfg.registered_model_name}@champion"
    enc = load_encoder(ref, uri)
    assert enc.encoder_meta["arch"] == arch and enc.encoder_meta["in_channels"] == 1
    trained = backbone_from_checkpoint(cfg, state.state_dict())
    x = enc.preprocess(torch.randint(0, 256, (3, 1, 40, 40), dtype=torch.uint8))
    with torch.no_grad():
        features = enc(x)
        assert features.shape == (3, 1024)
        torch.testing.assert_close(features, trained(x), rtol=0, atol=0)
        live = state.model.encoder_q.backbone.eval()  # split BN (plain BN in eval mode)
        torch.testing.assert_close(features, live(x), rtol=1e-3, atol=1e-3)

    # a second run starts from the registered encoder: resolved before training, under the storage path
    start = small_config(digits_root, tmp_path, *tiny, f"model.init={ref}")
    resolved = resolve_init(start, tmp_path / "downloads", uri)
    assert resolved.model.init == ref and f"/runs/{INITS}/" in resolved.model.init_resolved
    again = build_train_state(resolved, 2)
    want = trained.state_dict()
    for encoder in (again.model.encoder_q, again.model.encoder_k):
        got = encoder.backbone.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
    pkg = write_encoder_package(
        tmp_path / "pkg",
        again.model.encoder_q.backbone,
        resolved,
        fingerprint="sha256:x",
        run_id=None,
        metrics={},
    )
    meta = json.loads((pkg / "encoder.json").read_text())
    assert meta["init"] == {"given": ref, "resolved": resolved.model.init_resolved}
    assert meta["arch_source"] == {
        "library": "timm",
        "version": meta["arch_source"]["version"],
        "name": "densenet121",
    }


def test_init_with_the_storage_path_on_shared_storage_is_copied_there(tmp_path):
    from service.registry.init import INITS, resolve_init

    saved, path = _saved(tmp_path)
    shared = (tmp_path / "shared").as_uri()  # a URI, as s3://: the workers may be on other nodes
    given = _cfg(init=str(path))
    given = given.model_copy(update={"run": given.run.model_copy(update={"storage_path": shared})})
    cfg = resolve_init(given)
    assert cfg.model.init_resolved.startswith(f"{shared}/{INITS}/")
    assert torch.equal(initial_backbone(cfg).conv1.weight, saved.conv1.weight)  # read through pyarrow.fs
    again = resolve_init(_cfg(init=path.as_uri()))  # a file given as a URI is read where it is
    assert again.model.init_resolved == path.as_uri()
