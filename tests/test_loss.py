"""InfoNCE against hand computations and closed forms."""

import math

import torch
from torch.nn import functional as F

from moco_core.loss import info_nce, moco_logits


def test_matches_hand_computation():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    k = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=1)
    queue = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # C x K: keys (1,0), (0,1), (-1,0)
    t = 0.5
    logits = moco_logits(q, k, queue, t)
    # row 0: q=(1,0): pos 0.8; negs 1, 0, -1.  row 1: q=(.6,.8): pos .8; negs .6, .8, -.6
    expected = torch.tensor([[0.8, 1.0, 0.0, -1.0], [0.8, 0.6, 0.8, -0.6]]) / t
    assert torch.allclose(logits, expected, atol=1e-6)
    by_hand = [-(row[0] - torch.logsumexp(row, 0)) for row in expected]
    assert torch.allclose(info_nce(logits), torch.stack(by_hand).mean(), atol=1e-6)


def test_equal_similarities_give_log_k_plus_one():
    n, c, kk = 4, 8, 31
    q = F.normalize(torch.ones(n, c), dim=1)
    k = q.clone()
    queue = F.normalize(torch.ones(c, kk), dim=0)  # every similarity is 1
    loss = info_nce(moco_logits(q, k, queue, temperature=0.07))
    assert math.isclose(loss.item(), math.log(kk + 1), rel_tol=1e-5)


def test_invariant_to_queue_permutation():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(6, 5, generator=g), dim=1)
    k = F.normalize(torch.randn(6, 5, generator=g), dim=1)
    queue = F.normalize(torch.randn(5, 40, generator=g), dim=0)
    perm = torch.randperm(40, generator=g)
    a = info_nce(moco_logits(q, k, queue, 0.2))
    b = info_nce(moco_logits(q, k, queue[:, perm], 0.2))
    assert torch.allclose(a, b, atol=1e-6)


def test_lower_temperature_sharpens():
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(8, 5, generator=g), dim=1)
    k = q.clone()  # positives are the best match
    queue = F.normalize(torch.randn(5, 64, generator=g), dim=0)
    assert info_nce(moco_logits(q, k, queue, 0.05)) < info_nce(moco_logits(q, k, queue, 0.5))


def test_queue_is_not_copied():
    q = F.normalize(torch.randn(2, 4), dim=1)
    queue = F.normalize(torch.randn(4, 10), dim=0)
    # the negatives are read from the queue's own storage: changing it before backward is detected
    # by autograd (the reason the engine enqueues only after backward)
    q.requires_grad_(True)
    logits = moco_logits(q, q.detach(), queue, 0.1)
    queue.add_(1.0)
    try:
        info_nce(logits).backward()
    except RuntimeError as e:
        assert "modified by an inplace operation" in str(e)
    else:  # pragma: no cover
        raise AssertionError("expected autograd to see the queue itself, not a copy")


def test_logits_stay_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(8, 16), dim=1)
    k = F.normalize(torch.randn(8, 16), dim=1)
    queue = F.normalize(torch.randn(16, 512), dim=0)
    exact = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / 0.07
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = moco_logits(q, k, queue, 0.07)
        rounded = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / 0.07  # what autocast does
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, exact, atol=1e-5)
    assert (rounded.float() - exact).abs().max() > 1e-3  # bf16 would have rounded the negatives


def test_symmetric_loss_is_the_mean_of_both_directions_and_enqueues_both_keys():
    from moco_core.config import ExperimentConfig
    from moco_core.engine import build_train_state, train_step
    from moco_core.model import build_moco

    raw = {
        "data": {"image_size": 8, "channels": 1},
        "model": {"head": "linear", "dim": 8},
        "moco": {"queue_size": 32, "shuffle_bn": "off", "symmetric": True},
        "optim": {"batch_size": 4, "epochs": 1},
        "run": {"channels_last": False},
    }
    cfg = ExperimentConfig.model_validate(raw)
    torch.manual_seed(0)
    model = build_moco(cfg).eval()  # BN in eval mode: every encoding of a view is the same
    x1, x2 = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    out = model(x1, x2)
    with torch.no_grad():
        q1, q2 = (F.normalize(model.encoder_q(x), dim=1) for x in (x1, x2))
        k1, k2 = (F.normalize(model.encoder_k(x), dim=1) for x in (x1, x2))
    queue, t = model.queue.keys, cfg.moco.temperature
    one_way = info_nce(moco_logits(q1, k2, queue, t))  # x1 asks for x2's key
    other_way = info_nce(moco_logits(q2, k1, queue, t))
    assert out.logits.shape == (8, 33) and out.k.shape == (8, 8)
    assert torch.allclose(info_nce(out.logits), (one_way + other_way) / 2, atol=1e-6)
    assert torch.allclose(out.k, torch.cat([k2, k1]), atol=1e-6)

    state = build_train_state(cfg, steps_per_epoch=2)
    train_step(state.model, state, x1, x2, cfg, torch.device("cpu"))
    assert int(state.model.queue.ptr) == 8  # both directions' keys were enqueued
