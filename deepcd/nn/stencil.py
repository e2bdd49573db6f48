"""The pressure Laplacian applied on the grid, as a torch module (matrix-free, batched).

`GridLaplacian` applies the same operator as `deepcd.problems.assembly.laplacian_csr` to fields
laid out on the cell grid: for a FLUID cell, (A x)[c] = diag[c]·x[c] − Σ x[n] over its FLUID
neighbours n, where diag[c] is the number of non-SOLID neighbours (cells outside the grid take
the boundary flag of their face). The result is zero on every non-FLUID cell, and values of x
off FLUID cells are ignored, so A x on the grid equals `problem.to_grid(problem.A @ v)` for
`x = problem.to_grid(v)`.

Layout: fields are (B, C, *grid) — C is usually 1; the operator acts on each channel. The
operator holds its masks with a leading batch axis of size Bf: Bf = 1 applies one matrix to a
whole batch (broadcast), Bf = B applies a different matrix (flags, boundary) to each sample —
the form training batches that mix scenes need (`GridLaplacian.stack`).

Buffers (not part of any state_dict, they are derived data; `.to(device/dtype)` moves them and
casts the float ones):
  flags   int8  (Bf, 1, *grid)   the cell flags
  fluid   float (Bf, 1, *grid)   1 on FLUID cells, 0 elsewhere
  diag    float (Bf, 1, *grid)   the diagonal on FLUID cells, 0 elsewhere
  link_x, link_y[, link_z]  float (Bf, 1, *grid with that axis one shorter):
          1 where the face between cells i and i+1 along that axis joins two FLUID cells —
          the "neighbour is FLUID" mask of both cells at once (the off-diagonal −1 entries).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from deepcd.problems.flags import AIR, FLUID, SOLID

_AXIS_NAMES = ("x", "y", "z")


def _as_flag_tensor(flags, device) -> torch.Tensor:
    if isinstance(flags, torch.Tensor):
        t = flags.detach()
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"flags must be an integer tensor of cell flags, got {t.dtype}")
        t = t.to(device=device if device is not None else t.device, dtype=torch.int8)
    else:
        arr = np.asarray(flags)
        if arr.dtype.kind not in "iub":
            raise TypeError(f"flags must be an integer array of cell flags, got dtype {arr.dtype}")
        t = torch.tensor(np.ascontiguousarray(arr, dtype=np.int8), device=device)
    if t.numel() and (int(t.min()) < FLUID or int(t.max()) > AIR):
        raise ValueError("flags may only hold FLUID=0, SOLID=1, AIR=2")
    return t


def _boundary_table(boundary, batch: int, dim: int) -> np.ndarray:
    """(batch, 2*dim) int8 table of face flags from a scalar, one per-face sequence (shared by
    the batch) or a sequence of `batch` entries (each a scalar or a per-face sequence)."""
    faces = 2 * dim

    def one(entry) -> list[int]:
        if np.isscalar(entry):
            row = [int(entry)] * faces
        else:
            row = [int(f) for f in entry]
        if len(row) != faces:
            raise ValueError(f"boundary needs one flag per face ({faces} for {dim}D), got {row}")
        if any(f not in (SOLID, AIR) for f in row):
            raise ValueError(f"boundary faces must be SOLID=1 or AIR=2, got {row}")
        return row

    if isinstance(boundary, torch.Tensor):
        boundary = boundary.tolist()
    if np.isscalar(boundary):
        rows = [one(boundary)] * batch
    else:
        entries = list(boundary)
        nested = any(not np.isscalar(e) for e in entries)
        if not nested and (len(entries) == faces or len(entries) != batch):
            rows = [one(entries)] * batch  # one per-face tuple shared by every sample
        elif not nested:
            rows = [one(e) for e in entries]  # one flag per sample
        elif len(entries) != batch:
            raise ValueError(
                f"boundary has {len(entries)} per-sample entries for a batch of {batch}"
            )
        else:
            rows = [one(e) for e in entries]
    return np.asarray(rows, dtype=np.int8).reshape(batch, faces)


def _masks_torch(f: torch.Tensor, bc: torch.Tensor, dim: int, dtype: torch.dtype):
    """(FLUID mask (bool), diag, face masks per axis) of flags f (B, *grid) with boundary
    table bc (B, 2·dim), in torch (any device and float type)."""
    fluid = f == FLUID
    diag = torch.zeros(f.shape, dtype=torch.int8, device=f.device)
    for axis in range(dim):
        for side, step in ((0, -1), (1, +1)):
            nb = _neighbour(f, axis + 1, step, bc[:, 2 * axis + side])
            diag += (nb != SOLID).to(torch.int8)
    diag = torch.where(fluid, diag, torch.zeros_like(diag)).to(dtype)
    links = []
    for axis in range(dim):
        n = f.shape[axis + 1]
        links.append(
            (fluid.narrow(axis + 1, 0, n - 1) & fluid.narrow(axis + 1, 1, n - 1)).to(dtype)
        )
    return fluid, diag, links


def _masks_host(f: torch.Tensor, bc: torch.Tensor, dim: int, dtype: torch.dtype):
    """`_masks_torch` on the CPU in one numba pass (`deepcd.kernels.masks`), the FLUID mask
    as a float field: the same numbers (small integers, exact)."""
    from deepcd.kernels.masks import laplacian_masks

    batch, grid = f.shape[0], tuple(f.shape[1:])
    lead = (1,) * (3 - dim)
    f3 = f.contiguous().numpy().reshape(batch, *lead, *grid)
    bc6 = np.zeros((batch, 6), dtype=np.int8)
    bc6[:, 2 * (3 - dim) :] = bc.numpy()
    dt = np.float32 if dtype == torch.float32 else np.float64
    fluid, diag = np.empty(f3.shape, dtype=dt), np.empty(f3.shape, dtype=dt)
    faces = []
    for a in range(3):
        shape = list(f3.shape)
        shape[a + 1] = max(shape[a + 1] - 1, 0)
        faces.append(np.empty(shape, dtype=dt))
    laplacian_masks(f3, bc6, 3 - dim, fluid, diag, *faces)
    links = []
    for a in range(dim):
        shape = list(f.shape)
        shape[a + 1] -= 1
        links.append(torch.from_numpy(faces[a + 3 - dim].reshape(shape)))
    as_grid = (batch, *grid)
    return torch.from_numpy(fluid.reshape(as_grid)), torch.from_numpy(diag.reshape(as_grid)), links


def _neighbour(f: torch.Tensor, axis: int, step: int, fill: torch.Tensor) -> torch.Tensor:
    """out[c] = f[c + step·e_axis]; the slab outside the grid takes `fill` (one value per
    sample, shape (B,)). f is (B, *grid)."""
    n = f.shape[axis]
    slab_shape = list(f.shape)
    slab_shape[axis] = 1
    slab = fill.view(-1, *([1] * (f.ndim - 1))).expand(slab_shape)
    if step > 0:
        return torch.cat([f.narrow(axis, 1, n - 1), slab], dim=axis)
    return torch.cat([slab, f.narrow(axis, 0, n - 1)], dim=axis)


class GridLaplacian(nn.Module):
    """The 5/7-point pressure Laplacian over FLUID cells, applied to grid fields (B, C, *grid).

    flags: integer array/tensor of FLUID/SOLID/AIR, either one grid (*grid) — then the grid's
        dimension is flags.ndim — or a batch (B, *grid) together with `dim=len(grid)`.
    boundary: flag of the cells outside the grid: one flag for every face, one per face
        (x-lo, x-hi, y-lo, y-hi[, z-lo, z-hi]) shared by the batch, or — for batched flags — a
        sequence of B entries, each a flag or a per-face sequence (B flat flags when B equals
        the number of faces read as one per-face tuple). SOLID or AIR. Default SOLID.
    dim: 2 or 3; required for batched flags (a (B, nx, ny) batch and an (nx, ny, nz) grid
        cannot be told apart otherwise).
    device, dtype: where the buffers live and the float type of the masks (float32 default;
        `forward` casts them to the input's dtype, so one operator serves float32/64/bf16).
    stencil: a variable-coefficient operator's grid stencil (diag, links) — diag (*grid) or
        (B, *grid), links[a] the face weights with axis a one shorter (see
        `deepcd.problems.coefficients`) — used instead of the flags' Laplacian (`weighted`).

    `forward(x)` returns A x with zeros on non-FLUID cells; x's batch size must equal the
    operator's (`batch_size`) or the operator must be unbatched (batch_size 1).
    """

    flags: torch.Tensor
    fluid: torch.Tensor
    diag: torch.Tensor

    def __init__(
        self,
        flags,
        boundary=SOLID,
        *,
        dim: int | None = None,
        device=None,
        dtype: torch.dtype = torch.float32,
        stencil=None,
    ) -> None:
        super().__init__()
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        f = _as_flag_tensor(flags, device)
        if dim is None:
            if f.ndim not in (2, 3):
                raise ValueError(
                    f"flags must be a 2D or 3D grid (or pass dim= for a batch), got shape "
                    f"{tuple(f.shape)}"
                )
            dim = f.ndim
            f = f.unsqueeze(0)
        else:
            if dim not in (2, 3):
                raise ValueError(f"dim must be 2 or 3, got {dim}")
            if f.ndim == dim:
                f = f.unsqueeze(0)
            elif f.ndim != dim + 1:
                raise ValueError(
                    f"flags must have shape (*grid) or (B, *grid) with {dim} grid axes, "
                    f"got {tuple(f.shape)}"
                )
        if min(f.shape) < 1:
            raise ValueError(f"flags has an empty axis: shape {tuple(f.shape)}")
        batch = f.shape[0]
        bc = torch.as_tensor(_boundary_table(boundary, batch, dim), device=f.device)
        self.dim = dim
        self.grid_shape = tuple(int(s) for s in f.shape[1:])

        if f.device.type == "cpu" and dtype in (torch.float32, torch.float64):
            fluid_mask, diag, links = _masks_host(f, bc, dim, dtype)
            fluid = fluid_mask > 0
        else:
            fluid, diag, links = _masks_torch(f, bc, dim, dtype)
            fluid_mask = fluid.to(dtype)
        self.weighted = stencil is not None
        if stencil is not None:
            diag, links = _stencil_tensors(stencil, fluid, links, dtype)

        self.register_buffer("flags", f.unsqueeze(1).contiguous(), persistent=False)
        self.register_buffer("boundary", bc, persistent=False)
        self.register_buffer("fluid", fluid_mask.unsqueeze(1), persistent=False)
        self.register_buffer("diag", diag.unsqueeze(1), persistent=False)
        for axis, link in enumerate(links):
            self.register_buffer(f"link_{_AXIS_NAMES[axis]}", link.unsqueeze(1), persistent=False)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_problem(cls, problem, device=None, dtype: torch.dtype = torch.float32):
        """The operator of one deepcd `Problem` (its flags, boundary and coefficients)."""
        stencil = problem.grid_stencil if getattr(problem, "has_coefficients", False) else None
        return cls(problem.flags, problem.boundary, device=device, dtype=dtype, stencil=stencil)

    @classmethod
    def stack(cls, items: Iterable, device=None, dtype: torch.dtype | None = None):
        """One batched operator from Problems and/or GridLaplacians of the same grid shape.

        Batched GridLaplacians contribute all their samples, in order. device/dtype default to
        those of the first GridLaplacian given (else CPU, float32).
        """
        items = list(items)
        if not items:
            raise ValueError("stack needs at least one Problem or GridLaplacian")
        flags, bcs, parts = [], [], []
        for it in items:
            if isinstance(it, GridLaplacian):
                flags.append(it.flags[:, 0])
                bcs.extend(it.boundary.tolist())
                parts.append(it if it.weighted else None)
                if device is None:
                    device = it.flags.device
                if dtype is None:
                    dtype = it.diag.dtype
            elif hasattr(it, "flags") and hasattr(it, "boundary"):
                flags.append(_as_flag_tensor(it.flags, None).unsqueeze(0))
                bcs.append(list(it.boundary))
                parts.append(it if getattr(it, "has_coefficients", False) else None)
            else:
                raise TypeError(f"stack takes Problems or GridLaplacians, got {type(it).__name__}")
        shapes = {tuple(f.shape[1:]) for f in flags}
        if len(shapes) != 1:
            raise ValueError(f"stack needs one grid shape, got {sorted(shapes)}")
        dim = len(next(iter(shapes)))
        batch = torch.cat([f.to(device=device) for f in flags], dim=0)
        dtype = dtype or torch.float32
        stencil = None
        if any(p is not None for p in parts):  # a weighted stencil for every sample
            plain = cls(batch, bcs, dim=dim, device=device, dtype=dtype)
            diags, links, row = [], [[] for _ in range(dim)], 0
            for f, part in zip(flags, parts, strict=True):
                rows = slice(row, row + f.shape[0])
                src = (
                    plain.diag[rows, 0],
                    [w[rows, 0] for w in plain.links()],
                )
                if isinstance(part, GridLaplacian):
                    src = (part.diag[:, 0], [w[:, 0] for w in part.links()])
                elif part is not None:
                    d, ws = part.grid_stencil
                    src = (torch.as_tensor(d)[None], [torch.as_tensor(w)[None] for w in ws])
                diags.append(src[0].to(device=device, dtype=dtype))
                for a in range(dim):
                    links[a].append(src[1][a].to(device=device, dtype=dtype))
                row += f.shape[0]
            stencil = (torch.cat(diags), [torch.cat(w) for w in links])
        return cls(batch, bcs, dim=dim, device=device, dtype=dtype, stencil=stencil)

    # -- properties --------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Number of distinct matrices held (1: one matrix broadcast over any batch)."""
        return self.flags.shape[0]

    def links(self) -> list[torch.Tensor]:
        """The per-axis FLUID–FLUID face masks, x first."""
        return [getattr(self, f"link_{_AXIS_NAMES[a]}") for a in range(self.dim)]

    def extra_repr(self) -> str:
        return f"grid={self.grid_shape}, batch_size={self.batch_size}"

    # -- application -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.dim + 2 or tuple(x.shape[2:]) != self.grid_shape:
            raise ValueError(f"x must have shape (B, C, *{self.grid_shape}), got {tuple(x.shape)}")
        if self.batch_size not in (1, x.shape[0]):
            raise ValueError(
                f"x has batch size {x.shape[0]} but the operator holds {self.batch_size} "
                "matrices (1 broadcasts)"
            )
        return stencil_apply(x, self.diag, self.links())

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """x with its non-FLUID cells zeroed."""
        return x * self.fluid.to(x.dtype)


def _stencil_tensors(stencil, fluid: torch.Tensor, masks: list[torch.Tensor], dtype):
    """A user's grid stencil (diag, links) as (Bf, *grid) tensors on fluid's device, checked
    against the flags: zero off FLUID cells and across faces that do not join two."""
    diag, links = stencil
    bf, grid = fluid.shape[0], tuple(fluid.shape[1:])

    def tensor(name: str, value, shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.as_tensor(value).to(device=fluid.device, dtype=dtype)
        if tuple(t.shape) == shape:
            t = t.unsqueeze(0)
        if tuple(t.shape[1:]) != shape or t.shape[0] not in (1, bf):
            raise ValueError(
                f"stencil {name} must have shape {shape} or (B, *{shape}), got {tuple(t.shape)}"
            )
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise ValueError(f"stencil {name} must be finite and non-negative")
        return t.expand(bf, *shape).contiguous()

    d = tensor("diag", diag, grid) * fluid.to(dtype)
    if len(links) != len(masks):
        raise ValueError(f"stencil needs {len(masks)} link arrays, got {len(links)}")
    ws = [
        tensor(f"links[{a}]", w, tuple(m.shape[1:])) * m
        for a, (w, m) in enumerate(zip(links, masks, strict=True))
    ]
    return d, ws


def stencil_apply(
    x: torch.Tensor, diag: torch.Tensor, links: Sequence[torch.Tensor]
) -> torch.Tensor:
    """y = diag·x − Σ_axis (w·x across each face), for fields x (B, C, *grid).

    diag: (Bf, 1, *grid); links[a]: (Bf, 1, *grid with axis a one shorter), the coupling weight
    of the face between cells i and i+1 along axis a (1 for the fine Laplacian's FLUID–FLUID
    faces; any non-negative weight on Galerkin coarse levels). Bf is 1 or x's batch size.
    Masks are cast to x's dtype.
    """
    dt = x.dtype
    y = diag.to(dt) * x
    for axis, link in enumerate(links):
        ax = axis + 2
        n = x.shape[ax]
        if n < 2:
            continue
        link = link.to(dt)
        # across each interior face: the lower cell gets −w·x[upper], the upper −w·x[lower]
        y.narrow(ax, 0, n - 1).addcmul_(link, x.narrow(ax, 1, n - 1), value=-1.0)
        y.narrow(ax, 1, n - 1).addcmul_(link, x.narrow(ax, 0, n - 1), value=-1.0)
    return y


def problem_to_tensor(
    problem, v: np.ndarray | Sequence[float], device=None, dtype=torch.float32
) -> torch.Tensor:
    """A fluid vector (n,) of `problem` as a grid tensor (1, 1, *grid), zeros off FLUID."""
    g = problem.to_grid(np.asarray(v))
    return torch.as_tensor(g, device=device).to(dtype)[None, None]


def tensor_to_problem(problem, x: torch.Tensor) -> np.ndarray:
    """The FLUID cells of a grid tensor (1, 1, *grid) or (*grid) as a float64 fluid vector."""
    g = x.detach().reshape(problem.shape).to("cpu", torch.float64).numpy()
    return problem.from_grid(g)
