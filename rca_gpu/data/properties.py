"""Interpretable image properties, computed for every image when it is read.

They explain clusters in words a person checks at a glance ("sharpness < 12 and brightness > 0.7") and
become columns of ``clusters.parquet`` (prefixed ``img_``) so they can be filtered elsewhere.

Every property is a function of the decoded image as the extractor reads it (PIL mode ``RGB`` or ``L``),
at its native resolution, computed with vectorised NumPy. Luma is ITU-R BT.601
(``0.299 R + 0.587 G + 0.114 B``) in grey levels 0..255.

==================  ===========================================================================  ==========
column              definition                                                                   unit/range
==================  ===========================================================================  ==========
img_brightness      mean luma / 255                                                              0..1
img_contrast        RMS contrast: standard deviation of luma / 255                               0..0.5
img_sharpness       variance of the 4-neighbour Laplacian of luma (Pech-Pacheco et al. 2000)     grey level²
img_colourfulness   Hasler & Süsstrunk (2003) M = σ_rgyb + 0.3 μ_rgyb; 0 for grey images         0..~180
img_entropy         Shannon entropy of the 256-bin luma histogram                                bits, 0..8
img_width           width                                                                        pixels
img_height          height                                                                       pixels
img_aspect_ratio    width / height                                                               ratio
img_dark_fraction   share of pixels with luma < 16 (near-black)                                  0..1
img_bright_fraction share of pixels with luma > 239 (near-white)                                 0..1
==================  ===========================================================================  ==========
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: Column names, in the order of the vector returned by :func:`image_properties`.
PROPERTY_COLUMNS: tuple[str, ...] = (
    "img_brightness",
    "img_contrast",
    "img_sharpness",
    "img_colourfulness",
    "img_entropy",
    "img_width",
    "img_height",
    "img_aspect_ratio",
    "img_dark_fraction",
    "img_bright_fraction",
)
#: The properties that are whole numbers (pixels): stored as nullable integers (pandas ``Int64``, missing for
#: rejected rows), so that tables and CSV files show 28, not 28.0.
INTEGER_PROPERTIES: tuple[str, ...] = ("img_width", "img_height")
#: Luma below this (0..255) counts as near-black, above ``255 - DARK_LEVEL`` as near-white.
DARK_LEVEL = 16
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: Pixels per strip of rows, here and in rca_gpu.data.decoding: the memory besides the image is that of one strip
#: (about 40 bytes a pixel).
STRIP_PIXELS = 1 << 18


def image_properties(image: Image.Image | np.ndarray) -> np.ndarray:
    """The interpretable properties of one decoded image.

    Computed in strips of rows (:data:`STRIP_PIXELS` pixels, one row of overlap for the Laplacian) whose means
    and variances are combined exactly (Chan et al. 1979), so the memory besides the image is one strip's,
    whatever its size; an image of one strip gives what a whole-image computation gives.

    Parameters
    ----------
    image:
        A PIL image (any mode; converted to ``RGB`` unless it is ``L``) or a uint8 array shaped (h, w)
        (grey) or (h, w, 3) (RGB; a 4th alpha channel is dropped).

    Returns
    -------
    numpy.ndarray
        float32, shape ``(len(PROPERTY_COLUMNS),)``, in the order and units of :data:`PROPERTY_COLUMNS`.

    Raises
    ------
    ValueError
        The array is not uint8 (h, w) / (h, w, c) or has no pixels.
    """
    rows_of = _strips(image)
    h, w, colour = rows_of.height, rows_of.width, rows_of.colour
    rows = max(3, STRIP_PIXELS // w)
    luma_stats, laplacian, rg, yb = _Moments(), _Moments(), _Moments(), _Moments()
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, h, rows):
        stop = min(h, start + rows)
        first, last = max(0, start - 1), min(h, stop + 1)  # one row of overlap each side, for the Laplacian
        strip = rows_of(first, last)
        luma = _luma(strip)
        own = luma[start - first: start - first + (stop - start)]
        luma_stats.add(own)
        counts += np.bincount(np.clip(own, 0, 255).astype(np.uint8).ravel(), minlength=256)
        if h >= 3 and w >= 3:  # the interior rows of this strip: rows 1..h-2 of the image
            top, bottom = max(start, 1), min(stop, h - 1)
            if bottom > top:
                centre = luma[top - first - 1: bottom - first + 1]
                laplacian.add(_laplacian(centre))
        if colour:
            rgb = strip[start - first: start - first + (stop - start), :, :3].astype(np.float32)
            rg.add(rgb[..., 0] - rgb[..., 1])
            yb.add(0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2])
    share = counts / counts.sum()
    nonzero = share[share > 0]
    colourfulness = 0.0
    if colour:
        colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    return np.array(
        [
            luma_stats.mean() / 255.0,
            luma_stats.std() / 255.0,
            float(laplacian.var()) if laplacian.n else 0.0,
            colourfulness,
            float(-(nonzero * np.log2(nonzero)).sum()),
            float(w),
            float(h),
            float(w) / float(h),
            float(share[:DARK_LEVEL].sum()),
            float(share[256 - DARK_LEVEL :].sum()),
        ],
        dtype=np.float32,
    )


class _Moments:
    """Count, mean and variance of float32 values added block by block, combined exactly in float64 (Chan,
    Golub & LeVeque 1979); results are float32, and one block gives NumPy's own float32 mean and variance."""

    def __init__(self) -> None:
        self.n, self._mean, self._m2 = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        count = int(values.size)
        if not count:
            return
        mean, var = float(values.mean()), float(values.var())
        if not self.n:
            self.n, self._mean, self._m2 = count, mean, var * count
            return
        total = self.n + count
        delta = mean - self._mean
        self._m2 += var * count + delta * delta * self.n * count / total
        self._mean += delta * count / total
        self.n = total

    def mean(self) -> np.float32:
        return np.float32(self._mean)

    def var(self) -> np.float32:
        return np.float32(self._m2 / self.n) if self.n else np.float32(0.0)

    def std(self) -> np.float32:
        return np.float32(np.sqrt(self._m2 / self.n)) if self.n else np.float32(0.0)


def _luma(pixels: np.ndarray) -> np.ndarray:
    """float32 luma of uint8 rows: grey as it is, RGB by ITU-R BT.601."""
    if pixels.ndim == 3:
        return pixels[..., :3].astype(np.float32) @ _LUMA
    return pixels.astype(np.float32)


class _strips:
    """Rows ``first:last`` of an image as a uint8 array (h, w) or (h, w, 3+): sliced from an array, cropped from
    a PIL image (so that no array of the whole image is made)."""

    def __init__(self, image) -> None:
        self.array: np.ndarray | None
        if isinstance(image, np.ndarray):
            self.array, self.image = _as_array(image), None
            self.height, self.width = self.array.shape[:2]
            self.colour = self.array.ndim == 3
            return
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        if image.width == 0 or image.height == 0:
            raise ValueError(f"image_properties needs an image with pixels; got size {image.size}.")
        self.array, self.image = None, image
        self.width, self.height = image.size
        self.colour = image.mode == "RGB"

    def __call__(self, first: int, last: int) -> np.ndarray:
        if self.array is not None:
            return self.array[first:last]
        assert self.image is not None, "__init__ sets the array or the image"
        return np.asarray(self.image.crop((0, first, self.width, last)))


def _as_array(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(
            f"image_properties needs a uint8 array shaped (h, w) or (h, w, c) with pixels; got dtype "
            f"{image.dtype} and shape {image.shape}."
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[2] < 3:
        raise ValueError(f"image_properties needs 1, 3 or 4 channels; got shape {image.shape}.")
    return image


def _laplacian(luma: np.ndarray) -> np.ndarray:
    """The 4-neighbour Laplacian of the interior pixels of ``luma`` (rows and columns 1..-2)."""
    return (luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:]) - 4.0 * luma[1:-1, 1:-1]
