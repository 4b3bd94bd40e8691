"""Electrochemistry files of an operando series: BioLogic EC-Lab ``.mpt`` text and plain CSV.

:func:`read_electrochem` returns time (s), voltage (V) and charge passed (mA·h) as arrays:

* ``.mpt`` (EC-Lab "export as text"): a header whose line ``Nb header lines : N`` gives the
  number of header lines (the column names are the last of them), tab-separated columns,
  decimal commas (``3,7125``), columns ``time/s``, ``Ewe/V`` and ``(Q-Qo)/mA.h`` (the charge;
  without it the charge is integrated from ``I/mA`` or ``<I>/mA``);
* ``.csv``/``.txt``: a header line naming the columns time (``time``, ``time/s``, ``time_s``,
  ``t``; or ``time_h``), voltage (``voltage``, ``Ewe/V``, ``E``, ``V``) and either the charge
  (``charge_mAh``, ``(Q-Qo)/mA.h``, ``Q``) or the current in mA (``current``, ``I/mA``, ``current_mA``),
  integrated over time.

Every problem is a :class:`ElectrochemError` naming the file and the missing column.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

__all__ = ["ElectrochemError", "read_electrochem"]


class ElectrochemError(ValueError):
    """An electrochemistry file that cannot be used; the message names the file."""


_TIME = ("time/s", "time_s", "time", "t", "t/s", "time (s)")
_TIME_H = ("time_h", "time/h", "t/h", "time (h)")
_VOLT = ("ewe/v", "voltage", "voltage_v", "voltage/v", "e", "v", "ewe", "e/v", "potential")
_CHARGE = ("(q-qo)/ma.h", "charge_mah", "q", "charge", "q/ma.h", "capacity_mah")
_CURRENT = ("i/ma", "<i>/ma", "current", "current_ma", "i", "control/ma")


def _find(header: list[str], names: tuple[str, ...]) -> int | None:
    low = [h.strip().lower() for h in header]
    for n in names:
        if n in low:
            return low.index(n)
    return None


def _number(text: str) -> float:
    return float(text.strip().replace(",", "."))


def read_electrochem(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """``{"time_s", "voltage_V", "charge_mAh"}`` arrays ``(T,)`` of an EC-Lab ``.mpt`` or a CSV.

    Args:
        path: the file (see the module doc for the formats).

    Returns:
        Time (s, sorted), voltage (V) and charge passed since the start (mA·h).

    Raises:
        ElectrochemError: the file is missing, has no time or voltage column (the columns found
            are named), or holds no rows of numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise ElectrochemError(f"electrochemistry file {path} not found")
    lines = path.read_text(encoding="latin-1", errors="replace").splitlines()
    if path.suffix.lower() == ".mpt":
        n_header = None
        for line in lines[:20]:
            m = re.search(r"Nb header lines\s*:\s*(\d+)", line)
            if m:
                n_header = int(m.group(1))
                break
        if n_header is None:
            if lines and lines[0].lower().startswith("ec-lab"):
                raise ElectrochemError(f"{path}: no 'Nb header lines : N' line in the EC-Lab header")
            n_header = 1
        header = lines[n_header - 1].split("\t")
        body = [line.split("\t") for line in lines[n_header:] if line.strip()]
    else:
        text = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not text:
            raise ElectrochemError(f"{path}: empty electrochemistry file")
        sep = "\t" if "\t" in text[0] else ";" if ";" in text[0] else ","
        header = text[0].split(sep)
        body = [line.split(sep) for line in text[1:]]  # decimal commas: with tab/semicolon separators
    t_col, th_col = _find(header, _TIME), _find(header, _TIME_H)
    v_col = _find(header, _VOLT)
    q_col, i_col = _find(header, _CHARGE), _find(header, _CURRENT)
    found = [h.strip() for h in header]
    if t_col is None and th_col is None:
        raise ElectrochemError(f"{path}: no time column (expected one of {list(_TIME + _TIME_H)}); "
                               f"columns: {found}")
    if v_col is None:
        raise ElectrochemError(f"{path}: no voltage column (expected one of {list(_VOLT)}); columns: {found}")
    try:
        rows = np.array([[_number(r[c]) if c is not None else np.nan
                          for c in (t_col if t_col is not None else th_col, v_col, q_col, i_col)]
                         for r in body])
    except (ValueError, IndexError) as err:
        raise ElectrochemError(f"{path}: a data row is not numbers in the time/voltage/charge columns "
                               f"({err})") from err
    if rows.shape[0] < 2:
        raise ElectrochemError(f"{path}: fewer than 2 rows of data")
    time_s = rows[:, 0] * (3600.0 if t_col is None else 1.0)
    order = np.argsort(time_s, kind="stable")
    rows, time_s = rows[order], time_s[order]
    if q_col is not None:
        charge = rows[:, 2] - rows[0, 2]
    elif i_col is not None:
        from scipy.integrate import cumulative_trapezoid

        charge = cumulative_trapezoid(rows[:, 3], time_s, initial=0.0) / 3600.0  # mA s -> mA h
    else:
        raise ElectrochemError(f"{path}: no charge column ({list(_CHARGE)}) and no current column "
                               f"({list(_CURRENT)}) to integrate; columns: {found}")
    return {"time_s": time_s, "voltage_V": rows[:, 1], "charge_mAh": charge}
