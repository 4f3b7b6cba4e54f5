"""The hub's side of a workspace that runs outside its sandbox: the recorder on the only path in."""
