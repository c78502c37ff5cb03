"""An original-format (LDM/A1111) single file loads offline and renders like its folder."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.generate.ldm_checkpoint import ldm_state_dict, write_ldm_checkpoint
from augment.generate.tiny import save_tiny_sd

PROMPTS = ["a handwritten digit seven", "a photo of the number three"]


def render(pipe) -> np.ndarray:
    """Two 32x32 images from fixed CPU generators: equal weights give equal pixels."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in (0, 1)]
    return pipe(
        PROMPTS,
        num_inference_steps=3,
        height=32,
        width=32,
        generator=generators,
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random pipeline as a diffusers folder, built once for this module."""
    return save_tiny_sd(tmp_path_factory.mktemp("single-file") / "tiny")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub and no network at all: huggingface_hub reads HF_HUB_OFFLINE once, at import."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(self, address):
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_ldm_keys_round_trip_through_diffusers_converters(tiny_folder: Path) -> None:
    """Our key mapping is exactly the inverse of the one from_single_file applies."""
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder)
    checkpoint = ldm_state_dict(pipe)
    assert infer_diffusers_model_type(checkpoint) == "v1"
    unet = convert_ldm_unet_checkpoint(checkpoint, dict(pipe.unet.config))
    vae = convert_ldm_vae_checkpoint(checkpoint, dict(pipe.vae.config))
    clip = {
        k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(checkpoint).items()
    }
    for converted, model in ((unet, pipe.unet), (vae, pipe.vae), (clip, pipe.text_encoder)):
        expected = model.state_dict()
        assert set(expected) <= set(converted)
        for key, value in expected.items():
            assert torch.equal(converted[key], value), key


def test_single_file_renders_like_diffusers_folder(
    tiny_folder: Path, tmp_path: Path, offline: None
) -> None:
    from diffusers import StableDiffusionPipeline

    reference = StableDiffusionPipeline.from_pretrained(tiny_folder, local_files_only=True)
    checkpoint = write_ldm_checkpoint(reference, tmp_path / "tiny-sd.safetensors")
    # Configs only: every weight must come from the single file.
    configs = Path(
        shutil.copytree(
            tiny_folder, tmp_path / "configs", ignore=shutil.ignore_patterns("*.safetensors")
        )
    )
    assert not list(configs.rglob("*.safetensors"))

    loaded = StableDiffusionPipeline.from_single_file(
        str(checkpoint),
        config=str(configs),  # must be a str: a Path is rejected by the model loaders
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )

    assert type(loaded.scheduler) is type(reference.scheduler)
    assert dict(loaded.scheduler.config) == dict(reference.scheduler.config)
    expected, images = render(reference), render(loaded)
    assert images.shape == (2, 32, 32, 3)
    assert float(np.abs(images - expected).max()) < 1e-5
