"""What `deepcd simulate --scene NAME` runs: smoke from a floor source around the obstacles of
any problem scene (`deepcd.problems.scenes()`), or one of the simulations of `SIMULATIONS`."""

from __future__ import annotations

from typing import Any

from deepcd.cfd.smoke import SmokeSimulation
from deepcd.cfd.twophase import DropSimulation

__all__ = ["SIMULATIONS", "make_simulation", "simulation_scenes"]

# name: (what it is, its simulator, the parameters --param may set)
SIMULATIONS: dict[str, tuple[str, type, tuple[str, ...]]] = {
    "drop-pool": (
        "two-phase: a liquid drop falling through a gas `ratio` (1000) times lighter into a pool",
        DropSimulation,
        ("ratio", "gravity", "pool_height", "drop_center", "drop_radius", "reinit_every"),
    ),
}

# problem scenes whose coefficients are a two-phase or free-surface pressure problem, not
# obstacles a smoke can flow around
_NOT_SMOKE = ("two-phase", "ghost-splash")


def simulation_scenes() -> list[str]:
    """Every name `make_simulation` accepts: the simulations, then the problem scenes."""
    from deepcd.problems import scenes

    return list(SIMULATIONS) + [s for s in scenes() if s not in _NOT_SMOKE]


def make_simulation(
    name: str,
    shape: tuple[int, ...],
    *,
    seed: int = 0,
    dt: float = 1.0,
    method: str = "dcdm",
    compare: str | None = None,
    rtol: float = 1e-6,
    params: dict[str, Any] | None = None,
    **solve_options: Any,
) -> SmokeSimulation | DropSimulation:
    """The simulation of scene `name` on a grid of `shape` (2D/3D, last axis up).

    params: the simulation's parameters for a `SIMULATIONS` entry (see its class), the
    scene generator's for a problem scene (smoke around its obstacles; `cut-cells` passes
    its face open fractions to the projection). solve_options go to the projection.
    """
    from deepcd.problems import scene

    params = dict(params or {})
    if name in SIMULATIONS:
        _, cls, allowed = SIMULATIONS[name]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(
                f"scene {name!r} has no parameter {', '.join(unknown)}; it takes "
                f"{', '.join(allowed)}"
            )
        return cls(
            shape, dt=dt, method=method, compare=compare, rtol=rtol, **params, **solve_options
        )
    if name in _NOT_SMOKE:
        raise ValueError(
            f"scene {name!r} is a variable-density pressure problem, not a smoke setup; "
            "for a two-phase simulation use --scene drop-pool"
        )
    if name not in simulation_scenes():
        raise ValueError(f"unknown scene {name!r}; choose from {', '.join(simulation_scenes())}")
    problem = scene(name, shape, seed=seed, **params)
    p = problem.params
    fraction = problem.coefficients.beta if name == "cut-cells" else None
    return SmokeSimulation(
        problem.flags,
        boundary=problem.boundary,
        source_center=p.get("source_center"),
        source_radius=max(p["plume_radius"] * min(shape), 1.5) if "plume_radius" in p else None,
        solid_fraction=fraction,
        dt=dt,
        method=method,
        compare=compare,
        rtol=rtol,
        **solve_options,
    )
