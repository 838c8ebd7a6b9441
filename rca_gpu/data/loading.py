"""Streaming image decoding with torch DataLoader workers and bad-image accounting.

Each item is decoded in a worker; an unreadable, truncated, zero-byte or non-image file becomes a
``(position, reason)`` record instead of an exception, so one bad file never stops a run.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from rca_gpu.data.sources import FailureSet
    from rca_gpu.progress import Reporter

log = logging.getLogger("rca_gpu")

#: Refuse images above this many pixels (decompression bombs), instead of PIL's warning.
MAX_IMAGE_PIXELS = 20_000 * 20_000


#: Pillow modes whose samples are wider than 8 bits: converted by their value range (see :func:`to_8bit`).
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16BS", "I;32", "I;32B", "I", "F")
#: Background that transparent pixels are composited onto (what an image viewer on a light page shows).
BACKGROUND = (255, 255, 255)


def decode_image(path: str, mode: str):
    """Open and fully decode one image file into a PIL image of ``mode``. Raises ValueError with a reason.

    See :func:`decode_image_noted` for what is done to the pixels; this drops its note.
    """
    return decode_image_noted(path, mode)[0]


def decode_image_noted(path: str, mode: str):
    """Open, fully decode and convert one image file: (PIL image of ``mode``, note or None).

    What a viewer shows is what is analysed: the EXIF orientation is applied, transparency is composited
    onto a white background, and every Pillow mode is brought to 8 bits by :func:`to_8bit` (16-bit, 32-bit
    integer and float images by their value range, never clipped). A file with several frames (animated
    GIF/PNG/WebP, multi-page TIFF) is read at its first frame, and the note says so.

    Raises
    ------
    ValueError
        With the reason the file cannot be used (empty, not an image, truncated, too large, unreadable).
    """
    import os

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
                image.load()  # decode now: truncated data fails here, not later
                converted = to_8bit(_oriented(image), mode)
        for warning in caught:  # library warnings go to the log, not onto the terminal
            log.debug("%s: %s", path, warning.message)
        note = f"first of {frames} frames used" if frames > 1 else None
        return converted, note
    except ValueError:
        raise
    except UnidentifiedImageError:
        raise ValueError("not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"image too large (over {MAX_IMAGE_PIXELS} pixels)") from None
    except OSError as exc:
        text = str(exc).lower()
        if "truncated" in text:
            raise ValueError("truncated image") from None
        raise ValueError(f"unreadable image: {exc}") from None
    except Exception as exc:  # decoders raise assorted errors on hostile input
        raise ValueError(f"corrupt image: {type(exc).__name__}: {exc}") from None


def _oriented(image):
    """The image turned as its EXIF orientation tag says (as it is left when the tag is unreadable)."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not cost the image
        return image


def to_8bit(image, mode: str):
    """Any Pillow image as an 8-bit image of ``mode`` ("RGB" or "L"), keeping what the pixels mean.

    * 16-bit and 32-bit integer and float images (:data:`WIDE_MODES`) are scaled to 0..255 by the range
      their values use: floats within [0, 1] as [0, 1]; values within [0, 255] as 8-bit data; integers
      within [0, 65535] as 16-bit data; anything else from its smallest to its largest finite value. Images
      of one kind thus keep their relative brightness, and none is clipped to white. NaN becomes 0,
      +inf the top of the range.
    * Alpha (RGBA, LA, PA, a palette or grey image with a transparent colour) is composited onto
      :data:`BACKGROUND`; 1-bit, palette, CMYK and YCbCr images go through Pillow's conversions.

    Parameters
    ----------
    image:
        A loaded PIL image of any mode.
    mode:
        "RGB" or "L" (or any mode Pillow converts 8-bit RGB into).

    Returns
    -------
    PIL.Image.Image
        8 bits per channel, ``mode``.
    """
    from PIL import Image

    if image.mode in WIDE_MODES or image.mode.startswith("I;"):
        image = Image.fromarray(_wide_to_uint8(np.asarray(image)), mode="L")
    elif "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == mode:
        return image
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return image.convert(mode)


def _wide_to_uint8(values: np.ndarray) -> np.ndarray:
    """(h, w) samples of any numeric dtype -> uint8 by the value-range rule of :func:`to_8bit`."""
    data = values.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, dtype=np.uint8)
    low, high = float(data[finite].min()), float(data[finite].max())
    integer = np.issubdtype(values.dtype, np.integer)
    if not integer and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    elif low >= 0 and high <= 255:
        low, high = 0.0, 255.0
    elif integer and low >= 0 and high <= 65535:
        low, high = 0.0, 65535.0
    elif high == low:
        high = low + 1.0
    data = np.where(np.isnan(data), low, data)
    scaled = (np.clip(data, low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


class ImageDataset:
    """Map-style dataset over some rows of a FailureSet: item -> (position, tensor | None, reason, properties).

    With ``properties``, each decoded image's interpretable properties (:mod:`rca_gpu.data.properties`,
    float32 vector) travel with it; otherwise that slot is None.
    """

    def __init__(self, failures: "FailureSet", positions: np.ndarray, transform: Callable, mode: str,
                 properties: bool = False) -> None:
        self.images = failures.images
        self.positions = np.asarray(positions, dtype=np.int64)
        # only these rows' paths, as one Arrow array: no Python string per row, cheap to send to workers
        self.paths = None if self.images is not None else _paths_of(failures, self.positions)
        self.transform = transform
        self.mode = mode
        self.properties = properties

    def __len__(self) -> int:
        return len(self.positions)

    def _path(self, item: int) -> str:
        path = self.paths[item]
        return path if isinstance(path, str) else path.as_py()

    def __getitem__(self, item: int):
        """(position, tensor | None, reason when rejected else a note or "", properties | None)."""
        position = int(self.positions[item])
        try:
            note = None
            if self.images is not None:
                from PIL import Image

                image = Image.fromarray(self.images[position]).convert(self.mode)
            else:
                image, note = decode_image_noted(self._path(item), self.mode)
            properties = None
            if self.properties:
                from rca_gpu.data.properties import image_properties

                properties = image_properties(image)
            return position, self.transform(image), note or "", properties
        except ValueError as exc:
            return position, None, str(exc), None
        except Exception as exc:  # a transform failing on odd input is a rejection too
            return position, None, f"preprocessing failed: {type(exc).__name__}: {exc}", None


def _paths_of(failures: "FailureSet", positions: np.ndarray):
    """The files of ``positions``: one Arrow string array, or a list where names are not UTF-8."""
    if failures.file_paths is not None:
        return [failures.file_paths[p] for p in positions.tolist()]
    import pyarrow as pa

    column = pa.Table.from_pandas(failures.table[["path"]], preserve_index=False).column("path")
    return column.take(pa.array(positions, pa.int64())).combine_chunks()


def collate(items):
    """Stack the good items: (positions, images | None, [(position, reason)] of the rejected,
    [(position, note)] of good items read with a note, e.g. the first frame of several, properties | None),
    properties an (n_good, p) float32 array when the dataset computes them."""
    import torch

    good = [(p, t, q) for p, t, _, q in items if t is not None]
    bad = [(p, r) for p, t, r, _ in items if t is None]
    notes = [(p, r) for p, t, r, _ in items if t is not None and r]
    if not good:
        return torch.empty(0, dtype=torch.long), None, bad, notes, None
    positions = torch.tensor([p for p, _, _ in good], dtype=torch.long)
    properties = np.stack([q for _, _, q in good]) if good[0][2] is not None else None
    return positions, torch.stack([t for _, t, _ in good]), bad, notes, properties


def make_loader(
    failures: "FailureSet",
    positions: np.ndarray,
    transform: Callable,
    mode: str,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    properties: bool = False,
):
    """A DataLoader over ``positions`` that yields collate() tuples (with image properties if asked)."""
    from torch.utils.data import DataLoader

    dataset = ImageDataset(failures, positions, transform, mode, properties)
    workers = min(workers, max(0, len(dataset) // max(batch_size, 1)))  # no idle worker processes
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=collate,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def iterate_batches(
    failures: "FailureSet",
    transform: Callable,
    mode: str,
    *,
    batch_size: int,
    workers: int,
    device: "torch.device",
    limit: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    reporter: "Reporter | None" = None,
    description: str = "reading images",
) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
    """(positions, images-on-device) over the usable rows; bad images are skipped silently here."""
    positions = failures.usable_positions
    if shuffle:
        positions = np.random.default_rng(seed).permutation(positions)
    if limit is not None:
        positions = positions[:limit]
    loader = make_loader(
        failures, positions, transform, mode, batch_size=batch_size, workers=workers,
        pin_memory=device.type == "cuda",
    )
    from rca_gpu.progress import Reporter

    reporter = reporter or Reporter(enabled=False)
    with reporter.task(description, total=len(positions)) as advance:
        for batch_positions, images, bad, _notes, _properties in loader:
            advance(len(batch_positions) + len(bad))
            if images is None:
                continue
            yield batch_positions, images.to(device, non_blocking=True)
