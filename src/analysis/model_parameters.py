"""Continuum-model (PyBaMM) parameters of an electrode from its 3D statistics.

The statistics of :func:`~src.analysis.morphology.compute_statistics` become the geometric and
transport parameters of a porous-electrode (Doyle–Fuller–Newman) model, in SI units, under
PyBaMM's parameter names, each with the statistic it comes from:

* porosity ε and active-material volume fraction: phase volume fractions;
* Bruggeman exponents: PyBaMM writes the effective transport as ``D ε^b``; with the tortuosity
  factor τ = ε D / D_eff measured on the voxels, ``ε^b = ε / τ`` gives ``b = 1 - ln τ / ln ε``
  (electrolyte: the pore phase; electrode: the solid network);
* particle radius: half the volume-weighted d50 of the separated particles (the distribution is
  kept beside it);
* surface area per electrode volume of the active/pore interface and of the active material's
  whole surface (marching cubes);
* thickness: the volume's extent along the through-plane axis.

:func:`write_parameter_set` writes them as JSON and as a Python module whose ``get_parameter_values()``
returns a dict for ``pybamm.ParameterValues``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.data.io import write_json, write_text

__all__ = ["bruggeman_exponent", "electrode_parameters", "parameter_series", "write_parameter_set"]

_PREFIX = {"positive": "Positive", "negative": "Negative"}


def bruggeman_exponent(porosity: float, tortuosity: float) -> float:
    """``b`` with ``ε^b = ε / τ`` (so that PyBaMM's ``D ε^b`` equals the measured ``D ε / τ``).

    Args:
        porosity: volume fraction ε of the conducting phase, in (0, 1).
        tortuosity: tortuosity factor τ ≥ 1 along the transport direction.

    Returns:
        The exponent (dimensionless); NaN when ε is not in (0, 1) or τ is not finite and positive.
    """
    if not (0.0 < porosity < 1.0) or not (math.isfinite(tortuosity) and tortuosity > 0):
        return math.nan
    return 1.0 - math.log(tortuosity) / math.log(porosity)


def _tau(stats: Mapping[str, Any], phase: str, axis_name: str) -> float:
    res = stats.get("tortuosity", {}).get(phase, {}).get(axis_name)
    return float(res["tortuosity_factor"]) if res else math.nan


def electrode_parameters(
    stats: Mapping[str, Any],
    *,
    active_phase: str = "NMC",
    pore_phase: str = "pore",
    electrode: str = "positive",
    axis: int = 0,
) -> dict[str, dict[str, Any]]:
    """PyBaMM parameters of one electrode from ``stats`` (``compute_statistics``'s result).

    Args:
        stats: the statistics dict (``volume_fraction``, ``surfaces``, ``particles``,
            ``tortuosity``, ``shape``, ``voxel_size_nm``).
        active_phase: the active-material class.
        pore_phase: the electrolyte-filled class.
        electrode: ``"positive"`` or ``"negative"`` (the PyBaMM name prefix).
        axis: the through-plane axis (0 = z): thickness and the tortuosity used.

    Returns:
        ``{pybamm name: {"value": float (SI), "unit": str, "source": str}}``; values that the
        statistics cannot give (no particles, no tortuosity) are NaN with the reason as source.
    """
    if electrode not in _PREFIX:
        raise ValueError(f"electrode must be 'positive' or 'negative', got {electrode!r}")
    names = list(stats["class_names"])
    for what, name in (("active_phase", active_phase), ("pore_phase", pore_phase)):
        if name not in names:
            raise ValueError(f"{what}={name!r} is not one of class_names {names}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (z, y, x), got {axis}")
    pre = _PREFIX[electrode]
    axis_name = "zyx"[axis]
    fractions = stats["volume_fraction"]
    eps = float(fractions[pore_phase])
    active = float(fractions[active_phase])
    solid_name = "+".join(n for n in names if n != pore_phase)
    solid_fraction = 1.0 - eps
    tau_pore, tau_solid = _tau(stats, pore_phase, axis_name), _tau(stats, solid_name, axis_name)
    voxel_m = [v * 1e-9 for v in (stats["voxel_size_nm"] if isinstance(stats["voxel_size_nm"], Sequence)
                                 else [stats["voxel_size_nm"]] * 3)]
    thickness = stats["shape"][axis] * voxel_m[axis]
    surfaces = stats["surfaces"]
    pair = next((k for k in surfaces["interface_area_um2"]
                 if set(k.split("-")) == {active_phase, pore_phase}), None)
    total_um3 = math.prod(stats["shape"]) * math.prod(v * 1e6 for v in voxel_m)
    a_pore = surfaces["interface_area_um2"][pair] / total_um3 * 1e6 if pair else math.nan
    a_total = surfaces["specific_surface_area_um-1"][active_phase] * 1e6
    particles = stats.get("particles", {}).get(active_phase)
    d50 = float(particles["d50_um"]) if particles else math.nan
    out: dict[str, dict[str, Any]] = {
        f"{pre} electrode porosity": {
            "value": eps, "unit": "1", "source": f"volume fraction of {pore_phase}"},
        f"{pre} electrode active material volume fraction": {
            "value": active, "unit": "1", "source": f"volume fraction of {active_phase}"},
        f"{pre} electrode Bruggeman coefficient (electrolyte)": {
            "value": bruggeman_exponent(eps, tau_pore), "unit": "1",
            "source": f"1 - ln(tau) / ln(eps): tortuosity factor {tau_pore:.4g} of {pore_phase} "
                      f"along {axis_name}, eps {eps:.4g}"},
        f"{pre} electrode Bruggeman coefficient (electrode)": {
            "value": bruggeman_exponent(solid_fraction, tau_solid), "unit": "1",
            "source": f"1 - ln(tau) / ln(eps_s): tortuosity factor {tau_solid:.4g} of {solid_name} "
                      f"along {axis_name}, eps_s {solid_fraction:.4g}"},
        f"{pre} particle radius [m]": {
            "value": 0.5 * d50 * 1e-6, "unit": "m",
            "source": f"volume-weighted d50 / 2 of the separated {active_phase} particles"
            if particles else "no particle statistics (particle_phase was null)"},
        f"{pre} electrode surface area to volume ratio [m-1]": {
            "value": a_total, "unit": "m-1",
            "source": f"{active_phase} surface area (marching cubes) / electrode volume"},
        f"{pre} electrode {active_phase}-{pore_phase} interface area to volume ratio [m-1]": {
            "value": a_pore, "unit": "m-1",
            "source": f"{active_phase}-{pore_phase} interface area / electrode volume "
                      f"(the electrochemically active part; the rest faces other phases)"},
        f"{pre} electrode thickness [m]": {
            "value": thickness, "unit": "m",
            "source": f"{stats['shape'][axis]} voxels along {axis_name} x {voxel_m[axis]:.4g} m"},
    }
    if particles:
        used = [d for d, u in zip(particles["particles"]["diameter_um"],
                                  particles["particles"]["used_in_distribution"], strict=True) if u]
        out[f"{pre} particle radius distribution [m]"] = {
            "value": sorted(0.5 * d * 1e-6 for d in used), "unit": "m",
            "source": f"equivalent-sphere radii of the {len(used)} {active_phase} particles "
                      "used in the distribution"}
    return out


def write_parameter_set(params: Mapping[str, Mapping[str, Any]], folder: str | Path,
                        stem: str = "pybamm_parameters") -> list[Path]:
    """Write ``params`` (:func:`electrode_parameters`) as ``{stem}.json`` and ``{stem}.py``.

    The Python file defines ``get_parameter_values()`` returning the scalar values (lists such as
    the radius distribution stay in the JSON), so that
    ``pybamm.ParameterValues("Chen2020").update(module.get_parameter_values())`` uses them.

    Returns:
        The two paths written (atomically).
    """
    folder = Path(folder)
    json_path, py_path = folder / f"{stem}.json", folder / f"{stem}.py"
    write_json(json_path, params)
    lines = ['"""PyBaMM parameters measured on an electrode volume (batteryct).', "",
             "Each value's source statistic is in the comment beside it.", '"""', "",
             "", "def get_parameter_values():",
             "    return {"]
    for name, entry in params.items():
        value = entry["value"]
        if isinstance(value, list):
            continue
        text = "float('nan')" if isinstance(value, float) and math.isnan(value) else repr(float(value))
        lines.append(f"        {name!r}: {text},  # {entry['source']}")
    lines += ["    }", ""]
    write_text(py_path, "\n".join(lines))
    return [json_path, py_path]


@dataclass(frozen=True)
class ElectrodeSettings:
    """What the PyBaMM parameter set reads from the statistics.

    Args:
        active_phase: the active-material class.
        pore_phase: the electrolyte-filled class.
        side: ``positive`` or ``negative`` (PyBaMM's parameter-name prefix).
        axis: the through-plane axis (0 = z): thickness and the tortuosity used for Bruggeman.
    """

    active_phase: str = "NMC"
    pore_phase: str = "pore"
    side: str = "positive"
    axis: int = 0

    def parameters(self, stats: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The electrode's PyBaMM parameters from ``compute_statistics``'s result."""
        return electrode_parameters(stats, active_phase=self.active_phase, pore_phase=self.pore_phase,
                                    electrode=self.side, axis=self.axis)


def parameter_series(
    states: Sequence[tuple[float, Mapping[str, Mapping[str, Any]]]], folder: str | Path, x_label: str,
    figure: bool = True,
) -> list[Path]:
    """The scalar parameters of several states against their x value (SOC, time or voltage).

    Args:
        states: ``(x, electrode_parameters(...))`` per state, in order.
        folder: output folder: ``pybamm_parameters.csv`` (one row per state) and, with
            ``figure``, ``pybamm_parameters.png`` (one panel per parameter).
        x_label: the x column's name (e.g. ``soc``).
        figure: also write the PNG.

    Returns:
        The paths written.
    """
    from src.analysis.statistics_table import write_csv_atomic

    folder = Path(folder)
    names = [k for k, v in states[0][1].items() if not isinstance(v["value"], list)] if states else []
    rows = [{x_label: x, **{k: p[k]["value"] for k in names}} for x, p in states]
    written = [folder / "pybamm_parameters.csv"]
    write_csv_atomic(written[0], rows, first=(x_label,))
    if figure and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from src.data.io import atomic_output

        cols = 4
        fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(3.2 * cols, 2.6 * math.ceil(len(names) / cols)),
                                 squeeze=False)
        for ax, name in zip(axes.ravel(), names, strict=False):
            ax.plot([r[x_label] for r in rows], [r[name] for r in rows], "o-")
            ax.set_title(name.replace(" [", "\n["), fontsize=7)
            ax.set_xlabel(x_label, fontsize=7)
            ax.tick_params(labelsize=6)
        for ax in axes.ravel()[len(names):]:
            ax.axis("off")
        fig.tight_layout()
        with atomic_output(folder / "pybamm_parameters.png") as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        written.append(folder / "pybamm_parameters.png")
    return written


def parameters_per_state(
    states: Sequence[tuple[str, float, Mapping[str, Any]]], electrode: ElectrodeSettings, folder: str | Path,
    x_label: str, figure: bool = True,
) -> list[Path]:
    """The PyBaMM parameter set of every state of a series, and the parameters against x.

    Args:
        states: ``(name, x, compute_statistics result)`` per state, in order.
        electrode: what the parameters read from the statistics.
        folder: output folder: ``pybamm/<name>_pybamm.json``/``.py`` per state, plus
            :func:`parameter_series`'s table and figure.
        x_label: the x column's name (``soc``, ``time_h`` or ``voltage``).
        figure: also write the PNG.

    Returns:
        The paths written.
    """
    out, series, written = Path(folder), [], []
    for name, x, stats in states:
        params = electrode.parameters(stats)
        written += write_parameter_set(params, out / "pybamm", f"{name}_pybamm")
        series.append((float(x), params))
    return written + parameter_series(series, out, x_label, figure)
