"""Process-wide tuning for the process that runs the daemon (the CLI's `run`, the benchmarks),
not for a library caller or a test session sharing the interpreter; and the modes the files it
creates get."""

from __future__ import annotations

import gc
import os
from pathlib import Path

# Files 0600, directories 0700 unless [daemon] umask says otherwise: results, ledger and logs of a
# daemon that holds API keys are nobody else's business.
DEFAULT_UMASK = 0o077
_umask = DEFAULT_UMASK


def set_umask(mask: int) -> None:
    """The process's umask ([daemon] umask; the CLI sets it once the config is read). The modes
    below follow it too, so files are created with explicit modes whatever umask an embedding
    process (a test session) runs with."""
    global _umask
    _umask = mask
    os.umask(mask)


def file_mode() -> int:
    return 0o666 & ~_umask


def dir_mode() -> int:
    return 0o777 & ~_umask


def make_dirs(path: Path) -> None:
    """`mkdir -p` with dir_mode() for every directory made (Path.mkdir gives missing parents
    the umask's default instead)."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=dir_mode())
        except FileExistsError:  # made meanwhile by another task
            pass


# Young-generation collections every 10,000 net container allocations instead of CPython's 700.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Call once start-up is done. Everything alive then (modules, config, engines, the jobs
    recovered from the ledger: hundreds of thousands of objects) moves to the permanent
    generation, so full collections stop re-scanning it; and the youngest generation is
    collected less often, so objects that live for a request or two (a job's futures, response
    objects) are freed by reference counting before any collection looks at them. Measured in
    `make bench` 1: the collector took 14% of the daemon's time with the defaults, 2-3% tuned.
    Memory: cyclic garbage waits a little longer for its collection (at most ~10,000 objects)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
