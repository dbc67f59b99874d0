"""Images in and out with Pillow: ``read_image`` and the PNGs of ``emcli segment``.

The only module that imports Pillow (inside the functions). An image becomes
sRGB colours in [0, 1] and a mask of visible pixels (alpha above 0): EXIF
orientation applied; palette, greyscale, 16-bit, CMYK and other modes converted;
a multi-frame file gives its first frame with a notice. An image with more
pixels than ``max_pixels`` (Pillow's decompression-bomb limit by default) is
refused with one line before it is decoded; Pillow's own warning is never
raised, because the check is done here with Pillow's limit lifted.
"""

from __future__ import annotations

import hashlib
import io as stdio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emcli.errors import DataError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's MAX_IMAGE_PIXELS: 1024 · 1024 · 1024 // 4 // 3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class ImageData:
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    visible: np.ndarray  # (H, W) bool: alpha above 0
    sha256: str
    mode: str  # the file's Pillow mode
    notices: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.visible.shape[0]), int(self.visible.shape[1])


def read_image(path: str, max_pixels: int | None = None) -> ImageData:
    """The image at ``path`` as colours and a visibility mask (see the module's docstring)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the image ({exc.strerror or exc})") from exc
    notices: list[str] = []
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # checked here, before decoding, as one line
    try:
        try:
            img: Any = Image.open(stdio.BytesIO(data))
        except UnidentifiedImageError:
            raise DataError(
                f"{path}: not an image Pillow can read; give a PNG, JPEG or TIFF file"
            ) from None
        width, height = img.size
        if width * height > limit:
            raise DataError(
                f"{path}: {width}×{height} is {width * height:,} pixels, more than the limit of "
                f"{limit:,} (a guard against decompression bombs); if you trust the file, "
                f"pass --max-pixels {width * height}"
            )
        frames = int(getattr(img, "n_frames", 1))
        if frames > 1:
            notices.append(f"{frames} frames; using the first")
            img.seek(0)
        mode = img.mode
        try:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            rgb, alpha = _as_rgba(img)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: cannot decode the image ({exc}); is it complete?") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    if mode not in ("RGB", "RGBA"):
        notices.append(f"{mode} image converted to RGB")
    return ImageData(rgb, alpha > 0, hashlib.sha256(data).hexdigest(), mode, notices)


def _as_rgba(img: object) -> tuple[np.ndarray, np.ndarray]:
    """Colours in [0, 1] (float32) and alpha (0–255) of any Pillow mode."""
    mode = img.mode  # type: ignore[attr-defined]
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # greyscale beyond 8 bits
        grey = np.asarray(img, dtype=np.float64)
        top = 1.0 if mode == "F" else 65535.0
        g = np.clip(grey / top, 0.0, 1.0).astype(np.float32)
        return np.repeat(g[..., None], 3, axis=2), np.full(g.shape, 255, dtype=np.uint8)
    rgba = np.asarray(img.convert("RGBA"))  # type: ignore[attr-defined]
    return (rgba[..., :3] / np.float32(255.0)).astype(np.float32, copy=False), rgba[..., 3]


def rgba_png(rgba: np.ndarray) -> bytes:
    """PNG bytes of an RGBA ``uint8`` image (no time stamp: the same pixels, the same bytes)."""
    from PIL import Image

    buf = stdio.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def label_png(labels: np.ndarray, colours: np.ndarray) -> bytes:
    """The label map as a palette PNG: pixel value = label, 255 = transparent (no label).

    Read back with Pillow, ``np.asarray(Image.open(path))`` is the labels; viewed,
    each label has its component's colour.
    """
    from PIL import Image

    if colours.shape[0] > 255:
        raise DataError("a label map holds at most 255 components")
    values = np.where(labels < 0, 255, labels).astype(np.uint8)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: colours.shape[0]] = np.round(colours * 255.0).astype(np.uint8)
    img = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
    img.putpalette(palette.ravel().tolist())
    buf = stdio.BytesIO()
    img.save(buf, format="PNG", transparency=255)
    return buf.getvalue()
