"""The catalogue: datasets, their versions and variables, and the conditions for re-use (the
DGA Art. 8 information point)."""
