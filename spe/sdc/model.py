"""Fitting a model from a formula and checking it: the function behind `spe sdc model`.

statsmodels fits ols, logit or probit on the rows without missing values; the report carries the
residual degrees of freedom (counted on distinct persons when a person column is given).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from spe.sdc.check import MODEL_KINDS, ModelReport, check_model
from spe.sdc.errors import SDCInputError
from spe.sdc.rules import Rules


def check_formula(
    df: pd.DataFrame,
    formula: str,
    kind: str = "ols",
    rules: Rules | None = None,
    person_id: str | None = None,
) -> ModelReport:
    """Fit ``formula`` as ``kind`` on ``df`` and check it (residual degrees of freedom)."""
    if kind not in MODEL_KINDS:
        raise SDCInputError(f"kind is {kind!r}; use one of {', '.join(MODEL_KINDS)}.")
    if person_id is not None and person_id not in df.columns:
        raise SDCInputError(f"There is no person column {person_id!r} in the data.")
    import statsmodels.formula.api as smf
    from patsy import PatsyError

    fit_kwargs: dict[str, Any] = {} if kind == "ols" else {"disp": 0}
    try:
        model = getattr(smf, kind)(formula, data=df, missing="drop")
        result = model.fit(**fit_kwargs)
    except PatsyError as exc:
        raise SDCInputError(f"The formula {formula!r} cannot be used: {exc}".strip()) from None
    except (ValueError, np.linalg.LinAlgError) as exc:
        raise SDCInputError(f"The {kind} model could not be fitted: {exc}") from None
    except Exception as exc:  # statsmodels raises its own PerfectSeparationError and others
        raise SDCInputError(
            f"The {kind} model could not be fitted ({exc.__class__.__name__}: {exc})."
        ) from None
    persons = None
    if person_id is not None:
        used = model.data.row_labels
        persons = int(df.loc[used, person_id].nunique())
    coefficients = {
        str(name): {
            "estimate": _number(result.params[name]),
            "std_err": _number(result.bse[name]),
            "p_value": _number(result.pvalues[name]),
        }
        for name in result.params.index
    }
    return check_model(
        kind,
        int(result.nobs),
        float(result.df_resid),
        rules,
        persons=persons,
        formula=formula,
        coefficients=coefficients,
    )


def _number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value
