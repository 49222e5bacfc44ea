"""Security policies users set in the UI; each turns into a frozen, validated policy object."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from tasks.approval import ApprovalPolicy
from tasks.gate import GatePolicy
from tasks.scanning import ScanPolicy, Severity


class SecurityPolicies(Block):
    """Scan thresholds, approvers per stage, and the smoke-test floor for the deploy gate."""

    _block_type_name = "SecMLOps Security Policies"
    _description = "Policies the pipeline's gates enforce (scan, approval, smoke test)."

    scan_fail_on: list[Severity] = Field(
        default=["CRITICAL", "HIGH"],
        description="Vulnerability severities that block a release. Must not be empty.",
    )
    scan_ignore_unfixed: bool = Field(
        default=False, description="Ignore vulnerabilities without a fixed version."
    )
    scan_unsafe_allow_curated_db: bool = Field(
        default=False,
        description="DEMO ONLY: accept scans made with a curated Trivy DB (the offline demo "
        "DB). A pass against a subset of advisories means little; evidence records it.",
    )
    staging_approvers: list[str] = Field(
        default=["demo-approver"], description="Who may approve deploys to staging."
    )
    production_approvers: list[str] = Field(
        default=["demo-approver"], description="Who may approve promotions to production."
    )
    separation_of_duties: bool = Field(
        default=False,
        description="Production must be approved by someone other than the staging approver.",
    )
    unsafe_auto_approve_staging: bool = Field(
        default=False,
        description="DEV ONLY: let staging pass without a person (recorded as automatic). "
        "Production can never be auto-approved.",
    )
    min_smoke_accuracy: float = Field(
        default=0.6, ge=0, le=1, description="Smoke-test accuracy floor in staging."
    )

    def gate_policy(self) -> GatePolicy:
        """Build the validated policy objects (raises InputError for a permissive config)."""
        return GatePolicy(
            scan=ScanPolicy(
                fail_on=tuple(self.scan_fail_on),
                ignore_unfixed=self.scan_ignore_unfixed,
                unsafe_allow_curated_db=self.scan_unsafe_allow_curated_db,
            ),
            approval=ApprovalPolicy(
                approvers={
                    "staging": tuple(self.staging_approvers),
                    "production": tuple(self.production_approvers),
                },
                unsafe_auto_approve_stages=("staging",) if self.unsafe_auto_approve_staging else (),
                separation_of_duties=self.separation_of_duties,
            ),
            min_smoke_accuracy=self.min_smoke_accuracy,
        )
