"""Benchmark: wall time of the `secmlops` verification commands on the demo artefacts.

Run after `make demo` (it needs the registry, keys and a pulled dataset in `.secmlops/`):

    .venv/bin/python tests/benchmarks/cli_latency.py [--project DIR] [--runs 7]

Each command runs ``--runs`` times in a row (after one warm-up run) beside ``python -c pass``
on the same interpreter; the table gives the median and the spread. ``--project`` points at
another checkout (e.g. an older commit's clone) to compare before and after on one machine.
Every command must exit 0, or the benchmark stops: a fast failure is not a measurement.

The load average is printed before and after (other work on the machine skews the times).
With ``PYTHONDONTWRITEBYTECODE`` set, modules installed without bytecode (``uv sync``
compiles none unless ``--compile-bytecode``/``UV_COMPILE_BYTECODE=1``) are compiled from
source on every run — typer and pandera among them, ~0.2 s per command: the benchmark says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _first(pattern: str, root: Path) -> Path:
    found = sorted(root.glob(pattern))
    if not found:
        sys.exit(f"nothing matches {root}/{pattern}: run `make demo` in {root.parent} first")
    return found[0]


def commands(project: Path) -> dict[str, list[str]]:
    """The measured commands, with paths to the demo artefacts of ``project``."""
    venv = project / ".venv" / "bin"
    cli = str(venv / "secmlops")
    state = project / ".secmlops"
    version = _first("registry/churn-classifier/versions/v1", state)
    dataset = _first("runs/*/data/churn.csv", state)
    schema_file = next(
        p for p in (project / "ml" / "schema.py", project / "tasks/schemas/churn.py") if p.exists()
    )
    return {
        "python -c pass": [str(venv / "python"), "-c", "pass"],
        "secmlops --help": [cli, "--help"],
        "secmlops scan-model": [cli, "scan-model", str(version / "model")],
        "secmlops verify": [
            cli,
            "verify",
            str(version / "model"),
            "--signature",
            str(version / "model.sig"),
            "--public-key",
            str(state / "keys" / "model-signer.pub"),
        ],
        "secmlops evidence": [cli, "evidence", "churn-classifier", "v1"],
        "secmlops verify-stage": [cli, "verify-stage", "churn-classifier", "--stage", "production"],
        "secmlops validate": [
            cli,
            "validate",
            str(dataset),
            "--schema",
            f"{schema_file}:ChurnDataset",
        ],
    }


def measure(argv: list[str], cwd: Path, runs: int) -> list[float]:
    """Wall times of ``runs`` runs (after one warm-up); exits if any run fails."""
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        if i:
            times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    project = args.project.resolve()
    print(f"project {project}, {args.runs} runs each (median, min-max in seconds)")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("PYTHONDONTWRITEBYTECODE is set: modules without cached bytecode compile every run")
    print(f"load average before: {_load()}\n")
    print("| command | median (s) | min-max (s) |\n| --- | ---: | ---: |")
    for name, argv in commands(project).items():
        times = measure(argv, project, args.runs)
        print(f"| `{name}` | {statistics.median(times):.2f} | {min(times):.2f}-{max(times):.2f} |")
    print(f"\nload average after: {_load()}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
