"""The native verifier of key-signed bundles against model-signing: they must agree.

(And, issue 10, the native signer: its bundles are model-signing's, files and shards.)

Every case runs both verifiers on the same model and bundle — the native one
(:func:`verify_key_signed_model`) and the model-signing path of
:func:`verify_model_signature` — and compares pass/fail and the refusal reason. Cases the
native verifier is meant to decide must not fall back; cases it does not understand must
fall back (and then model-signing alone decides).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.controls import signing
from secmlops.controls.signing import (
    KeySigner,
    SignatureRefusal,
    sign_model,
    sign_model_with,
    verify_model_signature,
)
from secmlops.controls.signing_native import (
    NotNativelyVerifiable,
    pae,
    pae_compat,
    verify_key_signed_model,
)
from secmlops.errors import ControlRefused
from secmlops.evidence.statements import load_public_key

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model-signing"
UPSTREAM_KEY = FIXTURES / "keys" / "signing-key-pub.pem"
FALLBACK = "fallback"
Verdict = SignatureRefusal | str | None  # None = verified


@dataclass
class Case:
    """A model directory, its bundle, the trusted public key and (own models) the signer."""

    model: Path
    signature: Path
    public_key: Path
    private_key: ec.EllipticCurvePrivateKey | None
    tmp: Path


def native_verdict(case: Case) -> Verdict:
    try:
        verify_key_signed_model(
            case.model.resolve(),
            signature=case.signature,
            public_key=load_public_key(case.public_key),
        )
    except NotNativelyVerifiable:
        return FALLBACK
    except ControlRefused as exc:
        assert isinstance(exc.reason, SignatureRefusal)
        return exc.reason
    return None


def model_signing_verdict(case: Case) -> Verdict:
    try:
        signing._verify_with_model_signing(
            case.model,
            case.model.resolve(),
            signature=case.signature,
            public_key=case.public_key,
            trusted=load_public_key(case.public_key),
        )
    except ControlRefused as exc:
        assert isinstance(exc.reason, SignatureRefusal)
        return exc.reason
    return None


def public_verdict(case: Case) -> Verdict:
    try:
        verify_model_signature(case.model, signature=case.signature, public_key=case.public_key)
    except ControlRefused as exc:
        assert isinstance(exc.reason, SignatureRefusal)
        return exc.reason
    return None


# --- models ---------------------------------------------------------------------------------


def _write_key(tmp: Path, name: str, curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(curve)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / f"{name}.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp / f"{name}.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def own_model(tmp: Path, curve: ec.EllipticCurve | None = None) -> Case:
    """A model SecMLOps signs itself (``sign_model``), P-256 unless ``curve`` says."""
    key = _write_key(tmp, "signer", curve or ec.SECP256R1())
    model = tmp / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (model / "model.json").write_text('{"classes": [0, 1]}')
    (model / "sub" / "README.md").write_text("card\n")
    (model / "empty.bin").write_bytes(b"")
    sig = tmp / "out" / "model.sig"
    sign_model(model, private_key=tmp / "signer.pem", signature=sig)
    return Case(model, sig, tmp / "signer.pub", key, tmp)


def own_sharded_model(tmp: Path) -> Case:
    """A model SecMLOps signs with model-signing's sharded manifest (shards of 1000 bytes;
    no empty file: a shard manifest cannot list one)."""
    key = _write_key(tmp, "signer", ec.SECP256R1())
    model = tmp / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (model / "model.json").write_text('{"classes": [0, 1]}')
    (model / "sub" / "README.md").write_text("card\n")
    sig = tmp / "out" / "model.sig"
    signer = KeySigner.from_pem(tmp / "signer.pem")
    sign_model_with(model, signer=signer, signature=sig, shard_size=1000)
    return Case(model, sig, tmp / "signer.pub", key, tmp)


def upstream_model(tmp: Path, version: str) -> Case:
    """A model signed by an upstream model-signing release (no private key available)."""
    source = FIXTURES / version
    model = tmp / version
    model.mkdir()
    for name in ("signme-1", "signme-2"):
        shutil.copyfile(source / name, model / name)
    sig = tmp / "model.sig"
    shutil.copyfile(source / "model.sig", sig)
    return Case(model, sig, UPSTREAM_KEY, None, tmp)


SOURCES: dict[str, Callable[[Path], Case]] = {
    "own-p256": own_model,
    "own-p384": lambda tmp: own_model(tmp, ec.SECP384R1()),
    "own-p521": lambda tmp: own_model(tmp, ec.SECP521R1()),
    "own-p256-shards": own_sharded_model,
    "upstream-v1.0.1": lambda tmp: upstream_model(tmp, "v1.0.1-elliptic-key"),
    "upstream-v1.1.0": lambda tmp: upstream_model(tmp, "v1.1.0-elliptic-key"),
}


# --- tamperings -----------------------------------------------------------------------------


def _first_file(case: Case) -> Path:
    return sorted(p for p in case.model.rglob("*") if p.is_file() and p.stat().st_size)[0]


def _bundle(case: Case) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(case.signature.read_text())
    return data


def _write_bundle(case: Case, bundle: dict[str, Any]) -> None:
    case.signature.write_text(json.dumps(bundle))


def _statement(case: Case) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.b64decode(_bundle(case)["dsseEnvelope"]["payload"]))
    return data


def changed_byte(case: Case) -> None:
    path = _first_file(case)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def added_file(case: Case) -> None:
    (case.model / "backdoor.pkl").write_bytes(b"\x80\x04N.")


def added_git_file(case: Case) -> None:
    (case.model / ".gitignore").write_text("*\n")


def added_file_in_new_dir(case: Case) -> None:
    (case.model / "extra" / "deep").mkdir(parents=True)
    (case.model / "extra" / "deep" / "x.bin").write_bytes(b"x")


def removed_file(case: Case) -> None:
    _first_file(case).unlink()


def renamed_file(case: Case) -> None:
    path = _first_file(case)
    path.rename(path.with_name(path.name + ".renamed"))


def replaced_by_symlink(case: Case) -> None:
    path = _first_file(case)
    outside = case.tmp / "outside.bin"
    shutil.move(path, outside)
    path.symlink_to(outside)  # same bytes, now a link out of the model


def added_symlink(case: Case) -> None:
    (case.model / "link").symlink_to(_first_file(case))


def symlinked_dir(case: Case) -> None:
    (case.tmp / "elsewhere").mkdir()
    (case.model / "linked-dir").symlink_to(case.tmp / "elsewhere")


def signature_bytes_flipped(case: Case) -> None:
    bundle = _bundle(case)
    raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    _write_bundle(case, bundle)


def payload_edited(case: Case) -> None:
    """A resource digest changed in the payload, signature left as it was."""
    bundle = _bundle(case)
    statement = _statement(case)
    digest = statement["predicate"]["resources"][0]["digest"]
    statement["predicate"]["resources"][0]["digest"] = ("0" if digest[0] != "0" else "1") + digest[
        1:
    ]
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    _write_bundle(case, bundle)


def payload_truncated(case: Case) -> None:
    bundle = _bundle(case)
    bundle["dsseEnvelope"]["payload"] = bundle["dsseEnvelope"]["payload"][:-8] + "AAAAAAA="
    _write_bundle(case, bundle)


def other_key(case: Case) -> None:
    _write_key(case.tmp, "other", ec.SECP256R1())
    case.public_key = case.tmp / "other.pub"


def other_key_same_curve_as_upstream(case: Case) -> None:
    _write_key(case.tmp, "other384", ec.SECP384R1())
    case.public_key = case.tmp / "other384.pub"


def hint_changed(case: Case) -> None:
    bundle = _bundle(case)
    bundle["verificationMaterial"]["publicKey"]["hint"] = "ab" * 32
    _write_bundle(case, bundle)


def hint_removed(case: Case) -> None:
    bundle = _bundle(case)
    bundle["verificationMaterial"]["publicKey"].pop("hint", None)
    _write_bundle(case, bundle)


def malformed_json(case: Case) -> None:
    case.signature.write_text(case.signature.read_text()[:-5])


def not_json(case: Case) -> None:
    case.signature.write_text("not json at all")


def deeply_nested_json(case: Case) -> None:
    case.signature.write_text("[" * 100_000 + "]" * 100_000)


def keyid_not_a_string(case: Case) -> None:
    bundle = _bundle(case)
    bundle["dsseEnvelope"]["signatures"][0]["keyid"] = 0
    _write_bundle(case, bundle)


def wrong_payload_type(case: Case) -> None:
    bundle = _bundle(case)
    bundle["dsseEnvelope"]["payloadType"] = "application/json"
    _write_bundle(case, bundle)


def wrong_media_type(case: Case) -> None:
    bundle = _bundle(case)
    bundle["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.2"
    _write_bundle(case, bundle)


def no_signatures(case: Case) -> None:
    bundle = _bundle(case)
    bundle["dsseEnvelope"]["signatures"] = []
    _write_bundle(case, bundle)


def unknown_bundle_field(case: Case) -> None:
    bundle = _bundle(case)
    bundle["verificationMaterial"]["publicKey"]["extra"] = "x"
    _write_bundle(case, bundle)


def model_moved(case: Case) -> None:
    moved = case.tmp / "elsewhere" / "renamed"
    shutil.copytree(case.model, moved)
    case.model = moved


TAMPERINGS: dict[str, Callable[[Case], None]] = {
    "untouched": lambda case: None,
    "moved": model_moved,
    "changed-byte": changed_byte,
    "added-file": added_file,
    "added-git-file": added_git_file,
    "added-file-in-new-dir": added_file_in_new_dir,
    "removed-file": removed_file,
    "renamed-file": renamed_file,
    "replaced-by-symlink": replaced_by_symlink,
    "added-symlink": added_symlink,
    "symlinked-dir": symlinked_dir,
    "signature-bytes-flipped": signature_bytes_flipped,
    "payload-edited": payload_edited,
    "payload-truncated": payload_truncated,
    "other-key-p256": other_key,
    "other-key-p384": other_key_same_curve_as_upstream,
    "hint-changed": hint_changed,
    "hint-removed": hint_removed,
    "malformed-json": malformed_json,
    "not-json": not_json,
    "deeply-nested-json": deeply_nested_json,
    "wrong-payload-type": wrong_payload_type,
    # Not understood natively: model-signing alone decides.
    "wrong-media-type": wrong_media_type,
    "no-signatures": no_signatures,
    "unknown-bundle-field": unknown_bundle_field,
    "keyid-not-a-string": keyid_not_a_string,
}
FALLS_BACK = {"wrong-media-type", "no-signatures", "unknown-bundle-field", "keyid-not-a-string"}


@pytest.mark.parametrize("tampering", TAMPERINGS)
@pytest.mark.parametrize("source", SOURCES)
def test_native_agrees_with_model_signing(tmp_path: Path, source: str, tampering: str) -> None:
    case = SOURCES[source](tmp_path)
    if (
        tampering == "hint-changed"
        and "hint" not in _bundle(case)["verificationMaterial"]["publicKey"]
    ):
        pytest.skip("v1.0.1 bundles carry no key hint")
    TAMPERINGS[tampering](case)
    native = native_verdict(case)
    reference = model_signing_verdict(case)
    if tampering in FALLS_BACK:
        assert native == FALLBACK
    else:
        assert native == reference, f"native {native}, model-signing {reference}"
    assert public_verdict(case) == reference
    if tampering in {"untouched", "moved", "hint-removed"}:
        assert reference is None
    else:
        assert reference is not None


def test_expected_reasons(tmp_path: Path) -> None:
    """Spot checks that the agreed verdicts are the reasons a person expects."""
    expected = {
        "changed-byte": SignatureRefusal.CONTENT_MISMATCH,
        "added-file": SignatureRefusal.FILE_SET_MISMATCH,
        "added-git-file": SignatureRefusal.FILE_SET_MISMATCH,
        "removed-file": SignatureRefusal.FILE_SET_MISMATCH,
        "renamed-file": SignatureRefusal.FILE_SET_MISMATCH,
        "replaced-by-symlink": SignatureRefusal.SYMLINK_IN_MODEL,
        "symlinked-dir": SignatureRefusal.SYMLINK_IN_MODEL,
        "signature-bytes-flipped": SignatureRefusal.SIGNATURE_INVALID,
        "payload-edited": SignatureRefusal.SIGNATURE_INVALID,
        "other-key-p256": SignatureRefusal.WRONG_KEY,
        "hint-changed": SignatureRefusal.WRONG_KEY,
        "malformed-json": SignatureRefusal.MALFORMED_SIGNATURE,
        "wrong-payload-type": SignatureRefusal.MALFORMED_SIGNATURE,
    }
    for i, (tampering, reason) in enumerate(expected.items()):
        case = own_model(tmp_path / str(i))
        TAMPERINGS[tampering](case)
        assert native_verdict(case) is reason, tampering


# --- statements re-signed with the model's own key (only a key holder can make these) ------


def resign(
    case: Case,
    statement: dict[str, Any] | bytes,
    *,
    payload_type: str = "application/vnd.in-toto+json",
    compat: bool = False,
) -> None:
    """Replace the bundle's payload by ``statement``, validly signed with the model's key."""
    assert case.private_key is not None
    payload = statement if isinstance(statement, bytes) else json.dumps(statement).encode()
    digest = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}
    sig = case.private_key.sign(
        pae_compat(payload) if compat else pae(payload),
        ec.ECDSA(digest[case.private_key.curve.key_size]),
    )
    bundle = _bundle(case)
    bundle["dsseEnvelope"] = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": payload_type,
        "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
    }
    _write_bundle(case, bundle)


def _root_digest(resources: list[dict[str, str]]) -> str:
    h = hashlib.sha256()
    for r in resources:
        h.update(bytes.fromhex(r["digest"]))
    return h.hexdigest()


def _edit(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(statement: dict[str, Any]) -> None:
        statement[field] = value

    return edit


def _edit_serialization(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(statement: dict[str, Any]) -> None:
        statement["predicate"]["serialization"][key] = value

    return edit


def _subject_digest(statement: dict[str, Any]) -> None:
    statement["subject"][0]["digest"]["sha256"] = "0" * 64


def _consistent_wrong_digest(statement: dict[str, Any]) -> None:
    resources = statement["predicate"]["resources"]
    resources[0]["digest"] = "0" * 64
    statement["subject"][0]["digest"]["sha256"] = _root_digest(resources)


def _drop_resource(statement: dict[str, Any]) -> None:
    resources = statement["predicate"]["resources"]
    del resources[0]
    statement["subject"][0]["digest"]["sha256"] = _root_digest(resources)


def _reordered(statement: dict[str, Any]) -> None:
    resources = statement["predicate"]["resources"]
    resources.reverse()
    statement["subject"][0]["digest"]["sha256"] = _root_digest(resources)


def _ignore(*paths: str) -> Callable[[dict[str, Any]], None]:
    return _edit_serialization("ignore_paths", list(paths))


def _shards(statement: dict[str, Any]) -> None:
    statement["predicate"]["serialization"] = {
        "method": "shards",
        "hash_type": "sha256",
        "shard_size": 1000000,
        "allow_symlinks": False,
    }


def _uppercase_digest(statement: dict[str, Any]) -> None:
    resources = statement["predicate"]["resources"]
    resources[0]["digest"] = resources[0]["digest"].upper()


def _dot_slash_name(statement: dict[str, Any]) -> None:
    statement["predicate"]["resources"][0]["name"] = (
        "./" + statement["predicate"]["resources"][0]["name"]
    )


def _duplicate_resource(statement: dict[str, Any]) -> None:
    resources = statement["predicate"]["resources"]
    resources.append(dict(resources[0]))
    statement["subject"][0]["digest"]["sha256"] = _root_digest(resources)


STATEMENT_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], bool]] = {
    # name: (edit, natively decided)
    "resigned-unchanged": (lambda s: None, True),
    "wrong-statement-type": (_edit("_type", "https://in-toto.io/Statement/v0.1"), True),
    "wrong-predicate-type": (_edit("predicateType", "https://example.com/other"), True),
    "subject-digest-changed": (_subject_digest, True),
    "resource-digest-changed-consistently": (_consistent_wrong_digest, True),
    "resource-dropped": (_drop_resource, True),
    "resources-reordered": (_reordered, True),
    "ignore-paths-empty": (_ignore(), True),
    "ignore-paths-cover-a-file": (_ignore("sub"), True),
    "ignore-paths-unrelated": (_ignore("nothing-here", ".cache"), True),
    "compat-predicate-type": (_edit("predicateType", "https://model_signing/Digests/v0.1"), False),
    "shard-serialization": (_shards, False),
    "symlinks-allowed": (_edit_serialization("allow_symlinks", True), False),
    "other-hash-type": (_edit_serialization("hash_type", "blake2"), False),
    "uppercase-digest": (_uppercase_digest, False),
    "dot-slash-name": (_dot_slash_name, False),
    "duplicate-resource": (_duplicate_resource, False),
    "extra-statement-field": (_edit("extra", 1), False),
}


@pytest.mark.parametrize("name", STATEMENT_EDITS)
def test_resigned_statements_agree(tmp_path: Path, name: str) -> None:
    edit, native_decides = STATEMENT_EDITS[name]
    case = own_model(tmp_path)
    statement = _statement(case)
    edit(statement)
    resign(case, statement)
    native = native_verdict(case)
    reference = model_signing_verdict(case)
    if native_decides:
        assert native == reference, f"native {native}, model-signing {reference}"
    else:
        assert native == FALLBACK
    assert public_verdict(case) == reference


@pytest.mark.parametrize(
    ("name", "payload", "payload_type", "compat"),
    [
        ("payload-not-json", b"{not json", "application/vnd.in-toto+json", False),
        ("payload-type-other", None, "text/plain", False),
        ("compat-pae", None, "application/vnd.in-toto+json", True),
    ],
)
def test_resigned_envelopes_agree(
    tmp_path: Path, name: str, payload: bytes | None, payload_type: str, compat: bool
) -> None:
    case = own_model(tmp_path)
    resign(case, payload or _statement(case), payload_type=payload_type, compat=compat)
    native = native_verdict(case)
    assert native != FALLBACK
    assert native == model_signing_verdict(case) == public_verdict(case)
    assert (native is None) == (name == "compat-pae")


def test_ignored_paths_keep_model_signing_precedence(tmp_path: Path) -> None:
    """An ignored file that is present is refused (FILE_SET), but a changed signed file in
    the same model is reported first as model-signing reports it (CONTENT)."""
    case = upstream_model(tmp_path, "v1.1.0-elliptic-key")
    (case.model / "ignore-me").write_text("")
    assert native_verdict(case) is SignatureRefusal.FILE_SET_MISMATCH
    assert model_signing_verdict(case) is SignatureRefusal.FILE_SET_MISMATCH
    changed_byte(case)
    assert native_verdict(case) is SignatureRefusal.CONTENT_MISMATCH
    assert model_signing_verdict(case) is SignatureRefusal.CONTENT_MISMATCH


def test_signed_git_file_refused_like_model_signing(tmp_path: Path) -> None:
    """sign_model signs .git* files, but model-signing's verifier skips them: such a model
    never verifies, natively or not (a .git* file does not belong in a model)."""
    case = own_model(tmp_path)
    (case.model / ".gitattributes").write_text("* binary\n")
    sign_model(case.model, private_key=tmp_path / "signer.pem", signature=case.signature)
    assert native_verdict(case) is SignatureRefusal.FILE_SET_MISMATCH
    assert model_signing_verdict(case) is SignatureRefusal.FILE_SET_MISMATCH


@pytest.mark.parametrize("version", ["v1.0.1-certificate", "v1.1.0-certificate", "v1.1.0-sigstore"])
def test_other_bundle_kinds_fall_back(tmp_path: Path, version: str) -> None:
    source = FIXTURES / version
    model = tmp_path / "m"
    shutil.copytree(source, model, ignore=shutil.ignore_patterns("model.sig", "ignore-me"))
    case = Case(model, source / "model.sig", UPSTREAM_KEY, None, tmp_path)
    assert native_verdict(case) == FALLBACK


# --- the native path runs alone -------------------------------------------------------------

_NO_MODEL_SIGNING = textwrap.dedent(
    """
    import sys
    sys.modules["model_signing"] = None  # any import of model-signing now fails
    from pathlib import Path
    from secmlops.controls.signing import verify_model_signature
    from secmlops.errors import ControlRefused
    import secmlops.gate  # the deploy gate verifies signatures through the same function

    model, sig, pub = (Path(a) for a in sys.argv[1:4])
    verify_model_signature(model, signature=sig, public_key=pub)
    data = bytearray((model / "model.json").read_bytes())
    data[0] ^= 1
    (model / "model.json").write_bytes(bytes(data))
    try:
        verify_model_signature(model, signature=sig, public_key=pub)
    except ControlRefused as exc:
        print(exc.reason.value)
    else:
        print("VERIFIED A TAMPERED MODEL")
    """
)


def test_tampered_model_refused_without_model_signing(tmp_path: Path) -> None:
    """With model-signing unimportable, a good model verifies and a tampered one is refused:
    verification cannot have returned without the native check."""
    case = own_model(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [sys.executable, "-c", _NO_MODEL_SIGNING]
    argv += [str(case.model), str(case.signature), str(case.public_key)]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == SignatureRefusal.CONTENT_MISMATCH.value


def test_cli_verify_does_not_import_model_signing(tmp_path: Path) -> None:
    case = own_model(tmp_path)
    script = (
        "import sys\n"
        "from secmlops.cli import app\n"
        "try:\n"
        "    app(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "else:\n"
        "    code = 0\n"
        "print('model_signing' in sys.modules, code)\n"
    )
    argv = [sys.executable, "-c", script, "verify", str(case.model)]
    argv += ["--signature", str(case.signature), "--public-key", str(case.public_key)]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.stdout.strip().splitlines()[-1] == "False 0", proc.stdout + proc.stderr


# --- issue 10: native signing writes what model-signing writes ------------------------------


def _model_signing_bundle(model: Path, key: Path, sig: Path, shard_size: int | None) -> None:
    from model_signing import hashing
    from model_signing import signing as ms_signing

    config: Any = hashing.Config().set_ignored_paths(paths=[], ignore_git_paths=False)
    if shard_size is not None:
        config.use_shard_serialization(shard_size=shard_size)
    signer: Any = ms_signing.Config().set_hashing_config(config)
    signer.use_elliptic_key_signer(private_key=key).sign(model, sig)


@pytest.mark.parametrize("shard_size", [None, 1000])
def test_our_bundle_is_model_signings_bundle(tmp_path: Path, shard_size: int | None) -> None:
    """Same statement (subject, serialization, resources in order), same envelope and
    verification material; only the ECDSA signature bytes differ (randomised)."""
    case = own_sharded_model(tmp_path) if shard_size else own_model(tmp_path)
    reference = tmp_path / "reference.sig"
    _model_signing_bundle(case.model, tmp_path / "signer.pem", reference, shard_size)
    ours, theirs = _bundle(case), json.loads(reference.read_text())
    for bundle in (ours, theirs):
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = "..."
        bundle["dsseEnvelope"]["payload"] = json.loads(
            base64.b64decode(bundle["dsseEnvelope"]["payload"])
        )
    # model-signing writes shard_size as 1000.0 (a protobuf Struct number); we write 1000.
    assert ours == theirs
    assert list(ours) == list(theirs)  # field order too
    # The bundle framing and the statement's start, byte for byte.
    assert case.signature.read_text()[:300] == reference.read_text()[:300]


def test_model_signings_own_sharded_signature_verifies_natively(tmp_path: Path) -> None:
    """model-signing 1.1.1 cannot verify its own sharded signatures (shard_size comes back
    as a float, which range() refuses); the native verifier reads them."""
    case = own_sharded_model(tmp_path)
    _model_signing_bundle(case.model, tmp_path / "signer.pem", case.signature, 1000)
    serialization_args = _statement(case)["predicate"]["serialization"]
    assert serialization_args["shard_size"] == 1000.0
    assert isinstance(serialization_args["shard_size"], float)
    assert native_verdict(case) is None
    assert model_signing_verdict(case) is SignatureRefusal.MALFORMED_SIGNATURE  # its bug
    changed_byte(case)
    assert native_verdict(case) is SignatureRefusal.CONTENT_MISMATCH


SHARD_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "shard-size-zero": _edit_serialization("shard_size", 0),
    "shard-size-string": _edit_serialization("shard_size", "1000"),
    "shard-size-fraction": _edit_serialization("shard_size", 1000.5),
    "shard-size-other": _edit_serialization("shard_size", 999),
}


@pytest.mark.parametrize("name", SHARD_EDITS)
def test_odd_shard_manifests_are_not_decided_natively(tmp_path: Path, name: str) -> None:
    case = own_sharded_model(tmp_path)
    statement = _statement(case)
    SHARD_EDITS[name](statement)
    resign(case, statement)
    assert native_verdict(case) == FALLBACK
    assert public_verdict(case) is not None


def test_shard_bounds_must_be_model_signings(tmp_path: Path) -> None:
    """Resources re-cut into other shards (signed by the key holder) never match: the
    directory is re-hashed with the signed shard size."""
    case = own_sharded_model(tmp_path)
    statement = _statement(case)
    resources = statement["predicate"]["resources"]
    first = resources[0]
    path, start, end = first["name"].split(":")
    first["name"] = f"{path}:{start}:{int(end) - 1}"
    statement["subject"][0]["digest"]["sha256"] = _root_digest(resources)
    resign(case, statement)
    assert native_verdict(case) is SignatureRefusal.CONTENT_MISMATCH
