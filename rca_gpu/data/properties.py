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


def image_properties(image: "Image.Image | np.ndarray") -> np.ndarray:
    """The interpretable properties of one decoded image.

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
    pixels = _as_array(image)
    h, w = pixels.shape[:2]
    if pixels.ndim == 3:
        rgb = pixels[..., :3].astype(np.float32)
        luma = rgb @ _LUMA
        colourfulness = _colourfulness(rgb)
    else:
        luma = pixels.astype(np.float32)
        colourfulness = 0.0
    counts = np.bincount(np.clip(luma, 0, 255).astype(np.uint8).ravel(), minlength=256)
    share = counts / counts.sum()
    nonzero = share[share > 0]
    return np.array(
        [
            luma.mean() / 255.0,
            luma.std() / 255.0,
            _laplacian_variance(luma),
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


def _as_array(image) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        image = np.asarray(image)
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


def _laplacian_variance(luma: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the interior pixels (0 for images under 3x3)."""
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return 0.0
    lap = (luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:]) - 4.0 * luma[1:-1, 1:-1]
    return float(lap.var())


def _colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk's colourfulness metric M (grey level units) of a float RGB array (h, w, 3)."""
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
