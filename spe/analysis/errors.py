"""The analysis exception family: helpers inside a workspace and the server-side replay.

Every message is one sentence that says what is wrong and what to do about it.
"""

from __future__ import annotations

from spe.errors import SPEError


class AnalysisError(SPEError):
    """An analysis helper cannot do what was asked; the message says why and what to change."""


class OutputSpecError(AnalysisError):
    """A recorded output's sidecar (or its files) is not a valid description of an output."""
