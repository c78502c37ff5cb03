"""Built-in names: what ``builtin:<name>`` means in a job spec or on the command line.

A builtin is a model, a source of real images or a real benchmark set that `augment` builds
or ships itself. Each kind maps names to builders: a builder makes (or finds) the thing and
returns where it is. Specs resolve their ``builtin:`` names here once, when they are loaded,
so the stages only ever see plain paths.

The core registers the tiny random models (built in code, for tests and tiny jobs). Worlds
built on top of the core register their own through the ``augment.builtins`` entry point
group: the digits world registers its model, its scorer, its canvases and its real set there,
and the core never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from augment.cache import cache_dir
from augment.errors import ModelError, SpecError

#: model: a diffusers folder, adapter file or scorer folder; source: a real image set
#: (COCO folder) that source modes start from; real: a labelled real set for the benchmarks.
Kind = Literal["model", "source", "real"]

ENTRY_POINT_GROUP = "augment.builtins"

_BUILDERS: dict[str, dict[str, Callable[[], Any]]] = {"model": {}, "source": {}, "real": {}}
_plugins_loaded = False


def register(kind: Kind, name: str, builder: Callable[[], Any]) -> None:
    """Make ``builtin:<name>`` of this kind mean what `builder()` returns."""
    _BUILDERS[kind][name] = builder


def _load_plugins() -> None:
    """Let installed worlds register their builtins (once per process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()(register)


def names(kind: Kind) -> list[str]:
    _load_plugins()
    return sorted(_BUILDERS[kind])


def build(kind: Kind, name: str, key: str) -> Any:
    """The builtin `name` of `kind`, built on first use; `key` names the spec field for errors."""
    _load_plugins()
    builders = _BUILDERS[kind]
    if name not in builders:
        known = ", ".join("builtin:" + n for n in sorted(builders)) or "none"
        error = ModelError if kind == "model" else SpecError
        raise error(f"{key}: unknown builtin '{name}'; available: {known}")
    return builders[name]()


def resolve(kind: Kind, name: str, key: str) -> Path:
    """The folder or file a builtin name stands for."""
    return Path(build(kind, name.removeprefix("builtin:"), key))


def shipped_folder(folder: Path, marker: str, command: str) -> Path:
    """A folder shipped inside a package, checked: a damaged install says how to rebuild it."""
    if not (folder / marker).is_file():
        raise ModelError(
            f"the shipped folder {folder} is missing (no {marker}); rebuild it with "
            f"`{command} --out {folder}`"
        )
    return folder


def _register_tiny_models() -> None:
    """Tiny random models of every family, built in code into the cache on first use."""

    def tiny(builder: str, folder: str, *args) -> Callable[[], Path]:
        def make() -> Path:
            from augment.generate import tiny

            return getattr(tiny, builder)(cache_dir() / "models" / folder, *args)

        return make

    for name, builder, folder, *args in (
        ("tiny-sd", "save_tiny_sd", "tiny-sd-v1"),
        ("tiny-sdxl", "save_tiny_sdxl", "tiny-sdxl-v1"),
        ("tiny-sd-inpaint", "save_tiny_sd_inpaint", "tiny-sd-inpaint-v1"),
        ("tiny-controlnet", "save_tiny_controlnet", "tiny-controlnet-v1"),
        ("tiny-controlnet-sdxl", "save_tiny_controlnet_sdxl", "tiny-controlnet-sdxl-v1"),
        ("tiny-lora", "save_tiny_lora", "tiny-lora-sd-v1", "sd"),
        ("tiny-lora-sdxl", "save_tiny_lora", "tiny-lora-sdxl-v1", "sdxl"),
        (
            "tiny-textual-inversion",
            "save_tiny_textual_inversion",
            "tiny-textual-inversion-v1.safetensors",
        ),
        ("tiny-clip", "save_tiny_clip", "tiny-clip-v1"),
        ("tiny-clipseg", "save_tiny_clipseg", "tiny-clipseg-v1"),
        ("tiny-sam", "save_tiny_sam", "tiny-sam-v1"),
        ("tiny-owlv2", "save_tiny_owlv2", "tiny-owlv2-v1"),
        ("tiny-grounding-dino", "save_tiny_grounding_dino", "tiny-grounding-dino-v2"),
    ):
        register("model", name, tiny(builder, folder, *args))


_register_tiny_models()
