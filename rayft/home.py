"""Where rayft keeps its state: `RAYFT_HOME` (default `.rayft/` in the working directory).

It holds the registry database, prepared datasets, training runs, eval reports and caches.
"""

from __future__ import annotations

import os
from pathlib import Path


def rayft_home() -> Path:
    """The resolved RAYFT_HOME folder (created if missing)."""
    home = Path(os.environ.get("RAYFT_HOME") or ".rayft").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def home_path(*parts: str) -> Path:
    """A path inside RAYFT_HOME; parent folders are created."""
    path = rayft_home().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
