"""Disclosure control: rules as data, per-cell checks of tables and models, safe versions.

Public entry points: ``load_rules``, ``check_table``, ``check_model``, ``check_formula``,
``safe_version``, ``ReleasedTable`` (differencing) and the CLI's ``crosstab_command`` and
``model_command``.
"""

from spe.sdc.check import (
    AGGS,
    MODEL_KINDS,
    Cell,
    ModelReport,
    RuleOutcome,
    TableReport,
    check_model,
    check_table,
)
from spe.sdc.commands import (
    crosstab_command,
    effective_rules,
    model_command,
    parse_columns,
    read_data,
)
from spe.sdc.differencing import DifferencingPair, ReleasedTable, hash_person_ids
from spe.sdc.errors import SafeVersionError, SDCError, SDCInputError, SDCPolicyError
from spe.sdc.model import check_formula
from spe.sdc.rules import Rules, Verdict, holder_slug, load_rules, strictest, validate_policy_file
from spe.sdc.safe import SafeCellChange, SafeTable, safe_version, suppression_pattern

__all__ = [
    "AGGS",
    "MODEL_KINDS",
    "Cell",
    "DifferencingPair",
    "ModelReport",
    "ReleasedTable",
    "RuleOutcome",
    "Rules",
    "SDCError",
    "SDCInputError",
    "SDCPolicyError",
    "SafeCellChange",
    "SafeTable",
    "SafeVersionError",
    "TableReport",
    "Verdict",
    "check_formula",
    "check_model",
    "check_table",
    "crosstab_command",
    "effective_rules",
    "hash_person_ids",
    "holder_slug",
    "load_rules",
    "model_command",
    "parse_columns",
    "read_data",
    "safe_version",
    "strictest",
    "suppression_pattern",
    "validate_policy_file",
]
