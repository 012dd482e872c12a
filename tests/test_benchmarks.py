"""benchmarks/run.py --quick keeps working: every figure runs and every row it prints has numbers.

No timing is asserted (the figures depend on the machine and its load); BENCHMARKS.md itself is
written only by the full run (`make bench`), so this test writes its report to a temporary file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {1, 2, 3, 4, 5, 6}
NUMBER = re.compile(r"\d")


def table_rows(text: str) -> list[list[str]]:
    """The cells of the results table's body rows (the first Markdown table in `text`)."""
    rows, inside = [], False
    for line in text.splitlines():
        if line.startswith("| # |"):
            inside = True
            continue
        if inside and line.startswith("|---"):
            continue
        if inside and line.startswith("| "):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif inside:
            break
    return rows


@pytest.mark.slow
def test_quick_benchmarks_print_and_write_a_complete_table(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--output", str(report)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for text in (result.stdout, report.read_text()):
        rows = table_rows(text)
        assert {int(row[0]) for row in rows} == FIGURES, "every figure has rows"
        for row in rows:
            assert len(row) == 7, row
            figure, what, value, baseline, ratio, target, verdict = row
            if verdict.startswith("not measured"):
                # Only the GPU rows may be left out, and only on a machine without a GPU.
                assert "CUDA" in what and "no CUDA device" in verdict, row
                continue
            assert NUMBER.search(value), f"no number measured: {row}"
            assert verdict in {"met", "**MISSED**", "info", "data-bound", "not data-bound"}, row
            if target.startswith((">=", "<=", "<")):
                assert verdict in {"met", "**MISSED**"} or "data-bound" in verdict, row
            if ratio != "—":
                assert float(ratio) > 0, row

    written = report.read_text()
    for section in ("## Machine", "## Commands", "## Results", "## What is timed"):
        assert section in written
    assert "load average" in written and "torch: " in written
    assert "scaffold new DEST --model lenet --no-git" in written
