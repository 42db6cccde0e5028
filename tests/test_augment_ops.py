"""moco_core.augment.ops: each batched op against torchvision's per-image op, sample by sample."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms.v2 import functional as TF

from moco_core.augment import ops

B = 8


def _images(c: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, c, size, size, generator=g)


def _smooth(c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Bilinearly upsampled 4 x 4 noise: bilinear sampling differences between two paths stay small."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(B, c, 4, 4, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def _uniform(lo: float, hi: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(B, generator=g)


def _pixel_boxes(size: int, seed: int, min_side: int = 16) -> torch.Tensor:
    """(B, 4) integer (left, top, width, height) in pixels; sample 0 touches the top-left corner and
    sample 1 is the whole image, so the image border is covered."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(B):
        w, h = (int(v) for v in torch.randint(min_side, size + 1, (2,), generator=g))
        left = int(torch.randint(0, size - w + 1, (1,), generator=g))
        top = int(torch.randint(0, size - h + 1, (1,), generator=g))
        if i == 0:
            left, top = 0, 0
        if i == 1:
            left, top, w, h = 0, 0, size, size
        rows.append((left, top, w, h))
    return torch.tensor(rows, dtype=torch.float32)


# ---- resized_crops -------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resized_crops_match_torchvision(c, seed):
    size, out = 64, 32
    img = _smooth(c, size, seed)
    px = _pixel_boxes(size, seed)
    got = ops.resized_crops(img, px / size, out)
    assert got.shape == (B, c, out, out) and got.dtype == torch.float32
    for i, (left, top, w, h) in enumerate(px.int().tolist()):
        want = TF.resized_crop(img[i], top, left, h, w, [out, out], antialias=False)
        diff = (got[i] - want).abs()
        # measured on these seeds: max 0.0105, mean 0.00024, all of it on the output's rim, where
        # torchvision replicates the crop's edge and resized_crops reads the pixels just outside it
        assert diff.max() < 0.02
        assert diff.mean() < 0.003
        # inside the rim (out // side pixels wide when upscaling) the same bilinear sampling: 1.2e-7
        rx, ry = max(1, out // w), max(1, out // h)
        assert diff[:, ry:-ry, rx:-rx].max() < 1e-5


def test_image_border_is_replicated_as_torchvision():
    img = _smooth(3, 64)
    boxes = torch.tensor([[0.0, 0.0, 0.25, 0.25], [0.75, 0.75, 0.25, 0.25]]).repeat(B // 2, 1)
    got = ops.resized_crops(img, boxes, 64)  # 16 px windows in two corners, scaled up 4 times
    for i in range(B):
        left, top = (0, 0) if i % 2 == 0 else (48, 48)
        want = TF.resized_crop(img[i], top, left, 16, 16, [64, 64], antialias=False)
        # on the image's side both replicate its edge pixels (zero padding would darken them by up
        # to 0.3 here); only the rim on the image's inner side reads outside the window
        inner = (
            (slice(None), slice(0, -4), slice(0, -4))
            if i % 2 == 0
            else (slice(None), slice(4, None), slice(4, None))
        )
        torch.testing.assert_close(got[i][inner], want[inner], atol=1e-5, rtol=0)


def test_resized_crops_full_box_same_size_is_identity():
    img = _images(3)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(B, 1)
    torch.testing.assert_close(ops.resized_crops(img, boxes, 32), img, atol=1e-5, rtol=0)


def test_flip_mirrors_the_output_exactly():
    img = _smooth(3, 64)
    boxes = _pixel_boxes(64, 3) / 64
    flips = torch.tensor([True, False] * (B // 2))
    plain = ops.resized_crops(img, boxes, 24)
    flipped = ops.resized_crops(img, boxes, 24, flips=flips)
    assert torch.equal(flipped[flips], torch.flip(plain[flips], dims=[-1]))
    assert torch.equal(flipped[~flips], plain[~flips])
    # 0/1 floats work as flags too
    assert torch.equal(ops.resized_crops(img, boxes, 24, flips=flips.float()), flipped)


def test_angle_zero_is_no_angle_and_flip_composes():
    img = _smooth(3, 64)
    boxes = _pixel_boxes(64, 4) / 64
    flips = torch.tensor([True, False] * (B // 2))
    plain = ops.resized_crops(img, boxes, 24, flips=flips)
    # the rotating path builds its grid with affine_grid, the other one separably: equal to rounding
    rotated = ops.resized_crops(img, boxes, 24, flips=flips, angles=torch.zeros(B))
    torch.testing.assert_close(rotated, plain, atol=1e-5, rtol=0)


def test_angle_90_on_full_box_is_rot90():
    img = _images(3)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(B, 1)
    plain = ops.resized_crops(img, boxes, 32)
    for angle, k in ((90.0, 1), (180.0, 2), (-90.0, 3)):
        turned = ops.resized_crops(img, boxes, 32, angles=torch.full((B,), angle))
        # measured: max abs diff 2.4e-6
        torch.testing.assert_close(turned, torch.rot90(plain, k=k, dims=(-2, -1)), atol=1e-4, rtol=0)
        # and the direction is torchvision's rotate
        torch.testing.assert_close(turned, TF.rotate(img, angle), atol=1e-4, rtol=0)


def test_rotation_of_a_non_square_window_is_rotate_of_the_crop_inside():
    img = _smooth(3, 64, 7)
    boxes = torch.tensor([[0.2, 0.3, 0.6, 0.4]]).repeat(B, 1)  # wider than high: rotation is in output space
    angles = torch.tensor([15.0, -15.0, 30.0, -30.0, 20.0, -20.0, 25.0, -25.0])
    got = ops.resized_crops(img, boxes, 32, angles=angles)
    plain = ops.resized_crops(img, boxes, 32)
    for i in range(B):
        want = TF.rotate(plain[i], float(angles[i]), interpolation=TF.InterpolationMode.BILINEAR)
        # the centre, where torchvision's rotated crop has no black corners; the gap is torchvision
        # interpolating twice (measured max 0.009, mean 0.0004; the wrong direction gives over 0.1)
        diff = (got[i] - want).abs()[:, 8:-8, 8:-8]
        assert diff.max() < 0.02
        assert diff.mean() < 0.002


def test_rotation_turns_the_window_not_the_crop():
    img = 0.25 + 0.5 * _images(1)  # strictly positive, so black means "outside the image"
    angles = torch.full((B,), 45.0)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(B, 1)
    centre = torch.tensor([[0.25, 0.25, 0.5, 0.5]]).repeat(B, 1)
    out_full = ops.resized_crops(img, full, 32, angles=angles)
    out_centre = ops.resized_crops(img, centre, 32, angles=angles)
    corners = (slice(None), slice(None), [0, 0, -1, -1], [0, -1, 0, -1])
    # whole image turned 45 degrees: the output's corners fall outside the image, black
    assert out_full[corners].abs().max() == 0
    # a central window turned 45 degrees: its corners lie inside the image and read it
    assert out_centre[corners].min() > 0.2


def test_different_boxes_give_different_outputs():
    img = _smooth(3, 64)[:1].repeat(2, 1, 1, 1)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]])
    got = ops.resized_crops(img, boxes, 16)
    assert (got[0] - got[1]).abs().max() > 0.05


def test_uint8_input_is_float_input_over_255():
    g = torch.Generator().manual_seed(5)
    img = torch.randint(0, 256, (B, 3, 48, 48), generator=g, dtype=torch.uint8)
    boxes = _pixel_boxes(48, 5) / 48
    flips = torch.tensor([True, False] * (B // 2))
    angles = _uniform(-10, 10, 5)
    from_u8 = ops.resized_crops(img, boxes, 24, flips=flips, angles=angles)
    from_float = ops.resized_crops(img.float() / 255, boxes, 24, flips=flips, angles=angles)
    assert from_u8.dtype == torch.float32
    assert torch.equal(from_u8, from_float)


# ---- colour ---------------------------------------------------------------------------------------

COLOUR_OPS = [
    ("adjust_brightness", TF.adjust_brightness, 0.6, 1.4, 1e-5),
    ("adjust_contrast", TF.adjust_contrast, 0.6, 1.4, 1e-5),
    ("adjust_saturation", TF.adjust_saturation, 0.0, 2.0, 1e-5),
    ("adjust_hue", TF.adjust_hue, -0.5, 0.5, 1e-4),
]


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize(("name", "tv_op", "lo", "hi", "tol"), COLOUR_OPS)
def test_colour_op_matches_torchvision_per_sample(name, tv_op, lo, hi, tol, c):
    x = _images(c, seed=11)
    f = _uniform(lo, hi, 12)
    got = getattr(ops, name)(x, f)
    want = torch.stack([tv_op(x[i], float(f[i])) for i in range(B)])
    # measured: max abs diff 0 (brightness, hue), 6e-8 (contrast, saturation)
    torch.testing.assert_close(got, want, atol=tol, rtol=0)
    if c == 1 and name in ("adjust_saturation", "adjust_hue"):
        assert torch.equal(got, x)
    else:
        assert not torch.equal(got, x)


def test_hue_keeps_grey_pixels_grey():
    x = _images(1, seed=13).repeat(1, 3, 1, 1)
    torch.testing.assert_close(ops.adjust_hue(x, _uniform(-0.5, 0.5, 14)), x, atol=1e-6, rtol=0)


def _jitter_params(seed: int):
    g = torch.Generator().manual_seed(seed)
    apply = torch.rand(B, generator=g) < 0.7
    apply[0], apply[1] = True, False
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(B)])
    return (
        apply,
        0.6 + 0.8 * torch.rand(B, generator=g),
        0.6 + 0.8 * torch.rand(B, generator=g),
        0.6 + 0.8 * torch.rand(B, generator=g),
        -0.1 + 0.2 * torch.rand(B, generator=g),
        order,
    )


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_color_jitter_matches_torchvision_in_each_samples_order(c, seed):
    x = _images(c, seed=20 + seed)
    apply, bri, con, sat, hue, order = _jitter_params(seed)
    got = ops.color_jitter(x, apply, bri, con, sat, hue, order)
    tv = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(B):
        if not apply[i]:
            assert torch.equal(got[i], x[i])
            continue
        want = x[i]
        factors = (bri[i], con[i], sat[i], hue[i])
        for k in order[i].tolist():
            want = tv[k](want, float(factors[k]))
        # measured: max abs diff 1.3e-6
        torch.testing.assert_close(got[i], want, atol=1e-4, rtol=0)
        assert not torch.equal(got[i], x[i])


def test_color_jitter_order_matters():
    x = _images(3, seed=30)[:2]
    apply = torch.ones(2, dtype=torch.bool)
    f = torch.full((2,), 1.5)
    h = torch.full((2,), 0.3)
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    got = ops.color_jitter(x[:1].repeat(2, 1, 1, 1), apply, f, f, f, h, order)
    assert (got[0] - got[1]).abs().max() > 1e-3


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c=st.sampled_from([1, 3]))
def test_color_jitter_with_neutral_factors_is_identity(seed, c):
    x = _images(c, size=16, seed=seed)
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(B)])
    ones = torch.ones(B)
    got = ops.color_jitter(x, torch.ones(B, dtype=torch.bool), ones, ones, ones, torch.zeros(B), order)
    torch.testing.assert_close(got, x, atol=1e-6, rtol=0)


# ---- grayscale, blur, normalize -------------------------------------------------------------------


def test_grayscale_matches_torchvision():
    x = _images(3, seed=40)
    apply = torch.tensor([True, False] * (B // 2))
    got = ops.grayscale(x, apply)
    for i in range(B):
        if apply[i]:
            torch.testing.assert_close(
                got[i], TF.rgb_to_grayscale(x[i], num_output_channels=3), atol=1e-6, rtol=0
            )
            assert torch.equal(got[i, 0], got[i, 2])
        else:
            assert torch.equal(got[i], x[i])
    x1 = _images(1, seed=41)
    assert torch.equal(ops.grayscale(x1, torch.ones(B, dtype=torch.bool)), x1)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("k", [3, 9])
def test_gaussian_blur_matches_torchvision(c, k):
    x = _images(c, seed=50 + k)
    apply = torch.tensor([True, True, False] + [True] * (B - 3))
    sigma = _uniform(0.1, 2.0, 51)
    sigma[2] = 0.0  # unapplied samples may carry any sigma
    got = ops.gaussian_blur(x, apply, sigma, k)
    assert torch.isfinite(got).all()
    for i in range(B):
        if not apply[i]:
            assert torch.equal(got[i], x[i])
            continue
        s = float(sigma[i])
        want = TF.gaussian_blur(x[i], [k, k], [s, s])
        # measured: max abs diff 9e-7
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=0)
        assert not torch.equal(got[i], x[i])


def test_gaussian_blur_large_kernel_is_separable_and_fast():
    g = torch.Generator().manual_seed(60)
    x = torch.rand(B, 3, 224, 224, generator=g)
    sigma = 0.1 + 1.9 * torch.rand(B, generator=g)
    start = time.perf_counter()
    got = ops.gaussian_blur(x, torch.ones(B, dtype=torch.bool), sigma, 23)
    elapsed = time.perf_counter() - start
    assert got.shape == x.shape
    assert elapsed < 10.0
    for i in (0, B - 1):
        s = float(sigma[i])
        want = TF.gaussian_blur(x[i], [23, 23], [s, s])
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
def test_normalize_matches_torchvision(c):
    x = _images(c, seed=70)
    mean, std = [0.485, 0.456, 0.406][:c], [0.229, 0.224, 0.225][:c]
    got = ops.normalize(x, mean, std)
    torch.testing.assert_close(got, TF.normalize(x, mean, std), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        ops.normalize(x, [0.5] * (c + 1), [0.5] * (c + 1))
    if c == 1:  # a gray image against three channels' statistics: replicated by the same pass
        rgb = ops.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        want = TF.normalize(x.expand(-1, 3, -1, -1), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        torch.testing.assert_close(rgb, want, atol=1e-6, rtol=0)
