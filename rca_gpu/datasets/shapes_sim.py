"""``shapes-sim``: a procedural simulator whose test scenes leave the DUT's nominal parameter ranges.

In the spirit of simulator-based case studies: a scene is fully described by its parameters (shape, size,
position, rotation, colours, illumination, occluder, blur, noise; see :mod:`rca_gpu.datasets.scenes`). The
DUT learns scenes drawn from the nominal ranges. Each test scene is nominal except for ONE named region
whose parameters step outside them; a failure's root cause is that region. A failure counts only if the
DUT classifies the same scene with that region's parameters put back to nominal correctly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rca_gpu.datasets import scenes
from rca_gpu.datasets.info import NONE, SHAPES_CLASSES, CauseInfo, DatasetInfo

TRAIN_SIZE = 6000
TEST_SIZE = 2000
EPOCHS = 6
#: Bump when rendering changes, so cached DUTs trained on the old renderer are not reused.
RENDERER_VERSION = 1

INFO = DatasetInfo(
    name="shapes-sim",
    summary="Procedural scenes (5 shapes, 64x64 RGB); 7 off-nominal parameter regions as root causes.",
    causes=(
        CauseInfo(NONE, "nominal scene that the DUT misclassifies", 0.02),
        CauseInfo("strong_blur", "scene badly out of focus", 0.20, {"blur_sigma": (2.5, 4.0)}),
        CauseInfo(
            "heavy_occlusion",
            "a grey square covers most of the object",
            0.19,
            {"occluder_size": (0.75, 1.0), "occluder_dx": (-0.15, 0.15), "occluder_dy": (-0.15, 0.15)},
        ),
        CauseInfo("heavy_noise", "strong sensor noise", 0.18, {"noise_sigma": (0.2, 0.35)}),
        CauseInfo("tiny_object", "object only a few pixels across", 0.17, {"size": (0.04, 0.08)}),
        CauseInfo(
            "edge_position",
            "object centred near a border, partly out of the frame",
            0.15,
            {"edge_distance": (0.0, 0.06)},
        ),
        CauseInfo(
            "low_contrast",
            "faint, almost grey object on a background of nearly the same level",
            0.05,
            {"contrast": (0.02, 0.06), "object_saturation": (0.0, 0.1)},
        ),
        CauseInfo(
            "dark_scene", "scene almost black: very low illumination", 0.04, {"illumination": (0.05, 0.15)}
        ),
    ),
    default_n=1500,
    image_shape=(3, scenes.SIZE, scenes.SIZE),
    classes=SHAPES_CLASSES,
    factory="shapes_cnn",
    module="rca_gpu.datasets.shapes_sim",
)

#: Parameter columns of the manifest and their dtypes. Every scene has every parameter.
COLUMNS: dict[str, str] = {
    "shape": "str",
    "size": "float64",
    "center_x": "float64",
    "center_y": "float64",
    "edge_distance": "float64",
    "rotation_deg": "float64",
    "object_hue": "float64",
    "object_saturation": "float64",
    "object_level": "float64",
    "background_level": "float64",
    "contrast": "float64",  # object_level - background_level
    "illumination": "float64",
    "occluder_size": "float64",
    "occluder_dx": "float64",
    "occluder_dy": "float64",
    "occluder_level": "float64",
    "blur_sigma": "float64",
    "noise_sigma": "float64",
    "op_seed": "Int64",  # seeds the noise field
}


def prepare(*, seed: int, reporter=None):
    """Get the DUT (cache, or render nominal scenes and train) and return the per-region proposer."""
    import PIL

    from rca_gpu.datasets.building import Prepared
    from rca_gpu.datasets.models import shapes_cnn
    from rca_gpu.datasets.training import Recipe, get_or_train

    model, meta = get_or_train(
        INFO.name,
        shapes_cnn,
        Recipe(epochs=EPOCHS),
        seed=seed,
        reporter=reporter,
        make_data=lambda: _training_data(seed, reporter),
        key_fields={
            "renderer_version": RENDERER_VERSION,
            "nominal": scenes.NOMINAL,
            "size": scenes.SIZE,
            "supersample": scenes.SUPERSAMPLE,
            "train_size": TRAIN_SIZE,
            "test_size": TEST_SIZE,
            "pillow": PIL.__version__,
        },
    )
    return Prepared(model=model, dut_meta=meta, propose=propose, extra={"nominal_ranges": scenes.NOMINAL})


def propose(cause: str, rng: np.random.Generator, k: int):
    """k scenes for ``cause``: nominal draws, then the cause's region overrides (twins stay nominal)."""
    from rca_gpu.datasets.sampling import Candidates

    nominal = [scenes.draw_nominal(rng) for _ in range(k)]
    if cause == NONE:
        return Candidates(render_batch(nominal), _labels(nominal), [_columns(s) for s in nominal])
    altered = [REGIONS[cause](dict(scene), rng) for scene in nominal]
    return Candidates(
        render_batch(altered), _labels(altered), [_columns(s) for s in altered], render_batch(nominal)
    )


def render_batch(batch: list[dict[str, Any]]) -> np.ndarray:
    """uint8 (k, 64, 64, 3) images, quantised as the PNGs will be."""
    import torch

    from rca_gpu.datasets.runtime import quantize

    return quantize(torch.stack([scenes.render(scene) for scene in batch]))


def _training_data(seed: int, reporter):
    from rca_gpu.datasets.runtime import progress_task
    from rca_gpu.datasets.training import TrainingData

    rng = np.random.default_rng([seed, 0x7EA1])
    drawn = [scenes.draw_nominal(rng) for _ in range(TRAIN_SIZE + TEST_SIZE)]
    chunks = []
    with progress_task(reporter, "rendering nominal scenes", len(drawn)) as advance:
        for start in range(0, len(drawn), 500):
            chunks.append(render_batch(drawn[start : start + 500]))
            advance(len(chunks[-1]))
    images, labels = np.concatenate(chunks), _labels(drawn)
    return TrainingData(images[:TRAIN_SIZE], labels[:TRAIN_SIZE], images[TRAIN_SIZE:], labels[TRAIN_SIZE:])


def _labels(batch: list[dict[str, Any]]) -> np.ndarray:
    return np.array([scene["label"] for scene in batch], dtype=np.int64)


def _columns(scene: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in scene.items() if k != "label"}, "edge_distance": scenes.edge_distance(scene)}


# --------------------------------------------------------------------------------------------------
# One override per region: (nominal scene, rng) -> the scene with that region's parameters off-nominal.
# --------------------------------------------------------------------------------------------------


def _set(cause: str) -> Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]:
    """Override that redraws each ranged column of ``cause`` uniformly from its range."""

    def override(scene: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        for column in INFO.cause(cause).ranges:
            scene[column] = INFO.draw(rng, cause, column)
        return scene

    return override


def _edge_position(scene: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    distance = INFO.draw(rng, "edge_position", "edge_distance")
    axis = "center_x" if rng.random() < 0.5 else "center_y"
    scene[axis] = distance if rng.random() < 0.5 else 1.0 - distance
    return scene


def _low_contrast(scene: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    scene["object_saturation"] = INFO.draw(rng, "low_contrast", "object_saturation")
    magnitude = INFO.draw(rng, "low_contrast", "contrast")
    scenes.set_contrast(scene, magnitude if rng.random() < 0.5 else -magnitude, rng)
    return scene


REGIONS: dict[str, Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]] = {
    "strong_blur": _set("strong_blur"),
    "heavy_occlusion": _set("heavy_occlusion"),
    "heavy_noise": _set("heavy_noise"),
    "tiny_object": _set("tiny_object"),
    "edge_position": _edge_position,
    "low_contrast": _low_contrast,
    "dark_scene": _set("dark_scene"),
}
