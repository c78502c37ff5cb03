"""The Concept: one thing a user wants images of, whatever source it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Concept:
    """A class to render and later to classify or detect.

    `id` is stable across runs (it enters every item_id); `category_id` is the label id used in
    exports (COCO ids are kept for COCO concepts). `hypernyms` is the WordNet path from the root
    down to the concept's parent, kept for per-node analysis.
    """

    id: str
    name: str
    category_id: int
    synset: str | None = None
    definition: str = ""
    hypernyms: tuple[str, ...] = ()
    scientific_name: str = ""
    aliases: tuple[str, ...] = ()
    supercategory: str = ""

    @property
    def hypernym(self) -> str:
        """The parent's readable name ('plant' for a weed), or '' at the root."""
        if not self.hypernyms:
            return ""
        return self.hypernyms[-1].split(".")[0].replace("_", " ")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["hypernyms"] = list(self.hypernyms)
        data["aliases"] = list(self.aliases)
        return data
