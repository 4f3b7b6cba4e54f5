"""Workspaces: the sandboxed notebook server per (researcher, project), the hub that spawns
them, the airlock (their one way out) and the audit of the cells they run."""
