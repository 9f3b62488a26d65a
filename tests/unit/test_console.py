"""Piped or logged output is never wrapped or truncated (Rich assumes 80 columns off a terminal)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging
from rich.table import Table
from resserve.console import configure_logging, make_console
configure_logging("info")
logging.getLogger("resserve.test").info("a long message " + "word " * 60 + "end")
table = Table(title="figures")
for column in "abcdefghijkl":
    table.add_column(column, justify="right")
table.add_row(*["272123.456789"] * 12)
make_console().print(table)
"""


def test_piped_tables_and_logs_keep_every_figure() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True)
    log_lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(log_lines) == 1, done.stderr  # one event, one line
    assert log_lines[0].endswith("word end") and " INFO resserve.test: a long message" in log_lines[0]
    assert done.stdout.count("272123.456789") == 12, done.stdout
    assert "…" not in done.stdout
