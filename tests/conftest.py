"""Shared fixtures: a real Mosquitto on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulators.broker import LocalMosquitto


@pytest.fixture
def mosquitto() -> Iterator[LocalMosquitto]:
    with LocalMosquitto() as broker:
        yield broker
