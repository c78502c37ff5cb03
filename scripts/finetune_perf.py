"""LoRA fine-tuning speed and memory of the real Stable Diffusion architectures, on a GPU.

`python scripts/finetune_perf.py --out DIR` builds SD 1.5's and SDXL base's architectures with
random weights (`augment.bench.perf`: the same layers and sizes, so steps/s and memory are
theirs), and times `augment.finetuning.Trainer.step`, the step `augment finetune` runs:
DreamBooth-LoRA rank 16 on the UNet attention, fp16 mixed precision, float32 weights. SD 1.5 at
512 px, batch 1 and 4, with and without gradient checkpointing; SDXL at 1024 px, batch 1, with
and without. Each case: 2 warm-up steps, then `--steps` timed; peak memory from
`torch.cuda.max_memory_allocated`. Results: DIR/finetune_perf.json (ratios within one run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CASES = [
    ("sd15", 512, 1, False),
    ("sd15", 512, 4, False),
    ("sd15", 512, 1, True),
    ("sd15", 512, 4, True),
    ("sdxl", 1024, 1, False),
    ("sdxl", 1024, 1, True),
]


def concept(resolution: int):
    from PIL import Image

    from augment.finetuning import TaughtConcept, train_image

    rng = np.random.default_rng(0)
    images = tuple(
        train_image(
            "weed",
            "a photo of <sks-weed> weed",
            Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)),
            f"random-{k}",
            resolution,
        )
        for k in range(4)
    )
    return TaughtConcept("weed", "weed", "<sks-weed>", images)


def build(model: str, smoke: bool):
    """The architecture with random weights on the GPU; `smoke`: the tiny one on the CPU."""
    import torch

    if smoke:
        from augment import registry
        from augment.generate.pipelines import load_txt2img_pipeline

        name = "builtin:tiny-sd" if model == "sd15" else "builtin:tiny-sdxl"
        return load_txt2img_pipeline(str(registry.resolve("model", name, "perf")), device="cpu")
    from augment.bench.perf import shaped_sd15, shaped_sdxl

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    pipe = (shaped_sd15 if model == "sd15" else shaped_sdxl)("cuda", torch.float32)
    pipe.family = "sd" if model == "sd15" else "sdxl"
    return pipe


def case(
    model: str, resolution: int, batch: int, checkpointing: bool, steps: int, smoke: bool = False
) -> dict:
    import torch

    from augment.finetuning import Trainer, TrainSettings

    pipe = build(model, smoke)
    gpu = not smoke
    settings = TrainSettings(
        method="lora",
        steps=steps + 2,
        resolution=resolution,
        rank=16,
        batch_size=batch,
        mixed_precision="fp16" if gpu else "no",
        gradient_checkpointing=checkpointing,
        device="cuda" if gpu else "cpu",
    )
    result = {
        "model": model,
        "resolution": resolution,
        "batch": batch,
        "gradient_checkpointing": checkpointing,
        "mixed_precision": "fp16",
        "rank": 16,
    }
    try:
        trainer = Trainer(pipe, [concept(resolution)], settings)
        trainer.train_mode(True)
        for step in range(2):
            trainer.step(step)
        if gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        losses = [trainer.step(step) for step in range(2, steps + 2)]
        if gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        result.update(
            steps_per_s=round(steps / seconds, 3),
            images_per_s=round(steps * batch / seconds, 2),
            peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
            trainable_params=sum(p.numel() for p in trainer.params.values()),
            loss_finite=bool(np.isfinite(losses).all()),
        )
    except torch.cuda.OutOfMemoryError as exc:
        result["error"] = f"out of memory: {str(exc).splitlines()[0]}"
    del pipe
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--smoke", action="store_true", help="the tiny models on the CPU at 32 px: a code check"
    )
    args = parser.parse_args()

    import torch

    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("error: finetune_perf.py measures a GPU; none is visible (try --smoke)")
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    report = {"device": device, "torch": torch.__version__, "cases": []}
    for model, resolution, batch, checkpointing in CASES:
        resolution = 32 if args.smoke else resolution
        report["cases"].append(
            case(model, resolution, batch, checkpointing, args.steps, args.smoke)
        )
        print(json.dumps(report["cases"][-1]), flush=True)
        (args.out / "finetune_perf.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
