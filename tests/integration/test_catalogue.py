"""The catalogue (DGA Art. 8 information point): what a dataset is, never what is in it."""

from __future__ import annotations

import json

import pytest

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
    # The policy declares no code list, so no value of the data may appear.
    for value in ("59000", "0301", "4601", "5001", "1970-05-17"):
        assert value not in text
    statistics = {"min", "max", "mean", "median", "mode", "values", "top"}
    keys = set(entry) | {k for v in entry["variables"] for k in v}
    assert keys.isdisjoint(statistics)
    domains = {v["name"]: (v["categories"], v["bins"], v["free_text"]) for v in entry["variables"]}
    assert domains["municipality"] == (None, None, True)  # free text: never a table label
    assert domains["income"] == (None, None, False)


CODED_POLICY = """dataset: coded
title: Coded
holder: Holder Agency
conditions: For tests.
identifiers: {allow_synthetic: true}
columns:
  fnr: {class: person_id}
  municipality:
    class: quasi_identifier
    generalise: county
    categories: ["0301", "4601", "4602", "5001"]
  year: {class: attribute, type: int64, categories: [2019, 2020, 2021]}
  wage: {class: attribute, type: int64, bins: [0, 100000, 500000, 1000000]}
  born: {class: quasi_identifier, type: date, generalise: year}
  start: {class: attribute, type: date}
"""


@pytest.fixture
def coded(world, tmp_path):
    from spe.ingest.pipeline import ingest
    from spe.ingest.policy import load_policy
    from tests.conftest import synthetic_numbers

    policy_path = tmp_path / "coded.yaml"
    policy_path.write_text(CODED_POLICY)
    csv = tmp_path / "coded.csv"
    rows = [f"{n},0301,2019,1000,1970-01-02,2020-03-04" for n in synthetic_numbers(5)]
    csv.write_text("fnr,municipality,year,wage,born,start\n" + "\n".join(rows) + "\n")
    return ingest("reviewer", csv, load_policy(policy_path))


def test_catalogue_shows_declared_categories_and_bins_even_levels_no_row_has(coded):
    with readonly() as s:
        entry = describe(get_dataset(s, "coded"))
    variables = {v["name"]: v for v in entry["variables"]}
    # The held column is the county (generalised at ingest): its code list is the policy's,
    # generalised; 46 and 50 are listed though every row is in 03.
    assert variables["municipality"]["categories"] == ["03", "46", "50"]
    assert variables["year"]["categories"] == [2019, 2020, 2021]
    assert variables["wage"]["bins"] == [0, 100000, 500000, 1000000]
    assert variables["wage"]["categories"] is None and not variables["wage"]["free_text"]
    with readonly() as s:
        doc = dcat_jsonld(list_datasets(s))
    (dataset,) = doc["dcat:dataset"]
    by_name = {v["spe:name"]: v for v in dataset["spe:variable"]}
    assert by_name["year"]["spe:categories"] == [2019, 2020, 2021]
    assert by_name["wage"]["spe:bins"] == [0, 100000, 500000, 1000000]
    assert "spe:categories" not in by_name["wage"]


def test_catalogue_page_lists_categories_and_bins(coded, spe_env):
    from fastapi.testclient import TestClient

    from spe.api import create_app
    from spe.web import PREFIX

    with TestClient(create_app()) as client:
        page = client.get(f"{PREFIX}/catalogue/coded")
    assert page.status_code == 200
    assert "2019, 2020, 2021" in page.text and "03, 46, 50" in page.text
    assert "bins with edges 0, 100000, 500000, 1000000" in page.text


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


def test_granted_column_gives_kind_and_code_list_after_the_grants_generalisation(coded):
    from spe.catalogue.service import granted_column
    from spe.ingest.policy import Generalisation

    with readonly() as s:
        version = get_dataset(s, "coded").latest
        county = granted_column(version, "municipality", None)
        assert county == {"kind": "string", "categories": ["03", "46", "50"], "bins": None}
        assert granted_column(version, "municipality", Generalisation.COUNTY) == county
        year = granted_column(version, "year", None)
        assert year == {"kind": "int", "categories": [2019, 2020, 2021], "bins": None}
        wage = granted_column(version, "wage", None)
        assert wage["kind"] == "int" and wage["bins"] == [0, 100000, 500000, 1000000]
        assert granted_column(version, "born", None)["kind"] == "year"  # a year at ingest
        assert granted_column(version, "start", None)["kind"] == "date"
        start_year = granted_column(version, "start", Generalisation.YEAR)
        assert start_year == {"kind": "year", "categories": None, "bins": None}


def test_the_public_page_of_an_aggregate_only_dataset_shows_its_shared_privacy_budget(
    world, tmp_path, monkeypatch
):
    """Issue 14: the budget belongs to the dataset, and the catalogue shows what remains of it
    (epsilon only; nothing about the data)."""
    from fastapi.testclient import TestClient

    from spe.api import create_app
    from spe.web import PREFIX
    from tests.integration.dp_world import make_health
    from tests.integration.test_dp_budget import ask_inline

    make_health(tmp_path, monkeypatch, total=1.0)
    ask_inline({"kind": "count", "dataset": "health", "epsilon": 0.25})
    with TestClient(create_app()) as client:
        page = client.get(f"{PREFIX}/catalogue/health")
    assert page.status_code == 200, page.text
    assert "Privacy budget (epsilon)" in page.text
    assert "0.25 spent" in page.text and "remaining" in page.text
