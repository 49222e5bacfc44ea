"""Prefect tasks over :mod:`secmlops.controls.signing`: sign a model the way the site says.

How a model is signed is site configuration (``sources.signing`` of the policy file), never
a run parameter: ``key`` (the model-signer key), ``certificate`` (that key with its
certificate and chain) or ``sigstore`` (keyless, from the CI's ambient OIDC identity).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from secmlops.controls.signing import (
    CertificateSigner,
    KeySigner,
    ModelSignature,
    ModelSigner,
    sign_model_with,
    verify_model_signature,
)
from secmlops.evidence.keys import KeyDirectory
from secmlops.site import SIGSTORE_PRODUCTION, SigningSource


def require_signing_ready(signing: SigningSource) -> None:
    """Fail at once, before any work, when the site's signing method cannot sign here:
    ``sigstore`` without an ambient OIDC token is an ``InputError`` (exit 2)."""
    if signing.method == "sigstore":
        from secmlops.controls.signing_sigstore import TOKEN_ENV, require_identity_token
        from secmlops.errors import InputError

        try:
            require_identity_token()
        except InputError as exc:
            raise InputError(
                f"the site signs models keyless (sources.signing.method: sigstore): {exc.message}",
                where="sources.signing.method",
                fix="run the flow where the CI provides an OIDC identity token (GitHub "
                "Actions: `permissions: id-token: write`; GitLab: an `id_tokens:` entry "
                f"SIGSTORE_ID_TOKEN with aud sigstore; or {TOKEN_ENV} on the worker), or set "
                "sources.signing.method to key or certificate in the policy",
            ) from exc


def site_model_signer(signing: SigningSource, keys: KeyDirectory) -> ModelSigner:
    """The signer ``sources.signing`` names (``key`` or ``certificate``): the model-signer
    key (``signing.key``, else ``SECMLOPS_MODEL_SIGNER_SIGNER``, else
    ``<keys>/model-signer.pem``); for ``key`` it must be the trust root's model-signer key,
    for ``certificate`` it must match the certificate (the trust root lists the CA)."""
    if signing.method == "certificate":
        key = keys.model_signer(signing.key, in_trust_root=False)
        return CertificateSigner.from_files(
            key, certificate=Path(signing.certificate), chain=[Path(c) for c in signing.chain]
        )
    return KeySigner(keys.model_signer(signing.key))


def sign_model_for_site(
    model_dir: Path, *, signature: Path, signing: SigningSource, keys: KeyDirectory
) -> ModelSignature:
    """Sign ``model_dir`` with the site's method (see :func:`site_model_signer`); keyless
    for ``sigstore`` (needs an ambient OIDC token and Fulcio/Rekor)."""
    if signing.method != "sigstore":
        return sign_model_with(
            model_dir, signer=site_model_signer(signing, keys), signature=signature
        )
    from secmlops.controls.signing_sigstore import sign_model_keyless

    config = None if signing.trust_config == SIGSTORE_PRODUCTION else Path(signing.trust_config)
    return sign_model_keyless(model_dir, signature=signature, trust_config=config)


@task(
    name="sign-model",
    task_run_name="sign-model",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=600,
)
def sign_model_for_site_task(
    model_dir: Path, signature: Path, signing: SigningSource, keys: KeyDirectory
) -> ModelSignature:
    """Prefect wrapper for :func:`sign_model_for_site`."""
    return sign_model_for_site(model_dir, signature=signature, signing=signing, keys=keys)


@task(
    name="verify-model-signature",
    task_run_name="verify-model-signature",
    cache_policy=NO_CACHE,
    retries=0,
    timeout_seconds=600,
)
def verify_model_signature_task(model_dir: Path, signature: Path, public_key: Path) -> None:
    """Prefect wrapper for :func:`verify_model_signature` (never cached)."""
    verify_model_signature(model_dir, signature=signature, public_key=public_key)
