"""Benchmark: `secmlops sign` / `verify` against the hashing limit and the model_signing CLI.

    .venv/bin/python tests/benchmarks/sign_1gib.py [--size-mib 1024] [--files 1000] [--runs 3]
        [--rows 16]

Two models of ``--size-mib`` MiB each: one file, and ``--files`` equal files. For each, in
the same run and on the same page-cached bytes, each command in a child process:

- the limit: sha256 of the same bytes with hashlib in 2 threads, each hashing half of the
  bytes (whole files for the many-file model; mmapped, no copy), and in 1 thread;
- ``secmlops sign MODEL --key K --signature S`` and ``secmlops verify`` (key, P-256);
- for the one-file model (and the 1-byte one, for the fixed cost) the same with
  ``--shard-size 256M`` (a ``shards`` manifest: every core hashes the one file, each byte
  once) and ``secmlops verify`` of that sharded signature;
- ``model_signing sign key`` and ``model_signing verify key`` on the same files;
- each command again on a 1-byte model: its fixed cost. Marginal = median wall minus the
  median fixed cost; the ratio is marginal / the 2-thread limit.

In-process (no fixed cost), for the one-file model: ``hash_model`` with the ``files``
manifest, with 256 MiB shards only (what ``--shard-size 256M`` hashes), and with 1 GB shards
plus whole-file digests (two hashes per byte: what the gate does for a sharded signature).

The models are written first, then the benchmark waits until they are older than
``model_hashing.RACY_WINDOW_NS`` (a model written within it is hashed a second time to catch
writes that leave ``stat`` unchanged; see that module). The load average is printed: other
work on the machine skews every figure, baselines included. Every command must exit 0.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from secmlops.controls import model_hashing  # noqa: E402
from secmlops.evidence.statements import generate_keypair  # noqa: E402

MIB = 1 << 20
BIN = Path(sys.executable).parent


def write_models(root: Path, size: int, files: int) -> dict[str, Path]:
    block = os.urandom(64 * MIB)
    one = root / "one-file"
    one.mkdir()
    with (one / "model.bin").open("wb") as fh:
        left = size
        while left:
            fh.write(block[: min(left, len(block))])
            left -= min(left, len(block))
    many = root / "many-files"
    (many / "shards").mkdir(parents=True)
    each = size // files
    for i in range(files):
        at = (i * 7919 * 4096) % (len(block) - each)
        (many / "shards" / f"part-{i:04}.bin").write_bytes(block[at : at + each])
    tiny = root / "one-byte"
    tiny.mkdir()
    (tiny / "b").write_bytes(b"x")
    return {"one file": one, f"{files} files": many, "1 byte": tiny}


def hash_limit(model: Path, threads: int) -> float:
    """Seconds to sha256 every byte of ``model`` (mmapped) in ``threads`` threads, each
    taking an equal share of the bytes (halves of one file, or half of the files)."""
    paths = sorted(p for p in model.rglob("*") if p.is_file())
    if len(paths) == 1:
        size = paths[0].stat().st_size
        work = [
            [(paths[0], size * i // threads, size * (i + 1) // threads)] for i in range(threads)
        ]
    else:
        work = [[(p, 0, p.stat().st_size) for p in paths[i::threads]] for i in range(threads)]

    def run(parts: list[tuple[Path, int, int]]) -> None:
        for path, lo, hi in parts:
            with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                h = hashlib.sha256()
                for at in range(lo, hi, 16 * MIB):
                    h.update(view[at : min(hi, at + 16 * MIB)])
                view.release()

    ts = [threading.Thread(target=run, args=(w,)) for w in work]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - start


def run_child(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return took


#: ``--shard-size`` of the sharded rows: 4 shards of a 1 GiB file for 2 cores.
SHARD = 256 * MIB


def commands(
    model: Path, out: Path, key: Path, pub: Path, *, sharded: bool
) -> dict[str, list[str]]:
    ours, theirs = str(BIN / "secmlops"), str(BIN / "model_signing")
    sig, ms_sig = str(out / f"{model.name}.sig"), str(out / f"{model.name}.ms.sig")
    shard_sig = str(out / f"{model.name}.shards.sig")
    extra = {
        "secmlops sign --shard-size": [
            ours, "sign", str(model), "--key", str(key), "--signature", shard_sig,
            "--shard-size", str(SHARD),
        ],
        "secmlops verify (shards)": [
            ours, "verify", str(model), "--signature", shard_sig, "--public-key", str(pub)
        ],
    } if sharded else {}  # fmt: skip
    return extra | {
        "secmlops sign": [ours, "sign", str(model), "--key", str(key), "--signature", sig],
        "secmlops verify": [
            ours, "verify", str(model), "--signature", sig, "--public-key", str(pub)
        ],
        "model_signing sign key": [
            theirs, "sign", "key", str(model), "--signature", ms_sig, "--private_key", str(key)
        ],
        "model_signing verify key": [
            theirs, "verify", "key", str(model), "--signature", ms_sig, "--public_key", str(pub)
        ],
    }  # fmt: skip


def in_process(fn: Callable[[], object], runs: int) -> float:
    took = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        took.append(time.perf_counter() - start)
    return statistics.median(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--rows",
        type=int,
        default=0,
        help="then, for the one-file model, this many interleaved in-process rows (limit 2 "
        "and 1 threads, files manifest, 256 MiB shards only), each printed: on a shared "
        "machine, the rows where both cores were free show what sharding buys",
    )
    args = parser.parse_args()
    size = args.size_mib * MIB
    root = Path(tempfile.mkdtemp(prefix="secmlops-sign-bench-"))
    try:
        key, pub = root / "keys" / "signer.pem", root / "keys" / "signer.pub"
        key.parent.mkdir()
        generate_keypair(key, pub)
        out = root / "sigs"
        out.mkdir()
        written = time.monotonic()
        models = write_models(root, size, args.files)
        wait = model_hashing.RACY_WINDOW_NS / 1e9 + 0.5 - (time.monotonic() - written)
        time.sleep(max(0.0, wait))  # older than the racy window: hashed once
        print(f"load average before: {os.getloadavg()}")
        walls: dict[str, dict[str, list[float]]] = {name: {} for name in models}
        limits: dict[str, dict[int, list[float]]] = {name: {1: [], 2: []} for name in models}
        for _ in range(args.runs):
            for name, model in models.items():
                for threads in (2, 1):
                    limits[name][threads].append(hash_limit(model, threads))
                sharded = name != f"{args.files} files"
                for label, argv in commands(model, out, key, pub, sharded=sharded).items():
                    walls[name].setdefault(label, []).append(run_child(argv))
        one = models["one file"]
        files_manifest = in_process(lambda: model_hashing.hash_model(one), args.runs)
        shards_only = in_process(
            lambda: model_hashing.hash_model(one, shard_size=SHARD, whole_files=False), args.runs
        )
        shards_manifest = in_process(
            lambda: model_hashing.hash_model(one, shard_size=model_hashing.DEFAULT_SHARD_SIZE),
            args.runs,
        )
        for row in range(args.rows):
            l2, l1 = hash_limit(one, 2), hash_limit(one, 1)
            f = in_process(lambda: model_hashing.hash_model(one), 1)
            sh = in_process(
                lambda: model_hashing.hash_model(one, shard_size=SHARD, whole_files=False), 1
            )
            print(
                f"row {row:2}: limit 2 threads {l2:.2f} s, 1 thread {l1:.2f} s, files "
                f"{f:.2f} s ({f / l2:.2f}x), shards only {sh:.2f} s ({sh / l2:.2f}x), "
                f"load {os.getloadavg()[0]:.1f}"
            )
        print(f"load average after: {os.getloadavg()}")
        fixed = {label: statistics.median(t) for label, t in walls["1 byte"].items()}
        print(f"\n{args.runs} runs, medians; models of {args.size_mib} MiB\n")
        print("fixed cost (1-byte model): " + ", ".join(f"{k} {v:.2f} s" for k, v in fixed.items()))
        for name in models:
            if name == "1 byte":
                continue
            l2 = statistics.median(limits[name][2])
            l1 = statistics.median(limits[name][1])
            print(f"\n{name}: sha256 limit 2 threads {l2:.3f} s, 1 thread {l1:.3f} s")
            for label, took in walls[name].items():
                wall = statistics.median(took)
                marginal = wall - fixed[label]
                print(
                    f"  {label:<25} wall {wall:6.2f} s  marginal {marginal:6.2f} s  "
                    f"= {marginal / l2:4.2f}x the 2-thread limit"
                )
        l2 = statistics.median(limits["one file"][2])
        print(
            f"\none file, in process: files manifest {files_manifest:.2f} s "
            f"({files_manifest / l2:.2f}x), shards of 256 MiB only {shards_only:.2f} s "
            f"({shards_only / l2:.2f}x), shards of 1 GB + whole-file digest "
            f"{shards_manifest:.2f} s ({shards_manifest / l2:.2f}x)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
