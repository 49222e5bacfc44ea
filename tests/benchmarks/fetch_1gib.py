"""Benchmark: `secmlops fetch` and `secmlops verify-stage` on a 1 GiB single-file model.

    .venv/bin/python tests/benchmarks/fetch_1gib.py [--size-mib 1024] [--runs 3] [--s3]

Builds a registry with :mod:`tests.integration.deploy_world` (real evidence, a real
model-signing signature, real approvals, promoted to production through the real gate) whose
model holds one safetensors file of ``--size-mib`` MiB, then measures, each in a child process:

- ``secmlops fetch churn --stage production DEST``: wall time and peak memory (the child's
  ``ru_maxrss``), against the machine's limit measured in the same run: sha256 of the same
  bytes with hashlib in 2 threads over 2 halves (hashlib releases the GIL), i.e. the fastest
  the 2 cores can hash the model once;
- ``secmlops verify-stage churn --stage production``: wall time and peak memory.

With ``--s3`` the registry is on a moto_server on 127.0.0.1 (started and stopped here).
The model file is written once and stays in the page cache: the figures are CPU-bound,
not disk-bound. Every command must exit 0, or the benchmark stops.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from secmlops.registry.stores import LocalRegistry, Registry, S3Registry  # noqa: E402
from tests.integration import deploy_world  # noqa: E402
from tests.unit import test_predicates as writers  # noqa: E402

MIB = 1 << 20


def write_safetensors(path: Path, size: int) -> None:
    """A valid safetensors file of ``size`` bytes: one U8 tensor (pseudo-random bytes)."""
    header = b""
    for _ in range(3):  # the header length shifts the tensor length: settle it
        n = size - 8 - len(header)
        header = json.dumps(
            {"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}, separators=(",", ":")
        ).encode()
        header += b" " * (-(8 + len(header)) % 8)
    n = size - 8 - len(header)
    block = os.urandom(64 * MIB)
    with path.open("wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header)
        left = n
        while left:
            chunk = block[: min(left, len(block))]
            fh.write(chunk)
            left -= len(chunk)


def hash_limit(path: Path, threads: int) -> float:
    """Seconds to sha256 the file's bytes (page-cached, mmapped) in ``threads`` threads over
    as many equal parts."""
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        size = len(view)
        bounds = [(size * i // threads, size * (i + 1) // threads) for i in range(threads)]

        def work(lo: int, hi: int) -> None:
            h = hashlib.sha256()
            for at in range(lo, hi, 16 * MIB):
                h.update(view[at : min(hi, at + 16 * MIB)])

        ts = [threading.Thread(target=work, args=b) for b in bounds]
        start = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        took = time.perf_counter() - start
        view.release()
    return took


#: Spawns the measured command and reports its exit code and ``ru_maxrss``. A forked child
#: starts with its parent's resident pages counted in its RSS (until it execs), so the
#: measured command is forked from this small process, never from the benchmark (which holds
#: the registry build's memory).
_WAIT4 = """
import os, sys
pid = os.fork()
if pid == 0:
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, file=sys.stderr)
"""


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in MiB) of one child process; stops on a non-zero exit."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-S", "-c", _WAIT4, *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - start
    code, maxrss = proc.stderr.strip().splitlines()[-1].split()
    if int(code) != 0:
        sys.exit(f"{' '.join(argv)} exited {code}:\n{proc.stderr}")
    return took, int(maxrss) // 1024  # Linux: KiB


def build_world(root: Path, store: Registry, size: int) -> deploy_world.World:
    """v1 (one ``size``-byte safetensors file + the writers' model.json) in production."""
    original = writers.provenance_statement  # type: ignore[attr-defined]

    def with_big_file(result: Any, **kw: Any) -> dict[str, Any]:
        write_safetensors(Path(result.model_dir) / "weights.safetensors", size)
        return original(result, **kw)

    writers.provenance_statement = with_big_file  # type: ignore[attr-defined]
    try:
        world = deploy_world.make_world(root, store)
        world.to_production(world.register())
    finally:
        writers.provenance_statement = original  # type: ignore[attr-defined]
    return world


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="registry on a local moto_server")
    args = parser.parse_args()
    size = args.size_mib * MIB
    root = Path(tempfile.mkdtemp(prefix="secmlops-fetch-bench-"))
    moto: subprocess.Popen[bytes] | None = None
    try:
        env = dict(os.environ)
        if args.s3:
            import boto3

            port = _free_port()
            moto = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "moto_server"),
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(port),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            endpoint = f"http://127.0.0.1:{port}"
            for var, value in (
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_DEFAULT_REGION", "us-east-1"),
                ("SECMLOPS_S3_ENDPOINT_URL", endpoint),
            ):
                os.environ[var] = value
            for _ in range(100):
                try:
                    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
                    break
                except Exception:
                    time.sleep(0.1)
            store: Registry = S3Registry("bench", "models", endpoint_url=endpoint)
        else:
            store = LocalRegistry(root / "registry")
        start = time.perf_counter()
        world = build_world(root, store, size)
        built = time.perf_counter() - start
        model_file = next(
            p
            for p in (root / "build-1" / "train" / "model").iterdir()
            if p.suffix == ".safetensors"
        )
        env = {
            **os.environ,
            "SECMLOPS_HOME": str(root / "home"),
            "SECMLOPS_REGISTRY": store.uri,
            "SECMLOPS_POLICY": str(world.policy_file()),
        }
        env.pop("SECMLOPS_KEYS", None)
        cli = str(Path(sys.executable).parent / "secmlops")
        rows: dict[str, list[tuple[float, int]]] = {"fetch": [], "verify-stage": []}
        limit2: list[float] = []
        limit1: list[float] = []
        for i in range(args.runs):
            limit2.append(hash_limit(model_file, 2))
            limit1.append(hash_limit(model_file, 1))
            dest = root / "serve" / f"current-{i}"
            dest.parent.mkdir(exist_ok=True)
            rows["fetch"].append(run_child([cli, "fetch", "churn", str(dest)], env))
            shutil.rmtree(dest)
            rows["verify-stage"].append(
                run_child([cli, "verify-stage", "churn", "--stage", "production"], env)
            )
        gib = size / (1 << 30)
        print(f"model: one safetensors file of {args.size_mib} MiB; registry {store.uri}")
        print(f"registry built through the real gate in {built:.1f} s; {args.runs} runs, medians")
        print(f"load average after: {os.getloadavg()}")
        l2, l1 = statistics.median(limit2), statistics.median(limit1)
        print(f"sha256 limit, 2 threads: {l2:.3f} s ({gib / l2:.2f} GiB/s)")
        print(f"sha256, 1 thread:        {l1:.3f} s ({gib / l1:.2f} GiB/s)")
        for name, got in rows.items():
            wall = statistics.median(t for t, _ in got)
            rss = max(r for _, r in got)
            print(
                f"{name:<13} wall {wall:.2f} s (min {min(t for t, _ in got):.2f}), "
                f"{wall / l2:.1f}x the 2-thread limit, peak RSS {rss} MiB"
            )
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
