"""Every ```python block of the README runs unchanged; every block of docs/*.md at least compiles.

A README block right after a line ``<!-- not-run: reason -->`` is skipped with that reason (say why: needs a
corpus that is not installed, takes minutes, ...). Blocks of one file share a namespace in order, as a
reader running them one after another would. The docs' blocks are fragments (they use a ``hidden`` from
the text around them), so they are compiled, not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
_BLOCK = re.compile(r"(?:<!--\s*not-run:\s*(?P<why>.*?)-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def _blocks(path: Path):
    return [(m.group("code"), m.group("why")) for m in _BLOCK.finditer(path.read_text(encoding="utf-8"))]


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    path = README
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    ns = {"__name__": "__doc_block__"}
    ran = 0
    for i, (code, why) in enumerate(_blocks(path)):
        if why is not None:
            continue
        try:
            exec(compile(code, f"{path.name}[block {i + 1}]", "exec"), ns)
        except Exception as e:  # name the block in the failure
            raise AssertionError(f"{path.name} block {i + 1} failed: {type(e).__name__}: {e}\n{code}") from e
        ran += 1
    if ran == 0:
        pytest.skip(f"every python block of {path.name} is marked not-run")


@pytest.mark.parametrize("path", [p for p in DOCS if _blocks(p)], ids=lambda p: p.name)
def test_docs_python_blocks_compile(path):
    for i, (code, _) in enumerate(_blocks(path)):
        compile(code, f"{path.name}[block {i + 1}]", "exec")
