"""``secmlops policy sign|show``: the policy owner signs the gate policy; anyone checks it.

Registered in :mod:`secmlops.cli` as the ``policy`` command group. Heavy modules are imported
inside the commands, as the other commands do.

Example::

    secmlops policy sign --days 90                  # site: the owner's key, writes <policy>.sig
    secmlops policy sign --signer kms:alias/policy-owner --expires 2027-01-31
    secmlops policy show --json
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from secmlops.errors import ControlRefused, InputError

if TYPE_CHECKING:
    from secmlops.evidence.keys import KeyDirectory
    from secmlops.evidence.signers import Signer

policy_app = typer.Typer(
    name="policy",
    help="Sign the gate policy as its owner (`sign`), or check who signed it (`show`).",
    no_args_is_help=True,
)

PolicyOpt = Annotated[
    Path | None,
    typer.Option(
        "--policy", help="Policy file (default: $SECMLOPS_POLICY, else secmlops-policy.yaml)."
    ),
]


def _policy_file(policy: Path | None) -> Path:
    from secmlops.settings import current_settings

    if policy:
        os.environ["SECMLOPS_POLICY"] = str(policy)
    return current_settings().policy_file


def _parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise InputError(
            f"--expires {value!r} is not a date", where="--expires", fix="use YYYY-MM-DD"
        ) from exc


def _signing_key(keys: KeyDirectory, key: Path | None, signer: str | None) -> Signer:
    """The owner's signer: ``--key PEM``, ``--signer SPEC`` (``kms:...``, ``file:...``), else
    the key directory's (``SECMLOPS_POLICY_OWNER_SIGNER``, default its policy-owner.pem)."""
    from secmlops.evidence.signers import SignerSpec, open_signer
    from secmlops.policy import OWNER_ROLE

    if key and signer:
        raise InputError("give --key or --signer, not both", where="policy sign")
    if key:
        return open_signer(SignerSpec("file", str(key)), subject=OWNER_ROLE, where="--key")
    if signer:
        return open_signer(signer, subject=OWNER_ROLE, where="--signer")
    return keys.signer(OWNER_ROLE)


@policy_app.command("sign")
def sign(
    policy: PolicyOpt = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="The policy owner's private key (PEM, may be encrypted)."),
    ] = None,
    signer: Annotated[
        str | None,
        typer.Option(
            "--signer",
            help="Where the owner signs: kms:KEY_ID_OR_ARN (AWS KMS) or file:PATH "
            "(default: $SECMLOPS_POLICY_OWNER_SIGNER, else <keys>/policy-owner.pem).",
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires", help="Last day the policy may be used (YYYY-MM-DD); rewrites expires:."
        ),
    ] = None,
    days: Annotated[
        int | None,
        typer.Option("--days", min=1, help="Expire N days from today; rewrites expires:."),
    ] = None,
    owner: Annotated[
        str, typer.Option("--owner", help="Who signs, as the signature records it.")
    ] = "policy-owner",
) -> None:
    """Sign the policy as its owner; writes <policy>.sig (commit it with the policy).

    A DSSE signature over the file's exact bytes: review the policy first, the gate runs
    under what you sign. The embedded demo (no SECMLOPS_KEYS), signing with its demo owner
    key, keeps the signature under .secmlops/ instead and needs no expiry.
    """
    from secmlops.evidence.keys import KeyDirectory
    from secmlops.policy import (
        demo_owner_key,
        demo_signature_path,
        is_demo,
        policy_status,
        sign_policy,
    )
    from secmlops.settings import current_settings

    path = _policy_file(policy)
    if expires and days:
        raise InputError("give --expires or --days, not both", where="policy sign")
    until = _parse_date(expires) if expires else None
    if days:
        until = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)
    settings = current_settings()
    keys = KeyDirectory(settings.paths.keys)
    # The embedded demo's own owner key signs into the state home (never the checkout).
    demo = is_demo(settings) and not key and not signer
    signing_key = demo_owner_key(keys) if demo else _signing_key(keys, key, signer)
    out = demo_signature_path(path, settings.paths.home) if demo else None
    written, file = sign_policy(
        path,
        signing_key,
        owner="embedded demo" if demo and owner == "policy-owner" else owner,
        expires=until,
        require_expiry=not demo,
        out=out,
    )
    when = file.policy.expires.isoformat() if file.policy.expires else "never (demo only)"
    typer.echo(f"signed {path} (sha256 {file.sha256}, expires {when}) -> {written}")
    status = policy_status(path)
    if status.problem:
        typer.echo(f"WARNING: the gate will not accept it: {status.problem}", err=True)


@policy_app.command("show")
def show(
    policy: PolicyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show the policy's digest, signer, expiry, environment; exit 1 if it does not verify.

    Verified against the trust root's policy-owner keys, as the gate does. Signs nothing.
    """
    from secmlops.policy import PolicyRefusal, policy_status

    status = policy_status(_policy_file(policy))
    if as_json:
        typer.echo(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        src = status.source
        lines = [
            f"policy:      {status.path}",
            f"sha256:      {status.sha256}",
            f"environment: {status.environment}",
            f"expires:     {status.expires or 'never (demo only)'}",
            f"signature:   {status.signature}"
            + (" (the embedded demo's, in its state home)" if src and src.demo_signed else ""),
        ]
        if src:
            lines.append(
                f"signed by:   {src.owner} with {src.signer} key {src.key_id[:16]}… "
                f"at {src.signed_at}"
            )
        lines.append(f"verifies:    {'yes' if status.problem is None else 'NO'}")
        typer.echo("\n".join(lines))
    if status.problem is not None:
        raise ControlRefused(
            status.problem,
            where=str(status.path),
            fix=f"have the policy owner review and sign it: `secmlops policy sign "
            f"--policy {status.path}`",
            reason=PolicyRefusal(status.reason) if status.reason else None,
        )
