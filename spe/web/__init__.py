"""SPE's pages: server-rendered HTML for every role, behind the hub's login.

The pages hold no business rules: every page calls the same capability functions the API and
the CLI call, and renders what comes back (refusals included, as the sentence they carry).
"""

from spe.web.app import PREFIX, web_router

__all__ = ["PREFIX", "web_router"]
