"""Kernel-visible thread names, so per-thread CPU accounting (``/proc/PID/task/TID/comm``, ``top -H``,
``py-spy``) can tell engine threads from preprocessing threads and the event loop.

Python before 3.14 keeps ``threading`` names to itself; the kernel's name is set with ``prctl``
from the thread itself. Threads that a native library starts from a named thread inherit its name.
"""

from __future__ import annotations

import ctypes
import sys

PR_SET_NAME = 15
MAX_NAME_BYTES = 15  # the kernel's TASK_COMM_LEN less the terminating NUL

ENGINE_PREFIX = "rs-engine"
PREPROCESS_PREFIX = "rs-preprocess"

_libc: ctypes.CDLL | None = None


def set_os_thread_name(name: str) -> bool:
    """Name the calling thread for the kernel (truncated to 15 bytes); False where not supported."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        # The process's own symbols (libc is among them): find_library("c") would spawn ldconfig.
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.prctl(PR_SET_NAME, name.encode()[:MAX_NAME_BYTES], 0, 0, 0) == 0
