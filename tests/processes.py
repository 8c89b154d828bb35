"""Finding processes by name in /proc (Linux), for tests of the decode processes' lifetimes."""

from __future__ import annotations

import os


def process_name(pid: int) -> str:
    """The kernel's name of a process (/proc/PID/comm), "" if it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def descendants_named(name: str, root: int | None = None) -> set[int]:
    """PIDs of the processes called `name` below `root` (default: this process) in the process tree."""
    root = os.getpid() if root is None else root
    parent = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    parent[int(p)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass

    def below_root(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == root:
                return True
        return False

    return {p for p in parent if process_name(p) == name and below_root(p)}
