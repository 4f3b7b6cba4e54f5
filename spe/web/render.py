"""A checked table as HTML: every cell with its verdict, failing cells marked and linked to
their rule and numbers. Built in Python rather than in a template loop because a 50 x 50 table
is 2,500 cells, and the review page must render in well under 300 ms.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from markupsafe import Markup, escape

# Past this many failing cells the list of reasons is cut; the marks stay on every cell and
# the counts per rule are complete.
MAX_EXPLAINED = 200


def number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{value:,.0f}"
        return f"{value:,.4g}"
    return str(value)


def _numbers(values: dict[str, Any]) -> str:
    return "; ".join(f"{k.replace('_', ' ')} {number(v)}" for k, v in values.items())


def checked_table(report: dict[str, Any], key: str, caption: str) -> dict[str, Any] | None:
    """The table of a report (``shape`` and row-major ``cells``), or None if it has none.

    Returns the table's HTML, the explained failing cells (at most MAX_EXPLAINED, as rows
    of HTML) with how many were left out, and the failing cells counted per rule.
    """
    cells = report.get("cells")
    shape = report.get("shape")
    if not cells or not shape or len(shape) != 2:
        return None
    n_rows, n_cols = int(shape[0]), int(shape[1])
    if n_rows * n_cols != len(cells):
        return None
    first = cells[0]
    index_names = [escape(str(n)) for n in first.get("index_names", [])]
    head = "".join(f'<th scope="col">{n}</th>' for n in index_names) + "".join(
        f'<th scope="col">{escape(" / ".join(str(v) for v in cells[c].get("columns", [])))}</th>'
        for c in range(n_cols)
    )
    body: list[str] = []
    explained: list[str] = []
    left_out = 0
    by_rule: Counter[str] = Counter()
    for r in range(n_rows):
        row = cells[r * n_cols : (r + 1) * n_cols]
        labels = [escape(str(v)) for v in row[0].get("index", [])]
        parts = ["<tr>", *(f'<th scope="row">{label}</th>' for label in labels)]
        for c, cell in enumerate(row):
            status = escape(cell.get("status", "pass"))
            published = cell.get("published", True)
            failing = cell.get("failing") or []
            classes = f"cell c-{status}" + ("" if published else " withheld")
            shown = escape(number(cell.get("value"))) if published else "suppressed"
            if failing and published:
                for outcome in failing:
                    by_rule[str(outcome.get("rule"))] += 1
                if len(explained) < MAX_EXPLAINED:
                    anchor = f"why-{key}-r{r}c{c}"
                    where = escape(" / ".join(str(v) for v in cell.get("index", [])))
                    where += " × " + escape(" / ".join(str(v) for v in cell.get("columns", [])))
                    for i, outcome in enumerate(failing):
                        explained.append(
                            f"<tr{f' id={anchor!r}' if i == 0 else ''}><td>{where}</td>"
                            f'<td><span class="status s-{escape(outcome.get("verdict", ""))}">'
                            f"{escape(outcome.get('verdict', ''))}</span></td>"
                            f"<td>{escape(str(outcome.get('rule', '')).replace('_', ' '))}</td>"
                            f"<td>{escape(_numbers(outcome.get('numbers') or {}))}</td>"
                            f"<td>{escape(outcome.get('sentence', ''))}</td></tr>"
                        )
                    mark = "✕" if status == "fail" else "?"
                    parts.append(
                        f'<td class="{classes}" aria-describedby="{anchor}">{shown}'
                        f'<span class="mark" aria-hidden="true">{mark}</span></td>'
                    )
                    continue
                left_out += 1
                mark = "✕" if status == "fail" else "?"
                parts.append(
                    f'<td class="{classes}">{shown}<span class="mark" aria-hidden="true">'
                    f"{mark}</span></td>"
                )
                continue
            parts.append(f'<td class="{classes}">{shown}</td>')
        parts.append("</tr>")
        body.append("".join(parts))
    table = (
        f'<table class="checked"><caption>{escape(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
    return {
        "html": Markup(table),  # noqa: S704 - every value above is escaped
        "explained": Markup("".join(explained)),  # noqa: S704 - escaped above
        "left_out": left_out,
        "by_rule": sorted(by_rule.items(), key=lambda kv: -kv[1]),
    }
