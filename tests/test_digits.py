"""The embedded digits world: real-data splits, the training script, and the shipped model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from augment.digits.data import (
    DIGIT_NAMES,
    digit_splits,
    load_digit_images,
    prompt_for,
)
from augment.provenance import model_license

SHIPPED = Path(__file__).resolve().parents[1] / "augment" / "digits" / "model"


def load_pipeline(folder: Path):
    """The shipped loader: the same path `augment run` takes with builtin:digits."""
    from augment.generate.pipelines import load_txt2img_pipeline

    return load_txt2img_pipeline(str(folder), dtype="float32", device="cpu")


def test_images_are_white_on_black_rgb_32px():
    images, labels = load_digit_images(32)
    assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()
    # Black background: the corners are dark, the ink reaches white.
    assert images[:, :2, :2].mean() < 10 and images.max() == 255


def test_splits_are_disjoint_stratified_and_cover_everything():
    _, labels = load_digit_images(8)
    splits = digit_splits(seed=0)
    assert set(splits) == {"generator", "pool", "validation", "test"}
    joined = np.concatenate(list(splits.values()))
    assert len(joined) == len(set(joined.tolist())) == 1797
    assert set(joined.tolist()) == set(range(1797))
    assert (np.bincount(labels[splits["pool"]], minlength=10) == 30).all()
    assert (np.bincount(labels[splits["validation"]], minlength=10) == 20).all()
    assert (np.bincount(labels[splits["test"]], minlength=10) == 30).all()
    assert len(splits["generator"]) == 1797 - 300 - 200 - 300


def test_splits_are_seeded():
    a, b, c = digit_splits(seed=0), digit_splits(seed=0), digit_splits(seed=1)
    for key in a:
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["test"], c["test"])


def test_prompts():
    assert len(DIGIT_NAMES) == 10 and DIGIT_NAMES[7] == "seven"
    assert prompt_for(7) == "a handwritten digit seven"
    assert prompt_for(np.int64(0)) == "a handwritten digit zero"


def test_training_writes_a_loadable_pipeline(tmp_path):
    from augment.digits.train import DigitsTrainConfig, train_digits_model

    out = tmp_path / "digits-model"
    config = DigitsTrainConfig(
        steps=3,
        vae_steps=2,
        batch_size=8,
        vae_batch_size=8,
        max_shift=0,
        threads=1,
        progress=False,
        samples=True,
        sample_steps=2,
    )
    stats = train_digits_model(out, config)
    assert stats["steps"] == 3 and len(stats["loss"]) == 3 and len(stats["vae_loss"]) == 2
    assert stats["seconds"] > 0
    sizes = {"generator": 997, "pool": 300, "validation": 200, "test": 300}
    assert stats["split_sizes"] == sizes
    for name in ("model_index.json", "README.md", "loss.png", "samples.png"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "augment digits train --out DIR --steps 3" in card
    assert "Synthetic-only accuracy" in card
    assert model_license(out) == "apache-2.0"  # what every image's provenance names
    assert not list(tmp_path.glob(".digits-model.*")), "temporary folder left behind"

    pipe = load_pipeline(out)
    assert pipe.scheduler.__class__.__name__ == "DDIMScheduler"
    images = pipe(
        ["a handwritten digit seven", "a handwritten digit one"],
        num_inference_steps=2,
        guidance_scale=3.0,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(0),
    ).images
    assert images.shape == (2, 32, 32, 3)
    assert np.isfinite(images).all()


@pytest.mark.skipif(not (SHIPPED / "model_index.json").is_file(), reason="no shipped model")
def test_shipped_model_renders_a_three():
    pipe = load_pipeline(SHIPPED)
    image = pipe(
        "a handwritten digit three",
        num_inference_steps=10,
        guidance_scale=3.0,
        height=32,
        width=32,
        generator=torch.Generator("cpu").manual_seed(0),
    ).images[0]
    assert image.size == (32, 32) and image.mode == "RGB"
    pixels = np.asarray(image)
    # White ink on a black background: dark left and right margins (digits span the full
    # height, as in the 8x8 scans), some bright ink.
    margins = np.concatenate([pixels[:, :2].ravel(), pixels[:, -2:].ravel()])
    assert margins.mean() < 60 and pixels.max() > 150


@pytest.mark.skipif(not (SHIPPED / "model_index.json").is_file(), reason="no shipped model")
def test_shipped_model_renders_the_asked_digit():
    """A cheap quality check: nearest real class mean (generator split) of one image per digit."""
    images, labels = load_digit_images(32)
    train = digit_splits(seed=0)["generator"]
    grey = images[train, :, :, 0].reshape(len(train), -1) / 255.0
    means = np.stack([grey[labels[train] == c].mean(0) for c in range(10)])
    pipe = load_pipeline(SHIPPED)
    out = pipe(
        [prompt_for(c) for c in range(10)],
        num_inference_steps=20,
        guidance_scale=2.0,
        height=32,
        width=32,
        output_type="np",
        generator=[torch.Generator("cpu").manual_seed(c) for c in range(10)],
    ).images
    rendered = out.mean(-1).reshape(10, -1)
    nearest = ((rendered[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == np.arange(10)).sum() >= 8, nearest


def test_shipped_model_size():
    if not (SHIPPED / "model_index.json").is_file():
        pytest.skip("no shipped model")
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 12e6
