"""The secure training pipeline: one Prefect flow from pinned data to a verified production model.

    pull data (DVC, pinned rev) -> validate schema (pandera) -> scan image (Trivy)
      -> sign image (cosign) -> train + evaluate (dvc repro) -> scan model files
      -> sign model + attest provenance
      -> register version -> [approval: staging] -> deploy staging (gate) -> smoke test
      -> [approval: production] -> promote production (gate)

Every control's statement is signed by the attestor key; the version is registered only
after all build-time controls passed, and the release manifest (signed last) binds the
model digest, the dataset digest, the image digest and every evidence file together.

Run it: ``secmlops run --approve-as demo-approver`` (or ``make demo``).
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.approval import await_approval, requested_by
from flows.artifacts import ApprovalContext, publish_approval_summary, publish_run_summary
from flows.choices import (
    DEFAULT_DATASET,
    DEFAULT_IMAGE,
    DEFAULT_REGISTRY_NAME,
    DatasetName,
    ImageName,
    RegistryName,
)
from flows.run_record import current_run_record
from flows.stage_lock import stage_lock
from flows.summary import RunSummary
from flows.visibility import visible_run
from ml.model import load_model
from ml.stages import write_held_out_sample
from secmlops.controls.data import data_pull_statement
from secmlops.controls.image_scan import enforce_scan_policy, image_scan_statement
from secmlops.controls.model_scan import model_scan_statement
from secmlops.controls.signing import ModelSignature
from secmlops.controls.smoke_test import smoke_test_statement
from secmlops.controls.training import provenance_statement
from secmlops.controls.validation import validation_statement
from secmlops.errors import InputError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.predicates import (
    DatasetSelection,
    ImageSelection,
    RegistrySelection,
    RunSources,
)
from secmlops.evidence.statements import sign_statement
from secmlops.gate import GatePolicy
from secmlops.policy import load_gate_policy
from secmlops.registry.models import ModelRegistry, stamped
from secmlops.registry.stores import open_site_registry
from secmlops.release import ReleaseEvidence, ReleaseInputs
from secmlops.selection import RunSelection
from secmlops.settings import LocalPaths, current_settings, local_paths, project_root
from secmlops.site import redact_url
from tasks.data import create_demo_data_registry_task, pull_dataset_task
from tasks.deploy import promote_to_stage_task
from tasks.image_scan import build_serving_image_task, scan_image_task, seed_trivy_db_task
from tasks.image_signing import sign_image_task
from tasks.model_scan import scan_model_task
from tasks.release import register_release_task
from tasks.signing import require_signing_ready, sign_model_for_site_task
from tasks.smoke_test import smoke_test_stage_task
from tasks.training import train_model_task
from tasks.validation import load_site_schema_task, validate_dataset_reusing

BUILDER_ID = "https://secmlops.dev/builders/prefect-secure-training/v1"


@flow(name="secure-training", log_prints=True, validate_parameters=True, timeout_seconds=3600)
@visible_run
def secure_training(
    model_name: str = "churn-classifier",
    dataset: DatasetName = DEFAULT_DATASET,
    data_rev: str = "",
    image: ImageName = DEFAULT_IMAGE,
    registry: RegistryName = DEFAULT_REGISTRY_NAME,
    promote_to_production: bool = True,
) -> dict[str, Any]:
    """Run every control, register a signed model version, and deploy it through the gates.

    Every parameter only *selects*: the datasets, images and registries a run may name, and
    what each is pinned to (repo, schema, image digest, S3 endpoint, credentials), are the
    site's, in the policy file's ``sources:`` section on the worker.

    The run pauses for approval before staging and before production (Resume form, or
    `secmlops approve <run id> --approve --key KEY`; see the approval artifacts).

    Args:
        model_name: The model's name in the registry (versions v1, v2, ... under it).
        dataset: The dataset to train on: an entry of the site's sources.datasets (its DVC
            data registry, path and schema are the site's); default: its first entry.
        data_rev: The dataset version: a git tag or a full 40-hex commit of that registry
            (never a branch); empty: the entry's pinned rev.
        image: The serving image to scan: an entry of the site's sources.images (its
            location and the digest the site serves are the site's); default: its first.
        registry: Where the version, its evidence and the stage pointers go: an entry of
            the site's sources.registries; default: its first entry.
        promote_to_production: Untick to stop after the staging smoke test.
    """
    logger = get_run_logger()
    paths = local_paths()
    policy = load_gate_policy()
    run = RunSelection.resolve(
        policy.sources,
        model_name=model_name,
        dataset=dataset,
        data_rev=data_rev or None,
        image=image,
        registry=registry,
        promote_to_production=promote_to_production,
    )
    store = open_site_registry(
        run.registry,
        default_uri=current_settings().registry_uri(),
        env_endpoint=current_settings().s3_endpoint_url,
    )
    models = ModelRegistry(store, model_name)
    summary = RunSummary(model=model_name, registry=store.uri)
    try:
        _run(summary, models, paths, run, policy)
    finally:
        logger.info("\n%s", summary.render())
        publish_run_summary(summary)
    return summary.to_json()


def _run(
    summary: RunSummary,
    models: ModelRegistry,
    paths: LocalPaths,
    run: RunSelection,
    policy: GatePolicy,
) -> None:
    logger = get_run_logger()
    run_id = uuid.uuid4().hex[:12]
    workdir = paths.runs / stamped(f"run-{run_id}")
    workdir.mkdir(parents=True)
    keys = KeyDirectory(paths.keys)
    data, image = run.dataset, run.image
    record = current_run_record()

    with summary.stage("prepare") as st:
        if paths.demo_keys:
            # Embedded default only: create missing demo role keys (approvers' keys are
            # theirs: `secmlops keygen --approver NAME`, or `secmlops run --approve-as`).
            created = keys.ensure()
            if created:
                logger.warning(
                    "generated local demo keys in %s (git-ignored; never commit them): %s",
                    keys.root,
                    ", ".join(p.name for p in created),
                )
        allowed_remotes: tuple[str, ...]
        if data.is_demo:
            demo_registry = create_demo_data_registry_task(paths.data_registry)
            repo, allowed_remotes = str(demo_registry.repo), (str(demo_registry.remote),)
        else:
            repo, allowed_remotes = data.repo, data.dvc_remotes
        trivy_db = policy.sources.trivy_db
        cache_dir = Path(trivy_db.cache_dir) if trivy_db.cache_dir else paths.trivy_cache
        if not trivy_db.cache_dir:
            seed_trivy_db_task(cache_dir)
        built = (
            build_serving_image_task(
                paths.images / "serving-demo.tar", lock_file=project_root() / "uv.lock"
            )
            if image.is_demo
            else None
        )
        target = str(built.path) if built else image.target
        st.detail = (
            f"keys {keys.root}; dataset {run.dataset_name} ({redact_url(repo)}@{run.rev}); "
            f"image {run.image_name} ({target}); registry {run.registry_name}"
        )
    # Build evidence, checked against the catalogue and signed as each control passes.
    # The attestor signs where the site keeps its key (SECMLOPS_ATTESTOR_SIGNER: an
    # encrypted PEM or KMS), checked against the trust root before anything is signed.
    evidence = ReleaseEvidence(keys.signer("attestor"))
    # Keyless signing needs the CI's OIDC token: without one, refuse now, not after training.
    require_signing_ready(policy.sources.signing)

    with summary.stage("pull-data") as st:
        pulled = pull_dataset_task(
            repo,
            data.path,
            run.rev,
            workdir / "data",
            allowed_remotes=allowed_remotes,
            s3_endpoint_url=data.s3_endpoint_url,
            aws_profile=data.aws_profile,
            git_credentials=data.git_credentials,
        )
        evidence.add("data-pull", data_pull_statement(pulled))
        st.detail = f"{data.path}@{run.rev} ({pulled.commit[:10]}) sha256 {pulled.sha256[:12]}…"

    with summary.stage("validate-schema") as st:
        schema = load_site_schema_task(
            data.schema_spec,
            project_dir=project_root(),
            user_code_dir=policy.sources.user_code_dir,
            allowed_modules=policy.sources.allowed_schema_modules,
            sha256=data.schema_sha256,
        )
        # Cached on (pulled digest, schema digest, policy, versions); the evidence says when
        # a result was reused. Under the schema's quarantine policy, training gets the
        # clean rows (their file's digest is a subject of the validation statement).
        validated = validate_dataset_reusing(
            pulled.local_path,
            schema,
            data_sha256=pulled.sha256,
            quarantine_dir=workdir / "validated",
        )
        evidence.add("validation", validation_statement(validated))
        train_data, train_sha = validated.training_data
        st.detail = f"{validated.rows} rows pass {validated.schema_name} ({validated.backend})"
        if validated.quarantine is not None:
            st.detail += f"; {validated.quarantine.describe()}"
        if validated.cached:
            st.detail += f"; reused from run {validated.run_id}"

    with summary.stage("scan-image") as st:
        scanned = scan_image_task(image, cache_dir, policy.scan, demo_image=built)
        verdict = enforce_scan_policy(scanned, policy.scan, trusted_db_sha256=trivy_db.sha256)
        scan_statement = image_scan_statement(scanned, verdict)
        evidence.add("image-scan", scan_statement)
        st.detail = f"{verdict.summary()}; DB {scanned.db.source}"

    with summary.stage("sign-image") as st:
        # The image that passed the scan, signed the cosign way (keyed by its registry
        # manifest digest, naming the site's repository) with the scan attested; the
        # layout is stored with the version and the deploy gate re-verifies it.
        repository = image.signed_repository
        if repository is None:
            raise InputError(
                f"the site's image {run.image_name} names no repository to sign it for",
                where=f"sources.images.{run.image_name}.repository",
                fix="set the repository the image is served from in the policy file",
            )
        signed_image = sign_image_task(
            built.path if built else Path(image.target),
            repository=repository,
            signer=keys.signer("attestor"),
            scan_statement=scan_statement,
            out_dir=workdir / "image.cosign",
        )
        st.detail = f"{signed_image.reference} signed; scan attested (cosign .sig/.att)"

    with summary.stage("train-evaluate") as st:
        trained = train_model_task(
            train_data, workspace=workdir / "train", project_dir=project_root()
        )
        st.detail = ", ".join(
            f"{k}={v:.3f}" for k, v in sorted(trained.metrics.items()) if isinstance(v, float)
        )

    with summary.stage("scan-model") as st:
        model_scan = scan_model_task(trained.model_dir)
        evidence.add("model-scan", model_scan_statement(model_scan))
        st.detail = f"{len(model_scan.files)} files clean"

    with summary.stage("sign-attest") as st:
        signature_path = workdir / "model.sig"
        # The site's method and key (sources.signing of the policy), never a run parameter.
        signed = sign_model_for_site_task(
            trained.model_dir, signature_path, policy.sources.signing, keys
        )
        evidence.add(
            "provenance",
            provenance_statement(
                trained,
                dataset_sha256=pulled.sha256,
                trained_on=(
                    (f"clean/{train_data.name}", train_sha)
                    if validated.quarantine is not None
                    else None
                ),
                dataset_uri=f"{repo}#{data.path}@{pulled.commit}",
                dataset_commit=pulled.commit,
                builder_id=BUILDER_ID,
                invocation_id=record.flow_run_id or run_id,
                parameters=run.parameters,
                run=record,
                sources=RunSources(
                    dataset=DatasetSelection(
                        name=run.dataset_name,
                        repo=repo,
                        path=data.path,
                        rev=run.rev,
                        commit=pulled.commit,
                        schema=data.schema_spec,
                        schema_digest=validated.schema_digest,
                        schema_sha256=validated.schema_source_sha256,
                    ),
                    image=ImageSelection(
                        name=run.image_name, target=target, digest=f"sha256:{scanned.image_digest}"
                    ),
                    registry=RegistrySelection(name=run.registry_name, uri=models.store.uri),
                ),
            ),
        )
        # sign_model hashed the tree already (and checked it did not change while signing).
        st.detail = f"model sha256 {signed.model_digest[:12]}… signed ({_signed_how(signed)})"

    with summary.stage("register") as st:
        registered = register_release_task(
            models,
            trained.model_dir,
            signature_path,
            evidence.bundles,
            ReleaseInputs(
                dataset={
                    "sha256": pulled.sha256,
                    "repo": repo,
                    "path": data.path,
                    "rev": run.rev,
                    "commit": pulled.commit,
                },
                image={"ref": scanned.target, "sha256": scanned.image_digest},
                metrics=trained.metrics,
                run=run_id,
                builder=BUILDER_ID,
                created_by=record.worker,
                started_by=record.started_by,
                image_signature=signed_image.layout,
            ),
            attestor=evidence.key,
        )
        version = summary.version = registered.version
        st.detail = f"{version} at {models.store.describe(models.version_prefix(version))}"
        st.evidence = [models.store.describe(registered.release_key)]
    approval_context = ApprovalContext(  # what publish_approval_summary shows an approver
        dataset=pulled,
        validation=validated,
        image_scan=scanned,
        scan_verdict=verdict,
        model_scan=model_scan,
        training=trained,
        signature=signed,
        registration=registered,
    )
    actor = "pipeline"

    def approve(stage: str) -> None:
        with summary.stage(f"approve-{stage}") as st:
            shown = publish_approval_summary(models, stage, approval_context, keys=keys)
            approvals = await_approval(
                models,
                version,
                stage,
                keys=keys,
                policy=policy,
                requested_by=requested_by(),
                summary=shown,
            )
            st.detail = "approved by " + ", ".join(
                f"{d.approver} ({d.method})" for d in approvals.decisions
            )
            st.evidence = [models.store.describe(k) for k in approvals.evidence_keys]

    approve("staging")
    # One stage-pointer move of this model at a time (issue 11): held from the gate's read
    # of the pointer until the smoke test saw staging serve this version; never while
    # paused for an approval.
    with contextlib.ExitStack() as locked:
        with summary.stage("deploy-staging") as st:
            lock = locked.enter_context(stage_lock(models.model))
            promoted = promote_to_stage_task(
                models, version, "staging", keys=keys, policy=policy, actor=actor
            )
            st.gate = promoted.report
            st.detail = f"{len(promoted.report.checks)} gate checks passed; VSA written"
            st.detail += lock.note()
            st.evidence = [models.store.describe(promoted.vsa_key)]

        with summary.stage("smoke-test-staging") as st:
            sample = workdir / "held-out.csv"
            write_held_out_sample(train_data, trained.params, sample)
            smoke = smoke_test_stage_task(
                models,
                "staging",
                sample,
                keys=keys,
                loader=load_model,
                min_accuracy=policy.min_smoke_accuracy,
                expect_version=version,
                policy=policy,
            )
            key, _ = models.put_evidence(
                version,
                stamped("smoke-test-staging"),
                sign_statement(smoke_test_statement(smoke), evidence.key),
            )
            st.detail = f"accuracy {smoke.accuracy:.3f} on {smoke.rows} rows"
            st.evidence = [models.store.describe(key)]

    if run.parameters["promote_to_production"]:
        approve("production")
        with summary.stage("promote-production") as st, stage_lock(models.model) as lock:
            promoted = promote_to_stage_task(
                models, version, "production", keys=keys, policy=policy, actor=actor
            )
            st.gate = promoted.report
            st.detail = f"production -> {version}; {len(promoted.report.checks)} gate checks passed"
            st.detail += lock.note()
            st.evidence = [models.store.describe(models.stage_key("production"))]
    shutil.rmtree(workdir / "train", ignore_errors=True)


def _signed_how(signed: ModelSignature) -> str:
    """How the model was signed, for the run summary."""
    if signed.method == "certificate":
        return f"model-signing, certificate {signed.certificate_subject}"
    if signed.method == "key":
        return "model-signing, EC key"
    return "Sigstore keyless"
