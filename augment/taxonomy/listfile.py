"""Concepts from a YAML list file (yours, or a shipped one: augment/taxonomies/<name>.yaml).

Format::

    name: weeds
    concepts:
      - name: lantana
        scientific_name: Lantana camara
        synset: lantana.n.01        # optional
        description: ...            # optional, used as {definition}
        aliases: [...]              # optional
        category_id: 3              # optional; default: position, from 1
        id: lantana                 # optional; default: slug of the name
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import yaml

from augment.errors import TaxonomyError, not_valid_yaml
from augment.taxonomy.concept import Concept

KNOWN_KEYS = {
    "id",
    "name",
    "category_id",
    "synset",
    "description",
    "definition",
    "scientific_name",
    "aliases",
    "supercategory",
    "hypernyms",
}


#: Longest slug: file names hold the slug and an item id within common 255-byte limits.
MAX_SLUG = 80


def slugify(name: str) -> str:
    """A file- and id-safe form of a concept name: 'Prickly acacia' -> 'prickly_acacia'. Letters
    of every script are kept ('猫' -> '猫', 'Crème brûlée' -> 'crème_brûlée'), in one Unicode form
    (é typed as e and an accent reads as é): ASCII letters alone made '猫' and '犬' both
    'concept', and their source folders one class. A long name is cut, with a hash of the whole
    name so that two long names stay apart."""
    text = unicodedata.normalize("NFKC", name).lower()
    # a letter's marks are part of it: Devanagari's and Thai's vowel signs are marks (not
    # \w), and ข้าว (rice) and ข่าว (news) were one id, नमस्ते was नमस_त
    kept = "".join(c if c.isalnum() or unicodedata.category(c)[0] == "M" else "_" for c in text)
    slug = re.sub(r"_+", "_", kept).strip("_") or "concept"
    if len(slug.encode()) > MAX_SLUG:  # in bytes, as file systems count a name's length
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        kept = slug.encode()[: MAX_SLUG - 9].decode(errors="ignore")  # whole characters
        slug = f"{kept.rstrip('_')}_{digest}"
    return slug


class TextLoader(yaml.SafeLoader):
    """YAML whose plain scalars stay text (null aside): a concept named 010 is "010", not
    the octal 8, 12:30 not 750, an alias yes not True (a category_id is read as a number)."""


TextLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag == "tag:yaml.org,2002:null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_list_file(path: Path) -> list[Concept]:
    """Read a list file into concepts; errors name the file and the bad entry."""
    try:
        data = yaml.load(path.read_text(), Loader=TextLoader)
    except OSError as exc:
        raise TaxonomyError(f"{path}: cannot read taxonomy file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TaxonomyError(
            f"{path}: not a text file; a taxonomy list file is YAML (UTF-8) with a concepts: list"
        ) from None
    except yaml.YAMLError as exc:
        raise TaxonomyError(not_valid_yaml(path, exc)) from None
    entries = data.get("concepts") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise TaxonomyError(f"{path}: expected a mapping with a 'concepts:' list")
    concepts: list[Concept] = []
    for position, entry in enumerate(entries, start=1):
        if isinstance(entry, str):
            entry = {"name": entry}
        if isinstance(entry, dict):
            check_text_values(entry, position, path)
        if not isinstance(entry, dict) or not str(entry.get("name") or "").strip():
            raise TaxonomyError(f"{path}: concept #{position} needs a 'name' (not blank)")
        unknown = set(entry) - KNOWN_KEYS
        if unknown:
            raise TaxonomyError(
                f"{path}: concept '{entry['name']}' has unknown key(s) {sorted(unknown)}; "
                f"valid keys: {', '.join(sorted(KNOWN_KEYS))}"
            )
        name = str(entry["name"])
        if not name.isprintable():  # ESC, BEL, NUL, a line break: into terminals and files
            shown = repr(name)
            raise TaxonomyError(
                f"{path}: concept {shown} holds a control character; remove it from the name"
            )
        category_id = entry.get("category_id", position)
        if isinstance(category_id, str) and re.fullmatch(r"\s*-?\d+\s*", category_id):
            category_id = int(category_id)
        # not negative, and the plan stores ids as 64-bit integers (a larger one
        # ended as a fault of augment)
        if (
            isinstance(category_id, bool)
            or not isinstance(category_id, int)
            or not 0 <= category_id < 2**63
        ):
            raise TaxonomyError(
                f"{path}: concept '{name}': category_id must be a whole number from 0 up "
                f"(below 2^63), not {category_id!r}"
            )
        concepts.append(
            Concept(
                id=str(entry.get("id") or slugify(name)),
                name=name,
                category_id=category_id,
                synset=entry.get("synset"),
                definition=str(entry.get("definition") or entry.get("description") or ""),
                hypernyms=names_list(entry, "hypernyms", path),
                scientific_name=str(entry.get("scientific_name") or ""),
                aliases=names_list(entry, "aliases", path),
                supercategory=str(entry.get("supercategory") or ""),
            )
        )
    check_unique(concepts, str(path))
    return concepts


#: The keys whose value is one piece of text (a list or mapping became its Python repr in
#: prompts, or a fault of augment where a synset was read).
TEXT_KEYS = (
    "id",
    "name",
    "synset",
    "description",
    "definition",
    "scientific_name",
    "supercategory",
)


def check_text_values(entry: dict, position: int, path: Path) -> None:
    for key in TEXT_KEYS:
        value = entry.get(key)
        if isinstance(value, list | dict):
            kind = "a list" if isinstance(value, list) else "a mapping"
            name = entry.get("name") if isinstance(entry.get("name"), str) else f"#{position}"
            raise TaxonomyError(
                f"{path}: concept {name!r}: {key} must be one piece of text, not {kind} "
                f"({value!r}); quote it if it holds a colon or starts with [ or {{"
            )


def names_list(entry: dict, key: str, path: Path) -> tuple[str, ...]:
    """A list of names (one name alone counts as a list of one, not of its letters)."""
    value = entry.get(key) or ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple):
        raise TaxonomyError(f"{path}: concept '{entry['name']}': {key} must be a list of names")
    return tuple(str(item) for item in value)


def check_unique(concepts: list[Concept], source: str) -> None:
    """Two concepts with one id or one category id would merge their images silently."""
    hints = {
        "id": "an id is made of a name's letters and digits, so these read as one; give each "
        "its own id:",
        "category_id": "a concept without category_id: has its position in the list, from 1; "
        "give each its own category_id:",
    }
    for attribute, hint in hints.items():
        seen: dict = {}
        for concept in concepts:
            value = getattr(concept, attribute)
            if value in seen:
                raise TaxonomyError(
                    f"{source}: concepts {seen[value].name!r} and {concept.name!r} share "
                    f"{attribute} {value!r}; {hint}"
                )
            seen[value] = concept
