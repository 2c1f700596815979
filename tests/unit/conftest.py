"""The unit lane: the math, the config, the plan, the store and the report on rows in memory. No Ray, no FFCV and
no subprocess (those are tests/integration and tests/system); under 2 minutes on 2 cores (`make check`)."""

import sys

import pytest

HEAVY = ("ray", "ffcv")


@pytest.fixture(autouse=True)
def _stays_a_unit_test():
    before = {m for m in HEAVY if m in sys.modules}
    yield
    after = {m for m in HEAVY if m in sys.modules}
    assert after <= before, f"a unit test imported {sorted(after - before)}: it belongs in tests/integration"
