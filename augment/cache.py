"""Where `augment` keeps what it builds once: builtin models, its WordNet copy."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$AUGMENT_CACHE, else ~/.cache/augment."""
    return Path(os.environ.get("AUGMENT_CACHE", Path.home() / ".cache" / "augment"))
