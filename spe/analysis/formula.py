"""Model formulas that are safe to refit on the server, and the columns they use.

patsy evaluates each term of a formula as Python, so a formula from a workspace could run any
code where it is refitted. Only column names, numbers, arithmetic and a short list of functions
(C, I, Q, center, standardize, scale, contrasts, np.log and friends) are accepted.
"""

from __future__ import annotations

import ast
from collections.abc import Collection

from spe.analysis.errors import AnalysisError

PATSY_FUNCTIONS = frozenset(
    {"C", "I", "Q", "center", "standardize", "scale", "Treatment", "Sum", "Poly", "Diff", "Helmert"}
)
NUMPY_FUNCTIONS = frozenset(
    {"log", "log1p", "log2", "log10", "exp", "expm1", "sqrt", "abs", "square", "floor", "ceil"}
)
_BIN_OPS = (
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.BitAnd,
    ast.BitOr,
)
_COMPARE_OPS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
_MAX_FORMULA = 2000
_MAX_CONSTANT = 1e12


def _refuse(formula: str, why: str) -> AnalysisError:
    return AnalysisError(f"The formula {formula!r} cannot be used: {why}.")


class _Checker:
    def __init__(self, formula: str, columns: Collection[str]) -> None:
        self.formula = formula
        self.columns = columns
        self.used: list[str] = []

    def column(self, name: str) -> None:
        if name not in self.columns:
            known = ", ".join(sorted(self.columns)) or "none"
            raise _refuse(self.formula, f"{name!r} is not a column of the data (columns: {known})")
        if name not in self.used:
            self.used.append(name)

    def visit(self, node: ast.AST, *, text_ok: bool = False) -> None:
        f = self.formula
        if isinstance(node, ast.Expression):
            self.visit(node.body)
        elif isinstance(node, ast.Name):
            if node.id in PATSY_FUNCTIONS or node.id == "np":
                raise _refuse(f, f"{node.id} is a function and must be called")
            self.column(node.id)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                if not text_ok:
                    raise _refuse(f, "text is allowed only as an argument of C, Q or a contrast")
            elif isinstance(node.value, bool) or node.value is None:
                pass
            elif isinstance(node.value, int | float):
                if abs(node.value) > _MAX_CONSTANT:
                    raise _refuse(f, f"the number {node.value} is too large")
            else:
                raise _refuse(f, f"{node.value!r} is not a number")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
            self.visit(node.operand)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, _BIN_OPS):
            if isinstance(node.op, ast.Pow):
                # A constant exponent keeps 10 ** 10 ** 10 (a CPU bomb) out.
                power = node.right
                if isinstance(power, ast.UnaryOp) and isinstance(power.op, ast.USub):
                    power = power.operand
                if not (
                    isinstance(power, ast.Constant)
                    and isinstance(power.value, int | float)
                    and abs(power.value) <= 10
                ):
                    raise _refuse(f, "an exponent must be a number from -10 to 10")
                if isinstance(node.left, ast.Constant):
                    raise _refuse(f, "raise a column, not a number, to a power")
            self.visit(node.left)
            self.visit(node.right)
        elif isinstance(node, ast.Compare) and all(isinstance(o, _COMPARE_OPS) for o in node.ops):
            self.visit(node.left)
            for item in node.comparators:
                self.visit(item)
        elif isinstance(node, ast.BoolOp):
            for item in node.values:
                self.visit(item)
        elif isinstance(node, ast.List | ast.Tuple):
            for item in node.elts:
                self.visit(item, text_ok=text_ok)
        elif isinstance(node, ast.Call):
            self.call(node)
        else:
            raise _refuse(f, f"{type(node).__name__} expressions are not allowed")

    def call(self, node: ast.Call) -> None:
        f = self.formula
        func = node.func
        if isinstance(func, ast.Attribute):
            if not (
                isinstance(func.value, ast.Name)
                and func.value.id == "np"
                and func.attr in NUMPY_FUNCTIONS
            ):
                raise _refuse(
                    f,
                    "only these numpy functions are allowed: "
                    + ", ".join(f"np.{n}" for n in sorted(NUMPY_FUNCTIONS)),
                )
            name = "np." + func.attr
        elif isinstance(func, ast.Name) and func.id in PATSY_FUNCTIONS:
            name = func.id
        else:
            shown = func.id if isinstance(func, ast.Name) else type(func).__name__
            raise _refuse(
                f,
                f"{shown} is not an allowed function (allowed: "
                + ", ".join(sorted(PATSY_FUNCTIONS))
                + ", np.log and the like)",
            )
        if name == "Q":
            if (
                len(node.args) != 1
                or node.keywords
                or not isinstance(node.args[0], ast.Constant)
                or not isinstance(node.args[0].value, str)
            ):
                raise _refuse(f, 'Q takes one column name in quotes, like Q("my column")')
            self.column(node.args[0].value)
            return
        text_ok = name in ("C", "Treatment", "Sum", "Poly", "Diff", "Helmert")
        for i, arg in enumerate(node.args):
            # C's first argument is the column; later ones may name levels or a contrast.
            self.visit(arg, text_ok=text_ok and (name != "C" or i > 0))
        for keyword in node.keywords:
            if keyword.arg is None:
                raise _refuse(f, "** arguments are not allowed")
            self.visit(keyword.value, text_ok=text_ok)


def formula_columns(formula: str, columns: Collection[str]) -> list[str]:
    """The columns ``formula`` uses, in order; refuses anything but the safe grammar.

    ``columns`` are the names the formula may use (the data's columns, without the person
    column). The formula is parsed, never evaluated.
    """
    if not isinstance(formula, str) or not formula.strip():
        raise AnalysisError("Give a model formula such as 'income ~ age + C(region)'.")
    if len(formula) > _MAX_FORMULA:
        raise _refuse(formula[:40] + "...", f"it is longer than {_MAX_FORMULA} characters")
    if "~" not in formula:
        raise _refuse(formula, "it needs an outcome, '~' and predictors, like 'y ~ x'")
    from patsy import ModelDesc, PatsyError

    try:
        desc = ModelDesc.from_formula(formula)
    except PatsyError as exc:
        raise _refuse(formula, str(exc).splitlines()[0]) from None
    if not desc.lhs_termlist:
        raise _refuse(formula, "it has no outcome before '~'")
    checker = _Checker(formula, columns)
    for term in [*desc.lhs_termlist, *desc.rhs_termlist]:
        for factor in term.factors:
            code = getattr(factor, "code", None)
            if not isinstance(code, str):
                raise _refuse(formula, f"the term {factor!r} is not understood")
            try:
                tree = ast.parse(code, mode="eval")
            except SyntaxError:
                raise _refuse(formula, f"{code!r} is not an expression") from None
            checker.visit(tree)
    if not checker.used:
        raise _refuse(formula, "it uses no column of the data")
    return checker.used
