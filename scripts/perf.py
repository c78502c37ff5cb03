"""Generation performance and consistency on the machine at hand (a GPU when there is one).

`python scripts/perf.py --out DIR` (from a checkout, with the project installed) measures,
in one run:

- each jobs/tiny/*.yaml through `run_job` on this device (float16 on a GPU): rows, flags,
  float32 re-renders, seconds;
- a batch of 8 against 8 single renders with the same seeds: the max pixel difference;
- the demo's generation (jobs/demo.yaml) on this device;
- throughput of the real Stable Diffusion 1.5 and SDXL architectures, built in code with
  random weights (no weights can be downloaded): the same layers, sizes and FLOPs as the real
  models, so images/s and memory are theirs; the pixels are meaningless.

Results go to DIR/perf.json; timings are ratios within this one run.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def pixels(record: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(record["image"]["bytes"]))).astype(int)


def tiny_jobs(device: str, dtype: str, out: Path) -> list[dict]:
    """Every tiny job on this device: what it wrote and how long it took."""
    import pyarrow.parquet as pq

    from augment.config import load_spec
    from augment.job import RunOptions, run_job

    results = []
    for job in sorted((REPO / "jobs" / "tiny").glob("*.yaml")):
        overrides = {"generation.device": device, "generation.dtype": dtype}
        spec = load_spec(job, {**overrides, "output.dir": str(out / job.stem)})
        started = time.perf_counter()
        result = run_job(spec, RunOptions(distributor="local", force=True))
        seconds = time.perf_counter() - started
        rows = pq.read_table(out / job.stem / "shards").to_pylist()
        results.append(
            {
                "job": job.stem,
                "mode": spec.generation.mode,
                "dtype": dtype,
                "rows": len(rows),
                "failed": result.failed,
                "nan": sum(r["nan"] for r in rows),
                "black": sum(r["black"] for r in rows),
                "float32_retry": sum(r["float32_retry"] for r in rows),
                "seconds": round(seconds, 2),
            }
        )
        print(results[-1], flush=True)
    return results


def batch_consistency(job: str, device: str, dtype: str) -> dict:
    """A batch of 8 vs the same 8 items one by one: max pixel difference (0..255)."""
    from augment.config import load_spec
    from augment.generate.engine import make_generator
    from augment.job import plan_for

    overrides = {"generation.device": device, "generation.dtype": dtype, "generation.batch_size": 8}
    spec = load_spec(REPO / "jobs" / "tiny" / f"{job}.yaml", overrides)
    items = plan_for(spec)[:8]
    generator = make_generator(spec)
    together = generator(items)
    singles = [r for item in items for r in generator([item])]
    diff = max(
        int(np.abs(pixels(a) - pixels(b)).max()) for a, b in zip(together, singles, strict=True)
    )
    result = {"job": job, "dtype": dtype, "max_pixel_difference": diff}
    print(result, flush=True)
    return result


def demo_generation(device: str, out: Path) -> dict:
    """The demo's digits (jobs/demo.yaml) rendered on this device."""
    from augment.config import load_spec
    from augment.job import RunOptions, run_job

    overrides = {"generation.device": device, "output.dir": str(out)}
    spec = load_spec(REPO / "jobs" / "demo.yaml", overrides)
    started = time.perf_counter()
    result = run_job(spec, RunOptions(distributor="local", force=True))
    seconds = time.perf_counter() - started
    summary = {"images": result.rendered, "seconds": round(seconds, 2)}
    print("demo generation", summary, flush=True)
    return summary


def shaped_sd15(device: str, dtype):
    """Stable Diffusion 1.5's architecture with random weights (860M UNet, CLIP-L, 4-level VAE)."""
    import tempfile

    import torch
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from augment.generate.tiny import assemble_sd_pipeline, build_tokenizer, clip_text_config

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = vae_sd()
        text = CLIPTextModel(clip_text_config(tokenizer, 768, 12, heads=12, intermediate=3072))
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    return assemble_sd_pipeline(vae, text, tokenizer, unet, scheduler).to(device, dtype)


def vae_sd():
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
    import tempfile

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
        vae = vae_sd()
        text = CLIPTextModel(clip_text_config(tokenizer, 768, 12, heads=12, intermediate=3072))
        text_2 = CLIPTextModelWithProjection(
            clip_text_config(tokenizer, 1280, 32, heads=20, intermediate=5120)
        )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    pipe = assemble_sdxl_pipeline(vae, text, text_2, tokenizer, tokenizer, unet, scheduler)
    return pipe.to(device, dtype)


def throughput(pipe, size: int, batch: int, steps: int, repeats: int = 2) -> dict:
    """Images/s of one pipeline call per batch, after a warm-up call; peak GPU memory."""
    import torch

    cuda = pipe.device.type == "cuda"

    def call() -> None:
        pipe(
            prompt=["a photo of a weed"] * batch,
            negative_prompt=["blurry"] * batch,
            num_inference_steps=steps,
            guidance_scale=7.5,
            height=size,
            width=size,
            output_type="np",
        )
        if cuda:
            torch.cuda.synchronize()

    pipe.set_progress_bar_config(disable=True)
    call()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    seconds = (time.perf_counter() - started) / repeats
    return {
        "size": size,
        "batch": batch,
        "steps": steps,
        "seconds_per_batch": round(seconds, 3),
        "images_per_s": round(batch / seconds, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def architectures(device: str, dtype_name: str, smoke: bool) -> list[dict]:
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    dtype = getattr(torch, dtype_name)
    results = []
    size, steps, batches = (64, 1, (1,)) if smoke else (512, 25, (1, 8))
    pipe = shaped_sd15(device, dtype)
    for attention, processor in (("sdpa", AttnProcessor2_0()), ("eager", AttnProcessor())):
        pipe.unet.set_attn_processor(processor)
        for batch in batches:
            row = {"model": "sd15-architecture", "attention": attention, "dtype": dtype_name}
            results.append({**row, **throughput(pipe, size, batch, steps)})
            print(results[-1], flush=True)
    del pipe
    if not smoke:
        pipe = shaped_sdxl(device, dtype)
        for batch in (1, 4):
            row = {"model": "sdxl-architecture", "attention": "sdpa", "dtype": dtype_name}
            results.append({**row, **throughput(pipe, 1024, batch, 25)})
            print(results[-1], flush=True)
    return results


def compile_gain(device: str, dtype_name: str, smoke: bool) -> list[dict]:
    """SD 1.5's architecture, batch 8: eager UNet vs torch.compile'd UNet (and compile time)."""
    import torch

    pipe = shaped_sd15(device, getattr(torch, dtype_name))
    size, steps = (64, 1) if smoke else (512, 25)
    rows = [{"unet": "eager", **throughput(pipe, size, 8, steps)}]
    print(rows[-1], flush=True)
    pipe.unet = torch.compile(pipe.unet)
    started = time.perf_counter()
    rows.append({"unet": "torch.compile", **throughput(pipe, size, 8, steps)})
    rows[-1]["first_call_and_timing_s"] = round(time.perf_counter() - started, 1)
    print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="CPU check of this script: tiny sizes")
    parser.add_argument("--only", help="run one section: tiny_jobs, batch_of_8_vs_singles, ...")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device, low = ("cuda", "float16") if cuda else ("cpu", "bfloat16")
    report: dict = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
    }
    started = time.perf_counter()
    sections = {
        "tiny_jobs": lambda: tiny_jobs(device, low, args.out / "tiny"),
        "batch_of_8_vs_singles": lambda: [
            batch_consistency("txt2img", device, "float32"),
            batch_consistency("txt2img", device, low),
            batch_consistency("img2img", device, low),
            batch_consistency("sdxl", device, low),
        ],
        "architectures": lambda: architectures(device, low if cuda else "float32", args.smoke),
    }
    if not args.smoke:
        sections["demo_generation"] = lambda: demo_generation(device, args.out / "demo")
    sections["torch_compile"] = lambda: compile_gain(device, low if cuda else "float32", args.smoke)
    if args.only:
        sections = {args.only: sections[args.only]}
    for name, measure in sections.items():
        try:
            report[name] = measure()
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the rest
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(name, "failed:", report[name]["error"], flush=True)
        report["seconds"] = round(time.perf_counter() - started, 1)
        (args.out / "perf.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
