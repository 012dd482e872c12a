"""Hatch build hook: every wheel and sdist carries the template history (scaffold/bundles).

From a git checkout it (re)builds the bundles with scaffold.release; from an sdist (no git) it
checks that the bundles the sdist carries match its templates. Editable installs skip it: a
source checkout builds its bundles on first use (scaffold.render.template_source).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if version == "editable":
            return
        root = Path(self.root)
        sys.path.insert(0, str(root))
        try:
            from scaffold import release
        finally:
            sys.path.remove(str(root))
        out = root / "scaffold" / "bundles"
        if (root / ".git").exists():
            try:
                release.build_bundles(root, out)
            except release.ReleaseError as error:
                raise RuntimeError(f"cannot build the template bundles: {error}") from None
        elif release.stale_templates(root, out) if (root / "templates").is_dir() else True:
            raise RuntimeError(
                "scaffold/bundles is missing or does not match templates/: build from a git "
                "checkout (python -m scaffold.release), not from this tree"
            )
        for path in sorted(out.iterdir()):
            if path.suffix in (".bundle", ".json"):
                build_data["force_include"][str(path)] = f"scaffold/bundles/{path.name}"
