"""What every SecMLOps block shares: a JSON schema a saved-block reference cannot also match.

A flow parameter typed as a block takes a saved block by reference,
``{"$ref": {"block_document_id": ...}}``, which Prefect validates against
``oneOf: [the block's schema, a reference]``
(``prefect.utilities.schema_tools.validation.preprocess_schema``). ``oneOf`` means *exactly
one*. A block whose schema requires nothing and allows extra keys matches a reference object
as well, so picking a saved block in a deployment's Custom run form failed with "Validate
parameters" ticked (``... is not valid under any of the given schemas``).

The fix: each block's JSON schema requires the field that says where the block points
(``_form_required``). A reference object lacks it, so only the reference branch matches. It
has to be ``required``: the UI sends the schema to the server's validation endpoint
itself and keeps only the keywords it knows (``not`` and ``additionalProperties`` are
dropped). Python is unchanged: the field keeps its default, so ``RegistryTarget()`` is still
the embedded demo. The UI's block form asks for that field; to get the default in a run
form, pick no block.
"""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.blocks.core import Block, schema_extra
from pydantic import ConfigDict


def _block_schema(schema: dict[str, Any], model: type[Block]) -> None:
    schema_extra(schema, model)  # Prefect's own: block type slug, secret fields, references
    required = getattr(model, "_form_required", ())
    if required:
        schema["required"] = sorted({*schema.get("required", ()), *required})


class SecMLOpsBlock(Block):
    """Base of the SecMLOps blocks: a saved one can be picked in a run form that validates."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="allow", json_schema_extra=_block_schema)

    #: Fields the block's JSON schema requires (UI forms, parameter validation); each keeps
    #: its Python default. At least one, or a saved-block reference also matches the block.
    _form_required: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        unknown = set(cls._form_required) - set(cls.model_fields)
        if unknown or (cls.__dict__.get("_block_type_name") and not cls._form_required):
            raise TypeError(
                f"{cls.__name__}._form_required must name at least one of its fields "
                f"(unknown: {sorted(unknown)})"
            )
