"""The catalogue (DGA Art. 8 information point): what a dataset is, never what is in it."""

from __future__ import annotations

import json

from spe.catalogue.service import dcat_jsonld, describe, get_dataset, list_datasets
from spe.db import readonly


def test_catalogue_describes_variables_size_conditions_and_versions(people):
    with readonly() as s:
        d = describe(get_dataset(s, "people"))
    assert d["holder"] == "Holder Agency" and d["rows"] == 60 and d["size_bytes"] > 0
    assert d["conditions"] == "For tests."
    names = [v["name"] for v in d["variables"]]
    assert names == ["person_id", "birth_date", "municipality", "income"]
    assert "name" not in names  # direct identifiers never reach the catalogue
    classes = {v["name"]: v["classification"] for v in d["variables"]}
    assert classes["person_id"] == "person_id" and classes["income"] == "attribute"
    assert [v["version"] for v in d["versions"]] == [1]


def test_catalogue_shows_no_statistic_of_any_variable(people):
    with readonly() as s:
        entry = describe(get_dataset(s, "people"))
    text = json.dumps(entry)
    # The ingested values: incomes 0..59000, municipalities 0301/4601/5001, one birth date.
    for value in ("59000", "0301", "4601", "5001", "1970-05-17"):
        assert value not in text
    statistics = {"min", "max", "mean", "median", "mode", "categories", "values", "top"}
    keys = set(entry) | {k for v in entry["variables"] for k in v}
    assert keys.isdisjoint(statistics)


def test_dcat_export_is_json_ld_with_the_dataset(people):
    with readonly() as s:
        doc = dcat_jsonld(list_datasets(s))
    assert doc["@type"] == "dcat:Catalog"
    assert doc["@context"]["dcat"] == "http://www.w3.org/ns/dcat#"
    (entry,) = doc["dcat:dataset"]
    assert entry["@type"] == "dcat:Dataset" and entry["dct:identifier"] == "people"
    assert entry["dct:publisher"]["foaf:name"] == "Holder Agency"
    assert entry["dcat:distribution"][0]["dcat:byteSize"]["@value"].isdigit()


def test_catalogue_cli_lists_shows_and_exports(people, run_spe, tmp_path):
    listing = run_spe("catalogue", "list")
    assert listing.returncode == 0 and "people\tv1\t60 rows\tHolder Agency" in listing.stdout
    shown = json.loads(run_spe("catalogue", "show", "people").stdout)
    assert shown["name"] == "people"
    out = tmp_path / "catalogue.jsonld"
    assert run_spe("catalogue", "export", "--out", str(out)).returncode == 0
    assert json.loads(out.read_text())["@type"] == "dcat:Catalog"


def test_synth_cli_writes_the_registry_and_manifest(run_spe, tmp_path):
    out = run_spe(
        "synth", "registry", "--persons", "500", "--seed", "3", "--out", str(tmp_path / "r")
    )
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["persons"] == 500
    assert (tmp_path / "r" / "population.csv").exists()
