"""Memory of whole-volume prediction.

Sizes, the process's anonymous RSS, free memory, and a measured activation-memory model of a net
(bytes per input pixel of one forward pass).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
#: ``max_memory=auto``: this fraction of the memory available now (beyond what the process holds)
AUTO_FRACTION = 0.7


def parse_bytes(value: str | int | float) -> int:
    """``2GB`` → 2·10⁹, ``1.5GiB`` → 1.5·2³⁰, ``512MB``, ``4e9``, ints: bytes."""
    if isinstance(value, int | float):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(value).lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a memory size (e.g. 2GB, 1.5GiB, 512MB, or auto)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def format_bytes(n: float) -> str:
    """``n`` bytes as decimal gigabytes, e.g. ``"1.25 GB"``."""
    return f"{n / 1e9:.2f} GB"


def _status_kb(field: str, pid: str | int = "self") -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) * 1024 if m else 0


def rss_anon() -> int:
    """Anonymous resident memory of this process (bytes), 0 where ``/proc`` is not there.

    Counts the heap and tensors, not file pages.
    """
    try:
        return _status_kb("RssAnon")
    except OSError:
        return 0


def available_memory() -> int | None:
    """Bytes that may still be allocated; None where unknown.

    ``MemAvailable``, capped by the cgroup's limit minus its usage.
    """
    avail = None
    try:
        m = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        avail = int(m.group(1)) * 1024 if m else None
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit.isdigit() and int(limit) < 2**60:
                free = int(limit) - int(Path(usage_file).read_text().strip())
                avail = free if avail is None else min(avail, free)
            break
        except OSError:
            continue
    return avail


def resolve_max_memory(value: str | int | float | None) -> int | None:
    """The memory bound (bytes) that a ``max_memory`` setting means.

    ``None`` → no bound; ``auto`` → what the process holds plus :data:`AUTO_FRACTION` of the memory
    available; else :func:`parse_bytes`.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        avail = available_memory()
        if avail is None:
            raise ValueError("max_memory=auto: free memory unknown on this system; give a size such as 2GB")
        return rss_anon() + int(AUTO_FRACTION * avail)
    n = parse_bytes(value)
    if n <= 0:
        raise ValueError(f"max_memory must be > 0, got {value!r}")
    return n


def peak_extra_memory(fn: Callable[[], object], device: torch.device, interval: float = 0.001) -> int:
    """Peak memory (bytes) that ``fn()`` holds above what was held before it.

    On CUDA the allocator's peak; on the CPU the process's anonymous RSS polled from a thread (what
    the operating system sees, including the libraries' workspaces).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    base = rss_anon()
    peak = [base]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(interval)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        stop.set()
        thread.join()
    return max(0, max(peak[0], rss_anon()) - base)
