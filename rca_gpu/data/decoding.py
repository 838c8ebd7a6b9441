"""Decoding one image file into the 8-bit picture a viewer shows, within a memory budget.

Memory budget
-------------
A file's header says how large its picture is; a 38-byte WebP or a 200 KiB TIFF may declare 12,000 x 12,000
pixels. Before any pixel is decoded, :func:`decode_cost` estimates the bytes that decoding and converting the
first frame will hold at once, from the header alone::

    pixels x bytes per pixel (of the decoded frame, the decoder's copies, the conversions) + overhead

(:func:`decode_cost`; only the first frame is decoded, so a file's other frames cost nothing). When the
estimate exceeds the budget of one image (:func:`image_budget`: ``--max-image-memory``, by default
:data:`DEFAULT_MEMORY_SHARE` of the machine's memory, shared by the processes that decode at once):

1. a JPEG is decoded at 1/2, 1/4 or 1/8 scale by its decoder (Pillow's draft mode), the largest that fits;
2. another format is decoded whole and at once reduced by the smallest integer factor (``Image.reduce``, a
   box filter) that makes the conversions fit, when its decoded frame alone fits;
3. otherwise the image is rejected, its reason starting with :data:`TOO_LARGE`, naming its size, the
   estimate and the budget.

A picture decoded reduced is noted in its row (:data:`REDUCED_NOTE`). Both outcomes depend on the budget, so
the feature cache never reuses them (:func:`depends_on_budget`).

Pixels
------
What a viewer shows is what is analysed (:func:`to_8bit`): the EXIF orientation is applied; integer images
wider than 8 bits are scaled by the range of their type (see :func:`wide_to_uint8`); transparency is
composited onto black or white, whichever contrasts with the opaque pixels (:func:`background_for`).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rca_gpu.data.properties import STRIP_PIXELS

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger("rca_gpu")

#: Refuse images above this many pixels (decompression bombs) whatever the budget, instead of PIL's warning.
MAX_IMAGE_PIXELS = 20_000 * 20_000
#: Share of the machine's memory (or of the process's cgroup limit, when lower) that decoding may use when
#: ``--max-image-memory`` is not given; the processes that decode at once share it.
DEFAULT_MEMORY_SHARE = 0.25
#: The smallest budget accepted (``--max-image-memory``): twice :data:`OVERHEAD`.
MIN_IMAGE_MEMORY = 64 * 2**20
#: Start of the reason of an image rejected by the budget, and of the note of one decoded reduced.
TOO_LARGE = "image too large to decode within the memory budget"
REDUCED_NOTE = "decoded reduced to fit the memory budget"
#: Bytes Pillow stores per pixel, by mode (multi-band modes hold 4 bytes a pixel; anything else: 4).
STORED_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "I;16": 2,
    "I;16L": 2,
    "I;16B": 2,
    "I;16N": 2,
    "I;16S": 2,
    "I;16BS": 2,
}
#: Copies of the decoded frame a format's decoder holds (measured with Pillow 13): libwebp's canvas, the
#: frame's #: bytes and their reader beside Pillow's image; libtiff's strip, which may be the whole image.
DECODER_COPIES = {"WEBP": 4, "TIFF": 2}
#: Bytes per pixel of the 8-bit picture that an extractor's transform holds at once (torchvision's ToImage
#: makes an array through a bytes object; its Resize of a one-channel picture works in float32).
TRANSFORM_BYTES = 6
#: Fixed cost of decoding one image besides its pixels: the strips of :mod:`rca_gpu.data.properties` and of
#: :func:`wide_to_uint8` (:data:`STRIP_PIXELS` pixels each), buffers of the decoders.
OVERHEAD = 32 * 2**20
#: Pillow modes whose samples are wider than 8 bits: converted by their value range (see :func:`to_8bit`).
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16BS", "I;32", "I;32B", "I", "F")
#: Backgrounds that transparent pixels are composited onto: light content goes on black, dark on white.
DARK, LIGHT = (0, 0, 0), (255, 255, 255)
#: Version of the decoding rules, part of the feature cache's key: bump it when a picture decodes differently.
DECODE_VERSION = 2

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


# --------------------------------------------------------------------------------------------------
# The budget
# --------------------------------------------------------------------------------------------------


def parse_size(value: object, *, name: str = "--max-image-memory") -> int:
    """Bytes from ``4GiB``, ``512MiB``, ``1.5G``, ``2000000`` (units: B, KB/MB/GB/TB = powers of 1000,
    KiB/MiB/GiB/TiB = powers of 1024, K/M/G/T as KB/MB/GB/TB; any case) or an int of bytes.

    Raises
    ------
    rca_gpu.errors.SpecError
        Not a size, or below :data:`MIN_IMAGE_MEMORY`: "The --max-image-memory option must be a size such as
        4GiB or 512MiB, at least 16 MiB. Got 'x' instead."
    """
    import re

    from rca_gpu.errors import SpecError, printable

    def fail() -> SpecError:
        return SpecError(
            f"The {name} option must be a size such as 4GiB or 512MiB (bytes, KB, MB, GB, KiB, MiB, "
            f"GiB), at least {MIN_IMAGE_MEMORY // 2**20} MiB. Got {printable(repr(value))} instead. "
            f"Fix {name} or the config key 'max_image_memory'."
        )

    if isinstance(value, bool):
        raise fail()
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", value)
        if not match or match[2].lower() not in _UNITS:
            raise fail()
        amount = float(match[1]) * _UNITS[match[2].lower()]
        if not math.isfinite(amount):
            raise fail()
        size = int(amount)
    else:
        raise fail()
    if size < MIN_IMAGE_MEMORY or size > 2**60:
        raise fail()
    return size


def machine_memory() -> int:
    """Bytes of memory this process may use: the physical memory, or the cgroup limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def image_budget(max_image_memory: int | None, workers: int = 0) -> int:
    """Bytes the decoding of one image may use: ``max_image_memory`` (default :data:`DEFAULT_MEMORY_SHARE` of
    :func:`machine_memory`) divided among the ``workers`` processes that decode at once (0: this process)."""
    total = max_image_memory if max_image_memory is not None else int(machine_memory() * DEFAULT_MEMORY_SHARE)
    return max(1, total // max(1, workers))


def depends_on_budget(reason_or_note: str | None) -> bool:
    """Whether a row's reason or note says the memory budget decided it (too large, or reduced)."""
    if not reason_or_note:
        return False
    return reason_or_note.startswith(TOO_LARGE) or REDUCED_NOTE in reason_or_note


# --------------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------------


def stored_bytes(mode: str) -> int:
    """Bytes Pillow stores per pixel of ``mode``."""
    return STORED_BYTES.get(mode, 4)


def conversion_bytes(mode: str, target: str, *, alpha: bool) -> int:
    """Bytes per pixel that :func:`to_8bit` holds besides the decoded frame while converting a frame of
    ``mode`` into ``target`` ("RGB" or "L"), its result included."""
    out = 4 if target != "L" else 1
    if mode in WIDE_MODES or mode.startswith(
        "I;"
    ):  # an array copy (through bytes), the uint8 result, its image
        return 2 * stored_bytes(mode) + 2 + (out if target != "L" else 0)
    if alpha:  # RGBA, its alpha band, a grey copy and a mask for the mean, the composed picture
        return (0 if mode == "RGBA" else 4) + 3 + 4 + (1 if target == "L" else 0)
    if mode == target:
        return 0
    return out + (4 if mode not in ("L", "RGB") else 0)  # 1-bit, palette, CMYK, YCbCr... go through RGB


def decode_cost(
    width: int, height: int, mode: str, image_format: str | None, target: str = "RGB", *, alpha: bool = False
) -> int:
    """Estimated peak bytes of decoding one frame of ``width`` x ``height`` px stored as ``mode`` by the
    decoder of ``image_format`` (Pillow's name: PNG, JPEG, WEBP, TIFF, GIF, BMP, PPM...), converting it to
    8-bit ``target`` and handing it to the extractor's transform.

    Per pixel: the decoder's own copies of the frame (held as long as the file's image lives), plus the larger
    of (the frame + :func:`conversion_bytes`) and (the 8-bit picture + :data:`TRANSFORM_BYTES`); plus
    :data:`OVERHEAD`. tests/test_bad_inputs.py checks it against the peaks measured for each format.
    """
    pixels = int(width) * int(height)
    stored = stored_bytes(mode)
    copies = DECODER_COPIES.get((image_format or "").upper(), 1)
    out = 4 if target != "L" else 1
    per_pixel = stored * (copies - 1) + max(
        stored + conversion_bytes(mode, target, alpha=alpha), out + TRANSFORM_BYTES
    )
    return pixels * per_pixel + OVERHEAD


def _mib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


@dataclass(frozen=True)
class Plan:
    """How one frame is decoded: ``draft`` (JPEG scale denominator, 1 = full size) or ``reduce`` (integer
    factor applied right after decoding, 1 = none), and the estimated peak bytes."""

    draft: int = 1
    reduce: int = 1
    cost: int = 0

    @property
    def note(self) -> str | None:
        factor = max(self.draft, self.reduce)
        return f"{REDUCED_NOTE} (1/{factor} of each side)" if factor > 1 else None


def plan_decode(image: Image.Image, target: str, budget: int | None) -> Plan:
    """The :class:`Plan` that decodes an opened (not loaded) image within ``budget`` bytes.

    Raises
    ------
    ValueError
        No plan fits: "image too large to decode within the memory budget: 12000 x 12000 px RGB needs about
        1.9 GiB; the budget is 256 MiB per image (--max-image-memory)".
    """
    width, height = image.size
    alpha = _has_alpha(image)
    fmt = image.format or ""
    full = decode_cost(width, height, image.mode, fmt, target, alpha=alpha)
    if budget is None or full <= budget:
        return Plan(cost=full)
    if fmt == "JPEG":
        for scale in (2, 4, 8):
            w, h = math.ceil(width / scale), math.ceil(height / scale)
            cost = decode_cost(w, h, image.mode, fmt, target, alpha=alpha)
            if cost <= budget:
                return Plan(draft=scale, cost=cost)
    else:
        decoded = width * height * stored_bytes(image.mode) * DECODER_COPIES.get(fmt, 1)
        # modes Image.reduce cannot average (palette indices, 1-bit, 16-bit) become a reducible mode first
        widened = {"1": 4, "P": 4, "PA": 4, "I": 12}.get(
            image.mode, 4 if image.mode.startswith("I;16") else 0
        )
        for factor in (2, 3, 4, 6, 8, 12, 16, 24, 32):
            w, h = math.ceil(width / factor), math.ceil(height / factor)
            cost = (
                decoded
                + width * height * widened
                + decode_cost(w, h, "RGBA" if widened else image.mode, "", target, alpha=alpha)
            )
            if cost <= budget:
                return Plan(reduce=factor, cost=cost)
    raise ValueError(
        f"{TOO_LARGE}: {width} x {height} px {image.mode} needs about {_mib(full)}; "
        f"the budget is {_mib(budget)} "
        "per image (--max-image-memory)"
    )


def _has_alpha(image: Image.Image) -> bool:
    bands = image.getbands()
    return "A" in bands or "a" in bands or "transparency" in image.info


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


def decode_image(path: str, mode: str, budget: int | None = None):
    """Open and fully decode one image file into a PIL image of ``mode``. Raises ValueError with a reason.

    See :func:`decode_image_noted` for what is done to the pixels; this drops its note.
    """
    return decode_image_noted(path, mode, budget)[0]


def decode_image_noted(path: str, mode: str, budget: int | None = None):
    """Open, fully decode and convert one image file: (PIL image of ``mode``, note or None).

    The first frame of a file with several (animated GIF/PNG/WebP, multi-page TIFF) is used and noted. With a
    ``budget`` (bytes, see :func:`image_budget`), the decoding follows :func:`plan_decode`: large images are
    decoded reduced (noted) or rejected before their pixels are decoded.

    Raises
    ------
    ValueError
        With the reason the file cannot be used (empty, not an image, truncated, too large, unreadable).
    """
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        if os.path.getsize(path) == 0:
            raise ValueError("empty file (0 bytes)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                frames = int(getattr(image, "n_frames", 1) or 1)
                if frames > 1:
                    image.seek(0)
                plan = plan_decode(image, mode, budget)
                if plan.draft > 1:
                    width, height = image.size
                    image.draft(
                        "L" if mode == "L" else "RGB",
                        (math.ceil(width / plan.draft), math.ceil(height / plan.draft)),
                    )
                image.load()  # decode now: truncated data fails here, not later
                unsigned = _unsigned_32(image)
                if plan.reduce > 1:
                    picture, unsigned = _reduced(image, plan.reduce, unsigned), False
                else:
                    picture = image
                converted = to_8bit(_oriented(picture), mode, unsigned=unsigned)
        for warning in caught:  # library warnings go to the log, not onto the terminal
            log.debug("%s: %s", path, warning.message)
        notes = [n for n in (f"first of {frames} frames used" if frames > 1 else None, plan.note) if n]
        return converted, "; ".join(notes) or None
    except ValueError:
        raise
    except UnidentifiedImageError:
        raise ValueError("not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"image too large (over {MAX_IMAGE_PIXELS} pixels)") from None
    except MemoryError:
        raise ValueError(
            "image too large: out of memory while decoding it; lower --workers or the images' size"
        ) from None
    except OSError as exc:
        text = str(exc).lower()
        if "truncated" in text:
            raise ValueError("truncated image") from None
        raise ValueError(f"unreadable image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise assorted errors on hostile input
        raise ValueError(f"corrupt image: {type(exc).__name__}: {exc}") from None


def _unsigned_32(image: Image.Image) -> bool:
    """Whether ``image`` is a TIFF of unsigned 32-bit samples (SampleFormat 1, the TIFF default), which Pillow
    reads into its signed mode "I" (2**32 - 1 reads as -1)."""
    tags = getattr(image, "tag_v2", None)
    if image.mode != "I" or tags is None:
        return False

    def first(value: object) -> object:
        return value[0] if isinstance(value, tuple) and value else value

    return first(tags.get(258)) == 32 and first(tags.get(339, 1)) == 1


def _reduced(image: Image.Image, factor: int, unsigned: bool = False) -> Image.Image:
    """``image`` reduced by ``factor`` (box filter); palette, 1-bit and 16-bit images are widened first, and
    unsigned 32-bit ones become floats in [0, 1] (see :func:`wide_to_uint8`)."""
    from PIL import Image

    if unsigned:
        values = np.asarray(image).view(np.uint32)
        image = Image.fromarray((values / np.float64(2**32 - 1)).astype(np.float32), mode="F")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA" if _has_alpha(image) else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")
    return image.reduce(factor)


def _oriented(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says; the image itself when there is nothing to turn
    (or the tag is unreadable), so that no copy is made."""
    from PIL import ImageOps

    try:
        if image.getexif().get(0x0112, 1) not in (2, 3, 4, 5, 6, 7, 8):
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not cost the image
        return image


def to_8bit(image: Image.Image, mode: str, *, unsigned: bool = False) -> Image.Image:
    """Any Pillow image as an 8-bit image of ``mode`` ("RGB" or "L"), keeping what the pixels mean.

    * 16-bit and 32-bit integer and float images (:data:`WIDE_MODES`) become 8-bit grey by
      :func:`wide_to_uint8`, so that a 16-bit or 32-bit twin of an 8-bit picture decodes to that picture.
    * Alpha (RGBA, LA, PA, a palette or grey image with a transparent colour) is composited onto the
      background of :func:`background_for`: white for dark content, black for light content, so that a white
      digit on transparency stays visible. 1-bit, palette, CMYK and YCbCr images go through Pillow's
      conversions.

    Parameters
    ----------
    image:
        A loaded PIL image of any mode.
    mode:
        "RGB" or "L" (or any mode Pillow converts 8-bit RGB into).
    unsigned:
        The samples of a mode "I" image are unsigned 32-bit (Pillow reads them as signed; see
        :func:`_unsigned_32`).

    Returns
    -------
    PIL.Image.Image
        8 bits per channel, ``mode``.
    """
    from PIL import Image

    if image.mode in WIDE_MODES or image.mode.startswith("I;"):
        values = np.asarray(image)
        image = Image.fromarray(wide_to_uint8(values.view(np.uint32) if unsigned else values), mode="L")
    elif _has_alpha(image):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        alpha = rgba.getchannel("A")
        composed = Image.new("RGB", rgba.size, background_for(rgba, alpha))
        composed.paste(rgba, mask=alpha)  # alpha blending onto an opaque background
        image = composed
    if image.mode == mode:
        return image
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return image.convert(mode)


def background_for(rgba: Image.Image, alpha: Image.Image | None = None) -> tuple[int, int, int]:
    """The background that contrasts with an RGBA image's content: :data:`DARK` when the mean luma (ITU-R
    BT.601, Pillow's "L") of its opaque pixels (alpha >= 128; if none, alpha > 0) is above mid-grey (127.5),
    else :data:`LIGHT`; :data:`LIGHT` for a fully transparent image."""
    from PIL import ImageStat

    alpha = alpha if alpha is not None else rgba.getchannel("A")
    grey = rgba.convert("L")
    for threshold in (128, 1):
        mask = alpha.point(lambda a, t=threshold: 255 if a >= t else 0)
        if mask.getbbox() is None:
            continue
        mean = ImageStat.Stat(grey, mask=mask).mean[0]
        return DARK if mean > 127.5 else LIGHT
    return LIGHT


def wide_to_uint8(values: np.ndarray) -> np.ndarray:
    """(h, w) samples of a wide integer or float type -> uint8, by the range the values use.

    * integers: values within [0, 255] are 8-bit data, within [0, 65535] 16-bit data, within [0, 2**31 - 1]
      (or [0, 2**32 - 1] for unsigned 32-bit) 32-bit data, each scaled from 0..its type's top to 0..255; so
      the 16-bit twin (v * 257) and the 32-bit twin (round(v * (2**31 - 1) / 255)) of an 8-bit picture v
      decode to v. Integers with negative values are stretched from their smallest to their largest value.
    * floats: values within [0, 1] as [0, 1], within [0, 255] as 8-bit data, else stretched from the
      smallest to the largest finite value; NaN becomes the low end, +inf the high end.

    Converted in strips of :data:`STRIP_PIXELS` pixels: the peak besides ``values`` and the result is one
    strip.
    """
    integer = np.issubdtype(values.dtype, np.integer)
    low: float
    high: float
    if integer:
        if not values.size:
            return np.zeros(values.shape, dtype=np.uint8)
        low, high = int(values.min()), int(values.max())
        top = (
            2**32 - 1
            if values.dtype.itemsize >= 4 and not np.issubdtype(values.dtype, np.signedinteger)
            else 2**31 - 1
        )
        for full in (255, 65535, top):
            if low >= 0 and high <= full:
                low, high = 0, full
                break
    else:
        finite = _finite_range(values)
        if finite is None:
            return np.zeros(values.shape, dtype=np.uint8)
        low, high = finite
        if low >= 0 and high <= 1:
            low, high = 0.0, 1.0
        elif low >= 0 and high <= 255:
            low, high = 0.0, 255.0
    if high == low:
        high = low + 1
    out = np.empty(values.shape, dtype=np.uint8)
    rows = max(1, STRIP_PIXELS // max(1, values.shape[1] if values.ndim > 1 else 1))
    factor = 255.0 / (float(high) - float(low))
    for start in range(0, values.shape[0], rows):
        strip = values[start : start + rows].astype(np.float64)
        if not integer:
            strip[np.isnan(strip)] = low
        np.clip(strip, low, high, out=strip)
        strip -= low
        strip *= factor
        out[start : start + rows] = np.rint(strip)
    return out


def _finite_range(values: np.ndarray) -> tuple[float, float] | None:
    """(smallest, largest) finite value of a float array, strip by strip; None when none is finite."""
    low, high = math.inf, -math.inf
    rows = max(1, STRIP_PIXELS // max(1, values.shape[1] if values.ndim > 1 else 1))
    for start in range(0, values.shape[0], rows):
        strip = values[start : start + rows]
        finite = strip[np.isfinite(strip)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return None if low > high else (low, high)
