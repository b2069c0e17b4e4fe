"""pytest plugin for triosrv.testing: the ``leak_check`` fixture.

Enable it in your root ``conftest.py`` with ``pytest_plugins =
["triosrv.testing.pytest_plugin"]`` (or ``pytest -p triosrv.testing.pytest_plugin``),
then ask for the fixture in a test, or make it autouse in your conftest::

    @pytest.fixture(autouse=True)
    def _no_leaks(leak_check: None) -> None:
        pass

It fails the test with the list of fds, threads and trio tasks the test left behind.
Importing this module imports pytest; ``triosrv.testing`` itself does not.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._leaks import check_no_leaks


@pytest.fixture
def leak_check() -> Iterator[None]:
    """Fail the test if it leaves an fd or a thread behind (see ``check_no_leaks``)."""
    with check_no_leaks():
        yield
