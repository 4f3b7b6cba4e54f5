"""What every analysis helper returns: the pandas result with its disclosure verdict attached.

An ``Output`` behaves like its table (attribute access falls through to the DataFrame) and shows
in a notebook whether it would pass the export review, which cells fail and why, and how to get
a safe version.
"""

from __future__ import annotations

import dataclasses
import html
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spe.analysis.csvtable import table_csv
from spe.analysis.errors import AnalysisError
from spe.analysis.outputs import Computed, compute
from spe.analysis.recording import outbox_dir, write_output
from spe.analysis.sidecar import CSV_SUFFIX, SIDECAR_SUFFIX
from spe.sdc import Verdict
from spe.sdc.differencing import describe_label

_COLOURS = {Verdict.PASS: "#1a7f37", Verdict.REVIEW: "#9a6700", Verdict.FAIL: "#cf222e"}
_SHOWN_FAILING = 20


class Output:
    """A result (``table``), its advisory disclosure ``report`` and ``status``, and its record.

    The verdict is the workspace's: the export review recomputes it from the recorded evidence
    with the platform's rules, which may be stricter.
    """

    def __init__(
        self,
        computed: Computed,
        evidence: Any,
        datasets: list[str],
        notes: list[str],
        withheld: np.ndarray | None = None,
    ) -> None:
        self._computed = computed
        self._evidence = evidence  # a pyarrow Table: what the replay will recompute from
        self.datasets = datasets
        self._notes = notes
        self._withheld = withheld
        self.name: str | None = None
        self.path: Path | None = None  # the recorded CSV, once recorded

    # -- the result ------------------------------------------------------------------------
    @property
    def command(self) -> str:
        return self._computed.command

    @property
    def kind(self) -> str:
        return self._computed.kind

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self._computed.spec)

    @cached_property
    def table(self) -> pd.DataFrame:
        """The result as it will be exported (cells left out are NaN)."""
        table = self._computed.table.copy()
        if self._withheld is not None and self._withheld.any():
            values = table.to_numpy(dtype=object, copy=True)
            values[self._withheld] = np.nan
            table = pd.DataFrame(values, index=table.index, columns=table.columns).infer_objects()
        return table

    @property
    def status(self) -> Verdict:
        return self._computed.status(self._withheld)

    @property
    def passed(self) -> bool:
        return self.status == Verdict.PASS

    @property
    def reasons(self) -> list[str]:
        """Why the output does not pass: one sentence per failing cell (the first few)."""
        return self._computed.reasons(self._withheld)

    @property
    def notes(self) -> list[str]:
        return [*self._notes, *self._computed._notes()]

    @cached_property
    def report(self) -> dict[str, Any]:
        """The disclosure report: per cell labels, value, persons, every rule with its numbers."""
        report = self._computed.report(self._withheld, evidence=True)
        report["notes"] = list(dict.fromkeys([*self._notes, *report.get("notes", [])]))
        report["advisory"] = (
            "Checked in the workspace with its rules; the export review checks again with the "
            "platform's rules."
        )
        return report

    @property
    def failing(self) -> pd.DataFrame:
        """One row per failing (or review) rule of a published cell: where, value, why."""
        rows = []
        if self._computed.model is not None:
            for outcome in self._computed.model.failing:
                rows.append(
                    ("model", None, None, outcome.rule, outcome.verdict.value, outcome.sentence)
                )
        else:
            for cell in self.report.get("cells", []):
                if not cell.get("published", True):
                    continue
                names = [*cell.get("index_names", []), *cell.get("column_names", [])]
                values = [*cell.get("index", []), *cell.get("columns", [])]
                where = describe_label(tuple(zip(names, values, strict=False)))
                for outcome in cell.get("failing", []):
                    rows.append(
                        (
                            where,
                            cell.get("value"),
                            cell.get("persons"),
                            outcome["rule"],
                            outcome["verdict"],
                            outcome["sentence"],
                        )
                    )
            for outcome in self._computed.table_outcomes:
                if outcome.verdict != Verdict.PASS:
                    rows.append(
                        ("table", None, None, outcome.rule, outcome.verdict.value, outcome.sentence)
                    )
        return pd.DataFrame(rows, columns=["cell", "value", "persons", "rule", "verdict", "reason"])

    # -- safe version and recording ---------------------------------------------------------
    def safe(
        self, method: str = "suppress", *, record: bool | None = None, name: str | None = None
    ) -> Output:
        """A version that passes: failing cells suppressed (with protecting cells) or rounded.

        Recorded (as ``<name>-safe``) when this output was recorded, unless ``record`` says
        otherwise. An output that passes is returned as it is.
        """
        computed = self._computed
        if computed.kind != "table":
            what = "a model" if computed.kind == "model" else "a life table"
            fix = (
                "use more data or fewer parameters"
                if computed.kind == "model"
                else "choose wider intervals (intervals=[...]) so that each has enough persons"
            )
            raise AnalysisError(f"There is no automatic safe version of {what}: {fix}.")
        if self.status == Verdict.PASS:
            return self
        spec = {**computed.spec, "safe": method}
        if computed.command == "describe":
            if method != "suppress":
                raise AnalysisError("describe has only the 'suppress' safe version.")
            # No totals are published, so leaving out every failing statistic is enough.
            withheld = computed.severity >= Verdict.FAIL.severity
            safe_computed = dataclasses.replace(computed, spec=spec)
            out = Output(safe_computed, self._evidence, self.datasets, self._notes, withheld)
        else:
            evidence = self._evidence.to_pandas()
            safe_computed = compute(computed.command, evidence, spec, computed.rules)
            out = Output(safe_computed, self._evidence, self.datasets, self._notes)
        if record is None:
            record = self.path is not None
        if record:
            out.record(name or (f"{self.name}-safe" if self.name else None))
        return out

    def record(self, name: str | None = None) -> Output:
        """Write the output to the outbox (CSV, evidence, sidecar) as ``name``; returns self."""
        from spe.analysis.recording import default_name

        chosen = name if name is not None else self.name or default_name(self.command)
        write_output(
            chosen,
            kind=self.kind,
            command=self.command,
            csv_text=self.to_spe_csv(),
            evidence=self._evidence,
            spec=self._computed.spec,
            datasets=self.datasets,
            report=self.report,
        )
        self.name = chosen
        self.path = outbox_dir() / (chosen + CSV_SUFFIX)
        return self

    def to_spe_csv(self) -> str:
        """The exported CSV text (SPE table CSV v1, see spe.analysis.csvtable)."""
        return table_csv(self.table)

    @property
    def sidecar_path(self) -> Path | None:
        if self.path is None or self.name is None:
            return None
        return self.path.with_name(self.name + SIDECAR_SUFFIX)

    def plot(self, **kwargs: Any) -> Any:
        """Draw the table with matplotlib (bars for a histogram), when it is installed."""
        try:
            import matplotlib.pyplot as plt  # noqa: F401 - only to know it is there
        except ImportError:
            raise AnalysisError(
                "matplotlib is not installed in this workspace; the numbers are in .table."
            ) from None
        table = self.table
        if self.command == "hist":
            return table.plot.bar(**kwargs)
        return table.plot(**kwargs)

    # -- behaving like the table ------------------------------------------------------------
    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self.table, attribute)

    def __getitem__(self, key: Any) -> Any:
        return self.table[key]

    def __len__(self) -> int:
        return len(self.table)

    def __iter__(self) -> Any:
        return iter(self.table)

    # -- showing it -------------------------------------------------------------------------
    def _headline(self) -> str:
        status = self.status
        where = f" {self.name!r}" if self.name else ""
        text = f"{self.command}{where}: {status.value.upper()}"
        safe = self._computed.safe
        if safe is not None:
            if safe.method == "round":
                text += " (safe version: counts rounded to multiples of 5)"
            else:
                text += f" (safe version: {int(safe.suppressed.sum())} cells suppressed)"
        elif self._computed.model is None:
            summary = self.report.get("summary", {})
            cells = summary.get("cells", 0)
            bad = summary.get("fail", 0) + summary.get("review", 0)
            if bad:
                text += f" ({bad} of {cells} cells fail or need review)"
            if summary.get("withheld"):
                text += f" ({summary['withheld']} cells left out)"
        return text + " - advisory; the export review checks again"

    def _hint(self) -> str | None:
        if self.status == Verdict.PASS or self.kind != "table":
            return None
        if self._computed.safe is not None or self._computed.spec.get("safe"):
            return None
        return "A safe version: out.safe() (suppression) or out.safe('round') for counts."

    def __repr__(self) -> str:
        lines = [self._headline()]
        for reason in self.reasons[:_SHOWN_FAILING]:
            lines.append(f"  - {reason}")
        hint = self._hint()
        if hint:
            lines.append(f"  {hint}")
        if self.path is not None:
            lines.append(f"  recorded as {self.path}")
        lines.append("")
        lines.append(repr(self.table))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        status = self.status
        colour = _COLOURS[status]
        parts = [
            f'<div><p><span style="background:{colour};color:#fff;padding:2px 8px;'
            f'border-radius:4px;font-weight:bold">{html.escape(status.value.upper())}</span> '
            f"{html.escape(self._headline())}</p>"
        ]
        failing = self.failing
        if len(failing):
            parts.append("<table><tr><th>cell</th><th>value</th><th>persons</th><th>rule</th>")
            parts.append("<th>why</th></tr>")
            for row in failing.head(_SHOWN_FAILING).itertuples(index=False):
                parts.append(
                    "<tr>"
                    + "".join(
                        f"<td>{html.escape('' if v is None else str(v))}</td>"
                        for v in (row.cell, row.value, row.persons, row.rule, row.reason)
                    )
                    + "</tr>"
                )
            parts.append("</table>")
            if len(failing) > _SHOWN_FAILING:
                parts.append(f"<p>... and {len(failing) - _SHOWN_FAILING} more (see .failing)</p>")
        hint = self._hint()
        if hint:
            parts.append(f"<p>{html.escape(hint)}</p>")
        for note in self.notes:
            parts.append(f"<p><small>{html.escape(note)}</small></p>")
        if self.path is not None:
            parts.append(f"<p><small>recorded as {html.escape(str(self.path))}</small></p>")
        parts.append(self.table.to_html())
        parts.append("</div>")
        return "".join(parts)
