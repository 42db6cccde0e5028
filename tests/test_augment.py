"""Augmentation recipes: the views of whole batches (shapes, per-sample randomness, determinism under a
seed), the parameters as torchvision draws them, and the evaluation view."""

from __future__ import annotations

import random

import pytest
import torch
from torchvision.transforms import v2

from moco_core.augment import (
    COLUMNS,
    RECIPES,
    BatchViews,
    EvalView,
    build_eval_transform,
    draw_view,
    eval_box,
    normalization,
    recipe,
)
from moco_core.augment.params import crop_box


def _images(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (n, channels, size // 4, size // 4), generator=g).float()
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear").round().to(torch.uint8)


def _params(r, n: int, seed: int, hw=(40, 30)) -> torch.Tensor:
    return torch.stack([draw_view(r, random.Random(hash((seed, i))), *hw) for i in range(n)])


@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", RECIPES)
def test_views_shape_dtype_and_randomness_per_sample(name, channels, size):
    r = recipe(name, size, channels)
    views = BatchViews(r, *normalization(channels))
    images = _images(6, channels, 40)
    images[1] = images[0]  # the same image twice in one batch
    pq, pk = _params(r, 6, seed=0), _params(r, 6, seed=1)
    q, k = views(images, pq), views(images, pk)
    for v in (q, k):
        assert v.dtype == torch.float32 and v.shape == (6, channels, size, size)
        assert torch.isfinite(v).all()
    assert not torch.equal(q, k)  # the two views of an image differ
    assert not torch.equal(q[0], q[1])  # and two samples of one batch get their own crop and colours
    assert torch.equal(views(images, pq), q)  # the parameters decide everything


@pytest.mark.parametrize("name", RECIPES)
def test_gray_images_for_a_three_channel_recipe_are_viewed_in_gray_and_replicated(name):
    r = recipe(name, 32, 3)
    views = BatchViews(r, *normalization(3))
    gray = _images(8, 1, 40, seed=3)
    p = _params(r, 8, seed=2)
    one, three = views(gray, p), views(gray.expand(-1, 3, -1, -1).contiguous(), p)
    assert one.shape == three.shape == (8, 3, 32, 32)
    # the three-channel path's luma of a gray image is 0.9999 of it (torchvision's weights): std units
    assert (one - three).abs().max() < 2e-3
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in normalization(3))
    un = one * std + mean
    assert torch.allclose(un[:, 0], un[:, 1], atol=1e-5) and torch.allclose(un[:, 0], un[:, 2], atol=1e-5)


def test_parameters_are_a_function_of_their_seed_only():
    r = recipe("mocov2", 32, 3)
    a = draw_view(r, random.Random(123), 50, 40)
    torch.manual_seed(0)  # the global RNG plays no part
    assert torch.equal(a, draw_view(r, random.Random(123), 50, 40))
    assert a.shape == (len(COLUMNS),)
    assert not torch.equal(a, draw_view(r, random.Random(124), 50, 40))
    # nor is it touched: on a GPU a reseeded global RNG would also fix shuffle BN's permutation
    from moco_core.pipeline import PretrainSamples

    class Images:  # what the store's readers give: uint8 pixels and the original size
        def item(self, i: int):
            return _images(1, 3, 40, seed=i)[0].numpy(), (40, 40)

    torch_state, py_state = torch.get_rng_state(), random.getstate()
    PretrainSamples(Images(), r, seed=0)[(3, 1)]
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state


@pytest.mark.parametrize(
    "h,w,scale,ratio", [(50, 40, (0.2, 1.0), (3 / 4, 4 / 3)), (30, 90, (0.6, 1.0), (0.9, 1.1))]
)
def test_crops_are_drawn_as_random_resized_crop_draws_them(h, w, scale, ratio):
    rng = random.Random(0)
    for _ in range(300):
        x0, y0, bw, bh = crop_box(rng, h, w, scale, ratio)
        assert 0 <= x0 and 0 <= y0 and x0 + bw <= 1 + 1e-9 and y0 + bh <= 1 + 1e-9
        area, aspect = bw * bh, (bw * w) / (bh * h)  # of the original, in its pixels
        central = abs(x0 + bw / 2 - 0.5) < 0.02 and abs(y0 + bh / 2 - 0.5) < 0.02
        # rounding to whole pixels moves both a little; after 10 misses, the central crop of the
        # widest allowed aspect (what a 30 x 90 image mostly gets with ratio 0.9-1.1)
        assert central or scale[0] * 0.9 <= area <= 1.0 + 1e-9
        assert ratio[0] * 0.9 <= aspect <= ratio[1] * 1.1


def test_recipes_keep_the_reference_choices():
    cifar, cxr, v2r = recipe("cifar", 32, 3), recipe("cxr", 64, 1), recipe("mocov2", 32, 3)
    assert cifar.scale == (0.08, 1.0) and cifar.blur_p == 0 and cifar.flip and cifar.gray_p == 0.2
    assert cxr.flip is False and cxr.degrees == 10 and cxr.saturation == 0 and cxr.gray_p == 0
    assert v2r.blur_p == 0.5 and v2r.blur_kernel % 2 == 1 and recipe("mocov1", 32, 3).gray_first
    assert recipe("mocov2", 32, 1).hue == 0 and recipe("mocov2", 32, 1).gray_p == 0
    with pytest.raises(ValueError, match="mocov2"):
        recipe("simclr", 32, 3)
    with pytest.raises(ValueError, match="channels"):
        recipe("mocov2", 32, 2)


@pytest.mark.parametrize("channels", [1, 3])
def test_eval_view_is_deterministic_normalised_and_matches_the_single_image_transform(channels):
    images = _images(4, channels, 48)
    view = EvalView(24, channels, *normalization(channels))
    boxes = torch.stack([eval_box(48, 48, 24)] * 4)
    a = view(images, boxes)
    assert a.shape == (4, channels, 24, 24) and torch.equal(a, view(images, boxes))
    one = build_eval_transform(24, channels)(images[0])  # what a pulled encoder's preprocess does
    # bilinear here, antialiased there (a 2x downscale): close, not equal (0.05 measured, std units)
    assert (a[0] - one).abs().mean() < 0.08
    mean, std = normalization(channels)
    white = view(torch.full((1, channels, 30, 30), 255, dtype=torch.uint8), eval_box(30, 30, 24)[None])
    assert torch.allclose(white[0, :, 12, 12], (1 - torch.tensor(mean)) / torch.tensor(std))


def test_eval_box_is_the_centre_square_and_the_reference_crop_at_224():
    x0, y0, w, h = eval_box(100, 200, 32).tolist()
    assert (w, h) == (0.5, 1.0) and (x0, y0) == (0.25, 0.0)
    assert eval_box(256, 256, 224)[2] == pytest.approx(0.875)  # resize 256, centre crop 224
    t = build_eval_transform(224, 3)
    assert isinstance(t.transforms[0], v2.Resize) and t.transforms[0].size == [256]


def test_cifar_statistics():
    mean, std = normalization(3, "cifar10")
    assert mean == [0.4914, 0.4822, 0.4465] and std == [0.2023, 0.1994, 0.2010]
    assert normalization(1) == ([0.449], [0.226])  # gray: the mean of the three channels' constants
    out = build_eval_transform(32, 3, "cifar10")(torch.full((3, 32, 32), 128, dtype=torch.uint8))
    assert torch.allclose(out[:, 0, 0], (128 / 255 - torch.tensor(mean)) / torch.tensor(std), atol=1e-5)
