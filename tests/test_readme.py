"""The README's Python code runs as written, and its first section holds the two set-up commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_section_has_exactly_the_two_commands() -> None:
    text = README.read_text()
    first = text.split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", first, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


@pytest.mark.parametrize("index", range(len(re.findall(r"```python\n", README.read_text()))))
def test_python_blocks_run(index: int, tmp_path: Path) -> None:
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[index]
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
