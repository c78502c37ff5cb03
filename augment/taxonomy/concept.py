"""The Concept: one thing a user wants images of, whatever source it came from."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

SYNSET_ID = re.compile(r"^([a-z0-9_'.-]+)\.[nvasr]\.\d{2}$")


def readable_synset(text: str) -> str:
    """A synset id as a prompt says it ('weed.n.01' -> 'weed'); other text as it is. A WordNet
    prompt "a {name}, a kind of {supercategory}" read "a kind of weed.n.01"."""
    match = SYNSET_ID.match(text)
    return match[1].replace("_", " ") if match else text


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
        """The parent's readable name ('plant' for a weed), or '' at the root. A list file's
        hypernyms are names already ("St. John's wort family" read "St")."""
        if not self.hypernyms:
            return ""
        return readable_synset(self.hypernyms[-1])

    def to_dict(self) -> dict:
        data = asdict(self)
        data["hypernyms"] = list(self.hypernyms)
        data["aliases"] = list(self.aliases)
        return data
