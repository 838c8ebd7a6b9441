"""On-disk cache of trained DUT weights, keyed by a hash of everything that determines them.

The key covers the training recipe, the architecture, the seed, the data (or the recipe that renders it)
and the library versions whose kernels shape the floats, so a stale entry is never reused silently.
Entries are written atomically: a crashed run leaves no half-written file behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("rca_gpu")

CACHE_ENV = "RCA_GPU_CACHE"


def cache_dir() -> Path:
    """``$RCA_GPU_CACHE`` or ``~/.cache/rca_gpu``; DUTs live in its ``datasets`` sub-folder."""
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "rca_gpu")
    return Path(root).expanduser() / "datasets"


def cache_key(recipe: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable recipe."""
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load(name: str, key: str) -> tuple[dict, dict] | None:
    """(state_dict, meta) of a cached DUT, or None when absent or unreadable (then it is retrained)."""
    import torch

    weights, meta = _paths(name, key)
    if not (weights.is_file() and meta.is_file()):
        return None
    try:
        return torch.load(weights, weights_only=True), json.loads(meta.read_text())
    except Exception as exc:  # a truncated or foreign file: retraining is cheap and safe
        log.warning("Ignoring the unreadable cached DUT %s (%s); training it again.", weights, exc)
        return None


def store(name: str, key: str, state_dict: dict, meta: Mapping[str, Any]) -> None:
    """Write weights and meta next to each other, each via a temporary file and an atomic rename."""
    import torch

    weights, meta_path = _paths(name, key)
    from rca_gpu import outputs

    outputs.write_atomic(weights, lambda tmp: torch.save(state_dict, tmp))
    outputs.write_text(meta_path, json.dumps(dict(meta), indent=2, sort_keys=True))


def _paths(name: str, key: str) -> tuple[Path, Path]:
    base = cache_dir() / f"{name}-dut-{key}"
    return base.with_suffix(".pt"), base.with_suffix(".json")
