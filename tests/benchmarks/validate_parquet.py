"""Benchmark: `secmlops validate` on Parquet with a polars schema, at 1M / 10M / 30M rows.

    .venv/bin/python tests/benchmarks/validate_parquet.py [--rows 1000000 10000000 30000000]
        [--runs 1] [--pandas-max-rows 10000000] [--workdir /tmp/secmlops-bench-validate]
        [--format parquet|csv] [--json results.json]

Writes (once, with polars straight to Parquet) a dataset of 7 columns: ``customer_id``
(unique Int64), ``tenure_months``, ``monthly_charges``, ``total_charges``, ``contract``,
``internet_service``, ``churned``; and one schema module holding the same checks in both
pandera APIs: ranges, categories, uniqueness, a cross-column check (total charges fit the
monthly bill x tenure), not-null and dtype for every column, strict columns. Then measures,
each in its own child process (wall time, and peak memory as the child's own ``VmHWM`` from
``/proc/self/status``, read as it exits):

- ``secmlops validate DATA --schema bench_schema.py:BenchPolars`` (the polars backend);
- the same checks hand-written in polars on the same file (one lazy query over
  ``scan_parquet``; the columns' dtypes and names compared): uniqueness per row
  (``is_duplicated``, what pandera computes to name duplicate rows) and by count
  (``n_unique``), the latter also with the sha256 of the file that ``secmlops validate``
  records, and **tuned** (the sha256, and ``n_unique`` on polars' in-memory engine beside
  the rest as one streamed ``select``: how the gate itself counts, the fastest we found);
- ``secmlops validate DATA --schema bench_schema.py:BenchPandas`` (the pandas backend), up
  to ``--pandas-max-rows``.

Marginal time = time on the dataset minus time on a 1,000-row file of the same shape, per
command, measured in the same run. Runs are interleaved across commands; wall time is the
best of ``--runs`` (the figure least disturbed by other work on a shared machine), with the
median and the children's CPU time (user+sys) beside it. The load average is printed before
and after: the machine is shared, so compare figures of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TINY_ROWS = 1_000

SCHEMA = '''\
"""Benchmark schema: the same checks in pandera's polars and pandas APIs."""

import pandas as pd
import pandera.pandas as pd_pa
import pandera.polars as pa
import polars as pl

CONTRACTS = ["month-to-month", "one-year", "two-year"]
SERVICES = ["dsl", "fiber-optic", "none"]


class BenchPolars(pa.DataFrameModel):
    customer_id: int = pa.Field(unique=True, ge=0)
    tenure_months: int = pa.Field(ge=0, le=72)
    monthly_charges: float = pa.Field(ge=0.0, le=500.0)
    total_charges: float = pa.Field(ge=0.0)
    contract: str = pa.Field(isin=CONTRACTS)
    internet_service: str = pa.Field(isin=SERVICES)
    churned: int = pa.Field(isin=[0, 1])

    class Config:
        strict = True
        coerce = False
        name = "Bench"

    @pa.dataframe_check(name="total_charges_plausible")
    def total_charges_plausible(cls, data) -> pl.LazyFrame:
        expected = pl.col("monthly_charges") * pl.max_horizontal(pl.col("tenure_months"), 1)
        total = pl.col("total_charges")
        return data.lazyframe.select((total >= 0.75 * expected) & (total <= 1.25 * expected))


class BenchPandas(pd_pa.DataFrameModel):
    customer_id: int = pd_pa.Field(unique=True, ge=0)
    tenure_months: int = pd_pa.Field(ge=0, le=72)
    monthly_charges: float = pd_pa.Field(ge=0.0, le=500.0)
    total_charges: float = pd_pa.Field(ge=0.0)
    contract: str = pd_pa.Field(isin=CONTRACTS)
    internet_service: str = pd_pa.Field(isin=SERVICES)
    churned: int = pd_pa.Field(isin=[0, 1])

    class Config:
        strict = True
        coerce = False
        name = "Bench"

    @pd_pa.dataframe_check(name="total_charges_plausible")
    def total_charges_plausible(cls, df: pd.DataFrame) -> pd.Series:
        expected = df["monthly_charges"] * df["tenure_months"].clip(lower=1)
        return (df["total_charges"] >= 0.75 * expected) & (df["total_charges"] <= 1.25 * expected)
'''

# The hand-written baseline: the same checks as one lazy polars query on the same file.
HAND = """\
import hashlib, sys
from concurrent.futures import ThreadPoolExecutor
import polars as pl
path, do_hash, uniqueness = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
if do_hash:
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
expected_schema = {"customer_id": pl.Int64, "tenure_months": pl.Int64,
    "monthly_charges": pl.Float64, "total_charges": pl.Float64, "contract": pl.String,
    "internet_service": pl.String, "churned": pl.Int64}
lf = pl.scan_csv(path) if path.endswith(".csv") else pl.scan_parquet(path)
schema = dict(lf.collect_schema())
assert schema == expected_schema, schema
c = pl.col
expected = c("monthly_charges") * pl.max_horizontal(c("tenure_months"), 1)
dup = {
    "rows": c("customer_id").is_duplicated().sum(),  # per row: what names duplicate rows
    "count": pl.len() - c("customer_id").n_unique(),
    "tuned": None,  # n_unique on the in-memory engine, beside the streamed select
}[uniqueness]
rest = [
    (c("customer_id") < 0).sum().alias("id_ge"),
    ((c("tenure_months") < 0) | (c("tenure_months") > 72)).sum().alias("tenure"),
    ((c("monthly_charges") < 0) | (c("monthly_charges") > 500)).sum().alias("monthly"),
    (c("total_charges") < 0).sum().alias("total"),
    (~c("contract").is_in(["month-to-month", "one-year", "two-year"])).sum().alias("contract"),
    (~c("internet_service").is_in(["dsl", "fiber-optic", "none"])).sum().alias("service"),
    (~c("churned").is_in([0, 1])).sum().alias("churned"),
    (~((c("total_charges") >= 0.75 * expected) & (c("total_charges") <= 1.25 * expected)))
    .sum().alias("plausible"),
    *[c(n).null_count().alias(f"null_{n}") for n in expected_schema],
    pl.len().alias("rows"),
]
if dup is None:
    with ThreadPoolExecutor(2) as pool:
        distinct = pool.submit(
            lambda: lf.select(pl.len() - c("customer_id").n_unique()).collect(engine="in-memory")
        )
        out = lf.select(*rest).collect(engine="streaming")
        out = out.with_columns(dup=distinct.result().item())
else:
    out = lf.select(dup.alias("dup"), *rest).collect()
failing = {k: v for k, v in out.row(0, named=True).items() if k != "rows" and v}
assert not failing, failing
"""

# Runs a script or the CLI in this process and appends its VmHWM (kB) to a file at exit.
WRAPPER = """\
import atexit, runpy, sys
out = sys.argv[1]
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(out, "w").write(line.split()[1])
atexit.register(hwm)
if sys.argv[2] == "cli":
    from secmlops.cli import main
    rc = main(sys.argv[3:])
    sys.exit(rc)
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def generate(path: Path, rows: int) -> None:
    """The benchmark dataset: ``rows`` valid rows, written by polars straight to Parquet."""
    code = textwrap.dedent(
        f"""
        import numpy as np, polars as pl
        n = {rows}
        rng = np.random.default_rng(11)
        tenure = rng.integers(0, 73, n)
        monthly = np.round(rng.uniform(10, 200, n), 2)
        total = np.round(monthly * np.maximum(tenure, 1) * rng.uniform(0.8, 1.2, n), 2)
        pl.DataFrame({{
            "customer_id": np.arange(n, dtype=np.int64) * 7 + 1000,
            "tenure_months": tenure.astype(np.int64),
            "monthly_charges": monthly,
            "total_charges": total,
            "contract": pl.Series(np.array(["month-to-month", "one-year", "two-year"])[
                rng.integers(0, 3, n)]),
            "internet_service": pl.Series(np.array(["dsl", "fiber-optic", "none"])[
                rng.integers(0, 3, n)]),
            "churned": rng.integers(0, 2, n).astype(np.int64),
        }}).write_parquet({str(path)!r})
        """
    )
    subprocess.run([PYTHON, "-c", code], check=True)


def to_csv(parquet: Path, csv: Path) -> None:
    """The same rows as CSV (``--format csv``), written by polars."""
    code = f"import polars as pl; pl.scan_parquet({str(parquet)!r}).sink_csv({str(csv)!r})"
    subprocess.run([PYTHON, "-c", code], check=True)


def in_memory_mb(path: Path) -> float:
    """The dataset's size in memory (polars' estimate of the read frame), in MB."""
    read = "read_csv" if path.suffix == ".csv" else "read_parquet"
    code = f"import polars as pl; print(pl.{read}({str(path)!r}).estimated_size())"
    out = subprocess.run([PYTHON, "-c", code], check=True, capture_output=True, text=True)
    return int(out.stdout) / 1e6


def timed(args: list[str], workdir: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, VmHWM MB) of one child process; it must exit 0."""
    hwm = workdir / "hwm.txt"
    hwm.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, str(workdir / "wrapper.py"), str(hwm), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return seconds, cpu, int(hwm.read_text()) / 1024


def dataset(work: Path, rows: int, fmt: str) -> Path:
    """The ``rows``-row dataset in ``fmt``, generated on first use."""
    parquet = work / f"rows-{rows}.parquet"
    if not parquet.exists():
        start = time.perf_counter()
        generate(parquet, rows)
        print(f"generated {parquet} in {time.perf_counter() - start:.1f} s")
    if fmt == "parquet":
        return parquet
    csv = parquet.with_suffix(".csv")
    if not csv.exists():
        to_csv(parquet, csv)
    return csv


def commands(data: Path) -> dict[str, list[str]]:
    return {
        "secmlops validate (polars)": [
            "cli",
            "validate",
            str(data),
            "--schema",
            "bench_schema.py:BenchPolars",
        ],
        "hand-written polars (is_duplicated)": ["script", "hand.py", str(data), "0", "rows"],
        "hand-written polars (n_unique)": ["script", "hand.py", str(data), "0", "count"],
        "hand-written polars (n_unique) + sha256": [
            "script",
            "hand.py",
            str(data),
            "1",
            "count",
        ],
        "hand-written polars (n_unique tuned) + sha256": [
            "script",
            "hand.py",
            str(data),
            "1",
            "tuned",
        ],
        "secmlops validate (pandas)": [
            "cli",
            "validate",
            str(data),
            "--schema",
            "bench_schema.py:BenchPandas",
        ],
    }


def measure(cmds: dict[str, list[str]], workdir: Path, runs: int) -> dict[str, dict[str, float]]:
    """Each command ``runs`` times, interleaved (A B C A B C ...) so that a burst of load
    from elsewhere hits all of them alike; wall time as min and median, CPU time median."""
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, args in cmds.items():
            samples[name].append(timed(args, workdir))
    return {
        name: {
            "seconds": min(s for s, _, _ in got),
            "median": statistics.median(s for s, _, _ in got),
            "max": max(s for s, _, _ in got),
            "cpu": statistics.median(c for _, c, _ in got),
            "vmhwm_mb": max(m for _, _, m in got),
        }
        for name, got in samples.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000, 30_000_000])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--pandas-max-rows", type=int, default=10_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/secmlops-bench-validate"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--format", choices=["parquet", "csv"], default="parquet", help="dataset file format"
    )
    opts = parser.parse_args()
    work: Path = opts.workdir
    work.mkdir(parents=True, exist_ok=True)
    (work / "bench_schema.py").write_text(SCHEMA)
    (work / "hand.py").write_text(HAND)
    (work / "wrapper.py").write_text(WRAPPER)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")

    results: dict[str, Any] = {"load_before": load_before, "sizes": {}}
    tiny = dataset(work, TINY_ROWS, opts.format)
    fixed = measure(commands(tiny), work, max(opts.runs, 3))
    results["fixed"] = fixed
    for name, m in fixed.items():
        print(
            f"fixed cost  {name:38s} {m['seconds']:6.2f} s (median {m['median']:.2f}, cpu "
            f"{m['cpu']:.2f})  VmHWM {m['vmhwm_mb']:7.0f} MB"
        )

    for rows in opts.rows:
        data = dataset(work, rows, opts.format)
        size_mb = in_memory_mb(data)
        entry: dict[str, Any] = {
            "file_mb": data.stat().st_size / 1e6,
            "in_memory_mb": size_mb,
            "commands": {},
        }
        cmds = {
            name: args
            for name, args in commands(data).items()
            if "pandas" not in name or rows <= opts.pandas_max_rows
        }
        for name, m in measure(cmds, work, opts.runs).items():
            m["marginal"] = m["seconds"] - fixed[name]["seconds"]
            m["marginal_cpu"] = m["cpu"] - fixed[name]["cpu"]
            entry["commands"][name] = m
            print(
                f"{rows:>11,} rows  {name:38s} {m['seconds']:6.2f} s (median {m['median']:.2f}; "
                f"marginal {m['marginal']:5.2f} s, cpu {m['marginal_cpu']:5.2f} s)  VmHWM "
                f"{m['vmhwm_mb']:5.0f} MB ({m['vmhwm_mb'] / size_mb:.2f}x data {size_mb:.0f} MB)"
            )
        ours = entry["commands"]["secmlops validate (polars)"]["marginal"]
        for base in entry["commands"]:
            if base.startswith("hand-written"):
                ratio = ours / entry["commands"][base]["marginal"]
                print(f"{'':18s} validate (polars) / {base}: {ratio:.2f}x (target <= 1.3x)")
        if "secmlops validate (pandas)" in entry["commands"]:
            pandas = entry["commands"]["secmlops validate (pandas)"]["marginal"]
            print(f"{'':18s} pandas backend / polars backend: {pandas / ours:.1f}x (target >= 5x)")
        results["sizes"][rows] = entry
    load_after = os.getloadavg()
    results["load_after"] = load_after
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
