"""Classifier benchmark: real-only vs real + synthetic (at ratios) vs synthetic-only.

For each few-shot regime (N real images per class drawn from the real pool) and each seed, the
same classifier is trained on each arm with the same number of optimisation steps (equal
compute), then scored on the held-out real test set: top-1, macro-F1, per-class accuracy, and
accuracy per WordNet node (every hypernym above the classes). One results row per (arm, ratio,
shots, seed, metric, label); `ratio` is the ratio asked, `ratio_trained` the one the arm trained
on, which is lower (`synthetic_short`, and a warning) when the synthetic set runs short.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from augment.bench.data import (
    Classes,
    ImageSet,
    RealData,
    check_no_leak,
    load_real,
    load_synthetic,
    renders_of_held_out,
)
from augment.bench.workers import default_workers, in_processes
from augment.classifier import build_model, check_classifier, to_tensor
from augment.errors import AugmentError, above, as_list, at_least, between, first_line

log = logging.getLogger(__name__)


@dataclass
class ClassifySettings:
    real: str = "digits"
    synthetic: str | None = None  # an `augment run` output folder
    out: str = "bench"
    model: str = "smallcnn"
    weights: str | None = None  # a local state_dict for resnet18/50 (no downloads)
    image_size: int = 32
    shots: list[int] = field(default_factory=lambda: [10])
    ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    synthetic_only: bool = True
    # Real-only plus as many more real images as each augmented arm adds synthetic ones, where
    # the pool holds them: the arm to beat ("Unmet Promise", Geng 2024).
    oracle: bool = True
    seeds: int = 3
    steps: int = 600
    # Where the classifiers are scored: "test", or "validation" to choose settings by (the real
    # set must have one: `digits` does).
    evaluate_on: str = "test"
    quality: bool = True  # per-concept fidelity and diversity rows (task "quality")
    real_only: bool = True  # the baseline arm (a sweep trains it once, not per setting)
    batch_size: int = 64
    lr: float = 2e-3
    test_fraction: float = 0.3  # for ImageFolder / COCO real sets
    split_seed: int = 0
    workers: int | None = None  # models trained at once, one thread each (default: the cores)

    def __post_init__(self) -> None:
        """Refuse settings no benchmark can run, before any data is read."""
        self.shots, self.ratios = as_list(self.shots), as_list(self.ratios)
        for name in ("shots", "seeds", "steps", "batch_size", "image_size"):
            at_least(name, getattr(self, name), 1)
        at_least("split_seed", self.split_seed, 0)  # numpy's generators take no negative seed
        if self.workers is not None:
            at_least("workers", self.workers, 1)
        hint = " (synthetic images per real image, e.g. 0.5,1,2)"
        above("ratios", self.ratios, 0, hint, finite=True)  # each makes an image count
        above("lr", self.lr, 0, finite=True)
        if self.evaluate_on not in ("test", "validation"):
            raise AugmentError(f"evaluate_on: test or validation, got {self.evaluate_on!r}")
        between("test_fraction", self.test_fraction, 0, 1)
        check_classifier(self.model)
        if self.weights is not None:
            if self.model == "smallcnn":
                raise AugmentError(
                    "weights: a state_dict for resnet18 or resnet50; smallcnn trains from "
                    "scratch: drop the weights, or choose one of those models"
                )
            if not Path(self.weights).is_file():
                raise AugmentError(f"weights: {self.weights} is not a file")


def random_shift(batch, max_shift: int, generator):
    """Shift each image by up to `max_shift` pixels (zero padding): cheap, label-preserving."""
    import torch

    size = batch.shape[-1]
    padded = torch.nn.functional.pad(batch, [max_shift] * 4, value=-1.0)
    out = torch.empty_like(batch)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(batch), 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + size, dx : dx + size]
    return out


def train_classifier(
    train: ImageSet, num_classes: int, settings: ClassifySettings, seed: int, progress=None
):
    """Train for a fixed number of steps on batches drawn uniformly from `train`."""
    import torch

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(settings.model, num_classes, settings.weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, settings.steps)
    images, labels = to_tensor(train.images), torch.from_numpy(train.labels).long()
    model.train()
    for _ in range(settings.steps):
        rows = torch.randint(0, len(labels), (settings.batch_size,), generator=generator)
        batch = random_shift(images[rows], max(1, settings.image_size // 16), generator)
        loss = torch.nn.functional.cross_entropy(model(batch), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress:
            progress(1)
    return model


def predict(model, test: ImageSet, batch_size: int = 256) -> np.ndarray:
    import torch

    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            outputs.append(model(to_tensor(test.images[start : start + batch_size])).argmax(1))
    return torch.cat(outputs).numpy()


def score(
    predictions: np.ndarray, test: ImageSet, classes: Classes
) -> list[tuple[str, str, float]]:
    """(metric, label, value) rows: overall, per class, per WordNet node. Accuracies in %."""
    from sklearn.metrics import f1_score

    correct = predictions == test.labels
    rows = [
        ("top1", "", 100.0 * correct.mean()),
        ("macro_f1", "", 100.0 * f1_score(test.labels, predictions, average="macro")),
    ]
    for index, name in enumerate(classes.names):
        members = test.labels == index
        if members.any():
            rows.append(("class_accuracy", name, 100.0 * correct[members].mean()))
    for node, members in sorted(wordnet_nodes(classes).items()):
        chosen = np.isin(test.labels, members)
        if chosen.any():
            rows.append(("node_accuracy", node, 100.0 * correct[chosen].mean()))
    return rows


def wordnet_nodes(classes: Classes) -> dict[str, list[int]]:
    """Hypernym -> classes below it; of nodes covering the same classes, the deepest only."""
    members: dict[str, list[int]] = {}
    depth: dict[str, int] = {}
    for index, path in enumerate(classes.hypernyms):
        for level, node in enumerate(path):
            members.setdefault(node, []).append(index)
            depth[node] = level
    deepest: dict[tuple, str] = {}
    for node, covered in members.items():
        key = tuple(covered)
        if key not in deepest or depth[node] > depth[deepest[key]]:
            deepest[key] = node
    return {node: list(key) for key, node in deepest.items()}


def train_and_score(
    train: ImageSet, test: ImageSet, classes: Classes, settings: ClassifySettings, seed: int
) -> tuple[list[tuple[str, str, float]], float, np.ndarray]:
    """Train one classifier and score it on `test`: its rows (`score`), its seconds, and its
    prediction for each test image (which a bootstrap over test images resamples)."""
    started = time.perf_counter()
    model = train_classifier(train, len(classes.names), settings, seed)
    predictions = predict(model, test)
    rows = score(predictions, test, classes)
    return rows, time.perf_counter() - started, predictions


def train_and_score_all(tasks: list[tuple], workers: int = 1, progress=None) -> list[tuple]:
    """`train_and_score(*task)` for every task, `workers` models at once; in order."""
    return in_processes(train_and_score, tasks, workers, progress)


def few_shot(pool: ImageSet, shots: int, seed: int, names: list[str] | None = None) -> ImageSet:
    """`shots` real images per class, drawn with `seed` (`names`: the classes', for errors)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in np.unique(pool.labels):
        members = np.flatnonzero(pool.labels == label)
        if len(members) < shots:
            name = label if names is None else names[label]
            raise AugmentError(
                f"only {len(members)} real images of class {name} in the pool; "
                f"lower --shots below {shots}"
            )
        rows.extend(rng.choice(members, shots, replace=False))
    return pool.subset(np.sort(np.array(rows)))


def balanced_sample(
    images: ImageSet,
    count: int,
    num_classes: int,
    seed: int,
    at_most: np.ndarray | None = None,
) -> ImageSet:
    """`count` synthetic images spread evenly over the classes (the remainder to classes drawn
    with `seed`); fewer where a class has fewer, which the caller reports. `at_most`: a cap per
    class (the oracle takes a class's real images as the augmented arm took its synthetic
    ones), the same draws otherwise."""
    rng = np.random.default_rng(seed + 1_000_003)
    quota = np.full(num_classes, count // num_classes)
    if count % num_classes:
        quota[rng.choice(num_classes, count % num_classes, replace=False)] += 1
    if at_most is not None:
        quota = np.minimum(quota, at_most)
    rows = []
    for label in range(num_classes):
        members = np.flatnonzero(images.labels == label)
        rows.extend(rng.choice(members, min(quota[label], len(members)), replace=False))
    return images.subset(np.sort(np.array(rows, dtype=int)))


def arms(settings: ClassifySettings, has_synthetic: bool) -> list[tuple[str, float]]:
    chosen = [("real_only", 0.0)] if settings.real_only else []
    if has_synthetic:
        chosen += [("augmented", ratio) for ratio in dict.fromkeys(settings.ratios)]
        if settings.oracle:
            chosen += [("oracle", ratio) for ratio in dict.fromkeys(settings.ratios)]
        if settings.synthetic_only:
            chosen.append(("synthetic_only", 0.0))
    return chosen


def oracle_fits(pool: ImageSet, shots: int, ratio: float, num_classes: int) -> bool:
    """Whether the pool holds, beside `shots` images a class, the extra real images the oracle
    arm at `ratio` takes from every class (as many as the augmented arm's synthetic ones)."""
    extra = -(-round(ratio * shots * num_classes) // num_classes)  # the largest class quota
    smallest = min(int((pool.labels == label).sum()) for label in range(num_classes))
    return smallest - shots >= extra


def more_real(
    pool: ImageSet, taken: ImageSet, count: int, num_classes: int, seed: int, synthetic: ImageSet
) -> ImageSet:
    """Real pool images beside the ones `taken`, as many of each class as the augmented arm of
    the same count and seed draws from `synthetic`: where that set ran short of a class, the
    oracle was given real images the augmented arm had no synthetic ones for."""
    mine = set(taken.ids)
    rest = pool.subset(np.array([i for i, image in enumerate(pool.ids) if image not in mine]))
    have = np.bincount(synthetic.labels, minlength=num_classes)
    return balanced_sample(rest, count, num_classes, seed, at_most=have)


def run_classify(settings: ClassifySettings, real: RealData | None = None) -> pd.DataFrame:
    """Run every (shots, seed, arm); write OUT/results.parquet and OUT/split.json."""
    from augment.progress import image_progress

    out = Path(settings.out)
    real = real or load_real(
        settings.real, settings.image_size, settings.test_fraction, settings.split_seed
    )
    synthetic = (
        load_synthetic(Path(settings.synthetic), real.classes, settings.image_size)
        if settings.synthetic
        else None
    )
    if synthetic is not None:
        synthetic = without_renders_of_held_out(synthetic, Path(settings.synthetic), settings, real)
    evaluated = evaluation_set(real, settings)
    check_no_leak(evaluated, real.pool, *([synthetic] if synthetic is not None else []))
    check_results_table(out)
    num_classes = len(real.classes.names)
    arms_asked = arms(settings, synthetic is not None)
    fits = {  # (shots, ratio) -> whether the pool holds the oracle's extra real images
        (shots, ratio): oracle_fits(real.pool, shots, ratio, num_classes)
        for shots in settings.shots
        for arm, ratio in arms_asked
        if arm == "oracle"
    }
    plan = [
        (shots, seed, arm, ratio)
        for shots in settings.shots
        for seed in range(settings.seeds)
        for arm, ratio in arms_asked
        if arm != "oracle" or fits[shots, ratio]
    ]
    for shots in settings.shots:
        missing = [f"×{ratio:g}" for (s, ratio), fit in fits.items() if s == shots and not fit]
        if missing:
            log.warning(
                "no oracle arm at %s for %d shots: the real pool has too few more images a class",
                ", ".join(missing),
                shots,
            )
    short: set[tuple[int, float]] = set()  # (shots, ratio) the synthetic set could not fill
    arms_trained = []  # (shots, seed, arm, ratio, n_real, n_synthetic, ratio_trained, short)
    tasks = []
    for shots, seed, arm, ratio in plan:
        real_train = few_shot(real.pool, shots, seed, real.classes.names)
        asked = 0
        if arm == "real_only":
            train = real_train
        elif arm == "oracle":
            asked = round(ratio * len(real_train))
            more = more_real(real.pool, real_train, asked, num_classes, seed, synthetic)
            train = ImageSet.concat(real_train, more)
        elif arm == "synthetic_only":
            train = balanced_sample(synthetic, len(synthetic), num_classes, seed)
        else:
            asked = round(ratio * len(real_train))
            extra = balanced_sample(synthetic, asked, num_classes, seed)
            train = ImageSet.concat(real_train, extra)
            if len(extra) < asked and (shots, ratio) not in short:
                short.add((shots, ratio))
                log.warning(
                    "augmented ×%g at %d shots asks %d synthetic images; the synthetic set "
                    "has %d of them (×%.2g): that arm trains on fewer (see ratio_trained)",
                    ratio,
                    shots,
                    asked,
                    len(extra),
                    len(extra) / len(real_train),
                )
        n_real = {"synthetic_only": 0, "oracle": len(train)}.get(arm, len(real_train))
        added = len(train) - len(real_train)  # augmented, oracle: the images beside real_train
        trained = trained_ratio(arm, added / len(real_train))
        ran_short = added < asked  # the synthetic set ran short (the oracle follows it)
        arms_trained.append(
            (shots, seed, arm, ratio, n_real, len(train) - n_real, trained, ran_short)
        )
        tasks.append((train, evaluated, real.classes, settings, seed))
    if settings.weights:  # a state_dict that does not fit, said once, not in every worker
        build_model(settings.model, num_classes, settings.weights)
    out.mkdir(parents=True, exist_ok=True)  # once the inputs are known good
    (out / "split.json").write_text(json.dumps(real.split))
    workers = settings.workers or default_workers()
    with image_progress(len(tasks), "training classifiers", unit="model") as advance:
        scored = train_and_score_all(tasks, workers, advance)
    rows, predicted = [], []
    for (shots, seed, arm, ratio, n_real, n_synthetic, trained, ran_short), (
        metrics,
        seconds,
        predictions,
    ) in zip(arms_trained, scored, strict=True):
        predicted.append(
            pd.DataFrame(
                {
                    "task": "classify",
                    "arm": arm,
                    "ratio": ratio,
                    "shots": shots,
                    "seed": seed,
                    "image_id": evaluated.ids,
                    "label": evaluated.labels,
                    "prediction": predictions,
                    # the classes' names too: the indices alone could not be read back for
                    # an ImageFolder or COCO set (a confusion matrix in a notebook)
                    "label_name": np.asarray(real.classes.names, dtype=object)[evaluated.labels],
                    "prediction_name": np.asarray(real.classes.names, dtype=object)[predictions],
                    "evaluated_on": settings.evaluate_on,
                }
            )
        )
        for metric, label, value in metrics:
            rows.append(
                {
                    "task": "classify",
                    "arm": arm,
                    "ratio": ratio,
                    "shots": shots,
                    "seed": seed,
                    "metric": metric,
                    "label": label,
                    "value": value,
                    "model": settings.model,
                    "steps": settings.steps,
                    "n_real": n_real,
                    "n_synthetic": n_synthetic,
                    "ratio_trained": trained,
                    "synthetic_short": ran_short,
                    "n_test": len(evaluated),
                    "evaluated_on": settings.evaluate_on,
                    "wall_s": seconds,
                }
            )
    results = pd.DataFrame(rows)
    if settings.synthetic and settings.quality:
        from augment.bench.quality import quality_rows

        nodes = wordnet_nodes(real.classes)
        quality = quality_rows(settings.real, Path(settings.synthetic), real, nodes)
        results = pd.concat([results, quality], ignore_index=True)
    write_results(results, out, {"classify": asdict(settings)}, tasks={"classify", "quality"})
    replace_rows(pd.concat(predicted, ignore_index=True), out / PREDICTIONS, {"classify"})
    return results


#: Each classifier's prediction for each image it was scored on, beside results.parquet.
PREDICTIONS = "predictions.parquet"


def without_renders_of_held_out(
    synthetic: ImageSet, run_dir: Path, settings: ClassifySettings, real: RealData
) -> ImageSet:
    """The synthetic set less its images rendered from held-out real images (test or
    validation), said in a warning: a classifier trained on an img2img render of a test image
    has seen most of its pixels. (A whole set of them is an error.)"""
    held_out = real.test.ids + (real.validation.ids if real.validation is not None else [])
    renders = renders_of_held_out(run_dir, settings.real, held_out)
    if not renders:
        return synthetic
    keep = np.array([i for i, item_id in enumerate(synthetic.ids) if item_id not in renders])
    why = (
        f"{len(synthetic) - len(keep)} images of {run_dir} were rendered from held-out real "
        f"images of {settings.real} (the test or validation split in split.json), which a "
        "classifier must not see"
    )
    if not len(keep):
        raise AugmentError(
            f"{why}, and that is all of them; render from the training images only (a source "
            "folder without the held-out ones)"
        )
    log.warning("%s: they are left out; %d remain", why, len(keep))
    return synthetic.subset(keep)


def evaluation_set(real: RealData, settings: ClassifySettings) -> ImageSet:
    """The held-out images the classifiers are scored on: test, or validation."""
    if settings.evaluate_on == "test":
        return real.test
    if real.validation is None:
        raise AugmentError(
            f"real set '{settings.real}' has no validation split to choose settings on; use "
            "--real digits, or score on test (and call the result an upper estimate)"
        )
    return real.validation


def trained_ratio(arm: str, added_per_real: float) -> float:
    """The ratio an arm trained at: the images it added per few-shot real image (augmented:
    synthetic ones; oracle: as many more real ones, of the same classes), else 0."""
    return added_per_real if arm in ("augmented", "oracle") else 0.0


def check_results_table(out: Path) -> None:
    """The results table and settings OUT already holds can take new rows: checked before any
    model trains, so a damaged one costs no training."""
    path, settings_path = out / "results.parquet", out / "settings.json"
    remedy = "move it away, or give another --out (results are added to it)"
    if path.is_file():
        try:
            pd.read_parquet(path, columns=["task"])
        except Exception as exc:  # noqa: BLE001 - pyarrow's own errors
            raise AugmentError(
                f"{path} is not a results table ({first_line(exc)}); {remedy}"
            ) from None
    if settings_path.is_file():
        try:
            saved = json.loads(settings_path.read_text())
        except ValueError as exc:
            raise AugmentError(
                f"{settings_path} is not JSON ({first_line(exc)}); {remedy}"
            ) from None
        if not isinstance(saved, dict):
            raise AugmentError(f"{settings_path} is not a settings object; {remedy}")


def replace_rows(table: pd.DataFrame, path: Path, tasks: set[str] | None = None) -> Path:
    """Write `table` into the Parquet file `path`, replacing the rows there of its tasks
    (`tasks`: those a benchmark writes, which it replaces even where it has none now)."""
    if path.is_file():
        previous = pd.read_parquet(path)
        tasks = set(table["task"]) | (tasks or set())
        table = pd.concat([previous[~previous["task"].isin(tasks)], table], ignore_index=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def write_results(
    results: pd.DataFrame, out: Path, settings: dict, tasks: set[str] | None = None
) -> Path:
    """Append to OUT/results.parquet, replacing earlier rows of the same task (`tasks`: those
    a benchmark writes, which its new rows replace even where it has none now: a classify
    without a synthetic set left the last one's per-concept quality rows in the report)."""
    path = replace_rows(results, out / "results.parquet", tasks)
    settings_path = out / "settings.json"
    saved = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    settings_path.write_text(json.dumps({**saved, **settings}, indent=2))
    return path
