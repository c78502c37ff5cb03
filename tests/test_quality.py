"""Per-concept quality: fidelity, diversity and KID say what they should on known digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augment.config import FilterSpec, locate
from augment.digits.data import DIGIT_NAMES, digit_splits, load_digit_images
from augment.filters import ImageFilter, scorer_features
from augment.generate.engine import encode_png
from augment.quality import concept_quality, kernel_inception_distance, mean_pairwise_distance
from augment.sinks.parquet import write_shard

SCORER = "builtin:digits-scorer"


def scored_records(rows: list[int], name: str, image_filter: ImageFilter) -> list[dict]:
    images, _ = load_digit_images(32)
    records = [
        {
            "item_id": f"{name}-{row}-{n}",
            "concept_name": name,
            "prompt": f"a handwritten digit {name}",
            "image": {"bytes": encode_png(images[row]), "path": None},
            "filtered": False,
        }
        for n, row in enumerate(rows)
    ]
    return image_filter(records)


def test_fidelity_diversity_and_kid_per_concept(tmp_path: Path):
    images, labels = load_digit_images(32)
    splits = digit_splits()
    location = locate(SCORER, None, "filters.scorer")
    image_filter = ImageFilter(FilterSpec(scorer=SCORER), location, list(DIGIT_NAMES))

    def generator_rows(digit: int, count: int = 20) -> list[int]:
        rows = splits["generator"]
        return [int(r) for r in rows[labels[rows] == digit][:count]]

    records = (
        scored_records(generator_rows(3), "three", image_filter)
        + scored_records(generator_rows(7), "seven", image_filter)
        + scored_records(generator_rows(3), "eight", image_filter)  # threes sold as eights
        + scored_records([generator_rows(5)[0]] * 20, "five", image_filter)  # one five, 20 times
    )
    write_shard(tmp_path / "shards", "part-00000.parquet", records)
    pool = splits["pool"]
    features = scorer_features(
        location, list(DIGIT_NAMES), [Image.fromarray(images[r]) for r in pool]
    )
    real = {name: features[labels[pool] == d] for d, name in enumerate(DIGIT_NAMES)}

    table = concept_quality(tmp_path, real).set_index("concept")
    assert table.index[0] == "eight"  # worst fidelity first
    assert table.loc["eight", "fidelity"] <= 0.1
    assert table.loc["three", "fidelity"] >= 0.9 and table.loc["seven", "fidelity"] >= 0.9
    assert table.loc["five", "diversity"] < 1e-6 < table.loc["three", "diversity"]
    assert 0 < table.loc["three", "real_diversity"] < 1 and table.loc["three", "real_images"] == 30
    # Real threes are nearer real threes than the 'eights' (threes) are to real eights.
    assert table.loc["three", "kid"] < table.loc["eight", "kid"]
    assert table.loc["seven", "kid"] < table.loc["eight", "kid"]
    assert (table["images"] == 20).all() and (table["flagged"] >= 0).all()


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same = kernel_inception_distance(a, b)
    shifted = kernel_inception_distance(a, b + 0.5)
    assert abs(same) < 0.2 * shifted and shifted > 0


def test_two_concepts_that_share_a_name_keep_their_own_rows_and_pages(tmp_path: Path):
    """WordNet has two "spotted salamander" synsets: a run of both measures and shows each
    apart (name and id), not one concept of twice the images."""
    from augment.gallery import write_gallery

    rng = np.random.default_rng(0)
    concepts = [
        ("spotted_salamander.n.01", "spotted salamander", 3),
        ("spotted_salamander.n.02", "spotted salamander", 2),
        ("newt.n.01", "newt", 1),
        ("xerox.n.01", "Xerox", 1),  # a page name of its own, not the other's (they shared one)
        ("xerox.n.02", "xerox", 1),
        ("father_figure.n.01", "father figure", 1),  # these two ids and labels read as one
        ("father-figure.n.01", "father-figure", 1),  # file name, and shared a page
    ]
    records = [
        {
            "item_id": f"{cid}-{n}",
            "concept_id": cid,
            "concept_name": name,
            "prompt": f"a photo of a {name}",
            "image": {"bytes": encode_png(rng.integers(0, 255, (8, 8, 3), np.uint8)), "path": None},
        }
        for cid, name, count in concepts
        for n in range(count)
    ]
    write_shard(tmp_path / "shards", "part-00000.parquet", records)
    categories = [{"id": n + 1, "name": name} for n, (_, name, _) in enumerate(concepts)]
    (tmp_path / "manifest.json").write_text(json.dumps({"categories": categories}))  # finished
    table = concept_quality(tmp_path).set_index("concept")
    assert table["images"].to_dict() == {
        "newt": 1,
        "spotted salamander (spotted_salamander.n.01)": 3,
        "spotted salamander (spotted_salamander.n.02)": 2,
        "Xerox (xerox.n.01)": 1,
        "xerox (xerox.n.02)": 1,
        "father figure (father_figure.n.01)": 1,
        "father-figure (father-figure.n.01)": 1,
    }
    assert set(table["name"]) == {
        "newt",
        "spotted salamander",
        "Xerox",
        "xerox",
        "father figure",
        "father-figure",
    }
    index = write_gallery(tmp_path).read_text()
    pages = sorted(p.name for p in (tmp_path / "gallery").glob("concept-*.html"))
    assert len(pages) == 7 and all(f'href="{page}"' in index for page in pages)


def test_diversity_and_kid_hold_to_their_definitions_in_memory_linear_in_images():
    """Both built an n x n matrix: 3.2 GB for one concept of 20,000 images, which crashed
    `augment view`. Summed another way, they give the pairwise definitions' values."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(200, 16)) + 0.2
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    pairs = [1 - unit[i] @ unit[j] for i in range(300) for j in range(300) if i != j]
    assert mean_pairwise_distance(a) == pytest.approx(np.mean(pairs), rel=1e-9)
    x, y = (4 * v / np.linalg.norm(v, axis=1, keepdims=True) for v in (a, b))  # length sqrt(16)
    k = lambda p, q: (p @ q.T / 16 + 1) ** 3  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    mmd = (kxx.sum() - np.trace(kxx)) / (300 * 299) + (kyy.sum() - np.trace(kyy)) / (200 * 199)
    assert kernel_inception_distance(a, b) == pytest.approx(1000 * (mmd - 2 * k(x, y).mean()))
    many = rng.normal(size=(20_000, 64)).astype(np.float32)  # 3.2 GB as one n x n matrix
    assert mean_pairwise_distance(many) == pytest.approx(1.0, abs=1e-3)
    assert kernel_inception_distance(many, many[:100]) == pytest.approx(0.0, abs=30)
