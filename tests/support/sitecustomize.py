"""Test helper put on PYTHONPATH of a training subprocess: records every file a process writes,
creates or renames under ``$AUDIT_WRITES_UNDER``, one list per process rank in
``$AUDIT_WRITES_TO/rank<N>.txt`` (rank from Lightning's LOCAL_RANK, 0 when unset)."""

import os
import sys

_ROOT = os.environ.get("AUDIT_WRITES_UNDER")
_OUT = os.environ.get("AUDIT_WRITES_TO")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_busy = False


def _record(path) -> None:
    global _busy
    try:
        path = os.path.abspath(os.fsdecode(path))
    except TypeError:
        return
    if _busy or not path.startswith(_ROOT) or path.startswith(_OUT):
        return
    _busy = True
    try:
        fd = os.open(os.path.join(_OUT, f"rank{os.environ.get('LOCAL_RANK', '0')}.txt"),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, (path + "\n").encode())
        os.close(fd)
    finally:
        _busy = False


def _hook(event, args) -> None:
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        if (mode and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS:
            _record(path)
    elif event in ("os.rename", "os.replace"):
        _record(args[1])
    elif event == "os.mkdir" and not os.path.exists(args[0]):  # exist_ok calls on existing folders write nothing
        _record(args[0])


if _ROOT and _OUT:
    os.makedirs(_OUT, exist_ok=True)
    sys.addaudithook(_hook)
