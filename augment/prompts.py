"""Prompts: templates filled with concept fields.

A template is a Python format string over the concept's fields: ``{name}``, ``{definition}``,
``{hypernym}``, ``{scientific_name}``, ``{supercategory}``. Each concept gets
``images_per_concept`` prompts, cycling through the templates, so changing one template changes
only the items rendered from it.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from augment.errors import SpecError
from augment.taxonomy.concept import Concept

FIELDS = ("name", "definition", "hypernym", "scientific_name", "supercategory", "synset")


@dataclass(frozen=True)
class Prompt:
    concept: Concept
    text: str
    negative: str
    variant: int


def template_fields(template: str) -> list[str]:
    """The placeholder names a template uses ('a {name} on {background}' -> [name, background])."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise SpecError(f"prompt template {template!r} is malformed: {exc}") from None


def check_templates(templates: list[str]) -> None:
    """Every placeholder must be a known concept field; say which one is not."""
    for template in templates:
        for placeholder in template_fields(template):
            if placeholder not in FIELDS:
                raise SpecError(
                    f"prompts.templates: unknown placeholder {{{placeholder}}} in {template!r}; "
                    f"known: {', '.join('{' + f + '}' for f in FIELDS)}"
                )


def fill_template(template: str, concept: Concept) -> str:
    values = {
        "name": concept.name,
        "definition": concept.definition,
        "hypernym": concept.hypernym,
        "scientific_name": concept.scientific_name or concept.name,
        "supercategory": concept.supercategory,
        "synset": concept.synset or "",
    }
    return " ".join(template.format(**values).split())


def build_prompts(
    concepts: list[Concept], templates: list[str], negative: str, images_per_concept: int
) -> list[Prompt]:
    """One Prompt per image to render, concept by concept, variants cycling templates."""
    check_templates(templates)
    return [
        Prompt(concept, fill_template(templates[v % len(templates)], concept), negative, v)
        for concept in concepts
        for v in range(images_per_concept)
    ]
