"""Fixtures for the scaler tests: the RunPod emulator serving the management API too. The
real PostgreSQL (`db`) comes from tests/fixtures/postgres.py."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.doubles.runpod_management import ManagementApi, emulator_with_management

API_KEY = "test-runpod-key"


class FakeClock:
    """A monotonic clock the test moves by hand: grace periods without sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture()
def management() -> ManagementApi:
    return ManagementApi(api_key=API_KEY)


@pytest.fixture()
def emulator(management: ManagementApi) -> Iterator:
    emulator = emulator_with_management(management).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()
