"""update_state latency with 10 vs 10,000 history revisions, retention on and off (issue 4).

    python benchmarks/bench_history.py            # 3,000 calls per series
    python benchmarks/bench_history.py --quick    # 1,000 calls per series, ~1 minute with populating

Four groundhog-mcp servers run as real stdio processes, each on its own copy of a database
populated by bench_core.py's ``populate`` (ten hot contexts with a 1 KB state):

- ``shallow``: 10 revisions per hot context; ``deep``: 10,000 revisions per hot context;
- each with the default retention (``keep_revisions=100``: the deep contexts' history is pruned
  to the last 100 revisions by the first writes of the warm-up, in the write path) and with
  retention off (``GROUNDHOG_KEEP_REVISIONS=0``: all 10,000 snapshots stay).

The calls are bench_core.py's ``update_state`` series (a new ~1 KB ``data`` with
``expected_revision``, one hot context per batch in turn), interleaved round by round in a
rotating order so machine drift hits every series alike. Targets (same run): ``update_state``
p50 deep / shallow ≤ 1.2, retention on and off alike. Prints a table, writes JSON
(default benchmarks/results/history.json).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_core import (
    HOT,
    HOT_REVISIONS,
    Server,
    _environment,  # pyright: ignore[reportPrivateUsage]
    _ratio,  # pyright: ignore[reportPrivateUsage]
    bench_env,
    call,
    groundhog_args,
    populate_hot,
    run_in_workdir,
    start_server,
    update_series,
    warn_if_loaded,
    write_results,
)
from populate import history_rows

HERE = Path(__file__).resolve().parent
TARGET = 1.2
DEEP_REVISIONS = 10_000


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int
    batch: int
    warmup: int


FULL = Mode("full", rounds=30, batch=100, warmup=300)
QUICK = Mode("quick", rounds=10, batch=100, warmup=100)

# key -> (populated database, GROUNDHOG_KEEP_REVISIONS)
SERVERS = {
    "shallow_kept_100": ("shallow", "100"),
    "deep_kept_100": ("deep", "100"),
    "shallow_keep_all": ("shallow", "0"),
    "deep_keep_all": ("deep", "0"),
}


async def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    print(f"groundhog-mcp history benchmark ({mode.name}) in {workdir}", flush=True)
    load_at_start = warn_if_loaded()
    populated: dict[str, Any] = {}
    for key, revisions in (("shallow", HOT_REVISIONS), ("deep", DEEP_REVISIONS)):
        populated[key] = await populate_hot(workdir / f"{key}.sqlite", revisions=revisions)
        print(f"  populated {key}: {populated[key]}", flush=True)
    paths: dict[str, Path] = {}
    for key, (source, _) in SERVERS.items():
        paths[key] = workdir / f"{key}.sqlite"
        shutil.copyfile(workdir / f"{source}.sqlite", paths[key])

    async with contextlib.AsyncExitStack() as stack:
        servers: dict[str, Server] = {}
        for key, (_, keep) in SERVERS.items():
            env = bench_env(workdir, GROUNDHOG_KEEP_REVISIONS=keep)
            servers[key] = await start_server(stack, key, groundhog_args(paths[key]), env)
            for name in HOT:
                servers[key].revisions[name] = (await call(servers[key], "get_state", {"name": name}))["revision"]
        series = [
            update_series(
                key,
                f"update_state, {'10' if 'shallow' in key else f'{DEEP_REVISIONS:,}'} revisions, "
                f"{'keep 100' if keep == '100' else 'keep all'}",
                servers[key],
            )
            for key, (_, keep) in SERVERS.items()
        ]
        for s in series:
            for _ in range(len(HOT)):  # one warm-up batch per hot context: the deep ones get pruned here
                await s.batch(mode.warmup // len(HOT), record=False)
            assert s.writes is not None
            s.extra["revisions_at_start"] = min(s.writes.revisions.values())
        started = time.perf_counter()
        for r in range(mode.rounds):
            offset = r % len(series)
            for s in series[offset:] + series[:offset]:
                await s.batch(mode.batch)
            print(f"\r  round {r + 1}/{mode.rounds}", end="", flush=True)
        measured_s = time.perf_counter() - started
        print(flush=True)
        for s in series:
            assert s.writes is not None
            s.extra["revisions_at_end"] = max(s.writes.revisions.values())
    kept = {key: history_rows(path) for key, path in paths.items()}

    by_key = {s.key: s for s in series}
    summaries = {k: s.summary() | {"history": kept[k]} for k, s in by_key.items()}
    rounds = {k: s.round_p50s() for k, s in by_key.items()}

    def ratio(name: str, deep: str, shallow: str) -> dict[str, Any]:
        per_round = sorted(a / b for a, b in zip(rounds[deep], rounds[shallow], strict=True))
        spread = [round(per_round[len(per_round) // 10], 3), round(per_round[-1 - len(per_round) // 10], 3)]
        value = summaries[deep]["p50_ms"] / summaries[shallow]["p50_ms"]
        formula = f"update_state p50: {DEEP_REVISIONS:,} / {HOT_REVISIONS} revisions"
        return _ratio(name, formula, value, TARGET) | {"round_p10_p90": spread}

    ratios = [
        ratio("retention on (keep 100)", "deep_kept_100", "shallow_kept_100"),
        ratio("retention off (keep all)", "deep_keep_all", "shallow_keep_all"),
    ]
    retention_cost = summaries["shallow_kept_100"]["p50_ms"] / summaries["shallow_keep_all"]["p50_ms"]
    return {
        "benchmark": "bench_history",
        "mode": mode.name,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": _environment(workdir) | {"loadavg_at_start": load_at_start},
        "parameters": {
            "rounds": mode.rounds,
            "batch": mode.batch,
            "warmup": mode.warmup,
            "calls_per_series": mode.rounds * mode.batch,
            "measured_s": round(measured_s, 1),
        },
        "databases": populated,
        "series": summaries,
        "ratios": ratios,
        "retention_cost": {
            "formula": "retention cost: update_state p50, 10 revisions, keep 100 / keep all (no target)",
            "value": round(retention_cost, 3),
        },
        "all_targets_met": all(r["met"] for r in ratios),
    }


def render(results: dict[str, Any]) -> str:
    p = results["parameters"]
    env = results["environment"]
    lines = [
        f"groundhog-mcp history benchmark ({results['mode']}, {env['git_commit']}, Python {env['python']}, "
        f"mcp {env['mcp']}; load average {env['loadavg_at_start'][0]:.2f} at start, "
        f"{env['loadavg_at_end'][0]:.2f} at end on {env['cpus']} CPUs)",
        f"{p['calls_per_series']} sequential calls per series after {p['warmup']} warm-up, interleaved in "
        f"{p['rounds']} rounds of {p['batch']}; measured in {p['measured_s']} s",
        "",
        f"{'series':<42}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'srv CPU ms':>12}{'revisions':>20}{'snapshots':>16}",
    ]
    for s in results["series"].values():
        revisions = f"{s['revisions_at_start']:,}-{s['revisions_at_end']:,}"
        h = s["history"]
        snapshots = f"{h['snapshots_min']:,}-{h['snapshots_max']:,}"
        lines.append(
            f"{s['label']:<42}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}{s['mean_ms']:>9.3f}"
            f"{s['server_cpu_ms_per_call']:>12.3f}{revisions:>20}{snapshots:>16}"
        )
    lines += ["", f"{'ratio (same run)':<80}{'value':>7}{'target':>8}  {'result':<7}{'per-round p10-p90':>18}"]
    for r in results["ratios"]:
        verdict = "ok" if r["met"] else "MISSED"
        spread = "{:.2f} - {:.2f}".format(*r["round_p10_p90"])
        lines.append(
            f"{r['name'] + ': ' + r['formula']:<80}{r['value']:>7.3f}{'≤ ' + str(r['target']):>8}  {verdict:<7}"
            f"{spread:>18}"
        )
    cost = results["retention_cost"]
    lines.append(f"{cost['formula']:<80}{cost['value']:>7.3f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 calls per series instead of 3,000")
    parser.add_argument("--dir", type=Path, help="directory for the databases (default: a new temporary one)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "history.json", help="JSON results file")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    results = run_in_workdir(
        lambda workdir: run(mode, workdir), prefix="groundhog-bench-history-", parent=args.dir, keep=args.keep
    )
    write_results(results, render, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
