"""Per-concept quality of a run: how faithful and how varied each concept's images are.

An average over a run hides the concepts a model cannot render (Stöckl 2022 found whole WordNet
branches that Stable Diffusion gets wrong), so every measure here is per concept, and the
table is sorted worst first:

- `fidelity`: the share of the concept's images that the run's scorer reads as the concept
  (its top class among the job's concepts): Stöckl's measure;
- `flagged` and one rate per flag (black, nan, nsfw, filtered, duplicate, ...);
- `diversity`: the mean cosine distance between two of the concept's images, on the scorer's
  features (0: all alike); beside it `real_diversity`, the same on the concept's real images;
- `kid`: the kernel inception distance (Bińkowski 2018: the unbiased squared MMD with a cubic
  polynomial kernel, x 1000) between the concept's images and its real ones, on the same
  features: the digits scorer in the digits world, CLIP where the scorer is a CLIP model.
  Unlike FID it has no bias with few images, which a few-shot real set always is.

Images flagged black or NaN carry no picture and are left out of every measure but the rates;
the others all count, flagged or not: the table describes what the model renders, and the
flag rates say how much of it a filter keeps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from augment.records import FLAGS
from augment.sinks import parquet
from augment.sinks.rows import concept_labels
from augment.taxonomy.listfile import slugify

#: Flags that mean "no picture": such images count in the flag rates only.
EMPTY = ("black", "nan")


def mean_pairwise_distance(features: np.ndarray) -> float | None:
    """Mean cosine distance over all pairs of rows (None under two rows). The sum of the
    pairs' cosines is |sum of unit rows|^2 less the rows' own: memory and time linear in the
    rows (an n x n matrix was 3.2 GB at 20,000 images of one concept, and crashed)."""
    if len(features) < 2:
        return None
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    total = unit.sum(axis=0, dtype=np.float64)
    n = len(unit)
    pairs = float(total @ total) - float(np.einsum("ij,ij->", unit, unit, dtype=np.float64))
    return 1.0 - pairs / (n * (n - 1))


#: Rows of one set KID reads at most (drawn with a fixed seed): its cost grows with the square
#: of the rows, and a few thousand hold its estimate to well within its own spread.
KID_MAX_ROWS = 5000
#: Rows of one kernel block: the kernel is summed a block at a time, in memory linear in rows.
KID_BLOCK = 1024


def kernel_sum(a: np.ndarray, b: np.ndarray, d: int) -> float:
    """The sum of (a.b / d + 1)^3 over every pair of rows, a block of `a` at a time."""
    return float(
        sum(
            ((a[start : start + KID_BLOCK] @ b.T / d + 1) ** 3).sum(dtype=np.float64)
            for start in range(0, len(a), KID_BLOCK)
        )
    )


def kernel_inception_distance(x: np.ndarray, y: np.ndarray) -> float | None:
    """Unbiased squared MMD between two feature sets, kernel (x.y / d + 1)^3, x 1000, on
    features rescaled to length sqrt(d): the kernel reads (cosine + 1)^3 whatever the scale
    of a scorer's features (Inception's, which KID was made for, are of that order). A set of
    more than KID_MAX_ROWS rows is read through a seeded sample of that many."""
    if len(x) < 2 or len(y) < 2:
        return None
    rng = np.random.default_rng(0)
    x, y = (
        v if len(v) <= KID_MAX_ROWS else v[np.sort(rng.choice(len(v), KID_MAX_ROWS, replace=False))]
        for v in (x, y)
    )
    d = x.shape[1]
    x, y = (
        np.sqrt(d) * v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for v in (x, y)
    )

    def own(v: np.ndarray) -> float:  # the diagonal's terms: each row with itself
        return float((((v * v).sum(axis=1) / d + 1) ** 3).sum())

    m, n = len(x), len(y)
    within_x = (kernel_sum(x, x, d) - own(x)) / (m * (m - 1))
    within_y = (kernel_sum(y, y, d) - own(y)) / (n * (n - 1))
    return float(1000.0 * (within_x + within_y - 2 * kernel_sum(x, y, d) / (m * n)))


def concept_quality(out_dir: Path, real: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per concept of a run (`concept`: its label, `concept_labels`; `name`: its
    name), worst fidelity first. `real`: concept name (slug) -> the scorer's features of its
    real images, for `real_diversity` and `kid`."""
    columns = ["concept_id", "concept_name", "scored_as", "embedding", *FLAGS]
    frame = pd.concat(
        parquet.read_shard(path, columns).to_pandas() for path in parquet.run_shards(Path(out_dir))
    )
    frame[list(FLAGS)] = frame[list(FLAGS)].fillna(False).astype(bool)  # older shards: empty
    frame["concept_id"] = frame["concept_id"].fillna(frame["concept_name"])
    names = dict(zip(frame["concept_id"], frame["concept_name"], strict=True))
    labels = concept_labels(names)
    rows = []
    for concept_id, group in frame.groupby("concept_id", sort=True):
        name = names[concept_id]
        empty = group[list(EMPTY)].any(axis=1)
        pictured = group[~empty]
        scored = pictured[pictured["scored_as"].notna()]
        embeddings = pictured["embedding"].dropna().to_list()
        features = np.stack(embeddings).astype(np.float64) if embeddings else np.zeros((0, 1))
        row = {
            "concept": labels[concept_id],
            "name": name,
            "images": len(group),
            "fidelity": (scored["scored_as"].map(slugify) == slugify(name)).mean()
            if len(scored)
            else None,
            "flagged": float(group[list(FLAGS)].any(axis=1).mean()),
            **{f"{flag}_rate": float(group[flag].mean()) for flag in FLAGS},
            "diversity": mean_pairwise_distance(features),
        }
        theirs = (real or {}).get(slugify(name))
        row["real_images"] = 0 if theirs is None else len(theirs)
        row["real_diversity"] = None if theirs is None else mean_pairwise_distance(theirs)
        row["kid"] = None if theirs is None else kernel_inception_distance(features, theirs)
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["fidelity", "concept"], na_position="last").reset_index(drop=True)
