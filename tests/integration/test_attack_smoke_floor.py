"""Issue 8 attack 6: stored smoke tests were not re-judged.

Old behaviour: the production gate took the staging smoke test's stored ``result: PASSED``
at its word, so after tightening ``min_smoke_accuracy`` to 0.8 a version whose staging smoke
test measured 0.75 (and passed the 0.6 floor of its day) was still promoted to production.
Now the stored accuracy is compared with the ``min_smoke_accuracy`` of the policy in force at
promotion: the gate refuses with ``SMOKE_BELOW_FLOOR`` and a message with both numbers.

The same real registered version as the revocation attack (real evidence, real model
signature, real keys, a local registry), staged through the real staging gate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from secmlops.catalogue import GateRefusal
from secmlops.errors import ControlRefused
from secmlops.gate import verify_release
from tests.integration.test_attack_revocation import World, make_world, policy


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield make_world(tmp_path / "home")


def test_a_tightened_smoke_floor_refuses_promotion(world: World) -> None:
    """Issue 8 attack 6: staging smoke accuracy 0.75; the floor goes from 0.6 to 0.8.
    Old behaviour: promoted to production (exit 0). Now refused, naming both numbers."""
    world.stage(accuracy=0.75)
    world.decide("production", "bob")
    passed = world.gate("production", policy(min_smoke_accuracy=0.6))
    assert passed.passed
    staged = {c.name: c for c in passed.checks}["staged"]
    assert "accuracy 0.7500 >= min_smoke_accuracy 0.6" in staged.detail
    tightened = policy(min_smoke_accuracy=0.8)
    with pytest.raises(ControlRefused) as err:
        verify_release(world.models, "v1", "production", keys=world.keys, policy=tightened)
    assert err.value.reason is GateRefusal.SMOKE_BELOW_FLOOR
    message = str(err.value)
    assert "staged:" in message
    assert "smoke-test accuracy 0.7500 is below the policy's min_smoke_accuracy 0.8" in message
    assert "ran under a floor of 0.6" in message


def test_a_failed_smoke_test_still_refuses(world: World) -> None:
    """A smoke test whose own verdict is FAILED is refused whatever its accuracy."""
    world.stage(accuracy=0.95, result="FAILED")
    world.decide("production", "bob")
    check = world.check("production", "staged")
    assert check.reason is GateRefusal.SMOKE_TEST_FAILED, check.detail


def test_a_smoke_accuracy_that_is_not_a_number_is_refused(world: World) -> None:
    """A NaN accuracy compares false with every floor: it must not slip through."""
    world.stage(accuracy=float("nan"))
    world.decide("production", "bob")
    check = world.check("production", "staged")
    assert check.reason is GateRefusal.SMOKE_BELOW_FLOOR, check.detail
    assert "is not an accuracy" in check.detail


def test_one_smoke_test_meeting_todays_floor_is_enough(world: World) -> None:
    """Staging was smoke-tested twice (0.75, then 0.85): under a 0.8 floor the second one
    counts."""
    world.stage(accuracy=0.75)
    world.decide("production", "bob")
    assert world.check("production", "staged", policy(min_smoke_accuracy=0.8)).reason is (
        GateRefusal.SMOKE_BELOW_FLOOR
    )
    world.stage(accuracy=0.85)
    assert world.gate("production", policy(min_smoke_accuracy=0.8)).passed
