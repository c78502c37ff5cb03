"""The synthetic set's per-concept quality against the benchmark's real pool (`task: quality`
rows of results.parquet, beside the classifier's): `augment.quality` measures each concept,
with the run's own scorer embedding the real pool, so renders and real images are compared
on the same features.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from augment.bench.data import RealData, load_real
from augment.records import FLAGS
from augment.sinks import run_filters
from augment.taxonomy.listfile import slugify

log = logging.getLogger(__name__)

#: The per-concept measures written as results rows (see augment.quality): fidelity, the
#: share flagged and the share flagged for each reason, diversity, and the real-set measures.
MEASURES = (
    "fidelity",
    "flagged",
    *(f"{flag}_rate" for flag in FLAGS),
    "diversity",
    "real_diversity",
    "kid",
)
#: The side CLIP scorers take images at.
CLIP_SIZE = 224


def run_scorer(synthetic: Path) -> str | None:
    """Where the run's scorer is (the last `augment filter`'s, else the job's), or None."""
    from augment.config import locate
    from augment.filters import check_scorer_location

    name = run_filters(synthetic).get("scorer")
    if not name:
        return None
    try:
        return check_scorer_location(locate(name, None, "filters.scorer"), name)
    except Exception as exc:  # noqa: BLE001 - the quality table is a bonus: say why, go on
        log.warning("no real-image measures per concept: the run's scorer %s (%s)", name, exc)
        return None


def real_features(real_source: str, scorer: str) -> dict[str, np.ndarray]:
    """Concept (slug) -> the scorer's features of its real pool images."""
    from PIL import Image

    from augment.classifier import CLASSIFIER_CONFIG
    from augment.filters import is_classifier, scorer_features

    if is_classifier(scorer):
        size = json.loads((Path(scorer) / CLASSIFIER_CONFIG).read_text())["image_size"]
    else:
        size = CLIP_SIZE
    real: RealData = load_real(real_source, int(size))
    names = real.classes.names
    images = [Image.fromarray(pixels) for pixels in real.pool.images]
    features = scorer_features(scorer, names, images).astype(np.float64)
    return {slugify(name): features[real.pool.labels == i] for i, name in enumerate(names)}


def quality_rows(
    real_source: str, synthetic: Path, real: RealData, nodes: dict[str, list[int]]
) -> pd.DataFrame:
    """Per-concept quality rows, and fidelity per WordNet node (`nodes`: node -> its class
    indices; its concepts' images pooled)."""
    from augment.quality import concept_quality

    scorer = run_scorer(Path(synthetic))
    features = real_features(real_source, scorer) if scorer else None
    table = concept_quality(Path(synthetic), features)
    rows = [
        {"metric": measure, "label": row["concept"], "value": row[measure]}
        for _, row in table.iterrows()
        for measure in MEASURES
        if pd.notna(row[measure])
    ]
    by_slug: dict[str, list] = {}  # a real class's name -> the run's concepts of that name
    for _, row in table.iterrows():
        by_slug.setdefault(slugify(row["name"]), []).append(row)
    for node, members in sorted(nodes.items()):
        names = {slugify(real.classes.names[i]) for i in members}
        chosen = [row for name in sorted(names) for row in by_slug.get(name, [])]
        weights = np.array([row["images"] for row in chosen], dtype=float)
        values = np.array([row["fidelity"] for row in chosen], dtype=float)
        if len(chosen) and not np.isnan(values).all():
            keep = ~np.isnan(values)
            value = float(np.average(values[keep], weights=weights[keep]))
            rows.append({"metric": "node_fidelity", "label": node, "value": value})
    frame = pd.DataFrame(rows, columns=["metric", "label", "value"])
    return frame.assign(task="quality", arm="synthetic", ratio=0.0, shots=0, seed=0)
