"""Prefect Blocks: what users configure in the Prefect UI (data source, registry, image).

Every field has a working default, so the embedded demo needs no configuration; save a
block (``Block.save("name")``) or create one in the UI to point the same flows at your
DVC registry, S3 and serving image. Secrets are ``SecretStr``.

Gate policies are deliberately *not* a block: they live in ``secmlops-policy.yaml`` in the
worker's checkout (policy as code, changed by review), so nobody who can merely start a
flow run in the UI can weaken a gate for that run.
"""

from blocks.data_source import DataSource
from blocks.registry_target import RegistryTarget
from blocks.serving_image import ServingImage

__all__ = ["DataSource", "RegistryTarget", "ServingImage"]
