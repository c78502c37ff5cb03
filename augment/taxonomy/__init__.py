"""Concept sources, chosen by the source string's prefix.

- ``wordnet:<synset>``: the synsets below it (depth, leaves, exclude, instances apply);
- ``coco`` or ``coco:<supercategory>``: the 80 COCO 2017 categories, official ids;
- anything else: a list file, by path or by shipped name (``weeds``, ``digits``).
"""

from __future__ import annotations

from pathlib import Path

from augment.errors import TaxonomyError, at_least
from augment.taxonomy.concept import Concept
from augment.taxonomy.listfile import load_list_file

#: Where the shipped taxonomies live (inside the package, so an installed augment has them).
SHIPPED_TAXONOMIES = Path(__file__).resolve().parents[1] / "taxonomies"

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
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is not None:
        raise TaxonomyError(
            f"taxonomy '{source}' is a folder ({folder}); give a list file inside it (a YAML "
            "file with a concepts: list)"
        )
    shipped = sorted(p.stem for p in SHIPPED_TAXONOMIES.glob("*.yaml"))
    raise TaxonomyError(
        f"taxonomy '{source}' not found: give wordnet:<synset>, coco[:<supercategory>], a path "
        f"to a list file, or one of the shipped names: {', '.join(shipped)}"
    )


def coco_concepts(supercategory: str | None) -> list[Concept]:
    concepts = load_list_file(SHIPPED_TAXONOMIES / "coco.yaml")
    if supercategory is None:
        return concepts
    names = sorted({c.supercategory for c in concepts})
    if supercategory not in names:
        raise TaxonomyError(
            f"unknown COCO supercategory '{supercategory}'; known: {', '.join(names)}"
        )
    return [c for c in concepts if c.supercategory == supercategory]


def load_concepts(
    source: str,
    max_concepts: int | None = None,
    depth: int | None = None,
    leaves: bool = False,
    exclude: tuple[str, ...] = (),
    instances: bool = False,
) -> list[Concept]:
    """Expand a taxonomy source string into concepts, in a stable order."""
    if exclude is None:
        exclude = ()
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)  # not its letters
    if not all(isinstance(name, str) for name in exclude):
        raise TaxonomyError(f"exclude: synset ids or concept names (text), got {list(exclude)!r}")
    if depth is not None:
        at_least("depth", depth, 1)  # as taxonomy.depth in a job
    if max_concepts is not None:
        at_least("max_concepts", max_concepts, 1)
    kind, _, argument = source.partition(":")
    if kind == "wordnet":
        from augment.taxonomy.wordnet import expand_synset

        concepts = expand_synset(
            argument, depth=depth, leaves=leaves, exclude=exclude, instances=instances
        )
    else:
        if depth is not None or leaves or instances:
            raise TaxonomyError(
                f"taxonomy '{source}': depth, leaves and instances apply to wordnet:<synset> "
                "sources only"
            )
        if kind == "coco":
            concepts = coco_concepts(argument or None)
        else:
            concepts = load_list_file(resolve_list_file(source))
        known = {c.id for c in concepts} | {c.name for c in concepts}
        unknown = [name for name in exclude if name not in known]
        if unknown:  # a misspelt exclude would leave its concept in, unsaid
            import difflib

            close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise TaxonomyError(
                f"taxonomy '{source}': exclude '{unknown[0]}' is not one of its concepts{hint}"
            )
        concepts = [c for c in concepts if c.id not in exclude and c.name not in exclude]
    if max_concepts is not None:
        concepts = concepts[:max_concepts]
    if not concepts:
        raise TaxonomyError(
            f"taxonomy '{source}' expands to no concepts; widen it (depth, leaves, exclude) "
            "or pick another source"
        )
    return concepts


def spec_concepts(spec) -> list[Concept]:
    """The concepts a job spec's `taxonomy:` section names (its source resolved at load)."""
    t = spec.taxonomy
    return load_concepts(
        spec.paths.taxonomy, t.max_concepts, t.depth, t.leaves, tuple(t.exclude), t.instances
    )
