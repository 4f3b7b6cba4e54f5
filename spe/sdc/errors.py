"""The disclosure-control exception family.

Every message is one sentence that says what is wrong and what to do about it.
"""

from __future__ import annotations

from spe.errors import SPEError


class SDCError(SPEError):
    """A disclosure check could not be made; the message says why and what to change."""


class SDCPolicyError(SDCError):
    """A disclosure policy file is wrong; the message names the file, the line and the fix."""


class SDCInputError(SDCError):
    """The table or model asked for cannot be built from the data as given."""


class SafeVersionError(SDCError):
    """No safe version of this output can be made automatically; the message says why."""
