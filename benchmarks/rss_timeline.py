"""Peak anonymous RSS of a running ``predict.py`` against its progress: polls
``/proc/<pid>/status`` (RssAnon) and counts the output's done-markers; prints one JSON line per
finished chunk with the peak since the previous one and the peak so far.

    python benchmarks/rss_timeline.py PID OUTPUT.zarr [--interval 0.01]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path


def rss_anon_kb(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^RssAnon:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pid", type=int)
    p.add_argument("output", help="the prediction's output path (its .progress/done folder is counted)")
    p.add_argument("--interval", type=float, default=0.01)
    a = p.parse_args()
    done = Path(a.output).with_name(Path(a.output).name + ".progress") / "done"
    last, window, overall, t0 = -1, 0, 0, time.monotonic()
    while (kb := rss_anon_kb(a.pid)) is not None:
        window, overall = max(window, kb), max(overall, kb)
        n = sum(1 for _ in done.iterdir()) if done.is_dir() else last
        if n != last:
            print(json.dumps({"t": round(time.monotonic() - t0, 1), "chunks_done": n, "peak_mb": round(window / 1024, 1),
                              "peak_so_far_mb": round(overall / 1024, 1)}), flush=True)
            last, window = n, 0
        time.sleep(a.interval)
    print(json.dumps({"t": round(time.monotonic() - t0, 1), "exited": True, "peak_so_far_mb": round(overall / 1024, 1)}),
          flush=True)


if __name__ == "__main__":
    main()
