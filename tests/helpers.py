"""Small image sets with planted groups, written as real files or kept in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pattern_images(n_per: int = 30, groups: int = 4, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 grayscale images (n, size, size): group g has a bright bar at a group-specific place."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    band = size // groups
    for g in range(groups):
        for _ in range(n_per):
            image = rng.integers(0, 40, size=(size, size)).astype(np.uint8)
            image[g * band : (g + 1) * band, :] = rng.integers(200, 255)
            images.append(image)
            labels.append(g)
    return np.stack(images), np.array(labels)


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / f"g{label}_{i:04d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def add_bad_files(folder: Path, good_example: Path) -> dict[str, str]:
    """A zero-byte PNG, a text file named .jpg, and a truncated PNG. Returns name -> expected reason."""
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")
    data = good_example.read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    return {"zero.png": "empty file", "text.jpg": "not a readable image", "truncated.png": "truncated"}


def digits_source(n: int):
    """The first ``n`` of scikit-learn's 8x8 digits as an in-memory FailureSource (labels as metadata)."""
    from sklearn.datasets import load_digits

    from rca_gpu.data.sources import from_arrays

    digits = load_digits()
    return from_arrays((digits.images[:n] * (255 / 16)).astype(np.uint8), {"label": digits.target[:n]})


def run_extractor(extractor_cls, spec, context):
    """Drive an extractor the way rca_gpu.features.extract does: prepare, a picklable transform (workers
    receive it), channels_last batches, ``torch.inference_mode()`` unless the extractor needs autograd.
    Returns the extractor and the (n, d) features."""
    import contextlib
    import pickle

    import torch

    extractor = extractor_cls(spec, context)
    extractor.prepare()
    transform = extractor.transform()
    pickle.dumps(transform)
    grad_mode = contextlib.nullcontext if extractor.needs_grad else torch.inference_mode
    chunks = []
    for _, images in context.batches(transform, extractor.image_mode):
        with grad_mode():
            chunks.append(extractor.encode(images.contiguous(memory_format=torch.channels_last)))
    return extractor, torch.cat(chunks)


def import_source(folder: Path, monkeypatch, module_name: str, source: str):
    """Write ``source`` as ``folder/module_name.py`` and import it fresh (for ``package.module:factory`` refs)."""
    import importlib
    import sys

    (folder / f"{module_name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    return importlib.import_module(module_name)


def one_line_error(result, *fragments: str) -> str:
    """The command failed with exit 2 and exactly one line 'error: ...' holding every fragment (no traceback);
    returns that line."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output} {result.exception!r}"
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def succeeded(result):
    """Assert a CliRunner result exited 0, showing its output and exception otherwise; return it."""
    assert result.exit_code == 0, f"{result.output} {result.exception!r}"
    return result
