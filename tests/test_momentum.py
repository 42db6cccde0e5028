"""Momentum update of the key encoder, and no gradient into it."""

import torch

from moco_core.config import ExperimentConfig
from moco_core.engine import build_train_state, train_step
from moco_core.model import build_moco
from moco_core.momentum import momentum_update

CFG = ExperimentConfig.model_validate(
    {
        "data": {"image_size": 8, "channels": 1},
        "model": {"arch": "resnet18", "dim": 16},
        "moco": {"queue_size": 64, "split_bn_groups": 2},
        "optim": {"batch_size": 8, "epochs": 1},
        "run": {"channels_last": False},
    }
)


def _perturbed_moco():
    model = build_moco(CFG)
    with torch.no_grad():  # make q and k differ
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    return model


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_m1_keeps_key_encoder():
    model = _perturbed_moco()
    before = _params(model.encoder_k)
    model.momentum_update(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.encoder_k.parameters()))


def test_m0_copies_query_encoder():
    model = _perturbed_moco()
    model.momentum_update(0.0)
    assert all(torch.equal(a, b) for a, b in zip(model.encoder_q.parameters(), model.encoder_k.parameters()))


def test_formula():
    target = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    online = [torch.tensor([3.0, 6.0]), torch.tensor([[-1.0]])]
    momentum_update(target, online, 0.75)
    assert torch.allclose(target[0], torch.tensor([1.5, 3.0]))
    assert torch.allclose(target[1], torch.tensor([[2.0]]))


def test_intermediate_m_on_model():
    model = _perturbed_moco()
    q, k = _params(model.encoder_q), _params(model.encoder_k)
    model.momentum_update(0.9)
    for pq, pk, new in zip(q, k, model.encoder_k.parameters()):
        assert torch.allclose(new, 0.9 * pk + 0.1 * pq, atol=1e-6)


def test_key_encoder_starts_as_copy_and_has_no_grad():
    model = build_moco(CFG)
    assert all(torch.equal(a, b) for a, b in zip(model.encoder_q.parameters(), model.encoder_k.parameters()))
    assert not any(p.requires_grad for p in model.encoder_k.parameters())


def test_no_gradient_reaches_key_encoder_in_a_step():
    cfg = CFG.model_copy(update={"moco": CFG.moco.model_copy(update={"momentum": 1.0})})  # m=1: k stays
    state = build_train_state(cfg, steps_per_epoch=1)
    x = torch.randn(8, 1, 8, 8)
    k_before = _params(state.model.encoder_k)
    q_before = _params(state.model.encoder_q)
    train_step(state.model, state, x, x.flip(-1), cfg, torch.device("cpu"))
    assert all(p.grad is None for p in state.model.encoder_k.parameters())
    assert any(p.grad is not None for p in state.model.encoder_q.parameters())
    # the SGD step moved only the query encoder
    assert all(torch.equal(a, b) for a, b in zip(k_before, state.model.encoder_k.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(q_before, state.model.encoder_q.parameters()))
