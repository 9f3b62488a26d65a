"""``python3 loadtests/gpu_check`` or, from the repository root, ``python3 -m loadtests.gpu_check``."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[1]
# Run as a folder, Python puts the folder itself first on the path, which would make this package's
# modules (cli, table, ...) top-level names: the checkout goes there instead (it also holds resserve).
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path[0] = str(_ROOT)
elif str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from loadtests.gpu_check.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
