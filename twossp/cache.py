"""Where twossp keeps downloaded wheels, converted models and token streams."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("TWOSSP_CACHE") or Path.home() / ".cache" / "twossp")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
