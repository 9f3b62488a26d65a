"""Piped or logged output is never wrapped or truncated (Rich assumes 80 columns off a terminal)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import logging
from rich.table import Table
from resserve.console import configure_logging, make_console
import sys
configure_logging("info", sys.argv[1])
logging.getLogger("resserve.test").info("a long message " + "word " * 60 + "end")
table = Table(title="figures")
for column in "abcdefghijkl":
    table.add_column(column, justify="right")
table.add_row(*["272123.456789"] * 12)
make_console().print(table)
"""


@pytest.mark.parametrize("log_format", ["text", "auto"])
def test_piped_tables_and_logs_keep_every_figure(log_format: str) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, log_format], capture_output=True, text=True, timeout=60,
                          check=True)
    log_lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(log_lines) == 1, done.stderr  # one event, one line
    if log_format == "text":
        assert log_lines[0].endswith("word end") and " INFO resserve.test: a long message" in log_lines[0]
    else:  # off a terminal, auto is JSON
        record = json.loads(log_lines[0])
        assert record["message"].endswith("word end") and record["logger"] == "resserve.test"
        assert record["level"] == "INFO" and record["request_id"] is None
    assert done.stdout.count("272123.456789") == 12, done.stdout
    assert "…" not in done.stdout


def test_a_forged_path_cannot_write_a_log_line_or_an_escape_sequence() -> None:
    """The attack (issue 30): a percent-decoded path with a newline forged a whole access line in
    the text log, and an ANSI escape repainted the terminal. Text lines escape control characters."""
    import io
    import logging

    from resserve.logs import TextFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("resserve.test.forged")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        path = "/v2/x\n2026-12-07 INFO resserve.access: GET /v2/admin 200\x1b[2J\x9b\x00"
        logger.warning("%s %s %d", "GET", path, 404)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed on %s", path)
    finally:
        logger.removeHandler(handler)
    first, *rest = stream.getvalue().splitlines()
    assert first == ("WARNING resserve.test.forged: GET /v2/x\\n2026-12-07 INFO resserve.access: GET /v2/admin 200"
                     "\\x1b[2J\\x9b\\x00 404")
    assert "\x1b" not in stream.getvalue() and rest[0].startswith("ERROR resserve.test.forged: failed on /v2/x\\n")
    assert rest[1] == "Traceback (most recent call last):"  # the server's own traceback keeps its lines
