"""SPE's test suite (a regular package: diffprivlib installs a top-level package called
``tests``, which would otherwise shadow this one)."""
