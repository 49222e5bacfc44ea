"""The trust root: which public keys each role and each approver may sign with, and when.

One YAML file, the only place verification takes keys from (private keys are never needed
to verify anything)::

    version: 1
    roles:
      gate:
        - public_key: |
            -----BEGIN PUBLIC KEY-----
            ...
          key_id: 3f2a...            # sha256 of the DER public key (checked if given)
          not_before: 2025-01-01T00:00:00Z   # optional
          not_after: 2026-01-01T00:00:00Z    # optional: retired after this
          demo: false
    approvers:
      alice:
        - public_key: |
            ...

Roles: ``policy-owner`` (signs the policy), ``attestor`` (build evidence), ``model-signer``
(the model), ``gate`` (VSAs, stage pointers). Several keys per role may be valid at once
(rotation: add the new key, then retire the old one with ``not_after``); a signature counts
when its key was valid at the statement's signed time. One key listed for two roles, for a
role and an approver, or for two approvers is refused: that is one person or machine
holding two duties.

Location: ``SECMLOPS_TRUST_ROOT``, default ``<keys>/trust-root.yaml``. The embedded demo
writes it from the demo keys it generates (each ``demo: true``; a production policy refuses
those); a site provides its own and it is never generated.

Example::

    root = TrustRoot.load(Path("trust-root.yaml"))
    statement = verify_bundle(bundle, root.trusted("gate"))
    root.with_key("gate", new_public).retire("gate", old_id, at=now).save()
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.errors import InputError
from secmlops.evidence.statements import (
    KeyWindow,
    PublicKey,
    TrustedKeys,
    format_time,
    key_id,
    parse_time,
)

#: The pipeline roles a trust root lists keys for.
TRUST_ROLES = ("policy-owner", "attestor", "model-signer", "gate")
TRUST_ROOT_FILE = "trust-root.yaml"
APPROVER_PREFIX = "approver:"
_FIELDS = {"public_key", "key_id", "not_before", "not_after", "demo", "source"}


def subject_label(subject: str) -> str:
    """How messages name a subject: ``role gate`` / ``approver alice``."""
    if subject.startswith(APPROVER_PREFIX):
        return f"approver {subject[len(APPROVER_PREFIX) :]}"
    return f"role {subject}"


def public_pem(key: PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass(frozen=True)
class TrustEntry:
    """One accepted public key of one subject (a role, or ``approver:NAME``)."""

    subject: str
    public_key: PublicKey
    window: KeyWindow = field(default_factory=KeyWindow)
    demo: bool = False
    #: Where the key is held, for people (``kms:alias/x``, a file name); never trusted.
    source: str = ""

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def valid_at(self, when: dt.datetime) -> bool:
        return self.window.contains(when)

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key_id": self.key_id, "public_key": public_pem(self.public_key)}
        if self.window.not_before:
            out["not_before"] = format_time(self.window.not_before)
        if self.window.not_after:
            out["not_after"] = format_time(self.window.not_after)
        out["demo"] = self.demo
        if self.source:
            out["source"] = self.source
        return out


def _bad(path: Path, what: str, fix: str = "") -> InputError:
    return InputError(
        f"trust root {path}: {what}",
        where=str(path),
        fix=fix or "correct the trust root (`secmlops trust show` lists what it holds)",
    )


def _parse_entry(path: Path, subject: str, i: int, raw: Any) -> TrustEntry:
    where = f"{subject_label(subject)} key #{i + 1}"
    if not isinstance(raw, Mapping):
        raise _bad(path, f"{where} is not a mapping")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise _bad(path, f"{where} has unknown fields {sorted(unknown)}")
    pem = raw.get("public_key")
    if not isinstance(pem, str):
        raise _bad(path, f"{where} has no public_key (a PEM public key)")
    try:
        public = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise _bad(path, f"{where}: public_key is not a PEM public key ({exc})") from exc
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise _bad(path, f"{where}: public_key is not an ECDSA P-256 key")
    given = raw.get("key_id")
    if given is not None and given != key_id(public):
        raise _bad(path, f"{where}: key_id {given} is not the id of its public_key")
    bounds: dict[str, dt.datetime | None] = {}
    for name in ("not_before", "not_after"):
        value = raw.get(name)
        bounds[name] = None if value is None else parse_time(value)
        if value is not None and bounds[name] is None:
            raise _bad(path, f"{where}: {name} {value!r} is not an ISO 8601 time")
    window = KeyWindow(bounds["not_before"], bounds["not_after"])
    if window.not_before and window.not_after and window.not_after < window.not_before:
        raise _bad(path, f"{where}: not_after is before not_before")
    demo = raw.get("demo", False)
    if not isinstance(demo, bool):
        raise _bad(path, f"{where}: demo must be true or false")
    source = raw.get("source", "")
    return TrustEntry(subject, public, window, demo, str(source or ""))


@dataclass(frozen=True)
class TrustRoot:
    """The accepted public keys per role and per approver (see module docstring)."""

    path: Path
    entries: tuple[TrustEntry, ...] = ()

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for entry in self.entries:
            other = seen.get(entry.key_id)
            if other is not None:
                raise InputError(
                    f"one key ({entry.key_id[:16]}…) is listed for {subject_label(other)} and "
                    f"for {subject_label(entry.subject)}"
                    + (" twice" if other == entry.subject else ""),
                    where=str(self.path),
                    fix="give each role and each approver a key of its own: one key holding "
                    "two duties defeats their separation",
                )
            seen[entry.key_id] = entry.subject

    # --- reading ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> TrustRoot:
        """Read and check the trust root at ``path``; ``InputError`` naming what is wrong."""
        import yaml

        try:
            text = path.read_text()
        except FileNotFoundError as exc:
            raise InputError(
                f"no trust root at {path}",
                where=str(path),
                fix="provide the site's trust root (SECMLOPS_TRUST_ROOT, or trust-root.yaml "
                "in the key directory; `secmlops trust add-key ROLE PUB.pem` writes one), or "
                "run `secmlops keygen` for demo keys",
            ) from exc
        except OSError as exc:
            raise InputError(
                f"cannot read trust root {path}: {exc.strerror}", where=str(path)
            ) from exc
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise _bad(path, f"not YAML ({exc})") from exc
        if not isinstance(raw, Mapping):
            raise _bad(path, "is empty or not a mapping (version, roles, approvers)")
        unknown = set(raw) - {"version", "roles", "approvers"}
        if unknown or raw.get("version") != 1:
            raise _bad(path, f"needs version: 1 and only roles/approvers (got {sorted(raw)})")
        entries: list[TrustEntry] = []
        for section, prefix in (("roles", ""), ("approvers", APPROVER_PREFIX)):
            listed = raw.get(section) or {}
            if not isinstance(listed, Mapping):
                raise _bad(path, f"{section} is not a mapping of names to key lists")
            for name, keys in listed.items():
                subject = f"{prefix}{name}"
                _check_subject(subject, where=str(path))
                if not isinstance(keys, list):
                    raise _bad(path, f"{subject_label(subject)} is not a list of keys")
                entries += [_parse_entry(path, subject, i, k) for i, k in enumerate(keys)]
        return cls(path, tuple(entries))

    def subjects(self) -> list[str]:
        """Every subject with a key, roles first (in :data:`TRUST_ROLES` order)."""
        present = {e.subject for e in self.entries}
        roles = [r for r in TRUST_ROLES if r in present]
        return roles + sorted(s for s in present if s.startswith(APPROVER_PREFIX))

    def entries_for(self, subject: str) -> list[TrustEntry]:
        return [e for e in self.entries if e.subject == subject]

    def entry(self, kid: str) -> TrustEntry | None:
        """The entry of key id ``kid`` (each key belongs to one subject)."""
        return next((e for e in self.entries if e.key_id == kid), None)

    def trusted(self, role: str) -> TrustedKeys:
        """Role ``role``'s keys, each with its window; ``InputError`` if it lists none."""
        _check_subject(role, where=str(self.path))
        trusted = TrustedKeys()
        for entry in self.entries_for(role):
            trusted.add(role, entry.public_key, entry.window)
        if not trusted:
            raise InputError(
                f"trust root {self.path} lists no key for {subject_label(role)}",
                where=str(self.path),
                fix=f"add one: `secmlops trust add-key {role} PUB.pem`",
            )
        return trusted

    def trusted_approvers(self, names: Iterable[str]) -> TrustedKeys:
        """The named approvers' keys (named by approver). An approver the trust root does not
        list is left out: nothing they sign verifies, so their decisions do not count."""
        trusted = TrustedKeys()
        for name in names:
            for entry in self.entries_for(f"{APPROVER_PREFIX}{name}"):
                trusted.add(name, entry.public_key, entry.window)
        return trusted

    def trusted_all(self) -> TrustedKeys:
        """Every key: roles named by role, approvers ``approver:NAME`` (for the report)."""
        trusted = TrustedKeys()
        for entry in self.entries:
            trusted.add(entry.subject, entry.public_key, entry.window)
        return trusted

    def is_demo_key(self, kid: str) -> bool:
        """Is ``kid`` a demo key (generated by the embedded default, ``demo: true``)?"""
        entry = self.entry(kid)
        return entry is not None and entry.demo

    def demo_key_ids(self) -> frozenset[str]:
        return frozenset(e.key_id for e in self.entries if e.demo)

    def role_key_ids(self) -> dict[str, str]:
        """Key id -> role, for every pipeline role key (no approver may sign with one)."""
        return {e.key_id: e.subject for e in self.entries if e.subject in TRUST_ROLES}

    # --- changing -----------------------------------------------------------------------

    def with_key(
        self,
        subject: str,
        public: PublicKey,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        demo: bool = False,
        source: str = "",
    ) -> TrustRoot:
        """A copy listing ``public`` for ``subject`` too (``InputError`` if any subject
        already lists it)."""
        _check_subject(subject, where=str(self.path))
        entry = TrustEntry(subject, public, KeyWindow(not_before, not_after), demo, source)
        window = entry.window
        if window.not_before and window.not_after and window.not_after < window.not_before:
            raise InputError(
                "not_after is before not_before", where=str(self.path), fix="swap them"
            )
        return replace(self, entries=(*self.entries, entry))

    def retire(self, subject: str, kid: str, *, at: dt.datetime) -> TrustRoot:
        """A copy where ``subject``'s key ``kid`` (a unique prefix will do) is valid until
        ``at`` only. Its earlier signatures keep verifying; later ones do not."""
        matches = [e for e in self.entries_for(subject) if e.key_id.startswith(kid.lower())]
        if len(kid) < 8 or len(matches) != 1:
            listed = ", ".join(e.key_id[:16] for e in self.entries_for(subject)) or "none"
            raise InputError(
                f"{subject_label(subject)} has no single key {kid!r} in {self.path} "
                f"(its keys: {listed})",
                where=str(self.path),
                fix="give the key id (at least 8 characters) `secmlops trust show` prints",
            )
        old = matches[0]
        if old.window.not_before and at < old.window.not_before:
            raise InputError(
                f"cannot retire key {old.key_id[:16]}… before it became valid",
                where=str(self.path),
            )
        new = replace(old, window=KeyWindow(old.window.not_before, at))
        return replace(self, entries=tuple(new if e is old else e for e in self.entries))

    def to_yaml(self) -> str:
        import yaml

        roles: dict[str, list[dict[str, Any]]] = {}
        approvers: dict[str, list[dict[str, Any]]] = {}
        for entry in self.entries:
            if entry.subject.startswith(APPROVER_PREFIX):
                name = entry.subject[len(APPROVER_PREFIX) :]
                approvers.setdefault(name, []).append(entry.to_yaml())
            else:
                roles.setdefault(entry.subject, []).append(entry.to_yaml())
        head = (
            "# secmlops trust root: the PUBLIC keys each role and approver may sign with, and\n"
            "# when (not_before/not_after). Edit with `secmlops trust add-key|retire`.\n"
        )
        body = {"version": 1, "roles": roles, "approvers": approvers}
        return head + yaml.dump(
            body, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100
        )

    def save(self) -> None:
        """Write atomically (a reader never sees half a trust root)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".trust-root-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.to_yaml())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _literal_blocks() -> type[Any]:
    import yaml

    class Dumper(yaml.SafeDumper):
        """PEM keys as literal blocks, as people paste them."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper


_Dumper = _literal_blocks()


def _check_subject(subject: str, *, where: str) -> None:
    from secmlops.evidence.keys import check_approver_name

    if subject.startswith(APPROVER_PREFIX):
        check_approver_name(subject[len(APPROVER_PREFIX) :])
    elif subject not in TRUST_ROLES:
        raise InputError(
            f"unknown role {subject!r}",
            where=where,
            fix=f"use one of {', '.join(TRUST_ROLES)}, or approver:NAME for an approver",
        )
