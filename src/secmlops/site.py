"""Site configuration: the named sources a run may select, and what each is pinned to.

Whoever may start a flow run (Prefect UI, API) chooses every flow parameter, so a parameter
may only *select* an entry by name; everything that decides trust lives here, in the
``sources:`` section of the policy file on the worker (reviewed like code):

- ``datasets``: the DVC data registries a run may pull from (repo URL or path, dataset path,
  default rev, the DVC remotes that repo may use), and the pandera schema each is validated
  against (a module of the project's user-code folder, its file digest optionally pinned and
  checked before import);
- ``images``: the serving images a run may scan (an OCI layout / docker-archive path, or a
  registry reference) and the digest the site serves, which the scanned image must equal;
- ``registries``: the model registries a run may write (directory or S3, with the S3
  endpoint and the AWS profile whose credentials may be sent there);
- ``trivy_db``: where the Trivy DB lives and which DB digests the site accepts;
- ``signing``: how the training flow signs models (issue 10): ``method`` ``key`` (the
  model-signer key: a PEM file, an encrypted one, or a KMS key), ``certificate`` (that key
  with its leaf certificate and chain from the site's PKI) or ``sigstore`` (keyless, from
  the CI's ambient OIDC token). No run parameter chooses the method or the key; the deploy
  gate trusts whoever the trust root's model-signer role lists, not this section.

A run parameter names one entry (``dataset="churn-demo"``); :func:`select` resolves it or
raises an ``InputError`` listing the names the site allows.

Example (``secmlops-policy.yaml``)::

    sources:
      datasets:
        churn:
          repo: https://git.example.com/data/churn-registry.git
          path: data/churn.csv
          rev: v2.3
          schema: ml.schema:ChurnDataset
          schema_sha256: 3f1c...          # optional: pin the schema file
          dvc_remotes: [s3://ml-data/churn]
          s3_endpoint_url: https://s3.eu-central-1.amazonaws.com
      images:
        serving:
          target: /srv/images/serving.tar
          digest: sha256:9a0b...
          repository: registry.example.com/ml/serving   # what the image signature names
      registries:
        prod:
          uri: s3://ml-models/churn
          region: eu-central-1
      trivy_db:
        cache_dir: /srv/trivy-cache
        sha256: [5e2d...]
      signing:
        method: certificate
        key: kms:alias/model-signer          # empty: SECMLOPS_MODEL_SIGNER_SIGNER, else
        certificate: /srv/pki/model-signer.crt   #   <keys>/model-signer.pem
        chain: [/srv/pki/issuing-ca.crt]

Omitted, each catalogue holds the embedded demo entry (``churn-demo``, ``demo``,
``default``), so the demo needs no configuration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from secmlops.errors import InputError

#: Entry names: what a run parameter carries. Lower-case, no path characters, full match.
ENTRY_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_IMAGE_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")

#: The embedded demo's entries (what an omitted catalogue holds).
DEMO_DATASET = "churn-demo"
DEMO_IMAGE = "demo"
DEFAULT_REGISTRY = "default"
#: The repository the demo serving image's signature names (``localhost``: nothing real).
DEMO_IMAGE_REPOSITORY = "localhost/secmlops-serving"


def check_url_has_no_secret(value: str, field: str) -> str:
    """Refuse a URL carrying userinfo (``https://user:token@host``): secrets belong in
    credentials, never in a URL that is logged, stored as a parameter or signed.

    ``ssh://git@host/...`` and scp-style ``git@host:path`` name an SSH *user*, not a
    secret, and are allowed (without a password).
    """
    if "://" in value:
        parts = urlsplit(value)
        if parts.password is not None or (
            parts.username is not None and parts.scheme not in ("ssh", "git+ssh")
        ):
            raise ValueError(
                f"{field} carries credentials in its URL ({redact_url(value)}); remove them "
                "and name a credentials source instead (a 'SecMLOps Git Credentials' block "
                "for HTTPS git, the SSH agent for ssh://, an AWS profile for S3)"
            )
    return value


def redact_url(value: str) -> str:
    """``value`` with any userinfo in a URL replaced by ``***`` (safe to log or record)."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", value)


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetSource(_Entry):
    """A dataset a run may pull: a DVC data registry, the dataset's path, and its schema."""

    repo: str = Field(
        default="",
        description="Git URL (https://, ssh://, git@host:path) or absolute path of the DVC "
        "data registry; empty: the embedded demo registry (.secmlops/data-registry/repo).",
    )
    path: str = Field(default="data/churn.csv", description="The dataset's path in the repo.")
    rev: str = Field(
        default="v1.0",
        description="The rev pulled when a run names none: a tag or a full commit sha.",
    )
    schema_spec: str = Field(
        default="ml.schema:ChurnDataset",
        alias="schema",
        description="pandera schema 'module:Class'; the module must be a file of the "
        "project's user-code folder (or listed in allowed_schema_modules).",
    )
    schema_sha256: str | None = Field(
        default=None,
        description="sha256 of the schema module's file, checked before it is imported.",
    )
    dvc_remotes: tuple[str, ...] = Field(
        default=(),
        description="URLs (prefixes) of the DVC remotes the repo's .dvc/config may name; a "
        "remote not listed is refused before any request. Empty: the demo registry's own "
        "remote for the demo entry, none otherwise.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint of the DVC remote (MinIO, moto); empty: AWS."
    )
    aws_profile: str | None = Field(
        default=None,
        description="AWS profile (of the worker's AWS config) whose credentials the S3 DVC "
        "remote gets; empty: the worker's environment.",
    )
    git_credentials: str | None = Field(
        default=None,
        description="Name of a saved 'SecMLOps Git Credentials' block whose token is sent to "
        "this repo's host only (HTTPS); empty: no HTTPS credentials (ssh:// repos use the "
        "worker's SSH agent or GIT_SSH_COMMAND; git's global config is never read).",
    )

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("repo", "s3_endpoint_url")
    @classmethod
    def _no_secret(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_url_has_no_secret(value, str(info.field_name)) if value else value

    @field_validator("dvc_remotes")
    @classmethod
    def _no_secret_remotes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for remote in value:
            check_url_has_no_secret(remote, "dvc_remotes")
        return value

    @field_validator("schema_spec")
    @classmethod
    def _schema_form(cls, value: str) -> str:
        if not _SCHEMA_RE.fullmatch(value):
            raise ValueError(
                f"schema {value!r} must be 'module:Class' (a module of the user-code folder)"
            )
        return value

    @field_validator("schema_sha256")
    @classmethod
    def _digest_form(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256_RE.fullmatch(value):
            raise ValueError("schema_sha256 must be 64 lower-case hex digits")
        return value

    @property
    def is_demo(self) -> bool:
        """True for the embedded demo data registry (created on first run)."""
        return not self.repo


class ImageSource(_Entry):
    """A serving image a run may scan: where to read it, and the digest the site serves."""

    target: str = Field(
        default="",
        description="docker-archive .tar or OCI layout directory (absolute path), or a "
        "registry reference (needs registry_access); empty: the demo image built from "
        "uv.lock.",
    )
    digest: str | None = Field(
        default=None,
        description="sha256:... image ID of the served image: the sha256 of its config blob "
        "(`docker inspect -f '{{.Id}}'`, Trivy's Metadata.ImageID), not the registry manifest "
        "digest; the scanned image must equal it. Required unless target is empty.",
    )
    registry_access: bool = Field(
        default=False,
        description="Let Trivy pull target from its container registry (off: local "
        "archives and layouts only).",
    )
    repository: str | None = Field(
        default=None,
        description="The container registry repository the image is served from "
        "(registry[:port]/path, no tag or digest, e.g. registry.example.com/team/serving): "
        "the pipeline's cosign signature names it and the deploy gate requires it. Empty: "
        f"{DEMO_IMAGE_REPOSITORY} for the demo entry; a site entry must name one for its "
        "image to be signed.",
    )

    @field_validator("target")
    @classmethod
    def _no_secret(cls, value: str) -> str:
        return check_url_has_no_secret(value, "target") if value else value

    @field_validator("repository")
    @classmethod
    def _repository_form(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from secmlops.controls.image_signing import check_repository  # imports the evidence

        try:
            return check_repository(value, "repository")
        except InputError as exc:
            raise ValueError(exc.message) from None

    @property
    def signed_repository(self) -> str | None:
        """The repository the image's signature names: ``repository``, the demo's for the
        demo entry, ``None`` for a site entry that names none (its image cannot be signed)."""
        if self.repository:
            return self.repository
        return DEMO_IMAGE_REPOSITORY if self.is_demo else None

    @field_validator("digest")
    @classmethod
    def _digest_form(cls, value: str | None) -> str | None:
        if value is not None and not _IMAGE_DIGEST_RE.fullmatch(value):
            raise ValueError("digest must be 'sha256:' and 64 lower-case hex digits")
        return value

    @model_validator(mode="after")
    def _pinned(self) -> ImageSource:
        if self.target and not self.digest:
            raise ValueError(
                "a site image needs its digest (sha256:...): the scanned image must equal "
                "the served one"
            )
        return self

    @property
    def is_demo(self) -> bool:
        return not self.target


class RegistrySource(_Entry):
    """A model registry a run may write, and where its credentials may be sent."""

    uri: str = Field(
        default="",
        description="Directory, file:///path or s3://bucket/prefix; empty: $SECMLOPS_REGISTRY, "
        "else .secmlops/registry.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 API endpoint (MinIO, Ceph, moto); empty: $SECMLOPS_S3_ENDPOINT_URL, "
        "else AWS.",
    )
    region: str | None = Field(default=None, description="AWS region of the bucket.")
    aws_profile: str | None = Field(
        default=None,
        description="AWS profile (of the worker's config) whose credentials this registry "
        "gets; empty: boto3's default chain.",
    )

    @field_validator("uri", "s3_endpoint_url")
    @classmethod
    def _no_secret(cls, value: str | None) -> str | None:
        return check_url_has_no_secret(value, "uri") if value else value


class TrivyDbSource(_Entry):
    """Where the Trivy vulnerability DB lives and which DBs the site accepts."""

    cache_dir: str = Field(
        default="",
        description="Trivy cache dir holding db/trivy.db; empty: .secmlops/trivy-cache, "
        "seeded with the labelled offline demo DB.",
    )
    sha256: tuple[str, ...] = Field(
        default=(),
        description="sha256 digests of trivy.db files the site accepts (a DB not listed is "
        "refused, unless it is the labelled demo DB and scan.unsafe_allow_curated_db is on).",
    )

    @field_validator("sha256")
    @classmethod
    def _digest_form(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for digest in value:
            if not _SHA256_RE.fullmatch(digest):
                raise ValueError(f"trivy_db.sha256 entry {digest!r} is not 64 lower-case hex")
        return value


#: How the flow signs models (``sources.signing.method``).
SigningMethod = Literal["key", "certificate", "sigstore"]
#: ``sources.signing.trust_config`` naming the public-good Sigstore instance.
SIGSTORE_PRODUCTION = "sigstore-production"


def _absolute_file(value: str, field: str) -> str:
    if not value.startswith("/") or "\n" in value or "\x00" in value:
        raise ValueError(f"{field} {value!r} must be an absolute path on the worker")
    return value


class SigningSource(_Entry):
    """How the training flow signs models, and with what (site configuration only)."""

    method: SigningMethod = Field(
        default="key",
        description="key: the model-signer key signs (model-signing, EC key); certificate: "
        "that key with its leaf certificate and chain (the trust root lists the CA); "
        "sigstore: keyless, a Fulcio certificate for the CI's ambient OIDC identity (the "
        "trust root lists the identity and issuer).",
    )
    key: str = Field(
        default="",
        description="The model-signer key for key and certificate: file:PATH (or an "
        "absolute path) of a PEM key, encrypted or not, or kms:KEY_ID_OR_ARN; empty: "
        "SECMLOPS_MODEL_SIGNER_SIGNER, else <keys>/model-signer.pem.",
    )
    certificate: str = Field(
        default="",
        description="certificate only: absolute path of the signing (leaf) certificate, "
        "PEM, issued for the key with codeSigning or digitalSignature usage.",
    )
    chain: tuple[str, ...] = Field(
        default=(),
        description="certificate only: absolute paths of the intermediate CA certificates "
        "(PEM) from the leaf up to the CA the trust root lists.",
    )
    trust_config: str = Field(
        default=SIGSTORE_PRODUCTION,
        description="sigstore only: 'sigstore-production' (the public-good instance) or the "
        "absolute path of a Sigstore client trust config (a private instance).",
    )
    oidc_token: Literal["ambient"] = Field(
        default="ambient",
        description="sigstore only: where the OIDC token comes from. Only 'ambient' (the "
        "CI's workload identity: GitHub Actions, GitLab, Buildkite, cloud metadata); never a "
        "token in a parameter or a file.",
    )

    @field_validator("key")
    @classmethod
    def _key_spec(cls, value: str) -> str:
        if not value:
            return value
        from secmlops.evidence.signers import parse_signer_spec

        try:
            spec = parse_signer_spec(value, where="sources.signing.key")
        except InputError as exc:
            raise ValueError(exc.message) from exc
        if spec.kind == "file":
            _absolute_file(spec.target, "sources.signing.key")
        return value

    @field_validator("certificate")
    @classmethod
    def _certificate_path(cls, value: str) -> str:
        return _absolute_file(value, "sources.signing.certificate") if value else value

    @field_validator("chain")
    @classmethod
    def _chain_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            _absolute_file(path, "sources.signing.chain entry")
        return value

    @field_validator("trust_config")
    @classmethod
    def _trust_config(cls, value: str) -> str:
        if value != SIGSTORE_PRODUCTION:
            _absolute_file(value, "sources.signing.trust_config")
        return value

    @model_validator(mode="after")
    def _fits_method(self) -> SigningSource:
        method = self.method
        if method == "certificate" and not self.certificate:
            raise ValueError(
                "method certificate needs sources.signing.certificate (the leaf certificate "
                "issued for the model-signer key)"
            )
        if method != "certificate" and (self.certificate or self.chain):
            raise ValueError(
                f"certificate and chain are for method certificate, not {method}: remove "
                "them or set method: certificate"
            )
        if method == "sigstore" and self.key:
            raise ValueError(
                "method sigstore signs with a short-lived key Fulcio certifies: remove "
                "sources.signing.key"
            )
        if method != "sigstore" and self.trust_config != SIGSTORE_PRODUCTION:
            raise ValueError(f"trust_config is for method sigstore, not {method}")
        return self


E = TypeVar("E", bound=_Entry)


def _check_names(catalogue: Mapping[str, _Entry], kind: str) -> None:
    if not catalogue:
        raise ValueError(f"sources.{kind} must name at least one entry")
    for name in catalogue:
        if not ENTRY_NAME_RE.fullmatch(name):
            raise ValueError(
                f"sources.{kind} entry name {name!r}: use lower-case letters, digits, '.', "
                "'_' and '-' (at most 63)"
            )


class Sources(BaseModel):
    """The ``sources:`` section of the policy file: the named entries runs may select."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    datasets: dict[str, DatasetSource] = Field(
        default_factory=lambda: {DEMO_DATASET: DatasetSource()}
    )
    images: dict[str, ImageSource] = Field(default_factory=lambda: {DEMO_IMAGE: ImageSource()})
    registries: dict[str, RegistrySource] = Field(
        default_factory=lambda: {DEFAULT_REGISTRY: RegistrySource()}
    )
    trivy_db: TrivyDbSource = TrivyDbSource()
    #: How the flow signs models (default: the model-signer key, as the demo does).
    signing: SigningSource = SigningSource()
    user_code_dir: str = Field(
        default="ml",
        description="The project's user-code folder (relative to the project root): the "
        "only place a schema module may come from, besides allowed_schema_modules.",
    )
    allowed_schema_modules: tuple[str, ...] = Field(
        default=(),
        description="Installed modules (exact names) a schema may also come from.",
    )

    @model_validator(mode="after")
    def _names(self) -> Sources:
        _check_names(self.datasets, "datasets")
        _check_names(self.images, "images")
        _check_names(self.registries, "registries")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.user_code_dir):
            raise ValueError("user_code_dir must be a top-level package name of the project")
        return self

    @property
    def default_dataset(self) -> str:
        return next(iter(self.datasets))

    @property
    def default_image(self) -> str:
        return next(iter(self.images))

    @property
    def default_registry(self) -> str:
        return next(iter(self.registries))


SourceKind = Literal["dataset", "image", "registry"]


def select(catalogue: Mapping[str, E], name: str | None, kind: SourceKind) -> tuple[str, E]:
    """The entry ``name`` selects (``None``/empty: the first entry), or ``InputError``.

    The error names the parameter and lists the names the site allows, so a run started
    with a wrong name fails at once with what to pick instead.
    """
    if not name:
        first = next(iter(catalogue))
        return first, catalogue[first]
    if not isinstance(name, str) or not ENTRY_NAME_RE.fullmatch(name) or name not in catalogue:
        allowed = ", ".join(sorted(catalogue))
        raise InputError(
            f"{kind} {name!r} is not one the site allows (allowed: {allowed})",
            where=f"parameter {kind}",
            fix=f"pick one of: {allowed}; a site adds entries under sources.{kind}s in the "
            "policy file",
        )
    key = next(k for k in catalogue if k == name)  # the catalogue's own str, not a subclass
    return key, catalogue[key]


# --- what a training run's provenance records (issue 12) ------------------------------------

#: Every parameter of the ``secure-training`` flow, by name. Its provenance records each in
#: ``externalParameters.parameters``, and the deploy gate refuses a name not listed here
#: (SLSA verification: every external parameter has an expected value; unknown ones fail).
RUN_PARAMETERS: tuple[str, ...] = (
    "model_name",
    "dataset",
    "data_rev",
    "image",
    "registry",
    "promote_to_production",
)

#: A data rev a run may name: a tag-like name or a full commit sha (the pull then refuses
#: anything that is not a tag or that commit, so a branch never passes).
DATA_REV_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}")

#: Where the worker builds the embedded demo data registry, below its state home
#: (``$SECMLOPS_HOME/data-registry/repo``). The demo dataset entry names no repo, so the gate,
#: which may run elsewhere, accepts a recorded absolute local path ending in these parts.
DEMO_DATA_REGISTRY_PARTS: tuple[str, ...] = ("data-registry", "repo")


def is_data_rev(rev: object) -> bool:
    """Is ``rev`` a tag-like name or a full commit sha (never ``..``, a path or an option)?"""
    return (
        isinstance(rev, str)
        and DATA_REV_RE.fullmatch(rev) is not None
        and ".." not in rev
        and not rev.endswith((".", "/", ".lock"))
        and not rev.startswith("refs/")  # a tag by its own name; full ref names are refused
    )
