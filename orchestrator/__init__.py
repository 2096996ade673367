"""orchestrator: bulk data jobs on SaaS APIs, with a ledger that never loses one."""

import sys

__version__ = "0.1.0"

# structlog.dev imports rich (52 modules, ~3.5 MiB resident) at import time, only to pretty-print
# tracebacks on a terminal. The daemon logs JSON and never needs it, and memory per process is a
# target (bench #5), so structlog is imported once here with rich hidden; plain tracebacks are
# used on terminals. The CLI still imports rich itself, lazily, for its tables.
if "structlog" not in sys.modules and "rich" not in sys.modules:
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]
