"""A build that is stopped or killed leaves no staging folder behind for long (issue 30: a SIGKILLed
build child left 118 MiB in the model folder, piling up in a container's /tmp across restarts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from resserve.builder.build_pipeline import remove_stale_staging


def test_staging_of_a_dead_builder_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / ".m-build-999999999-abc"  # no such process
    alive = tmp_path / f".m-build-{os.getpid()}-def"
    old_unmarked, new_unmarked = tmp_path / ".m-build-ghi", tmp_path / ".m-build-jkl"
    other_model = tmp_path / ".n-build-999999999-xyz"
    for folder in (dead, alive, old_unmarked, new_unmarked, other_model):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"\0" * 1024)
    hour_ago = time.time() - 7200
    os.utime(old_unmarked, (hour_ago, hour_ago))
    assert sorted(p.name for p in remove_stale_staging(tmp_path, "m")) == [dead.name, old_unmarked.name]
    assert alive.is_dir() and new_unmarked.is_dir() and other_model.is_dir()
    assert not dead.exists() and not old_unmarked.exists()


def test_sigterm_ends_a_build_through_python_so_its_cleanup_runs(tmp_path: Path) -> None:
    """In a process of its own, as the build child is (a signal sent to the test process itself
    would reach every thread the suite has started)."""
    marker = tmp_path / "cleaned"
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from resserve.builder.event_stream import stop_on_sigterm\n"
        "stop_on_sigterm()\n"
        "try:\n"
        "    print('building', flush=True)  # inside the try: the signal may come the moment it is read\n"
        "    time.sleep(60)\n"
        "finally:\n"
        f"    Path({str(marker)!r}).write_text('yes')  # where the build removes its staging folder\n")],
        stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"building"
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 128 + signal.SIGTERM
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    assert marker.read_text() == "yes"
