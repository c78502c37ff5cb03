"""Choose the digits experiment's fine-tune settings and guidance on validation data.

`python scripts/personalise_sweep.py --out DIR` works on development seeds (100, 101) that the
experiment (seeds 0-4) never uses. Per development seed it draws the 10 real images per class
that `few_shot(pool, 10, seed)` gives, fine-tunes `builtin:digits-without-nine` on its nines
with each setting of a small grid, and renders 100 nines per setting and guidance. A
classifier with the experiment's settings then trains on the 10 real images per class plus 100
synthetic ones per class (the other classes from the 9-class model, the nines from the
setting) and is scored on the validation images: the pool's other 20 images per class, never
the test split. Reported per setting and guidance: the nine's validation accuracy (mean over
development seeds and two classifier seeds), top-1, and how often `builtin:digits-scorer`
reads the rendered nines as nines; real-only, the control and the full model beside them.
The experiment's settings (`augment.digits.personalise.finetune_settings`, `GUIDANCE`) are
the best of this table. Results: DIR/sweep.json and DIR/validation.csv.

`--img2img` sweeps, instead, DA-Fusion's way of rendering: img2img from the development seed's
own 10 real nines at each of STRENGTHS, with the chosen LoRA (its token) and with the 9-class
model alone (the name), at the experiment's guidance.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

DEV_SEEDS = (100, 101)
STRENGTHS = (0.3, 0.5, 0.7)
GUIDANCES = (1.0, 2.0, 3.0)
GRID = {
    "lora": [
        {"learning_rate": 3e-3, "steps": 300, "rank": 8},
        {"learning_rate": 3e-3, "steps": 300, "rank": 8, "train_text_encoder": True},
        {"learning_rate": 3e-3, "steps": 600, "rank": 16},
    ],
    "textual_inversion": [
        {"learning_rate": 2e-2, "steps": 300},
        {"learning_rate": 0.1, "steps": 300},
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=100, help="images rendered per class")
    parser.add_argument("--workers", type=int, default=2, help="classifiers trained at once")
    parser.add_argument("--img2img", action="store_true", help="sweep img2img strengths")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    from augment import registry
    from augment.bench.classify import (
        ClassifySettings,
        balanced_sample,
        few_shot,
        train_and_score_all,
    )
    from augment.bench.data import ImageSet, load_synthetic
    from augment.config import load_spec
    from augment.digits import personalise as p
    from augment.digits.data import DIGIT_NAMES, real_digits
    from augment.finetuning import train_adapter
    from augment.job import RunOptions, run_job

    size = p.FULL
    base = str(registry.resolve("model", p.NINE_CLASS_MODEL, "sweep"))
    real16, real32 = real_digits(16), real_digits(32)
    classes = real16.classes
    others = [n for n in DIGIT_NAMES if n != p.HELD_OUT]

    def rendered(name, model, prompt, concepts, guidance, seed, **extra) -> Path:
        job = p.render_job(
            name,
            model,
            prompt,
            concepts,
            args.images,
            args.out / name,
            size,
            seed,
            guidance_scale=guidance,
            **extra,
        )
        return run_job(load_spec(job), RunOptions(distributor="local")).out_dir

    sources: dict[tuple, Path] = {}  # (arm, guidance, dev seed or None) -> rendered nines
    shared: dict[float, Path] = {}
    guidances = (p.GUIDANCE,) if args.img2img else GUIDANCES
    for g in guidances:
        prompt = "a handwritten digit {name}"
        shared[g] = rendered(f"others-g{g}", p.NINE_CLASS_MODEL, prompt, others, g, 0)
        sources[("upper", g, None)] = rendered(
            f"upper-g{g}", p.FULL_MODEL, p.NAME_PROMPT, [p.HELD_OUT], g, 1
        )
        sources[("control", g, None)] = rendered(
            f"control-g{g}", p.NINE_CLASS_MODEL, p.NAME_PROMPT, [p.HELD_OUT], g, 1
        )
    for dev in DEV_SEEDS if args.img2img else ():
        concept = p.held_out_concept(real32.pool, 10, dev)
        folder = args.out / f"lora-chosen-dev{dev}"
        settings = p.finetune_settings("lora", size, dev)
        card = train_adapter(base, [concept], settings, folder, base_name=p.NINE_CLASS_MODEL)
        real_nines = p.write_sources(concept, args.out / f"sources-dev{dev}")
        per_source = args.images // len(concept.images)
        for strength in STRENGTHS:
            img2img = {"source": real_nines, "mode": "img2img", "strength": strength}
            for arm, prompt, extra in (
                ("lora-img2img", p.INSTANCE_PROMPT, p.adapter_generation("lora", folder, card)),
                ("base-img2img", p.NAME_PROMPT, {}),
            ):
                job = p.render_job(
                    f"{arm}-s{strength}-dev{dev}",
                    p.NINE_CLASS_MODEL,
                    prompt,
                    [p.HELD_OUT],
                    per_source,
                    args.out / f"{arm}-s{strength}-dev{dev}",
                    size,
                    1,
                    **img2img,
                    **extra,
                )
                sources[(f"{arm}-s{strength}", p.GUIDANCE, dev)] = run_job(
                    load_spec(job), RunOptions(distributor="local")
                ).out_dir
    for dev in () if args.img2img else DEV_SEEDS:
        concept = p.held_out_concept(real32.pool, 10, dev)
        for method, grid in GRID.items():
            for number, changes in enumerate(grid):
                folder = args.out / f"{method}-{number}-dev{dev}"
                settings = replace(p.finetune_settings(method, size, dev), **changes)
                card = train_adapter(
                    base, [concept], settings, folder, base_name=p.NINE_CLASS_MODEL
                )
                extra = p.adapter_generation(method, folder, card)
                for g in GUIDANCES:
                    sources[(f"{method}-{number}", g, dev)] = rendered(
                        f"{method}-{number}-dev{dev}-g{g}",
                        p.NINE_CLASS_MODEL,
                        p.INSTANCE_PROMPT,
                        [p.HELD_OUT],
                        g,
                        1,
                        **extra,
                    )

    settings = ClassifySettings(image_size=16, steps=size.classifier_steps, shots=[10])
    plan, tasks = [], []
    for dev in DEV_SEEDS:
        train = few_shot(real16.pool, 10, dev)
        drawn = set(train.ids)
        validation = real16.pool.subset(
            np.array([i for i, image_id in enumerate(real16.pool.ids) if image_id not in drawn])
        )
        arms: list[tuple[str, float | None, Path | None]] = [("real_only", None, None)]
        arms += [(a, g, f) for (a, g, d), f in sources.items() if d in (None, dev)]
        for arm, g, folder in arms:
            data = train
            if folder is not None:
                synthetic = ImageSet.concat(
                    load_synthetic(shared[g], classes, 16), load_synthetic(folder, classes, 16)
                )
                data = ImageSet.concat(train, balanced_sample(synthetic, 10 * 100, 10, dev))
            for classifier_seed in (0, 1):
                plan.append((arm, g, dev, classifier_seed, folder))
                tasks.append((data, validation, classes, settings, dev * 10 + classifier_seed))
    fitted = train_and_score_all(tasks, args.workers)
    rows = []
    rates: dict[Path, float] = {}
    for (arm, g, dev, classifier_seed, folder), (scores, _, _) in zip(plan, fitted, strict=True):
        values = {(metric, label): value for metric, label, value in scores}
        if folder is not None and folder not in rates:
            rates[folder] = p.scorer_reads_as_nine(folder)
        rows.append(
            {
                "arm": arm,
                "guidance": g,
                "dev_seed": dev,
                "classifier_seed": classifier_seed,
                "nine_validation": values[("class_accuracy", p.HELD_OUT)],
                "top1_validation": values[("top1", "")],
                "scorer_reads_nine": rates.get(folder),
            }
        )
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "validation.csv", index=False)
    table = (
        frame.groupby(["arm", "guidance"], dropna=False)[
            ["nine_validation", "top1_validation", "scorer_reads_nine"]
        ]
        .mean()
        .round(3)
        .reset_index()
    )
    grid = {
        f"{m}-{k}": changes for m, settings in GRID.items() for k, changes in enumerate(settings)
    }
    table["settings"] = table["arm"].map(lambda arm: json.dumps(grid.get(arm, {})))
    print(table.to_string(index=False))
    (args.out / "sweep.json").write_text(table.to_json(orient="records", indent=1))


if __name__ == "__main__":
    main()
