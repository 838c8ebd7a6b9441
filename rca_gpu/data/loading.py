"""Streaming image decoding with torch DataLoader workers and bad-image accounting.

Each item is decoded in a worker; an unreadable, truncated, zero-byte, non-image or too large file becomes a
``(position, reason)`` record instead of an exception, so one bad file never stops a run. How one file is
decoded, within a memory budget, is :mod:`rca_gpu.data.decoding`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from rca_gpu.data.decoding import MAX_IMAGE_PIXELS, decode_image, decode_image_noted, image_budget, to_8bit

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from rca_gpu.data.sources import FailureSet
    from rca_gpu.progress import Reporter

log = logging.getLogger("rca_gpu")

__all__ = ["MAX_IMAGE_PIXELS", "decode_image", "decode_image_noted", "to_8bit", "ImageDataset", "collate",
           "make_loader", "iterate_batches"]


class ImageDataset:
    """Map-style dataset over some rows of a FailureSet: item -> (position, tensor | None, reason, properties).

    With ``properties``, each decoded image's interpretable properties (:mod:`rca_gpu.data.properties`,
    float32 vector) travel with it; otherwise that slot is None. ``budget``: bytes the decoding of one image
    may use (:func:`rca_gpu.data.decoding.image_budget`); None decodes whatever the header says.
    """

    def __init__(self, failures: FailureSet, positions: np.ndarray, transform: Callable, mode: str,
                 properties: bool = False, budget: int | None = None) -> None:
        self.images = failures.images
        self.positions = np.asarray(positions, dtype=np.int64)
        # only these rows' paths, as one Arrow array: no Python string per row, cheap to send to workers
        self.paths = None if self.images is not None else _paths_of(failures, self.positions)
        self.transform = transform
        self.mode = mode
        self.properties = properties
        self.budget = budget

    def __len__(self) -> int:
        return len(self.positions)

    def _path(self, item: int) -> str:
        assert self.paths is not None, "paths are set whenever the images are files, the only case that reads them"
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
                image, note = decode_image_noted(self._path(item), self.mode, self.budget)
            properties = None
            if self.properties:
                from rca_gpu.data.properties import image_properties

                properties = image_properties(image)
            return position, self.transform(image), note or "", properties
        except ValueError as exc:
            return position, None, str(exc), None
        except Exception as exc:  # a transform failing on odd input is a rejection too
            return position, None, f"preprocessing failed: {type(exc).__name__}: {exc}", None


def _paths_of(failures: FailureSet, positions: np.ndarray):
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
    failures: FailureSet,
    positions: np.ndarray,
    transform: Callable,
    mode: str,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    properties: bool = False,
    max_image_memory: int | None = None,
):
    """A DataLoader over ``positions`` that yields collate() tuples (with image properties if asked).

    ``max_image_memory``: bytes that decoding may use at once, shared by the worker processes (None: the
    default share of the machine's memory, :func:`rca_gpu.data.decoding.image_budget`)."""
    from torch.utils.data import DataLoader

    workers = min(workers, max(0, len(positions) // max(batch_size, 1)))  # no idle worker processes
    dataset = ImageDataset(failures, positions, transform, mode, properties,
                           budget=image_budget(max_image_memory, workers))
    # ImageDataset is a map-style dataset by protocol (__len__, __getitem__): subclassing torch's Dataset would
    # import torch with this module, which the type of DataLoader's first argument cannot express otherwise
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=collate,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def iterate_batches(
    failures: FailureSet,
    transform: Callable,
    mode: str,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    limit: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    reporter: Reporter | None = None,
    description: str = "reading images",
    max_image_memory: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(positions, images-on-device) over the usable rows; bad images are skipped silently here."""
    positions = failures.usable_positions
    if shuffle:
        positions = np.random.default_rng(seed).permutation(positions)
    if limit is not None:
        positions = positions[:limit]
    loader = make_loader(
        failures, positions, transform, mode, batch_size=batch_size, workers=workers,
        pin_memory=device.type == "cuda", max_image_memory=max_image_memory,
    )
    from rca_gpu.progress import Reporter

    reporter = reporter or Reporter(enabled=False)
    with reporter.task(description, total=len(positions)) as advance:
        for batch_positions, images, bad, _notes, _properties in loader:
            advance(len(batch_positions) + len(bad))
            if images is None:
                continue
            yield batch_positions, images.to(device, non_blocking=True)
