"""Prompts: templates x attributes x negatives.

A template is a format string over concept fields (``{name}``, ``{definition}``,
``{hypernym}``, ``{scientific_name}``, ``{supercategory}``, ``{synset}``, and ``{token}``: the
identifier a fine-tune taught the concept, empty for concepts it did not teach, so that
"a photo of {token} {name}" reads right for both) and attribute slots
(``{viewpoint}``, ``{lighting}``, ``{background}`` or any slot the spec lists). Each concept gets
``images_per_concept`` prompts. With ``combine: exhaustive`` they cycle through every
(template, attribute combination), interleaved so that the first images already use every
template and spread over the attribute values (`exhaustive_choices`); with
``combine: sample`` variant *v* uses template ``v mod T`` and attribute values drawn from a hash
of (concept, variant, slot), so the choice is deterministic and changing one template changes
only the items rendered from it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from augment.errors import SpecError
from augment.taxonomy.concept import Concept, readable_synset

log = logging.getLogger(__name__)

FIELDS = ("name", "definition", "hypernym", "scientific_name", "supercategory", "synset", "token")

#: Values for the common attribute slots, used when a template names a slot the spec omits.
DEFAULT_ATTRIBUTES: dict[str, list[str]] = {
    "viewpoint": ["front view", "side view", "top-down view", "close-up", "wide shot"],
    "lighting": ["daylight", "overcast light", "golden hour light", "studio lighting"],
    "background": ["plain background", "natural background", "cluttered background"],
}

#: The default negative prompt, in the spirit of the seed article ("bad anatomy, bad hands").
DEFAULT_NEGATIVE = "bad anatomy, deformed, blurry, lowres, watermark, text"


#: The fields that name a concept: truncation keeps the template's first one whole.
NAMING_FIELDS = ("name", "scientific_name", "synset")


@dataclass(frozen=True)
class Prompt:
    concept: Concept
    text: str
    negative: str
    variant: int
    template: str = ""  # what `text` was filled from
    #: Leading words of `text` up to the end of the concept's name: truncation keeps them.
    name_words: int = 0


def template_slots(template: str) -> list[str]:
    """The placeholder names a template uses ('a {name} on {background}' -> [name, background])."""
    try:
        parts = [
            (f, spec, conversion) for _, f, spec, conversion in string.Formatter().parse(template)
        ]
    except ValueError as exc:
        raise ValueError(f"{template!r} is malformed: {exc}") from None
    for field, spec, conversion in parts:
        if field is not None and (spec or conversion):  # {name:d} failed once filled in
            raise ValueError(
                f"{template!r}: {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not a plain placeholder; write {{{field}}}"
            )
    return [field for field, _, _ in parts if field is not None]


def placeholders_in(text: str) -> list[str]:
    """The {name}s in a text used as it is (a negative prompt, an attribute value): only what
    reads as a placeholder, since its other braces are text ("smiley :}" was "malformed")."""
    return re.findall(r"\{\s*([A-Za-z_]\w*)\s*\}", text)


def check_template(
    template: str, slots: set[str], hint: str = "add attribute slots under prompts.attributes"
) -> list[str]:
    """The attribute slots a template uses; a ValueError names a malformed template or a
    placeholder that is neither a concept field nor one of `slots` (then says `hint`)."""
    used = []
    for slot in template_slots(template):
        if slot in FIELDS:
            continue
        if slot == "":
            raise ValueError(f"{template!r} has an empty {{}} placeholder")
        if slot not in slots:
            raise ValueError(
                f"unknown placeholder {{{slot}}} in {template!r}; concept fields are "
                f"{', '.join('{' + f + '}' for f in FIELDS)}{'; ' + hint if hint else ''}"
            )
        used.append(slot)
    return used


def attribute_values(templates: list[str], attributes: dict[str, list[str]]) -> dict[str, list]:
    """The values of every attribute slot the templates use; unknown slots are errors."""
    known = {**DEFAULT_ATTRIBUTES, **attributes}
    used: dict[str, list[str]] = {}
    for template in templates:
        try:
            slots = check_template(template, set(known))
        except ValueError as exc:
            raise SpecError(f"prompts.templates: {exc}") from None
        for slot in slots:
            if not known[slot]:
                raise SpecError(f"prompts.attributes.{slot}: needs at least one value")
            used[slot] = list(known[slot])
    return used


def concept_values(concept: Concept, token: str | None = None) -> dict[str, str]:
    return {
        "token": token or "",
        "name": concept.name,
        "definition": concept.definition,
        "hypernym": concept.hypernym,
        "scientific_name": concept.scientific_name or concept.name,
        "supercategory": readable_synset(concept.supercategory),
        "synset": concept.synset or "",
    }


#: The list-file key that gives each concept field ({token} may be empty: "a photo of {token}
#: {name}" reads right for a concept no fine-tune taught; {scientific_name} falls back to
#: the name).
LIST_FILE_KEYS = {
    "name": "name",
    "definition": "definition",
    "hypernym": "hypernyms",
    "supercategory": "supercategory",
    "synset": "synset",
}


def check_fields_filled(concepts: list[Concept], templates: list[str]) -> None:
    """Refuse a template that reads a concept field some concepts lack: their prompts would
    leave it blank ("a photo of a , a person" for {hypernym} over COCO, which has none), and
    the images of that class would be rendered from a broken sentence."""
    values = [concept_values(concept) for concept in concepts]
    for template in templates:
        for field in dict.fromkeys(template_slots(template)):
            if field not in LIST_FILE_KEYS:
                continue
            lacking = [c for c, v in zip(concepts, values, strict=True) if not v[field].strip()]
            if not lacking:
                continue
            whole = [f for f in LIST_FILE_KEYS if all(v[f].strip() for v in values)]
            instead = ", ".join("{" + f + "}" for f in whole)
            raise SpecError(
                f"prompts.templates: {template!r} reads {{{field}}}, which {len(lacking)} of the "
                f"{len(concepts)} concepts lack (e.g. {lacking[0].name!r}): their prompts would "
                f"leave it blank; use a field they all have ({instead}), or a list file of "
                f"yours that gives each concept one (its `{LIST_FILE_KEYS[field]}:` key)"
            )


def warn_prompt_gaps(concepts: list[Concept], templates: list[str]) -> None:
    """Say what the templates make of concepts that cannot be told apart by the fields they
    read (WordNet's two griffons, both "a photo of a griffon": their images differ only by
    chance, and a classifier learns noise), and of {scientific_name} where a concept has none
    (the name stands in for it)."""
    if len(concepts) < 2:
        return
    read = [f for f in FIELDS if any(f in template_slots(t) for t in templates) and f != "token"]
    first: dict[tuple, Concept] = {}
    pairs = []
    for concept in concepts:
        values = concept_values(concept)
        # CLIP's tokenizer reads lower case: "Menorah" and "menorah" are one prompt to it
        seen = first.setdefault(
            tuple(" ".join(values[f].casefold().split()) for f in read), concept
        )
        if seen is not concept:
            pairs.append((seen, concept))
    if pairs:
        a, b = pairs[0]
        log.warning(
            "%d concept(s) get the same prompts as another, the fields the templates read being "
            "the same (e.g. %r, %s, and %r, %s): their images differ only by chance, and a "
            "classifier learns them as noise; read {definition} or {hypernym} in a template, or "
            "exclude one",
            len(pairs),
            a.name,
            a.synset or a.id,
            b.name,
            b.synset or b.id,
        )
    if "scientific_name" in read:
        lacking = [c for c in concepts if not c.scientific_name]
        if lacking:
            log.warning(
                "{scientific_name}: %d of the %d concepts have none (e.g. %r), and their "
                "prompts read the name in its place",
                len(lacking),
                len(concepts),
                lacking[0].name,
            )


def fill(template: str, values: dict[str, str]) -> str:
    return " ".join(template.format(**values).split())


def naming_prefix(template: str) -> str | None:
    """The template up to the end of its first naming field ('a photo of {name}' of 'a photo
    of {name}, {definition}'), or None when it names the concept by no such field."""
    prefix = ""
    for literal, field, _, _ in string.Formatter().parse(template):
        prefix += literal.replace("{", "{{").replace("}", "}}")
        if field is None:
            continue
        prefix += "{" + field + "}"
        if field in NAMING_FIELDS:
            return prefix
    return None


def pick(values: list[str], *key: object) -> str:
    """A deterministic choice from `values`, keyed by `key` (no RNG state to carry)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return values[int.from_bytes(digest[:8], "big") % len(values)]


def spread_pairs(first: int, second: int) -> list[tuple[int, int]]:
    """Every (i, j) with i < `first` and j < `second` once, in an order where both step on
    together: k -> (k mod first, (k + t) mod second) over blocks t of lcm(first, second)
    steps. Each block's pairs are distinct (k mod lcm decides them) and block t holds those with
    j - i = t (mod gcd), so the gcd blocks hold every pair. Any prefix meets the values of each
    evenly (counts apart by one at most), where the nested product order repeats the first
    value of i `second` times before the second."""
    block = math.lcm(first, second)
    return [(k % first, (k + k // block) % second) for k in range(first * second)]


def spread_product(sizes: list[int]) -> list[tuple[int, ...]]:
    """Every index tuple of a product of `sizes` once, every position spread evenly over any
    prefix (pairs spread as in `spread_pairs`, one more slot at a time)."""
    combos: list[tuple[int, ...]] = [()]
    for size in sizes:
        combos = [(*combos[i], j) for i, j in spread_pairs(len(combos), size)]
    return combos


def exhaustive_choices(templates: list[str], slots: dict[str, list[str]]) -> list[tuple]:
    """Every (template, {slot: value}) pair once, interleaved so that the first images already
    spread over the templates and attribute values: templates take turns (one whose
    combinations are all used drops out of the turn), and a template's attribute values
    change at every turn of it. A nested product order gave the first template's every
    combination before the second template's first, so a job of fewer images than
    combinations never rendered its later templates."""
    per_template = []
    for template in templates:
        names = [s for s in dict.fromkeys(template_slots(template)) if s in slots]
        combos = spread_product([len(slots[n]) for n in names])
        per_template.append(
            [
                (template, {n: slots[n][i] for n, i in zip(names, combo, strict=True)})
                for combo in combos
            ]
        )
    longest = max((len(c) for c in per_template), default=0)
    return [c[turn] for turn in range(longest) for c in per_template if turn < len(c)]


def build_prompts(
    concepts: list[Concept],
    templates: list[str],
    negative: str,
    images_per_concept: int,
    attributes: dict[str, list[str]] | None = None,
    combine: str = "sample",
    tokens: dict[str, str] | None = None,
    variants: range | None = None,
) -> list[Prompt]:
    """One Prompt per image to render, concept by concept; `tokens` maps concept ids to the
    identifiers a fine-tune taught ({token} in a template). A variant's prompt depends on its
    number alone, so `variants` (default: all `images_per_concept`) can pick a few from far in."""
    return list(
        iter_prompts(
            concepts,
            templates,
            negative,
            images_per_concept,
            attributes,
            combine,
            tokens,
            variants,
        )
    )


def iter_prompts(
    concepts: list[Concept],
    templates: list[str],
    negative: str,
    images_per_concept: int,
    attributes: dict[str, list[str]] | None = None,
    combine: str = "sample",
    tokens: dict[str, str] | None = None,
    variants: range | None = None,
) -> Iterator[Prompt]:
    """`build_prompts`' prompts one at a time: a job's every prompt can be checked without
    holding a million of them."""
    if len(concepts) > 1:  # a fixed prompt is for a job of one concept (a service request)
        for template in templates:
            if not set(template_slots(template)) & set(FIELDS):
                raise SpecError(
                    f"prompts.templates: {template!r} names no concept field, so each of the "
                    f"{len(concepts)} concepts would get this same prompt; add {{name}} (or "
                    "{definition}, {hypernym}, ...)"
                )
    check_fields_filled(concepts, templates)
    slots = attribute_values(templates, attributes or {})
    choices = exhaustive_choices(templates, slots) if combine == "exhaustive" else None
    prefixes = {template: naming_prefix(template) for template in templates}
    used = {
        t: [slot for slot in dict.fromkeys(template_slots(t)) if slot in slots] for t in templates
    }
    for concept in concepts:
        values = concept_values(concept, (tokens or {}).get(concept.id))
        for variant in range(images_per_concept) if variants is None else variants:
            if choices is not None:
                template, chosen = choices[variant % len(choices)]
            else:
                template = templates[variant % len(templates)]
                chosen = {
                    slot: pick(slots[slot], concept.id, variant, slot) for slot in used[template]
                }
            text = fill(template, {**values, **chosen})
            prefix = prefixes[template]
            named = len(fill(prefix, {**values, **chosen}).split()) if prefix else 0
            yield Prompt(concept, text, negative, variant, template, named)


def token_count(tokenizer, text: str) -> int:
    """Tokens the text encoder sees, start and end tokens included."""
    return len(tokenizer(text, truncation=False).input_ids)


def truncate_to_tokens(tokenizer, text: str, max_tokens: int, keep_words: int = 0) -> str | None:
    """Drop whole words from the end until the prompt fits the text encoder; None when its first
    `keep_words` (the concept's name and what precedes it) do not fit alone."""
    words = text.split()
    if keep_words and token_count(tokenizer, " ".join(words[:keep_words])) > max_tokens:
        return None

    def fits(count: int) -> bool:
        return token_count(tokenizer, " ".join(words[:count])) <= max_tokens

    # A longer prefix never has fewer tokens, so a binary search over the number of words kept
    # finds what dropping words one by one from the end would, in log(words) tokenizations.
    shortest = max(1, keep_words)
    if len(words) <= shortest or fits(len(words)):
        return " ".join(words)
    low, high = shortest, len(words) - 1  # the answer lies in [low, high]; low if none fits
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def enforce_token_limit(
    prompts: list[Prompt],
    tokenizer,
    max_tokens: int,
    on_long: str,
    among: Iterable[Prompt] | None = None,
) -> list[Prompt]:
    """Check every prompt against the text encoder's length; error or truncate, as the job says.

    Text past the limit would be cut silently by the pipeline, so a record's prompt would lie
    about what the model saw. Here a long prompt is either an error naming it and its token
    count, or truncated (whole words) before it enters the plan. Truncation keeps the concept's
    name: a prompt that lost it would render any class, so one whose text up to the name does
    not fit is an error naming the template and the concept. `among` (default: `prompts`, which
    it must hold) are the prompts whose lengths decide the errors and the warning: the job's
    every prompt, where --limit plans a few of them, so that a trial run refuses what the whole
    job would.
    """
    short = shortened_texts(prompts if among is None else among, tokenizer, max_tokens, on_long)
    if not short:
        return prompts
    return [
        replace(p, text=short[p.text, p.name_words]) if (p.text, p.name_words) in short else p
        for p in prompts
    ]


def shortened_texts(
    prompts: Iterable[Prompt], tokenizer, max_tokens: int, on_long: str
) -> dict[tuple[str, int], str]:
    """(text, name words) -> its truncated text, for each long prompt (see
    `enforce_token_limit`); each text is read once, so `prompts` may be a long stream."""
    distinct: dict[tuple[str, int], Prompt] = {}
    negatives: set[str] = set()
    for p in prompts:
        distinct.setdefault((p.text, p.name_words), p)
        negatives.add(p.negative)
    for negative in negatives:
        if token_count(tokenizer, negative) > max_tokens:
            raise SpecError(
                f"prompts.negative_prompt has {token_count(tokenizer, negative)} tokens, more "
                f"than the text encoder's {max_tokens}; shorten it"
            )
    counts = {text: token_count(tokenizer, text) for text in {text for text, _ in distinct}}
    long = {text: n for text, n in counts.items() if n > max_tokens}
    if not long:
        return {}
    if on_long == "error":
        text, n = max(long.items(), key=lambda kv: kv[1])
        raise SpecError(
            f"{len(long)} prompt(s) exceed the text encoder's {max_tokens} tokens, e.g. {n} "
            f"tokens: {text[:80]!r}...; shorten the templates or set "
            "prompts.on_long_prompt: truncate"
        )
    cut = {
        key: truncate_to_tokens(tokenizer, key[0], max_tokens, key[1])
        for key in distinct
        if key[0] in long
    }
    lost = [distinct[key] for key, text in cut.items() if text is None]
    if lost:
        first = lost[0]
        field = next(s for s in template_slots(first.template) if s in NAMING_FIELDS)
        shown = first.template if len(first.template) <= 80 else first.template[:60] + "..."
        raise SpecError(
            f"prompts.on_long_prompt: truncate would cut the concept's name from "
            f"{len({p.text for p in lost})} prompt(s), e.g. {first.concept.name!r} from template "
            f"{shown!r} (its text up to {{{field}}} alone is over the text encoder's "
            f"{max_tokens} tokens); move {{{field}}} nearer the template's start, or shorten "
            "what comes before it"
        )
    log.warning("%d prompt(s) truncated to %d tokens", len(long), max_tokens)
    return {key: text for key, text in cut.items() if text is not None}
