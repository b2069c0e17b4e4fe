"""Reference tables generated from the running code, so that they cannot drift.

- ``.. triosrv-config-keys::``: every option of ``triosrv listen`` (its click
  parameters): the config-file key, the option, the default, what it does.
- ``.. triosrv-metrics::``: every metric family a live server exports
  (``triosrv.diagnostics.metrics_registry`` on a server started for the purpose).
- ``.. triosrv-status-example::``: the status document of a live server with one
  connection, as ``triosrv status --json`` prints it (the task tree cut short).
- ``.. triosrv-status-text::``: the connections and task tree of ``triosrv status``
  for a live server with two loopback connections, the tree from the server's own
  task down: its ``file:line`` places are those of the code the docs are built from.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click
import trio
import trio.testing
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

import triosrv


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(param: click.Parameter) -> str:
    if param.default is None or param.default == ():
        return ""
    if isinstance(param, click.Option) and param.is_flag:
        return "on" if param.default else "off"
    return f"``{param.default}``"


def config_key_rows() -> list[tuple[str, str, str, str]]:
    """(key, option, default, help) for every option of ``triosrv listen``."""
    from triosrv._cli import main

    listen = main.commands["listen"]
    rows = []
    for param in listen.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        long = max(param.opts, key=len)
        key = long.lstrip("-")
        option = ", ".join(f"``{o}``" for o in [*param.opts, *param.secondary_opts])
        rows.append((f"``{key}``", option, _default(param), _cell(param.help or "")))
    return rows


async def _with_server(work: Any) -> Any:
    """Return ``work(server, started)`` run while a server has one live connection."""
    config = triosrv.ServerConfig(binds=())
    client, server_side = trio.testing.memory_stream_pair()
    handler = triosrv.protocol_handler(triosrv.protocols.Echo)
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        server = await nursery.start(triosrv.serve, handler, config)
        nursery.start_soon(server.add_stream, server_side)
        await client.send_all(b"hi")
        await client.receive_some()
        await trio.sleep(0.05)  # a little uptime and idle time to show
        result = work(server, started)
        await client.aclose()
        server.shutdown(grace=1)
    return result


def metric_rows() -> list[tuple[str, str, str, str]]:
    """(name, type, labels, help) for every metric family a live server exports."""
    from triosrv.diagnostics import metrics_registry

    def collect(server: Any, _started: float) -> list[tuple[str, str, str, str]]:
        rows = []
        for family in metrics_registry(server).collect():
            labels = sorted({k for s in family.samples for k in s.labels})
            suffix = "_total" if family.type == "counter" else ""
            rows.append(
                (
                    f"``{family.name}{suffix}``",
                    family.type,
                    ", ".join(f"``{label}``" for label in labels),
                    _cell(family.documentation),
                )
            )
        return rows

    result: list[tuple[str, str, str, str]] = trio.run(_with_server, collect)
    return result


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def status_example() -> str:
    """A live server's status document, as JSON, with the task tree cut to its root."""
    from triosrv.diagnostics import status_document

    started_wall = time.time()

    def document(server: Any, started: float) -> dict[str, Any]:
        doc = status_document(server, started_at=started, started_wall=started_wall)
        doc["task_tree"]["nurseries"] = ["..."]
        return _rounded(doc)

    doc = trio.run(_with_server, document)
    return json.dumps(doc, indent=2)


async def _status_text() -> str:
    # A server on loopback with two real connections (peers show as addresses), one of
    # which has echoed a message; the text `triosrv status` prints for it.
    from triosrv.diagnostics import status_document
    from triosrv.diagnostics._status import render_status

    config = triosrv.ServerConfig(binds=("127.0.0.1:0",))
    handler = triosrv.protocol_handler(triosrv.protocols.Echo)
    started_wall = time.time()
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        server = await nursery.start(triosrv.serve, handler, config)
        port = int(server.addresses[0].rsplit(":", 1)[1])
        async with await trio.open_tcp_stream("127.0.0.1", port) as first:
            await first.send_all(b"hi")
            await first.receive_some()
            async with await trio.open_tcp_stream("127.0.0.1", port):
                with trio.fail_after(30):  # a real server on a maybe busy machine
                    while server.statistics().active < 2:
                        await trio.sleep(0.01)  # accepting happens in the server's task
                await trio.sleep(0.05)  # a little age and idle time to show
                doc = status_document(server, started_at=started, started_wall=started_wall)
        server.shutdown(grace=1)
    return render_status(doc)


def status_text_example() -> list[str]:
    """The connections table and task tree of ``triosrv status`` for a live server
    with two connections; the tree above the server's own task is cut to ``...``."""
    lines = trio.run(_status_text).splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("connections:")) :]
    tree = lines.index("task tree:") + 1
    serve = next(i for i, line in enumerate(lines) if "triosrv._server.serve" in line)
    return [*lines[:tree], "...", *lines[serve:]]


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], widths: str) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    return lines


class _Generated(SphinxDirective):
    has_content = False

    def lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        node = nodes.section()
        node.document = self.state.document
        source = f"<{self.name}>"
        self.state.nested_parse(StringList(self.lines(), source=source), 0, node)
        return node.children


class ConfigKeys(_Generated):
    def lines(self) -> list[str]:
        header = ("config key", "option", "default", "meaning")
        return _table(header, config_key_rows(), "18 22 12 48")


class Metrics(_Generated):
    def lines(self) -> list[str]:
        return _table(("metric", "type", "labels", "meaning"), metric_rows(), "34 8 18 40")


class StatusExample(_Generated):
    def lines(self) -> list[str]:
        body = status_example().splitlines()
        return [".. code-block:: json", "", *[f"   {line}" for line in body]]


class StatusText(_Generated):
    def lines(self) -> list[str]:
        return [".. code-block:: text", "", *[f"   {line}" for line in status_text_example()]]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("triosrv-config-keys", ConfigKeys)
    app.add_directive("triosrv-metrics", Metrics)
    app.add_directive("triosrv-status-example", StatusExample)
    app.add_directive("triosrv-status-text", StatusText)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
