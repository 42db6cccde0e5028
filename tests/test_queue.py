"""KeyQueue: FIFO order across wrap-around, any batch size, state in state_dict."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moco_core.queue import KeyQueue


def _keys(start: int, n: int, dim: int = 3) -> torch.Tensor:
    # key i is the row [i, i, i]: its identity is readable from the queue
    return torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1).repeat(1, dim)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 37), batches=st.lists(st.integers(1, 50), min_size=1, max_size=12))
def test_queue_is_fifo_over_any_batch_sizes(size, batches):
    q = KeyQueue(dim=3, size=size)
    written = 0
    for n in batches:
        q.enqueue(_keys(written, n))
        written += n
    assert int(q.ptr) == written % size
    newest = list(range(max(0, written - size), written))
    ids = q.ordered()[:, 0].tolist()
    if written >= size:
        assert ids == newest  # exactly the newest K keys, oldest first
    else:  # the first `written` slots hold the keys, the rest are still the random init
        assert q.keys[0, :written].tolist() == newest


def test_wrap_around_writes_both_ends():
    q = KeyQueue(dim=3, size=5)
    q.enqueue(_keys(0, 4))
    q.enqueue(_keys(4, 3))  # slots 4, 0, 1
    assert q.keys[0].tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    assert int(q.ptr) == 2


def test_batch_larger_than_queue_keeps_newest():
    q = KeyQueue(dim=3, size=4)
    q.enqueue(_keys(0, 1))
    q.enqueue(_keys(1, 10))
    assert q.ordered()[:, 0].tolist() == [7.0, 8.0, 9.0, 10.0]
    assert int(q.ptr) == 11 % 4


def test_state_dict_round_trip():
    q = KeyQueue(dim=4, size=10)
    q.enqueue(torch.randn(7, 4))
    r = KeyQueue(dim=4, size=10)
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.keys, q.keys) and int(r.ptr) == 7
    assert set(q.state_dict()) == {"keys", "ptr"}


def test_initial_keys_are_unit_vectors():
    q = KeyQueue(dim=16, size=32)
    assert torch.allclose(q.keys.norm(dim=0), torch.ones(32), atol=1e-5)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.82, 1.0, 1.5, 2.5])
def test_own_key_share_is_what_a_queue_over_shuffled_epochs_holds(ratio):
    """Push an image's id where its key goes, a batch at a time over freshly shuffled epochs, and count
    the images that find their own id from the previous epoch in the queue: the closed form's share."""
    from collections import deque

    from moco_core.pipeline import own_key_share

    n, batch = 2000, 16
    queue: deque[int] = deque(maxlen=int(ratio * n))
    g = torch.Generator().manual_seed(0)
    met = seen = 0
    for epoch in range(6):
        order = torch.randperm(n, generator=g).tolist()
        for start in range(0, n, batch):
            ids = order[start : start + batch]
            if epoch > 0:  # the queue is read for the loss, then the batch's keys are pushed
                queued = set(queue)
                met += sum(i in queued for i in ids)
                seen += len(ids)
            queue.extend(ids)
    assert met / seen == pytest.approx(own_key_share(n, int(ratio * n)), abs=0.02)


def test_queue_size_warning_when_the_queue_nears_the_training_set():
    from moco_core.config import ExperimentConfig
    from moco_core.pipeline import queue_size_warning

    def cfg(k: int, symmetric: bool = False) -> ExperimentConfig:
        return ExperimentConfig.model_validate({"moco": {"queue_size": k, "symmetric": symmetric}})

    assert queue_size_warning(1078, cfg(256)) is None  # the digits recipe: a quarter of the training set
    assert queue_size_warning(1078, cfg(512)) is None  # under half: fewer than one image in eight
    assert queue_size_warning(1_281_167, cfg(65536)) is None  # ImageNet with the paper's K
    msg = queue_size_warning(5000, cfg(4096))  # the CIFAR demo's K on 5,000 photographs
    assert msg is not None and "moco.queue_size=4096 holds the keys of 82% of the 5000 training images" in msg
    assert "about 34% of them find their own key" in msg
    assert "moco.queue_size=1024" in msg  # a power of two at most N/4
    assert "about 100% of them" in queue_size_warning(1078, cfg(4096))
    # the symmetric loss queues two keys an image: 8192 keys are 4096 images, 82 % of 5,000
    msg = queue_size_warning(5000, cfg(8192, symmetric=True))
    assert msg is not None and "keys of 82% of the 5000" in msg and "moco.queue_size=2048" in msg
    assert queue_size_warning(5000, cfg(4096, symmetric=True)) is None  # 41 %: 8 % of the images
