"""The small image classifier shared by the filter stage and the classifier benchmark.

One definition of the architectures (a small CNN for tiny images, torchvision ResNets), of how
images become tensors, and of the classifier folder a trained model is saved as
(`model.safetensors` + `scorer.json`): the benchmark trains these models, a scorer folder made
from one filters generated images, and both read pixels the same way.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from augment.errors import AugmentError

#: Classifier architectures by name.
MODELS = ("smallcnn", "resnet18", "resnet50")
#: The file that marks an augment classifier folder.
CLASSIFIER_CONFIG = "scorer.json"


def check_classifier(name: str) -> None:
    """One of MODELS, or an error that lists them."""
    if name not in MODELS:
        raise AugmentError(f"unknown classifier '{name}'; known: {', '.join(MODELS)}")


def build_model(name: str, num_classes: int, weights: str | None = None):
    import torch
    from torch import nn

    check_classifier(name)
    if name == "smallcnn":
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 16, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    if weights:
        try:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
            first_line = str(exc).splitlines()[0]
            raise AugmentError(
                f"--weights {weights}: cannot load a state_dict for {name} ({first_line})"
            ) from None
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_array(image: Image.Image, size: int) -> np.ndarray:
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def save_classifier(
    model, folder: Path, classes: list[str], image_size: int, architecture: str, **about
) -> Path:
    """Write an augment classifier folder: weights as safetensors + scorer.json."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    config = {"architecture": architecture, "image_size": image_size, "classes": classes, **about}
    (folder / CLASSIFIER_CONFIG).write_text(json.dumps(config, indent=2))
    return folder


def load_classifier(location: str | Path):
    """A classifier folder's model (eval mode, CPU) and its config (classes, image size)."""
    from safetensors.torch import load_file

    config = json.loads((Path(location) / CLASSIFIER_CONFIG).read_text())
    model = build_model(config["architecture"], len(config["classes"]))
    model.load_state_dict(load_file(str(Path(location) / "model.safetensors")))
    return model.eval(), config


def logits_and_features(model, batch):
    """The model's logits, and the input of its final linear layer: the features it decides
    on (the 128 numbers of the small CNN, a ResNet's pooled features)."""
    from torch import nn

    head = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    seen = []
    handle = head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        logits = model(batch)
    finally:
        handle.remove()
    return logits, seen[0]
