"""Write a benchmark folder: PNGs, manifests with schema metadata, the DUT twice, dataset.json.

Everything written here is a pure function of its inputs (no timestamps, fixed PNG settings, sorted JSON),
so a seed reproduces the files byte for byte. Manifests and dataset.json are written atomically
(rca_gpu.outputs).
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from rca_gpu.errors import SpecError
from rca_gpu.outputs import write_atomic
from rca_gpu.progress import no_progress
from rca_gpu.runfiles import BOOKKEEPING, DATASET_DUT, DATASET_DUT_STATE, DATASET_INFO, DATASET_OUTPUTS

#: Files and folders a generator owns inside its output folder; only these are replaced on a rerun.
OWNED = DATASET_OUTPUTS
DUT_KEY = b"rca_gpu.dut"
DATASET_KEY = b"rca_gpu.dataset"


def prepare_out(out: str | Path) -> Path:
    """Create ``out``, or clear an earlier benchmark in it; refuse a folder that holds anything else.

    A rerun with a smaller ``n`` must not leave stale PNGs behind, but deleting files we did not write would
    be worse, so only a folder that holds a dataset.json is cleared, and only of the generator's own files.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SpecError(
            f"The output {str(out)!r} is a file. Pass a folder (new, empty, or an earlier benchmark)."
        )
    if out.is_dir() and any(p.name not in BOOKKEEPING for p in out.iterdir()):  # the lock is not content
        if not (out / DATASET_INFO).is_file():
            raise SpecError(
                f"The output folder {str(out)!r} is not empty and holds no earlier benchmark "
                "(no dataset.json). Choose a new or empty folder."
            )
        for name in OWNED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_images(
    out: Path, frame: pd.DataFrame, images: np.ndarray, advance: Callable[[int], None] = no_progress
) -> None:
    """One PNG per row at ``out / frame.path``; grey for (H, W) arrays, RGB for (H, W, 3)."""
    from PIL import Image

    for relative, pixels in zip(frame["path"], images, strict=True):
        _write_png(out / relative, Image.fromarray(pixels))
        advance(1)


def write_dut(out: Path, model, *, classes: list[str], input_shape: tuple[int, int, int]) -> None:
    """``dut_state.pt`` (a state_dict that loads with weights_only=True) and ``dut.pt`` (TorchScript)."""
    import torch

    write_atomic(out / DATASET_DUT_STATE, lambda tmp: torch.save(model.state_dict(), tmp))
    info = {"input_shape": list(input_shape), "classes": list(classes), "value_range": [0, 1]}
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream, but it is still the one format every consumer loads without
        # the model's code; the warning says nothing the user can act on here.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
        write_atomic(out / DATASET_DUT, lambda tmp: torch.jit.save(scripted, tmp,
                                                                _extra_files={"rca_gpu.json": json.dumps(info)}))


def _write_png(target: Path, image) -> None:
    """``image`` (a PIL image) as a PNG at ``target``, written atomically."""
    write_atomic(target, lambda tmp: image.save(tmp, format="PNG", optimize=False, compress_level=6))
