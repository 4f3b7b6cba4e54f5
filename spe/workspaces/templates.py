"""The notebook templates (notebooks_templates/) copied into a new workspace's home, once."""

from __future__ import annotations

import shutil
from pathlib import Path

from spe.config import REPO_ROOT

TEMPLATES = REPO_ROOT / "notebooks_templates"
MARKER = ".spe-templates-copied"


def copy_templates(home: Path, source: Path = TEMPLATES) -> list[str]:
    """Copy the templates into ``home`` unless done before (a researcher may delete or change
    them; they are not put back). Returns the names copied."""
    marker = home / MARKER
    if marker.exists() or not source.is_dir():
        return []
    home.mkdir(parents=True, exist_ok=True)
    copied = []
    for template in sorted(source.glob("*.ipynb")):
        target = home / template.name
        if not target.exists():
            shutil.copyfile(template, target)
            copied.append(template.name)
    marker.write_text("\n".join(copied) + "\n")
    return copied
