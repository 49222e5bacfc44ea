"""Load the gate policy (policy as code) from ``secmlops-policy.yaml``, signed by its owner.

The file is read where the flow runs (the worker's checkout), never taken from flow-run
parameters: whoever can start a run in the UI must not be able to weaken a gate. Whoever can
set ``SECMLOPS_POLICY``/``--policy`` must not be able to either, so the gate runs only under a
policy the **policy owner** signed, as in-toto runs only under a layout its owner signed: a
DSSE bundle (in-toto statement, predicate :data:`PREDICATE_POLICY`) whose subject is the
sha256 of the file's exact bytes, verified against the trust root's ``policy-owner`` keys,
with an expiry (the file's top-level ``expires:``, recorded in the statement too).

Where the signature lives:

- beside the policy, ``<policy>.sig`` (a site commits it with the policy);
- for the embedded demo only (no ``SECMLOPS_KEYS``): if there is no ``<policy>.sig``, under
  the state home, ``<home>/policy-signatures/<sha256 of the policy's path>.sig``. An
  unsigned policy is then signed there with the demo's own policy-owner key, with a warning.
  With site keys nothing is ever signed automatically.

An unsigned, edited, expired, empty or wrongly signed policy is refused (``ControlRefused``,
exit 1) with how to sign it: ``secmlops policy sign``.

Example::

    from secmlops.policy import load_gate_policy, sign_policy

    sign_policy(Path("secmlops-policy.yaml"), owner_key, expires=dt.date(2027, 1, 31))
    policy = load_gate_policy(Path("secmlops-policy.yaml"))   # verified, or ControlRefused
    print(policy.digest, policy.source.signer, policy.source.expires)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from secmlops._internal.atomic import write_atomic
from secmlops._internal.digests import sha256_bytes
from secmlops.errors import ControlRefused, InputError, RefusalReason
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import (
    EvidenceRefusal,
    Subject,
    TrustedKeys,
    has_subject,
    key_id,
    load_public_key,
    make_statement,
    sign_statement,
    utc_now,
    verify_bundle,
)
from secmlops.gate import GatePolicy, PolicyRef
from secmlops.settings import POLICY_FILE, Settings, current_settings

if TYPE_CHECKING:
    from secmlops.evidence.signers import Signer
    from secmlops.evidence.statements import SigningKey
    from secmlops.registry.models import ModelRegistry, StagePointer

log = logging.getLogger(__name__)

PREDICATE_POLICY = "https://secmlops.dev/attestation/policy/v1"
#: The trust root role whose keys may sign the policy.
OWNER_ROLE = "policy-owner"
SIGNATURE_SUFFIX = ".sig"
#: A policy that expires within this many days logs a warning each time it is loaded.
EXPIRY_WARNING_DAYS = 14


class PolicyRefusal(RefusalReason):
    """Why the policy file was refused (``ControlRefused.reason``)."""

    EMPTY_POLICY = "empty_policy"
    """The file holds no settings (it used to mean: built-in defaults)."""
    UNSIGNED_POLICY = "unsigned_policy"
    """No signature by a policy owner."""
    MALFORMED_SIGNATURE = "malformed_policy_signature"
    """The signature file is not a policy signature bundle."""
    UNTRUSTED_SIGNER = "untrusted_policy_signer"
    """Signed by a key the trust root does not list as a policy owner."""
    BAD_SIGNATURE = "bad_policy_signature"
    """The signature does not verify."""
    POLICY_CHANGED = "policy_changed_after_signing"
    """The file's bytes are not the ones the owner signed."""
    POLICY_EXPIRED = "policy_expired"
    """Past its ``expires:`` day."""
    NO_EXPIRY = "policy_without_expiry"
    """A site policy must expire."""
    DEMO_KEY = "demo_key_in_production"
    """A production policy signed by (or meant for) the embedded demo's keys."""


#: How a refused signature maps to a policy refusal; any other reason (a key outside its
#: validity window) is an untrusted signer.
_FROM_EVIDENCE = {
    EvidenceRefusal.MALFORMED_BUNDLE: PolicyRefusal.MALFORMED_SIGNATURE,
    EvidenceRefusal.NOT_A_STATEMENT: PolicyRefusal.MALFORMED_SIGNATURE,
    EvidenceRefusal.BAD_SIGNATURE: PolicyRefusal.BAD_SIGNATURE,
}


class PolicyPredicate(BaseModel):
    """``policy/v1``: who signed the policy (subject: the file's sha256), when, until when."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    owner: str
    signed_at: str = Field(alias="signedAt")
    #: The policy's ``expires:`` (ISO date), ``None`` only for the embedded demo.
    expires: dt.date | None
    environment: Literal["demo", "production"]


@dataclass(frozen=True)
class PolicyFile:
    """A policy file read once: its bytes, their sha256, and the validated settings."""

    path: Path
    raw: bytes
    sha256: str
    policy: GatePolicy


def policy_path() -> Path:
    """``$SECMLOPS_POLICY``, else ``secmlops-policy.yaml`` in the project root."""
    return current_settings().policy_file


def sign_command(path: Path) -> str:
    """The command that signs ``path`` (for messages)."""
    return f"secmlops policy sign --policy {path}"


def read_policy(path: Path) -> PolicyFile:
    """Read and validate a policy file (not its signature).

    ``InputError`` naming the file and field if it is missing or malformed;
    ``ControlRefused`` (``EMPTY_POLICY``) if it holds no settings at all.
    """
    if not path.is_file():
        raise InputError(
            f"policy file {path} does not exist",
            where=str(path),
            fix=f"create {POLICY_FILE} in the project root (see the template's copy) "
            "or point SECMLOPS_POLICY at one",
        )
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(
            f"policy file {path} is not a UTF-8 text file",
            where=str(path),
            fix="point --policy / SECMLOPS_POLICY at the YAML policy file",
        ) from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}", where=str(path)) from exc
    if data is None or data == {}:
        raise ControlRefused(
            f"policy file {path} is empty",
            where=str(path),
            fix="write the policy's settings (copy the project's secmlops-policy.yaml), "
            f"then sign it: `{sign_command(path)}`",
            reason=PolicyRefusal.EMPTY_POLICY,
        )
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: (top level): the policy must be a mapping of settings",
            where=str(path),
            fix="see the project's secmlops-policy.yaml",
        )
    try:
        policy = GatePolicy.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise InputError(
            f"{path}: {field}: {first['msg']}",
            where=f"{path}:{field}",
            fix="fix that field (unknown keys are refused; see docs/security-model.md)",
        ) from exc
    if "environment" not in data:
        raise InputError(
            f"{path}: environment: say which this policy is for, demo or production",
            where=f"{path}:environment",
            fix="add `environment: demo` (accepts the embedded demo's keys) or "
            "`environment: production`",
        )
    return PolicyFile(path=path, raw=raw, sha256=sha256_bytes(raw), policy=policy)


def demo_signature_path(path: Path, home: Path) -> Path:
    """Where the embedded demo keeps the signature of policy ``path`` (state home, never the
    checkout): ``<home>/policy-signatures/<sha256 of the absolute path>.sig``."""
    name = sha256_bytes(str(path.resolve()).encode())
    return home / "policy-signatures" / f"{name}{SIGNATURE_SUFFIX}"


def signature_path(path: Path, settings: Settings | None = None) -> Path:
    """Where the signature of ``path`` is read from: ``<policy>.sig`` if it exists or with
    site keys; else (embedded demo) the state home's copy."""
    settings = settings or current_settings()
    beside = _beside(path)
    if beside.exists() or not is_demo(settings):
        return beside
    return demo_signature_path(path, settings.paths.home)


def demo_key_ids(keys: KeyDirectory) -> frozenset[str]:
    """Key ids of the embedded demo's keys, which a production policy refuses.

    The trust root marks them (``demo: true``); every key in the embedded default's own key
    directory (``<home>/keys``, generated on first run) counts as demo too, whatever a trust
    root says about it: those private keys sit unencrypted beside the checkout.
    """
    ids: set[str] = set(keys.demo_key_ids())
    demo_dir = current_settings().paths.home / "keys"
    if demo_dir.is_dir():
        for public in demo_dir.rglob("*.pub"):
            try:
                ids.add(key_id(load_public_key(public)))
            except InputError:
                continue
    return frozenset(ids)


def _owner_trust(keys: KeyDirectory) -> TrustedKeys:
    try:
        trusted = keys.trusted(OWNER_ROLE)
    except InputError as exc:
        raise InputError(
            f"the trust root names no {OWNER_ROLE} key: {exc.message}",
            where=exc.where or str(keys.root),
            fix=f"add the policy owner's public key to the trust root ({keys.root})",
        ) from exc
    if not trusted:
        raise InputError(
            f"the trust root names no {OWNER_ROLE} key",
            where=str(keys.root),
            fix=f"add the policy owner's public key to the trust root ({keys.root})",
        )
    return trusted


def _refuse(
    path: Path, message: str, reason: PolicyRefusal, *, where: str, fix: str | None = None
) -> ControlRefused:
    return ControlRefused(
        f"policy {path}: {message}",
        where=where,
        fix=fix or f"have the policy owner review it and sign it: `{sign_command(path)}`",
        reason=reason,
    )


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def verify_policy_file(
    file: PolicyFile, signature: Path, keys: KeyDirectory, *, demo: bool
) -> PolicyRef:
    """Verify ``signature`` signs exactly ``file`` by a policy owner, unexpired; return who
    signed it. ``ControlRefused`` (a :class:`PolicyRefusal`) for anything that does not hold;
    ``demo``: the embedded default (a policy without ``expires:`` is accepted)."""
    path, policy = file.path, file.policy
    where = str(signature)
    if not signature.is_file():
        raise _refuse(
            path,
            f"not signed by a policy owner (no signature at {signature})",
            PolicyRefusal.UNSIGNED_POLICY,
            where=str(path),
            fix=f"have the policy owner review it and sign it: `{sign_command(path)}` "
            f"(writes {path.name}{SIGNATURE_SUFFIX}; commit it with the policy)",
        )
    try:
        bundle = json.loads(signature.read_bytes())
        if not isinstance(bundle, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise _refuse(
            path,
            f"{signature} is not a signature bundle",
            PolicyRefusal.MALFORMED_SIGNATURE,
            where=where,
        ) from exc
    trusted = _owner_trust(keys)
    try:
        st = verify_bundle(bundle, trusted, where=where)
    except ControlRefused as exc:
        reason = PolicyRefusal.UNTRUSTED_SIGNER
        if isinstance(exc.reason, EvidenceRefusal):
            reason = _FROM_EVIDENCE.get(exc.reason, reason)
        raise _refuse(
            path,
            f"signature does not verify with a {OWNER_ROLE} key: {exc.message}",
            reason,
            where=where,
        ) from exc
    if st.predicate_type != PREDICATE_POLICY:
        raise _refuse(
            path,
            f"{signature} is a {st.predicate_type} statement, not a policy signature",
            PolicyRefusal.MALFORMED_SIGNATURE,
            where=where,
        )
    if not has_subject(st.statement, file.sha256):
        signed = [s.get("digest", {}).get("sha256", "?") for s in st.statement["subject"]]
        raise _refuse(
            path,
            f"changed after it was signed (file sha256 {file.sha256[:12]}…, signed "
            f"{', '.join(str(d)[:12] + '…' for d in signed)})",
            PolicyRefusal.POLICY_CHANGED,
            where=str(path),
            fix=f"have the policy owner review the change and re-sign it: `{sign_command(path)}`",
        )
    try:
        predicate = PolicyPredicate.model_validate(st.predicate)
    except pydantic.ValidationError as exc:
        raise _refuse(
            path,
            f"{signature}: malformed policy predicate: {exc.errors()[0]['msg']}",
            PolicyRefusal.MALFORMED_SIGNATURE,
            where=where,
        ) from exc
    if predicate.expires != policy.expires or predicate.environment != policy.environment:
        raise _refuse(
            path,
            "the signature's expires/environment are not the file's",
            PolicyRefusal.MALFORMED_SIGNATURE,
            where=where,
        )
    if policy.expires is None and not demo:
        raise _refuse(
            path,
            "has no `expires:` (a site's policy must expire)",
            PolicyRefusal.NO_EXPIRY,
            where=f"{path}:expires",
            fix=f"set an expiry and re-sign: `{sign_command(path)} --days 90`",
        )
    if policy.expires is not None and _today() > policy.expires:
        raise _refuse(
            path,
            f"expired on {policy.expires.isoformat()}",
            PolicyRefusal.POLICY_EXPIRED,
            where=f"{path}:expires",
            fix=f"have the policy owner review it and re-sign it with a new expiry: "
            f"`{sign_command(path)} --days 90`",
        )
    if policy.environment == "production" and st.key_id in demo_key_ids(keys):
        raise _refuse(
            path,
            f"a production policy signed by the embedded demo's key {st.key_id[:16]}…",
            PolicyRefusal.DEMO_KEY,
            where=where,
            fix="sign it with the site's policy-owner key (SECMLOPS_KEYS / the trust root)",
        )
    return PolicyRef(
        path=str(path),
        sha256=file.sha256,
        signature=str(signature),
        signer=st.signer,
        key_id=st.key_id,
        owner=predicate.owner,
        signed_at=predicate.signed_at,
        expires=policy.expires.isoformat() if policy.expires else None,
        demo_signed=signature != _beside(path),
    )


def is_demo(settings: Settings) -> bool:
    """The embedded default: demo keys generated on first run and their own trust root (no
    ``SECMLOPS_KEYS``, no ``SECMLOPS_TRUST_ROOT``). Only then is a policy signed for you."""
    return settings.paths.demo_keys and settings.trust_root is None


def demo_owner_key(keys: KeyDirectory) -> Signer:
    """The embedded demo's policy-owner signer, its key (and the demo's others, and their
    trust root) generated on first use. Call only when :func:`is_demo`."""
    if not (keys.private(OWNER_ROLE).is_file() and keys.trust_root_file.is_file()):
        keys.ensure()
    return keys.signer(OWNER_ROLE)


def load_gate_policy(path: Path | None = None) -> GatePolicy:
    """Read, validate and verify the policy file; return it with :attr:`GatePolicy.source`.

    Refuses (``ControlRefused``, a :class:`PolicyRefusal`) an empty, unsigned, edited,
    expired or wrongly signed policy; ``InputError`` naming the file and field if malformed.
    The embedded demo (no ``SECMLOPS_KEYS``) signs an unsigned demo policy with its own
    policy-owner key, saying so; with site keys nothing is signed automatically.
    """
    settings = current_settings()
    path = path or settings.policy_file
    file = read_policy(path)
    keys = KeyDirectory(settings.paths.keys)
    demo = is_demo(settings)
    signature = signature_path(path, settings)
    if demo and not keys.trust_root_file.is_file():
        keys.ensure()  # the demo's keys and trust root, generated on first run
    if demo and not signature.exists() and signature != _beside(path):
        if file.policy.environment == "production":
            raise _refuse(
                path,
                "a production policy is never signed automatically",
                PolicyRefusal.DEMO_KEY,
                where=str(path),
                fix="set SECMLOPS_KEYS to the site's keys and have the policy owner sign it: "
                f"`{sign_command(path)}`",
            )
        _write_signature(file, demo_owner_key(keys), owner="embedded demo", out=signature)
        log.warning(
            "policy %s was not signed: the embedded demo signed it with its demo policy-owner "
            "key (signature %s). A site signs its policy with `secmlops policy sign`.",
            path,
            signature,
        )
    ref = verify_policy_file(file, signature, keys, demo=demo)
    if file.policy.expires is not None:
        left = (file.policy.expires - _today()).days
        if left < EXPIRY_WARNING_DAYS:
            log.warning(
                "policy %s expires on %s (%d days): have its owner re-sign it",
                path,
                file.policy.expires.isoformat(),
                left,
            )
    return file.policy.with_source(ref)


def _beside(path: Path) -> Path:
    return path.with_name(path.name + SIGNATURE_SUFFIX)


# --- signing ---------------------------------------------------------------------------------


def set_expiry(path: Path, expires: dt.date) -> None:
    """Write ``expires: <date>`` as the file's top-level ``expires:`` (replacing its value,
    keeping its comment; appended if absent). The rest of the file is left byte for byte."""
    text = path.read_text()
    line = f"expires: {expires.isoformat()}"
    new, count = re.subn(r"(?m)^expires:[ \t]*[^\s#]*", line, text)
    if count > 1:
        raise InputError(f"{path} has {count} top-level expires: lines", where=f"{path}:expires")
    if count == 0:
        new = text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"
    data = yaml.safe_load(new)
    if not isinstance(data, dict) or data.get("expires") != expires:
        raise InputError(
            f"could not set expires: in {path}",
            where=f"{path}:expires",
            fix=f"write `expires: {expires.isoformat()}` as a top-level line yourself",
        )
    write_atomic(path, new.encode(), mode=os.stat(path).st_mode & 0o777)


def policy_statement(file: PolicyFile, *, owner: str) -> dict[str, Any]:
    """The in-toto statement a policy owner signs: subject the file's sha256."""
    predicate = PolicyPredicate.model_validate(
        {
            "owner": owner,
            "signedAt": utc_now(),
            "expires": file.policy.expires,
            "environment": file.policy.environment,
        }
    )
    return make_statement(
        [Subject(file.path.name, file.sha256)],
        PREDICATE_POLICY,
        predicate.model_dump(mode="json", by_alias=True),
    )


def _write_signature(file: PolicyFile, key: SigningKey, *, owner: str, out: Path) -> Path:
    bundle = sign_statement(policy_statement(file, owner=owner), key)
    write_atomic(out, json.dumps(bundle, indent=2, sort_keys=True).encode() + b"\n")
    return out


def sign_policy(
    path: Path,
    key: SigningKey,
    *,
    owner: str = OWNER_ROLE,
    expires: dt.date | None = None,
    require_expiry: bool = True,
    out: Path | None = None,
) -> tuple[Path, PolicyFile]:
    """Sign policy ``path`` with a policy owner's ``key``; return (signature, what was signed).

    ``expires`` first rewrites the file's ``expires:`` (:func:`set_expiry`). A policy that
    does not expire is refused unless ``require_expiry`` is false (the embedded demo); an
    invalid one is never signed. The signature goes to ``out`` (default ``<policy>.sig``).
    """
    if expires is not None:
        if expires < _today():
            raise InputError(f"expiry {expires.isoformat()} is in the past", where="--expires")
        read_policy(path)  # never rewrite a file that is not a valid policy
        set_expiry(path, expires)
    file = read_policy(path)
    if file.policy.expires is None and require_expiry:
        raise InputError(
            f"{path} has no expires: date",
            where=f"{path}:expires",
            fix="give --days N or --expires YYYY-MM-DD (or set `expires:` in the file)",
        )
    if file.policy.expires is not None and file.policy.expires < _today():
        raise InputError(
            f"{path} expired on {file.policy.expires.isoformat()}",
            where=f"{path}:expires",
            fix="give a new expiry: --days N or --expires YYYY-MM-DD",
        )
    return _write_signature(file, key, owner=owner, out=out or _beside(path)), file


# --- status and drift ------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyStatus:
    """What ``secmlops policy show`` prints: the file, its signature, and whether it verifies."""

    path: Path
    sha256: str
    environment: str
    expires: str | None
    signature: Path
    source: PolicyRef | None
    problem: str | None
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "environment": self.environment,
            "expires": self.expires,
            "signature": str(self.signature),
            "signer": self.source.signer if self.source else None,
            "signerKeyId": self.source.key_id if self.source else None,
            "owner": self.source.owner if self.source else None,
            "signedAt": self.source.signed_at if self.source else None,
            "verified": self.problem is None,
            "problem": self.problem,
            "reason": self.reason,
        }


def policy_status(path: Path | None = None) -> PolicyStatus:
    """Verify the policy without signing anything (``problem`` says why it does not verify;
    an unsigned demo policy included: the demo signs it on first use)."""
    settings = current_settings()
    path = path or settings.policy_file
    file = read_policy(path)
    signature = signature_path(path, settings)
    problem: str | None = None
    reason: str | None = None
    ref: PolicyRef | None = None
    try:
        ref = verify_policy_file(
            file, signature, KeyDirectory(settings.paths.keys), demo=is_demo(settings)
        )
    except ControlRefused as exc:
        problem = exc.message
        if exc.reason is PolicyRefusal.UNSIGNED_POLICY and is_demo(settings):
            problem += " (the embedded demo signs it with its demo key on first use)"
        reason = exc.reason.value if exc.reason else None
    return PolicyStatus(
        path=path,
        sha256=file.sha256,
        environment=file.policy.environment,
        expires=file.policy.expires.isoformat() if file.policy.expires else None,
        signature=signature,
        source=ref,
        problem=problem,
        reason=reason,
    )


def vsa_policy_digest(models: ModelRegistry, pointer: StagePointer) -> str | None:
    """The policy digest recorded in the VSA a stage pointer names (read, not verified:
    call after :func:`secmlops.gate.verify_pointer_vsa`); ``None`` if it records none."""
    import base64

    try:
        bundle = json.loads(models.store.read(pointer.vsa))
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        digest = statement["predicate"]["policy"]["digest"]["sha256"]
    except (ControlRefused, KeyError, TypeError, ValueError):
        return None
    return digest if isinstance(digest, str) else None


def policy_drift(models: ModelRegistry, pointer: StagePointer, policy: GatePolicy) -> str | None:
    """A warning line when the stage's VSA was issued under another policy than the one in
    force; ``None`` when they are the same. Not a refusal: a re-signed policy must not
    strand deployed versions, and the gate re-judges them under the policy in force."""
    recorded = vsa_policy_digest(models, pointer)
    if recorded == policy.digest:
        return None
    was = f"policy sha256 {recorded[:12]}…" if recorded else "no recorded policy digest"
    now = policy.source.path if policy.source else "a policy built in code"
    return (
        f"{pointer.stage} was promoted to {pointer.version} under {was}; the policy in force "
        f"is {now} (sha256 {policy.digest[:12]}…), and the gate re-judged it under that one"
    )


__all__ = [
    "OWNER_ROLE",
    "PREDICATE_POLICY",
    "PolicyFile",
    "PolicyPredicate",
    "PolicyRefusal",
    "PolicyStatus",
    "demo_key_ids",
    "demo_owner_key",
    "demo_signature_path",
    "is_demo",
    "load_gate_policy",
    "policy_drift",
    "policy_path",
    "policy_status",
    "read_policy",
    "set_expiry",
    "sign_policy",
    "signature_path",
    "verify_policy_file",
    "vsa_policy_digest",
]
