"""Where a labelling model (segmenter, detector) is, checked before a run touches its output."""

from __future__ import annotations

import json
from pathlib import Path

from augment.config import looks_like_hub_id
from augment.errors import ModelError


def model_type(folder: Path) -> str | None:
    """A transformers folder's `model_type` (config.json), or None when it has none or the file
    cannot be read as a config."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    kind = config.get("model_type") if isinstance(config, dict) else None
    return kind if isinstance(kind, str) else None


def check_model(
    key: str, declared: str, resolved: str | None, kinds: tuple[str, ...], example: str
) -> tuple[str, str]:
    """(location, model_type) of the model a spec names at `key`: a folder whose config.json
    says one of `kinds`, or a hub id already in the local cache (nothing is downloaded)."""
    path = Path(resolved or declared)
    wanted = " or ".join(kinds)
    if path.exists():
        kind = model_type(path)
        if kind not in kinds:
            what = (
                f"a {kind} model"
                if kind
                else "no transformers model folder (no readable config.json)"
            )
            raise ModelError(f"{key}: {path} is {what}, not {wanted}; give a {wanted} folder")
        return str(path), kind
    if looks_like_hub_id(declared):
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(declared, "config.json")
        if isinstance(config, str):
            kind = model_type(Path(config).parent)
            if kind not in kinds:
                raise ModelError(f"{key}: {declared} is a {kind} model, not {wanted}")
            return declared, kind
    raise ModelError(
        f"{key}: '{declared}' not found: give a {wanted} model folder or a hub id already in the "
        f"Hugging Face cache (e.g. {example}); nothing is downloaded"
    )
