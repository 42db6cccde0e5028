"""The named augmentation recipes: what each view of a recipe may do, as plain numbers.

* ``mocov1``: RandomResizedCrop (scale 0.2-1), RandomGrayscale 0.2, ColorJitter(0.4, 0.4, 0.4, 0.4),
  horizontal flip (He et al. 2020).
* ``mocov2``: RandomResizedCrop (0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, RandomGrayscale 0.2,
  GaussianBlur (kernel ~10 % of the image, odd, sigma 0.1-2) with p 0.5, horizontal flip (Chen et al. 2020).
* ``cxr``: chest X-rays: mild crops (scale 0.6-1, ratio 0.9-1.1), rotation within +-10 degrees,
  brightness/contrast jitter only (p 0.8); no hue/saturation, no grayscale flip-flop, no flip (anatomy
  has a side). Also the views of ``experiments/digits.yaml``: tiny gray digits need mild views too.
* ``cifar``: the MoCo CIFAR-10 demo's: RandomResizedCrop (0.08-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with
  p 0.8, RandomGrayscale 0.2, horizontal flip; no blur (a blur kernel at 32 px erases what is left).

``lincls`` (not a pretraining recipe): the views of the reference's linear classification,
RandomResizedCrop (0.08-1) and horizontal flip.

With one channel, the colour operations that need three (saturation, hue, grayscale) are left out;
brightness and contrast stay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

RECIPES = ("mocov1", "mocov2", "cxr", "cifar")
# the views a linear classifier trains on in the reference's protocol (main_lincls.py): crops, flips
LINCLS = "lincls"


@dataclass(frozen=True)
class Recipe:
    """One view's randomness: each field is what torchvision's transform of that name takes."""

    name: str
    image_size: int
    channels: int
    scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True  # RandomHorizontalFlip (p 0.5)
    degrees: float = 0.0  # RandomRotation(degrees)
    jitter_p: float = 0.8  # RandomApply([ColorJitter(b, c, s, h)], p)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2  # RandomGrayscale
    gray_first: bool = False  # grayscale before the jitter (MoCo v1's order)
    blur_p: float = 0.0  # RandomApply([GaussianBlur(kernel, sigma)], p)
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    @property
    def blur_kernel(self) -> int:
        k = max(3, int(0.1 * self.image_size))
        return k if k % 2 else k + 1


def recipe(name: str, image_size: int, channels: int) -> Recipe:
    """Recipe ``name`` (one of ``RECIPES``) for ``channels``-channel images of ``image_size``."""
    if name not in (*RECIPES, LINCLS):
        raise ValueError(f"unknown augmentation recipe {name!r}; choose one of {', '.join(RECIPES)}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    base = {"name": name, "image_size": image_size, "channels": channels}
    if name == "mocov1":
        r = Recipe(**base, jitter_p=1.0, hue=0.4, gray_first=True)
    elif name == "mocov2":
        r = Recipe(**base, blur_p=0.5)
    elif name == "cifar":
        r = Recipe(**base, scale=(0.08, 1.0))
    elif name == LINCLS:
        r = Recipe(**base, scale=(0.08, 1.0), jitter_p=0.0, gray_p=0.0)
    else:  # cxr
        r = Recipe(**base, scale=(0.6, 1.0), ratio=(0.9, 1.1), flip=False, degrees=10.0)
        r = replace(r, saturation=0.0, hue=0.0, gray_p=0.0)
    if channels == 1:
        r = replace(r, saturation=0.0, hue=0.0, gray_p=0.0)
    return r


__all__ = ["RECIPES", "LINCLS", "Recipe", "recipe"]
