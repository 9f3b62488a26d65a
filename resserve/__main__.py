"""``python -m resserve``: the ``resserve`` command (how ``resserve serve`` starts its build process)."""

from resserve.cli import app

app(prog_name="resserve")
