"""Where the lab keeps its state on the controller machine.

Everything the lab makes lives under one directory so that `sandbox down --all` can
remove all of it and nothing leaks into the repository. Override with HARDKIT_LAB_DIR
(tests do, so parallel runs never share targets).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Default root of the lab's state: images, targets, keys, generated inventories.
DEFAULT_LAB_DIR = Path("/var/lib/hardkit-lab")


def lab_dir() -> Path:
    return Path(os.environ.get("HARDKIT_LAB_DIR", str(DEFAULT_LAB_DIR)))


def images_dir() -> Path:
    return lab_dir() / "images"


def labs_dir() -> Path:
    """One folder per lab prefix (`sandbox up --name PREFIX`)."""
    return lab_dir() / "labs"


def keys_dir() -> Path:
    return lab_dir() / "keys"
