"""Features learned from the failing images alone: the bottleneck of a convolutional autoencoder.

The autoencoder is trained in ``prepare()`` on the source images (a seeded random subset when they do not
fit a memory budget), with Adam and early stopping on a held-out 10 % reconstruction loss. Its size follows
the images: they are resized to a square side rounded to a multiple of 8 (16..128 px), and the encoder
halves that side until about 4 px remain (2 to 5 stride-2 stages) before a linear bottleneck of ``latent``
values, which are the features.

Training costs minutes, so the trained weights are kept under ``context.work_dir`` as a state_dict plus a
JSON config, keyed by a hash of the source's fingerprint, the resolved parameters and the seed; a re-run on
the same images with the same settings loads them (``weights_only=True``) instead of training again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import nn

from rca_gpu.errors import TooFewImagesError
from rca_gpu.features.base import FeatureExtractor

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.progress import Reporter

log = logging.getLogger("rca_gpu")

DEFAULT_LATENT = 32
DEFAULT_EPOCHS = 30
MIN_SIZE, MAX_SIZE = 16, 128
#: Epochs without a better validation loss before training stops.
PATIENCE = 5
VAL_FRACTION = 0.1
LEARNING_RATE = 1e-3
#: Training images are held on the device as uint8; this caps their memory (a random subset beyond it).
TRAIN_BUDGET_BYTES = 512 * 2**20
#: Bump when the architecture or training changes, so saved models are not reused.
ARCH_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------------


def plan_geometry(size: int) -> tuple[int, int]:
    """(image side, stride-2 stages) for images about ``size`` px: side a multiple of 8 and of 2**stages,
    clamped to 16..128, and stages chosen so that the encoder ends at about 4 x 4."""
    side = min(MAX_SIZE, max(MIN_SIZE, 8 * math.floor(size / 8 + 0.5)))
    stages = min(5, max(2, int(math.log2(side / 4))))
    step = 2**stages
    return max(2 * step, step * math.floor(side / step + 0.5)), stages


@dataclass(frozen=True)
class AEConfig:
    """Everything that fixes the architecture; saved next to the weights."""

    channels: int
    image_size: int
    stages: int
    latent: int
    base_width: int = 32
    max_width: int = 256

    @property
    def widths(self) -> list[int]:
        return [min(self.base_width * 2**i, self.max_width) for i in range(self.stages)]

    @property
    def bottom(self) -> int:
        """Side of the last feature map, before the linear bottleneck."""
        return self.image_size // 2**self.stages


class ConvAutoencoder(nn.Module):
    """Stride-2 conv encoder -> linear bottleneck -> transposed-conv decoder, outputs in [0, 1]."""

    def __init__(self, config: AEConfig) -> None:
        super().__init__()
        self.config = config
        widths, bottom = config.widths, config.bottom
        encoder: list[nn.Module] = []
        previous = config.channels
        for width in widths:
            encoder += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            previous = width
        encoder += [nn.Flatten(), nn.Linear(widths[-1] * bottom * bottom, config.latent)]
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = [
            nn.Linear(config.latent, widths[-1] * bottom * bottom),
            nn.ReLU(),
            nn.Unflatten(1, (widths[-1], bottom, bottom)),
        ]
        for width, narrower in itertools.pairwise(widths[::-1]):
            decoder += [
                nn.ConvTranspose2d(width, narrower, 4, stride=2, padding=1),
                nn.BatchNorm2d(narrower),
                nn.ReLU(),
            ]
        decoder += [nn.ConvTranspose2d(widths[0], config.channels, 4, stride=2, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*decoder)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))


def build_autoencoder(config: AEConfig, *, seed: int) -> ConvAutoencoder:
    """A freshly initialised autoencoder; the initialisation is seeded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):  # restores the caller's CPU RNG state afterwards
        torch.manual_seed(seed)
        return ConvAutoencoder(config)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


class EpochLoss(TypedDict):
    """One epoch of :class:`TrainResult`'s history: mean losses (MSE of pixel values in [0, 1])."""

    epoch: int
    train_loss: float
    val_loss: float | None  # None without held-out images


@dataclass
class TrainResult:
    """How training went; saved in the JSON config and reported in run.json."""

    epochs_run: int = 0
    best_epoch: int = 0
    train_loss: float = float("nan")
    val_loss: float | None = None
    history: list[EpochLoss] = field(default_factory=list)
    images: int = 0


def train_autoencoder(
    model: ConvAutoencoder,
    images: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Fit ``model`` to reconstruct ``images`` (uint8, n x c x s x s, on the training device).

    10 % of the images (when there are at least 10) are held out; training stops after ``PATIENCE`` epochs
    without a better held-out loss and the best weights are restored.
    """
    from rca_gpu.progress import Reporter

    device = images.device
    generator = torch.Generator().manual_seed(seed)
    n = int(images.shape[0])
    order = torch.randperm(n, generator=generator)
    n_val = round(n * VAL_FRACTION) if n >= 10 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    result = TrainResult(images=n)
    best_loss, best_state, waited = float("inf"), None, 0
    with (reporter or Reporter(enabled=False)).task("training the autoencoder", total=epochs) as advance:
        for epoch in range(1, epochs + 1):
            model.train()
            total = torch.zeros((), device=device)  # summed on the device: no host sync per step
            for batch in torch.randperm(len(train_idx), generator=generator).split(batch_size):
                x = images[train_idx[batch].to(device)].float().div_(255)
                loss = nn.functional.mse_loss(model(x), x)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += loss.detach() * len(batch)
            train_loss = float(total) / len(train_idx)
            val_loss = _mean_loss(model, images, val_idx, batch_size) if n_val else None
            result.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
            watched = val_loss if val_loss is not None else train_loss
            if watched < best_loss * (1 - 1e-4):
                best_loss, waited, result.best_epoch = watched, 0, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                waited += 1
            advance(1)
            if waited >= PATIENCE:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    best = result.history[result.best_epoch - 1]
    result.epochs_run = len(result.history)
    result.train_loss, result.val_loss = best["train_loss"], best["val_loss"]
    return result


def _mean_loss(model: ConvAutoencoder, images: torch.Tensor, index: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for part in index.split(batch_size):
            x = images[part.to(images.device)].float().div_(255)
            total += float(nn.functional.mse_loss(model(x), x)) * len(part)
    return total / max(len(index), 1)


# --------------------------------------------------------------------------------------------------
# The extractor
# --------------------------------------------------------------------------------------------------


class _ToSquare:
    """PIL image -> float tensor (c, s, s) in [0, 1]. A class, so it pickles into DataLoader workers."""

    def __init__(self, size: int) -> None:
        from torchvision.transforms import v2

        self.pipeline = v2.Compose(
            [v2.ToImage(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)]
        )

    def __call__(self, image: Any) -> torch.Tensor:
        return self.pipeline(image)


class AutoencoderExtractor(FeatureExtractor):
    """Bottleneck of a convolutional autoencoder trained on the source images (cached between runs)."""

    def prepare(self) -> None:
        from rca_gpu.features.dut import source_image_shape

        source = source_image_shape(self.context.failures)
        if source is None:
            raise TooFewImagesError("No source image could be read to train the autoencoder.")
        channels, height, width = source
        side, stages = plan_geometry(int(self.spec.params.get("image_size", max(height, width))))
        self.config = AEConfig(channels, side, stages, int(self.spec.params.get("latent", DEFAULT_LATENT)))
        self.image_mode = "L" if channels == 1 else "RGB"
        self.epochs = int(self.spec.params.get("epochs", DEFAULT_EPOCHS))
        self.key = self._key()
        self.folder = (
            Path(self.context.work_dir) / "autoencoder" / f"ae-{self.key}" if self.context.work_dir else None
        )
        self.trained = False
        loaded = self._load()
        if loaded is None:
            self.model, self.result = self._train()
            self.trained = True
            self._save()
        else:
            self.model, self.result = loaded
        self.model.eval()

    # ------------------------------------------------------------------------------------------------
    def _key(self) -> str:
        payload = {
            "version": ARCH_VERSION,
            "files": self.context.failures.fingerprint(),
            "config": asdict(self.config),
            "epochs": self.epochs,
            "seed": self.context.seed,
            "batch_size": self.context.batch_size,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _training_images(self) -> torch.Tensor:
        """The training images as uint8 on the device: all of them, or a seeded subset within the budget."""
        per_image = self.config.channels * self.config.image_size**2
        limit = max(1, TRAIN_BUDGET_BYTES // per_image)
        parts = [
            images.mul(255).round_().to(torch.uint8)
            for _, images in self.context.batches(
                self.transform(),
                self.image_mode,
                limit=limit,
                shuffle=True,
                description="reading images for the autoencoder",
            )
        ]
        if not parts:
            raise TooFewImagesError("No source image could be read to train the autoencoder.")
        return torch.cat(parts)

    def _train(self) -> tuple[ConvAutoencoder, TrainResult]:
        images = self._training_images()
        model = build_autoencoder(self.config, seed=self.context.seed).to(self.context.device)
        result = train_autoencoder(
            model,
            images,
            epochs=self.epochs,
            batch_size=self.context.batch_size,
            seed=self.context.seed,
            reporter=self.context.reporter,
        )
        log.info(
            "autoencoder: trained %d epoch(s) on %d images, val loss %s",
            result.epochs_run,
            result.images,
            result.val_loss,
        )
        return model, result

    def _save(self) -> None:
        """Weights first, then the config: a folder with both files is complete (each written atomically)."""
        if self.folder is None:
            return
        from rca_gpu import outputs

        weights, config = self.folder / "model.pt", self.folder / "config.json"
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        outputs.write_atomic(weights, lambda tmp: torch.save(state, tmp))  # a temporary name per process
        text = json.dumps(
            {"key": self.key, "config": asdict(self.config), "training": asdict(self.result)}, indent=2
        )
        outputs.write_text(config, text)

    def _load(self) -> tuple[ConvAutoencoder, TrainResult] | None:
        if (
            self.folder is None
            or not (self.folder / "config.json").is_file()
            or not (self.folder / "model.pt").is_file()
        ):
            return None
        try:
            saved = json.loads((self.folder / "config.json").read_text())
            if AEConfig(**saved["config"]) != self.config:
                return None
            model = ConvAutoencoder(self.config)
            state = torch.load(self.folder / "model.pt", map_location=self.context.device, weights_only=True)
            model.load_state_dict(state)
            result = TrainResult(**saved["training"])
        except Exception as exc:  # noqa: BLE001 - a damaged cache is retrained, not trusted
            log.warning("autoencoder: ignoring the saved model in %s (%s); training again", self.folder, exc)
            return None
        log.info("autoencoder: reusing the model trained before in %s", self.folder)
        return model.to(self.context.device), result

    # ------------------------------------------------------------------------------------------------
    def transform(self) -> _ToSquare:
        return _ToSquare(self.config.image_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(images).float()

    def describe(self) -> dict[str, Any]:
        result = self.result
        return {
            "name": self.spec.name,
            "architecture": {
                **asdict(self.config),
                "widths": self.config.widths,
                "parameters": sum(p.numel() for p in self.model.parameters()),
            },
            "image_size": self.config.image_size,
            "latent": self.config.latent,
            "dims": self.config.latent,
            "trained": self.trained,
            "model_path": str(self.folder) if self.folder else None,
            "max_epochs": self.epochs,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "train_images": result.images,
            "train_loss": _round(result.train_loss),
            "val_loss": _round(result.val_loss),
            "history": [
                {
                    "epoch": h["epoch"],
                    "train_loss": _round(h["train_loss"]),
                    "val_loss": _round(h["val_loss"]),
                }
                for h in result.history
            ],
        }

    def cache_token(self) -> str:
        return f"ae={self.key}"


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)
