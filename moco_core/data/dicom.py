"""DICOM images (what hospitals hand over) as the pixels the rest of the pipeline reads.

The stored values become what a radiologist's viewer shows: the modality LUT (RescaleSlope and
RescaleIntercept), then the VOI LUT or the window (WindowCenter / WindowWidth) when the file has one,
then MONOCHROME1 inverted (its 0 is white). The result is a float image that ``images.decode`` scales to
8 bits as any other high-depth image (min-max per image, never clipped). Colour (RGB, YBR) comes back
as RGB. Compressed transfer syntaxes are decoded by pydicom's pixel handlers (pylibjpeg and its plugins
for JPEG, JPEG-LS and JPEG 2000, where they are installed); a file that cannot be decoded is a fault
naming its transfer syntax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GRAY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


def is_dicom(path: str | Path) -> bool:
    """A ``.dcm`` name, or the ``DICM`` marker after the 128-byte preamble."""
    if str(path).lower().endswith((".dcm", ".dicom")):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | Path) -> Image.Image:
    """The first frame of a DICOM file as a PIL image (mode ``F`` for gray, ``RGB`` for colour);
    raises ``ValueError`` saying what is wrong with the file."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises InvalidDicomError, OSError, struct errors...
        raise ValueError(f"not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise ValueError("DICOM file without pixel data (no PixelData element)")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GRAY + COLOUR:
        raise ValueError(
            f"DICOM photometric interpretation {photometric or '(none)'} is not handled "
            f"(handled: {', '.join(GRAY + COLOUR)})"
        )
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        pixels = ds.pixel_array
    except Exception as e:  # NotImplementedError (no handler), RuntimeError / ValueError (bad data)
        name = f"{syntax.name} ({syntax})" if syntax is not None else "unknown"
        raise ValueError(
            f"cannot decode the DICOM pixel data, transfer syntax {name} ({type(e).__name__}: {e}); "
            "compressed syntaxes are decoded by pylibjpeg and its plugins (pip install "
            "'moco-service[dicom]' where they are missing)"
        ) from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if photometric in COLOUR:
        if pixels.ndim != 3:
            raise ValueError(
                f"DICOM {photometric} image with shape {pixels.shape}: expected rows x columns x 3"
            )
        return Image.fromarray(_to_uint8(pixels)).convert("RGB")
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float32)
    if photometric == "MONOCHROME1":
        values = values.max() + values.min() - values
    return Image.fromarray(values, mode="F")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    a = pixels.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    return np.zeros(a.shape, np.uint8) if hi <= lo else np.rint((a - lo) * (255 / (hi - lo))).astype(np.uint8)


__all__ = ["is_dicom", "read_dicom"]
