"""The planner's accuracy budget: what 'accurate enough' means and how a measurement is judged.

Why a module of its own: the search (edgepipe/accuracy/precision.py) and the backends' early
reject (a partly run evaluation judged by its best case, `Budget.cannot_hold`) share it.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepipe.accuracy.sensitivity import resolve_metric
from edgepipe.errors import UserError

STOP_SLACK = 1e-9  # Budget.cannot_hold: margin over float rounding, far below one sample's weight


@dataclass(frozen=True)
class Budget:
    """What 'accurate enough' means: a maximum drop of `metric`, or a minimum output SQNR."""

    metric: str  # "top1" | "agreement" | "sequence" | "sqnr"
    limit: float  # max drop (top1/agreement/sequence) or min dB (sqnr)

    @classmethod
    def parse(cls, budget, metric: str, has_labels: bool) -> "Budget":
        if isinstance(budget, dict):
            if set(budget) == {"min_sqnr_db"}:
                return cls("sqnr", float(budget["min_sqnr_db"]))
            if set(budget) == {"max_sequence_drop"}:
                budget, metric = budget["max_sequence_drop"], "sequence"
            elif set(budget) == {"max_drop"}:
                budget = budget["max_drop"]
            else:
                raise UserError(f"precision budget {budget!r}: use a number (max accuracy drop), "
                                "{'max_drop': 0.01}, {'max_sequence_drop': 0.01} or {'min_sqnr_db': 30}")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
            raise UserError(f"precision budget {budget!r}: must be a non-negative accuracy drop such as 0.01")
        chosen = resolve_metric(metric, has_labels)
        if chosen == "sqnr":
            raise UserError("precision budget: metric 'sqnr' needs {'min_sqnr_db': N}, not a drop")
        return cls(chosen, float(budget))

    def measure(self, metrics: dict) -> float:
        """The budgeted quantity from a metrics dict (drop, or SQNR in dB)."""
        if self.metric == "sqnr":
            value = metrics.get("sqnr_db")
            return float("inf") if value is None else float(value)
        if self.metric == "top1":
            return float(metrics["fp32_top1"]) - float(metrics["top1"])
        if self.metric == "sequence":
            if metrics.get("sequence_agreement") is None:
                raise UserError("precision budget max_sequence_drop needs a [N, T, C] sequence output (a CTC head); "
                                "use a number (argmax agreement) for this model")
            return 1.0 - float(metrics["sequence_agreement"])
        return 1.0 - float(metrics["argmax_agreement"])

    def holds(self, metrics: dict) -> bool:
        value = self.measure(metrics)
        return value >= self.limit if self.metric == "sqnr" else value <= self.limit + 1e-12

    def cannot_hold(self, optimistic: dict) -> bool:
        """Early reject for a partly run evaluation: `optimistic` are the metrics if every sample
        not yet run agreed with FP32 exactly (an upper bound on the final ones), so failing even
        those means the full run fails too. STOP_SLACK keeps the answer exact under rounding
        (the bound and the full mean add the same terms in another order). An SQNR budget has no
        such bound: never."""
        if self.metric == "sqnr":
            return False
        return self.measure(optimistic) > self.limit + 1e-12 + STOP_SLACK

    def describe(self) -> str:
        if self.metric == "sqnr":
            return f"output SQNR >= {self.limit:g} dB"
        name = {"top1": "top-1", "sequence": "CTC-reading-agreement"}.get(self.metric, "argmax-agreement")
        return f"{name} drop <= {self.limit:g}"
