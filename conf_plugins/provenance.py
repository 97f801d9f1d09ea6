"""Where a number came from: the command, the date, the machine and the code that produced it.

Every generated results or benchmark page is stamped with :func:`run_stamp`, so a figure in the
docs always names the command, the UTC date and the machine it ran on (never a relative time).
"""

import datetime
import os
import platform
import subprocess
import sys


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _commit(root: str) -> str | None:
    """``git describe``-like id of the checkout: the commit, ``+dirty`` when files changed."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine() -> dict:
    """CPU model, cores, memory, torch threads and GPU (if any) of this machine."""
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_machine(info: dict) -> str:
    """One line: ``AMD EPYC 9B14, 2 cores, 23.4 GiB, no GPU, torch 2.12.1+cu130``."""
    gpu = info.get("gpu") or "no GPU"
    memory = f", {info['memory_gib']} GiB" if info.get("memory_gib") else ""
    return f"{info['cpu']}, {info['cores']} cores{memory}, {gpu}, torch {info['torch']}"


def run_stamp(command: str | None = None) -> dict:
    """The stamp of a run: ``command`` (default: this process's command line), UTC date and
    time, machine and the checkout's commit."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if command is None:
        script = os.path.relpath(os.path.abspath(sys.argv[0]), os.getcwd()) if sys.argv[0] else ""
        command = " ".join(["python", script, *sys.argv[1:]]).strip()
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "command": command,
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "commit": _commit(root),
    }


def write_bench_result(
    path: str, title: str, columns, rows, summary=(), description: str = "", command: str | None = None
) -> dict:
    """Write a benchmark's result as JSON for ``docs/generate.py``: a table (``columns``, a
    list of ``rows`` as dicts keyed by column), ``summary`` sentences (the ratios, computed by
    the bench) and the run's stamp. Returns what was written."""
    import json

    result = {
        "title": title,
        "description": description,
        "columns": list(columns),
        "rows": [dict(r) for r in rows],
        "summary": list(summary),
        "run": run_stamp(command),
    }
    missing = [c for r in result["rows"] for c in result["columns"] if c not in r]
    if missing:
        raise ValueError(f"bench rows lack the columns {sorted(set(missing))}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result
