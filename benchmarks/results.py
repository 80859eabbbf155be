"""The figures of one run: rows of the table and of the JSON, with ratios and targets."""

from __future__ import annotations

from dataclasses import KW_ONLY, asdict, dataclass, field
from typing import Any

__all__ = ["SCENARIOS", "Results", "Row", "percentile"]

SCENARIOS: dict[str, str] = {
    "publish": "1. publish, one event per call",
    "publish_many": "1. publish_many, 100 events per call",
    "drain": "2. drain, one consumer, no-op handler (raw: the leased worker)",
    "hooks": "2. drain with one plugin of no-op lifecycle hooks",
    "ordered": "2. drain of an ordered group, events spread over 100 keys",
    "latency": "3. end-to-end latency, idle consumer",
    "fanout": "4. fan-out, 1 vs 10 groups",
    "memory": "5. memory, pending and after drain",
    "cluster": "6. Redis Cluster, 3 masters: a topic of 12 partitions; routing vs one node",
}
"""Every scenario the run reports, by key, with its title."""


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


@dataclass
class Row:
    """One figure: ours on one transport, with the baselines' figure where one applies.

    ``ratio_raw`` and ``ratio_dramatiq`` are ours divided by the baseline's figure; for
    rates higher is better, for latencies and bytes lower is better (``higher_is_better``).
    ``met`` is None where the issue sets no target for the figure.
    """

    scenario: str
    transport: str
    figure: str
    unit: str
    ours: float | None
    higher_is_better: bool = True
    target: str = ""
    _: KW_ONLY
    raw: float | None = None
    dramatiq: float | None = None
    met: bool | None = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)
    """Every run behind a best-of figure, by contender (ours, raw, dramatiq)."""
    headline: str = ""
    """The row's line in the headline table of issue 11 (empty: not one of them)."""

    @property
    def ratio_raw(self) -> float | None:
        """Ours / raw redis-py."""
        return _ratio(self.ours, self.raw)

    @property
    def ratio_dramatiq(self) -> float | None:
        """Ours / Dramatiq."""
        return _ratio(self.ours, self.dramatiq)

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data, ratios included."""
        data = asdict(self)
        data["ratio_raw"] = self.ratio_raw
        data["ratio_dramatiq"] = self.ratio_dramatiq
        return data


def _ratio(ours: float | None, base: float | None) -> float | None:
    if ours is None or base is None or base == 0:
        return None
    return ours / base


@dataclass
class Results:
    """Every row of a run, and what the run was (machine, versions, options)."""

    meta: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        """Append ``row`` and return it."""
        self.rows.append(row)
        return row

    def headline(self) -> list[dict[str, Any]]:
        """The figures of issue 11's table, each with its baselines and ratios."""
        return [
            {
                "figure": r.headline,
                "ours": r.ours,
                "raw": r.raw,
                "ratio_raw": r.ratio_raw,
                "dramatiq": r.dramatiq,
                "ratio_dramatiq": r.ratio_dramatiq,
                "target": r.target,
                "met": r.met,
            }
            for r in self.rows
            if r.headline
        ]

    def as_dict(self) -> dict[str, Any]:
        """The whole run as JSON-ready data."""
        targets = [r for r in self.rows if r.met is not None]
        return {
            "meta": self.meta,
            "scenarios": SCENARIOS,
            "headline": self.headline(),
            "rows": [r.as_dict() for r in self.rows],
            "targets": {
                "met": sum(1 for r in targets if r.met),
                "total": len(targets),
            },
        }
