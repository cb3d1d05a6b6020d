"""Files written so that a crash leaves the earlier version or the new one, never half of one."""

import os

__all__ = ["PARTIAL_SUFFIX", "atomic_write"]

# What an interrupted write leaves behind: ``<path>.<pid>.tmp``.
PARTIAL_SUFFIX = ".tmp"


def atomic_write(path, write):
    """Write ``path`` through ``write(file)`` (a binary file) into a temporary file of its own
    beside it, flush that to disk, then rename it over ``path``. Concurrent writers do not
    share the temporary file; readers see the old file or the new one."""
    partial = f"{path}.{os.getpid()}{PARTIAL_SUFFIX}"
    with open(partial, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
