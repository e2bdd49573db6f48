"""Scenes with variable coefficients: two-phase density jumps, ghost-fluid surfaces, cut cells.

Same conventions as `deepcd.problems.scenes` (whose registry lists these): 2D or 3D, last axis
up, at least 16 cells per axis, b = -div(u) of a smooth random MAC velocity with a vortex ring
and gravity, every parameter recorded. Each scene also returns its `Coefficients`
(`deepcd.problems.coefficients`). Liquids are given by a level set φ at the cell centres
(< 0 inside): a pool below a wavy surface, minus AIR bubbles, plus droplets above it.

  * `two-phase`: every cell FLUID in a SOLID box with an open (AIR) top; liquid of density 1
    and gas of density 1/`ratio` (default 1000). Face densities follow the interface sharply:
    ρ_f = θρ_liquid + (1 − θ)ρ_gas with θ the liquid fraction of the segment between the two
    cell centres (from φ) — the variable-density discretization of Kang, Fedkiw & Liu (2000).
  * `ghost-splash`: the liquid alone (FLUID where φ < 0, AIR elsewhere) with the ghost-fluid
    free surface: θ = φ_c/(φ_c − φ_air) on every FLUID–AIR face (Gibou et al. 2002).
  * `cut-cells`: open box with smooth solid balls (spheres/discs), or with `blob=1` the
    bunny's smooth star-shaped solid; faces carry the open fraction of their area outside the
    solid (sub-sampled `samples`² points per face; the variational pressure of Batty,
    Bertails & Bridson 2007); cells wholly inside are SOLID.
"""

from __future__ import annotations

import math

import numpy as np

from deepcd.problems.coefficients import (
    Coefficients,
    ghost_fluid_theta,
    two_phase_face_density,
)
from deepcd.problems.flags import AIR, FLUID, SOLID
from deepcd.problems.mac import face_shapes
from deepcd.problems.scenes import (
    SceneData,
    _finish,
    _open_top,
    _Params,
    _ring_params,
    star_blob,
)
from deepcd.problems.scenes_hard import _axis_coords, _ring_velocity, _streams

__all__ = ["BUILDERS", "MIN_SIZE"]


def _centres(shape) -> list[np.ndarray]:
    return [c + 0.5 for c in _axis_coords(shape)]


def _liquid(shape, geo_rng, p: _Params) -> np.ndarray:
    """φ (*grid) float64 of a pool with bubbles and droplets (< 0 in the liquid); records
    the geometry in p.used."""
    nz = shape[-1]
    x = _centres(shape)
    height = p.used["surface_height"] * nz
    surface = np.full(shape[:-1], height)
    for d in range(len(shape) - 1):
        k = math.pi * int(geo_rng.integers(1, 4)) / shape[d]
        amp = geo_rng.uniform(0.03, 0.08) * nz
        surface = surface + amp * np.cos(k * x[d][..., 0] + geo_rng.uniform(0, 6.3))
    phi = x[-1] - surface[..., None]
    low, high = float(surface.min()), float(surface.max())
    m = min(shape)

    def dist(c) -> np.ndarray:
        return np.sqrt(sum((xd - cd) ** 2 for xd, cd in zip(x, c, strict=True)))

    bubbles, drops = [], []
    for _ in range(p.used["n_bubbles"]):
        r = geo_rng.uniform(1.5, max(2.0, 0.1 * m))
        c = [geo_rng.uniform(r, n - r) for n in shape[:-1]]
        c.append(geo_rng.uniform(r + 1.0, max(r + 1.0, low - r - 1.0)))
        phi = np.maximum(phi, r - dist(c))
        bubbles.append({"center": [float(v) for v in c], "radius": float(r)})
    for _ in range(p.used["n_droplets"]):
        r = geo_rng.uniform(1.0, max(1.5, 0.06 * m))
        c = [geo_rng.uniform(r, n - r) for n in shape[:-1]]
        c.append(geo_rng.uniform(min(high + r + 1.0, nz - r), max(high + r + 1.0, nz - r - 1.0)))
        phi = np.minimum(phi, dist(c) - r)
        drops.append({"center": [float(v) for v in c], "radius": float(r)})
    p.used.update(bubbles=bubbles, droplets=drops)
    return phi


def _liquid_params(p: _Params, rng) -> None:
    p.real("surface_height", rng.uniform(0.4, 0.6), lo=0.1, hi=0.9)
    p.integer("n_bubbles", int(rng.integers(2, 6)), lo=0, hi=10_000)
    p.integer("n_droplets", int(rng.integers(3, 8)), lo=0, hi=10_000)


def _liquid_scene(shape, rng, p: _Params):
    """(φ, velocity) of a liquid scene: the pool's parameters, gravity, a vortex ring and
    random flow, drawn in that order; finishes the parameters."""
    nd = len(shape)
    _liquid_params(p, rng)
    gravity = p.real("gravity", rng.uniform(0.2, 0.6))
    ring = _ring_params(p, rng, nd)
    flow = (p.real("flow_amplitude", rng.uniform(0.1, 0.3)), 8, 3)
    p.finish()
    geo_rng, flow_rng = _streams(rng)
    phi = _liquid(shape, geo_rng, p)
    vel = _ring_velocity(shape, flow_rng, ring, flow)
    vel.add_uniform(nd - 1, -gravity)
    return phi, vel


def _scene_two_phase(shape, rng, p: _Params) -> SceneData:
    ratio = p.real("ratio", 1000.0, lo=1.0, hi=1e8)
    phi, vel = _liquid_scene(shape, rng, p)
    beta = [1.0 / f for f in two_phase_face_density(phi, 1.0, 1.0 / ratio)]
    flags = np.full(shape, FLUID, dtype=np.int8)
    p.used["liquid_cells"] = int(np.count_nonzero(phi < 0))
    data = _finish(p, flags, _open_top(len(shape)), vel)
    return _with(data, Coefficients.validated(shape, beta))


def _scene_ghost_splash(shape, rng, p: _Params) -> SceneData:
    phi, vel = _liquid_scene(shape, rng, p)
    flags = np.where(phi < 0, np.int8(FLUID), np.int8(AIR))
    theta = ghost_fluid_theta(flags, phi)
    beta = [np.ones(s) for s in face_shapes(shape)]
    p.used["min_theta"] = float(min(t.min() for t in theta))
    data = _finish(p, flags, _open_top(len(shape)), vel)
    return _with(data, Coefficients.validated(shape, beta, theta))


def _open_fractions(shape, solid, samples: int) -> list[np.ndarray]:
    """Per axis, the fraction of each face's area outside the solid (`solid(coords)` → bool
    at points; samples² points on a face in 3D, samples in 2D)."""
    nd = len(shape)
    offsets = (np.arange(samples) + 0.5) / samples
    out = []
    for a in range(nd):
        fs = face_shapes(shape)[a]
        coords = [np.arange(n, dtype=np.float64) for n in fs]  # face a at integer positions
        others = [d for d in range(nd) if d != a]
        total = np.zeros(fs)
        grids = np.meshgrid(*([offsets] * (nd - 1)), indexing="ij")
        for point in zip(*(g.ravel() for g in grids), strict=True):
            x = []
            for d in range(nd):
                shift = 0.0 if d == a else point[others.index(d)]
                x.append((coords[d] + shift).reshape([-1 if e == d else 1 for e in range(nd)]))
            total += ~np.broadcast_to(solid(x), fs)
        out.append(total / samples ** (nd - 1))
    return out


def _balls(balls):
    def inside(x: list) -> np.ndarray:
        out = False
        for c, r in balls:
            out = out | (sum((xd - cd) ** 2 for xd, cd in zip(x, c, strict=True)) < r * r)
        return out

    return inside


def _scene_cut_cells(shape, rng, p: _Params) -> SceneData:
    nd = len(shape)
    n_balls = p.integer("n_balls", int(rng.integers(1, 4)), lo=1, hi=1000)
    samples = p.integer("samples", 4, lo=1, hi=16)
    blob = p.integer("blob", 0, lo=0, hi=1)  # 1: the bunny's star-shaped solid, not balls
    ring = _ring_params(p, rng, nd)
    flow = (p.real("flow_amplitude", rng.uniform(0.3, 0.8)), 8, 3)
    p.finish()
    geo_rng, flow_rng = _streams(rng)
    m = min(shape)
    if blob:
        center = [0.5 * n + geo_rng.uniform(-0.05, 0.05) * n for n in shape]
        harmonics = [
            {
                "order": int(geo_rng.integers(2, 6)),
                "amplitude": float(geo_rng.uniform(0.05, 0.1) * geo_rng.choice([-1, 1])),
                "axis": [float(v) for v in geo_rng.standard_normal(nd) / 1.0],
            }
            for _ in range(4)
        ]
        for h in harmonics:
            norm = float(np.linalg.norm(h["axis"])) or 1.0
            h["axis"] = [v / norm for v in h["axis"]]
        solid = star_blob(center, 0.25 * m, harmonics)
        p.used["blob_harmonics"] = harmonics
    else:
        balls = []
        for _ in range(n_balls):
            r = geo_rng.uniform(0.1, 0.22) * m
            c = [geo_rng.uniform(r + 1.0, n - r - 1.0) for n in shape]
            balls.append((c, r))
        solid = _balls(balls)
        p.used["balls"] = [{"center": [float(v) for v in c], "radius": float(r)} for c, r in balls]
    open_frac = _open_fractions(shape, solid, samples)
    # a cell is SOLID when its centre is inside the solid and every one of its faces is closed
    closed = np.broadcast_to(solid(_centres(shape)), shape).copy()
    for a in range(nd):
        f = open_frac[a]
        closed &= np.take(f, np.arange(shape[a]), axis=a) == 0
        closed &= np.take(f, np.arange(1, shape[a] + 1), axis=a) == 0
    flags = np.where(closed, np.int8(SOLID), np.int8(FLUID))
    p.used["cut_faces"] = int(sum(np.count_nonzero((f > 0) & (f < 1)) for f in open_frac))
    vel = _ring_velocity(shape, flow_rng, ring, flow)
    for a in range(nd):  # the flux through each face is its open part's
        vel.comps[a] *= open_frac[a].astype(vel.comps[a].dtype)
    data = _finish(p, flags, _open_top(nd), vel)
    return _with(data, Coefficients.validated(shape, open_frac))


def _with(data: SceneData, coefficients: Coefficients) -> SceneData:
    return SceneData(data.flags, data.boundary, data.rhs, data.params, coefficients)


BUILDERS = {
    "two-phase": _scene_two_phase,
    "ghost-splash": _scene_ghost_splash,
    "cut-cells": _scene_cut_cells,
}
MIN_SIZE = {name: 16 for name in BUILDERS}
