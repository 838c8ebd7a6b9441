"""Streaming image decoding with torch DataLoader workers and bad-image accounting.

Each item is decoded in a worker; an unreadable, truncated, zero-byte or non-image file becomes a
``(position, reason)`` record instead of an exception, so one bad file never stops a run.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from rca_gpu.data.sources import FailureSet
    from rca_gpu.progress import Reporter

#: Refuse images above this many pixels (decompression bombs), instead of PIL's warning.
MAX_IMAGE_PIXELS = 20_000 * 20_000


def decode_image(path: str, mode: str):
    """Open and fully decode one image file into a PIL image of ``mode``. Raises ValueError with a reason."""
    import os

    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        if os.path.getsize(path) == 0:
            raise ValueError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # decode now: truncated data fails here, not later
                return image.convert(mode)
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


class ImageDataset:
    """Map-style dataset over some rows of a FailureSet: item -> (position, tensor | None, reason)."""

    def __init__(self, failures: "FailureSet", positions: np.ndarray, transform: Callable, mode: str) -> None:
        self.images = failures.images
        self.positions = np.asarray(positions, dtype=np.int64)
        # only these rows' paths, as one Arrow array: no Python string per row, cheap to send to workers
        self.paths = None if self.images is not None else _paths_of(failures, self.positions)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int):
        position = int(self.positions[item])
        try:
            if self.images is not None:
                from PIL import Image

                image = Image.fromarray(self.images[position]).convert(self.mode)
            else:
                image = decode_image(self.paths[item].as_py(), self.mode)
            return position, self.transform(image), ""
        except ValueError as exc:
            return position, None, str(exc)
        except Exception as exc:  # a transform failing on odd input is a rejection too
            return position, None, f"preprocessing failed: {type(exc).__name__}: {exc}"


def _paths_of(failures: "FailureSet", positions: np.ndarray):
    import pyarrow as pa

    column = pa.Table.from_pandas(failures.table[["path"]], preserve_index=False).column("path")
    return column.take(pa.array(positions, pa.int64())).combine_chunks()


def collate(items):
    """Stack the good items; return (positions, images | None, [(position, reason), ...])."""
    import torch

    good = [(p, t) for p, t, _ in items if t is not None]
    bad = [(p, r) for p, t, r in items if t is None]
    if not good:
        return torch.empty(0, dtype=torch.long), None, bad
    positions = torch.tensor([p for p, _ in good], dtype=torch.long)
    return positions, torch.stack([t for _, t in good]), bad


def make_loader(
    failures: "FailureSet",
    positions: np.ndarray,
    transform: Callable,
    mode: str,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool,
):
    """A DataLoader over ``positions`` that yields collate() triples."""
    from torch.utils.data import DataLoader

    dataset = ImageDataset(failures, positions, transform, mode)
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
        for batch_positions, images, bad in loader:
            advance(len(batch_positions) + len(bad))
            if images is None:
                continue
            yield batch_positions, images.to(device, non_blocking=True)
