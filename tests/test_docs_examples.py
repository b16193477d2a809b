"""Every shell and Python example in README.md and docs/*.md runs as written (issue 17, item 4).

The conventions, which each document must keep, are in tests/doc_blocks.py and CONTRIBUTING.md: every fence
names its language; ``python``, ``sh`` and ``console`` blocks run, in order, one bash per document, in a folder
that looks like a checkout, with the checkout's console scripts on PATH; a block that cannot run as written says
why with ``<!-- no-run: REASON -->``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from doc_blocks import DOCUMENTS, PYTHON, ROOT, Block, blocks, problems, script, shell_run_by
from peers import REQUIRE_PEERS_ENV, free_port_pair, free_udp_port, require_peer

TIMEOUT = 150.0  # one document; generous, the CPUs are shared
LINKED = ("README.md", "pyproject.toml", "benchmarks", "docs", "fuzz", "gateway", "iotdtls", "micropython", "tests")
IDS = [str(p.relative_to(ROOT)) for p in DOCUMENTS]


@pytest.mark.parametrize("path", DOCUMENTS, ids=IDS)
def test_document_keeps_the_conventions(path: Path) -> None:
    assert problems(path) == []
    run_by = shell_run_by(path)
    if run_by is not None:
        test_file = ROOT / run_by.split("::")[0]
        assert test_file.is_file(), f"{path.name}: shell-blocks-run-by names {run_by}, which does not exist"
        assert path.name in test_file.read_text(), f"{run_by} does not read {path.name}"


def test_the_conventions_catch_mistakes(tmp_path: Path) -> None:
    doc = tmp_path / "probe.md"
    doc.write_text("```\nbare\n```\n\n<!-- no-run: -->\n```sh\nx\n```\n<!-- norun: typo -->\n```sh\ny\n```\n"
                   "<!-- background: 5684 -->\n```sh\nz\n```\n<!-- no-run: shown only -->\n```text\nt\n```\n")
    found = "\n".join(problems(doc))
    for needle in ("without a language", "needs a reason", "unknown directive <!-- norun", "names the port",
                   "never run anyway"):
        assert needle in found, (needle, found)


def _steps(path: Path) -> tuple[list[Block], list[str]]:
    """The blocks of `path` that run here, and what is missing for the others that would."""
    run_by = shell_run_by(path)
    steps: list[Block] = []
    missing: list[str] = []
    for b in blocks(path):
        if not b.runnable or (run_by is not None and b.lang not in PYTHON):
            continue
        absent = [r for r in b.requires() if not _available(r)]
        if absent:
            missing.append(f"{b.where} needs {', '.join(absent)}")
            continue
        steps.append(b)
    return steps, missing


def _available(requirement: str) -> bool:
    if requirement.startswith("python:"):
        probe = subprocess.run([sys.executable, "-c", f"import {requirement[7:]}"], capture_output=True, timeout=60)
        return probe.returncode == 0
    return shutil.which(requirement) is not None


def _ports() -> dict[int, int]:
    base = free_port_pair()  # 5683 and 5684 stay adjacent: libcoap's server serves CoAPs on -p N + 1
    return {5683: base, 5684: base + 1, 5685: free_udp_port(), 6000: free_udp_port()}


def _checkout_like(folder: Path) -> None:
    for name in LINKED:
        (folder / name).symlink_to(ROOT / name)


RUNNABLE_DOCUMENTS = [p for p in DOCUMENTS if any(b.runnable for b in blocks(p))]


@pytest.mark.parametrize("path", RUNNABLE_DOCUMENTS, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE_DOCUMENTS])
def test_document_examples_run(path: Path, tmp_path: Path) -> None:
    steps, missing = _steps(path)
    if missing and os.environ.get(REQUIRE_PEERS_ENV) == "1":
        require_peer("; ".join(missing), False)
    _checkout_like(tmp_path)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    env.pop(REQUIRE_PEERS_ENV, None)
    text = script(steps, _ports())
    (tmp_path / "doc-examples.sh").write_text(text)
    log = tmp_path / "doc-examples.log"
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "doc-examples.sh"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status: int | None = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            with contextlib.suppress(ProcessLookupError):  # the servers the blocks started, and anything left
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    output = log.read_text(errors="replace")
    ran = [line[len("### block "):] for line in output.splitlines() if line.startswith("### block ")]
    where = ran[-1] if ran else "(before the first block)"
    for bg in sorted(tmp_path.glob("background-*.log")):
        output += f"\n--- {bg.name}\n{bg.read_text(errors='replace')[-3000:]}"
    if status is None:
        pytest.fail(f"{where}: still running after {TIMEOUT:.0f} s\n{output[-6000:]}", pytrace=False)
    assert status == 0 and "### all blocks ran" in output, f"{where}: exit {status}\n{output[-6000:]}"
    print(f"\n{path.relative_to(ROOT)}: {len(steps)} blocks in {time.monotonic() - started:.1f} s")
    if missing:
        pytest.skip("ran every other block; missing peers: " + "; ".join(missing))
