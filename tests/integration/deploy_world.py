"""A registry with versions that really pass the deploy gate, built without Prefect.

Every writer's real output (as ``tests/unit/test_catalogue.py``'s ``registered``), a real
model-signing signature, real approvals by the demo approver, real promotions through
:func:`secmlops.deploy.promote_to_stage` and a real attestor-signed staging smoke test:
``verify-stage`` passes on what this builds, exactly as on a pipeline's output.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from secmlops.controls.signing import sign_model
from secmlops.controls.smoke_test import SmokeTestResult, smoke_test_statement
from secmlops.deploy import Promotion, promote_to_stage, record_approval
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import load_private_key, sign_statement, utc_now
from secmlops.gate import GatePolicy
from secmlops.registry.models import ModelRegistry, stamped
from secmlops.registry.pointers import SeenPointers
from secmlops.registry.stores import Registry
from secmlops.release import ReleaseEvidence, ReleaseInputs, register_release
from tests.unit import test_predicates as writers
from tests.unit.test_catalogue import IMAGE, SITE

MODEL = "churn"
SECMLOPS = Path(sys.executable).parent / "secmlops"
APPROVER = "demo-approver"


@dataclass
class World:
    """A model registry, its keys, the policy it passes under, and this machine's memory."""

    models: ModelRegistry
    keys: KeyDirectory
    policy: GatePolicy
    root: Path
    seen: SeenPointers

    def register(self) -> str:
        """Register a new version whose evidence and model signature all verify."""
        n = len(self.models.versions()) + 1
        work = self.root / f"build-{n}"
        evidence = ReleaseEvidence(load_private_key(self.keys.private("attestor")))
        prov = writers._provenance(work)
        model_dir = work / "train" / "model"
        evidence.add("data-pull", writers._data_pull())
        evidence.add("validation", writers._validation())
        evidence.add("image-scan", writers._image_scan())
        evidence.add("provenance", prov)
        from secmlops.controls.model_scan import model_scan_statement, scan_model_files

        evidence.add("model-scan", model_scan_statement(scan_model_files(model_dir)))
        signature = work / "model.sig"
        sign_model(model_dir, private_key=self.keys.private("model-signer"), signature=signature)
        inputs = ReleaseInputs(
            dataset={
                "sha256": writers.D,
                "repo": "/r",
                "path": "data/churn.csv",
                "rev": "v1",
                "commit": "1",
            },
            image={"ref": "img.tar", "sha256": IMAGE},
            metrics={"accuracy": 0.9},
            run=f"r{n}",
            builder="b",
            created_by="test",
        )
        reg = register_release(
            self.models, model_dir, signature, evidence.bundles, inputs, attestor=evidence.key
        )
        return reg.version

    def promote(self, version: str, stage: str) -> Promotion:
        """Approve (as the demo approver) and promote through the gate; after staging, record
        a passing staging smoke test (attestor-signed, as the pipeline's smoke test does)."""
        record_approval(
            self.models, version, stage, keys=self.keys, policy=self.policy, approve_as=APPROVER
        )
        promotion = promote_to_stage(
            self.models,
            version,
            stage,
            keys=self.keys,
            policy=self.policy,
            actor=APPROVER,
            seen=self.seen,
        )
        if stage == "staging":
            self.smoke_test(version, promotion.report.model_digest)
        return promotion

    def smoke_test(self, version: str, model_digest: str) -> None:
        result = SmokeTestResult(
            model=MODEL,
            stage="staging",
            version=version,
            model_digest=model_digest,
            sample_sha256="5" * 64,
            rows=200,
            accuracy=0.9,
            min_accuracy=self.policy.min_smoke_accuracy,
            seconds=0.1,
            passed=True,
            tested_at=utc_now(),
        )
        bundle = sign_statement(
            smoke_test_statement(result), load_private_key(self.keys.private("attestor"))
        )
        self.models.put_evidence(version, stamped("smoke-test-staging"), bundle)

    def to_production(self, version: str) -> Promotion:
        self.promote(version, "staging")
        return self.promote(version, "production")

    def policy_file(self) -> Path:
        """The policy as a file, for the CLI (``SECMLOPS_POLICY``)."""
        path = self.root / "policy.yaml"
        path.write_text(yaml.safe_dump(self.policy.model_dump(mode="json"), sort_keys=False))
        return path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``secmlops ARGS`` against this registry, keys and policy; the state home is
        ``<root>/home`` (keys there: the demo layout; its pointer memory is :attr:`seen`)."""
        env = {
            **os.environ,
            "SECMLOPS_HOME": str(self.root / "home"),
            "SECMLOPS_REGISTRY": self.models.store.uri,
            "SECMLOPS_POLICY": str(self.policy_file()),
        }
        env.pop("SECMLOPS_KEYS", None)
        return subprocess.run(
            [str(SECMLOPS), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def fresh_machine(self, name: str) -> World:
        """The same registry and keys seen from another machine (its own pointer memory)."""
        return dataclasses.replace(self, seen=SeenPointers(self.root / name / "seen.json"))


def make_world(root: Path, store: Registry) -> World:
    """Keys in ``<root>/home/keys`` and pointer memory in ``<root>/home`` (the CLI's state
    home when ``SECMLOPS_HOME`` is ``<root>/home``, see :meth:`World.cli_env`)."""
    keys = KeyDirectory(root / "home" / "keys")
    keys.ensure(approvers=(APPROVER,))
    return World(
        models=ModelRegistry(store, MODEL),
        keys=keys,
        policy=GatePolicy(sources=SITE),
        root=root,
        seen=SeenPointers(root / "home" / "trusted-pointers.json"),
    )
