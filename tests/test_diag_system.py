"""``triosrv diag system``: the facts, their hints, the table and the JSON."""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys

import pytest
import trio
from click.testing import CliRunner

from triosrv._cli import main
from triosrv._config import BACKENDS
from triosrv.diagnostics import render_system, system_facts
from triosrv.diagnostics._system import fd_setsize, io_manager_name

EXPECTED_FACTS = {
    "python",
    "trio",
    "platform",
    "cpus",
    "io_manager",
    "multiplexers",
    "backends",
    "usable_cpus",
    "fd_setsize",
    "rlimit_nofile_soft",
    "rlimit_nofile_hard",
    "somaxconn",
    "ephemeral_ports",
    "fd0_stdin",
    "fd1_stdout",
    "fd2_stderr",
}


def facts_by_name(**kwargs: int) -> dict[str, object]:
    return {fact.name: fact for fact in system_facts(**kwargs)}


def test_system_facts_has_every_fact_once() -> None:
    names = [fact.name for fact in system_facts()]
    assert sorted(names) == sorted(EXPECTED_FACTS)


@pytest.mark.skipif(sys.platform != "linux", reason="Linux facts")
def test_system_facts_match_the_linux_machine() -> None:
    facts = {fact.name: fact.value for fact in system_facts()}
    assert facts["trio"] == trio.__version__
    assert facts["io_manager"] == "epoll"
    assert {"select", "poll", "epoll"} <= set(facts["multiplexers"])  # type: ignore[arg-type]
    assert facts["backends"] == list(BACKENDS)  # every backend runs on Linux
    assert facts["usable_cpus"] == len(os.sched_getaffinity(0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert facts["rlimit_nofile_soft"] == (None if soft == resource.RLIM_INFINITY else soft)
    assert facts["rlimit_nofile_hard"] == (None if hard == resource.RLIM_INFINITY else hard)
    with open("/proc/sys/net/core/somaxconn") as file:
        assert facts["somaxconn"] == int(file.read())
    first, last = facts["ephemeral_ports"]  # type: ignore[misc]
    assert 0 < first <= last <= 65535


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's FD_SETSIZE")
def test_system_fd_setsize_is_where_select_starts_refusing() -> None:
    size = fd_setsize()
    assert size == 1024  # glibc
    with pytest.raises(ValueError, match="out of range"):
        select.select([size], [], [], 0)


def test_system_io_manager_is_trios_own_choice() -> None:
    expected = "epoll" if hasattr(select, "epoll") else "kqueue"
    assert io_manager_name() == expected


def test_system_soft_nofile_below_max_connections_gets_a_hint() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no fd limit here")
    limited = facts_by_name(max_connections=soft + 1)["rlimit_nofile_soft"]
    assert "below max_connections" in limited.hint  # type: ignore[attr-defined]
    roomy = facts_by_name(max_connections=1)["rlimit_nofile_soft"]
    assert roomy.hint is None  # type: ignore[attr-defined]


def test_system_closed_stdin_gets_a_hint() -> None:
    # `0<&-` closes stdin in the child before triosrv starts.
    result = subprocess.run(
        f"{sys.executable} -m triosrv diag system --json 0<&-",
        shell=True,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    facts = {fact["name"]: fact for fact in json.loads(result.stdout)["facts"]}
    assert facts["fd0_stdin"]["value"] is None
    assert "fd 0 is closed" in facts["fd0_stdin"]["hint"]
    assert facts["fd1_stdout"]["hint"] is None


def test_diag_system_cli_prints_a_table() -> None:
    result = CliRunner().invoke(main, ["diag", "system"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["FACT", "VALUE", "HINT"]
    names = {line.split()[0] for line in lines[1:]}
    assert names == EXPECTED_FACTS


def test_diag_system_cli_json_parses() -> None:
    result = CliRunner().invoke(main, ["diag", "system", "--json", "--max-connections", "5"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert {fact["name"] for fact in doc["facts"]} == EXPECTED_FACTS
    assert all(set(fact) == {"name", "value", "hint"} for fact in doc["facts"])


def test_render_system_shows_hints_beside_values() -> None:
    facts = system_facts(max_connections=10**9)
    text = render_system(facts)
    soft_line = next(line for line in text.splitlines() if line.startswith("rlimit_nofile_soft"))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] != resource.RLIM_INFINITY:
        assert "ulimit -n" in soft_line
