"""/chat throughput of two ERS replicas sharing one PostgreSQL against one replica on SQLite,
side by side in one run.

Five real uvicorn processes stay up for the whole run, three of ERS (``python -m
service.cli serve``) and two of the peer app below. ERS's are the
single replica on SQLite files (the default), and replicas A and B with ``ERS_DATABASE_URL``
on one database of a throwaway PostgreSQL cluster (``tests/pg.py``: Debian's binaries,
fsync off). Each replica is pinned to one CPU before it starts, so that every thread it ever
starts inherits the pin: "one process on one core" against "two processes on two cores".
The load generator (this process) and PostgreSQL are left free to run on any CPU, so on a
two-core machine they take their share from the replicas they measure.

The same keep-alive connections and the same message mix (``bench.chat``) load every setup;
for the two replicas the connections are dealt round robin across their two ports, with no
load-balancer process in between. Replica A alone is measured too, as a control that
separates what PostgreSQL costs one replica from what the second replica adds. The anchor
is a peer: the minimal FastAPI app of ``bench.anchor_app``, instrumented as ERS is, reading
one row of a database of the same cluster per chat through a psycopg pool (about the one
statement a chat costs ERS), one process and two, pinned as the replicas are. Each round
runs every setup, starting with a different one, so that all see the same machine noise;
medians are compared, with the cores each party used meanwhile.

The cores do not add up to the machine by themselves: the kernel's network work and the
other programs on the machine take CPUs too. So each round also prints the time the loaded
replicas were ready to run but had no CPU (``wait``, from ``/proc/<pid>/task/*/schedstat``),
the CPU used by everything outside the three parties (``other``) and the CPU left unused
(``idle``): a replica whose ``ERS`` and ``wait`` add up to about one core was held back by
the CPUs, not by its database, pool or load, and ``other`` says how much of them went elsewhere.

Figures, each as ``name=value`` with the raw numbers it compares on the line above, kept
for reference first: ``postgres_vs_sqlite_one_replica`` (what PostgreSQL costs one replica),
``fleet_throughput_ratio`` (two replicas on PostgreSQL over one on SQLite; its old target
of >= 1.6 mixed the store's cost into the scaling) and ``peer_scaling_on_postgres`` (the
peer app's two processes over its one); last the scaling itself,
``fleet_scaling_on_postgres=<two replicas' req/s over one replica's, both on PostgreSQL>``
(target >= 1.5), with the cores each side used printed beside it: on a 2-core machine that
also runs PostgreSQL and the load generator, two replicas cannot have two whole cores.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from collections import Counter
from contextlib import ExitStack

import psutil

from bench.chat import request_factory
from bench.loadgen import LoadResult, median, run_load
from bench.server import anchor_process, ers_server, on_cpus
from tests.pg import PostgresServer, postgres_for_tests

SINGLE = "one replica, SQLite"
CONTROL = "one replica, PostgreSQL"
FLEET = "two replicas, PostgreSQL"
PEER_ONE = "peer app, one, PostgreSQL"
PEER_TWO = "peer app, two, PostgreSQL"
WARM_UP_S = 2.0


def server_pid(url: str) -> int:
    """The pid of the server child (ERS or the peer app) started with ``url``'s port."""
    port = url.rsplit(":", 1)[1]
    for child in psutil.Process().children(recursive=True):
        command = child.cmdline()
        if any(a == "--port" and b == port for a, b in itertools.pairwise(command)):
            return child.pid
    raise RuntimeError(f"no server process for {url}")


def cpus_of(pid: int) -> str:
    """The CPUs every thread of ``pid`` may run on, e.g. ``{0} (12 threads)``."""
    masks = {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}
    shown = " / ".join(str(set(sorted(mask))) for mask in sorted(masks, key=sorted))
    return f"{shown} ({len(os.listdir(f'/proc/{pid}/task'))} threads)"


def pin(what: str, pid: int) -> str:
    return f"{what:<28} pid {pid:<8} CPU {cpus_of(pid)}"


def postmaster_pid(server: PostgresServer) -> int | None:
    if server.work_dir is None:
        return None
    pid_file = server.work_dir / "data" / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def cpu_wait_seconds(processes: list[psutil.Process]) -> float:
    """How long the threads of ``processes`` were ready to run but had no CPU: the second
    field of each thread's ``/proc/<pid>/task/<tid>/schedstat``, in nanoseconds; NaN where
    the kernel keeps no such figure."""
    total_ns, read = 0, False
    for process in processes:
        try:
            threads = os.listdir(f"/proc/{process.pid}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                with open(f"/proc/{process.pid}/task/{tid}/schedstat") as stat:
                    total_ns += int(stat.read().split()[1])
                read = True
            except (OSError, IndexError, ValueError):
                continue
    return total_ns / 1e9 if read else float("nan")


def machine_seconds() -> tuple[float, float]:
    """CPU seconds of the whole machine so far: (busy, idle), every CPU summed."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    busy = sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return busy, idle


def with_children(pid: int | None) -> list[psutil.Process]:
    if pid is None:
        return []
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


async def load(urls: list[str], connections: int, seconds: float) -> LoadResult:
    """Keep ``connections`` keep-alive connections busy with /chat for ``seconds``, dealt
    round robin across ``urls``; one figure for them all."""
    shares = [len(range(i, connections, len(urls))) for i in range(len(urls))]
    results = await asyncio.gather(
        *(
            run_load(
                url,
                request_factory(url.removeprefix("http://")),
                connections=share,
                total_requests=10**8,
                time_limit_s=seconds,
            )
            for url, share in zip(urls, shares, strict=True)
        )
    )
    statuses: Counter[int] = Counter()
    for result in results:
        statuses.update(result.statuses)
    return LoadResult(
        requests=sum(r.requests for r in results),
        seconds=max(r.seconds for r in results),
        latencies_s=[s for r in results for s in r.latencies_s],
        statuses=statuses,
        errors=sum(r.errors for r in results),
    )


def measure_round(
    urls: list[str], connections: int, seconds: float, postmaster: int | None
) -> dict[str, float]:
    """Throughput and latency of one setup, and the cores each party used meanwhile:
    where the CPUs went, and how long the replicas waited for one."""
    replicas = [psutil.Process(server_pid(url)) for url in urls]
    groups = {
        "ers_cores": replicas,
        "pg_cores": with_children(postmaster),
        "load_cores": [psutil.Process()],
    }
    before = {key: cpu_seconds(group) for key, group in groups.items()}
    waited_before = cpu_wait_seconds(replicas)
    busy_before, idle_before = machine_seconds()
    started = time.perf_counter()
    result = asyncio.run(load(urls, connections, seconds))
    elapsed = time.perf_counter() - started
    busy_after, idle_after = machine_seconds()
    figures = result.summary()
    for key, group in groups.items():
        figures[key] = (cpu_seconds(group) - before[key]) / elapsed
    figures["wait_cores"] = (cpu_wait_seconds(replicas) - waited_before) / elapsed
    parties = sum(figures[key] for key in groups)
    figures["other_cores"] = max(0.0, (busy_after - busy_before) / elapsed - parties)
    figures["idle_cores"] = (idle_after - idle_before) / elapsed
    return figures


def measure(rounds: int = 5, seconds: float = 6.0, connections: int = 32) -> dict[str, object]:
    cpus = sorted(os.sched_getaffinity(0))
    first, second = cpus[0], cpus[1 % len(cpus)]
    with ExitStack() as stack:
        postgres = postgres_for_tests()
        stack.callback(postgres.stop)
        database = postgres.create_database()
        stack.callback(postgres.drop_database, database)
        fleet_env = {"ERS_DATABASE_URL": database}
        peer_database = postgres.create_database()
        stack.callback(postgres.drop_database, peer_database)

        def peer() -> str:
            return stack.enter_context(anchor_process(True, peer_database)).url

        with on_cpus({first}):
            single = stack.enter_context(ers_server())
            replica_a = stack.enter_context(ers_server(fleet_env))
            peer_a = peer()
        with on_cpus({second}):
            replica_b = stack.enter_context(ers_server(fleet_env))
            peer_b = peer()
        # The middle setup is a control: replica A alone separates what PostgreSQL costs
        # one replica from what a second replica adds. The peer app is the anchor.
        setups = {
            SINGLE: [single],
            CONTROL: [replica_a],
            FLEET: [replica_a, replica_b],
            PEER_ONE: [peer_a],
            PEER_TWO: [peer_a, peer_b],
        }

        postmaster = postmaster_pid(postgres)
        pins = [
            pin("single replica (SQLite)", server_pid(single)),
            pin("replica A (PostgreSQL)", server_pid(replica_a)),
            pin("replica B (PostgreSQL)", server_pid(replica_b)),
            pin("peer app A (PostgreSQL)", server_pid(peer_a)),
            pin("peer app B (PostgreSQL)", server_pid(peer_b)),
            pin("load generator (this)", os.getpid()),
            pin("PostgreSQL 15 postmaster", postmaster) + ", its backends inherit it"
            if postmaster
            else "PostgreSQL: the server named by ERS_TEST_DATABASE_URL, not pinned",
        ]

        for urls in setups.values():
            asyncio.run(load(urls, connections, WARM_UP_S))
        results: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
        names = list(setups)
        for round_number in range(rounds):
            # Each round starts with another setup, so none always follows the same one.
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                figures = measure_round(setups[name], connections, seconds, postmaster)
                results[name].append(figures)
    summary = {
        name: {key: median([r[key] for r in runs]) for key in runs[0]}
        for name, runs in results.items()
    }
    return {
        "pins": pins,
        "rounds": results,
        "summary": summary,
        "ratio": summary[FLEET]["rps"] / summary[SINGLE]["rps"],
        "scaling": summary[FLEET]["rps"] / summary[CONTROL]["rps"],
        "peer_scaling": summary[PEER_TWO]["rps"] / summary[PEER_ONE]["rps"],
        "store_cost": summary[CONTROL]["rps"] / summary[SINGLE]["rps"],
        "cpus": cpus,
    }


def _row(label: str, setup: str, figures: dict[str, float]) -> str:
    return (
        f"{label:<8}{setup:<28}{figures['rps']:>9.1f}{figures['p50_ms']:>9.2f}"
        f"{figures['p99_ms']:>9.2f}{figures['non_2xx'] + figures['errors']:>8.0f}"
        f"{figures['ers_cores']:>7.2f}{figures['wait_cores']:>7.2f}{figures['pg_cores']:>7.2f}"
        f"{figures['load_cores']:>7.2f}{figures['other_cores']:>7.2f}{figures['idle_cores']:>7.2f}"
    )


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="per setup and round")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    result = measure(args.rounds, args.seconds, args.connections)
    cpus = result["cpus"]
    print(f"CPUs available: {cpus}; pinned (os.sched_setaffinity before each start):")
    for line in result["pins"]:  # type: ignore[attr-defined]
        print(f"  {line}")
    if len(cpus) < 2:  # type: ignore[arg-type]
        print("  only one CPU: every setup shares it, the ratios say nothing about scaling")
    per_port = args.connections // 2
    print(
        f"load: {args.connections} keep-alive connections from this process, the same /chat "
        f"message mix for every setup; for two replicas {per_port} per port, dealt round robin "
        "across the two ports (no load-balancer process)"
    )
    print(
        "cores during each round: used by the servers loaded (ERS or the peer app), their "
        "wait (ready to run, no CPU free), PostgreSQL, the load generator, everything else "
        "on the machine (other programs, the kernel), and left idle"
    )
    print(
        f"{'round':<8}{'setup':<28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}"
        f"{'app':>7}{'wait':>7}{'PG':>7}{'load':>7}{'other':>7}{'idle':>7}"
    )
    for name, runs in result["rounds"].items():  # type: ignore[attr-defined]
        for number, figures in enumerate(runs, 1):
            print(_row(str(number), name, figures))
    for name, figures in result["summary"].items():  # type: ignore[attr-defined]
        print(_row("median", name, figures))
    summary = result["summary"]
    single, control, fleet = summary[SINGLE], summary[CONTROL], summary[FLEET]  # type: ignore[index]
    print(f"anchor one replica: SQLite {single['rps']:.1f} req/s, PostgreSQL {control['rps']:.1f}")
    print(f"postgres_vs_sqlite_one_replica={result['store_cost']:.3f}")
    print(
        f"anchor one replica, SQLite {single['rps']:.1f} req/s; two, PostgreSQL {fleet['rps']:.1f}"
    )
    print(f"fleet_throughput_ratio={result['ratio']:.3f}")
    one, two = summary[PEER_ONE], summary[PEER_TWO]  # type: ignore[index]
    print(
        f"anchor peer app on PostgreSQL: one process {one['rps']:.1f} req/s using "
        f"{one['ers_cores']:.2f} cores, two {two['rps']:.1f} using {two['ers_cores']:.2f} "
        f"(PostgreSQL {one['pg_cores']:.2f} / {two['pg_cores']:.2f}, load generator "
        f"{one['load_cores']:.2f} / {two['load_cores']:.2f})"
    )
    print(f"peer_scaling_on_postgres={result['peer_scaling']:.3f}")
    print(
        f"anchor peer app two/one {result['peer_scaling']:.3f}; ERS one replica on "
        f"PostgreSQL {control['rps']:.1f} req/s using {control['ers_cores']:.2f} cores; two "
        f"replicas {fleet['rps']:.1f} req/s using {fleet['ers_cores']:.2f} (PostgreSQL "
        f"{control['pg_cores']:.2f} / {fleet['pg_cores']:.2f}, load generator "
        f"{control['load_cores']:.2f} / {fleet['load_cores']:.2f}, waiting for a CPU "
        f"{control['wait_cores']:.2f} / {fleet['wait_cores']:.2f}, other programs and the kernel "
        f"{control['other_cores']:.2f} / {fleet['other_cores']:.2f}, idle "
        f"{control['idle_cores']:.2f} / {fleet['idle_cores']:.2f})"
    )
    print(f"fleet_scaling_on_postgres={result['scaling']:.3f}")
    return result


if __name__ == "__main__":
    main()
