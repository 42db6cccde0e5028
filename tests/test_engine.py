"""Single-process training with moco_core alone: learning on real photographs, and the step's guards."""

import pytest
import torch

from moco_core.backbones import backbone_for
from moco_core.config import ExperimentConfig, load_config
from moco_core.data import read_dataset
from moco_core.engine import NonFiniteLossError, build_train_state, fit, train_step
from moco_core.eval import ProtocolSettings, Task, run_protocols
from moco_core.pipeline import pretrain_loader, steps_per_epoch

from .conftest import REPO, small_config

CIFAR_DEV = REPO.parent / "shared" / "data" / "cifar10-dev"  # 5,000 / 1,000 / 1,000 real photographs


@pytest.mark.slow
def test_single_process_training_learns_on_photographs(tmp_path):
    """The MoCo CIFAR-10 demo's recipe (its views, split BN in both encoders, linear head, T 0.1, m 0.99)
    on real photographs, sized for the suite: ResNet-18 with its ImageNet stem (a sixteenth of the
    small stem's compute at 32 px), batch 64, lr 0.03, K 1024 (a fifth of the 5,000 images), 5 epochs.
    What it buys shows with 10 % of the labels: test kNN +0.056 / +0.038 / +0.044 over the random init
    for seeds 0-2, at every label -0.004 to +0.023 (docs/evaluate.md)."""
    if not CIFAR_DEV.is_dir():
        pytest.skip(f"{CIFAR_DEV} is not there (the project's shared data, beside the checkout)")
    torch.set_num_threads(2)
    cfg = load_config(
        REPO / "experiments" / "cifar_reference_r18.yaml",
        [
            f"data.root={CIFAR_DEV}",
            "data.num_workers=0",
            "model.small_image_stem=false",
            "optim.batch_size=64",
            "optim.lr=0.03",
            "optim.epochs=5",
            "moco.split_bn_groups=4",
            "moco.queue_size=1024",
            f"run.storage_path={tmp_path / 'runs'}",
        ],
    )
    parts = read_dataset(CIFAR_DEV, partitions=("train", "val", "test"))
    loader = pretrain_loader(cfg, parts["train"])
    state = build_train_state(cfg, steps_per_epoch(len(parts["train"]), cfg))
    history = fit(state, loader, cfg)
    assert state.step == 5 * (5000 // 64) and len(history) == 5
    # the instance task is learnt: positives end far more similar than negatives
    assert history[-1]["train/pos_logit"] > history[-1]["train/neg_logit"] + 0.1
    torch.manual_seed(cfg.run.seed)
    random_init = backbone_for(cfg)
    settings = ProtocolSettings(knn_k=200, knn_t=0.1, bootstrap=0)

    def knn_top1(backbone: torch.nn.Module) -> float:  # on test, 10 % of the train labels in the bank
        (result,) = run_protocols(backbone, Task(parts, cfg.data), ["knn"], [0.1], settings, cfg.run.seed)
        return result.value

    trained, base = knn_top1(state.model.encoder_q.backbone), knn_top1(random_init)
    print(f"test kNN top-1 (k 200, T 0.1, 10 % of the labels): trained {trained:.4f}, random init {base:.4f}")
    assert trained > base + 0.02


def test_non_finite_loss_raises_before_any_update():
    cfg = ExperimentConfig.model_validate(
        {
            "data": {"image_size": 8, "channels": 1},
            "moco": {"queue_size": 16, "split_bn_groups": 2},
            "optim": {"batch_size": 4, "epochs": 1},
            "run": {"channels_last": False},
        }
    )
    state = build_train_state(cfg, steps_per_epoch=1)
    before = {k: v.detach().clone() for k, v in state.model.named_parameters()}
    queue_before = state.model.queue.keys.clone()
    x = torch.randn(4, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        train_step(state.model, state, x, x, cfg, torch.device("cpu"))
    # no optimizer step, no momentum update, no enqueue (BN running statistics of the forward aside)
    assert all(torch.equal(before[k], p) for k, p in state.model.named_parameters())
    assert torch.equal(queue_before, state.model.queue.keys) and state.step == 0


def _assert_same_model(resumed, straight) -> None:
    """Every tensor of the model (encoders, heads, queue and its pointer) as in the straight run."""
    a, b = resumed.model.state_dict(), straight.model.state_dict()
    assert int(a["queue.ptr"]) == int(b["queue.ptr"])
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


@pytest.mark.filterwarnings("ignore:.*meta parameter")
def test_restore_onto_another_device_than_the_checkpoints(tmp_path):
    """A checkpoint is read onto the CPU and ``load_state_dict`` places each tensor: restoring into a state
    on another device works (the RNG states stay CPU tensors). Mapping the file straight to the target
    device, as a GPU resume did, fails at ``set_rng_state``."""
    from moco_core.checkpoint import load_checkpoint, restore, save_checkpoint

    cfg = ExperimentConfig.model_validate(
        {
            "data": {"image_size": 8, "channels": 1},
            "moco": {"queue_size": 16, "split_bn_groups": 2},
            "optim": {"batch_size": 4, "epochs": 1},
        }
    )
    source = build_train_state(cfg, steps_per_epoch=3)
    x = torch.randn(4, 1, 8, 8)
    train_step(source.model, source, x, x, cfg, torch.device("cpu"))
    save_checkpoint(source, tmp_path)
    assert all(t.device.type == "cpu" for t in _tensors(load_checkpoint(tmp_path)))

    elsewhere = build_train_state(cfg, steps_per_epoch=3, device="meta")  # not the checkpoint's device
    restore(elsewhere, tmp_path)
    assert elsewhere.step == 1 and elsewhere.model.queue.keys.device.type == "meta"
    with pytest.raises(TypeError, match="RNG state must be a torch.ByteTensor"):
        elsewhere.load_state_dict(torch.load(tmp_path / "state.pt", map_location="meta", weights_only=True))


def _tensors(d):
    if isinstance(d, torch.Tensor):
        yield d
    elif isinstance(d, dict):
        for v in d.values():
            yield from _tensors(v)
    elif isinstance(d, (list, tuple)):
        for v in d:
            yield from _tensors(v)


def _tiny(**run) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "data": {"image_size": 8, "channels": 1},
            "moco": {"queue_size": 16, "split_bn_groups": 2},
            "optim": {"batch_size": 4, "epochs": 1},
            "run": {"channels_last": False, **run},
        }
    )


def test_fp16_steps_through_a_gradient_scaler_kept_in_the_checkpoint(tmp_path):
    from moco_core.checkpoint import restore, save_checkpoint

    cfg = _tiny(precision="fp16")
    state = build_train_state(cfg, steps_per_epoch=4)
    assert state.scaler is not None and build_train_state(_tiny(), steps_per_epoch=4).scaler is None
    x = torch.randn(4, 1, 8, 8)
    m = train_step(state.model, state, x, x, cfg, torch.device("cpu"))
    assert torch.isfinite(torch.tensor(m["train/loss"])) and state.step == 1
    state.scaler.update(1234.0)  # a scale the fresh scaler does not have
    save_checkpoint(state, tmp_path)
    resumed = build_train_state(cfg, steps_per_epoch=4)
    restore(resumed, tmp_path)
    assert resumed.scaler.get_scale() == 1234.0


def test_resume_with_other_steps_per_epoch_is_refused(tmp_path):
    from moco_core.checkpoint import restore, save_checkpoint
    from moco_core.config import ConfigError

    save_checkpoint(build_train_state(_tiny(), steps_per_epoch=4), tmp_path)
    with pytest.raises(ConfigError, match="written with 4 steps per epoch and this run has 5"):
        restore(build_train_state(_tiny(), steps_per_epoch=5), tmp_path)


def test_linear_lr_scaling_follows_the_batch():
    base = {"optim": {"lr": 0.03, "batch_size": 128, "epochs": 1}}
    assert ExperimentConfig.model_validate(base).optim.peak_lr == 0.03  # the recipes' lr, as given
    scaled = ExperimentConfig.model_validate({"optim": {**base["optim"], "lr_scaling": "linear"}})
    assert scaled.optim.peak_lr == pytest.approx(0.03 * 128 / 256)
    state = build_train_state(scaled, steps_per_epoch=2)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.015)


def test_resume_from_a_mid_epoch_checkpoint_continues_identically(digits_root, tmp_path):
    """A checkpoint after step 3 of a 4-step epoch: the resumed run skips the 3 batches it trained on
    (the epoch's order is the same) and ends where training straight through ends."""
    import io

    torch.set_num_threads(1)
    cfg = small_config(
        digits_root, tmp_path, "optim.epochs=2", "run.max_steps_per_epoch=4", "moco.queue_size=40"
    )
    parts = read_dataset(digits_root, partitions=("train",))
    spe = steps_per_epoch(len(parts["train"]), cfg)
    straight = build_train_state(cfg, spe)
    fit(straight, pretrain_loader(cfg, parts["train"]), cfg)

    class Crash(Exception):
        pass

    first = build_train_state(cfg, spe)
    buf = io.BytesIO()

    def checkpoint_then_crash(m: dict) -> None:
        if m["step"] == 3:
            torch.save(first.state_dict(), buf)
            raise Crash

    with pytest.raises(Crash):
        fit(first, pretrain_loader(cfg, parts["train"]), cfg, on_step=checkpoint_then_crash)
    buf.seek(0)
    resumed = build_train_state(cfg, spe)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert (resumed.step, resumed.epoch) == (3, 0)
    history = fit(resumed, pretrain_loader(cfg, parts["train"]), cfg)
    assert resumed.step == straight.step == 8 and len(history) == 2
    _assert_same_model(resumed, straight)


def test_sampler_starts_at_an_offset_of_the_same_order():
    from moco_core.pipeline import ShardSampler

    s = ShardSampler(20, rank=1, world_size=2, seed=3)
    s.set_epoch(2)
    whole = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == whole[4:] and len(s) == len(whole) - 4
