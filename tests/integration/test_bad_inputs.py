"""Bad input to every CLI command: exit 2 and one sentence, never a traceback (issue 9).

A fuzz-style table: each row feeds one command a bad value (an empty string, a name with
'/', '\\n', '..', a leading '-', a very long string, a binary file where text is expected, a
directory where a file is expected and the reverse, a path that does not exist, a bogus enum
value) and asserts the exit code, that the error is one line (``bad input: ...``, then only
the indented ``where:`` / ``what to do:`` details) and that no "Traceback" is printed.

The CLI runs in this process (``secmlops.cli.main(argv)``, fast); a few rows also run the
installed console script, to check what a shell sees.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from secmlops.cli import app, main
from secmlops.evidence.statements import generate_keypair

SECMLOPS = Path(sys.executable).parent / "secmlops"
LONG = "a" * 5000
_LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) |^\d\d:\d\d:\d\d\.\d+ \| ")
_MESSAGE = re.compile(r"^(bad input|refused|tool failure): \S")
_DETAIL = re.compile(r"^  (reason|where|what to do): ")


@dataclass(frozen=True)
class World:
    """Real files of each kind the table hands to the commands."""

    root: Path
    model: Path  # a model directory (one JSON file)
    text: Path  # a small text file
    binary: Path  # random bytes
    empty_dir: Path
    key: Path  # a real EC private key (PEM)
    pub: Path  # its public key
    missing: Path  # does not exist
    registry: Path  # an (empty) registry directory


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad-inputs")
    model = root / "model"
    model.mkdir()
    (model / "weights.json").write_text('{"w": [1, 2, 3]}')
    text = root / "file.txt"
    text.write_text("just text\n")
    binary = root / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    empty_dir = root / "empty"
    empty_dir.mkdir()
    generate_keypair(root / "k.pem", root / "k.pub")
    registry = root / "registry"
    registry.mkdir()
    return World(
        root=root,
        model=model,
        text=text,
        binary=binary,
        empty_dir=empty_dir,
        key=root / "k.pem",
        pub=root / "k.pub",
        missing=root / "no" / "such" / "thing",
        registry=registry,
    )


@pytest.fixture
def cli(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[[list[str]], tuple[int, str, str]]]:
    """Run ``secmlops ARGV`` in-process with a fresh SECMLOPS_HOME; the environment the CLI
    sets from its options is restored afterwards."""
    saved = dict(os.environ)
    os.environ["SECMLOPS_HOME"] = str(tmp_path / "home")
    for var in ("SECMLOPS_REGISTRY", "SECMLOPS_KEYS", "SECMLOPS_POLICY", "PREFECT_API_URL"):
        os.environ.pop(var, None)

    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    try:
        yield run
    finally:
        os.environ.clear()
        os.environ.update(saved)


def assert_one_sentence(code: int, out: str, err: str, expected: int, argv: list[str]) -> None:
    shown = f"argv={argv!r}"[:300] + f"\nexit {code}\nstdout:\n{out[:2000]}\nstderr:\n{err[:3000]}"
    assert "Traceback" not in out + err, shown
    assert code == expected, shown
    lines = [line for line in err.splitlines() if line.strip() and not _LOG_LINE.match(line)]
    assert lines, f"no error message\n{shown}"
    assert _MESSAGE.match(lines[0]), f"first line is not one error sentence\n{shown}"
    for extra in lines[1:]:
        assert _DETAIL.match(extra), f"the error spans more than one line\n{shown}"


# (id, argv with {placeholders} filled from World, expected exit code)
# Pieces of the issue 10 rows (verify's trust options, sign --method certificate).
VSIG = ["verify", "{model}", "--signature", "{text}"]
VPUB = ["--public-key", "{pub}"]
VCHAIN = ["--certificate-chain", "{text}"]
KEYLESS_ID = ["--identity", "a@b", "--issuer", "https://x"]
SIGN_CERT = ["sign", "{model}", "--method", "certificate", "--key", "{key}"]

ROWS: list[tuple[str, list[str], int]] = [
    # --- global options ---
    ("global-registry-empty", ["--registry", "", "evidence", "m", "v1"], 2),
    ("global-registry-file", ["--registry", "{text}", "evidence", "m", "v1"], 2),
    ("global-registry-missing-verify-stage", ["--registry", "{missing}", "verify-stage", "m"], 2),
    ("global-keys-file", ["--keys", "{text}", "keygen"], 2),
    ("global-keys-empty", ["--keys", "", "keygen"], 2),
    ("global-policy-binary", ["--policy", "{binary}", "policy", "show"], 2),
    ("global-policy-dir", ["--policy", "{empty_dir}", "policy", "show"], 2),
    ("global-policy-empty", ["--policy", "", "policy", "show"], 2),
    ("global-endpoint-empty", ["--s3-endpoint-url", "", "evidence", "m", "v1"], 2),
    ("unknown-command", ["bogus-command"], 2),
    ("unknown-option", ["keygen", "--bogus"], 2),
    ("missing-argument", ["promote"], 2),
    # --- run (refused before any flow or server starts) ---
    ("run-approve-as-empty", ["run", "--approve-as", ""], 2),
    ("run-approve-as-newline", ["run", "--approve-as", "eve\n"], 2),
    ("run-approve-as-dotdot", ["run", "--approve-as", "../eve"], 2),
    ("run-approve-as-slash", ["run", "--approve-as", "a/b"], 2),
    ("run-approve-as-long", ["run", "--approve-as", LONG], 2),
    ("run-dataset-empty", ["run", "--dataset", ""], 2),
    ("run-dataset-unknown", ["run", "--dataset", "no-such-dataset"], 2),
    ("run-dataset-slash", ["run", "--dataset", "a/b"], 2),
    ("run-data-rev-empty", ["run", "--data-rev", ""], 2),
    ("run-data-rev-dash", ["run", "--data-rev=-rf"], 2),
    ("run-image-empty", ["run", "--image", ""], 2),
    ("run-registry-name-empty", ["run", "--registry-name", ""], 2),
    ("run-registry-file", ["run", "--registry", "{text}"], 2),
    # --- validate ---
    ("validate-missing", ["validate", "{missing}", "--schema", "ml.schema:ChurnDataset"], 2),
    ("validate-dir", ["validate", "{empty_dir}", "--schema", "ml.schema:ChurnDataset"], 2),
    ("validate-empty-path", ["validate", "", "--schema", "ml.schema:ChurnDataset"], 2),
    ("validate-schema-empty", ["validate", "{text}", "--schema", ""], 2),
    ("validate-schema-nocolon", ["validate", "{text}", "--schema", "nocolon"], 2),
    # --- scan-image ---
    ("scan-image-empty", ["scan-image", ""], 2),
    ("scan-image-missing-tar", ["scan-image", "/nonexistent.tar"], 2),
    ("scan-image-missing-relative", ["scan-image", "no/such/image.tar"], 2),
    ("scan-image-not-a-tar", ["scan-image", "{binary}"], 2),
    ("scan-image-not-oci-dir", ["scan-image", "{empty_dir}"], 2),
    ("scan-image-long", ["scan-image", LONG], 2),
    ("scan-image-newline", ["scan-image", "img\n:latest"], 2),
    ("scan-image-fail-on-bogus", ["scan-image", "{model}", "--fail-on", "BOGUS"], 2),
    ("scan-image-fail-on-empty", ["scan-image", "{model}", "--fail-on", ""], 2),
    ("scan-image-cache-file", ["scan-image", "{model}", "--trivy-cache", "{text}"], 2),
    # --- scan-model ---
    ("scan-model-empty", ["scan-model", ""], 2),
    ("scan-model-file", ["scan-model", "{text}"], 2),
    ("scan-model-missing", ["scan-model", "{missing}"], 2),
    # --- sign ---
    ("sign-key-dir", ["sign", "{model}", "--key", "{model}"], 2),
    ("sign-key-binary", ["sign", "{model}", "--key", "{binary}", "--signature", "{root}/o.sig"], 2),
    ("sign-key-missing", ["sign", "{model}", "--key", "{missing}"], 2),
    ("sign-model-file", ["sign", "{text}", "--key", "{key}"], 2),
    ("sign-model-empty", ["sign", "", "--key", "{key}"], 2),
    ("sign-signature-dir", ["sign", "{model}", "--key", "{key}", "--signature", "{empty_dir}"], 2),
    # --- verify ---
    (
        "verify-sig-dir",
        ["verify", "{model}", "--signature", "{empty_dir}", "--public-key", "{pub}"],
        2,
    ),
    (
        "verify-sig-missing",
        ["verify", "{model}", "--signature", "{missing}", "--public-key", "{pub}"],
        2,
    ),
    (
        "verify-pub-binary",
        ["verify", "{model}", "--signature", "{text}", "--public-key", "{binary}"],
        2,
    ),
    (
        "verify-model-missing",
        ["verify", "{missing}", "--signature", "{text}", "--public-key", "{pub}"],
        2,
    ),
    # verify: who is trusted (issue 10): exactly one method's options
    ("verify-no-signer", [*VSIG], 2),
    ("verify-two-methods", [*VSIG, "--public-key", "{pub}", "--certificate-chain", "{text}"], 2),
    ("verify-identity-without-issuer", [*VSIG, "--identity", "a@example.com"], 2),
    ("verify-issuer-without-identity", [*VSIG, "--issuer", "https://example.com"], 2),
    ("verify-identity-empty", [*VSIG, "--identity", "", "--issuer", "https://x"], 2),
    ("verify-issuer-newline", [*VSIG, "--identity", "a@b", "--issuer", "x\n"], 2),
    ("verify-trust-config-missing", [*VSIG, *KEYLESS_ID, "--trust-config", "{missing}"], 2),
    ("verify-trust-config-no-identity", [*VSIG, *VPUB, "--trust-config", "{text}"], 2),
    ("verify-chain-not-pem", [*VSIG, "--certificate-chain", "{text}"], 2),
    ("verify-chain-binary", [*VSIG, "--certificate-chain", "{binary}"], 2),
    ("verify-chain-dir", [*VSIG, "--certificate-chain", "{empty_dir}"], 2),
    ("verify-signed-at-bogus", [*VSIG, *VCHAIN, "--signed-at", "yesterday"], 2),
    ("verify-signed-at-no-zone", [*VSIG, *VCHAIN, "--signed-at", "2026-01-01T00:00:00"], 2),
    ("verify-signed-at-with-key", [*VSIG, *VPUB, "--signed-at", "2026-01-01T00:00:00Z"], 2),
    ("verify-signature-not-json", [*VSIG, *VPUB], 2),
    ("verify-signature-binary", ["verify", "{model}", "--signature", "{binary}", *VPUB], 2),
    # sign --method (issue 10)
    ("sign-method-bogus", ["sign", "{model}", "--method", "bogus", "--key", "{key}"], 2),
    ("sign-method-empty", ["sign", "{model}", "--method", "", "--key", "{key}"], 2),
    ("sign-key-method-no-key", ["sign", "{model}"], 2),
    ("sign-certificate-no-cert", [*SIGN_CERT], 2),
    (
        "sign-key-with-certificate",
        ["sign", "{model}", "--key", "{key}", "--certificate", "{text}"],
        2,
    ),
    ("sign-sigstore-with-key", ["sign", "{model}", "--method", "sigstore", "--key", "{key}"], 2),
    (
        "sign-certificate-not-pem",
        [*SIGN_CERT, "--certificate", "{text}", "--signature", "{root}/c.sig"],
        2,
    ),
    ("sign-certificate-missing", [*SIGN_CERT, "--certificate", "{missing}"], 2),
    # --- promote ---
    ("promote-stage-bogus", ["promote", "m", "v1", "--stage", "bogus"], 2),
    ("promote-stage-empty", ["promote", "m", "v1", "--stage", ""], 2),
    ("promote-model-slash", ["promote", "a/b", "v1", "--stage", "staging"], 2),
    ("promote-model-dotdot", ["promote", "..", "v1", "--stage", "staging"], 2),
    ("promote-model-newline", ["promote", "m\n", "v1", "--stage", "staging"], 2),
    ("promote-model-dash", ["promote", "--stage", "staging", "--", "-m", "v1"], 2),
    ("promote-model-long", ["promote", LONG, "v1", "--stage", "staging"], 2),
    ("promote-version-newline", ["promote", "m", "v1\n", "--stage", "staging"], 2),
    ("promote-version-empty", ["promote", "m", "", "--stage", "staging"], 2),
    ("promote-version-dotdot", ["promote", "m", "../v1", "--stage", "staging"], 2),
    (
        "promote-approve-as-empty",
        ["promote", "m", "v1", "--stage", "staging", "--approve-as", ""],
        2,
    ),
    (
        "promote-approve-as-newline",
        ["promote", "m", "v1", "--stage", "staging", "--approve-as", "eve\n"],
        2,
    ),
    (
        "promote-registry-missing",
        ["promote", "m", "v1", "--stage", "staging", "--registry", "{missing}"],
        2,
    ),
    (
        "promote-registry-file",
        ["promote", "m", "v1", "--stage", "staging", "--registry", "{text}"],
        2,
    ),
    # --- rollback ---
    ("rollback-stage-bogus", ["rollback", "m", "--stage", "bogus"], 2),
    ("rollback-model-empty", ["rollback", "", "--stage", "staging"], 2),
    ("rollback-to-version-empty", ["rollback", "m", "--stage", "staging", "--to-version", ""], 2),
    (
        "rollback-to-version-newline",
        ["rollback", "m", "--stage", "staging", "--to-version", "v1\n", "--registry", "{registry}"],
        2,
    ),
    (
        "rollback-registry-missing",
        ["rollback", "m", "--stage", "staging", "--registry", "{missing}"],
        2,
    ),
    # --- verify-stage ---
    ("verify-stage-registry-file", ["verify-stage", "m", "--registry", "{text}"], 2),
    ("verify-stage-registry-missing", ["verify-stage", "m", "--registry", "{missing}"], 2),
    ("verify-stage-model-newline", ["verify-stage", "m\n"], 2),
    ("verify-stage-model-empty", ["verify-stage", ""], 2),
    ("verify-stage-stage-bogus", ["verify-stage", "m", "--stage", "prod"], 2),
    ("verify-stage-keys-file", ["verify-stage", "m", "--keys", "{text}"], 2),
    # --- evidence ---
    ("evidence-version-newline", ["evidence", "m", "v1\n"], 2),
    ("evidence-version-empty", ["evidence", "m", ""], 2),
    ("evidence-version-dotdot", ["evidence", "m", "../v1"], 2),
    ("evidence-model-newline", ["evidence", "m\n", "v1"], 2),
    ("evidence-model-slash", ["evidence", "a/b", "v1"], 2),
    ("evidence-registry-missing", ["evidence", "m", "v1", "--registry", "{missing}"], 2),
    ("evidence-keys-file", ["evidence", "m", "v1", "--keys", "{text}"], 2),
    # --- keygen (issue 9: `--approver $'eve\n'` created approvers/eve\n.pem) ---
    ("keygen-approver-newline", ["keygen", "--keys", "{root}/k1", "--approver", "eve\n"], 2),
    ("keygen-approver-empty", ["keygen", "--keys", "{root}/k2", "--approver", ""], 2),
    ("keygen-approver-dotdot", ["keygen", "--keys", "{root}/k3", "--approver", "../eve"], 2),
    ("keygen-approver-upper", ["keygen", "--keys", "{root}/k4", "--approver", "Eve"], 2),
    ("keygen-approver-long", ["keygen", "--keys", "{root}/k5", "--approver", LONG], 2),
    ("keygen-keys-file", ["keygen", "--keys", "{text}"], 2),
    # --- approve ---
    ("approve-key-dir", ["approve", "run-1", "--key", "{empty_dir}", "--approve"], 2),
    ("approve-key-missing", ["approve", "run-1", "--key", "{missing}", "--approve"], 2),
    ("approve-as-empty", ["approve", "run-1", "--key", "{key}", "--approve", "--as", ""], 2),
    ("approve-as-newline", ["approve", "run-1", "--key", "{key}", "--approve", "--as", "eve\n"], 2),
    ("approve-run-id-empty", ["approve", "", "--key", "{key}", "--approve"], 2),
    ("approve-no-decision", ["approve", "run-1", "--key", "{key}"], 2),
    # --- policy / trust / audit ---
    ("policy-show-binary", ["policy", "show", "--policy", "{binary}"], 2),
    ("policy-show-missing", ["policy", "show", "--policy", "{missing}"], 2),
    ("trust-show-keys-file", ["trust", "show", "--keys", "{text}"], 2),
    ("trust-show-no-trust-root", ["trust", "show", "--keys", "{empty_dir}"], 2),
    ("audit-verify-model-newline", ["audit", "verify", "m\n"], 2),
    ("audit-verify-registry-missing", ["audit", "verify", "m", "--registry", "{missing}"], 2),
    ("audit-verify-registry-file", ["audit", "verify", "m", "--registry", "{text}"], 2),
    # --- revoke ---
    (
        "revoke-key-dir",
        ["revoke", "m", "--key", "{empty_dir}", "--reason", "r", "--version", "v1"],
        2,
    ),
    (
        "revoke-reason-empty",
        ["revoke", "m", "--key", "{key}", "--reason", "", "--version", "v1"],
        2,
    ),
    (
        "revoke-version-empty",
        ["revoke", "m", "--key", "{key}", "--reason", "r", "--version", ""],
        2,
    ),
    (
        "revoke-key-id-newline",
        ["revoke", "m", "--key", "{key}", "--reason", "r", "--key-id", "a" * 64 + "\n"],
        2,
    ),
    (
        "revoke-approval-newline",
        ["revoke", "m", "--key", "{key}", "--reason", "r", "--approval", "m/x.json\n"],
        2,
    ),
    ("revoke-nothing-chosen", ["revoke", "m", "--key", "{key}", "--reason", "r"], 2),
    (
        "revoke-as-empty",
        ["revoke", "m", "--key", "{key}", "--reason", "r", "--version", "v1", "--as", ""],
        2,
    ),
    (
        "revoke-registry-missing",
        [
            "revoke",
            "m",
            "--key",
            "{key}",
            "--reason",
            "r",
            "--version",
            "v1",
            "--registry",
            "{missing}",
        ],
        2,
    ),
]

FETCH_ROWS: list[tuple[str, list[str], int]] = [
    ("fetch-model-newline", ["fetch", "m\n", "{root}/dest1"], 2),
    ("fetch-model-slash", ["fetch", "a/b", "{root}/dest2"], 2),
    ("fetch-stage-bogus", ["fetch", "m", "{root}/dest3", "--stage", "bogus"], 2),
    ("fetch-registry-missing", ["fetch", "m", "{root}/dest4", "--registry", "{missing}"], 2),
    ("fetch-registry-file", ["fetch", "m", "{root}/dest5", "--registry", "{text}"], 2),
]


def _has_command(name: str) -> bool:
    return any(
        c.name == name or getattr(c.callback, "__name__", None) == name
        for c in app.registered_commands
    )


def _fill(argv: list[str], world: World) -> list[str]:
    values = {k: str(v) for k, v in vars(world).items()}
    return [arg.format(**values) if "{" in arg else arg for arg in argv]


ALL_ROWS = ROWS + (FETCH_ROWS if _has_command("fetch") else [])


@pytest.mark.parametrize(
    ("argv", "expected"), [(a, e) for _, a, e in ALL_ROWS], ids=[i for i, _, _ in ALL_ROWS]
)
def test_bad_input_is_one_sentence_and_the_right_exit_code(
    argv: list[str],
    expected: int,
    world: World,
    cli: Callable[[list[str]], tuple[int, str, str]],
) -> None:
    """issue 9 "names and inputs": every command answers bad input with exit 2 and one
    sentence, never a traceback or a multi-line dump."""
    filled = _fill(argv, world)
    code, out, err = cli(filled)
    assert_one_sentence(code, out, err, expected, filled)


def test_validation_error_is_one_line() -> None:
    """issue 9: `--fail-on BOGUS` printed pydantic's multi-line dump (input values, doc
    links); a ValidationError that reaches the CLI is now one sentence naming the field."""
    from pydantic import ValidationError

    from secmlops.cli import _validation_error_line
    from secmlops.controls.image_scan import ScanPolicy

    with pytest.raises(ValidationError) as info:
        ScanPolicy.model_validate({"fail_on": ["BOGUS"], "bogus_knob": 1})
    line = _validation_error_line(info.value)
    assert "\n" not in line
    assert "ScanPolicy" in line and "fail_on.0" in line and "bogus_knob" in line
    assert "'HIGH'" in line and "errors.pydantic.dev" not in line


def _console(env: dict[str, str], *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        [str(SECMLOPS), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_console_script_refuses_a_newline_name_and_writes_nothing(
    world: World, tmp_path: Path
) -> None:
    """issue 9: `keygen --approver $'eve\\n'` created approvers/eve\\n.pem (the name check used
    re.match with `$`). The shell's view: exit 2, one sentence, no key file."""
    env = {**os.environ, "SECMLOPS_HOME": str(tmp_path / "home")}
    env.pop("SECMLOPS_KEYS", None)
    keys = tmp_path / "keys"
    for argv in (
        ["keygen", "--keys", str(keys), "--approver", "eve\n"],
        ["--keys", str(world.text), "keygen"],
        ["sign", str(world.model), "--key", str(world.model)],
        ["--registry", str(world.missing), "verify-stage", "m"],
    ):
        code, out, err = _console(env, *argv)
        assert_one_sentence(code, out, err, 2, argv)
    assert not (keys / "approvers").exists() or not any((keys / "approvers").iterdir())


def test_scan_image_resolves_a_relative_path(tmp_path: Path) -> None:
    """issue 9: `scan-image` with a relative path failed (exit 3): Trivy runs in an empty
    temporary directory. The path is resolved before Trivy runs: a relative archive scans."""
    from secmlops.demo.serving_image import build_serving_image

    project = Path(__file__).resolve().parents[2]
    work = tmp_path / "work"
    work.mkdir()
    build_serving_image(work / "clean.tar", lock_file=project / "uv.lock")
    env = {**os.environ, "SECMLOPS_HOME": str(tmp_path / "home")}
    env["SECMLOPS_PROJECT_DIR"] = str(project)
    argv = ["scan-image", "clean.tar", "--trivy-cache", "cache", "--seed-demo-db"]
    code, out, err = _console(env, *argv, cwd=work)
    assert code == 0, err
    assert "PASSED" in out and str(work / "clean.tar") in out
