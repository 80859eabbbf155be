"""The run's figures as rich tables (one per scenario), and as JSON (the same figures)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.results import SCENARIOS, Results, Row

__all__ = ["markdown", "print_report", "tables", "write_json"]

COLUMNS = (
    ("transport", "left"),
    ("figure", "left"),
    ("ours", "right"),
    ("raw redis-py / asyncpg", "right"),
    ("ours/raw", "right"),
    ("Dramatiq", "right"),
    ("ours/Dramatiq", "right"),
    ("target", "left"),
    ("met", "center"),
)


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f}"
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _met(row: Row) -> str:
    if row.met is None:
        return ""
    return "[green]yes[/green]" if row.met else "[red]no[/red]"


def _figure(row: Row) -> str:
    return row.figure if row.unit == "x" else f"{row.figure} ({row.unit})"


def tables(results: Results) -> list[Table]:
    """One table per scenario: ours, the baselines and the ratios, target and verdict."""
    out = []
    for key, title in SCENARIOS.items():
        rows = [r for r in results.rows if r.scenario == key]
        if not rows:
            continue
        table = Table(title=title, title_justify="left", header_style="bold")
        for name, justify in COLUMNS:
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for row in rows:
            table.add_row(
                row.transport,
                _figure(row),
                _num(row.ours, row.unit),
                _num(row.raw, row.unit),
                _ratio(row.ratio_raw),
                _num(row.dramatiq, row.unit),
                _ratio(row.ratio_dramatiq),
                row.target,
                _met(row),
            )
        out.append(table)
    return out


def print_report(results: Results, console: Console) -> None:
    """The tables, then a one-line summary of the targets."""
    config = results.meta.get("config", {})
    payload = results.meta.get("payload", {})
    console.print(
        f"\nN = {config.get('events', '?'):,} events of {payload.get('envelope_bytes', '?')}"
        f" bytes (data {payload.get('data_bytes', '?')} bytes); throughput is the best of "
        f"{config.get('repeat', '?')} interleaved runs; ratios are ours / baseline.",
        highlight=False,
    )
    for table in tables(results):
        console.print(table)
    summary = results.as_dict()["targets"]
    missed = [f"{r.scenario} {r.transport}: {r.figure}" for r in results.rows if r.met is False]
    console.print(f"targets met: {summary['met']} of {summary['total']}", highlight=False)
    for line in missed:
        console.print(f"  not met: {line}", highlight=False)


def markdown(results: Results) -> str:
    """The same tables in Markdown, for docs/performance.md."""
    lines: list[str] = []
    header = [name for name, _ in COLUMNS]
    for key, title in SCENARIOS.items():
        rows = [r for r in results.rows if r.scenario == key]
        if not rows:
            continue
        lines += [f"**{title}**", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join("---:" if j == "right" else "---" for _, j in COLUMNS) + "|")
        for row in rows:
            met = "" if row.met is None else ("yes" if row.met else "**no**")
            cells = [
                row.transport,
                _figure(row),
                _num(row.ours, row.unit),
                _num(row.raw, row.unit),
                _ratio(row.ratio_raw),
                _num(row.dramatiq, row.unit),
                _ratio(row.ratio_dramatiq),
                row.target.replace("|", "\\|"),
                met,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_json(results: Results, path: Path) -> None:
    """Write the run's figures to ``path``."""
    path.write_text(json.dumps(results.as_dict(), indent=2, ensure_ascii=False) + "\n")
