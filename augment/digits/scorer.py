"""The digits scorer: a small CNN that tells which digit a generated image shows.

It is the digits world's `filters.scorer` (`builtin:digits-scorer`): a run flags a generated
digit whose own class gets a probability under `filters.min_concept_score`. It is trained on the
generator split only, the 997 real digits the diffusion model learnt from, so it adds no real
data that the generator had not seen; the benchmark's pool and test splits stay unseen. Its
accuracy is measured on the pool split (30 per class), never on the test split.

    augment digits train-scorer --out augment/digits/scorer
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from augment.classifier import CLASSIFIER_CONFIG
from augment.digits.data import CARD_FRONT_MATTER, DATA_CREDIT, DIGIT_NAMES
from augment.digits.folders import check_new_or_own
from augment.errors import at_least

DEFAULT_STEPS = 1500
IMAGE_SIZE = 32


def train_digits_scorer(
    out_dir: Path, steps: int = DEFAULT_STEPS, seed: int = 0, threads: int | None = 2
) -> dict:
    """Train the scorer on the generator split, measure it on the pool, save it; returns stats."""
    at_least("steps", steps, 1)
    check_new_or_own(Path(out_dir), CLASSIFIER_CONFIG, "scorer")  # its files are overwritten
    import torch

    from augment.bench.classify import ClassifySettings, predict, train_classifier
    from augment.classifier import save_classifier
    from augment.digits.data import digit_sets
    from augment.progress import image_progress

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    sets, _ = digit_sets(IMAGE_SIZE)
    generator, pool = sets["generator"], sets["pool"]
    settings = ClassifySettings(image_size=IMAGE_SIZE, steps=steps)
    with image_progress(steps, "training the digits scorer", unit="step") as advance:
        model = train_classifier(generator, len(DIGIT_NAMES), settings, seed, advance)
    pool_accuracy = 100.0 * float(np.mean(predict(model, pool) == pool.labels))
    stats = {
        "trained_on": "digits generator split (digit_splits(seed=0)['generator'])",
        "train_images": len(generator),
        "steps": steps,
        "seed": seed,
        "pool_accuracy_percent": round(pool_accuracy, 2),
        "pool_images": len(pool),
        "seconds": round(time.perf_counter() - started, 1),
        "command": f"augment digits train-scorer --out DIR --steps {steps} --seed {seed}",
    }
    save_classifier(model, out_dir, list(DIGIT_NAMES), IMAGE_SIZE, settings.model, **stats)
    write_card(Path(out_dir), stats)
    return stats


def write_card(folder: Path, stats: dict) -> None:
    card = f"""{CARD_FRONT_MATTER}# augment digits scorer

A small CNN (`augment.classifier.build_model("smallcnn")`, {IMAGE_SIZE} px) that gives the
probability of each digit class for an image. `augment` uses it as `filters.scorer:
builtin:digits-scorer` to flag generated digits that do not show their prompted class.

- Trained on the digits `generator` split only ({stats["train_images"]} real images, the data
  the diffusion model learnt from), {stats["steps"]} steps, seed {stats["seed"]}, random shifts
  of up to 2 px; {stats["seconds"]:.0f} s on the CPU.
- Accuracy on the `pool` split ({stats["pool_images"]} real images it never saw):
  {stats["pool_accuracy_percent"]:.1f} %. The `test` split is not used.
- Command: `{stats["command"]}`.
- The data: {DATA_CREDIT}.
- Files: `model.safetensors` (state_dict), `scorer.json` (architecture, input size, classes).
"""
    (folder / "README.md").write_text(card)
