"""What every `spe` command that acts for a person needs: a writing transaction and the user."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from spe.errors import SPEError


@contextmanager
def acting(ctx: click.Context) -> Iterator[tuple[Any, Any]]:
    """A writing transaction and the user the command acts as (--as or SPE_CLI_USER)."""
    from spe.accounts.service import get_user
    from spe.db import transaction

    username = (ctx.find_root().obj or {}).get("as_user")
    if not username:
        raise SPEError("Say who you act as: add --as USERNAME (or set SPE_CLI_USER).")
    try:
        with transaction() as session:
            yield session, get_user(session, username)
    except SPEError as error:
        # The refused transaction has rolled back; the refusal gets an event of its own.
        from spe.audit.refusals import record_refusal_of

        record_refusal_of(error, username, ctx.command_path)
        raise
