"""Run every benchmark, each measuring the agent and its baseline in the same run, and write the
figures: ``benchmarks/results/<name>.json`` per benchmark, ``benchmarks/results/latest.json``
(all of them, with the machine, the date and the commit) and the summary at the top of
docs/performance.md (between its ``run_all`` markers; the prose below them is kept).

    python benchmarks/run_all.py                  # everything, the one-hour soak included
    python benchmarks/run_all.py --soak-seconds 600 --only poller soak
    python benchmarks/run_all.py --skip soak --import soak=soak.json   # a soak run apart
    python benchmarks/run_all.py --quick          # smoke runs (CI): results/quick.json only

Benchmarks run one after another, never side by side, so none measures another's load. Each is
a subprocess with a time limit; one that fails is reported and makes the exit status 1, and the
others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"
BEGIN = "<!-- run_all:begin (benchmarks/run_all.py writes this part) -->"
END = "<!-- run_all:end -->"


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    timeout_s: float = 1800.0


def benchmarks(soak_s: float) -> list[Benchmark]:
    return [
        Benchmark("poller", "bench_poller.py", ("--meters", "100", "300", "1000"), ("--quick",)),
        Benchmark("pi", "bench_poller.py", ("--pin-core",), ("--pin-core", "--quick")),
        Benchmark("outbox", "bench_outbox_drain.py", (), ("--quick",)),
        Benchmark("end_to_end", "bench_end_to_end.py", (), ("--quick",)),
        Benchmark("startup", "bench_startup.py", (), ("--quick",)),
        Benchmark("disk", "bench_disk.py", (), ("--quick",)),
        Benchmark("intake", "bench_intake.py", (), ("--quick",)),
        Benchmark("store", "bench_store.py", (), ("--quick",)),
        Benchmark("opcua", "bench_opcua.py", (), ("--quick",)),
        # The hub's own runs use 10,000 footprints (docs/performance.md); here a size that keeps
        # the whole run under an hour.
        Benchmark(
            "hub",
            "bench_hub.py",
            ("--records", "2000", "--footprints", "2000", "--requests", "100"),
            ("--quick",),
        ),
        Benchmark(
            "hub_store",
            "hub_store.py",
            ("--records", "5000", "--footprints", "1000", "--repeat", "50"),
            ("--quick",),
        ),
        Benchmark(
            "soak",
            "bench_poller.py",
            ("--soak", f"{soak_s:g}"),
            ("--soak", "20", "--soak-every", "5", "--quick"),
            timeout_s=soak_s + 900,
        ),
    ]


def machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for package in ("pymodbus", "paho-mqtt", "aiosqlite", "asyncua", "pydantic", "fastapi"):
        try:
            from importlib.metadata import version  # noqa: PLC0415

            versions[package] = version(package)
        except Exception:
            versions[package] = "not installed"
    from simulators.broker import mosquitto_binary  # noqa: PLC0415

    mosquitto = subprocess.run(
        [mosquitto_binary(), "-h"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    ).stdout.strip()  # fmt: skip
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "unknown",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libraries": versions,
        "mosquitto": mosquitto[0] if mosquitto else "mosquitto (version unknown)",
    }


def run_one(bench: Benchmark, quick: bool, folder: Path, about: dict[str, Any]) -> dict[str, Any]:
    out = folder / f"{bench.name}.json"
    out.unlink(missing_ok=True)
    args = bench.quick if quick else bench.full
    # Relative to the repository (the scripts record their command line in their results).
    shown_out = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    command = [sys.executable, f"benchmarks/{bench.script}", *args, "--json", str(shown_out)]
    shown = " ".join(["python", f"benchmarks/{bench.script}", *args])
    print(f"\n=== {bench.name}: {shown}", flush=True)
    began = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, timeout=bench.timeout_s, check=False)
        failure = None if done.returncode == 0 else f"exit status {done.returncode}"
    except subprocess.TimeoutExpired:
        failure = f"did not finish within {bench.timeout_s:g} s"
    elapsed = time.monotonic() - began
    result: dict[str, Any] = {"benchmark": bench.name, "command": shown, "rows": []}
    if failure is None:
        if out.is_file():
            result = json.loads(out.read_text(encoding="utf-8"))
            result["command"] = shown
            if not result.get("rows"):
                failure = "wrote no rows"
        else:
            failure = f"wrote no {out.name}"
    result["name"] = bench.name
    result["ran"] = f"{about['date']}, commit {about['commit']}"
    result["seconds"] = round(elapsed, 1)
    result["failure"] = failure
    print(f"=== {bench.name}: {'FAILED: ' + failure if failure else 'done'} in {elapsed:.0f} s")
    return result


def imported(name: str, path: Path, folder: Path) -> dict[str, Any]:
    """A result its script wrote apart from this run (its own command and file time kept)."""
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if not result.get("rows"):
        raise SystemExit(f"{path}: no rows (not a benchmark result)")
    ran = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
    result.update(name=name, ran=f"{ran}, imported", seconds=0.0, failure=None)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def number(value: Any, unit: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        magnitude = abs(value)
        if magnitude >= 1000:
            text = f"{value:,.0f}"
        elif magnitude >= 100:
            text = f"{value:.0f}"
        elif magnitude >= 10:
            text = f"{value:.1f}"
        else:
            text = f"{value:.3g}"
        return f"{text} {unit}".strip()
    return str(value)


def summary(results: Sequence[dict[str, Any]], about: dict[str, Any]) -> str:
    libraries = ", ".join(f"{k} {v}" for k, v in about["libraries"].items())
    lines = [
        BEGIN,
        "",
        f"Last run: {about['date']}, commit {about['commit']}, on {about['cpu']} "
        f"({about['cores']} cores, {about['machine']}, Linux {about['kernel']}), Python "
        f"{about['python']}; {libraries}; {about['mosquitto']}. Every figure is the median of "
        "the benchmark's own repeats; every baseline was measured in the same run, on the same "
        "machine, against the same servers. Re-run: `python benchmarks/run_all.py` (all of "
        "them, the one-hour soak included; `--only NAME…` for some), which rewrites this part "
        "and `benchmarks/results/latest.json`.",
        "",
        "| benchmark | figure | agent | baseline (bare library, same run) | ratio | goal | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for result in results:
        if result.get("failure"):
            lines.append(f"| {result['name']} | **failed**: {result['failure']} | | | | | |")
            continue
        for row in result["rows"]:
            unit = row.get("unit", "")
            ratio = row.get("ratio")
            met = row.get("met")
            lines.append(
                f"| {result['name']} | {row['figure']} | {number(row.get('agent'), unit)} | "
                f"{number(row.get('baseline'), unit)} | "
                f"{'' if ratio is None else f'{ratio:.2f}'} | {row.get('goal') or ''} | "
                f"{'' if met is None else ('yes' if met else '**no**')} |"
            )
    lines += ["", "Commands:", ""]
    lines += [
        f"- {result['name']} ({result['ran']}, {result['seconds']:.0f} s): `{result['command']}`"
        for result in results
    ]
    lines += ["", END]
    return "\n".join(lines)


def update_doc(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text, doc, count=1)
    else:  # first run: after the title and the introduction's first paragraph
        head, sep, rest = doc.partition("\n\n## ")
        doc = f"{head}\n\n{text}\n{sep}{rest}" if sep else f"{doc}\n\n{text}\n"
    DOC.write_text(doc, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke runs; the docs stay as they are"
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="leave these out")
    parser.add_argument("--soak-seconds", type=float, default=3600.0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON files")
    parser.add_argument(
        "--import", dest="imports", nargs="+", default=[], metavar="NAME=PATH",
        help="take NAME's result from a --json file its script wrote (e.g. a soak run apart)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    chosen = benchmarks(args.soak_seconds)
    if args.only:
        unknown = set(args.only) - {b.name for b in chosen}
        if unknown:
            parser.error(
                f"unknown benchmark(s) {sorted(unknown)}; known: {[b.name for b in chosen]}"
            )
        chosen = [b for b in chosen if b.name in args.only]
    chosen = [b for b in chosen if b.name not in args.skip]
    args.results.mkdir(parents=True, exist_ok=True)
    about = machine()
    results = [run_one(bench, args.quick, args.results, about) for bench in chosen]
    for item in args.imports:
        name, _, path = item.partition("=")
        results.append(imported(name, Path(path), args.results))
    combined = {"machine": about, "quick": args.quick, "results": results}
    target = args.results / ("quick.json" if args.quick else "latest.json")
    if not args.quick and (args.only or args.skip or args.imports) and target.is_file():
        # A partial run replaces only its own benchmarks in the combined file and the docs.
        previous = json.loads(target.read_text(encoding="utf-8"))
        fresh = {r["name"] for r in results}
        kept = [r for r in previous.get("results", []) if r["name"] not in fresh]
        order = [b.name for b in benchmarks(args.soak_seconds)]
        combined["results"] = sorted(kept + results, key=lambda r: order.index(r["name"]))
    target.write_text(json.dumps(combined, indent=2) + "\n", encoding="utf-8")
    if not args.quick:
        update_doc(summary(combined["results"], about))
        print(f"\nwrote {target.relative_to(ROOT)} and the summary in docs/performance.md")
    failed = [r["name"] for r in results if r["failure"]]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
