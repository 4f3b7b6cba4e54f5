"""Fitting a model from a formula and checking it: the function behind `spe sdc model`.

statsmodels fits ols, logit or probit on the rows without missing values; the report carries the
residual degrees of freedom, the persons each term of the design rests on (each level, each cell
of an interaction, each regressor) and the persons' leverage, counted on distinct persons when a
person column is given.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd

from spe.sdc import compute
from spe.sdc.check import MODEL_KINDS, ModelReport, TermPersons, check_model
from spe.sdc.errors import SDCInputError
from spe.sdc.rules import Rules

_CHUNK = 1 << 16  # design rows per block when computing leverage


def check_formula(
    df: pd.DataFrame,
    formula: str,
    kind: str = "ols",
    rules: Rules | None = None,
    person_id: str | None = None,
) -> ModelReport:
    """Fit ``formula`` as ``kind`` on ``df`` and check it: residual degrees of freedom, the
    persons every term rests on, and the persons' leverage."""
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
    used = model.data.row_labels
    persons = None
    if person_id is not None:
        codes, uniques = pd.factorize(df.loc[used, person_id])
        if (codes < 0).any():
            raise SDCInputError(
                f"Some rows have no value in the person column {person_id!r}; every row of a "
                "model needs its person."
            )
        persons = len(uniques)
    else:
        codes = np.arange(len(used))
    exog = np.asarray(model.exog, dtype=np.float64)
    names = [str(n) for n in model.exog_names]
    n_persons = persons if persons is not None else len(used)
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
        terms=term_persons(model, df.loc[used], exog, names, codes, n_persons),
        leverage=person_leverage(exog, codes, n_persons),
    )


def term_persons(
    model: Any,
    frame: pd.DataFrame,
    exog: np.ndarray,
    names: list[str],
    codes: np.ndarray,
    n_persons: int,
) -> list[TermPersons]:
    """The persons each term of a fitted statsmodels formula model rests on.

    A term made of categoricals only rests, per combination of its levels (each level of a main
    effect, each cell of an interaction), on the persons with that combination, the reference
    levels included: in a saturated model the intercept is the reference cell's mean. A term with
    a number in it rests, per design column, on the persons whose value differs from the
    column's most common value: shifting a column by a constant only moves the intercept, so a
    column that is constant except for one person singles that person out as surely as one that
    is zero except for them.
    """
    design = getattr(model.data, "model_spec", None)
    slices = getattr(design, "term_slices", None)
    out: list[TermPersons] = []
    if design is None or slices is None:  # not a patsy design: judge every column
        for j, name in enumerate(names):
            if name != "Intercept":
                out.append(TermPersons(name, _off_mode_persons(exog[:, j], codes, n_persons)))
        return out
    for term, columns in slices.items():
        if not term.factors:
            continue  # the intercept: every person
        infos = [design.factor_infos[f] for f in term.factors]
        if all(info.type == "categorical" for info in infos):
            out.extend(_cells(term, infos, frame, names[columns], codes, n_persons))
            continue
        for j in range(columns.start, columns.stop):
            out.append(TermPersons(names[j], _off_mode_persons(exog[:, j], codes, n_persons)))
    return out


def _cells(
    term: Any,
    infos: list[Any],
    frame: pd.DataFrame,
    column_names: list[str],
    codes: np.ndarray,
    n_persons: int,
) -> list[TermPersons]:
    """Persons per combination of the levels of a term's categorical factors."""
    level_codes = []
    for factor, info in zip(term.factors, infos, strict=True):
        values = factor.eval(info.state, frame)
        values = getattr(values, "data", values)  # C(...) boxes its values with their levels
        codes_of = pd.Categorical(np.asarray(values), categories=list(info.categories)).codes
        if (codes_of < 0).any():  # a level patsy would name but pandas cannot match
            from patsy.categorical import categorical_to_int
            from patsy.missing import NAAction

            codes_of = categorical_to_int(values, info.categories, NAAction(), origin=factor)
        level_codes.append(np.asarray(codes_of, dtype=np.int64))
    sizes = [len(info.categories) for info in infos]
    n_cells = math.prod(sizes)
    cell = np.ravel_multi_index(level_codes, sizes) if level_codes else np.zeros(0, np.int64)
    persons = compute._count_distinct(cell.astype(np.int64), codes, n_persons, n_cells)
    own = set(column_names)
    kind = "level" if len(infos) == 1 else "cell"
    out = []
    for flat, combination in enumerate(itertools.product(*(info.categories for info in infos))):
        parts = [
            (factor.name(), level) for factor, level in zip(term.factors, combination, strict=True)
        ]
        named = _column_name(parts, own)
        if named is None and persons[flat] == 0:
            continue  # no coefficient and no person: nothing rests on it
        name = named or ":".join(f"{factor}[{level}]" for factor, level in parts)
        out.append(TermPersons(name, int(persons[flat]), kind, reference=named is None))
    return out


def _column_name(parts: list[tuple[str, Any]], columns: set[str]) -> str | None:
    """The design column of one combination of levels, as patsy names it, if it has one."""
    for prefixes in itertools.product(("T.", ""), repeat=len(parts)):
        name = ":".join(
            f"{factor}[{prefix}{level}]"
            for (factor, level), prefix in zip(parts, prefixes, strict=True)
        )
        if name in columns:
            return name
    return None


def _off_mode_persons(column: np.ndarray, codes: np.ndarray, n_persons: int) -> int:
    """Distinct persons with a row whose value differs from the column's most common value."""
    if len(column) == 0:
        return 0
    values, counts = np.unique(column, return_counts=True)
    top = int(np.argmax(counts))
    # Where no value repeats there is no common value to stand apart from: every person counts.
    off = column != values[top] if counts[top] > 1 else np.ones(len(column), dtype=bool)
    return int(np.count_nonzero(np.bincount(codes[off], minlength=n_persons)))


def person_leverage(exog: np.ndarray, codes: np.ndarray, n_persons: int) -> np.ndarray:
    """Each person's leverage: the diagonal of the design's hat matrix summed over their rows.

    Columns are scaled to unit length first and directions with an eigenvalue below 1e-10 of
    the largest are left out (a rank-deficient design's leverage is that of its column space).
    """
    n, p = exog.shape
    if n == 0 or p == 0:
        return np.zeros(n_persons)
    norms = np.sqrt(np.einsum("ij,ij->j", exog, exog))
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    gram = np.zeros((p, p))
    for start in range(0, n, _CHUNK):  # blocks: no scaled copy of the whole design
        block = np.ascontiguousarray(exog[start : start + _CHUNK]) * scale
        gram += block.T @ block
    eigenvalues, vectors = np.linalg.eigh(gram)
    keep = eigenvalues > max(float(eigenvalues.max()), 0.0) * 1e-10
    if not keep.any():
        return np.zeros(n_persons)
    basis = (vectors[:, keep] / np.sqrt(eigenvalues[keep])) * scale[:, None]
    hat = np.empty(n)
    for start in range(0, n, _CHUNK):
        block = exog[start : start + _CHUNK] @ basis
        hat[start : start + _CHUNK] = np.einsum("ij,ij->i", block, block)
    return np.bincount(codes, weights=hat, minlength=n_persons)


def _number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value
