"""The novel-concept experiment (DA-Fusion's), on the digits world: `augment demo --personalise`.

A second digits model, `builtin:digits-without-nine`, was trained exactly like `builtin:digits`
but never saw a nine. The held-out class was fixed before any fine-tuning, by a rule: the lowest
real-only per-class accuracy in the 10-shot demo report (nine, 86.8 %; eight next, 91.2 %).

Per seed, a classifier gets the seed's 10 real images per class (`few_shot`, as the classifier
benchmark draws them) plus 10 synthetic images per real one, and is scored on the held-out test
split. The arms differ only in where the synthetic nines come from; the other nine classes are
the 9-class model's, the same images in every arm:

- real_only: no synthetic image;
- control: nines from the 9-class model prompted by the name alone ("a handwritten digit nine");
- lora / textual_inversion: nines from the 9-class model after fine-tuning it on that seed's own
  10 real nines, the very images the classifier trains on (no real image the arm lacks);
- upper: nines from the full 10-class model.

Reported per arm: the nine's test accuracy and overall accuracy (mean, 95 % CI, paired gain
over real-only), and how often `builtin:digits-scorer` reads the arm's generated nines as nines.
The synthetic images are not filtered, so each arm shows its generator as it is.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from augment.digits.data import DIGIT_NAMES

#: The class the 9-class model never saw (the rule above, fixed before any fine-tuning).
HELD_OUT = "nine"
#: The 9-class base model and the full one.
NINE_CLASS_MODEL = "builtin:digits-without-nine"
FULL_MODEL = "builtin:digits"
TOKEN = "<sks-nine>"
#: The caption of the real nines, and the prompt their fine-tuned model renders.
INSTANCE_PROMPT = f"a handwritten digit {TOKEN}"
#: The control's and the upper bound's prompt: the class name alone.
NAME_PROMPT = f"a handwritten digit {HELD_OUT}"


#: Classifier-free guidance of every arm's renders, chosen on validation with the LoRA settings
#: (`scripts/personalise_sweep.py`): the LoRA's nines scored 86.2 % at 1.0, 95.0 % at 2.0.
GUIDANCE = 2.0


@dataclass(frozen=True)
class PersonaliseSize:
    seeds: int
    shots: int
    ratio: float  # synthetic images per real image
    classifier_steps: int
    lora_steps: int
    inversion_steps: int
    render_steps: int  # DDIM steps per image


#: The demo's classifier settings (10 shots, 600 steps, 16 px), 5 seeds, x10 synthetic, DDIM 15
#: steps: 573 s on 2 cores (the demo's x30 took 637 s at guidance 1 and 25 steps, over the
#: 10-minute budget; x10 at guidance 2 and 25 steps, 676 s).
FULL = PersonaliseSize(
    seeds=5,
    shots=10,
    ratio=10.0,
    classifier_steps=600,
    lora_steps=300,
    inversion_steps=300,
    render_steps=15,
)
QUICK = PersonaliseSize(
    seeds=2,
    shots=10,
    ratio=2.0,
    classifier_steps=20,
    lora_steps=6,
    inversion_steps=6,
    render_steps=4,
)


def finetune_settings(method: str, size: PersonaliseSize, seed: int):
    """LoRA and textual-inversion settings for the digits model, chosen on validation data by
    `scripts/personalise_sweep.py`: the nine's accuracy on the pool images that development
    seeds' classifiers do not train on, at the experiment's 15 DDIM steps. LoRA rank 8 on the
    UNet and the text encoder, 300 steps at 3e-3, guidance 2: 95.0 %, against 90.0 % for the
    UNet alone and real-only's 90.0 %; rank 16 / 600 steps scored as well at guidance 3, but its
    fine-tunes take the experiment over its 10-minute budget. Textual inversion: 300 steps at
    2e-2 (96.2 % at guidance 2, against 92.5 % at 0.1)."""
    from augment.finetuning import TrainSettings

    rates = {"lora": 3e-3, "textual_inversion": 2e-2}
    steps = size.lora_steps if method == "lora" else size.inversion_steps
    return TrainSettings(
        method=method,
        steps=steps,
        resolution=32,
        learning_rate=rates[method],
        seed=seed,
        rank=8,
        train_text_encoder=method == "lora",
        batch_size=8,
        checkpoint_every=max(1, steps),
        validation_images=8,
        render={"num_inference_steps": size.render_steps, "guidance_scale": GUIDANCE},
    )


def render_job(
    name: str,
    model: str,
    prompt: str,
    concepts: list[str],
    count: int,
    out: Path,
    size: PersonaliseSize,
    seed: int,
    source: Path | None = None,
    **generation,
) -> dict:
    """A job spec (a dict) rendering `count` images of each of `concepts` with `prompt`; with
    a `source` image folder, `count` images from each of its images instead (img2img: pass
    `mode` and `strength`)."""
    job = {
        "name": name,
        "seed": seed,
        "taxonomy": {"source": "digits", "exclude": [n for n in DIGIT_NAMES if n not in concepts]},
        "prompts": {"templates": [prompt], "images_per_concept": count, "negative_prompt": ""},
        "generation": {
            "model": model,
            "num_inference_steps": size.render_steps,
            "guidance_scale": GUIDANCE,
            "height": 32,
            "width": 32,
            "batch_size": 50,
            **generation,
        },
        "output": {"dir": str(out), "formats": ["parquet"]},
    }
    if source is not None:
        job["source"] = {"path": str(source), "format": "imagefolder"}
    return job


def write_sources(concept, folder: Path) -> Path:
    """The concept's real images as an image folder (FOLDER/<name>/<id>.png), the sources of
    img2img renders: nothing beyond the images the seed's classifier trains on."""
    images = folder / concept.name
    images.mkdir(parents=True, exist_ok=True)
    for image in concept.images:
        image.image.save(images / f"{image.image_id}.png")
    return folder


def render(job: dict, workers: int | None, quick: bool = False, force: bool = False) -> Path:
    """Run a render job (resumed when its folder holds the same job; `force` starts over)."""
    from augment.config import load_spec
    from augment.job import RunOptions, run_job

    distributor = "local" if quick else "ray"  # local: this process, one worker
    options = RunOptions(distributor, None if quick else workers, force=force)
    return run_job(load_spec(job), options).out_dir


def fine_tuned(base: str, concept, settings, folder: Path) -> tuple[dict, bool]:
    """The adapter in `folder` when it was trained with these settings on these images, else
    a new one: (its card, whether it was trained now)."""
    from dataclasses import asdict

    from augment.finetuning import train_adapter
    from augment.generate.pipelines import read_adapter_card

    card = read_adapter_card(folder)
    images = [image.sha256 for image in concept.images]
    if (
        card is not None
        and card["settings"] == json.loads(json.dumps(asdict(settings)))
        and card["fingerprint"]["images"] == {concept.id: images}
    ):
        return card, False
    return train_adapter(base, [concept], settings, folder, base_name=NINE_CLASS_MODEL), True


def held_out_concept(pool, shots: int, seed: int):
    """The seed's real images of the held-out class (`few_shot`'s draw) under the new token."""
    from PIL import Image

    from augment.bench.classify import few_shot
    from augment.finetuning import TaughtConcept, train_image

    rows = few_shot(pool, shots, seed)
    label = DIGIT_NAMES.index(HELD_OUT)
    images = tuple(
        train_image(HELD_OUT, INSTANCE_PROMPT, Image.fromarray(image), image_id, 32)
        for image, row_label, image_id in zip(rows.images, rows.labels, rows.ids, strict=True)
        if row_label == label
    )
    return TaughtConcept(HELD_OUT, HELD_OUT, TOKEN, images)


def adapter_generation(method: str, folder: Path, card: dict) -> dict:
    """The `generation:` entries that render with a fine-tune's output."""
    if method == "lora":
        return {"loras": [{"path": str(folder)}]}
    return {"textual_inversions": [{"path": str(folder / card["files"][0]), "token": TOKEN}]}


@functools.cache
def digits_scorer():
    """`builtin:digits-scorer` over the ten digits, loaded once for every folder it reads."""
    from augment import registry
    from augment.filters import ClassifierScorer

    location = registry.resolve("model", "builtin:digits-scorer", "scorer")
    return ClassifierScorer(str(location), list(DIGIT_NAMES))


def scorer_reads_as_nine(folder: Path) -> float:
    """Share of a run's images that `builtin:digits-scorer` gives 'nine' a probability >= 0.5
    among the ten digits (the demo filter's rule)."""
    import io

    from PIL import Image

    from augment.sinks.rows import export_records

    images = [
        Image.open(io.BytesIO(r["image"]["bytes"]))
        for r in export_records(folder, include_flagged=True)
    ]
    probabilities = digits_scorer()(images, [""] * len(images)).probabilities
    return float(np.mean(probabilities[:, DIGIT_NAMES.index(HELD_OUT)] >= 0.5))


def run_personalise(
    out: Path,
    quick: bool = False,
    workers: int | None = None,
    seeds: int | None = None,
    first_seed: int = 0,
) -> dict:
    """Run every arm into OUT/personalise; returns the figures (also in its summary.json).

    `seeds` (default: the size's 5) seeds from `first_seed` on: a larger run on fresh seeds
    replicates the 10-minute one without reusing its draws of real images."""
    from augment.digits.folders import check_summary
    from augment.errors import at_least

    size = QUICK if quick else FULL
    count = size.seeds if seeds is None else seeds
    at_least("seeds", count, 1)
    at_least("first_seed", first_seed, 0)
    check_summary(Path(out) / "summary.json")
    seed_range = range(first_seed, first_seed + count)

    from augment.bench.classify import (
        ClassifySettings,
        balanced_sample,
        few_shot,
        train_and_score_all,
    )
    from augment.bench.data import ImageSet, load_synthetic
    from augment.bench.workers import default_workers, in_processes
    from augment.digits.data import real_digits
    from augment.progress import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    root = Path(out) / "personalise"
    real16, real32 = real_digits(16), real_digits(32)
    per_class = int(round(size.ratio * size.shots))
    others = [n for n in DIGIT_NAMES if n != HELD_OUT]

    def rendered(name, model, prompt, concepts, seed, force=False, **generation) -> Path:
        job = render_job(
            name, model, prompt, concepts, per_class, root / name, size, seed, **generation
        )
        return render(job, workers, quick, force)

    folders = {
        "others": rendered("others", NINE_CLASS_MODEL, "a handwritten digit {name}", others, 0),
        "control": rendered("control", NINE_CLASS_MODEL, NAME_PROMPT, [HELD_OUT], 1),
        "upper": rendered("upper", FULL_MODEL, NAME_PROMPT, [HELD_OUT], 1),
    }
    from augment import registry

    base = str(registry.resolve("model", NINE_CLASS_MODEL, "personalise"))
    jobs, finetunes = [], []
    for seed in seed_range:
        concept = held_out_concept(real32.pool, size.shots, seed)
        for method in ("lora", "textual_inversion"):
            folder = root / "adapters" / f"{method}-seed{seed}"
            jobs.append((method, seed, folder))
            finetunes.append((base, concept, finetune_settings(method, size, seed), folder))
    # Two one-thread fine-tunes at once use two cores better than one two-thread one.
    trained_now = in_processes(fine_tuned, finetunes, workers or default_workers())
    adapters: dict[tuple[str, int], dict] = {}
    for (method, seed, folder), (card, trained) in zip(jobs, trained_now, strict=True):
        adapters[(method, seed)] = card
        folders[(method, seed)] = rendered(
            f"{method}-seed{seed}",
            NINE_CLASS_MODEL,
            INSTANCE_PROMPT,
            [HELD_OUT],
            1,
            force=trained,
            **adapter_generation(method, folder, card),
        )

    classes = real16.classes
    shared = load_synthetic(folders["others"], classes, 16)
    settings = ClassifySettings(image_size=16, steps=size.classifier_steps, shots=[size.shots])
    plan, tasks = [], []
    for seed in seed_range:
        real_train = few_shot(real16.pool, size.shots, seed)
        for arm in ARMS:
            train = real_train
            if arm != "real_only":
                source = folders[arm] if arm in folders else folders[(arm, seed)]
                synthetic = ImageSet.concat(shared, load_synthetic(source, classes, 16))
                extra = balanced_sample(synthetic, per_class * len(DIGIT_NAMES), 10, seed)
                train = ImageSet.concat(real_train, extra)
            plan.append((arm, seed, len(train)))
            tasks.append((train, real16.test, classes, settings, seed))
    results = []
    fitted = train_and_score_all(tasks, workers or os.cpu_count() or 1)
    for (arm, seed, n_train), (rows, seconds, _) in zip(plan, fitted, strict=True):
        for metric, label, value in rows:
            results.append(
                {
                    "task": "personalise",
                    "arm": arm,
                    "ratio": size.ratio,
                    "shots": size.shots,
                    "seed": seed,
                    "metric": metric,
                    "label": label,
                    "value": value,
                    "n_train": n_train,
                    "wall_s": seconds,
                }
            )
    frame = pd.DataFrame(results)
    root.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(root / "results.parquet", index=False)
    rates = {arm: scorer_reads_as_nine(folders[arm]) for arm in ("control", "upper")}
    for method in ("lora", "textual_inversion"):
        rates[method] = float(
            np.mean([scorer_reads_as_nine(folders[(method, s)]) for s in seed_range])
        )
    summary = summarize_arms(frame, rates)
    summary["finetune"] = {
        method: {
            "seconds_mean": float(np.mean([adapters[(method, s)]["seconds"] for s in seed_range])),
            "fixed_loss_start_mean": float(
                np.mean([adapters[(method, s)]["fixed_loss"]["start"] for s in seed_range])
            ),
            "fixed_loss_end_mean": float(
                np.mean([adapters[(method, s)]["fixed_loss"]["end"] for s in seed_range])
            ),
            "grids": [
                str(root / "adapters" / f"{method}-seed{s}" / "samples.png") for s in seed_range
            ],
        }
        for method in ("lora", "textual_inversion")
    }
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    summary["test_images"] = len(real16.test)
    summary["settings"] = {
        "size": {**size.__dict__, "seeds": len(seed_range)},
        "seeds": list(seed_range),
        "lora": finetune_settings("lora", size, 0).__dict__,
        "textual_inversion": finetune_settings("textual_inversion", size, 0).__dict__,
    }
    summary["plot"] = str(plot_arms(summary, root / "personalise.png"))
    summary["report"] = str(write_report(summary, root / "report.md"))
    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    merged = Path(out) / "summary.json"  # beside the demo's own figures, when there are some
    figures = json.loads(merged.read_text()) if merged.is_file() else {}
    merged.write_text(json.dumps({**figures, "personalise": summary}, indent=2, default=str))
    return summary


ARMS = ("real_only", "control", "lora", "textual_inversion", "upper")


def summarize_arms(frame: pd.DataFrame, rates: dict[str, float]) -> dict:
    """Per arm: the held-out class's accuracy and the overall one (mean, 95 % CI), their paired
    gain over real-only, and the scorer's reading rate of its generated held-out images."""
    from augment.bench.stats import mean_ci, metric_range, paired_gain

    percent = metric_range("top1")

    arms = {}
    for arm in ARMS:
        chosen = frame[frame["arm"] == arm]
        held = chosen[(chosen["metric"] == "class_accuracy") & (chosen["label"] == HELD_OUT)]
        overall = chosen[chosen["metric"] == "top1"]
        entry = {
            "held_out_accuracy": dict(
                zip(("mean", "low", "high"), mean_ci(held["value"], bounds=percent), strict=True)
            ),
            "top1": dict(
                zip(("mean", "low", "high"), mean_ci(overall["value"], bounds=percent), strict=True)
            ),
            "scorer_reads_held_out": rates.get(arm),
        }
        if arm != "real_only":
            for metric, label, key in (
                ("class_accuracy", HELD_OUT, "held_out_gain"),
                ("top1", "", "top1_gain"),
            ):
                rows = frame[(frame["label"] == label)]
                gain = paired_gain(rows, metric, arm=arm)
                if len(gain):
                    g = gain.iloc[0]
                    entry[key] = {"mean": g["gain"], "low": g["ci_low"], "high": g["ci_high"]}
        arms[arm] = entry
    return {"held_out": HELD_OUT, "arms": arms}


def plot_arms(summary: dict, path: Path) -> Path:
    from augment.reporting import pyplot

    plt = pyplot()
    arms = summary["arms"]
    names = list(arms)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    # Seeds move every arm together, so the paired gain is narrower than the arms' own intervals.
    gains = [n for n in names if arms[n].get("held_out_gain")]
    entries = [arms[n]["held_out_gain"] for n in gains]
    axes[2].bar(
        range(len(gains)),
        [e["mean"] for e in entries],
        yerr=[[e["mean"] - e["low"] for e in entries], [e["high"] - e["mean"] for e in entries]],
        capsize=4,
        color="#dd8452",
    )
    axes[2].axhline(0, color="black", linewidth=0.8)
    axes[2].set_xticks(range(len(gains)), [n.replace("_", "\n") for n in gains], fontsize=8)
    axes[2].set_title(f"paired gain over real-only on '{HELD_OUT}' (points)", fontsize=10)
    for ax, key, title in (
        (axes[0], "held_out_accuracy", f"test accuracy on '{HELD_OUT}' (%)"),
        (axes[1], "top1", "overall test accuracy (%)"),
    ):
        means = [arms[a][key]["mean"] for a in names]
        lows = [arms[a][key]["mean"] - arms[a][key]["low"] for a in names]
        highs = [arms[a][key]["high"] - arms[a][key]["mean"] for a in names]
        ax.bar(range(len(names)), means, yerr=[lows, highs], capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(max(0, min(means) - 15), 100)
    fig.suptitle(
        f"a class the base model never saw, 10 real images each (95 % CI over "
        f"{len(summary['settings']['seeds'])} seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def figure(entry: dict | None, signed: bool = False) -> str:
    if not entry:
        return ""
    sign = "+" if signed else ""
    return f"{entry['mean']:{sign}.1f} [{entry['low']:{sign}.1f}, {entry['high']:{sign}.1f}]"


def seed_span(seeds: list[int]) -> str:
    return f"seed ({seeds[0]})" if len(seeds) == 1 else f"seeds ({seeds[0]} to {seeds[-1]})"


def write_report(summary: dict, path: Path) -> Path:
    """report.md: the arms' table, the plot, and how the experiment was set up."""
    held = summary["held_out"]
    size = summary["settings"]["size"]
    lines = [
        f"# A class the model never saw: '{held}', taught from 10 real images",
        "",
        f"{size['seeds']} {seed_span(summary['settings']['seeds'])}; per seed {size['shots']} "
        "real images per class (the classifier benchmark's draw) plus {size['ratio']:g} synthetic "
        f"images per real one, unfiltered; a {size['classifier_steps']}-step classifier at 16 px "
        f"scored on the {summary['test_images']} held-out test digits. Mean [95 % CI] over "
        "seeds; gains are paired by seed.",
        "",
        f"| arm | '{held}' accuracy % | gain over real-only | top-1 % | gain | scorer reads "
        f"'{held}' |",
        "|---|---|---|---|---|---|",
    ]
    for arm, entry in summary["arms"].items():
        rate = entry["scorer_reads_held_out"]
        lines.append(
            f"| {arm.replace('_', ' ')} | {figure(entry['held_out_accuracy'])} | "
            f"{figure(entry.get('held_out_gain'), True)} | {figure(entry['top1'])} | "
            f"{figure(entry.get('top1_gain'), True)} | "
            f"{'' if rate is None else f'{100 * rate:.0f} %'} |"
        )
    lines += [
        "",
        f"![arms]({Path(summary['plot']).name})",
        "",
        "- control: the 9-class model prompted by the name alone; lora / textual inversion: the "
        "same model fine-tuned on the seed's own 10 real nines (the images its classifier "
        "trains on); upper: the full 10-class model.",
        "- The other nine classes are the 9-class model's, the same images in every arm.",
        f"- Every arm renders with guidance {GUIDANCE:g}. The fine-tune settings and the guidance "
        "were chosen on validation data, the pool images that development seeds (100, 101) do "
        "not train on (`scripts/personalise_sweep.py`); no test image was looked at.",
        f"- Wall time: {summary['wall_time_s']:.0f} s.",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
