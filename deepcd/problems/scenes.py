"""Named, parameterized, seeded scenes: cell flags and a physically shaped right-hand side.

Every scene works in 2D (nx, ny) and 3D (nx, ny, nz); the last axis points up (gravity along
-last axis). Apart from `poisson-box`, the right-hand side is b = -div(u) of a MAC velocity u
built from smooth, O(1) flow features (see `deepcd.problems.mac.divergence`): random low-order
Fourier flow, vortex rings, a buoyant jet, a wind, a sloshing wave, gravity. Faces that touch a
wall take the wall's velocity before differencing, so b is largest along walls and obstacles
and smooth in the open fluid, as in a real pressure projection.

Units of the parameters (all may be overridden through `make_scene(..., **params)` and are
recorded in `SceneData.params`):
  * positions: fractions of each axis's extent (0 = low face, 1 = high face);
  * horizontal lengths and radii: fractions of the smallest axis, min(shape);
  * heights (`plume_height`, `surface_height`, `wave_amplitude`): fractions of the last axis;
  * speeds: cells per unit time (O(1)); angles in radians.
Scene outputs recorded beside the parameters (`obstacles`, `blob_harmonics`, `filled_cells`,
...) describe what was generated; geometry in them is in cell units.

Every random choice comes from `np.random.default_rng(seed)` and is drawn whether or not a
parameter overrides it, so overriding one parameter leaves the others unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from deepcd.problems.coefficients import Coefficients
from deepcd.problems.flags import AIR, FLUID, SOLID
from deepcd.problems.mac import divergence, face_shapes

__all__ = ["SceneData", "make_scene", "scene_names"]

F32 = np.float32
# A field evaluated on a window: field(axis, coords) -> array broadcastable to the window (or
# None for nothing), where coords[d] is the 1D coordinate array of axis d, shaped to broadcast.
Field = Callable[[int, list], np.ndarray]


@dataclass(frozen=True)
class SceneData:
    """One generated scene.

    flags: int8 grid of FLUID/SOLID/AIR. boundary: flag of the outside cells per face
    (x-lo, x-hi, y-lo, y-hi[, z-lo, z-hi]). rhs: float64 grid, -divergence on FLUID cells and 0
    elsewhere. params: every parameter used, plus descriptions of what was generated (JSON-ready).
    coefficients: the face coefficients of a variable-coefficient scene (None: the flag
    Laplacian).
    """

    flags: np.ndarray
    boundary: tuple[int, ...]
    rhs: np.ndarray
    params: dict
    coefficients: Coefficients | None = None


# ---------------------------------------------------------------------------------------------
# parameters


class _Params:
    """Scene parameters: a random default per knob, overridable, recorded as plain JSON."""

    def __init__(self, scene: str, given: dict):
        self.scene = scene
        self.given = dict(given)
        self.used: dict = {}

    def _value(self, key: str, drawn):
        return self.given.pop(key) if key in self.given else drawn

    def _number(self, key: str, value, lo: float | None, hi: float | None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(
                f"scene {self.scene!r}: parameter {key!r} must be a number, got {value!r}"
            )
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"scene {self.scene!r}: parameter {key!r} must be finite")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(
                f"scene {self.scene!r}: parameter {key!r} must lie in "
                f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}], got {value}"
            )
        return value

    def real(self, key: str, drawn: float, lo: float | None = None, hi: float | None = None):
        value = self._number(key, self._value(key, drawn), lo, hi)
        self.used[key] = value
        return value

    def integer(self, key: str, drawn: int, lo: int = 0, hi: int | None = None) -> int:
        value = self._value(key, drawn)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(
                f"scene {self.scene!r}: parameter {key!r} must be an integer, got {value!r}"
            )
        value = int(self._number(key, value, lo, hi))
        self.used[key] = value
        return value

    def vector(self, key: str, drawn, length: int, lo=None, hi=None) -> list[float]:
        value = self._value(key, drawn)
        if isinstance(value, (int, float)) and length == 1:
            value = [value]
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise TypeError(
                f"scene {self.scene!r}: parameter {key!r} must be a list of {length} numbers, "
                f"got {value!r}"
            )
        if len(value) != length:
            raise ValueError(
                f"scene {self.scene!r}: parameter {key!r} needs {length} numbers, got {len(value)}"
            )
        value = [self._number(key, v, lo, hi) for v in value]
        self.used[key] = value
        return value

    def direction(self, key: str, drawn, length: int) -> list[float]:
        vec = np.asarray(self.vector(key, drawn, length), dtype=np.float64)
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            raise ValueError(f"scene {self.scene!r}: parameter {key!r} must not be zero")
        unit = [float(v) for v in vec / norm]
        self.used[key] = unit
        return unit

    def finish(self) -> None:
        """Raise TypeError for parameters the scene does not take."""
        if self.given:
            raise TypeError(
                f"unknown parameter(s) {sorted(self.given)} for scene {self.scene!r}; "
                f"it takes {sorted(self.used)}"
            )


def _random_direction(rng: np.random.Generator, ndim: int) -> list[float]:
    vec = rng.standard_normal(ndim)
    vec /= max(float(np.linalg.norm(vec)), 1e-12)
    return [float(v) for v in vec]


# ---------------------------------------------------------------------------------------------
# velocity fields on MAC faces


class _Velocity:
    """A float32 MAC velocity being summed from flow features, one face array per axis."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self.comps = [np.zeros(s, dtype=F32) for s in face_shapes(shape)]

    def add(self, field: Field, lo=None, hi=None) -> None:
        """Add `field` on every component, evaluated only inside the box [lo, hi] (cells)."""
        ndim = len(self.shape)
        for axis, comp in enumerate(self.comps):
            window, coords = [], []
            for d in range(ndim):
                offset = 0.0 if d == axis else 0.5  # faces at integers, centres at i + 1/2
                size = comp.shape[d]
                i0 = 0 if lo is None else max(0, math.ceil(lo[d] - offset))
                i1 = size if hi is None else min(size, math.floor(hi[d] - offset) + 1)
                if i0 >= i1:
                    break
                x = np.arange(i0, i1, dtype=F32) + F32(offset)
                coords.append(x.reshape([-1 if e == d else 1 for e in range(ndim)]))
                window.append(slice(i0, i1))
            else:
                values = field(axis, coords)
                if values is not None:
                    comp[tuple(window)] += values

    def add_uniform(self, axis: int, value: float) -> None:
        self.comps[axis] += F32(value)


def _fourier_flow(rng: np.random.Generator, shape, amplitude: float, n_modes: int, kmax: int):
    """Random smooth flow: per component, a sum of separable products of low cosines.

    Mode m of component a is c * prod_d cos(pi * k_d * x_d / n_d + phase_d) with k_d in 0..kmax
    half-waves across the domain and normal c, scaled so that the RMS speed of each component is
    about `amplitude`. Each mode costs one window-sized product (an outer product of 1D cosines).
    """
    ndim = len(shape)
    scale = amplitude * 2.0 ** (ndim / 2) / math.sqrt(max(n_modes, 1))
    amps = rng.standard_normal((ndim, n_modes)) * scale
    waves = rng.integers(0, kmax + 1, size=(ndim, n_modes, ndim))
    phases = rng.uniform(0.0, 2.0 * math.pi, size=(ndim, n_modes, ndim))

    def field(axis: int, coords: list) -> np.ndarray | None:
        out = None
        for m in range(n_modes):
            term = F32(amps[axis, m])
            for d in range(ndim):
                k = math.pi * float(waves[axis, m, d]) / shape[d]
                term = term * np.cos(F32(k) * coords[d] + F32(phases[axis, m, d]))
            if out is None:
                out = term
            else:
                out += term
        return out

    return field


def _offsets(coords: list, center) -> tuple[list, np.ndarray]:
    """Offsets r_d = x_d - c_d (1D, broadcastable) and |r|^2 over the window."""
    r = [x - F32(c) for x, c in zip(coords, center, strict=True)]
    r2 = r[0] * r[0]
    for rd in r[1:]:
        r2 = r2 + rd * rd
    return r, r2


def _dot(r: list, n) -> np.ndarray:
    """sum_d r_d n_d over the window (always a full window array)."""
    s = r[0] * F32(n[0])
    for rd, nd in zip(r[1:], n[1:], strict=True):
        s = s + rd * F32(nd)
    return s


def _vortex_ring(center, axis, radius: float, core: float, strength: float) -> tuple:
    """A vortex ring (3D) or vortex pair (2D) travelling along the unit vector `axis`.

    The velocity is the curl of the vector potential G rho exp(-q) e_theta (3D), or of the stream
    function G t exp(-q) (2D, t the signed distance from the axis), q = ((rho - R)^2 + s^2) /
    core^2 with s the distance along the axis and rho the distance from it. In Cartesian form
        u = G exp(-q) [ (2 s / core^2) (r - s n) + ((ndim - 1) - 2 rho (rho - R) / core^2) n ],
    analytically divergence-free and smooth on the axis; the peak speed is about `strength`.
    Returns (field, lo, hi): outside the box [lo, hi] the field is below e^-25 of its peak.
    """
    ndim = len(center)
    n = [float(v) for v in axis]
    gamma = strength / (0.86 * radius / core + (ndim - 1))
    inv = 1.0 / (core * core)

    def field(a: int, coords: list) -> np.ndarray:
        r, r2 = _offsets(coords, center)
        s = _dot(r, n)
        r2 -= s * s
        np.maximum(r2, F32(0.0), out=r2)
        rho = np.sqrt(r2, out=r2)
        dev = rho - F32(radius)
        env = dev * dev
        env += s * s
        env *= F32(-inv)
        np.exp(env, out=env)
        env *= F32(gamma)  # G exp(-q)
        out = rho * dev  # axial part: (ndim - 1) - 2 rho (rho - R) / core^2, along n
        del rho, dev, r2
        out *= F32(-2.0 * inv * n[a])
        out += F32((ndim - 1) * n[a])
        radial = s * F32(n[a])  # radial part: 2 s (r_a - s n_a) / core^2
        np.subtract(r[a], radial, out=radial)
        radial *= s
        radial *= F32(2.0 * inv)
        out += radial
        out *= env
        return out

    pad = radius + 5.0 * core
    return field, [c - pad for c in center], [c + pad for c in center]


def _jet(source, axis, sigma0: float, spread: float, speed: float, length: float) -> tuple:
    """A buoyant jet rising from `source` along the unit vector `axis`.

    Velocity = speed * n * rise(s) * head(s) * sqrt(sigma0 / sigma(s)) * exp(-rho^2 / sigma(s)^2)
    with s the distance along the axis and rho the distance from it: a Gaussian cross-section
    widening as sigma(s) = sigma0 + spread * s, accelerating over a rise length 2 sigma0 + 1
    above the source (rise = 1 - exp(-(s / rise_length)^2)) and fading past the head at
    s = length over sigma(length) (head = exp(-(max(s - length, 0) / sigma(length))^2)).
    Returns (field, lo, hi) like `_vortex_ring`.
    """
    n = [float(v) for v in axis]
    rise = 2.0 * sigma0 + 1.0
    fade = sigma0 + spread * length

    def field(a: int, coords: list) -> np.ndarray | None:
        if n[a] == 0.0:
            return None
        r, r2 = _offsets(coords, source)
        s = _dot(r, n)
        r2 -= s * s  # rho^2
        sp = np.maximum(s, F32(0.0))
        sigma = sp * F32(spread)
        sigma += F32(sigma0)
        out = np.divide(r2, sigma * sigma, out=r2)
        np.negative(out, out=out)
        np.exp(out, out=out)  # cross-section
        t = sp * F32(1.0 / rise)
        t *= t
        np.negative(t, out=t)
        np.exp(t, out=t)
        np.subtract(F32(1.0), t, out=t)
        out *= t  # smooth start above the source
        np.subtract(s, F32(length), out=t)
        np.maximum(t, F32(0.0), out=t)
        t *= F32(1.0 / fade)
        t *= t
        np.negative(t, out=t)
        np.exp(t, out=t)
        out *= t  # fade past the head
        np.divide(F32(sigma0), sigma, out=sigma)
        np.sqrt(sigma, out=sigma)
        out *= sigma  # slows as it widens
        out *= F32(speed * n[a])
        return out

    reach = length + 5.0 * fade
    pad = 5.0 * (sigma0 + spread * reach)
    top = [c + reach * v for c, v in zip(source, n, strict=True)]
    lo = [min(a, b) - pad for a, b in zip(source, top, strict=True)]
    hi = [max(a, b) + pad for a, b in zip(source, top, strict=True)]
    return field, lo, hi


# ---------------------------------------------------------------------------------------------
# geometry on cell centres


def _cell_window(shape, lo, hi) -> tuple[tuple, list] | None:
    """Slices and broadcastable cell-centre coordinates of the cells inside [lo, hi]."""
    ndim = len(shape)
    window, coords = [], []
    for d in range(ndim):
        i0 = max(0, math.ceil(lo[d] - 0.5))
        i1 = min(shape[d], math.floor(hi[d] - 0.5) + 1)
        if i0 >= i1:
            return None
        x = np.arange(i0, i1, dtype=F32) + F32(0.5)
        coords.append(x.reshape([-1 if e == d else 1 for e in range(ndim)]))
        window.append(slice(i0, i1))
    return tuple(window), coords


def _bounding_radius(ob: dict) -> float:
    if ob["kind"] in ("sphere", "disc"):
        return ob["radius"]
    if ob["kind"] in ("box", "rectangle"):
        return math.sqrt(sum(h * h for h in ob["half_extents"]))
    return math.hypot(ob["radius"], ob["half_length"])  # cylinder


def _obstacle_mask(ob: dict, coords: list) -> np.ndarray:
    r = [x - F32(c) for x, c in zip(coords, ob["center"], strict=True)]
    kind = ob["kind"]
    if kind in ("sphere", "disc"):
        r2 = r[0] * r[0]
        for rd in r[1:]:
            r2 = r2 + rd * rd
        return r2 <= F32(ob["radius"] ** 2)
    if kind in ("box", "rectangle"):
        mask = np.abs(r[0]) <= F32(ob["half_extents"][0])
        for rd, h in zip(r[1:], ob["half_extents"][1:], strict=True):
            mask = mask & (np.abs(rd) <= F32(h))
        return mask
    # cylinder: a disc across the other axes, extruded along ob["axis"]
    k = ob["axis"]
    others = [r[d] for d in range(len(r)) if d != k]
    r2 = others[0] * others[0]
    for rd in others[1:]:
        r2 = r2 + rd * rd
    return (r2 <= F32(ob["radius"] ** 2)) & (np.abs(r[k]) <= F32(ob["half_length"]))


def _stamp(flags: np.ndarray, mask_fn, center, bound: float) -> None:
    """Mark SOLID the cells of the window center +- bound where mask_fn(coords) holds."""
    found = _cell_window(flags.shape, [c - bound for c in center], [c + bound for c in center])
    if found is None:
        return
    window, coords = found
    flags[window][np.broadcast_to(mask_fn(coords), flags[window].shape)] = SOLID


def _along(axis: int, ndim: int, index) -> tuple:
    key = [slice(None)] * ndim
    key[axis] = index
    return tuple(key)


def _fill_closed_pockets(flags: np.ndarray, boundary: tuple[int, ...]) -> int:
    """Turn every connected FLUID region that touches no AIR into SOLID; return the cell count.

    A region touches AIR through a face-neighbouring AIR cell or a grid face whose boundary flag
    is AIR. Without SOLID cells every region touches AIR as soon as any AIR exists.
    """
    ndim = flags.ndim
    if not (flags == SOLID).any() and (AIR in boundary or (flags == AIR).any()):
        return 0
    labels, count = ndimage.label(flags == FLUID)  # face connectivity
    if count == 0:
        return 0
    air = flags == AIR
    touches = np.zeros(count + 1, dtype=bool)
    for axis in range(ndim):
        low = _along(axis, ndim, slice(None, -1))
        high = _along(axis, ndim, slice(1, None))
        touches[labels[low][air[high]]] = True
        touches[labels[high][air[low]]] = True
        if boundary[2 * axis] == AIR:
            touches[labels[_along(axis, ndim, 0)]] = True
        if boundary[2 * axis + 1] == AIR:
            touches[labels[_along(axis, ndim, -1)]] = True
    touches[0] = True
    if touches.all():
        return 0
    pocket = ~touches[labels]
    del labels
    filled = int(np.count_nonzero(pocket))
    flags[pocket] = SOLID
    return filled


# ---------------------------------------------------------------------------------------------
# shared parameter groups


def _flow_params(p: _Params, rng, amplitude: tuple[float, float]) -> tuple[float, int, int]:
    amp = p.real("flow_amplitude", rng.uniform(*amplitude), lo=0.0)
    modes = p.integer("flow_modes", 6, lo=0, hi=64)
    kmax = p.integer("flow_max_wavenumber", 3, lo=0, hi=32)
    return amp, modes, kmax


def _ring_params(p: _Params, rng, ndim: int) -> dict:
    return {
        "center": p.vector("ring_center", rng.uniform(0.3, 0.7, ndim).tolist(), ndim, 0.0, 1.0),
        "axis": p.direction("ring_axis", _random_direction(rng, ndim), ndim),
        "radius": p.real("ring_radius", rng.uniform(0.12, 0.22), lo=1e-3, hi=1.0),
        "core": p.real("ring_core", rng.uniform(0.3, 0.5), lo=1e-3, hi=1.0),
        "strength": p.real("ring_strength", rng.uniform(0.5, 1.5)),
    }


def _add_ring(vel: _Velocity, ring: dict) -> None:
    shape = vel.shape
    radius = ring["radius"] * min(shape)
    core = max(ring["core"] * radius, 0.75)
    center = [f * n for f, n in zip(ring["center"], shape, strict=True)]
    vel.add(*_vortex_ring(center, ring["axis"], radius, core, ring["strength"]))


def _plume_params(p: _Params, rng, ndim: int) -> dict:
    plume = {
        "source_center": p.vector(
            "source_center", (0.5 + rng.uniform(-0.05, 0.05, ndim - 1)).tolist(), ndim - 1, 0, 1
        ),
        "radius": p.real("plume_radius", rng.uniform(0.05, 0.09), lo=1e-3, hi=1.0),
        "speed": p.real("plume_speed", rng.uniform(0.8, 1.5)),
        "spread": p.real("plume_spread", rng.uniform(0.08, 0.14), lo=0.0, hi=1.0),
        "height": p.real("plume_height", rng.uniform(0.45, 0.75), lo=0.0, hi=2.0),
        "head_strength": p.real("head_strength", rng.uniform(0.5, 1.0)),
    }
    if ndim == 2:
        plume["tilt"] = p.real("plume_tilt", rng.uniform(-0.25, 0.25), lo=-1.2, hi=1.2)
    else:
        plume["tilt"] = p.real("plume_tilt", rng.uniform(0.0, 0.25), lo=-1.2, hi=1.2)
        plume["azimuth"] = p.real("plume_azimuth", rng.uniform(0.0, 2.0 * math.pi))
    return plume


def _plume_geometry(plume: dict, shape) -> dict:
    """Cell-unit geometry of a plume: source point (on the floor), axis, widths, length."""
    ndim = len(shape)
    tilt = plume["tilt"]
    if ndim == 2:
        axis = [math.sin(tilt), math.cos(tilt)]
    else:
        az = plume["azimuth"]
        axis = [math.sin(tilt) * math.cos(az), math.sin(tilt) * math.sin(az), math.cos(tilt)]
    source = [f * n for f, n in zip(plume["source_center"], shape[:-1], strict=True)] + [0.0]
    sigma0 = max(plume["radius"] * min(shape), 0.75)
    length = plume["height"] * shape[-1] / math.cos(tilt)
    return {"source": source, "axis": axis, "sigma0": sigma0, "length": length}


def _add_plume(vel: _Velocity, plume: dict, geo: dict) -> None:
    vel.add(
        *_jet(
            geo["source"],
            geo["axis"],
            geo["sigma0"],
            plume["spread"],
            plume["speed"],
            geo["length"],
        )
    )
    sigma_head = geo["sigma0"] + plume["spread"] * geo["length"]
    head = [c + geo["length"] * v for c, v in zip(geo["source"], geo["axis"], strict=True)]
    strength = plume["head_strength"] * plume["speed"]
    vel.add(*_vortex_ring(head, geo["axis"], 1.2 * sigma_head, 0.5 * sigma_head, strength))


def _open_top(ndim: int) -> tuple[int, ...]:
    boundary = [SOLID] * (2 * ndim)
    boundary[-1] = AIR
    return tuple(boundary)


def _finish(
    p: _Params,
    flags: np.ndarray,
    boundary: tuple[int, ...],
    vel: _Velocity,
    solid_velocity=None,
) -> SceneData:
    """rhs = -div(vel) on FLUID cells (0 elsewhere) and the SceneData."""
    if not (flags == FLUID).any():
        raise ValueError(f"scene {p.scene!r}: these parameters leave no FLUID cell")
    rhs = divergence(tuple(vel.comps), flags, boundary, solid_velocity)
    vel.comps.clear()
    np.negative(rhs, out=rhs)
    rhs += 0.0  # turns the -0.0 of non-fluid cells into +0.0
    return SceneData(flags=flags, boundary=boundary, rhs=rhs, params=p.used)


# ---------------------------------------------------------------------------------------------
# scenes


def _scene_box(shape, rng, p: _Params) -> SceneData:
    """Empty box, SOLID walls and floor, open (AIR) top; random smooth flow plus a vortex ring."""
    ndim = len(shape)
    flow = _flow_params(p, rng, (0.5, 1.0))
    ring = _ring_params(p, rng, ndim)
    p.finish()
    vel = _Velocity(shape)
    vel.add(_fourier_flow(rng, shape, *flow))
    _add_ring(vel, ring)
    p.used["filled_cells"] = 0
    return _finish(p, np.zeros(shape, np.int8), _open_top(ndim), vel)


def _scene_closed_box(shape, rng, p: _Params) -> SceneData:
    """Every cell FLUID, every wall SOLID (pure Neumann: singular, one constant null vector).

    The rhs is -div of random smooth flow plus a vortex ring with impermeable walls, so it sums to
    zero up to rounding; `offset` adds a constant to it, making the system inconsistent on
    purpose (the solver's projection then removes it).
    """
    ndim = len(shape)
    flow = _flow_params(p, rng, (0.5, 1.0))
    ring = _ring_params(p, rng, ndim)
    offset = p.real("offset", 0.0)
    p.finish()
    vel = _Velocity(shape)
    vel.add(_fourier_flow(rng, shape, *flow))
    _add_ring(vel, ring)
    data = _finish(p, np.zeros(shape, np.int8), (SOLID,) * (2 * ndim), vel)
    if offset:
        data.rhs[...] += offset
    return data


def _scene_poisson_box(shape, rng, p: _Params) -> SceneData:
    """Every cell FLUID, boundary all AIR (Dirichlet), rhs standard normal white noise."""
    p.finish()
    rhs = rng.standard_normal(shape)
    return SceneData(
        flags=np.zeros(shape, np.int8), boundary=(AIR,) * (2 * len(shape)), rhs=rhs, params={}
    )


def _scene_smoke_plume(shape, rng, p: _Params) -> SceneData:
    """A room with SOLID walls and floor and an open (AIR) ceiling, like a vent: a buoyant jet
    rises from a source at the bottom centre, a vortex ring caps its head, weak random flow."""
    ndim = len(shape)
    plume = _plume_params(p, rng, ndim)
    flow = _flow_params(p, rng, (0.05, 0.15))
    p.finish()
    vel = _Velocity(shape)
    _add_plume(vel, plume, _plume_geometry(plume, shape))
    vel.add(_fourier_flow(rng, shape, *flow))
    p.used["filled_cells"] = 0
    return _finish(p, np.zeros(shape, np.int8), _open_top(ndim), vel)


def _draw_obstacle(rng, shape, ndim: int) -> dict:
    m = min(shape)
    kinds = ("disc", "rectangle") if ndim == 2 else ("sphere", "box", "cylinder")
    kind = kinds[int(rng.integers(len(kinds)))]
    lo = np.array([0.1] * (ndim - 1) + [0.15])
    hi = np.array([0.9] * (ndim - 1) + [0.85])
    center = [float(v) for v in rng.uniform(lo, hi) * np.asarray(shape)]
    if kind in ("sphere", "disc"):
        return {"kind": kind, "center": center, "radius": float(rng.uniform(0.07, 0.16) * m)}
    if kind in ("box", "rectangle"):
        half = [float(h) for h in rng.uniform(0.05, 0.16, ndim) * m]
        return {"kind": kind, "center": center, "half_extents": half}
    return {
        "kind": kind,
        "center": center,
        "radius": float(rng.uniform(0.05, 0.1) * m),
        "half_length": float(rng.uniform(0.15, 0.35) * m),
        "axis": int(rng.integers(ndim)),
    }


def _scene_smoke_obstacles(shape, rng, p: _Params) -> SceneData:
    """`smoke-plume` with random SOLID obstacles (3D: spheres, boxes, cylinders; 2D: discs,
    rectangles). None comes within 2 plume radii + 2 cells of the source; a fluid pocket they
    seal off from the AIR ceiling becomes SOLID, and if the source itself ends up sealed off,
    the last obstacles are dropped until it is not."""
    ndim = len(shape)
    plume = _plume_params(p, rng, ndim)
    flow = _flow_params(p, rng, (0.05, 0.15))
    n_obstacles = p.integer("n_obstacles", int(rng.integers(3, 7)), lo=0, hi=1000)
    p.finish()
    geo = _plume_geometry(plume, shape)
    source = geo["source"]
    keep = 2.0 * geo["sigma0"] + 2.0
    obstacles = []
    for _ in range(n_obstacles):
        for _attempt in range(100):
            ob = _draw_obstacle(rng, shape, ndim)
            if math.dist(ob["center"], source) > _bounding_radius(ob) + keep:
                obstacles.append(ob)
                break
    boundary = _open_top(ndim)
    source_cell = tuple(min(int(c), n - 1) for c, n in zip(source, shape, strict=True))
    dropped = 0
    while True:
        flags = np.zeros(shape, np.int8)
        for ob in obstacles:
            _stamp(
                flags,
                lambda coords, ob=ob: _obstacle_mask(ob, coords),
                ob["center"],
                _bounding_radius(ob) + 1.0,
            )
        filled = _fill_closed_pockets(flags, boundary)
        if flags[source_cell] == FLUID or not obstacles:
            break
        obstacles.pop()
        dropped += 1
    p.used.update(obstacles=obstacles, dropped_obstacles=dropped, filled_cells=filled)
    vel = _Velocity(shape)
    _add_plume(vel, plume, geo)
    vel.add(_fourier_flow(rng, shape, *flow))
    return _finish(p, flags, boundary, vel)


def _chebyshev(order: int, t: np.ndarray) -> np.ndarray:
    prev, cur = np.ones_like(t), t
    for _ in range(order - 1):
        prev, cur = cur, 2.0 * t * cur - prev
    return cur if order >= 1 else prev


def star_blob(center, radius: float, harmonics: list[dict]):
    """The bunny's solid as a function of coordinates (a list of broadcastable 1D arrays,
    cell units) → bool, True inside: |x − c| ≤ R (1 + Σ_j a_j T_{l_j}(d · e_j))."""

    def blob(coords: list) -> np.ndarray:
        r, r2 = _offsets(coords, center)
        rho = np.sqrt(r2, out=r2)
        inv = F32(1.0) / np.maximum(rho, F32(1e-6))
        reach = np.ones_like(rho)
        for h in harmonics:
            t = _dot(r, h["axis"])
            t *= inv
            reach += F32(h["amplitude"]) * _chebyshev(h["order"], t)
        reach *= F32(radius)
        return rho <= reach

    return blob


def _scene_bunny(shape, rng, p: _Params) -> SceneData:
    """A smooth random star-shaped SOLID blob in a wind tunnel.

    Blob: |x - c| <= R (1 + sum_j a_j T_{l_j}(d . e_j)), d the unit direction from the centre,
    T_l the Chebyshev polynomials (in 2D exactly the harmonics cos(l (theta - theta_j)); in 3D
    zonal harmonics about random axes e_j), orders l_j in 2..5, sum |a_j| = blob_roughness.
    Tunnel: wind along +x entering through the x-lo face (a SOLID inlet moving at the wind
    speed) and leaving through the open (AIR) x-hi face; the other walls are SOLID. Flow: the
    wind, a wake vortex ring behind the blob, weak random flow.
    """
    ndim = len(shape)
    center_f = p.vector(
        "blob_center", (0.5 + rng.uniform(-0.05, 0.05, ndim)).tolist(), ndim, 0.0, 1.0
    )
    radius_f = p.real("blob_radius", rng.uniform(0.22, 0.28), lo=1e-3, hi=1.0)
    n_harm = p.integer("n_harmonics", int(rng.integers(3, 6)), lo=0, hi=64)
    rough = p.real("blob_roughness", rng.uniform(0.2, 0.35), lo=0.0, hi=0.9)
    wind = p.real("wind_speed", rng.uniform(0.6, 1.2))
    wake = p.real("wake_strength", rng.uniform(0.3, 0.6))
    flow = _flow_params(p, rng, (0.1, 0.25))
    p.finish()

    radius = radius_f * min(shape)
    center = [f * n for f, n in zip(center_f, shape, strict=True)]
    weights = rng.uniform(0.5, 1.0, n_harm) * rng.choice([-1.0, 1.0], n_harm)
    weights *= rough / max(float(np.abs(weights).sum()), 1e-12)
    harmonics = [
        {
            "order": int(rng.integers(2, 6)),
            "amplitude": float(w),
            "axis": _random_direction(rng, ndim),
        }
        for w in weights
    ]

    blob = star_blob(center, radius, harmonics)
    flags = np.zeros(shape, np.int8)
    _stamp(flags, blob, center, radius * (1.0 + rough) + 1.0)
    boundary = [SOLID] * (2 * ndim)
    boundary[1] = AIR
    boundary = tuple(boundary)
    filled = _fill_closed_pockets(flags, boundary)
    p.used.update(blob_harmonics=harmonics, filled_cells=filled)

    vel = _Velocity(shape)
    vel.add_uniform(0, wind)
    wake_center = [center[0] + 1.6 * radius, *center[1:]]
    wake_axis = [-1.0] + [0.0] * (ndim - 1)
    vel.add(*_vortex_ring(wake_center, wake_axis, 0.5 * radius, 0.2 * radius, wake * wind))
    vel.add(_fourier_flow(rng, shape, *flow))
    inlet = np.zeros(face_shapes(shape)[0], dtype=F32)
    inlet[0] = wind
    return _finish(p, flags, boundary, vel, (inlet,) + (None,) * (ndim - 1))


def _scene_pool(shape, rng, p: _Params) -> SceneData:
    """Liquid in a tank: FLUID below a wavy free surface, AIR above, SOLID walls and floor,
    an open (AIR) top. Surface height h(x) = surface_height + sum of n_waves random low cosine
    waves with total amplitude wave_amplitude (at least one cell of liquid per column).

    Flow: a standing sloshing wave (potential A cos(k x) cosh(k z) / cosh(k H), which meets the
    walls with zero normal velocity), gravity acting over one step (a uniform downward velocity
    `gravity`, which makes the hydrostatic part of the pressure), and weak random flow.
    """
    ndim = len(shape)
    height = p.real("surface_height", rng.uniform(0.45, 0.7), lo=1e-3, hi=1.0)
    wave_amp = p.real("wave_amplitude", rng.uniform(0.03, 0.08), lo=0.0, hi=1.0)
    n_waves = p.integer("n_waves", 3, lo=0, hi=64)
    slosh = p.real("slosh_amplitude", rng.uniform(0.3, 0.8))
    gravity = p.real("gravity", rng.uniform(0.3, 0.8))
    flow = _flow_params(p, rng, (0.05, 0.15))
    p.finish()

    nz = shape[-1]
    horiz = shape[:-1]
    weights = rng.uniform(0.5, 1.0, n_waves) * rng.choice([-1.0, 1.0], n_waves)
    weights *= wave_amp * nz / max(float(np.abs(weights).sum()), 1e-12)
    waves = rng.integers(1, 4, size=(n_waves, ndim - 1))
    phases = rng.uniform(0.0, 2.0 * math.pi, size=(n_waves, ndim - 1))
    mode = rng.integers(0, 3, size=ndim - 1)
    if not mode.any():
        mode[0] = 1
    p.used["slosh_mode"] = [int(v) for v in mode]

    # surface height per column (cells), on the horizontal cell centres
    centres = [
        (np.arange(n, dtype=np.float64) + 0.5).reshape(
            [-1 if e == d else 1 for e in range(ndim - 1)]
        )
        for d, n in enumerate(horiz)
    ]
    surface = np.full(horiz, height * nz)
    for w, ks, ph in zip(weights, waves, phases, strict=True):
        term = np.full([1] * (ndim - 1), w)
        for d in range(ndim - 1):
            term = term * np.cos(math.pi * ks[d] * centres[d] / horiz[d] + ph[d])
        surface += term
    np.maximum(surface, 1.0, out=surface)
    zc = np.arange(nz, dtype=np.float64) + 0.5
    flags = np.where(zc < surface[..., None], np.int8(FLUID), np.int8(AIR))
    boundary = _open_top(ndim)
    filled = _fill_closed_pockets(flags, boundary)
    p.used["filled_cells"] = filled

    # sloshing: u_d = -A k_d sin(k_d x_d) prod cos(...) C(z), w = A prod cos(...) S(z)
    ks = [math.pi * float(m) / n for m, n in zip(mode, horiz, strict=True)]
    k = math.sqrt(sum(v * v for v in ks))
    mean_h = height * nz
    top = min(float(nz), float(surface.max()) + 2.0, mean_h + 20.0 / k)  # no overflow
    amp = slosh / k

    def sloshing(a: int, coords: list) -> np.ndarray:
        z = np.minimum(coords[-1].astype(np.float64), top)
        scale = math.cosh(k * mean_h)
        if a == ndim - 1:
            vertical = k * np.sinh(k * z) / scale
        else:
            vertical = np.cosh(k * z) / scale
        out = (amp * vertical).astype(F32)
        for d in range(ndim - 1):
            x = coords[d].astype(np.float64)
            if d == a:
                factor = -ks[d] * np.sin(ks[d] * x)
            else:
                factor = np.cos(ks[d] * x)
            out = out * factor.astype(F32)
        return out

    vel = _Velocity(shape)
    vel.add(sloshing)
    vel.add_uniform(ndim - 1, -gravity)
    vel.add(_fourier_flow(rng, shape, *flow))
    return _finish(p, flags, boundary, vel)


_BUILDERS = {
    "box": _scene_box,
    "bunny": _scene_bunny,
    "closed-box": _scene_closed_box,
    "poisson-box": _scene_poisson_box,
    "pool": _scene_pool,
    "smoke-obstacles": _scene_smoke_obstacles,
    "smoke-plume": _scene_smoke_plume,
}
# scenes without geometry accept any axis length >= 1; the others need >= 8 cells per axis
_MIN_SIZE = {"poisson-box": 1, "closed-box": 1}


def _registry() -> tuple[dict, dict]:
    """(builders, minimum sizes) of every scene, with those of `scenes_hard` and
    `scenes_coefficients` (imported here, late, because they build on this module)."""
    from deepcd.problems import scenes_coefficients, scenes_hard

    families = (scenes_hard, scenes_coefficients)
    builders, sizes = dict(_BUILDERS), dict(_MIN_SIZE)
    for family in families:
        builders.update(family.BUILDERS)
        sizes.update(family.MIN_SIZE)
    return builders, sizes


def scene_names() -> list[str]:
    """Names of the scene generators, sorted."""
    return sorted(_registry()[0])


def _check_shape(name: str, shape) -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__"):
        raise ValueError(f"shape must be a tuple of 2 or 3 ints, got {shape!r}")
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must have 2 or 3 axes, got {len(shape)}: {tuple(shape)!r}")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise ValueError(f"shape entries must be ints, got {tuple(shape)!r}")
    shape = tuple(int(s) for s in shape)
    least = _registry()[1].get(name, 8)
    if min(shape) < least:
        raise ValueError(f"scene {name!r} needs at least {least} cells per axis, got {shape}")
    return shape


def make_scene(name: str, shape: tuple[int, ...], seed: int = 0, **params) -> SceneData:
    """Generate scene `name` on a grid of `shape` ((nx, ny) or (nx, ny, nz), last axis up).

    The same (name, shape, seed, params) always gives bit-identical output. Raises ValueError
    for an unknown name or a bad shape, TypeError for parameters the scene does not take.
    """
    builders = _registry()[0]
    if name not in builders:
        raise ValueError(f"unknown scene {name!r}; valid names: {', '.join(scene_names())}")
    shape = _check_shape(name, shape)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    return builders[name](shape, rng, _Params(name, params))
