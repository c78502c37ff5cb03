"""`augment bench perf`: how fast generation runs, against the loops people write and the floor.

In one process, for each model: the seed article's loop (one prompt per pipeline call, each
image saved as a PNG), a bare batched diffusers loop (PNG per image), `augment`'s engine
through `run_job` (PNG into Parquet shards; through a local Ray too, on a CPU) with default
settings and with each fast path, and the floor: the UNet's classifier-free-guidance forwards
of one batch plus the VAE decode, timed alone. FLOPs per image come from
`torch.utils.flop_counter` over one whole pipeline call; model-FLOPs utilisation is achieved
FLOP/s over the card's dense fp16 peak. Every timing is a ratio within this one run.

Real weights cannot be downloaded here: on a GPU the Stable Diffusion 1.5 and SDXL
architectures are built in code with random weights (the same layers and FLOPs, so the same
speed; meaningless pixels) and saved as model folders the engine loads like any other; or
`--model` names a real one. On a CPU the comparison runs on the shipped digits model.
"""

from __future__ import annotations

import io
import json
import math
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from augment.errors import AugmentError, ModelError, above, at_least, first_line
from augment.sinks import check_own_folder

#: Dense (no sparsity) fp16/bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {
    "H200 NVL": 835.0,
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,  # SXM
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.2,
}


@dataclass(frozen=True)
class Case:
    """One model at the settings it is measured at."""

    name: str
    size: int
    batch: int
    steps: int = 25
    guidance: float = 7.5
    scheduler: str = "DPMSolverMultistep"
    dtype: str = "float16"
    location: str | None = None  # a folder or builtin name; None: build the architecture


CASES = {
    "sd15": Case("sd15", 512, 8),
    "sdxl": Case("sdxl", 1024, 4),
    "digits": Case(
        "digits", 32, 50, guidance=1.0, scheduler="DDIM", dtype="float32", location="builtin:digits"
    ),
    "tiny": Case("tiny", 32, 2, steps=2, dtype="float32", location="builtin:tiny-sd"),
}

#: Engine settings tried against the default (which, on a GPU, replays the UNet as CUDA
#: graphs): each fast path alone, then together ("fastest", "compiled cuda graphs"); "no
#: overlap" encodes PNGs in the render loop and "no cuda graphs" launches every kernel from
#: Python, to see what each buys.
FAST_PATHS = {
    "no overlap": {"encode_threads": 0},
    "no cuda graphs": {"cuda_graphs": False},
    "channels_last": {"channels_last": True},
    "fuse_qkv": {"fuse_qkv": True},
    "attention flash": {"attention": "flash"},
    "attention cudnn": {"attention": "cudnn"},
    "fastest": {"fuse_qkv": True, "compile": True},
    "compiled cuda graphs": {
        "fuse_qkv": True,
        "compile": True,
        "compile_mode": "reduce-overhead",
    },
    "float16 vae": {"vae": "FLOAT16_VAE"},
    "compiled cuda graphs + float16 vae": {
        "fuse_qkv": True,
        "compile": True,
        "compile_mode": "reduce-overhead",
        "vae": "FLOAT16_VAE",
    },
    "compiled cuda graphs + compiled float16 vae": {
        "fuse_qkv": True,
        "compile": True,
        "compile_mode": "reduce-overhead",
        "vae": "FLOAT16_VAE",
        "compile_vae": True,
    },
    "compiled cuda graphs + compiled float16 vae + attention cudnn": {
        "fuse_qkv": True,
        "compile": True,
        "compile_mode": "reduce-overhead",
        "vae": "FLOAT16_VAE",
        "compile_vae": True,
        "attention": "cudnn",
    },
    "auto batch": {"batch_size": "auto"},
}


#: A fast path's `vae: FLOAT16_VAE` stands for the model's own VAE saved with `force_upcast`
#: off, as fp16-safe VAEs ship (sdxl-vae-fp16-fix): an SDXL pipeline then decodes in float16,
#: not float32 (SD 1.x/2.x pipelines never upcast: no change there). Random weights stay
#: finite; a real SDXL base's own VAE can overflow in float16, and the engine re-renders those
#: images in float32 (the row's float32_retry count).
FLOAT16_VAE = "FLOAT16_VAE"


@dataclass
class PerfSettings:
    out: str = "perf"
    #: Comma-separated CASES; "auto": sd15,sdxl on a GPU, digits on a CPU.
    models: str = "auto"
    #: A real diffusers folder measured instead of the built architectures (its family's case).
    model: str | None = None
    #: Images per timed row (default: eight batches; with fewer, the last batch's encoding,
    #: which no render overlaps, weighs more in the engine's rate).
    images: int | None = None
    #: FAST_PATHS to measure, comma-separated; "none" for none (default: all on a GPU).
    fast: str | None = None
    #: CPU: the engine through a local Ray with 1 and 2 workers.
    ray: bool = True
    #: The seed's loop, the diffusers loops, the UNet and the floor (False: FLOPs and the
    #: engine's rows only, for a short GPU session).
    baselines: bool = True
    #: The device's dense peak, when the card is not in PEAK_TFLOPS (or on a CPU).
    peak_tflops: float | None = None
    smoke: bool = False

    def __post_init__(self) -> None:
        """Refuse what no run can measure before the first (long) row: a wrong name found
        after the baselines ran would cost the GPU minutes they took."""
        if self.images is not None:
            at_least("images", self.images, 1)
        if self.peak_tflops is not None:
            above("peak_tflops", self.peak_tflops, 0)
        models = named_list("models", self.models, [*CASES, "auto"])
        if "auto" in models and len(models) > 1:
            raise AugmentError("--models: auto picks by device; name models or auto, not both")
        if self.smoke and models != ["auto"]:
            raise AugmentError(
                "--smoke measures the tiny model; leave out --models (or use it alone)"
            )
        if self.model is not None:
            if len(models) > 1:
                raise AugmentError(
                    "--model measures one model: name the one case it is measured at with "
                    f"--models (its size, steps and batch): one of {', '.join(CASES)}"
                )
            self.model = check_perf_model(self.model)
        self.models = ",".join(models)
        if self.fast is not None:
            none = self.fast.strip().lower() == "none"
            self.fast = "none" if none else ",".join(named_list("fast", self.fast, FAST_PATHS))

    def fast_paths(self, device: str) -> list[str]:
        """The FAST_PATHS to measure: those named, else none on a CPU and all on a GPU."""
        if self.fast is None:
            return [] if device == "cpu" else list(FAST_PATHS)
        return [] if self.fast == "none" else self.fast.split(",")


def check_perf_model(name: str) -> str:
    """`--model` as a pipeline the engine and diffusers can load: a folder (relative to the
    current folder), a cached hub id or a builtin; refused here, before anything is measured."""
    from augment.config import locate
    from augment.generate.pipelines import (
        check_components,
        check_model,
        model_family,
        pipeline_index,
    )

    if not name.strip():
        raise AugmentError("--model is empty; give a diffusers pipeline folder")
    location = locate(name, None, "--model")
    check_model(location, name, "--model")
    if pipeline_index(location) is None:
        raise AugmentError(
            f"--model: {name} is not a whole diffusers pipeline (no model_index.json); give a "
            "folder saved with pipeline.save_pretrained, or a cached hub id of one"
        )
    model_family(location)  # a model_index.json that cannot be read
    check_components(location, "--model")
    return location


#: Names FAST_PATHS had before, and what they are called now.
RENAMED_FAST_PATHS = {"cuda graphs": "compiled cuda graphs"}


def named_list(setting: str, text: str, known) -> list[str]:
    """A comma-separated list of known names, stripped and each kept once, in order."""
    import difflib

    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise AugmentError(
            f"--{setting} is empty; name one or more of: {', '.join(known)}"
            + (" (or none)" if setting == "fast" else "")
        )
    for name in names:
        if name in known:
            continue
        if name in RENAMED_FAST_PATHS and setting == "fast":
            hint = f" ({name!r} is now called {RENAMED_FAST_PATHS[name]!r})"
        else:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise AugmentError(f"--{setting}: unknown {name!r}{hint}; known: {', '.join(known)}")
    return names


def shaped_sd15(device: str, dtype):
    """Stable Diffusion 1.5's architecture with random weights (860M UNet, CLIP-L, 4-level VAE)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from augment.generate.tiny import assemble_sd_pipeline, build_tokenizer, clip_text_config

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = shaped_vae()
        text = CLIPTextModel(clip_text_config(tokenizer, 768, 12, heads=12, intermediate=3072))
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    return assemble_sd_pipeline(vae, text, tokenizer, unet, scheduler).to(device, dtype)


def shaped_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )


def shaped_sdxl(device: str, dtype):
    """SDXL base's architecture with random weights (2.6B UNet, CLIP-L + bigG, VAE)."""
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from augment.generate.tiny import assemble_sdxl_pipeline, build_tokenizer, clip_text_config

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            cross_attention_dim=2048,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            layers_per_block=2,
        )
        vae = shaped_vae()
        text = CLIPTextModel(clip_text_config(tokenizer, 768, 12, heads=12, intermediate=3072))
        text_2 = CLIPTextModelWithProjection(
            clip_text_config(tokenizer, 1280, 32, heads=20, intermediate=5120)
        )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    pipe = assemble_sdxl_pipeline(vae, text, text_2, tokenizer, tokenizer, unet, scheduler)
    return pipe.to(device, dtype)


def peak_tflops(device_name: str, given: float | None) -> float | None:
    """The card's dense fp16 peak: `given`, else the data-sheet figure for its name."""
    if given is not None:
        return given
    # the longest name that matches: "L40S" is not an "L4", nor an "H200 NVL" an "H200"
    for card in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if card in device_name:
            return PEAK_TFLOPS[card]
    return None


def model_folder(case: Case, settings: PerfSettings, device: str, work: Path) -> str:
    """The model the case measures: a real folder, a builtin, or the architecture, saved."""
    import torch

    if settings.model is not None:
        return settings.model
    if case.location is not None:
        return case.location
    folder = work / "models" / case.name
    if not (folder / "model_index.json").is_file():
        build = shaped_sd15 if case.name == "sd15" else shaped_sdxl
        pipe = build(device, getattr(torch, case.dtype))
        pipe.save_pretrained(folder)
        del pipe
        free_memory()
    return str(folder)


def float16_vae(location: str, work: Path) -> str:
    """The model's VAE saved with force_upcast off, once (see FLOAT16_VAE)."""
    from diffusers import AutoencoderKL

    from augment import registry

    folder = work / "float16-vae"
    if not (folder / "config.json").is_file():
        if location.startswith("builtin:"):
            location = str(registry.resolve("model", location, "bench perf"))
        vae = AutoencoderKL.from_pretrained(location, subfolder="vae", local_files_only=True)
        vae.register_to_config(force_upcast=False)
        vae.save_pretrained(folder)
    return str(folder)


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def diffusers_pipeline(location: str, case: Case, device: str):
    """The model as a plain diffusers user loads it, with the case's scheduler."""
    import torch
    from diffusers import DiffusionPipeline

    from augment import registry
    from augment.generate.pipelines import scheduler_from_name

    if location.startswith("builtin:"):
        location = str(registry.resolve("model", location, "bench perf"))
    try:
        pipe = DiffusionPipeline.from_pretrained(
            location, dtype=getattr(torch, case.dtype), local_files_only=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # weights missing or damaged
        raise ModelError(
            f"--model: cannot load {location} ({first_line(exc)}); check that it is complete "
            "(every component in model_index.json, with its weights): save it again"
        ) from exc
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    pipe.scheduler = scheduler_from_name(case.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def call_pipeline(pipe, case: Case, prompts: list[str], output_type: str = "pil"):
    return pipe(
        prompt=prompts,
        negative_prompt=[""] * len(prompts) if case.guidance > 1 else None,
        num_inference_steps=case.steps,
        guidance_scale=case.guidance,
        height=case.size,
        width=case.size,
        output_type=output_type,
    ).images


def prompts_for(n: int) -> list[str]:
    names = "zero one two three four five six seven eight nine".split()
    return [f"a handwritten digit {names[i % 10]}" for i in range(n)]


def seed_loop(pipe, case: Case, n: int, folder: Path, device: str) -> float:
    """The seed article's loop: one prompt per call, each image saved. Returns images/s."""
    folder.mkdir(parents=True, exist_ok=True)
    call_pipeline(pipe, case, prompts_for(1))  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for i, prompt in enumerate(prompts_for(n)):
        call_pipeline(pipe, case, [prompt])[0].save(folder / f"{i}.png")
    return n / (time.perf_counter() - started)


def batched_loop(pipe, case: Case, n: int, folder: Path, device: str) -> float:
    """A bare batched diffusers loop: `batch` prompts per call, each image saved as a PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    call_pipeline(pipe, case, prompts_for(case.batch))  # warm-up
    synchronize(device)
    prompts = prompts_for(n)
    started = time.perf_counter()
    for start in range(0, n, case.batch):
        for i, image in enumerate(call_pipeline(pipe, case, prompts[start : start + case.batch])):
            image.save(folder / f"{start + i}.png")
    return n / (time.perf_counter() - started)


def pipeline_calls(pipe, case: Case, n: int, device: str) -> float:
    """The batched pipeline calls alone, images left on the device: what a loop that saves
    nothing would reach. Returns images/s."""
    call_pipeline(pipe, case, prompts_for(case.batch), output_type="pt")  # warm-up
    synchronize(device)
    prompts = prompts_for(n)
    started = time.perf_counter()
    for start in range(0, n, case.batch):
        call_pipeline(pipe, case, prompts[start : start + case.batch], output_type="pt")
    synchronize(device)
    return n / (time.perf_counter() - started)


def unet_inputs(pipe, case: Case, device: str) -> dict:
    """One denoising step's UNet inputs for a batch, doubled for guidance as the pipeline does."""
    import torch

    unet = pipe.unet
    rows = case.batch * (2 if case.guidance > 1 else 1)
    latent = case.size // pipe.vae_scale_factor
    dtype = unet.dtype
    inputs = {
        "sample": torch.randn(
            rows, unet.config.in_channels, latent, latent, device=device, dtype=dtype
        ),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(
            rows,
            pipe.tokenizer.model_max_length,
            unet.config.cross_attention_dim,
            device=device,
            dtype=dtype,
        ),
    }
    if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text and size ids
        pooled = pipe.text_encoder_2.config.projection_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(rows, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor(
                [[case.size, case.size, 0, 0, case.size, case.size]] * rows,
                device=device,
                dtype=dtype,
            ),
        }
    return inputs


def timed(function, device: str, repeats: int = 1) -> float:
    """Seconds per call, after one warm-up call."""
    function()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def floor_seconds(pipe, case: Case, device: str) -> dict:
    """Seconds per batch of the UNet's forwards (every step, guidance doubling the batch) and
    of the VAE decode, each timed alone: no loop over this model can beat their sum."""
    import torch

    inputs = unet_inputs(pipe, case, device)
    latents = inputs["sample"][: case.batch]
    with torch.inference_mode():
        unet_s = timed(lambda: [pipe.unet(**inputs) for _ in range(case.steps)], device)
        vae_s = timed(lambda: pipe.vae.decode(latents / pipe.vae.config.scaling_factor), device)
    return {"unet_s_per_batch": unet_s, "vae_s_per_batch": vae_s}


def graphed_floor_seconds(pipe, case: Case, device: str) -> dict:
    """`floor_seconds` with the UNet's forwards replayed as CUDA graphs, as the engine's
    default runs them on a GPU."""
    from augment.generate.cuda_graphs import graph_forward, remove_graphs

    graph_forward(pipe.unet)
    try:
        return floor_seconds(pipe, case, device)
    finally:
        remove_graphs(pipe.unet)  # the plain diffusers pipeline again


def flops_per_image(pipe, case: Case) -> float:
    """FLOPs of one whole pipeline call for one image (text encoder, every UNet forward with
    guidance, VAE decode), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        call_pipeline(pipe, case, prompts_for(1))
    return float(counter.get_total_flops())


def engine_spec(location: str, case: Case, n: int, out: Path, device: str, extra: dict):
    from augment.config import load_spec

    return load_spec(
        {
            "name": f"perf-{case.name}",
            "seed": 0,
            "taxonomy": {"source": "digits"},
            "prompts": {
                "templates": ["a handwritten digit {name}"],
                "images_per_concept": math.ceil(n / 10),
            },
            "limit": n,
            "generation": {
                "model": location,
                "scheduler": case.scheduler,
                "num_inference_steps": case.steps,
                "guidance_scale": case.guidance,
                "height": case.size,
                "width": case.size,
                "dtype": case.dtype,
                "device": device,
                "batch_size": case.batch,
                **extra,
            },
            "output": {"dir": str(out), "formats": ["parquet"]},
        }
    )


def engine(location: str, case: Case, n: int, work: Path, device: str, extra: dict) -> dict:
    """augment's engine as every distributor runs it (a `BlockWorker`: render, encode, commit
    shards; the next block rendering while the last one is committed): n images after one
    warm-up block (which compiles, with `compile`), timed from its end to the last commit."""
    import torch

    from augment.distribute import BlockWorker, block_size, make_blocks, render_with
    from augment.job import concepts_for, plan_for

    out = work / "engine"
    shutil.rmtree(out, ignore_errors=True)
    spec = engine_spec(location, case, n + case.batch, out, device, extra)
    items = plan_for(spec)
    size = block_size(len(items), case.batch, spec.output.rows_per_shard)
    blocks = make_blocks(items, set(), size, first_shard_index=0)
    threads = torch.get_num_threads()
    try:
        started = time.perf_counter()
        worker = BlockWorker(spec, [c.name for c in concepts_for(spec)], out / "shards", threads)
        if worker.init_error is not None:
            raise worker.init_error
        loaded = time.perf_counter()
        first = worker(blocks[0])
        warm = time.perf_counter()
        results: list = []
        render_with(worker, blocks[1:], lambda _, result: results.append(result))
        seconds = time.perf_counter() - warm
    finally:
        torch.set_num_threads(threads)
    del worker
    free_memory()
    failures = first.failures + [f for r in results for f in r.failures]
    if failures:
        raise AugmentError(f"the engine failed {len(failures)} items: {failures[0]}")
    rendered = sum(r.rendered for r in results)
    flags = shard_flags(out)
    return {
        "images": rendered,
        "images_per_s": rendered / seconds,
        "load_s": loaded - started,
        "first_block_s": warm - loaded,
        "device_s_per_batch": sum(r.render_seconds for r in results) / len(results),
        **flags,
        "pixels": shard_pixels(out),
    }


def shard_flags(out: Path) -> dict:
    """How many images were NaN, black or rendered again in float32 (random weights in
    float16 can overflow: each re-render costs the engine time a bare loop does not spend)."""
    import pyarrow.parquet as pq

    flags = ["nan", "black", "float32_retry"]
    table = pq.read_table(out / "shards", columns=flags)
    return {flag: sum(table.column(flag).to_pylist()) for flag in flags}


def engine_through_ray(location: str, case: Case, n: int, work: Path, workers: int) -> dict:
    """`run_job` through a local Ray with `workers` CPU workers, its own Ray start-up, model
    loading and exports included (as `augment run --workers N`)."""
    import ray

    from augment.job import RunOptions, run_job

    out = work / f"ray-{workers}"
    spec = engine_spec(location, case, n, out, "cpu", {})
    owned = not ray.is_initialized()
    started = time.perf_counter()
    try:
        result = run_job(spec, RunOptions(workers=workers, force=True))
    finally:
        if owned:
            ray.shutdown()
    wall = time.perf_counter() - started
    return {
        "images": result.rendered,
        "images_per_s": result.rendered / wall,
        "rendering_s": result.rendering_seconds,
        "pixels": shard_pixels(out),
    }


def shard_pixels(out: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq
    from PIL import Image

    rows = pq.read_table(out / "shards", columns=["item_id", "image"]).to_pylist()
    return {r["item_id"]: np.asarray(Image.open(io.BytesIO(r["image"]["bytes"]))) for r in rows}


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> int:
    """The largest pixel difference (0..255) over the items both runs rendered."""
    common = a.keys() & b.keys()
    if not common:
        raise AugmentError("the two engine runs rendered no item in common")
    return max(int(np.abs(a[k].astype(int) - b[k].astype(int)).max()) for k in common)


def measure_case(
    case: Case, settings: PerfSettings, device: str, peak: float | None, work: Path, report
) -> dict:
    """Every row for one model; a row that fails records its error and the rest go on."""
    n = settings.images or 8 * case.batch
    result: dict = {"model": case.name, **asdict(case), "images": n, "rows": {}}
    rows = result["rows"]

    def row(name: str, measure) -> None:
        started = time.perf_counter()
        try:
            value = measure()
        except Exception as exc:  # noqa: BLE001 - one failed row must not lose the others
            value = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
        if not isinstance(value, dict):
            value = {"images_per_s": value}
        value["seconds"] = round(time.perf_counter() - started, 1)
        rows[name] = value
        report(result, name)

    location = model_folder(case, settings, device, work)
    result["location"] = location
    diffusers_rows(location, case, n, work, device, row, settings.baselines)
    free_memory()

    default: dict = {}

    def default_engine() -> dict:
        default.update(engine(location, case, n, work, device, {}))
        return {k: v for k, v in default.items() if k != "pixels"}

    row("augment", default_engine)

    def against_default(measured: dict) -> dict:
        """The row without its pixels, and their largest difference from the default's."""
        pixels = measured.pop("pixels")
        if default:
            measured["max_pixel_difference"] = max_difference(pixels, default["pixels"])
        return measured

    for name in settings.fast_paths(device):

        def fast(extra=FAST_PATHS[name]) -> dict:
            if extra.get("vae") == FLOAT16_VAE:
                extra = {**extra, "vae": float16_vae(location, work)}
            return against_default(engine(location, case, n, work, device, extra))

        row(f"augment {name}", fast)
    if device == "cpu" and settings.ray:
        for workers in (1, 2):

            def through_ray(workers=workers) -> dict:
                return against_default(engine_through_ray(location, case, n, work, workers))

            row(f"augment ray {workers} worker{'s' if workers > 1 else ''}", through_ray)
    add_ratios(result, peak)
    report(result, None)
    return result


def diffusers_rows(
    location: str, case: Case, n: int, work: Path, device: str, row, baselines: bool = True
) -> None:
    """The rows on a plain diffusers pipeline: FLOPs, then (with `baselines`) the two loops,
    the UNet alone and the floor (UNet + VAE)."""
    pipe = diffusers_pipeline(location, case, device)
    row("flops", lambda: {"flops_per_image": flops_per_image(pipe, case)})
    if not baselines:
        return
    row("seed loop", lambda: seed_loop(pipe, case, case.batch, work / "seed-loop", device))
    row("diffusers batched", lambda: batched_loop(pipe, case, n, work / "batched", device))
    row("diffusers calls, no PNG", lambda: pipeline_calls(pipe, case, n, device))

    def floor_rows(suffix: str, measure) -> None:
        """The UNet alone, then UNet + VAE, from one timing of both."""
        seconds: dict = {}

        def unet_alone() -> dict:
            seconds.update(measure())
            return {"images_per_s": case.batch / seconds["unet_s_per_batch"], **seconds}

        def floor() -> dict:
            if not seconds:
                raise AugmentError(f"no UNet timing to add the VAE to (see 'unet alone{suffix}')")
            return {"images_per_s": case.batch / sum(seconds.values())}

        row(f"unet alone{suffix}", unet_alone)
        row(f"floor{suffix}", floor)

    floor_rows("", lambda: floor_seconds(pipe, case, device))
    if device == "cuda":  # the floor of the engine's default, which replays CUDA graphs
        floor_rows(", cuda graphs", lambda: graphed_floor_seconds(pipe, case, device))


def add_ratios(result: dict, peak: float | None) -> None:
    """Ratios to the bare batched loop and to the floor, and model-FLOPs utilisation."""
    rows = result["rows"]
    flops = rows.get("flops", {}).get("flops_per_image")
    batched = rows.get("diffusers batched", {}).get("images_per_s")
    floor_rate = rows.get("floor", {}).get("images_per_s")
    graphed_floor = rows.get("floor, cuda graphs", {}).get("images_per_s")
    for values in rows.values():
        rate = values.get("images_per_s")
        if rate is None:
            continue
        if batched:
            values["vs_diffusers_batched"] = rate / batched
        if floor_rate:
            values["vs_floor"] = rate / floor_rate
        if graphed_floor:
            values["vs_floor_cuda_graphs"] = rate / graphed_floor
        if flops and peak:
            values["mfu"] = rate * flops / (peak * 1e12)


#: What `bench perf` writes in OUT.
PERF_NAMES = ("perf.json", "perf.previous.json", "augment-perf-*/")


def run_perf(settings: PerfSettings) -> dict:
    """Measure every case; writes OUT/perf.json after each row (the last run's kept as
    perf.previous.json: an interrupted run would otherwise leave a few rows where a finished
    report was), returns the report."""
    import torch

    out = Path(settings.out)
    # its report, the last one, and the work folder a killed run leaves: never a user's files
    check_own_folder(out, PERF_NAMES, "performance report")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("augment-perf-*"):  # a killed run's models and images
        shutil.rmtree(stale, ignore_errors=True)
    if (out / "perf.json").is_file():
        (out / "perf.json").replace(out / "perf.previous.json")
        print(f"the last perf.json is kept as {out / 'perf.previous.json'}", flush=True)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name() if cuda else (platform.processor() or "cpu")
    peak = peak_tflops(name, settings.peak_tflops) if cuda else settings.peak_tflops
    names = settings.models
    if settings.smoke:
        names = "tiny"
    elif names == "auto" and settings.model is not None:  # its family's case (GPU)
        from augment.generate.pipelines import model_family

        names = {"sd": "sd15", "sdxl": "sdxl"}[model_family(settings.model)] if cuda else "digits"
    elif names == "auto":
        names = "sd15,sdxl" if cuda else "digits"
    report: dict = {
        "device": name,
        "cpus": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "peak_tflops": peak,
        "cases": [],
    }

    def write(case_result: dict, row: str | None) -> None:
        cases = [c for c in report["cases"] if c is not case_result] + [case_result]
        report["cases"] = cases
        (out / "perf.json").write_text(json.dumps(report, indent=1, default=str))
        if row is not None:
            print(f"{case_result['model']}: {row}: {brief(case_result['rows'][row])}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="augment-perf-", dir=out))
    try:
        for case_name in names.split(","):
            case = CASES[case_name]
            if not cuda and case.dtype == "float16":  # CPUs have no float16 kernels
                case = replace(case, dtype="float32")
            measure_case(case, settings, device, peak, work / case.name, write)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def brief(values: dict) -> str:
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()}
    return json.dumps(shown)
