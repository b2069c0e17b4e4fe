"""The documentation: it builds with warnings as errors, it lists every public name and
every ``triosrv listen`` option, every Python example in it runs, and the README stays
short and free of machine paths.

The site is built once per test session (``docs_html``), into a temporary directory,
by the same command CI runs: ``sphinx-build -W --keep-going -b html docs OUT``.
"""

from __future__ import annotations

import contextlib
import html
import http.server
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PUBLIC_MODULES = ("triosrv", "triosrv.testing", "triosrv.protocols", "triosrv.lowlevel")
FENCE = re.compile(
    r"^(`{3,})(?:python|py|\{code-block\} python)[ \t]*\n(.*?)^\1[ \t]*$", re.M | re.S
)
# Machine paths and lab-notebook wording that must not reach a reader.
FORBIDDEN = re.compile(r"/root/|/work/|/home/\w|\.pyenv|this session|the session before")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _python_examples() -> list[object]:
    """The fenced Python blocks of the README and each docs page, as (where, code) params.

    A page's blocks are one program, run in order (a later block may use what an
    earlier one defined, as in a literate how-to); blocks that define ``test_*``
    functions are the page's test file instead.
    """
    found = []
    for page in _pages():
        if "_build" in page.parts:
            continue
        text = page.read_text()
        blocks = [m.group(2) for m in FENCE.finditer(text)]
        tests = [b for b in blocks if re.search(r"^(async )?def test_", b, re.M)]
        program = [b for b in blocks if b not in tests]
        where = str(page.relative_to(ROOT))
        for kind, group in (("program", program), ("tests", tests)):
            if group:
                found.append(pytest.param(where, "\n\n".join(group), id=f"{where}:{kind}"))
    return found


@pytest.fixture(scope="session")
def docs_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as CI builds it; the build's own output on failure."""
    pytest.importorskip("sphinx")
    out = tmp_path_factory.mktemp("docs") / "html"
    build = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    done = subprocess.run(
        [*build, "-d", str(out.parent / "doctrees"), str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"sphinx-build failed:\n{done.stdout}\n{done.stderr}"
    return out


def _inventory_names(html: Path) -> set[str]:
    from sphinx.util.inventory import InventoryFile

    with open(html / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", lambda base, uri: uri)
    return {name for kind, entries in inventory.items() for name in entries}


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_inventory_holds_every_public_name(docs_html: Path, module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = _inventory_names(docs_html)
    missing = [n for n in module.__all__ if f"{module_name}.{n}" not in names]
    assert not missing, f"{module_name}.__all__ names missing from objects.inv: {missing}"


def test_cli_reference_lists_every_listen_option(docs_html: Path) -> None:
    from triosrv._cli import main

    listen = main.commands["listen"]
    assert isinstance(listen, click.Command)
    names = _inventory_names(docs_html)
    options = [opt for p in listen.params if isinstance(p, click.Option) for opt in p.opts]
    assert "--bind" in options
    missing = [o for o in options if f"triosrv-listen.{o}" not in names]
    assert not missing, f"triosrv listen options missing from the CLI reference: {missing}"
    page = (docs_html / "reference" / "cli.html").read_text()
    for opt in options:
        assert f">{opt}<" in page, opt


def test_every_page_is_built_and_reachable_from_the_index(docs_html: Path) -> None:
    # Every source page became an HTML page, and the section indexes link to them.
    for page in DOCS.rglob("*.md"):
        if "_build" in page.parts:
            continue
        built = docs_html / page.relative_to(DOCS).with_suffix(".html")
        assert built.exists(), built
    index = (docs_html / "index.html").read_text()
    for section in ("tutorial", "howto", "reference", "explanation"):
        assert f'href="{section}/index.html"' in index, section


def test_tutorial_covers_every_design(docs_html: Path) -> None:
    from triosrv._config import BACKENDS

    tutorial = "\n".join(p.read_text() for p in sorted((DOCS / "tutorial").glob("*.md")))
    for backend in BACKENDS:
        assert f"triosrv listen --backend {backend}" in tutorial or backend == "trio", backend
    assert "weak_echo_server.py" in tutorial  # the blocking server, step 1
    for topic in ("FD_SETSIZE", "O(N)", "flat", "KiB per", "Cancellation"):
        assert topic in tutorial, topic


@pytest.mark.parametrize(("where", "code"), _python_examples())
def test_python_example_runs(where: str, code: str, tmp_path: Path) -> None:
    """Each example runs as it stands, from the checkout's root; a block that defines
    ``test_*`` functions is run by pytest (trio mode), as a reader's test file would be."""
    script = tmp_path / "test_example.py"
    script.write_text(code)
    if re.search(r"^(async )?def test_", code, re.M):
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
        cmd += ["-o", "trio_mode=true", "--rootdir", str(tmp_path), str(script)]
    else:
        cmd = [sys.executable, str(script)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"


def test_readme_is_short_starts_with_the_two_commands_and_has_no_machine_paths() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "triosrv listen" in first_block
    assert "pip install -e '.[test]' && pytest" in first_block
    # CI runs exactly the README's test command.
    assert "pip install -e '.[test]' && pytest\n" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_machine_paths_or_session_language(page: Path) -> None:
    hits = [m.group(0) for m in FORBIDDEN.finditer(page.read_text())]
    assert not hits, f"{page.relative_to(ROOT)}: {hits}"


# A place in triosrv's own code, as a task tree shows it: ``_run (_server.py:246)``.
SOURCE_PLACE = re.compile(r"([\w<>]+) \((_\w+\.py):(\d+)\)")


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_hard_codes_a_line_of_triosrv_code(page: Path) -> None:
    # Such line numbers drift with every edit: samples that show them are generated
    # when the docs are built (docs/_ext/triosrv_tables.py).
    hits = [m.group(0) for m in SOURCE_PLACE.finditer(page.read_text())]
    assert not hits, f"{page.relative_to(ROOT)}: {hits}"


def _enclosing_functions(module: str, line: int) -> set[str]:
    # The innermost def around ``line`` in each triosrv file named ``module``.
    import ast

    found = set()
    for path in (ROOT / "triosrv").rglob(module):
        best: tuple[int, str] | None = None
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inside = node.lineno <= line <= (node.end_lineno or node.lineno)
                if inside and (best is None or node.lineno > best[0]):
                    best = (node.lineno, node.name)
        if best is not None:
            found.add(best[1])
    return found


def test_diagnose_status_sample_is_generated_from_the_code(docs_html: Path) -> None:
    page = html.unescape((docs_html / "howto" / "diagnose.html").read_text())
    for name in ("triosrv._server.serve", "triosrv deadline keeper", "connections: 2"):
        assert name in page, name
    places = SOURCE_PLACE.findall(re.sub(r"<[^>]+>", "", page))
    assert len(places) >= 4
    for function, module, line in places:
        assert function in _enclosing_functions(module, int(line)), (function, module, line)


def test_readme_links_point_at_existing_pages() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links
    for link in links:
        assert (ROOT / link).exists(), link
    # The headline figures' commands name scripts and subcommands that exist.
    scripts = re.findall(r"python (scripts/[\w./]+\.py)", readme)
    assert len(scripts) >= 2
    for script in scripts:
        assert (ROOT / script).exists(), script
    from triosrv._cli import main

    for words in re.findall(r"`triosrv ([a-z-]+(?: [a-z-]+)?)", readme):
        command: click.Command = main
        for word in words.split():
            if isinstance(command, click.Group) and word in command.commands:
                command = command.commands[word]
        assert command is not main, words


# -- the built site in a real browser (headless Chromium; skipped where there is none) --

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Loads each page in a same-origin iframe, waits for its images, checks every image
# decoded and every internal link answers, and writes one line per finding.
HARNESS = """<!doctype html><html><body><pre id="out">pending</pre><script>
async function check(pages) {
  const out = [];
  for (const page of pages) {
    const frame = document.createElement("iframe");
    frame.width = 1200; frame.height = 800;
    document.body.appendChild(frame);
    await new Promise(done => { frame.onload = done; frame.src = page; });
    const doc = frame.contentDocument;
    await Promise.all([...doc.images].map(
      i => i.complete ? null : new Promise(done => { i.onload = i.onerror = done; })));
    for (const i of doc.querySelectorAll("article img"))
      out.push(`img ${page} ${i.getAttribute("src")} ${i.naturalWidth}`);
    const links = new Set([...doc.querySelectorAll("a[href]")]
      .map(a => a.href.split("#")[0]).filter(h => h.startsWith(location.origin)));
    for (const link of links) {
      const answer = await fetch(link, {method: "HEAD"});
      if (!answer.ok) out.push(`broken ${page} ${link} ${answer.status}`);
    }
    out.push(`page ${page} links ${links.size} title ${doc.title}`);
    frame.remove();
  }
  return out;
}
check(PAGES).then(
  out => { document.getElementById("out").textContent = out.join("\\n") + "\\nDONE"; },
  err => { document.getElementById("out").textContent = "ERROR " + err; });
</script></body></html>
"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium on this machine")


@contextlib.contextmanager
def _serve_directory(root: Path) -> Iterator[str]:
    """An HTTP server for ``root`` on 127.0.0.1 (a free port), stopped on exit."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, name="docs http")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _run_chromium(args: list[str], tmp_path: Path, timeout: float = 120) -> str:
    """Run headless Chromium once (its own profile and process group); its stdout."""
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:  # timed out: stop it and its children, by group id
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return out.decode(errors="replace")


def test_site_renders_in_chromium_with_working_links_and_plots(
    docs_html: Path, tmp_path: Path
) -> None:
    pages = sorted(str(p.relative_to(docs_html)) for p in docs_html.rglob("*.html"))
    pages = [p for p in pages if not p.startswith(("_modules", "_sources", "genindex", "search"))]
    harness = HARNESS.replace("PAGES", json.dumps(pages))
    (docs_html / "_browser_check.html").write_text(harness)
    with _serve_directory(docs_html) as origin:
        dom = _run_chromium(
            ["--virtual-time-budget=60000", "--dump-dom", f"{origin}/_browser_check.html"],
            tmp_path,
        )
        shot = tmp_path / "performance.png"
        page = f"{origin}/explanation/performance.html"
        _run_chromium(["--window-size=1280,2400", f"--screenshot={shot}", page], tmp_path)
    report = html.unescape(dom.split('<pre id="out">', 1)[1].split("</pre>", 1)[0])
    assert report.endswith("DONE"), report[-2000:]
    lines = report.splitlines()
    assert not [line for line in lines if line.startswith("broken")], report
    assert len([line for line in lines if line.startswith("page")]) == len(pages)
    images = [line.split() for line in lines if line.startswith("img")]
    plots = [i for i in images if i[1] == "explanation/performance.html"]
    assert len(plots) >= 2, images
    assert all(int(width) > 0 for *_, width in images), images  # every image decoded
    assert shot.read_bytes().startswith(b"\x89PNG")


# -- every `triosrv ...` command the docs show parses with today's command line --------

SHELL_FENCE = re.compile(r"^(`{3,})(?:sh|bash|console|shell)[ \t]*\n(.*?)^\1[ \t]*$", re.M | re.S)


def _documented_commands() -> list[object]:
    """Each ``triosrv`` command line in a shell block of the README and the docs."""
    found = []
    for page in _pages():
        text = page.read_text()
        for block in SHELL_FENCE.finditer(text):
            for line in block.group(2).replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if not re.match(r"([A-Z_]+=\S*\s+)*triosrv\s", line):
                    continue  # another program, or output
                words = shlex.split(line, comments=True)
                # Drop VAR=value prefixes and anything after a pipe or a separator.
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words.pop(0)
                for i, word in enumerate(words):
                    if word in ("|", "&", "&&", ";", "||", ">", "2>"):
                        words = words[:i]
                        break
                if words[:1] == ["triosrv"]:
                    where = f"{page.relative_to(ROOT)}: {' '.join(words)}"
                    found.append(pytest.param(words[1:], id=where))
    return found


def _parse(command: click.Command, args: list[str], parent: click.Context | None) -> None:
    name = command.name or "triosrv"
    with command.make_context(name, list(args), parent=parent) as ctx:
        if isinstance(command, click.Group):
            rest = [*ctx._protected_args, *ctx.args]
            _name, sub, rest = command.resolve_command(ctx, rest)
            assert sub is not None
            _parse(sub, rest, ctx)


@pytest.mark.parametrize("args", _documented_commands())
def test_documented_command_parses(args: list[str]) -> None:
    """Options, values and subcommands as the docs write them are accepted (nothing runs)."""
    from triosrv._cli import main

    try:
        _parse(main, args, None)
    except click.exceptions.Exit:  # --help, --version: parsed fine
        pass
    except click.UsageError as exc:
        pytest.fail(f"triosrv {' '.join(args)}: {exc.format_message()}")


def test_run_a_server_table_names_only_real_listen_options() -> None:
    # The hand-written options table of the how-to must not drift from the command.
    from triosrv._cli import main

    listen = main.commands["listen"]
    real = {opt for p in listen.params for opt in [*p.opts, *getattr(p, "secondary_opts", [])]}
    table = (DOCS / "howto" / "run-a-server.md").read_text()
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `--")]
    named = {
        o
        for row in rows
        for o in re.findall(r"`(--[a-z-]+)", row) + re.findall(r", `(--[a-z-]+)", row)
    }
    assert len(named) >= 15
    assert not named - real, sorted(named - real)


def test_documented_scripts_exist() -> None:
    # A command a reader is told to run (a shell block) names a script that exists;
    # the commands that made a historical figure are shown in text blocks instead.
    missing = []
    for page in _pages():
        for block in SHELL_FENCE.finditer(page.read_text()):
            for script in re.findall(r"python3? (scripts/[\w./-]+\.py)", block.group(2)):
                if not (ROOT / script).exists():
                    missing.append(f"{page.relative_to(ROOT)}: {script}")
    assert not missing, missing
