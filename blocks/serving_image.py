"""The container image the model is served in, which the pipeline scans with Trivy."""

from __future__ import annotations

from pydantic import Field

from blocks._schema import SecMLOpsBlock


class ServingImage(SecMLOpsBlock):
    """The serving image: an image reference, a docker-archive tar or an OCI layout dir."""

    _block_type_name = "SecMLOps Serving Image"
    _description = "Image to scan: reference, docker-archive tar or OCI layout directory."
    _form_required = ("target",)

    target: str = Field(
        default="",
        description="Image reference (registry/name:tag), docker-archive .tar or OCI layout "
        "directory (the block form asks for it). Empty, or no image block given to a run: "
        "build the demo serving image from uv.lock (no Docker needed).",
    )
    trivy_cache_dir: str = Field(
        default="",
        description="Trivy cache dir holding db/trivy.db. Empty: .secmlops/trivy-cache, "
        "seeded with the offline demo DB if it holds none.",
    )
