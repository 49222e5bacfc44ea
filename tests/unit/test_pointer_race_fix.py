"""What a run that lost a stage-pointer race is told to do (issue 11 finding 1): another
promotion moved the pointer first, so re-run the promotion; never the store's "register a
new version instead of overwriting this one" (nothing of this version was overwritten)."""

from __future__ import annotations

import pytest

from secmlops import deploy
from secmlops.deploy import DeployRefusal, promote_to_stage
from secmlops.evidence.keys import KeyDirectory
from secmlops.gate import GatePolicy, GateReport
from secmlops.registry.models import ModelRegistry
from secmlops.registry.stores import WriteConflict
from tests.unit.test_refusal_reasons import _pointer, _report, world  # noqa: F401 (fixture)


def test_a_lost_pointer_race_says_to_re_run_the_promotion(
    world: tuple[ModelRegistry, KeyDirectory],  # noqa: F811 (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models, keys = world

    def verify_while_another_promotes(*_args: object, **_kwargs: object) -> GateReport:
        _pointer(models, keys, "v2")  # another promotion moves staging meanwhile
        return _report("v1")

    monkeypatch.setattr(deploy, "verify_release", verify_while_another_promotes)
    with pytest.raises(WriteConflict) as info:
        promote_to_stage(models, "v1", "staging", keys=keys, policy=GatePolicy(), actor="t")
    assert info.value.reason is DeployRefusal.POINTER_RACE_LOST
    fix = info.value.fix or ""
    assert "another promotion moved the staging pointer first" in fix
    assert "`secmlops promote churn-classifier v1 --stage staging`" in fix
    assert "register a new version" not in fix
