"""Checks a run makes before any work: values against the data, the device, the files, the memory.

Each raises SpecError (or TooFewImagesError) naming the option or parameter, the rule, the value and the fix,
so that a run stops at once, before an image is read, rather than halfway through.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from rca_gpu.engine.knn import GPU_ONLY_KNN_BACKENDS, KNN_BACKENDS
from rca_gpu.engine.params import show_value
from rca_gpu.errors import RcaError, SpecError, TooFewImagesError
from rca_gpu.spec.config import RunSpec
from rca_gpu.spec.grammar import PipelineSpec


def check_data_limits(pipeline: PipelineSpec, n: int, *, dims: int | None = None, images: str = "input images",
                      error: type[RcaError] | None = None) -> None:
    """Check the values the pipeline fixes against the number of images ``n`` (and the feature dimension).

    Called twice by a run: with the input rows before any image is read, and with the usable images after
    extraction, so that a value the user set is refused rather than silently replaced.

    Raises
    ------
    TooFewImagesError
        Fewer images than the clusterer needs (its card's ``min_images``).
    SpecError (or ``error``)
        A fixed parameter exceeds what ``n`` images allow, e.g. kmeans(k=1000) on 50 images.
    """
    check_enough_images(pipeline, n, images=images)
    for stage, spec in (("reducer", pipeline.reduce), ("clusterer", pipeline.cluster)):
        card = spec.card
        for key, value in spec.params.items():
            high = card.data_limit(key, n, dims)
            if high is None or value <= high:
                continue
            rule = dataclasses.replace(card.params[key], high=high)
            where = f"{n} {images}" + (f" of {dims} feature dimensions" if dims is not None and card.limits_use_dims
                                       else "")
            raise (error or SpecError)(
                f"The '{key}' parameter of {stage} '{spec.name}' must be {rule.describe()} with {where}. Got "
                f"{show_value(value)} instead. Lower it, add images, or leave it out to have it chosen automatically."
            )


def check_enough_images(pipeline: PipelineSpec, n: int, *, images: str = "input images", detail: str = "") -> None:
    """At least as many images as the clusterer needs (its card's ``min_images``).

    Raises
    ------
    TooFewImagesError
        "The <clusterer> clusterer needs at least <m> usable images; there are <n> <images>." + ``detail``.
    """
    need = pipeline.cluster.card.min_images
    if n < need:
        raise TooFewImagesError(
            f"The {pipeline.cluster.name} clusterer needs at least {need} usable images; there are {n} {images}."
            f"{detail} Add more failing images."
        )

def check_backends(spec: RunSpec, device: Any) -> None:
    """Refuse a --knn-backend the resolved device cannot run, before any work (``device``: a resolved
    :class:`rca_gpu.engine.device.Device`, read through its ``on_gpu`` flag and the flag each GPU-only backend names
    in :data:`~rca_gpu.engine.knn.GPU_ONLY_KNN_BACKENDS`).

    Raises
    ------
    SpecError
        E.g. --knn-backend cuvs or cuml without a CUDA GPU and that library (with the package to install).
    """
    needs = GPU_ONLY_KNN_BACKENDS.get(spec.knn_backend)
    if needs is None:
        return
    flag, library = needs
    on_gpu = bool(getattr(device, "on_gpu", False))
    if on_gpu and getattr(device, flag, False):
        return
    where = (f"{library} is not installed or failed its test search on this GPU" if on_gpu else
             f"no CUDA GPU is in use (device: {getattr(device, 'torch_device', 'cpu')})")
    others = ", ".join(b for b in KNN_BACKENDS if b not in GPU_ONLY_KNN_BACKENDS and b != "auto")
    raise SpecError(
        f"The --knn-backend option '{spec.knn_backend}' needs {library} on a CUDA GPU, but {where}. Use "
        f"--knn-backend auto (or {others}), or install the GPU extras: pip install 'rca-gpu[gpu]' "
        "(CUDA 13) or 'rca-gpu[gpu-cu12]' (CUDA 12)."
    )


_ENTRY_POINT = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:=(?P<weights>.+))?$")


def check_paths(spec: RunSpec) -> None:
    """The files and folders the options name exist, before any work: the --model file (or the weights of a
    ``package.module:factory=weights.pt`` entry point; the module itself is imported only when the model is
    needed) and the --image-root folder.

    Raises
    ------
    SpecError
        Naming the option, the path and the fix.
    """
    if spec.model:
        match = _ENTRY_POINT.match(spec.model.strip())
        target = match["weights"] if match and not Path(spec.model).exists() else (None if match else spec.model)
        if target is not None:
            path = Path(target).expanduser()
            if not path.exists():
                raise SpecError(
                    f"The --model file {show_value(str(path))} does not exist. Pass a TorchScript .pt, a torch.export "
                    ".pt2, or package.module:factory=weights.pt with an existing weights file."
                )
            if not path.is_file():
                raise SpecError(f"The --model path {show_value(str(path))} is a folder, not a model file.")
    if spec.image_root is not None:
        root = Path(spec.image_root).expanduser()
        if not root.is_dir():
            raise SpecError(
                f"The --image-root folder {show_value(spec.image_root)} does not exist or is not a folder. Pass the "
                "folder that holds the manifest's images."
            )


def check_dut_known(spec: RunSpec, manifest_dut: str | None) -> None:
    """An extractor that reads the DNN under test has one, from --model or the manifest, before any work.

    Raises
    ------
    SpecError
        Naming the extractor and how to pass the model.
    """
    features = spec.pipeline.features
    if features.info.needs_dut and not (spec.model or manifest_dut):
        raise SpecError(
            f"The '{features.name}' extractor needs the DNN under test: pass --model PATH (TorchScript .pt, "
            "torch.export .pt2, or package.module:factory=weights.pt)."
        )


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(spec: RunSpec, n: int, *, memory: int | None = None) -> None:
    """Refuse settings whose arrays cannot fit in memory, before any image is read.

    A decoded batch takes batch_size x 3 x side^2 float32 values; raw pixel features take n x 3 x side^2.
    Either may use at most half of this machine's RAM (``memory`` bytes; measured when None).

    Raises
    ------
    SpecError
        Naming the setting, the bytes it needs, the bytes available and the fix.
    """
    memory = physical_memory() if memory is None else memory
    if not memory:
        return
    budget = memory // 2
    features = spec.pipeline.features
    default_side = {"pixels": 32, "ae": 128}.get(features.name, 224)
    side = int(features.params.get("image_size", default_side))
    per_image = 3 * side * side * 4
    batch_bytes = spec.batch_size * per_image
    if batch_bytes > budget:
        raise SpecError(
            f"A batch of {spec.batch_size} images at {side} px takes {_gib(batch_bytes)}, more than half of this "
            f"machine's {_gib(memory)} of memory. Lower --batch-size (at most {max(1, budget // per_image)}) or "
            "image_size."
        )
    if features.name == "pixels" and n * per_image > budget:
        raise SpecError(
            f"Raw pixel features of {n} images at {side} px take {_gib(n * per_image)}, more than half of this "
            f"machine's {_gib(memory)} of memory. Lower image_size in pixels(image_size=...), or use a "
            "backbone (e.g. mobilenet_v2)."
        )


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
