"""Templates: valid notebooks for SPE's kernel, copied into a new home once and never again."""

from __future__ import annotations

import json

from spe.workspaces.templates import TEMPLATES, copy_templates


def test_every_template_is_a_notebook_for_the_spe_kernel_using_spe_analysis():
    templates = sorted(TEMPLATES.glob("*.ipynb"))
    assert templates
    for path in templates:
        nb = json.loads(path.read_text())
        assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "spe"
        code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "import spe.analysis" in code and "export(" in code
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                compile("".join(cell["source"]), path.name, "exec")
                assert cell["outputs"] == []  # no data in a template


def test_templates_are_copied_once_and_a_deleted_one_stays_deleted(tmp_path):
    home = tmp_path / "home"
    copied = copy_templates(home)
    assert copied and (home / copied[0]).exists()
    (home / copied[0]).unlink()
    assert copy_templates(home) == []
    assert not (home / copied[0]).exists()
