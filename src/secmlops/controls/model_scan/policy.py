"""What a model directory may contain: :class:`ModelScanPolicy`.

By default only safetensors, plain numeric ``.npy`` arrays, JSON and small text files pass
and any pickle is refused. The policy may widen this only to other data-only formats
(``SAFE_FORMATS``: ``zip``, whose every member is judged like a file, so an ``.npz`` of numeric
arrays passes only when zip is allowed) or, explicitly and loudly, to pickles whose every
import is listed in ``unsafe_allow_pickle_globals``.

Example::

    policy = ModelScanPolicy(allowed_formats=frozenset({"safetensors", "json", "text", "zip"}))
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from secmlops.controls.model_scan.pickle_analysis import is_dangerous_global

log = logging.getLogger(__name__)

#: Formats that carry data only; a policy may allow these and nothing else.
SAFE_FORMATS = frozenset({"safetensors", "json", "text", "npy", "zip"})
#: Every format the scanner can name.
Format = Literal["safetensors", "json", "text", "npy", "zip", "pickle", "hdf5", "gguf", "unknown"]


class ModelScanPolicy(BaseModel):
    """What a model directory may contain.

    By default only safetensors, plain numeric ``.npy`` (judged by
    :func:`~secmlops.controls.model_scan.formats.npy_finding`), JSON and small text files pass
    and any pickle is refused.
    ``unsafe_allow_pickle_globals`` lets pickles through whose every global import is on the
    list (e.g. ``collections.OrderedDict``); dangerous globals are refused regardless.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_formats: frozenset[str] = Field(
        default=frozenset({"safetensors", "json", "text", "npy"}),
        description="Formats (detected by content) that may appear in a model directory.",
    )
    max_file_bytes: int = Field(
        default=8 * 1024**3, gt=0, description="Larger files are refused, not skipped."
    )
    max_text_bytes: int = Field(
        default=1024**2, gt=0, description="Largest JSON or text file accepted."
    )
    unsafe_allow_pickle_globals: frozenset[str] = Field(
        default=frozenset(),
        description="Pickle globals (module.name) tolerated in pickles. Empty: no pickles.",
    )

    @field_validator("allowed_formats")
    @classmethod
    def _formats_are_safe(cls, value: frozenset[str]) -> frozenset[str]:
        if not value:
            raise ValueError("allowed_formats is empty: a model directory could hold nothing")
        unsafe = value - SAFE_FORMATS
        if unsafe:
            raise ValueError(
                f"allowed_formats may only name {sorted(SAFE_FORMATS)}; got {sorted(unsafe)} "
                "(pickles are allowed only through unsafe_allow_pickle_globals)"
            )
        return value

    @field_validator("unsafe_allow_pickle_globals")
    @classmethod
    def _globals_not_dangerous(cls, value: frozenset[str]) -> frozenset[str]:
        bad = sorted(g for g in value if "." not in g or is_dangerous_global(g))
        if bad:
            raise ValueError(f"these pickle globals can never be allowed: {bad}")
        if value:
            log.warning(
                "model scan policy allows pickles importing %s: loading them runs code",
                sorted(value),
            )
        return value

    def to_json(self) -> dict[str, Any]:
        """The policy as recorded in the evidence (sorted, so it is stable)."""
        return {
            "allowed_formats": sorted(self.allowed_formats),
            "max_file_bytes": self.max_file_bytes,
            "max_text_bytes": self.max_text_bytes,
            "unsafe_allow_pickle_globals": sorted(self.unsafe_allow_pickle_globals),
        }
