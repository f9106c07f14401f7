"""Where the packaged offline model and data live (PyPI packages, found without importing)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tunelab.errors import DataError


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (its imports may be heavy)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"package {name!r} is not installed; run `make setup` "
            f"(it installs the offline model and data packages)"
        )
    return Path(spec.submodule_search_locations[0])
