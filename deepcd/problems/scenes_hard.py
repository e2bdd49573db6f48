"""Scenes for hard geometry: thin walls, mazes, porous media, splashes, closed pockets.

Same conventions as `deepcd.problems.scenes` (whose registry lists these): 2D (nx, ny) or 3D
(nx, ny, nz), last axis up, at least 16 cells per axis; b = -div(u) of a MAC velocity built from
random smooth Fourier flow plus a buoyant jet or a vortex ring, walls taking their velocity;
every parameter recorded in `SceneData.params`. Random numbers: parameters are drawn first from
`np.random.default_rng(seed)` (whether overridden or not), then the generator spawns one stream
for the geometry and one for the flow, so a parameter that changes how much geometry is drawn
(a count, a size) leaves the flow's random numbers unchanged.

Lengths here are in cells unless a name says fraction. Scenes:
  * `baffles`: SOLID box, AIR outlet face x-hi, a moving inlet wall at x-lo; `n_baffles` walls
    of `thickness` cells across x, each with one `hole` at alternating y ends (serpentine path).
  * `maze`: a perfect maze (randomized depth-first search on a lattice of rooms; 3D: a 3D maze)
    with corridors `corridor` cells wide and walls one cell thick; one exit of AIR cells in the
    x-hi outer wall; every grid face SOLID.
  * `porous`: overlapping random SOLID balls (2D: discs) up to `solid_fraction` of the cells,
    open (AIR) top; closed pockets and isolated cells are kept (singular blocks, zero rows).
  * `splash`: a liquid pool with a free surface, AIR bubbles inside it, FLUID droplets in the
    air, and FLUID sheets exactly one cell thick in the air; open top.
  * `pockets`: an open box holding many small closed pockets (FLUID cells inside one-cell
    SOLID shells), one per lattice site with probability `pocket_density`.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from scipy import ndimage

from deepcd.problems.flags import AIR, FLUID, SOLID
from deepcd.problems.mac import face_shapes
from deepcd.problems.scenes import (
    F32,
    SceneData,
    _add_plume,
    _add_ring,
    _finish,
    _flow_params,
    _fourier_flow,
    _open_top,
    _Params,
    _plume_geometry,
    _plume_params,
    _ring_params,
    _Velocity,
)

__all__ = ["BUILDERS", "MIN_SIZE"]


def _streams(rng: np.random.Generator) -> tuple[np.random.Generator, np.random.Generator]:
    """(geometry, flow) generators spawned from the scene's generator."""
    geo, flow = rng.spawn(2)
    return geo, flow


def _plume_velocity(shape, flow_rng, plume: dict, flow: tuple) -> _Velocity:
    vel = _Velocity(shape)
    _add_plume(vel, plume, _plume_geometry(plume, shape))
    vel.add(_fourier_flow(flow_rng, shape, *flow))
    return vel


def _ring_velocity(shape, flow_rng, ring: dict, flow: tuple) -> _Velocity:
    vel = _Velocity(shape)
    _add_ring(vel, ring)
    vel.add(_fourier_flow(flow_rng, shape, *flow))
    return vel


def _axis_coords(shape) -> list[np.ndarray]:
    """Integer cell coordinates per axis, shaped to broadcast over the grid."""
    nd = len(shape)
    return [
        np.arange(n).reshape([-1 if e == d else 1 for e in range(nd)]) for d, n in enumerate(shape)
    ]


# ---------------------------------------------------------------------------------------------
# baffles


def _scene_baffles(shape, rng, p: _Params) -> SceneData:
    """Walls across x with one hole each, alternating y ends: a serpentine channel.

    Baffle k (k = 0..n_baffles-1) occupies x in [x_k, x_k + thickness) with x_k evenly spaced;
    its hole is `hole` cells along y at y-lo (k even) or y-hi (k odd), and in 3D `hole` cells
    along z at a random height. Flow: a moving inlet wall at x-lo (speed `inflow`), the outlet
    face x-hi is AIR, weak random flow. Recorded: baffle_x, hole_z (3D).
    """
    ndim = len(shape)
    nx = shape[0]
    thickness = p.integer("thickness", 1, lo=1, hi=max(1, nx // 4))
    most = max(1, (nx - 2) // (thickness + 2))
    n_baffles = p.integer("n_baffles", min(int(rng.integers(3, 7)), most), lo=1, hi=most)
    cross = min(shape[1:])
    hole = p.integer(
        "hole", max(1, round(rng.uniform(0.15, 0.3) * cross)), lo=1, hi=max(1, cross - 1)
    )
    inflow = p.real("inflow", rng.uniform(0.5, 1.0))
    flow = _flow_params(p, rng, (0.05, 0.15))
    p.finish()
    geo_rng, flow_rng = _streams(rng)

    flags = np.zeros(shape, np.int8)
    xs, hole_z = [], []
    gap = (nx - n_baffles * thickness) / (n_baffles + 1)
    for k in range(n_baffles):
        x0 = round(gap * (k + 1) + thickness * k)
        xs.append(x0)
        flags[x0 : x0 + thickness] = SOLID
        ys = slice(0, hole) if k % 2 == 0 else slice(shape[1] - hole, shape[1])
        if ndim == 2:
            flags[x0 : x0 + thickness, ys] = FLUID
        else:
            z0 = int(geo_rng.integers(0, shape[2] - hole + 1))
            hole_z.append(z0)
            flags[x0 : x0 + thickness, ys, z0 : z0 + hole] = FLUID
    p.used["baffle_x"] = xs
    if ndim == 3:
        p.used["hole_z"] = hole_z
    boundary = [SOLID] * (2 * ndim)
    boundary[1] = AIR
    boundary = tuple(boundary)

    vel = _Velocity(shape)
    vel.add_uniform(0, inflow)
    vel.add(_fourier_flow(flow_rng, shape, *flow))
    inlet = np.zeros(face_shapes(shape)[0], dtype=F32)
    inlet[0] = inflow
    return _finish(p, flags, boundary, vel, (inlet,) + (None,) * (ndim - 1))


# ---------------------------------------------------------------------------------------------
# maze


@nb.njit(cache=True)
def _dfs_passages(dims, start, u, passage):
    """Randomized depth-first search on a lattice of rooms (dims int64 (3,), C order).

    passage: bool (rooms, 3), set True where room c opens to its +axis neighbour. u: float64
    (rooms,) uniform draws, one per step into a new room. Every room ends up connected (a
    spanning tree: a perfect maze).
    """
    n = dims[0] * dims[1] * dims[2]
    strides = np.array([dims[1] * dims[2], dims[2], 1])
    visited = np.zeros(n, np.bool_)
    stack = np.empty(n, np.int64)
    cand = np.empty(6, np.int64)
    cdir = np.empty(6, np.int64)
    top = 0
    stack[0] = start
    visited[start] = True
    k = 0
    while top >= 0:
        c = stack[top]
        coord = np.array([c // strides[0], (c // strides[1]) % dims[1], c % dims[2]])
        count = 0
        for a in range(3):
            for s in (-1, 1):
                q = coord[a] + s
                if 0 <= q < dims[a]:
                    nbr = c + s * strides[a]
                    if not visited[nbr]:
                        cand[count] = nbr
                        cdir[count] = a * 2 + (s > 0)
                        count += 1
        if count == 0:
            top -= 1
            continue
        pick = min(int(u[k] * count), count - 1)
        k += 1
        nbr = cand[pick]
        a = cdir[pick] // 2
        if cdir[pick] % 2 == 1:
            passage[c, a] = True
        else:
            passage[nbr, a] = True
        visited[nbr] = True
        top += 1
        stack[top] = nbr


def _scene_maze(shape, rng, p: _Params) -> SceneData:
    """A perfect maze: rooms `corridor` cells wide on a lattice of pitch corridor + 1, walls one
    cell thick, passages carved by randomized depth-first search (3D: a 3D maze, passages along
    every axis). Cells past the last whole room are SOLID. The exit is a corridor-sized patch of
    AIR cells in the outer x-hi wall next to a random room of the last x column; every grid face
    is SOLID. Flow: a buoyant jet from the floor plus random flow. Recorded: rooms (per axis),
    exit_room, start_room.
    """
    ndim = len(shape)
    corridor = p.integer("corridor", 1, lo=1, hi=3)
    plume = _plume_params(p, rng, ndim)
    flow = _flow_params(p, rng, (0.3, 0.6))
    p.finish()
    geo_rng, flow_rng = _streams(rng)

    pitch = corridor + 1
    rooms = [(n - 1) // pitch for n in shape]
    dims = np.array(rooms + [1] * (3 - ndim), dtype=np.int64)
    n_rooms = int(dims.prod())
    start = int(geo_rng.integers(n_rooms))
    u = geo_rng.random(n_rooms)
    passage = np.zeros((n_rooms, 3), dtype=np.bool_)
    _dfs_passages(dims, start, u, passage)
    passage = passage[:, :ndim].reshape(*rooms, ndim)

    coords = _axis_coords(shape)
    in_room, at_wall, room_of = [], [], []
    for d, x in enumerate(coords):
        t = x - 1
        i = np.clip(t // pitch, 0, rooms[d] - 1)
        valid = (t >= 0) & (t // pitch < rooms[d])
        in_room.append(valid & (t % pitch < corridor))
        at_wall.append(valid & (t % pitch == corridor) & (t // pitch < rooms[d] - 1))
        room_of.append(i)
    fluid = np.logical_and.reduce(np.broadcast_arrays(*in_room))
    idx = tuple(room_of)
    for a in range(ndim):
        parts = [at_wall[d] if d == a else in_room[d] for d in range(ndim)]
        mask = np.logical_and.reduce(np.broadcast_arrays(*parts))
        fluid |= mask & passage[(*idx, a)]
    flags = np.where(fluid, np.int8(FLUID), np.int8(SOLID))
    exit_room = [rooms[0] - 1] + [int(geo_rng.integers(r)) for r in rooms[1:]]
    key = [slice(1 + r * pitch, 1 + r * pitch + corridor) for r in exit_room]
    key[0] = rooms[0] * pitch
    flags[tuple(key)] = AIR
    start_room = [int(v) for v in np.unravel_index(start, dims)[:ndim]]
    p.used.update(rooms=rooms, exit_room=exit_room, start_room=start_room)
    vel = _plume_velocity(shape, flow_rng, plume, flow)
    return _finish(p, flags, (SOLID,) * (2 * ndim), vel)


# ---------------------------------------------------------------------------------------------
# porous media


@nb.njit(cache=True)
def _stamp_balls(solid, centers, radii, target):
    """Mark SOLID the cells of balls (centres float64 (m, 3), radii (m,)) in order until at
    least `target` cells are solid; solid: bool (nx, ny, nz), cell centres at index + 0.5.
    Returns how many balls were used."""
    nx, ny, nz = solid.shape
    count = 0
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                if solid[i, j, k]:
                    count += 1
    used = 0
    for b in range(centers.shape[0]):
        if count >= target:
            break
        used += 1
        cx, cy, cz = centers[b, 0], centers[b, 1], centers[b, 2]
        r = radii[b]
        r2 = r * r
        i0, i1 = max(0, math.floor(cx - r)), min(nx, math.ceil(cx + r) + 1)
        j0, j1 = max(0, math.floor(cy - r)), min(ny, math.ceil(cy + r) + 1)
        k0, k1 = max(0, math.floor(cz - r)), min(nz, math.ceil(cz + r) + 1)
        for i in range(i0, i1):
            dx = i + 0.5 - cx
            for j in range(j0, j1):
                dy = j + 0.5 - cy
                for k in range(k0, k1):
                    dz = k + 0.5 - cz
                    if dx * dx + dy * dy + dz * dz <= r2 and not solid[i, j, k]:
                        solid[i, j, k] = True
                        count += 1
    return used


def _percolates(flags: np.ndarray) -> bool:
    """True when FLUID connects the bottom layer (last axis 0) to the open top layer."""
    labels, _ = ndimage.label(flags == FLUID)
    top = np.unique(labels[..., -1])
    bottom = np.unique(labels[..., 0])
    return bool(np.intersect1d(top[top > 0], bottom[bottom > 0]).size)


def _scene_porous(shape, rng, p: _Params) -> SceneData:
    """Random porous media: overlapping SOLID balls (2D: discs) with radii uniform in
    grain_radius * (1 +- grain_radius_spread) cells, centres uniform in the box, stamped until
    `solid_fraction` of the cells is SOLID. Open (AIR) top, SOLID walls and floor. Closed
    pockets and isolated FLUID cells are left as they are. The pore space must connect the
    floor to the top: a draw that does not is redrawn (up to 20 attempts; `attempts`,
    `percolates` recorded). Flow: a buoyant jet from the floor plus random flow. Recorded:
    n_grains, solid_fraction_achieved.
    """
    ndim = len(shape)
    fraction = p.real("solid_fraction", 0.45, lo=0.0, hi=0.9)
    radius = p.real("grain_radius", rng.uniform(1.2, 2.5), lo=0.5, hi=float(min(shape)))
    spread = p.real("grain_radius_spread", 0.5, lo=0.0, hi=0.9)
    plume = _plume_params(p, rng, ndim)
    flow = _flow_params(p, rng, (0.3, 0.6))
    p.finish()
    geo_rng, flow_rng = _streams(rng)

    size = math.prod(shape)
    target = round(fraction * size)
    ball = math.pi * radius * radius if ndim == 2 else 4.0 / 3.0 * math.pi * radius**3
    batch = max(16, int(2.0 * -math.log(max(1.0 - fraction, 1e-3)) * size / ball) + 16)
    extent = np.array(list(shape) + [1] * (3 - ndim), dtype=np.float64)
    attempts = 0
    while attempts < 20:
        attempts += 1
        solid = np.zeros(tuple(int(v) for v in extent), dtype=np.bool_)
        used = 0
        while True:
            centers = geo_rng.random((batch, 3)) * extent
            if ndim == 2:
                centers[:, 2] = 0.5
            radii = radius * (1.0 + spread * geo_rng.uniform(-1.0, 1.0, batch))
            step = _stamp_balls(solid, centers, radii, target)
            used += step
            if step < batch or target == 0:
                break
        flags = np.where(solid.reshape(shape), np.int8(SOLID), np.int8(FLUID))
        ok = _percolates(flags)
        if ok:
            break
    p.used.update(
        n_grains=int(used),
        solid_fraction_achieved=float(np.count_nonzero(flags == SOLID) / size),
        attempts=attempts,
        percolates=ok,
    )
    vel = _plume_velocity(shape, flow_rng, plume, flow)
    return _finish(p, flags, _open_top(ndim), vel)


# ---------------------------------------------------------------------------------------------
# splash


def _ball_window(shape, center, radius) -> tuple[tuple, np.ndarray]:
    """(slices, bool mask) of the cells whose centres lie within `radius` of `center`."""
    window, r2 = [], 0.0
    for d, (n, c) in enumerate(zip(shape, center, strict=True)):
        i0 = min(n, max(0, math.floor(c - radius)))
        i1 = max(i0, min(n, math.ceil(c + radius) + 1))
        x = np.arange(i0, i1) + 0.5 - c
        r2 = r2 + (x * x).reshape([-1 if e == d else 1 for e in range(len(shape))])
        window.append(slice(i0, i1))
    return tuple(window), r2 <= radius * radius


def _scene_splash(shape, rng, p: _Params) -> SceneData:
    """A pool after a splash: FLUID below a wavy surface (mean `surface_height` of the last
    axis), AIR above, SOLID walls and floor, open top; `n_bubbles` AIR balls inside the liquid,
    `n_droplets` FLUID balls (radius 0.5-2.5 cells: some a single cell) in the air, and
    `n_sheets` horizontal FLUID sheets exactly one cell thick in the air (the cells just above
    and below a sheet are AIR). Flow: gravity (a uniform downward velocity), a vortex ring
    (the impact) and random flow. Recorded: bubbles, droplets, sheets (cells).
    """
    ndim = len(shape)
    nz = shape[-1]
    height = p.real("surface_height", rng.uniform(0.35, 0.5), lo=0.1, hi=0.7)
    n_bubbles = p.integer("n_bubbles", int(rng.integers(3, 8)), lo=0, hi=100_000)
    n_droplets = p.integer("n_droplets", int(rng.integers(5, 15)), lo=0, hi=100_000)
    n_sheets = p.integer("n_sheets", 2, lo=0, hi=1000)
    gravity = p.real("gravity", rng.uniform(0.3, 0.8))
    ring = _ring_params(p, rng, ndim)
    flow = _flow_params(p, rng, (0.1, 0.3))
    p.finish()
    geo_rng, flow_rng = _streams(rng)

    coords = _axis_coords(shape)
    surface = np.full(shape[:-1], height * nz)
    for d in range(ndim - 1):
        k = math.pi * int(geo_rng.integers(1, 4)) / shape[d]
        amp = geo_rng.uniform(0.02, 0.06) * nz
        surface = surface + amp * np.cos(k * (coords[d][..., 0] + 0.5) + geo_rng.uniform(0, 6.3))
    flags = np.where(coords[-1] + 0.5 < surface[..., None], np.int8(FLUID), np.int8(AIR))
    low = float(surface.min())
    high = float(surface.max())

    bubbles = []
    for _ in range(n_bubbles):
        r = geo_rng.uniform(1.0, max(1.5, 0.08 * min(shape)))
        c = [geo_rng.uniform(r, n - r) for n in shape[:-1]]
        c.append(geo_rng.uniform(r + 1.0, max(r + 1.0, low - r - 1.0)))
        window, mask = _ball_window(shape, c, r)
        part = flags[window]
        part[mask & (part == FLUID)] = AIR
        bubbles.append({"center": [float(v) for v in c], "radius": float(r)})
    air_lo = min(high + 2.0, nz - 2.0)
    droplets = []
    for _ in range(n_droplets):
        r = geo_rng.uniform(0.5, 2.5)
        c = [geo_rng.uniform(0.0, n) for n in shape[:-1]]
        c.append(geo_rng.uniform(air_lo + r, max(air_lo + r, nz - r)))
        window, mask = _ball_window(shape, c, r)
        flags[window][mask] = FLUID
        droplets.append({"center": [float(v) for v in c], "radius": float(r)})
    sheets = []
    for _ in range(n_sheets):
        z = int(geo_rng.integers(math.ceil(air_lo), nz - 1))
        lo = [int(geo_rng.integers(0, n // 2)) for n in shape[:-1]]
        hi = [int(geo_rng.integers(a + n // 4, n + 1)) for a, n in zip(lo, shape[:-1], strict=True)]
        key = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        flags[(*key, slice(z - 1, z + 2))] = AIR  # one AIR cell above and below
        sheets.append({"z": z, "lo": lo, "hi": hi})
    for s in sheets:
        key = tuple(slice(a, b) for a, b in zip(s["lo"], s["hi"], strict=True))
        flags[(*key, s["z"])] = FLUID
    for s in sheets:  # a later sheet's clearing may not thicken an earlier one
        key = tuple(slice(a, b) for a, b in zip(s["lo"], s["hi"], strict=True))
        for dz in (-1, 1):
            layer = flags[(*key, s["z"] + dz)]
            layer[layer == FLUID] = AIR
    p.used.update(bubbles=bubbles, droplets=droplets, sheets=sheets)

    vel = _ring_velocity(shape, flow_rng, ring, flow)
    vel.add_uniform(ndim - 1, -gravity)
    return _finish(p, flags, _open_top(ndim), vel)


# ---------------------------------------------------------------------------------------------
# pockets


def _scene_pockets(shape, rng, p: _Params) -> SceneData:
    """An open box (SOLID walls and floor, AIR top) with closed pockets: on a lattice of pitch
    max_pocket + 3 cells, each site holds with probability `pocket_density` a pocket of
    1..max_pocket FLUID cells per axis inside a one-cell SOLID shell, at a random offset that
    leaves at least one FLUID layer between neighbouring shells (so the open fluid stays
    connected). Each pocket is a closed region (singular block; a one-cell pocket is a zero
    row). Flow: a vortex ring plus random flow. Recorded: n_pockets, single_cell_pockets.
    """
    ndim = len(shape)
    max_pocket = p.integer("max_pocket", 2, lo=1, hi=max(1, min(shape) // 4))
    density = p.real("pocket_density", 0.8, lo=0.0, hi=1.0)
    ring = _ring_params(p, rng, ndim)
    flow = _flow_params(p, rng, (0.5, 1.0))
    p.finish()
    geo_rng, flow_rng = _streams(rng)

    pitch = max_pocket + 3
    sites = [n // pitch for n in shape]
    m = math.prod(sites)
    keep = geo_rng.random(m) < density
    inner = geo_rng.integers(1, max_pocket + 1, size=(m, ndim))
    slack = pitch - 1 - (inner + 2)  # room left in the site after the shell and a gap
    offset = np.floor(geo_rng.random((m, ndim)) * (slack + 1)).astype(np.int64)
    site = np.stack(np.unravel_index(np.arange(m), sites), axis=1) * pitch
    flags = np.zeros(shape, np.int8)
    chosen = np.flatnonzero(keep)
    for s in chosen.tolist():
        lo = site[s] + offset[s]
        outer = tuple(slice(a, a + w + 2) for a, w in zip(lo, inner[s], strict=True))
        core = tuple(slice(a + 1, a + 1 + w) for a, w in zip(lo, inner[s], strict=True))
        flags[outer] = SOLID
        flags[core] = FLUID
    singles = int(np.count_nonzero(np.all(inner[chosen] == 1, axis=1)))
    p.used.update(n_pockets=int(chosen.size), single_cell_pockets=singles)
    vel = _ring_velocity(shape, flow_rng, ring, flow)
    return _finish(p, flags, _open_top(ndim), vel)


BUILDERS = {
    "baffles": _scene_baffles,
    "maze": _scene_maze,
    "porous": _scene_porous,
    "pockets": _scene_pockets,
    "splash": _scene_splash,
}
MIN_SIZE = dict.fromkeys(BUILDERS, 16)
