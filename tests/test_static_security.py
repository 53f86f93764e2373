"""ruff's ``S`` (bandit) rules hold for the serving code whatever the project's ignore list says, and every
``noqa`` that silences one of them gives its reason."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKED = [REPO / "src", REPO / "deploy" / "audit.py"]


def test_bandit_rules_are_clean_without_project_ignores() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run(
        [str(ruff), "check", "--isolated", "--select", "S", "--output-format", "concise", *map(str, CHECKED)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_bandit_noqa_gives_a_reason() -> None:
    files = [p for base in CHECKED for p in ([base] if base.is_file() else sorted(base.rglob("*.py")))]
    unreasoned = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = re.search(r"#\s*noqa:\s*([A-Z]+\d+(?:,\s*[A-Z]+\d+)*)(.*)$", line)
            bandit = match is not None and any(c.strip().startswith("S") for c in match.group(1).split(","))
            if match is not None and bandit and not re.match(r"\s*-\s*\w+.{8,}", match.group(2)):
                unreasoned.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert files and not unreasoned, "\n".join(unreasoned)
