"""Choose the digits experiment's LoRA and textual-inversion settings on validation data.

`python scripts/personalise_sweep.py --out DIR` fine-tunes `builtin:digits-without-nine` on
the 10 real nines that `few_shot(pool, 10, seed=100)` draws, a development seed that the
experiment (seeds 0-4) never uses, for each setting of a small grid, renders 100 nines with the
result, and counts how many `builtin:digits-scorer` reads as nines. No test image is looked
at: the experiment's settings (`augment.digits.personalise.finetune_settings`) are the best of
this table, the fewest steps among ties. Results: DIR/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

DEV_SEED = 100
GRID = {
    "lora": [
        *(
            {"learning_rate": lr, "steps": steps, "rank": 8}
            for lr in (3e-4, 1e-3, 3e-3)
            for steps in (150, 300)
        ),
        {"learning_rate": 3e-3, "steps": 600, "rank": 8},
        {"learning_rate": 1e-2, "steps": 300, "rank": 8},
    ],
    "textual_inversion": [
        *({"learning_rate": lr, "steps": steps} for lr in (5e-3, 2e-2) for steps in (150, 300)),
        {"learning_rate": 0.1, "steps": 300},
        {"learning_rate": 0.1, "steps": 600},
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=100, help="nines rendered per setting")
    args = parser.parse_args()

    from PIL import Image

    from augment import registry
    from augment.bench.classify import few_shot
    from augment.config import load_spec
    from augment.digits import personalise as p
    from augment.digits.data import DIGIT_NAMES, real_digits
    from augment.finetuning import TaughtConcept, train_adapter, train_image
    from augment.job import RunOptions, run_job

    base = str(registry.resolve("model", p.NINE_CLASS_MODEL, "sweep"))
    rows = few_shot(real_digits(32).pool, 10, DEV_SEED)
    nine = DIGIT_NAMES.index(p.HELD_OUT)
    images = tuple(
        train_image(p.HELD_OUT, p.INSTANCE_PROMPT, Image.fromarray(image), image_id, 32)
        for image, label, image_id in zip(rows.images, rows.labels, rows.ids, strict=True)
        if label == nine
    )
    concept = TaughtConcept(p.HELD_OUT, p.HELD_OUT, p.TOKEN, images)
    size = p.FULL
    table = []
    for method, grid in GRID.items():
        for number, changes in enumerate(grid):
            folder = args.out / f"{method}-{number}"
            settings = replace(p.finetune_settings(method, size, DEV_SEED), **changes)
            started = time.perf_counter()
            card = train_adapter(base, [concept], settings, folder, base_name=p.NINE_CLASS_MODEL)
            seconds = time.perf_counter() - started
            extra = (
                {"loras": [{"path": str(folder)}]}
                if method == "lora"
                else {
                    "textual_inversions": [
                        {"path": str(folder / card["files"][0]), "token": p.TOKEN}
                    ]
                }
            )
            job = p.render_job(
                f"sweep-{method}-{number}",
                p.NINE_CLASS_MODEL,
                p.INSTANCE_PROMPT,
                [p.HELD_OUT],
                args.images,
                folder / "renders",
                size,
                1,
                **extra,
            )
            run_job(load_spec(job), RunOptions(distributor="local"))
            rate = p.scorer_reads_as_nine(folder / "renders")
            table.append(
                {
                    "method": method,
                    **changes,
                    "scorer_reads_nine": rate,
                    "fixed_loss": card["fixed_loss"],
                    "train_s": round(seconds, 1),
                }
            )
            print(json.dumps(table[-1]), flush=True)
    (args.out / "sweep.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
