"""CPU seconds of a command and every process it starts, by role (Ray process title), from /proc.

Used to find where the `make demo` recipe's time goes (docs/benchmarks.md section 4, "Where the demo's time goes"):
run the same short training at two commits side by side, so both see the same machine load, and compare the
per-role CPU seconds and the per-epoch lines.

    python -m pipeline.bench.cpu_by_role --out /tmp/cpu-new.json -- \
        .venv/bin/eco train --config jobs/configs/synthetic_demo.yaml --set train.epochs=2 ...

Linux only. Processes are attributed to the command through their parent chain (Ray's raylet and workers are
descendants of a driver that starts a local instance: set RAY_ADDRESS=local). A process is charged under the title
it had when last seen, so a pooled Ray worker that ran decode tasks and went back to the pool shows as `IDLE`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def _scan(seen: dict, parent: dict) -> None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # exited between listdir and open
        parent[pid] = fields[1]
        cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
        key = (pid, fields[19])  # (pid, start time): a reused pid is another process
        title = seen.get(key, (0.0, ""))[1]
        seen[key] = (cpu, cmd or title)  # a zombie has no cmdline: keep the last title seen


def _role(cmd: str) -> str:
    if m := re.search(r"ray::(\S+)", cmd):
        return m.group(1)
    parts = cmd.split() or ["?"]
    return " ".join(p.rsplit("/", 1)[-1] for p in parts[:2])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file: CPU seconds by role")
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    seen: dict = {}
    parent: dict = {}
    _scan(seen, parent)
    before = {k: cpu for k, (cpu, _) in seen.items()}
    t0 = time.monotonic()
    proc = subprocess.Popen(command)
    root = str(proc.pid)
    while proc.poll() is None:
        _scan(seen, parent)
        time.sleep(args.interval)
    wall = time.monotonic() - t0

    def descends(pid: str) -> bool:
        for _ in range(32):
            if pid == root:
                return True
            pid = parent.get(pid)
            if pid is None:
                return False
        return False

    roles: dict[str, float] = {}
    for key, (cpu, cmd) in seen.items():
        if descends(key[0]) and cpu - before.get(key, 0.0) > 0:
            roles[_role(cmd)] = roles.get(_role(cmd), 0.0) + cpu - before.get(key, 0.0)
    result = {"command": command, "returncode": proc.returncode, "wall_s": round(wall, 1),
              "cpu_s": round(sum(roles.values()), 1),
              "by_role": {k: round(v, 1) for k, v in sorted(roles.items(), key=lambda kv: -kv[1])}}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("wall_s", "cpu_s", "returncode")}))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
