"""Recording a plan in the workspace outbox as ``NAME.plan.json``: the document, canonical JSON.

Written like every outbox file: to a hidden temporary name, fsynced, renamed into place.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from spe.analysis.data import check_safe_name
from spe.analysis.plan.document import canonical_json
from spe.analysis.recording import _temporary, _write_durably, outbox_dir

PLAN_SUFFIX = ".plan.json"


def record_plan(name: str, document: Any) -> Path:
    """Write ``document`` to the outbox as ``NAME.plan.json`` (atomically); returns its path."""
    check_safe_name(name, "output name")
    folder = outbox_dir()
    final = folder / (name + PLAN_SUFFIX)
    temporary = _temporary(folder, final.name)
    try:
        _write_durably(temporary, canonical_json(document))
        os.replace(temporary, final)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return final
