"""``make bench``: run every benchmark in bench/, print one summary table, and (with
``--readme``) write it into the README's performance section.

Each benchmark runs in its own process and prints its key figures as ``name=value`` lines;
the ratios inside each benchmark are measured side by side in one run.
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
    op: str  # "<=" or ">="
    value: float

    def met(self, measured: float) -> bool:
        return measured <= self.value if self.op == "<=" else measured >= self.value


# Module, then the figures it prints and their targets (from the issues).
BENCHMARKS: dict[str, list[Target]] = {
    "bench.chat": [Target("chat_telemetry_ratio", ">=", 0.85)],
    "bench.breaker": [
        Target("breaker_vs_pybreaker", "<=", 0.5),
        Target("guard_vs_bare_span", "<=", 1.15),
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
    "bench.fleet": [Target("fleet_throughput_ratio", ">=", 1.6)],
    "bench.pg_backup": [Target("pg_rollback_vs_restore_ratio", "<=", 1.5)],
}


def run_one(module: str, timeout_s: float) -> tuple[dict[str, float], str]:
    """Run a benchmark; its figures, and an error text when it failed or is missing."""
    if not (ROOT / (module.replace(".", "/") + ".py")).exists():
        return {}, "not present"
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
        return {}, f"did not finish in {timeout_s:g} s"
    sys.stdout.write(done.stdout)
    figures = {}
    for line in done.stdout.splitlines():
        if match := FIGURE.match(line.strip()):
            figures[match.group(1)] = float(match.group(2))
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return figures, f"exit {done.returncode}: {tail[0]}"
    return figures, ""


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


def table(results: dict[str, tuple[dict[str, float], str]]) -> list[str]:
    lines = ["| benchmark | figure | measured | target | met |", "|---|---|---|---|---|"]
    for module, targets in BENCHMARKS.items():
        figures, error = results[module]
        for target in targets:
            measured = figures.get(target.figure)
            if measured is None:
                shown, met = f"— ({error or 'not printed'})", "no"
            else:
                shown, met = f"{measured:g}", "yes" if target.met(measured) else "no"
            lines.append(
                f"| `{module}` | `{target.figure}` | {shown} | {target.op} {target.value:g} "
                f"| {met} |"
            )
    return lines


def write_readme(lines: list[str], header: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    block = "\n".join([start, header, "", *lines, end])
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these modules (e.g. bench.chat)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per benchmark")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args(argv)
    results: dict[str, tuple[dict[str, float], str]] = {}
    for module in BENCHMARKS:
        if args.only and module not in args.only:
            results[module] = ({}, "not run")
            continue
        print(f"== {module}", flush=True)
        started = time.perf_counter()
        results[module] = run_one(module, args.timeout)
        print(f"== {module}: {time.perf_counter() - started:.0f} s", flush=True)
    lines = table(results)
    header = f"Measured by `make bench` on {time.strftime('%Y-%m-%d')}, {machine()}."
    print()
    print(header)
    print("\n".join(lines))
    if args.readme:
        write_readme(lines, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
