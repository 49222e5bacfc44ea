"""Where models, evidence and stage pointers are stored: a directory or S3."""

from __future__ import annotations

from pydantic import Field, SecretStr

from blocks._schema import SecMLOpsBlock
from secmlops.registry.stores import Registry, S3Registry, open_registry
from secmlops.settings import current_settings


class RegistryTarget(SecMLOpsBlock):
    """The model registry: a local directory (default) or ``s3://bucket/prefix``."""

    _block_type_name = "SecMLOps Registry Target"
    _description = "Model registry location (directory or S3) and S3 credentials."
    _form_required = ("uri",)

    uri: str = Field(
        default="",
        description="Directory path, file:///path or s3://bucket/prefix (the block form "
        "asks for it). Empty, or no registry block given to a run: $SECMLOPS_REGISTRY, else "
        ".secmlops/registry.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 API endpoint for non-AWS S3 (MinIO, Ceph, moto). Empty: "
        "$SECMLOPS_S3_ENDPOINT_URL or AWS.",
    )
    aws_access_key_id: SecretStr | None = Field(
        default=None, description="AWS access key id; empty: the usual boto3 credential chain."
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, description="AWS secret access key; empty: the usual boto3 chain."
    )
    region_name: str | None = Field(default=None, description="AWS region of the bucket.")

    def resolved_uri(self, default: str) -> str:
        """This block's URI, else ``SECMLOPS_REGISTRY``, else ``default``."""
        return self.uri or current_settings().registry or default

    def open(self, default: str) -> Registry:
        """Open the registry this block describes (environment variables fill the gaps)."""
        endpoint = self.s3_endpoint_url or current_settings().s3_endpoint_url
        registry = open_registry(self.resolved_uri(default), s3_endpoint_url=endpoint)
        if isinstance(registry, S3Registry) and (
            self.aws_access_key_id or self.aws_secret_access_key or self.region_name
        ):
            import boto3

            session = boto3.session.Session(
                aws_access_key_id=self.aws_access_key_id.get_secret_value()
                if self.aws_access_key_id
                else None,
                aws_secret_access_key=self.aws_secret_access_key.get_secret_value()
                if self.aws_secret_access_key
                else None,
                region_name=self.region_name,
            )
            registry.use_session(session)
        return registry
