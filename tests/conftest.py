"""Shared fixtures: every test is checked for leaked fds and threads by triosrv.testing's
own ``leak_check`` (so the public helper is proven by this suite); server tests check
tasks too, through ``open_test_server``."""

from __future__ import annotations

import pytest

pytest_plugins = ["triosrv.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
def no_leaks(leak_check: None) -> None:
    """Fail the test if it leaves an fd or a thread behind (``check_no_leaks``)."""


@pytest.fixture
def backend() -> str:
    """The server backend a behavioural test passes to ``running_server``.

    ``trio`` here; ``tests/test_backends.py`` overrides this fixture with one
    parameter per backend and imports the behavioural tests, so each runs once per
    backend (the conformance suite).
    """
    return "trio"
