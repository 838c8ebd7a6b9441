"""Procedural scenes for ``shapes-sim``: one coloured shape on a grey background, seen by a camera.

A scene is a dict of parameters (every one becomes a manifest column). :func:`render` draws the geometry
with PIL at 4x resolution and downsamples it (anti-aliased edges), then the camera is torchvision.v2:
brightness for illumination, GaussianBlur for defocus, GaussianNoise for sensor noise.
"""

from __future__ import annotations

import colorsys
import math
from typing import Any

import numpy as np

from rca_gpu.datasets.info import SHAPES_CLASSES

SIZE = 64
SUPERSAMPLE = 4
#: Star inner radius and cross arm half-width, relative to the outer radius.
STAR_INNER = 0.45
CROSS_HALF_WIDTH = 0.3

#: Nominal ranges: the DUT trains on these and a nominal test scene draws from them too.
NOMINAL: dict[str, tuple[float, float]] = {
    "size": (0.18, 0.34),  # outer radius / image side
    "center_x": (0.3, 0.7),
    "center_y": (0.3, 0.7),
    "rotation_deg": (0.0, 360.0),
    "object_hue": (0.0, 1.0),
    "object_saturation": (0.2, 0.7),
    "contrast": (0.3, 0.6),  # |object level - background level|, sign drawn separately
    "background_level": (0.1, 0.9),
    "illumination": (0.8, 1.2),
    "occluder_size": (0.0, 0.25),  # occluder side / object diameter
    "occluder_offset": (-0.8, 0.8),  # occluder centre - object centre, in object radii
    "occluder_level": (0.0, 1.0),
    "blur_sigma": (0.0, 0.8),  # pixels
    "noise_sigma": (0.0, 0.03),
}


def draw_nominal(rng: np.random.Generator) -> dict[str, Any]:
    """One scene drawn from the nominal ranges (label included)."""

    def u(name: str) -> float:
        low, high = NOMINAL[name]
        return float(rng.uniform(low, high))

    label = int(rng.integers(len(SHAPES_CLASSES)))
    scene: dict[str, Any] = {
        "shape": SHAPES_CLASSES[label],
        "label": label,
        "size": u("size"),
        "center_x": u("center_x"),
        "center_y": u("center_y"),
        "rotation_deg": u("rotation_deg"),
        "object_hue": u("object_hue"),
        "object_saturation": u("object_saturation"),
        "illumination": u("illumination"),
        "occluder_size": u("occluder_size"),
        "occluder_dx": u("occluder_offset"),
        "occluder_dy": u("occluder_offset"),
        "occluder_level": u("occluder_level"),
        "blur_sigma": u("blur_sigma"),
        "noise_sigma": u("noise_sigma"),
        "op_seed": int(rng.integers(2**31 - 1)),
    }
    set_contrast(scene, u("contrast") * (1.0 if rng.random() < 0.5 else -1.0), rng)
    return scene


def set_contrast(scene: dict[str, Any], contrast: float, rng: np.random.Generator) -> None:
    """Place background and object levels so that object - background = ``contrast``, both in range."""
    low_bg, high_bg = NOMINAL["background_level"]
    low = max(low_bg, -contrast)
    high = min(high_bg, 1.0 - contrast)
    background = float(rng.uniform(low, high))
    scene.update(contrast=contrast, background_level=background, object_level=background + contrast)


def edge_distance(scene: dict[str, Any]) -> float:
    """Distance of the object's centre from the nearest image border, in image sides."""
    x, y = scene["center_x"], scene["center_y"]
    return float(min(x, 1 - x, y, 1 - y))


def render(scene: dict[str, Any]):
    """The scene as a float tensor (3, SIZE, SIZE) in [0, 1]."""
    import torch
    from PIL import Image, ImageDraw
    from torchvision.transforms.v2 import functional as F

    side = SIZE * SUPERSAMPLE
    grey = round(255 * scene["background_level"])
    canvas = Image.new("RGB", (side, side), (grey, grey, grey))
    draw = ImageDraw.Draw(canvas)
    cx, cy, radius = scene["center_x"] * side, scene["center_y"] * side, scene["size"] * side
    colour = _object_colour(scene)
    if scene["shape"] == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    else:
        draw.polygon(_outline(scene["shape"], cx, cy, radius, scene["rotation_deg"]), fill=colour)
    half = scene["occluder_size"] * radius  # side = size * diameter
    if half > 0:
        ox, oy = cx + scene["occluder_dx"] * radius, cy + scene["occluder_dy"] * radius
        level = round(255 * scene["occluder_level"])
        draw.rectangle([ox - half, oy - half, ox + half, oy + half], fill=(level, level, level))
    image = F.to_dtype(
        F.to_image(canvas.resize((SIZE, SIZE), Image.Resampling.BOX)), torch.float32, scale=True
    )
    image = F.adjust_brightness(image, scene["illumination"])
    if scene["blur_sigma"] > 0:
        sigma = scene["blur_sigma"]
        kernel = max(3, 2 * math.ceil(3 * sigma) + 1)
        image = F.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    if scene["noise_sigma"] > 0:
        torch.default_generator.manual_seed(scene["op_seed"])  # the noise field comes from the CPU RNG
        image = F.gaussian_noise(image, mean=0.0, sigma=scene["noise_sigma"], clip=True)
    return image


def _object_colour(scene: dict[str, Any]) -> tuple[int, int, int]:
    """A hue at the scene's saturation, scaled so its mean level equals ``object_level``."""
    rgb = np.array(colorsys.hsv_to_rgb(scene["object_hue"], scene["object_saturation"], 1.0))
    rgb = np.clip(rgb * scene["object_level"] / rgb.mean(), 0.0, 1.0)
    red, green, blue = (round(255 * float(c)) for c in rgb)
    return red, green, blue


def _outline(
    shape: str, cx: float, cy: float, radius: float, rotation_deg: float
) -> list[tuple[float, float]]:
    """Polygon vertices of a shape with outer radius ``radius``, rotated about its centre."""
    if shape == "square":
        points = [(radius, math.radians(45 + 90 * k)) for k in range(4)]
    elif shape == "triangle":
        points = [(radius, math.radians(-90 + 120 * k)) for k in range(3)]
    elif shape == "star":
        points = [
            (radius if k % 2 == 0 else STAR_INNER * radius, math.radians(-90 + 36 * k)) for k in range(10)
        ]
    elif shape == "cross":
        w = CROSS_HALF_WIDTH * radius
        corners = [
            (w, radius),
            (w, w),
            (radius, w),
            (radius, -w),
            (w, -w),
            (w, -radius),
            (-w, -radius),
            (-w, -w),
            (-radius, -w),
            (-radius, w),
            (-w, w),
            (-w, radius),
        ]
        points = [(math.hypot(x, y), math.atan2(y, x)) for x, y in corners]
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES_CLASSES)}")
    turn = math.radians(rotation_deg)
    return [(cx + r * math.cos(a + turn), cy + r * math.sin(a + turn)) for r, a in points]
