"""From the pool benchmark's records to its tables: medians, ratios, goals, Markdown.

``aggregate`` folds the repeated runs of each cell into a median and a
min–max spread; ``summarize`` computes, per row and pipework variant, the
ratios the issue asks for (pipework / best peer, pipework / floor) and
whether the goal is met; ``render`` writes both as Markdown. The JSON output
carries the same ``summary`` the Markdown is rendered from.
"""

# ruff: noqa: RUF001, RUF002  (the tables' multiplication sign and en dash)

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from pipework.benchmarks.common import JSONDict, fmt, machine_line
from pipework.benchmarks.pool_plan import ROWS, START_METHODS, TRANSPORTS, Cell, Counts
from pipework.benchmarks.pool_subjects import PEERS

__all__ = ["NUMBER_FORMAT", "aggregate", "label", "render", "summarize", "variant_label"]

NUMBER_FORMAT = {
    "submit": ",.0f",
    "map": ",.0f",
    "latency": ",.1f",
    "echo": ",.0f",
    "memory": ",.2f",
    "construct": ",.1f",
    "cpu": ".3f",
}
"""How each row's values are printed."""
RATIO_FORMAT = ".2f"

_NAMES = {
    "cf": "ProcessPoolExecutor",
    "mp": "multiprocessing.Pool",
    "loky": "loky",
    "pebble": "pebble",
    "mpire": "mpire",
    "pipework": "pipework (default transport)",
}
_FLOORS = {
    ("submit", "floor:pipe"): "floor: bare Pipe, window 64",
    ("submit", "floor:zmq"): "floor: ZeroMQ PUSH/PULL ipc://, window 64",
    ("latency", "floor:pipe"): "floor: bare Pipe ping-pong",
    ("latency", "floor:pipe+reader"): "floor: bare Pipe, reply read by a second thread",
    ("echo", "floor:zmq"): "floor: ZeroMQ ipc:// copy=False",
    ("echo", "floor:shm"): "floor: shared memory, reused",
    ("echo", "floor:pipe"): "floor: Pipe.send_bytes",
    ("memory", "floor:slots"): "floor: __slots__ handle",
    ("construct", "floor:process"): "floor: Process + Pipe",
    ("cpu", "floor:split"): "floor: static split",
}


def label(row: str, subject: str) -> str:
    """A subject's name in the tables."""
    if subject.startswith("pipework:"):
        return f"pipework ({subject.split(':')[1]})"
    return _FLOORS.get((row, subject)) or _NAMES.get(subject, subject)


def variant_label(cell: Cell, counts: Counts) -> str:
    """A variant's name in the tables ("" if the cell has none)."""
    if cell.row == "map":
        return (
            "library default" if cell.variant == "default" else f"chunksize={counts.map_chunksize}"
        )
    if cell.row == "memory" and cell.variant == "hold":
        return f"max_pending ≥ {counts.pending:,}, handles kept"
    if cell.row == "memory" and cell.variant == "backpressure":
        return f"max_pending={counts.backpressure:,}, handles dropped"
    return cell.variant


def aggregate(plan: Sequence[Cell], records: Sequence[JSONDict]) -> dict[str, JSONDict]:
    """Each cell's runs folded into one entry: median, min, max of the ok ones, and status."""
    by_cell: dict[str, list[JSONDict]] = {cell.id: [] for cell in plan}
    for record in records:
        by_cell.setdefault(record["cell"], []).append(record)
    out: dict[str, JSONDict] = {}
    for cell in plan:
        runs = by_cell[cell.id]
        ok = [r for r in runs if r["status"] == "ok"]
        failed = [r for r in runs if r["status"] != "ok"]
        values = sorted(float(r["value"]) for r in ok)
        entry: JSONDict = {
            "cell": cell.id,
            "row": cell.row,
            "subject": cell.subject,
            "variant": cell.variant,
            "status": "ok" if ok else (failed[0]["status"] if failed else "missing"),
            "error": failed[0].get("error") if failed else None,
            "runs": len(runs),
            "ok_runs": len(ok),
            "start_method": next((r["start_method"] for r in runs), "?"),
            "median": statistics.median(values) if values else None,
            "min": values[0] if values else None,
            "max": values[-1] if values else None,
        }
        if cell.row == "latency" and ok:
            entry["p99_median"] = statistics.median(r["extra"]["p99_us"] for r in ok)
        if cell.variant == "backpressure" and ok:
            entry["flat"] = all(r["extra"]["flat"] for r in ok)
            entry["second_half_mib_median"] = statistics.median(
                r["extra"]["second_half_mib"] for r in ok
            )
        out[cell.id] = entry
    return out


def _value(cells: Mapping[str, JSONDict], cell_id: str) -> float | None:
    entry = cells.get(cell_id)
    return None if entry is None else entry["median"]


def _best(cells: Mapping[str, JSONDict], row: str, variant: str) -> tuple[str | None, float | None]:
    """The best peer's name and median in ``row`` (``variant``), by the row's direction."""
    measured = [(p, v) for p in PEERS if (v := _value(cells, Cell(row, p, variant).id)) is not None]
    if not measured:
        return None, None
    pick = max if ROWS[row].higher_is_better else min
    return pick(measured, key=lambda pv: pv[1])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(cells: Mapping[str, JSONDict], counts: Counts) -> list[JSONDict]:
    """The goal table: per row and pipework variant, the ratios and whether the goal is met."""
    lines: list[JSONDict] = []

    def add(
        row: str,
        what: str,
        pipework: str,
        peer: tuple[str | None, float | None],
        floor: str | None,
        met: Any,
        note: str = "",
    ) -> None:
        value = _value(cells, pipework)
        floor_value = None if floor is None else _value(cells, floor)
        entry = cells[pipework]
        lines.append(
            {
                "row": row,
                "what": what,
                "pipework": pipework,
                "status": entry["status"],
                "value": value,
                "min": entry["min"],
                "max": entry["max"],
                "unit": ROWS[row].unit,
                "best_peer": peer[0],
                "best_peer_value": peer[1],
                "ratio_to_peer": _ratio(value, peer[1]),
                "floor": floor,
                "floor_value": floor_value,
                "ratio_to_floor": _ratio(value, floor_value),
                "goal": ROWS[row].goal,
                "met": None if value is None else met(value, peer[1], floor_value),
                "note": note,
            }
        )

    for t in TRANSPORTS:
        add(
            "submit",
            f"pipework ({t})",
            f"submit/pipework:{t}/",
            _best(cells, "submit", ""),
            "submit/floor:pipe/",
            lambda v, p, f: p is not None and v >= 2 * p,
        )
    for variant in ("chunksize", "default"):
        for t in TRANSPORTS:
            add(
                "map",
                f"pipework ({t}), {variant_label(Cell('map', '', variant), counts)}",
                f"map/pipework:{t}/{variant}",
                _best(cells, "map", variant),
                None,
                lambda v, p, f: p is not None and v >= p,
            )
    for t in TRANSPORTS:
        p99 = cells[f"latency/pipework:{t}/"].get("p99_median")

        def latency_met(v: float, p: float | None, f: float | None, p99: Any = p99) -> bool:
            return f is not None and p99 is not None and v <= 2 * f and p99 <= 3 * v

        p50 = _value(cells, f"latency/pipework:{t}/")
        note = "" if p99 is None or not p50 else f"p99 {p99:,.1f} µs = {p99 / p50:.1f}× p50"
        reader = _value(cells, "latency/floor:pipe+reader/")
        if p50 and reader:
            note += f"; {p50 / reader:.2f}× the Pipe floor with a reader thread"
        add(
            "latency",
            f"pipework ({t})",
            f"latency/pipework:{t}/",
            _best(cells, "latency", ""),
            "latency/floor:pipe/",
            latency_met,
            note,
        )
    for t in TRANSPORTS:
        add(
            "echo",
            f"pipework ({t})",
            f"echo/pipework:{t}/",
            _best(cells, "echo", ""),
            "echo/floor:zmq/",
            lambda v, p, f: f is not None and v >= 0.8 * f,
        )
    add(
        "memory",
        f"pipework, {variant_label(Cell('memory', '', 'hold'), counts)}",
        "memory/pipework/hold",
        _best(cells, "memory", ""),
        "memory/floor:slots/",
        lambda v, p, f: v <= 0.5,
    )
    bp = cells["memory/pipework/backpressure"]
    flat = bp.get("flat")
    add(
        "memory",
        f"pipework, {variant_label(Cell('memory', '', 'backpressure'), counts)}",
        "memory/pipework/backpressure",
        (None, None),
        None,
        lambda v, p, f: flat,
        ""
        if flat is None
        else f"RSS over the second half of the submits: {bp['second_half_mib_median']:+.1f} MiB "
        f"({'flat' if flat else 'not flat'})",
    )
    for method in START_METHODS:
        cf = f"construct/cf/{method}"
        add(
            "construct",
            f"pipework, {method}",
            f"construct/pipework/{method}",
            ("cf", _value(cells, cf)),
            f"construct/floor:process/{method}",
            lambda v, p, f: p is not None and v <= 1.2 * p,
        )
    add(
        "cpu",
        "pipework",
        "cpu/pipework/",
        _best(cells, "cpu", ""),
        "cpu/floor:split/",
        lambda v, p, f: v >= 0.97,
    )
    return lines


def _spread(entry: Mapping[str, Any], spec: str, repeats: int) -> str:
    """``median`` or ``median (min–max)``; why not, if nothing was measured."""
    if entry.get("median") is None:
        return f"**{str(entry.get('status', 'missing')).upper()}**"
    text = format(entry["median"], spec)
    if repeats > 1:
        text += f" ({format(entry['min'], spec)}–{format(entry['max'], spec)})"
    return text


def _met(met: bool | None) -> str:
    return "—" if met is None else "yes" if met else "not yet"


def render(
    plan: Sequence[Cell],
    cells: Mapping[str, JSONDict],
    summary: Sequence[JSONDict],
    machine: JSONDict,
    counts: Counts,
    workers: int,
    quick: bool,
) -> str:
    """The Markdown report: the goal table, every contender per row, failures, the machine."""
    repeats = counts.repeats
    git = machine.get("git") or {}
    changed = git.get("uncommitted")
    tree = f"pipework at commit {git.get('commit') or '?'}" + (
        f" plus uncommitted changes to {', '.join(changed)}" if changed else ""
    )
    runs = "one run each" if repeats == 1 else f"median of {repeats} runs (min–max)"
    lines = [
        f"Generated by `pipework bench pool{' --quick' if quick else ''}` on "
        f"{machine['date']}; {tree}. {workers} workers per pool; every cell measured in a "
        f"fresh child process, {runs}.",
    ]
    if quick:
        lines += [
            "",
            "Quick run (`--quick`): small counts, one run, and the cells of one library share "
            "a child process; it checks the runner, its numbers are not for comparison.",
        ]
    lines += [
        "",
        "| row | pipework | value | best peer | peer value | pipework / best peer | floor "
        "| floor value | pipework / floor | target | reached |",
        "|---|---|---:|---|---:|---:|---|---:|---:|---|---|",
    ]
    for line in summary:
        row = line["row"]
        spec = NUMBER_FORMAT[row]
        value = _spread(cells[line["pipework"]], spec, repeats)
        peer = label(row, line["best_peer"]) if line["best_peer"] else "—"
        floor = label(row, line["floor"].split("/")[1]) if line["floor"] else "—"
        title = f"{row}: {ROWS[row].title}, {ROWS[row].unit}"
        goal = line["goal"] + (f"; {line['note']}" if line["note"] else "")
        lines.append(
            f"| {title} | {line['what']} | {value} | {peer} | {fmt(line['best_peer_value'], spec)} "
            f"| {fmt(line['ratio_to_peer'], RATIO_FORMAT)} | {floor} "
            f"| {fmt(line['floor_value'], spec)} | {fmt(line['ratio_to_floor'], RATIO_FORMAT)} "
            f"| {goal} | {_met(line['met'])} |"
        )
    lines += [
        "",
        "Rows 1–4 run pipework on each transport; rows 5–7 (memory, construct, cpu) on its "
        "default transport only. Ratios are pipework / the other, both medians of this run: "
        "above 1 is better for tasks/s, MiB/s and efficiency, below 1 for µs, KB and ms.",
    ]
    for row in ROWS.values():
        row_cells = [c for c in plan if c.row == row.key]
        lines += [
            "",
            f"**{row.key}: {row.title}** ({row.unit}{_counts_note(row.key, counts)})",
            "",
            "| contender | variant | start method | value | status |",
            "|---|---|---|---:|---|",
        ]
        for cell in row_cells:
            entry = cells[cell.id]
            value = _spread(entry, NUMBER_FORMAT[row.key], repeats)
            if row.key == "latency" and entry.get("p99_median") is not None:
                value += f"; p99 {entry['p99_median']:,.1f}"
            status = entry["status"]
            if entry["ok_runs"] and entry["ok_runs"] < entry["runs"]:
                status = f"ok {entry['ok_runs']}/{entry['runs']}"
            lines.append(
                f"| {label(row.key, cell.subject)} | {variant_label(cell, counts)} "
                f"| {entry['start_method']} | {value} | {status} |"
            )
    failures = [e for e in cells.values() if e["error"]]
    if failures:
        lines += ["", "Not measured (or not every run):"]
        lines += [
            f"- {e['cell']}: {e['status'] if e['ok_runs'] == 0 else 'some runs failed'} — "
            f"{e['error']}"
            for e in failures
        ]
    lines += ["", machine_line(machine)]
    return "\n".join(lines)


def _counts_note(row: str, counts: Counts) -> str:
    notes = {
        "submit": f"; {counts.tasks:,} tasks",
        "map": f"; {counts.tasks:,} tasks",
        "latency": f"; {counts.round_trips:,} round trips after {counts.latency_warm_up:,}",
        "echo": f"; {counts.payload_bytes // (1024 * 1024)} MiB uint8 array, "
        f"median of {counts.echoes} echoes",
        "memory": f"; {counts.pending:,} submits, parent RSS growth / submits",
        "construct": "; imports done before the clock starts",
        "cpu": f"; {counts.cpu_tasks} × {counts.cpu_ms:g} ms, ideal / wall",
    }
    return notes[row]
