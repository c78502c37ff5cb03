"""scikit-learn's bundled handwritten digits as 32x32 RGB images, and seeded, disjoint splits.

The 1,797 real scans are 8x8, values 0..16, ink high. They are upscaled with PIL (bicubic) to
`size` x `size`, white ink on a black background, with three identical channels: the format
the diffusion model renders. Nothing is downloaded: the data ships with scikit-learn.
"""

from __future__ import annotations

import numpy as np

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: The front matter of the shipped models' cards, which provenance reads the licence from: the
#: weights are the project's (Apache-2.0); the data is scikit-learn's copy of the UCI
#: "Optical Recognition of Handwritten Digits" set (CC BY 4.0), which the cards credit.
CARD_FRONT_MATTER = "---\nlicense: apache-2.0\ntags: [augment, digits]\n---\n\n"
DATA_CREDIT = (
    "scikit-learn's copy of the UCI Optical Recognition of Handwritten Digits data\n  "
    "(Alpaydin and Kaynak, 1998; CC BY 4.0)"
)

#: Real images per class in the pool a downstream classifier may train on.
POOL_PER_CLASS = 30
#: Real images per class in the validation split: settings are chosen on it (`augment bench
#: sweep`), never on the test split.
VALIDATION_PER_CLASS = 20
#: Real images per class in the held-out test split, scored once with the chosen settings.
TEST_PER_CLASS = 30


def prompt_for(label: int) -> str:
    """The canonical prompt for a digit class: 'a handwritten digit seven'."""
    return f"a handwritten digit {DIGIT_NAMES[int(label)]}"


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)


def load_digit_images(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (uint8 N x size x size x 3 images, int labels N), white ink on black."""
    from PIL import Image

    raw, labels = _raw_digits()
    grey = np.clip(np.rint(raw * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    if size == grey.shape[1]:
        up = grey
    else:
        up = np.stack(
            [
                np.asarray(Image.fromarray(img, mode="L").resize((size, size), Image.BICUBIC))
                for img in grey
            ]
        )
    images = np.repeat(up[..., None], 3, axis=-1)
    return np.ascontiguousarray(images), labels


def digit_splits(seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified, seeded, disjoint index arrays covering all 1,797 digits.

    `test`: 30 per class (300), `validation`: 20 per class (200), `pool`: 30 per class (300),
    `generator`: the rest (997), the only images the diffusion model and the scorer saw. Each
    array is sorted; the same seed gives the same split. (Validation and test share out what
    was one 50-a-class test split, so the shipped models, trained on `generator`, stay valid.)
    """
    _, labels = _raw_digits()
    rng = np.random.default_rng(seed)
    names = ("test", "validation", "pool", "generator")
    sizes = (TEST_PER_CLASS, VALIDATION_PER_CLASS, POOL_PER_CLASS, None)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for label in range(len(DIGIT_NAMES)):
        members = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for name, size in zip(names, sizes, strict=True):
            end = None if size is None else start + size
            parts[name].append(members[start:end])
            start = end
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def digit_sets(size: int) -> tuple[dict, dict[str, np.ndarray]]:
    """The digits splits (generator, pool, validation, test) as benchmark ImageSets, and their
    indices."""
    from augment.bench.data import ImageSet

    images, labels = load_digit_images(size)
    splits = digit_splits()
    every = ImageSet(images, labels, [f"digits-{i}" for i in range(len(labels))])
    return {name: every.subset(rows) for name, rows in splits.items()}, splits


def real_digits(size: int):
    """The benchmark's real set (`--real digits`): the fixed pool, validation and held-out test
    splits."""
    from augment.bench.data import Classes, RealData
    from augment.taxonomy import load_concepts

    concepts = load_concepts("digits")
    classes = Classes(
        [c.name for c in concepts], [c.synset for c in concepts], [c.hypernyms for c in concepts]
    )
    sets, splits = digit_sets(size)
    split = {"source": "digits"} | {
        name: splits[name].tolist() for name in ("pool", "validation", "test")
    }
    return RealData(classes, sets["pool"], sets["test"], split, sets["validation"])
