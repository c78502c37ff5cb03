"""Concept sources: list files now; WordNet and COCO sources plug in by prefix."""

from __future__ import annotations

from pathlib import Path

from augment.errors import TaxonomyError
from augment.taxonomy.concept import Concept
from augment.taxonomy.listfile import load_list_file

#: Where the shipped taxonomies live (taxonomies/ at the repository root).
SHIPPED_TAXONOMIES = Path(__file__).resolve().parents[2] / "taxonomies"

__all__ = ["Concept", "load_concepts", "resolve_list_file"]


def resolve_list_file(source: str, base_dir: Path | None = None) -> Path:
    """Find a list file: a path (relative to the job file or cwd) or a shipped name ('weeds')."""
    candidates = [Path(source)]
    if base_dir is not None:
        candidates.insert(0, base_dir / source)
    candidates.append(SHIPPED_TAXONOMIES / source)
    candidates.append(SHIPPED_TAXONOMIES / f"{source}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in SHIPPED_TAXONOMIES.glob("*.yaml"))
    raise TaxonomyError(
        f"taxonomy '{source}' not found: give a path to a list file or one of the shipped "
        f"names: {', '.join(shipped)}"
    )


def load_concepts(
    source: str, base_dir: Path | None = None, max_concepts: int | None = None
) -> list[Concept]:
    """Expand a taxonomy source string into concepts, in a stable order."""
    concepts = load_list_file(resolve_list_file(source, base_dir))
    if max_concepts is not None:
        concepts = concepts[:max_concepts]
    if not concepts:
        raise TaxonomyError(f"taxonomy '{source}' expands to no concepts; add concepts or widen it")
    return concepts
