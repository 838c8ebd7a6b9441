"""The DNNs under test of the ground-truth benchmarks: small CNNs built from plain modules.

Convention shared by every DUT in rca_gpu (other stages rely on it):

* a factory with no required arguments returns an eager ``torch.nn.Module``;
* it takes float images in [0, 1] shaped (N, C, H, W) and returns logits; normalisation happens inside;
* it exposes ``input_shape = (C, H, W)`` and ``classes`` (list of str);
* every layer is a module (``nn.Conv2d``, ``nn.ReLU``, ``nn.MaxPool2d``, ``nn.Flatten``, ``nn.Linear``) and no
  activation is called functionally, so forward hooks (Grad-CAM) and LRP rule maps (zennit) see all of them.

A manifest names the DUT as ``<factory>=dut_state.pt`` (e.g. ``mnist_cnn=dut_state.pt``): an architecture id
from the allow-list :data:`rca_gpu.data.sources.KNOWN_ARCHITECTURES`, never an importable path; the weights
load with ``model.load_state_dict(torch.load(path, weights_only=True))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rca_gpu.datasets.info import MNIST_CLASSES, SHAPES_CLASSES


class Normalize(nn.Module):
    """Per-channel standardisation as a layer, so the DUT accepts raw [0, 1] images.

    The constants are non-persistent buffers: the state_dict holds only learned weights, and the factory is
    the one place that defines the input convention.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean and std are the buffers registered above; mypy types attributes of a Module as Module, and class
        # annotations that would say otherwise break torch.jit.script of this module
        return (x - self.mean) / self.std  # type: ignore[operator]


class SmallCNN(nn.Module):
    """normalize -> features ([stride-2 stem], conv/relu/pool blocks) -> classifier (flatten/linear/...).

    The optional stem halves the resolution before the first block, which makes training at 64 px about
    twice as fast on a CPU at no cost in accuracy for objects several pixels across.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int],
        classes: Sequence[str],
        widths: Sequence[int],
        hidden: int,
        mean: Sequence[float],
        std: Sequence[float],
        stem: int | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.classes = list(classes)
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        if stem is not None:
            layers += [nn.Conv2d(channels, stem, 3, stride=2, padding=1), nn.ReLU()]
            channels, height, width = stem, (height + 1) // 2, (width + 1) // 2
        for out_channels in widths:
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels, height, width = out_channels, height // 2, width // 2
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, len(self.classes)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


def mnist_cnn() -> SmallCNN:
    """DUT of ``mnist-rc``: 1x28x28 grey digits -> 10 logits (about 0.1 M parameters)."""
    return SmallCNN(
        input_shape=(1, 28, 28),
        classes=MNIST_CLASSES,
        widths=(16, 32, 64),
        hidden=128,
        mean=(0.1307,),
        std=(0.3081,),
    )


def shapes_cnn() -> SmallCNN:
    """DUT of ``shapes-sim``: 3x64x64 RGB scenes -> 5 shape logits (about 48 k parameters).

    A stride-2 stem and narrow early layers keep training on a CPU core well under two minutes at 64 px.
    """
    return SmallCNN(
        input_shape=(3, 64, 64),
        classes=SHAPES_CLASSES,
        stem=8,
        widths=(16, 32, 32),
        hidden=64,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


class DigitRecognizerCNN(nn.Module):
    """The CNN of the PyPI package ``digit-recognizer-py`` (0.1.0, MIT), with its input normalisation inside.

    The package ships the architecture (``digit_recognizer.model.CNN``: three conv/ReLU/max-pool blocks with
    32/64/128 channels, then 1152 -> 256 -> 10) and weights trained on MNIST
    (``digit_recognizer/models/handwriting_model.pth``), and normalises with (0.1307, 0.3081) outside the
    model. The same layers under the same names, so the package's state_dict loads as it is; the reshape the
    package does functionally is an ``nn.Flatten`` here, so hooks and LRP rules see every layer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (1, 28, 28)
        self.classes = list(MNIST_CLASSES)
        self.normalize = Normalize((0.1307,), (0.3081,))
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.flatten = nn.Flatten()
        self.fc_layers = nn.Sequential(nn.Linear(128 * 3 * 3, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_layers(self.flatten(self.conv_layers(self.normalize(x))))


def digit_recognizer_cnn() -> DigitRecognizerCNN:
    """DUT of ``digits-real``: the published digit CNN of ``digit-recognizer-py`` (weights not loaded here)."""
    return DigitRecognizerCNN()
