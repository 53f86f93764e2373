"""Whether a process id names a live process: the bookkeeping of several workers (their metrics files, their
reload acknowledgements) forgets the workers that died."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a running process (one of another user counts: it exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
