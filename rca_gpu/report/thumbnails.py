"""Thumbnails: made once per run with Pillow, shared by the report's montages and the map's hover.

A thumbnail is a JPEG no larger than ``size`` x ``size`` pixels (smaller images keep their size), named by
the image's row position in ``clusters.parquet`` (``000123.jpg``), never by a name taken from the data. The
folder holds an ``index.json`` naming the run id and size; a later report of the same run reuses every
thumbnail already there and makes only the missing ones.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rca_gpu.outputs import OutputError, write_atomic, write_json
from rca_gpu.runfiles import json_object

log = logging.getLogger("rca_gpu")

THUMB_SIZE = 96
INDEX_FILE = "index.json"

#: position -> decoded PIL image, for sources without files (in-memory arrays).
ImageLoader = Callable[[int], "object"]


def thumbnail_name(position: int) -> str:
    return f"{int(position):07d}.jpg"


def make_thumbnails(
    folder: Path,
    positions: Iterable[int],
    paths: Sequence[str],
    *,
    run_id: str,
    size: int = THUMB_SIZE,
    loader: ImageLoader | None = None,
    workers: int | None = None,
) -> dict[int, str]:
    """Write the thumbnails of ``positions`` into ``folder`` (reusing those of the same run and size).

    Parameters
    ----------
    folder:
        Thumbnail folder; created, or emptied when it holds another run's thumbnails.
    positions:
        Row positions (ints) in ``clusters.parquet``.
    paths:
        Image path per row (``clusters.parquet``'s ``path``, "" for none); ``loader`` is used instead when
        given.
    run_id:
        The run the thumbnails belong to.
    size:
        Largest side in pixels.
    loader:
        position -> PIL image, for sources whose images are not files.
    workers:
        Threads (default: CPU count). Pillow releases the GIL while decoding and resizing.

    Returns
    -------
    dict
        position -> file name inside ``folder``, for the thumbnails that exist; an image that cannot be
        read has none (the page shows its name instead).
    """
    folder = Path(folder)
    if folder.is_symlink():
        raise OSError(f"{folder} is a symbolic link; refusing to write thumbnails through it.")
    index = folder / INDEX_FILE
    stamp = {"run_id": run_id, "size": int(size)}
    if folder.exists() and json_object(index) != stamp:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(index, stamp)

    wanted = sorted({int(p) for p in positions})
    if loader is None:  # rows without a path (features brought without images) have no thumbnail
        wanted = [p for p in wanted if paths[p]]
    todo = [p for p in wanted if not (folder / thumbnail_name(p)).is_file()]
    if todo:
        log.info("thumbnails: making %d (%d reused)", len(todo), len(wanted) - len(todo))

        def one(position: int) -> None:
            image = loader(position) if loader is not None else open_image(paths[position], size)
            if image is not None:
                write_thumbnail(image, folder / thumbnail_name(position), size)

        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for _ in pool.map(_quietly(one), todo, chunksize=64):
                pass
    return {p: thumbnail_name(p) for p in wanted if (folder / thumbnail_name(p)).is_file()}


def open_image(path: str, size: int):
    """Decode an image file for a thumbnail (JPEG decoded at reduced scale), or None when unreadable."""
    import warnings

    from PIL import Image

    from rca_gpu.data.loading import MAX_IMAGE_PIXELS

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale, much faster
                image.load()
                return image.copy()
    except Exception as exc:  # unreadable files have no thumbnail; the run already rejected them
        log.debug("no thumbnail for %s: %s", path, exc)
        return None


def write_thumbnail(image, target: Path, size: int) -> None:
    """Shrink a PIL image (or uint8 array) to at most ``size`` px per side and save it as JPEG, atomically."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    write_atomic(target, lambda tmp: image.save(tmp, format="JPEG", quality=85))


def _quietly(function):
    def wrapper(position: int) -> None:
        try:
            function(position)
        except OutputError:  # a full disk or a read-only folder stops the report with its one line
            raise
        except Exception as exc:  # one odd image never stops a report
            log.debug("no thumbnail for row %d: %s", position, exc)

    return wrapper
