"""``make bench``: run every benchmark in bench/, print one summary table, and (with
``--readme``) write it into the README's performance section.

Each benchmark runs in its own process and prints its key figures as ``name=value`` lines,
each with the raw numbers of its anchor (what it is compared with, measured in the same run)
on the line above; the table carries that line beside the figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURE = re.compile(r"^([a-z][a-z0-9_]*)=([-+0-9.eE]+|nan|inf)$")


@dataclass(frozen=True)
class Target:
    figure: str
    op: str  # "<=", ">=", or "" for a figure printed for reference
    value: float = float("nan")

    def met(self, measured: float) -> bool | None:
        if not self.op:
            return None
        return measured <= self.value if self.op == "<=" else measured >= self.value

    @property
    def shown(self) -> str:
        return f"{self.op} {self.value:g}" if self.op else "(reference)"


def reference(figure: str) -> Target:
    return Target(figure, "")


# Module, then the figures it prints and their targets (from the issues).
BENCHMARKS: dict[str, list[Target]] = {
    "bench.chat": [
        reference("anchor_telemetry_ratio"),
        reference("ers_telemetry_us_per_request"),
        Target("ers_own_telemetry_us_per_request", "<=", 80),
        Target("chat_telemetry_ratio", ">=", 0.70),
    ],
    "bench.breaker": [
        Target("breaker_vs_pybreaker", "<=", 0.5),
        Target("guard_vs_bare_span", "<=", 1.15),
        Target("breaker_vs_purgatory", "<=", 0.8),
    ],
    "bench.incidents": [Target("incident_pipeline_spans_per_s", ">=", 50_000)],
    "bench.error_storm": [Target("error_storm_p99_ratio", "<=", 1.10)],
    "bench.backup": [
        Target("backup_growth_ratio", "<=", 0.05),
        Target("backup_wrapper_ratio", "<=", 1.15),
        Target("rollback_vs_restore_ratio", "<=", 1.3),
    ],
    "bench.health": [
        Target("status_p99_ms", "<=", 20),
        Target("rss_after_load_mb", "<=", 200),
    ],
    "bench.fleet": [
        reference("postgres_vs_sqlite_one_replica"),
        # Kept for reference: it mixes what the store costs into the scaling, which
        # fleet_scaling_on_postgres measures alone.
        reference("fleet_throughput_ratio"),
        reference("peer_scaling_on_postgres"),
        Target("fleet_scaling_on_postgres", ">=", 1.5),
    ],
    "bench.pg_backup": [
        # Kept for reference: a bare pg_restore into a fresh database takes no safety copy
        # and swaps nothing; pg_rollback_vs_manual compares the same work done by hand.
        reference("pg_rollback_vs_restore_ratio"),
        Target("pg_rollback_vs_manual", "<=", 1.1),
    ],
    "bench.remote_agent": [
        reference("instrumentation_alone_ratio"),
        reference("guard_vs_instrumented_ratio"),
        # Where the rest goes: the OpenTelemetry SDK's spans, measured without the network.
        reference("guard_telemetry_us_per_call"),
        Target("remote_guard_ratio", "<=", 1.10),
    ],
}


@dataclass
class Outcome:
    figures: dict[str, float]
    anchors: dict[str, str]  # figure -> the line printed above it
    error: str = ""


def run_one(module: str, timeout_s: float) -> Outcome:
    """Run a benchmark; its figures with their anchors, and an error text when it failed or
    is missing."""
    if not (ROOT / (module.replace(".", "/") + ".py")).exists():
        return Outcome({}, {}, "not present")
    try:
        done = subprocess.run(
            [sys.executable, "-m", module],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    except subprocess.TimeoutExpired:
        return Outcome({}, {}, f"did not finish in {timeout_s:g} s")
    sys.stdout.write(done.stdout)
    figures: dict[str, float] = {}
    anchors: dict[str, str] = {}
    previous = ""
    for line in done.stdout.splitlines():
        if match := FIGURE.match(line.strip()):
            figures[match.group(1)] = float(match.group(2))
            anchors[match.group(1)] = previous
        previous = line.strip()
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return Outcome(figures, anchors, f"exit {done.returncode}: {tail[0]}")
    return Outcome(figures, anchors)


def machine() -> str:
    cpus = os.cpu_count() or 0
    try:
        import psutil

        memory = f", {psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        memory = ""
    return (
        f"{platform.system()} {platform.release()}, {cpus} cores{memory}, "
        f"Python {platform.python_version()}"
    )


def table(results: dict[str, Outcome]) -> list[str]:
    lines = [
        "| benchmark | figure | measured | target | met | anchor (same run) |",
        "|---|---|---|---|---|---|",
    ]
    for module, targets in BENCHMARKS.items():
        outcome = results[module]
        for target in targets:
            measured = outcome.figures.get(target.figure)
            anchor = outcome.anchors.get(target.figure, "").replace("|", "\\|")
            if measured is None:
                shown, met = f"— ({outcome.error or 'not printed'})", "no"
            else:
                verdict = target.met(measured)
                shown = f"{measured:g}"
                met = "—" if verdict is None else "yes" if verdict else "no"
            lines.append(
                f"| `{module}` | `{target.figure}` | {shown} | {target.shown} | {met} | {anchor} |"
            )
    return lines


def write_readme(lines: list[str], header: str, not_run: list[str]) -> None:
    """Write the table between the README's markers. The rows of benchmarks in ``not_run``
    (a run with ``--only``) are kept as the README had them, and the header says from
    which run they are."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if not_run and start in text and end in text:
        old = text[text.index(start) : text.index(end)].splitlines()
        rows = {m: [line for line in lines if _module_of(line) == m] for m in BENCHMARKS}
        kept = []
        for module in not_run:
            earlier = [line for line in old if _module_of(line) == module]
            if earlier:
                rows[module] = earlier
                kept.append(f"`{module}`")
        lines = lines[:2] + [row for module in BENCHMARKS for row in rows[module]]
        if kept:
            old_header = next((line for line in old if line.startswith("Measured by")), "")
            header += _earlier_runs(kept, old_header)
    block = "\n".join([start, header, "", *lines, end])
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)


def _earlier_runs(kept: list[str], old_header: str) -> str:
    """Which earlier run each kept row is from: the newest run of the old header that
    measured its benchmark (``make bench`` measured them all). A run no row comes from any
    more is not named."""
    runs = [
        "M" + re.sub(r" The rows of .*$", "", run.strip())[1:]
        for run in re.split(r"(?=[Mm]easured by `)", old_header)
        if run.strip()
    ]
    owners: dict[str, list[str]] = {}
    for module in kept:
        for run in runs:
            command = run.split("`")[1] if run.count("`") >= 2 else ""
            measured = command.split("--only", 1)[1].split() if "--only" in command else None
            if measured is None or module.strip("`") in measured:
                owners.setdefault(run, []).append(module)
                break
    return "".join(  # newest run first, as the runs were
        f" The rows of {', '.join(owners[run])} are from an earlier run, m{run[1:]}"
        for run in runs
        if run in owners
    )


def _module_of(row: str) -> str | None:
    """The benchmark a table row is of (``| `bench.chat` | ...``); None for other lines."""
    return row.split("`")[1] if row.startswith("| `") else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these modules (e.g. bench.chat)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args(argv)
    # Other work on the machine moves every figure: say how busy it was when the run began.
    load_at_start = os.getloadavg()[0]
    results: dict[str, Outcome] = {}
    for module in BENCHMARKS:
        if args.only and module not in args.only:
            results[module] = Outcome({}, {}, "not run")
            continue
        print(f"== {module}", flush=True)
        started = time.perf_counter()
        results[module] = run_one(module, args.timeout)
        print(f"== {module}: {time.perf_counter() - started:.0f} s", flush=True)
    lines = table(results)
    command = f"python -m bench --only {' '.join(args.only)}" if args.only else "make bench"
    header = (
        f"Measured by `{command}` on {time.strftime('%Y-%m-%d')}, {machine()}, "
        f"load average {load_at_start:.1f} when the run began."
    )
    print()
    print(header)
    print("\n".join(lines))
    if args.readme:
        not_run = [m for m, outcome in results.items() if outcome.error == "not run"]
        write_readme(lines, header, not_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
