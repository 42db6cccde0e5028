"""Augmentation recipes: shapes, dtypes, randomness of the views, determinism of evaluation."""

from __future__ import annotations

import pytest
import torch

from moco_core.augment import RECIPES, TwoViews, build_eval_transform, build_pretrain_transform, normalization


def _image(channels: int, h: int = 40, w: int = 30, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (channels, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_output_shape_dtype_and_views_differ(recipe, channels, size):
    torch.manual_seed(0)
    views = TwoViews(build_pretrain_transform(recipe, size, channels))
    for h, w in [(40, 30), (size // 2, size // 2 + 3)]:  # larger and smaller than the output
        q, k = views(_image(channels, h, w))
        for v in (q, k):
            assert v.dtype == torch.float32
            assert v.shape == (channels, size, size)
            assert torch.isfinite(v).all()
        assert not torch.equal(q, k)


@pytest.mark.parametrize("channels", [1, 3])
def test_pretrain_transform_is_reproducible_under_a_seed(channels):
    t = build_pretrain_transform("mocov2", 32, channels)
    img = _image(channels)
    torch.manual_seed(7)
    a = t(img)
    torch.manual_seed(7)
    assert torch.equal(a, t(img))


@pytest.mark.parametrize("channels", [1, 3])
def test_eval_transform_is_deterministic_and_normalised(channels):
    t = build_eval_transform(24, channels)
    img = _image(channels, 50, 36)
    a, b = t(img), t(img)
    assert a.dtype == torch.float32 and a.shape == (channels, 24, 24)
    assert torch.equal(a, b)
    mean, std = normalization(channels)
    white = t(torch.full((channels, 30, 30), 255, dtype=torch.uint8))
    assert torch.allclose(white[:, 0, 0], (1 - torch.tensor(mean)) / torch.tensor(std))


def test_unknown_recipe_and_channels_are_errors():
    with pytest.raises(ValueError, match="mocov2"):
        build_pretrain_transform("simclr", 32, 3)
    with pytest.raises(ValueError, match="channels"):
        build_pretrain_transform("mocov2", 32, 2)
    assert len(normalization(1)[0]) == 1 and len(normalization(3)[1]) == 3


def test_cifar_statistics_and_the_demos_views():
    mean, std = normalization(3, "cifar10")
    assert mean == [0.4914, 0.4822, 0.4465] and std == [0.2023, 0.1994, 0.2010]
    assert normalization(1) == ([0.449], [0.226])  # gray: the mean of the three channels' constants
    img = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    out = build_eval_transform(32, 3, "cifar10")(img)
    assert torch.allclose(out[:, 0, 0], (128 / 255 - torch.tensor(mean)) / torch.tensor(std), atol=1e-5)
    ops = [type(op).__name__ for op in build_pretrain_transform("cifar", 32, 3).transforms]
    assert "GaussianBlur" not in str(build_pretrain_transform("cifar", 32, 3))  # no blur at 32 px
    assert ops[0] == "RandomResizedCrop" and build_pretrain_transform("cifar", 32, 3).transforms[0].scale == (
        0.08,
        1.0,
    )
