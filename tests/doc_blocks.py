"""The fenced code blocks of README.md and docs/*.md, and the bash script that runs a document's examples.

The conventions (CONTRIBUTING.md, "Examples in the documentation"):

* Every fence names its language. ``python`` blocks are run with ``python3 -``; ``sh``, ``bash`` and ``shell``
  blocks are run with bash; ``console`` blocks are transcripts: the lines starting with ``$ `` (and their ``\\``
  continuation lines) are run, the other lines are output and are not compared. Any other language (``text``,
  ``json``, ``toml``, ...) is shown, never run.
* Directives are HTML comments on the lines right above a fence (no blank line between):

  - ``<!-- no-run: REASON -->``: the block is not run; the reason is required (a long-running server, a board,
    sudo, another machine, minutes of benchmarks, a fragment).
  - ``<!-- background: udp PORT -->``: the block starts a server; it is run in the background and the next block
    runs once something is bound to UDP PORT. It is stopped when the next background block starts (a reader
    stops one server with Ctrl-C before starting another), or when the document ends.
  - ``<!-- requires: CMD python:MODULE ... -->``: peers the block needs. A missing one skips the block (and the
    test reports it), or fails the test when ``IOTDTLS_REQUIRE_PEERS=1``.

* ``<!-- shell-blocks-run-by: tests/test_x.py -->`` anywhere in a document: its shell blocks are run, in
  order, by that test (which checks their output); the python blocks still run here.

A document's runnable blocks run in order, in one bash (``set -euo pipefail``), in a fresh folder that looks like
a checkout (symlinks to the repository's top-level folders), so a block can use files and variables that an
earlier block of the same document made. The well-known ports of the docs (5683, 5684, 5685, 6000) become free
ones, and ``coaps://127.0.0.1/`` gets the port that replaced 5684.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]

PYTHON = frozenset({"python"})
SHELL = frozenset({"sh", "bash", "shell"})
CONSOLE = frozenset({"console"})
RUNNABLE = PYTHON | SHELL | CONSOLE
DIRECTIVES = frozenset({"no-run", "background", "requires"})
DOC_DIRECTIVE = "shell-blocks-run-by"
DOC_PORTS = (5683, 5684, 5685, 6000)

_FENCE = re.compile(r"^\s*```(.*)$")  # indented too: a block in a list item
_COMMENT = re.compile(r"^\s*<!--\s*([A-Za-z][\w-]*)\s*(?::\s*(.*?))?\s*-->\s*$")
_DOC_DIRECTIVE = re.compile(r"^<!--\s*" + DOC_DIRECTIVE + r":\s*(\S+)\s*-->\s*$", re.M)
_PY_END = "__IOTDTLS_DOC_PYTHON__"


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    directives: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{_shown(self.path)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.lang in RUNNABLE and "no-run" not in self.directives

    def requires(self) -> list[str]:
        return self.directives.get("requires", "").split()


class DocError(ValueError):
    """A document breaks the conventions (a bare fence, an unknown directive, a no-run without a reason...)."""


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one markdown file, with the directives right above each."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        info = m.group(1).split()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].lstrip().startswith("```"):
            body.append(lines[i])
            i += 1
        if i >= len(lines):
            raise DocError(f"{_shown(path)}:{start + 1}: unclosed fence")
        i += 1
        directives: dict[str, str] = {}
        j = start - 1
        while j >= 0 and (c := _COMMENT.match(lines[j])):
            name, value = c.group(1), (c.group(2) or "").strip()
            if name != DOC_DIRECTIVE:
                directives[name] = value
            j -= 1
        code = textwrap.dedent("\n".join(body) + "\n")
        found.append(Block(path, start + 1, info[0] if info else "", code, directives))
    return found


def problems(path: Path) -> list[str]:
    """Every way `path` breaks the conventions; empty when it keeps them."""
    out: list[str] = []
    try:
        found = blocks(path)
    except DocError as e:
        return [str(e)]
    for b in found:
        if not b.lang:
            out.append(f"{b.where}: a fence without a language (```sh, ```python, ```console, ```text, ...)")
        for name, value in b.directives.items():
            if name not in DIRECTIVES:
                known = ", ".join(sorted(DIRECTIVES))
                out.append(f"{b.where}: unknown directive <!-- {name}: ... --> (known: {known})")
            elif name == "no-run" and len(value.split()) < 2:
                out.append(f"{b.where}: <!-- no-run: REASON --> needs a reason")
            elif name == "background" and not re.fullmatch(r"udp \d+", value):
                out.append(f"{b.where}: <!-- background: udp PORT --> names the port to wait for")
            elif name == "requires" and not value:
                out.append(f"{b.where}: <!-- requires: CMD ... --> names what it requires")
            if name in ("background", "requires") and b.lang not in RUNNABLE:
                out.append(f"{b.where}: <!-- {name} --> on a block that is never run ({b.lang or 'no language'})")
        if "no-run" in b.directives and b.lang not in RUNNABLE:
            out.append(f"{b.where}: <!-- no-run --> on a {b.lang or 'bare'} block, which is never run anyway")
        if b.lang in CONSOLE and b.runnable and not console_commands(b.code).strip():
            out.append(f"{b.where}: a console block without a '$ ' command")
    return out


def shell_run_by(path: Path) -> str | None:
    """The test named by a ``<!-- shell-blocks-run-by: ... -->`` directive in `path`, if any."""
    m = _DOC_DIRECTIVE.search(path.read_text())
    return m.group(1) if m else None


def console_commands(code: str) -> str:
    """The commands of a transcript: ``$ `` lines and their backslash continuations, without the prompt."""
    out: list[str] = []
    continued = False
    for line in code.splitlines():
        if continued:
            out.append(line)
        elif line.startswith("$ "):
            out.append(line[2:])
        else:
            continue
        continued = line.rstrip().endswith("\\")
    return "\n".join(out) + "\n"


def substitute_ports(text: str, ports: dict[int, int]) -> str:
    """The docs' well-known ports replaced by free ones; ``coaps://127.0.0.1/`` (the default port) made explicit."""
    text = text.replace("coaps://127.0.0.1/", "coaps://127.0.0.1:5684/")
    text = text.replace("coap://127.0.0.1/", "coap://127.0.0.1:5683/")
    pattern = re.compile(r"\b(" + "|".join(str(p) for p in ports) + r")\b")
    return pattern.sub(lambda m: str(ports[int(m.group(1))]), text)


PRELUDE = r"""set -euo pipefail
__iotdtls_stop() { local p; for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done; }
trap __iotdtls_stop EXIT
__IOTDTLS_BACKGROUND=
__iotdtls_stop_background() {
    if [ -n "$__IOTDTLS_BACKGROUND" ]; then
        pkill -TERM -P "$__IOTDTLS_BACKGROUND" 2>/dev/null || true
        kill "$__IOTDTLS_BACKGROUND" 2>/dev/null || true
        wait "$__IOTDTLS_BACKGROUND" 2>/dev/null || true
        __IOTDTLS_BACKGROUND=
    fi
}
__iotdtls_wait_udp() {  # until something is bound to UDP port $1 (read from /proc/net/udp*)
    local hex i
    hex=$(printf '%04X' "$1")
    for i in $(seq 1 600); do
        if grep -q "^ *[0-9]*: [0-9A-F]*:$hex " /proc/net/udp /proc/net/udp6 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing bound UDP port $1 within 60 s" >&2
    return 1
}
"""


def script(steps: list[Block], ports: dict[int, int]) -> str:
    """One bash script running `steps` (runnable blocks of one document) in order."""
    parts = [PRELUDE]
    for n, b in enumerate(steps):
        code = substitute_ports(b.code, ports)
        parts.append(f"printf '\\n### block %s (%s)\\n' '{b.where}' '{b.lang}'")
        if b.lang in PYTHON:
            parts.append(f"python3 - <<'{_PY_END}'\n{code}{_PY_END}")
        elif "background" in b.directives:
            port = substitute_ports(b.directives["background"], ports).split()[1]
            # the previous server of the document stops first, as a reader stops it with Ctrl-C
            parts.append(f"__iotdtls_stop_background\n(\n{code}) > background-{n}.log 2>&1 &\n"
                         f"__IOTDTLS_BACKGROUND=$!\n__iotdtls_wait_udp {port}")
        elif b.lang in CONSOLE:
            parts.append(console_commands(code))
        else:
            parts.append(code)
    parts.append("printf '\\n### all blocks ran\\n'")
    return "\n".join(parts) + "\n"
