"""Bytecode for what a workspace starts with, written at build time (run by the image builds).

The workspace's root is read-only, so Python cannot cache bytecode at run time: without this,
every start compiled jupyter_server, JupyterLab, tornado, IPython, pandas... from source again
(about 5 s of a 6.5 s start). Compiling all of site-packages would add about 110 MB; this
imports the modules named on the command line, then writes bytecode for exactly the modules
that import loaded from under PREFIX, as "unchecked-hash" .pyc files: valid whatever the files'
times after COPY, and never checked against a source that cannot change in an image.

    python precompile.py PREFIX MODULE [MODULE ...]
"""

from __future__ import annotations

import importlib
import py_compile
import sys


def main(prefix: str, modules: list[str]) -> int:
    for name in modules:
        importlib.import_module(name)
    compiled = 0
    for module in list(sys.modules.values()):
        source = getattr(module, "__file__", None) or ""
        if source.startswith(prefix) and source.endswith(".py"):
            py_compile.compile(
                source,
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
            compiled += 1
    print(f"precompiled {compiled} modules under {prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
