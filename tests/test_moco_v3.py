"""MoCo v3 (moco.mechanism=moco_v3): its loss in closed form and against the reference's formula, a
ViT-S/16 step with AdamW and the frozen patch projection, and the config's refusals."""

import math

import pytest
import torch
from torch.nn import functional as F

from moco_core.backbones import check_arch_fits
from moco_core.config import ConfigError, ExperimentConfig
from moco_core.encoder import make_head
from moco_core.engine import build_train_state, train_step
from moco_core.loss import info_nce
from moco_core.moco_v3 import MoCoV3, batch_key_logits
from moco_core.model import build_moco


def _v3(**over) -> ExperimentConfig:
    raw = {
        "data": {"image_size": 8, "channels": 1},
        "model": {"head": "mlp_bn", "dim": 16, "hidden_dim": 32},
        "moco": {"mechanism": "moco_v3", "temperature": 0.2, "momentum": 0.9},
        "optim": {"batch_size": 6, "epochs": 1, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1},
        "run": {"channels_last": False},
    }
    for dotted, value in over.items():
        section, key = dotted.split("__")
        raw.setdefault(section, {})[key] = value
    return ExperimentConfig.model_validate(raw)


def test_loss_in_closed_form():
    """N orthonormal queries, each equal to its own key: every positive is 1/T, every negative 0, so
    each direction's InfoNCE is log(1 + (N - 1) e^(-1/T)) and the reference's loss 2T (L1 + L2)."""
    n, t = 5, 0.2
    q = torch.eye(n, 8)
    logits = batch_key_logits(q, q, rank=0, temperature=t)
    assert logits.shape == (n, n)  # the positive and the N - 1 other keys of the batch
    one_way = math.log(1 + (n - 1) * math.exp(-1 / t))
    assert float(info_nce(logits)) == pytest.approx(one_way, rel=1e-6)
    both = torch.cat([logits, logits])
    assert float(info_nce(both) * 4 * t) == pytest.approx(2 * t * (2 * one_way), rel=1e-6)


def test_the_positive_is_the_own_images_key_in_the_global_batch():
    """On rank 1 of 2, query i's positive is key 3 + i of the 6 gathered keys; every other key is a
    negative, once."""
    torch.manual_seed(0)
    q, keys = F.normalize(torch.randn(3, 4), dim=1), F.normalize(torch.randn(6, 4), dim=1)
    logits = batch_key_logits(q, keys, rank=1, temperature=0.5)
    for i in range(3):
        others = [j for j in range(6) if j != 3 + i]
        want = torch.cat([keys[3 + i : 4 + i], keys[others]]) @ q[i] / 0.5
        assert torch.allclose(logits[i], want, atol=1e-6)


def test_the_models_loss_is_the_references():
    """The model's loss equals the reference's builder.py: ``CE(q1 k2^T / T, arange) + CE(q2 k1^T / T,
    arange)``, times 2T, with q = predictor(encoder_q(x)) and k = encoder_k(x)."""
    torch.manual_seed(0)
    cfg = _v3()
    model = build_moco(cfg)
    assert isinstance(model, MoCoV3)
    with torch.no_grad():  # a key encoder that differs from the query encoder
        for p in model.encoder_k.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x1, x2 = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
    out = model(x1, x2)
    loss = info_nce(out.logits) * out.loss_scale

    def ce(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).t() / cfg.moco.temperature
        return F.cross_entropy(logits, torch.arange(6)) * 2 * cfg.moco.temperature

    with torch.no_grad():
        q1, q2 = (model.predictor(model.encoder_q(x)) for x in (x1, x2))
        k1, k2 = model.encoder_k(x1), model.encoder_k(x2)
        ref = ce(q1, k2) + ce(q2, k1)
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_heads_are_the_references():
    """The projection head: 3 bias-free linear layers, BN + ReLU between, an affine-free BN last."""
    head = make_head("mlp_bn", 10, 4, 6)
    kinds = [type(m).__name__ for m in head]
    assert kinds == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
    ]
    assert all(m.bias is None for m in head if isinstance(m, torch.nn.Linear))
    assert head[-1].weight is None  # affine=False
    predictor = build_moco(_v3()).predictor
    assert [type(m).__name__ for m in predictor] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]


@pytest.mark.timeout(120)
def test_a_vit_small_step_at_32px_with_adamw_and_a_frozen_patch_projection():
    """ViT-S/16 (timm) at 32 px (2 x 2 patches): one AdamW step moves the query encoder and the
    predictor, leaves the frozen patch projection as it was, and moves the key encoder by exactly
    m k + (1 - m) q."""
    torch.manual_seed(0)
    cfg = _v3(
        data__image_size=32,
        data__channels=3,
        model__arch="timm:vit_small_patch16_224",
        model__freeze_patch_embed=True,
        optim__batch_size=4,
    )
    check_arch_fits(cfg)
    state = build_train_state(cfg, steps_per_epoch=1)
    model = state.model
    assert isinstance(state.optimizer, torch.optim.AdamW)
    trained = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
    proj = model.encoder_q.backbone.patch_embed.proj
    assert id(proj.weight) not in trained  # frozen: not even in the optimizer
    assert all(id(p) in trained for p in model.predictor.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = train_step(
        model, state, torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), cfg, torch.device("cpu")
    )
    assert math.isfinite(metrics["train/loss"]) and metrics["train/momentum"] == 0.9
    after = model.state_dict()
    assert torch.equal(
        after["encoder_q.backbone.patch_embed.proj.weight"],
        before["encoder_q.backbone.patch_embed.proj.weight"],
    )
    assert not torch.equal(
        after["encoder_q.backbone.blocks.0.attn.qkv.weight"],
        before["encoder_q.backbone.blocks.0.attn.qkv.weight"],
    )
    assert not torch.equal(after["predictor.0.weight"], before["predictor.0.weight"])
    for name in ("backbone.blocks.0.attn.qkv.weight", "head.0.weight"):
        want = 0.9 * before[f"encoder_k.{name}"] + 0.1 * after[f"encoder_q.{name}"]
        assert torch.allclose(after[f"encoder_k.{name}"], want, atol=1e-6), name


def test_config_refusals_name_the_keys():
    with pytest.raises(ValueError, match="moco.shuffle_bn=split .* moco.mechanism=moco_v3 has no queue"):
        _v3(moco__shuffle_bn="split")
    with pytest.raises(ValueError, match="moco.symmetric"):
        _v3(moco__symmetric=True)
    with pytest.raises(ValueError, match="model.freeze_patch_embed .* model.arch=resnet18"):
        _v3(model__freeze_patch_embed=True, model__arch="resnet18")
    with pytest.raises(ConfigError, match="model.arch=timm:resnet18: model.freeze_patch_embed needs"):
        check_arch_fits(_v3(model__freeze_patch_embed=True, model__arch="timm:resnet18"))
    with pytest.raises(ValueError, match="optim.optimizer"):
        _v3(optim__optimizer="lamb")
    assert _v3().negatives == 5  # the other images' keys of the global batch
    assert _v3().resolved_shuffle_bn(1) == "off"


def test_a_sweep_over_k_sets_the_batch():
    cfg = _v3(tune__space={"moco": {"negatives": [4, 8]}}, tune__asha=None)
    trial = cfg.trial({"moco.negatives": 8})
    assert trial.optim.batch_size == 8 and trial.negatives == 7


def test_the_shipped_recipe_is_the_papers():
    from moco_core.config import load_config

    from .conftest import REPO

    cfg = load_config(REPO / "experiments" / "mocov3_vit_small.yaml")
    check_arch_fits(cfg)  # 224 px in 14 x 14 patches; the patch projection is there to freeze
    assert (cfg.moco.mechanism, cfg.model.head, cfg.optim.optimizer) == ("moco_v3", "mlp_bn", "adamw")
    assert cfg.optim.peak_lr == pytest.approx(1.5e-4 * 4) and cfg.negatives == 1023
