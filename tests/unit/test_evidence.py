import base64
import json
from pathlib import Path

import pytest

from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.statements import (
    PREDICATE_VULNS,
    Subject,
    TrustedKeys,
    generate_keypair,
    load_private_key,
    make_statement,
    sign_statement,
    verify_bundle,
)

DIGEST = "a" * 64


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    return tmp_path / "k.pem", tmp_path / "k.pub"


def test_sign_and_verify_round_trip(keypair: tuple[Path, Path]) -> None:
    st = make_statement([Subject("img", DIGEST)], PREDICATE_VULNS, {"n": 1})
    bundle = sign_statement(st, load_private_key(keypair[0]))
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    verified = verify_bundle(bundle, TrustedKeys.from_files([keypair[1]]))
    assert verified.statement == st
    assert verified.signer == "k"


def test_tampered_payload_is_refused(keypair: tuple[Path, Path]) -> None:
    st = make_statement([Subject("img", DIGEST)], PREDICATE_VULNS, {"passed": False})
    bundle = sign_statement(st, load_private_key(keypair[0]))
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["passed"] = True
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(ControlRefused, match="does not verify"):
        verify_bundle(bundle, TrustedKeys.from_files([keypair[1]]))


def test_untrusted_signer_is_refused(keypair: tuple[Path, Path], tmp_path: Path) -> None:
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    st = make_statement([Subject("img", DIGEST)], PREDICATE_VULNS, {})
    bundle = sign_statement(st, load_private_key(tmp_path / "other.pem"))
    with pytest.raises(ControlRefused, match="untrusted key"):
        verify_bundle(bundle, TrustedKeys.from_files([keypair[1]]))


def test_empty_trust_and_bad_subjects_are_input_errors(keypair: tuple[Path, Path]) -> None:
    st = make_statement([Subject("img", DIGEST)], PREDICATE_VULNS, {})
    with pytest.raises(InputError):
        verify_bundle(sign_statement(st, load_private_key(keypair[0])), TrustedKeys())
    with pytest.raises(InputError):
        make_statement([], PREDICATE_VULNS, {})
    with pytest.raises(InputError):
        make_statement([Subject("x", "nothex")], PREDICATE_VULNS, {})


def test_generate_keypair_refuses_to_overwrite(keypair: tuple[Path, Path]) -> None:
    with pytest.raises(InputError, match="overwrite"):
        generate_keypair(*keypair)
    assert oct(keypair[0].stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b["verificationMaterial"]["publicKey"].update(hint=[]),
        lambda b: b["dsseEnvelope"].update(signatures={}),
        lambda b: b["dsseEnvelope"].update(signatures=[]),
        lambda b: b["dsseEnvelope"].update(signatures=[{"sig": 5}]),
        lambda b: b["dsseEnvelope"].update(payload=None),
        lambda b: b.pop("dsseEnvelope"),
    ],
)
def test_malformed_bundles_are_refusals_not_crashes(keypair: tuple[Path, Path], mutate) -> None:  # type: ignore[no-untyped-def]
    st = make_statement([Subject("img", DIGEST)], PREDICATE_VULNS, {})
    bundle = sign_statement(st, load_private_key(keypair[0]))
    mutate(bundle)
    with pytest.raises(ControlRefused):
        verify_bundle(bundle, TrustedKeys.from_files([keypair[1]]))
