"""Prefect Blocks: what users configure in the Prefect UI (sources, targets, policies).

Every field has a working default, so the embedded demo needs no configuration; save a
block (``Block.save("name")``) or create one in the UI to point the same flows at your
DVC registry, S3 and policies. Secrets are ``SecretStr``.
"""

from blocks.data_source import DataSource
from blocks.policies import SecurityPolicies
from blocks.registry_target import RegistryTarget
from blocks.serving_image import ServingImage

__all__ = ["DataSource", "RegistryTarget", "SecurityPolicies", "ServingImage"]
