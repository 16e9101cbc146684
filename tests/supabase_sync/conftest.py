"""Fixtures for the dispatcher tests; the database fixtures (`db`, `pg_cluster`) come from
tests/fixtures/postgres.py."""

from __future__ import annotations

from typing import Any, Iterator

import pytest


@pytest.fixture()
def emulator() -> Iterator[Any]:
    from tests.doubles.runpod_emulator import RunPodEmulator

    emu = RunPodEmulator(webhook_retry_delay_s=0.2, job_take_wait_s=0.5).start()
    try:
        yield emu
    finally:
        emu.stop()
