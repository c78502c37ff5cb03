"""The render loop's output path: uint8 on the device, encoding overlapped, same bytes."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from augment.config import load_spec
from augment.errors import ModelError, SpecError
from augment.generate.engine import AUTO_CPU_BATCH, largest_batch, to_uint8
from augment.job import RunOptions, run_job
from tests.conftest import REPO


def numpy_uint8(image: np.ndarray) -> np.ndarray:
    """The conversion as it ran on the CPU before: float32 HWC, NaN -> 0, clip, x255, round."""
    image = np.nan_to_num(image.astype(np.float32), nan=0.0)
    return (image.clip(0, 1) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_uint8_conversion_gives_the_bytes_of_the_float32_numpy_formula(dtype):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=generator) * 1.2 - 0.1
    images[0, 0, 0, :8] = (torch.arange(8) + 0.5) / 255  # halfway values: round half to even
    images[1, 1, 2, 3] = float("nan")
    images[1, 2, 5, 5] = float("inf")
    images[1, 0, 7, 7] = float("-inf")
    images[2] = 0.01  # 3 on the 0..255 scale: black
    images = images.to(dtype)
    pixels, nans, black = to_uint8(images)
    expected = [numpy_uint8(image) for image in images.permute(0, 2, 3, 1).float().numpy()]
    assert all(np.array_equal(a, b) for a, b in zip(pixels, expected, strict=True))
    assert all(p.dtype == np.uint8 and p.shape == (16, 16, 3) for p in pixels)
    assert nans == [False, True, False]
    assert black == [False, False, True]


def shard_rows(out) -> list[dict]:
    """Every committed row but its timing, in shard order."""
    rows = pq.read_table(out / "shards").to_pylist()
    return [{k: v for k, v in row.items() if k != "render_s"} for row in rows]


@pytest.mark.parametrize("job", ["tiny", "digits"])
def test_shards_are_the_same_with_encoding_overlapped_or_not(job, write_job, tmp_path):
    """The overlap changes when a PNG is encoded, never what is written, nor in what order."""
    if job == "tiny":
        path, limit = write_job(), None
    else:  # the demo's own job: its model, filter and segmenter, a few batches of it
        path, limit = REPO / "jobs" / "demo.yaml", 24
    outputs = {}
    for threads in (0, 3):
        out = tmp_path / f"threads{threads}"
        overrides = {
            "limit": limit,
            "output.dir": str(out),
            "generation.encode_threads": threads,
            "generation.batch_size": 2 if job == "tiny" else 8,
        }
        spec = load_spec(path, overrides).model_copy(update={"paste": None})
        run_job(spec, RunOptions(distributor="local"))
        outputs[threads] = shard_rows(out)
    assert len(outputs[0]) == (9 if job == "tiny" else 24)
    assert outputs[0] == outputs[3]


def test_auto_batch_size_takes_the_largest_size_that_fits_and_stops_at_the_first_that_does_not():
    tried = []

    def fits(size: int) -> bool:
        tried.append(size)
        return size <= 16

    assert largest_batch(fits) == 16
    assert tried == [1, 2, 4, 8, 16, 32]  # no larger trial once 32 ran out of memory
    with pytest.raises(ModelError, match="not even a batch of 1"):
        largest_batch(lambda size: False)


def test_auto_batch_size_on_a_cpu_renders_what_a_fixed_batch_of_that_size_renders(
    write_job, tmp_path
):
    rows = {}
    for batch in ("auto", AUTO_CPU_BATCH):
        out = tmp_path / str(batch)
        spec = load_spec(write_job(), {"output.dir": str(out), "generation.batch_size": batch})
        run_job(spec, RunOptions(distributor="local"))
        rows[batch] = shard_rows(out)
    assert len(rows["auto"]) == 9
    assert rows["auto"] == rows[AUTO_CPU_BATCH]
    for wrong in (0, "big", True):
        with pytest.raises(SpecError, match="positive integer or auto"):
            load_spec(write_job(), {"generation.batch_size": wrong})


@pytest.fixture(scope="module")
def digits_generator():
    """The demo job's generator (the shipped digits model), on one torch thread as a worker."""
    from augment.generate.engine import make_generator
    from augment.job import plan_for

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = load_spec(REPO / "jobs" / "demo.yaml", {"prompts.images_per_concept": 2})
    yield make_generator(spec), plan_for(spec)
    torch.set_num_threads(threads)


def png_bytes(records: list[dict]) -> list[bytes]:
    return [record["image"]["bytes"] for record in records]


def test_an_item_gives_the_same_bytes_alone_as_in_a_batch(digits_generator):
    """A retry, a short last batch or a served request renders one item alone."""
    generator, items = digits_generator
    together = png_bytes(generator(items[:6]))
    assert png_bytes(generator([items[3]])) == together[3:4]
    assert png_bytes(generator(items[3:5])) == together[3:5]


def test_a_generator_with_other_settings_renders_what_one_loaded_with_them_renders(
    digits_generator,
):
    """A served request's overrides reuse the loaded pipeline; the bytes and the provenance
    are those of a generator made for those settings."""
    from augment.generate.engine import make_generator
    from augment.provenance import read_png_chunks

    generator, items = digits_generator
    changes = {"num_inference_steps": 5, "guidance_scale": 2.0}
    view = generator.with_settings(generator.settings.model_copy(update=changes))
    overrides = {"prompts.images_per_concept": 2, "generation.num_inference_steps": 5}
    spec = load_spec(REPO / "jobs" / "demo.yaml", {**overrides, "generation.guidance_scale": 2})
    fresh = make_generator(spec)
    viewed, made = view(items[:3]), fresh(items[:3])
    assert png_bytes(viewed) == png_bytes(made)
    assert viewed[0]["settings"] == made[0]["settings"]
    assert viewed[0]["steps"] == 5 and viewed[0]["guidance"] == 2.0
    assert png_bytes(generator(items[:3])) != png_bytes(viewed)  # the original is unchanged
    assert generator(items[:1])[0]["steps"] == 25
    assert view.encoder is generator.encoder  # one pool of encoding threads for both
    chunk = read_png_chunks(viewed[0]["image"]["bytes"])["augment"]
    assert chunk == read_png_chunks(made[0]["image"]["bytes"])["augment"]


def test_a_generator_for_larger_images_renders_smaller_batches(digits_generator):
    """A served request at 1024 px reused the job's batch of 50 chosen at 32 px: 1,024 times
    the memory. The batch shrinks by the pixels; at the job's size or smaller it stays."""
    generator, items = digits_generator
    settings = generator.settings  # 32 x 32, batch 50

    def batch(**size) -> int:
        return generator.with_settings(settings.model_copy(update=size)).batch_size(items[0])

    assert batch() == batch(height=16) == 50
    assert batch(height=64) == 25 and batch(height=64, width=64) == 12
    assert batch(height=1024, width=1024) == 1
    assert generator.batch_size(items[0]) == 50  # the original is unchanged


def test_compile_vae_compiles_the_decoder_only_and_is_not_a_pixel_setting():
    """Wrapping costs nothing until the first decode, which compiles (seconds on a GPU, half a
    minute on this CPU, so not run here: its CPU render of the tiny job differs by at most 1
    from eager; `augment bench perf` measures it on a GPU)."""
    from torch._dynamo.eval_frame import OptimizedModule

    from augment.generate.engine import make_generator, render_settings_json

    job = REPO / "jobs" / "tiny" / "txt2img.yaml"
    spec = load_spec(job, {"generation.compile_vae": True})
    pipe = make_generator(spec).pipe
    assert isinstance(pipe.vae.decoder, OptimizedModule)
    assert not isinstance(pipe.unet, OptimizedModule)
    assert render_settings_json(spec.generation) == render_settings_json(load_spec(job).generation)
