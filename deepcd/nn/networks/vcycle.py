"""vcycle: the learned multigrid V-cycle, symmetric positive definite for any parameters, and
its private helpers (per-face smoothing, the CPU-inference test, dtypes). The architecture is
described in the package docstring (`deepcd.nn.networks`); its levels are built by
`deepcd.nn.multigrid`, its local weights by `deepcd.nn.local`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepcd.nn.local import LocalWeights
from deepcd.nn.multigrid import GraphLevel, StencilLevel, grid_form
from deepcd.nn.networks.layers import GridNet, _flag_batch
from deepcd.nn.networks.multilevel import coarsening_plan
from deepcd.problems.flags import SOLID

# CPU inference runs level 0 as a graph when fewer than this share of the grid's cells are
# unknowns (benchmarks/fine-layout measures the crossover)
GRAPH_FINE_BELOW = 0.35


class VCycleNet(GridNet):
    """A learned multigrid V-cycle, symmetric positive definite for any parameters (see the
    module docstring)."""

    arch = "vcycle"
    spd = True  # linear, symmetric positive definite for any parameters: DCDM runs it as PCG's M

    def __init__(
        self,
        dim: int = 3,
        *,
        levels: int = 3,
        degree: int = 3,
        smooth: int = 2,
        coarse_sweeps: int = 8,
        coarsest: int = 4,
        local: int = 0,
        use_flags: bool = False,
    ) -> None:
        super().__init__(dim, False)
        if use_flags:
            raise ValueError(
                "vcycle reads the cell flags through its operator; use_flags is not used"
            )
        for name, value in (
            ("levels", levels),
            ("degree", degree),
            ("smooth", smooth),
            ("coarse_sweeps", coarse_sweeps),
            ("coarsest", coarsest),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {value}")
        if int(local) < 0:
            raise ValueError(f"local must be ≥ 0 (0: no local weights), got {local}")
        self.config = {
            "dim": self.dim,
            "levels": int(levels),
            "degree": int(degree),
            "smooth": int(smooth),
            "coarse_sweeps": int(coarse_sweeps),
            "coarsest": int(coarsest),
            "use_flags": False,
        }
        if int(local):  # only when used: older cards and state_dicts stay as they are
            self.config["local"] = int(local)
        self.coarsest = int(coarsest)
        self.smooth = int(smooth)
        self.coarse_sweeps = int(coarse_sweeps)
        d, J = self.dim, int(levels)
        # smoother polynomial weights (logits of a softmax), equal at the start
        self.smoothers = nn.Parameter(torch.zeros(J + 1, int(degree)))
        # per level and axis, the prolongation's smoothing weight ω = ½·sigmoid(θ) ∈ (0, ½):
        # symmetric along each axis and positive by construction, ¼ (linear) at the start
        self.transfers = nn.Parameter(torch.zeros(J, d))
        # coarse-correction weights c = softplus(θ) > 0, starting at 1
        self.corrections = nn.Parameter(torch.full((J,), math.log(math.e - 1.0)))
        # smoother damping and transfer weights per unknown and link, from the local stencil
        self.local = LocalWeights(int(local)) if int(local) else None
        self._cache: tuple | None = None
        # CPU inference: level 0 on the grid or on its graph of unknowns (`fine_on_graph`)
        self.fine_layout = "auto"
        # CPU inference: graph levels that are exactly grids run on the grid kernels
        # (`deepcd.nn.multigrid.grid_form`); False keeps every coarse level on its graph
        self.grid_forms = True
        # CPU inference: a grid level's transfer smoothing in one pass for all axes
        # (`fastpath.transfer_smooth`); False: one pass per axis
        self.fused_transfers = True
        # CPU inference: level 0's residual, restriction, prolongation and correction on the
        # grid in two passes (`_restrict_fused`, `_prolong_fused`); False: one pass each
        self.fused_cycle = True
        # CPU inference: the graph levels' V-cycle from arrays and kernels resolved once per
        # hierarchy (`deepcd.nn.graph_cycle`); False: looked up on every call
        self.graph_plans = True

    # -- the smoother ---------------------------------------------------------------------------
    def _smoother(
        self, level, y: torch.Tensor, logits: torch.Tensor, scale=None, into=None
    ) -> torch.Tensor:
        """S y for the learned polynomial smoother of `level` (a `StencilLevel` on the grid,
        y (B, 1, *g), or a `GraphLevel`, y (N, C)). scale: (g·D)^-½ in the level's layout
        when local weights damp the smoother (`deepcd.nn.local`; D^-½ without). into: a
        tensor like y that S y is added to in place and returned (a post-smoother's x + S r:
        on the grid in CPU inference the sweep's last step adds it, with no pass of its own).

        With Â = D^-½ A D^-½ (spectrum in [0, 2] on every level: all are weakly diagonally
        dominant), a smoothing step x ← x + S(b − Ax) multiplies the error, in Â's eigenbasis,
        by r(λ) = Σ_j w_j T_j(1 − cλ), j = 1…degree, with Chebyshev polynomials T_j, weights
        w = softmax(logits) and c = 1 − 2⁻⁸. Since r(0) = 1, S = D^-½ q(Â) D^-½ with the
        polynomial q(λ) = (1 − r(λ))/λ, applied by the recurrence of U_j = (1 − T_j)/λ:
        U_0 = 0, U_1 = c, U_{j+1} = 2c + 2(1 − cÂ)U_j − U_{j−1}. For λ ∈ (0, 2],
        |1 − cλ| < 1 so |r(λ)| < 1: every smoothing step is a strict A-norm contraction,
        whatever the weights. With that, positive coarse-correction weights and an SPD
        coarsest solve the symmetric V-cycle is positive definite for ANY prolongation — the
        coarse correction I − c·P M_c Pᵀ A never increases the A-norm when M_c is SPD, by
        induction from the coarsest level — so DCDM with it never meets an indefinite
        preconditioner.
        """
        c = 1.0 - 2.0**-8
        if _fast(y, logits):
            if isinstance(level, GraphLevel):
                out = self._smoother_graph_fused(level, y, logits, c, scale)
                return out if into is None else into.add_(out)
            return self._smoother_fused(level, y, logits, c, scale, into)
        if into is not None:
            return into.add_(self._smoother(level, y, logits, scale))
        s = (level.inv_sqrt_diag if scale is None else scale).to(y.dtype)
        w = torch.softmax(logits, dim=0).to(y.dtype)
        hat = s * y
        u_prev = torch.zeros_like(hat)
        u = c * hat
        q = w[0] * u
        for j in range(1, w.shape[0]):
            a_u = s * level.apply(s * u)
            u, u_prev = 2.0 * c * hat + 2.0 * (u - c * a_u) - u_prev, u
            q = q + w[j] * u
        return s * q

    def _grid_arrays(self, level, dt: torch.dtype):
        """(s, diag, [lx, ly, lz]) of a grid level as 3D numpy arrays in dt (cached; 2D grids
        as (1, nx, ny) with an empty x-axis face array)."""
        from deepcd.nn.fastpath import grid_views

        key = ("grid", dt)
        if key not in level.cache:
            s, links = grid_views(level.inv_sqrt_diag.to(dt), [t.to(dt) for t in level.links])
            level.cache[key] = (s, grid_views(level.diag.to(dt))[0], links)
        return level.cache[key]

    def _clenshaw_beta(self, logits: torch.Tensor, c: float) -> np.ndarray:
        """The Clenshaw coefficients of softmax(logits) (`deepcd.nn.fastpath`), cached while
        the parameter is unchanged (its storage and in-place version)."""
        from deepcd.nn.fastpath import clenshaw_coefficients

        key = (logits.data_ptr(), logits._version, c)
        cache = self.__dict__.setdefault("_beta_cache", {})
        if key not in cache:
            if len(cache) > 256:  # parameters that keep changing (validation in training)
                cache.clear()
            w = torch.softmax(logits.detach().to(torch.float64), dim=0).numpy()
            cache[key] = clenshaw_coefficients(w, c)
        return cache[key]

    def _smoother_fused(
        self, level, y: torch.Tensor, logits: torch.Tensor, c: float, scale, into=None
    ):
        """`_smoother` on the grid: Clenshaw on the normalized stencil (`deepcd.nn.fastpath`),
        every step in one wavefront sweep (`fastpath.smooth_grid`), added to `into` (a
        contiguous tensor like y) when given."""
        from deepcd.nn.fastpath import normalized_grid, smooth_grid

        if level.diag.shape[0] != 1 or y.shape[0] != 1:
            raise ValueError("the fused grid smoother takes one field")
        grid = (1,) * (3 - self.dim) + tuple(y.shape[2:])  # 2D as (1, nx, ny)
        s, e, links = normalized_grid(level, scale, self.dim, y.dtype)
        yv = y.contiguous().numpy().reshape(grid)
        beta = self._clenshaw_beta(logits, c)
        # links off the grid (grid forms: never a local scale)
        extra = None if level.extra is None else level.extra.host(_np_dtype(y.dtype))
        if into is not None and into.is_contiguous() and into.dtype == y.dtype:
            smooth_grid(yv, beta, s, e, links, level.cache, into.numpy().reshape(grid), extra)
            return into
        out = smooth_grid(yv, beta, s, e, links, level.cache, extra=extra)
        out = torch.from_numpy(out).reshape(y.shape)
        return out if into is None else into.add_(out)

    def _smoother_graph_fused(self, level, y: torch.Tensor, logits: torch.Tensor, c: float, scale):
        """`_smoother` on a graph level: Clenshaw on the normalized links (one column)."""
        smooth = self._graph_smoother_op(level, logits, c, scale, _np_dtype(y.dtype))
        return torch.from_numpy(smooth(y.contiguous().numpy().reshape(-1))).reshape(y.shape)

    def _graph_smoother_op(self, level, logits: torch.Tensor, c: float, scale, dt: np.dtype):
        """A graph level's smoother as `deepcd.nn.graph_cycle.smoother_op` (node vectors in
        dt): what `_smoother_graph_fused` applies and the graph-level plans hold."""
        from deepcd.kernels import ell
        from deepcd.kernels.aggregate import small
        from deepcd.nn import graph_cycle as gc
        from deepcd.nn.fastpath import normalized_graph

        s, e, nweight = normalized_graph(level, scale, dt)
        idx, spill, rest_ptr, rest_idx = self._ell_layout(level)
        nw, rest_nw = self._ell_weights(level, "normalized", nweight)
        args = (e, idx, nw, spill, rest_ptr, rest_idx, rest_nw)
        step = small(ell.clenshaw_step, level.n)
        return gc.smoother_op(step, s, self._clenshaw_beta(logits, c), args)

    @staticmethod
    def _ell_layout(level):
        """A graph level's links in `deepcd.kernels.ell`'s fixed-width layout (cached)."""
        from deepcd.kernels import ell

        if "ell" not in level.cache:
            level.cache["ell"] = ell.layout(level.host["indptr"], level.host["indices"])
        return level.cache["ell"]

    @staticmethod
    def _ell_weights(level, name: str, weight: np.ndarray):
        """CSR link weights `weight` in the level's fixed-width layout, cached per name while
        `weight` is the same array (normalized ones change with a local scale)."""
        from deepcd.kernels import ell

        key = ("ell", name, weight.dtype.str)
        cached = level.cache.get(key)
        if cached is None or cached[0] is not weight:
            laid_out = VCycleNet._ell_layout(level)
            cached = (weight, ell.weights(level.host["indptr"], weight, laid_out))
            level.cache[key] = cached
        return cached[1]

    def _residual(self, level, r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """r − A x on a level (one fused numba pass on the grid in CPU inference)."""
        if (
            isinstance(level, StencilLevel)
            and _fast(x, self.smoothers)
            and level.diag.shape[0] == 1
        ):
            from deepcd.kernels.smoother import stencil_residual
            from deepcd.nn.fastpath import grid_kernel

            _, diag, links = self._grid_arrays(level, x.dtype)
            grid = diag.shape
            out = np.empty(grid, dtype=diag.dtype)
            rv = r.to(x.dtype).contiguous().numpy().reshape(grid)
            residual = grid_kernel(stencil_residual, diag.size)
            xv = x.contiguous().numpy().reshape(grid)
            residual(rv, xv, diag, *links, out)
            if level.extra is not None:  # links off the grid: A_ij = −w_ij
                from deepcd.kernels.extra_links import extra_add

                rows, ptr, cols, w = level.extra.host(diag.dtype)[:4]
                extra_add(
                    xv.reshape(-1), rows, ptr, cols, w, 1.0, rv.reshape(-1), False, out.reshape(-1)
                )
            return torch.from_numpy(out).reshape(x.shape)
        if isinstance(level, GraphLevel) and _fast(x, self.smoothers):
            residual = self._graph_residual_op(level, _np_dtype(x.dtype))
            rv = r.to(x.dtype).contiguous().numpy().reshape(-1)
            out = residual(rv, x.contiguous().numpy().reshape(-1))
            return torch.from_numpy(out).reshape(x.shape)
        return r - self._level_apply(level, x)

    def _graph_residual_op(self, level, dt: np.dtype):
        """A graph level's r − A x as `deepcd.nn.graph_cycle.residual_op` (node vectors in
        dt): what `_residual` applies there and the graph-level plans hold."""
        from deepcd.kernels import ell
        from deepcd.kernels.aggregate import small
        from deepcd.nn import graph_cycle as gc
        from deepcd.nn.multigrid import host_arrays

        arrays = host_arrays(level, dt)
        idx, spill, rest_ptr, rest_idx = self._ell_layout(level)
        w, rest_w = self._ell_weights(level, "weight", arrays["weight"])
        link_args = (idx, w, spill, rest_ptr, rest_idx, rest_w)
        return gc.residual_op(small(ell.residual, level.n), arrays["diag"], link_args)

    def _level_apply(self, level, x: torch.Tensor) -> torch.Tensor:
        """A x on a level (numba on a graph level in CPU inference)."""
        if isinstance(level, GraphLevel) and _fast(x, self.smoothers):
            from deepcd.kernels.aggregate import graph_matvec, small
            from deepcd.nn.multigrid import host_arrays

            h = host_arrays(level, _np_dtype(x.dtype))
            out = np.empty(level.n, dtype=_np_dtype(x.dtype))
            v = x.contiguous().numpy().reshape(-1)
            small(graph_matvec, level.n)(v, h["diag"], h["indptr"], h["indices"], h["weight"], out)
            return torch.from_numpy(out)[:, None]
        return level.apply(x)

    # -- transfers ------------------------------------------------------------------------------
    def _omegas(self, i: int) -> list[float] | torch.Tensor:
        return 0.5 * torch.sigmoid(self.transfers[i])

    # -- local weights (`deepcd.nn.local`) -------------------------------------------------------
    def _local_cached(self, cache: dict, key, make):
        """make() once per parameter state in inference (no grad), every call in training."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.local.parameters()):
            return make()
        full = (key, self.local.version())
        if cache.get(("local", key), (None,))[0] != full:
            with torch.no_grad():
                cache[("local", key)] = (full, make())
        return cache[("local", key)][1]

    def _features(self, level) -> tuple[torch.Tensor, torch.Tensor]:
        """(node, link) features of a graph level as float32 tensors (cached: data only)."""
        from deepcd.nn.local import graph_features

        if "local_features" not in level.cache:
            node, edge = graph_features(level.host_full())
            level.cache["local_features"] = (
                torch.from_numpy(node).to(level.device),
                torch.from_numpy(edge).to(level.device),
            )
        return level.cache["local_features"]

    @staticmethod
    def _grid_node_features(h) -> torch.Tensor | None:
        """Level 0's node features straight from its stencil on the grid (its graph's link
        CSR is then never built), or None for a stack of fields (cached: data only)."""
        from deepcd.kernels.grid_aggregate import grid_node_features

        if h.host_stencil is None:
            return None
        if "node_features" not in h.grid.cache:
            diag, links = h.host_stencil()
            out = np.empty((h.levels[0].n, 3))
            grid_node_features(diag, *links, h.index_host(), out)
            h.grid.cache["node_features"] = torch.from_numpy(out.astype(np.float32)).to(
                h.index.device
            )
        return h.grid.cache["node_features"]

    def _local_scale(self, h, depth: int, dtype: torch.dtype, grid: bool = True):
        """(g·D)^-½ of level `depth` in its layout (a grid field on level 0 unless `grid` is
        False: then level 0's node vector), or None."""
        if self.local is None:
            return None
        graph = h.levels[depth]
        on_grid = depth == 0 and grid

        def make():
            g = self._host_damping(h, depth, on_grid)
            if g is None:
                node = self._grid_node_features(h) if on_grid else None
                g = self.local.damping(self._features(graph)[0] if node is None else node)
            g = g.to(dtype)
            if not on_grid:
                return graph.inv_sqrt_diag.to(dtype) / g.sqrt()[:, None]
            bf = h.grid.diag.shape[0]
            field = torch.ones(bf * int(np.prod(h.shape)), dtype=dtype, device=g.device)
            field = field.index_copy(0, h.index_long(), g).reshape(bf, 1, *h.shape)
            return h.grid.inv_sqrt_diag.to(dtype) / field.sqrt()

        cache = h.grid.cache if on_grid else graph.cache
        return self._local_cached(cache, ("scale", dtype), make)

    def _local_omegas(self, h, depth: int, grid: bool = True):
        """Per-link ω of level `depth`'s prolongation smoothing: (nnz,) in CSR order on a
        graph level, per axis face fields (Bf, 1, *g_a) on level 0 in grid form (`grid`)."""
        i = min(depth, self._J - 1)
        if depth > 0 or not grid:
            level = h.levels[depth]
            axis = torch.as_tensor(level.host["axis"].astype(np.int64), device=level.device)

            def make():
                if _host_local(self.local, level.device):
                    return torch.from_numpy(self._graph_local(level, i)[1])
                theta = self.transfers[i][axis] if axis.numel() else self.transfers[i][:0]
                return self.local.omega(self._features(level)[1], theta)

            return self._local_cached(level.cache, "omega", make)
        from deepcd.nn.local import grid_face_features

        def make_grid():
            out = []
            for a, (link, nlink) in enumerate(zip(h.grid.links, h.grid_axis_faces, strict=True)):
                if link.shape[a + 2] == 0:
                    out.append(link)
                    continue
                if _host_local(self.local, link.device) and link.shape[0] == 1:
                    out.append(self._host_face_omega(h, a, i))
                    continue
                feats = h.grid.cache.get(("face_features", a))
                if feats is None:
                    feats = grid_face_features(h.grid.diag, link, nlink, a)
                    h.grid.cache[("face_features", a)] = feats
                # ω only where a face has a link: elsewhere ŵ = 0 and ω·ŵ = 0 whatever ω is
                on = (link > 0).reshape(-1).nonzero().squeeze(1)
                flat = feats.reshape(-1, feats.shape[-1])
                w = self.local.omega(flat[on], self.transfers[i][a])
                full = torch.zeros(flat.shape[0], dtype=w.dtype, device=w.device)
                out.append(full.index_put((on,), w).reshape(feats.shape[:-1]))
            return out

        return self._local_cached(h.grid.cache, "omega", make_grid)

    def _host_damping(self, h, depth: int, on_grid: bool) -> torch.Tensor | None:
        """g of level `depth` from the fused CPU kernels (`deepcd.kernels.local`), or None
        where the torch form runs (training, another device, a stack of fields)."""
        level = h.levels[depth]
        if not _host_local(self.local, level.device):
            return None
        if not on_grid:
            return torch.from_numpy(self._graph_local(level, min(depth, self._J - 1))[0])
        if h.host_stencil is None:
            return None
        from deepcd.kernels.local import grid_node_damping, log_floor

        diag, links = h.host_stencil()
        logdiag = np.empty(diag.size)
        log_floor(diag.reshape(-1), logdiag)
        out = np.empty(level.n, dtype=np.float32)
        args = (diag, logdiag.reshape(diag.shape), *links, h.index_host())
        grid_node_damping(*args, *self.local.host()[0], out)
        return torch.from_numpy(out)

    def _graph_local(self, level, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(g (n,), ω (nnz,)) float32 of a graph level from `deepcd.kernels.local.graph_local`
        with transfer i's θ (cached on the level per parameter state)."""
        from deepcd.kernels.local import graph_local, log_floor

        key = ("local_host", i, self.local.version(), self.transfers[i]._version)
        cached = level.cache.get("local_host")
        if cached is None or cached[0] != key:
            hf = level.host_full()
            g = np.empty(level.n, dtype=np.float32)
            omega = np.empty(len(hf["weight"]), dtype=np.float32)
            theta = self.transfers[i].detach().to(torch.float64).numpy()
            axis = hf["axis"].astype(np.int64)
            node, edge = self.local.host()
            logd = np.empty(level.n)
            log_floor(hf["diag"], logd)
            args = (hf["diag"], logd, hf["weight"], hf["nweight"], hf["indptr"], hf["indices"])
            args += (axis,)
            graph_local(*args, theta, *node, *edge, g, omega)
            cached = level.cache["local_host"] = (key, (g, omega))
        return cached[1]

    def _host_face_omega(self, h, a: int, i: int) -> torch.Tensor:
        """ω of level 0's faces along grid axis a, (1, 1, *g_a) float32, from
        `deepcd.kernels.local.grid_face_omega` with transfer i's θ."""
        from deepcd.kernels.local import grid_face_omega

        lead = (1,) * (3 - self.dim)
        link, nlink = h.grid.links[a], h.grid_axis_faces[a]

        def view(t: torch.Tensor) -> np.ndarray:
            return t.detach().contiguous().numpy().reshape(lead + tuple(t.shape[2:]))

        out = np.empty(lead + tuple(link.shape[2:]), dtype=np.float32)
        theta = float(self.transfers[i][a])
        args = (view(h.grid.diag), view(link), view(nlink), a + 3 - self.dim, theta)
        grid_face_omega(*args, *self.local.host()[1], out)
        return torch.from_numpy(out).reshape(link.shape)

    def _axis_split(self, level, dtype: torch.dtype, omegas) -> list:
        """Per axis, a graph level's links along it with their ŵ in dtype (ω folded in with
        local weights) in `deepcd.kernels.ell.axis_layout`'s fixed layout, cached on the
        level."""
        from deepcd.kernels.ell import axis_layout
        from deepcd.nn.multigrid import host_arrays

        per_link = self.local is not None
        dt = _np_dtype(dtype)
        key = ("axis_ell", dt.str, self.local.version() if per_link else None)
        if key not in level.cache:
            h = host_arrays(level, dt)
            nweight = h["nweight"]
            if per_link:
                nweight = (torch.from_numpy(h["nweight"]) * omegas.to(dtype)).numpy()
            level.cache[key] = axis_layout(h["indptr"], h["indices"], nweight, h["axis"], 3)
        return level.cache[key]

    def _grid_axis_arrays(self, h, dtype: torch.dtype, omegas, degrees: bool = True) -> list:
        """Per grid axis, (ŵ, degree) of level 0 as 3D numpy arrays in dtype (ω per face
        folded in with local weights; the kernels then take ω = 1), cached on the grid;
        without `degrees` (the fused transfers do not read them) the degree is None, except
        with local weights, whose degrees come with their ω·ŵ."""
        local = self.local is not None
        degrees = degrees or local
        key = ("axis", _np_dtype(dtype), self.local.version() if local else None, degrees)
        if key not in h.grid.cache:
            if local:
                pairs = [
                    _weighted_axis(nl, w, a)
                    for a, (nl, w) in enumerate(zip(h.grid_axis_faces, omegas, strict=True))
                ]
            elif degrees:
                pairs = h.grid_axis
            else:
                pairs = [(w, None) for w in h.grid_axis_faces]
            lead = (1,) * (3 - self.dim)

            def host(t: torch.Tensor | None) -> np.ndarray | None:
                if t is None:
                    return None
                return t.to(dtype).contiguous().numpy().reshape(lead + t.shape[2:])

            arrays = [tuple(host(t) for t in pair) for pair in pairs]
            # A flag Laplacian's ŵ are its faces (0 or 1, each face over the larger of its
            # cells' largest, 1): then the fused passes, which read both, read one array
            # twice — from cache the second time — instead of two from memory
            faces = self._grid_arrays(h.grid, dtype)[2][3 - self.dim :]  # 2D: no x-faces
            h.grid.cache[key] = [
                (face if _same_array(w, face) else w, deg)
                for (w, deg), face in zip(arrays, faces, strict=True)
            ]
        return h.grid.cache[key]

    @torch.no_grad()
    def prepare_inference(self, h, dtype: torch.dtype) -> None:
        """Derive, once per hierarchy, everything the CPU inference kernels read (normalized
        stencils, per-axis link CSRs, float32 copies, transfer maps, smoother coefficients),
        so a solve's setup holds it and its first application does not."""
        from deepcd.kernels.aggregate import serial_if_small
        from deepcd.nn.fastpath import normalized_graph
        from deepcd.nn.multigrid import host_arrays

        if h.grid.diag.shape[0] != 1:
            return
        dt, last = _np_dtype(dtype), len(h.levels) - 1
        for logits in self.smoothers:
            self._clenshaw_beta(logits, 1.0 - 2.0**-8)
        graph = self.fine_on_graph(h)
        if graph:
            h.index_host()  # forward converts level 0 between the grid and its nodes
        if last == 0 and h.coarse_inverse is not None:
            return
        if not graph:
            self._prepare_grid(h, dtype)
            if last == 0:
                return
        depth = 0 if graph else 1
        while depth <= last:
            if depth == last and h.coarse_inverse is not None:
                break
            sub = self._grid_form(h, depth) if depth > 0 and self._grid_forms_on() else None
            if sub is not None:  # the rest of the hierarchy continues from that grid level
                self._prepare_grid(sub, dtype)
                sub.index_host()
                h, depth, last = sub, 1, len(sub.levels) - 1
                continue
            level = h.levels[depth]
            if self.graph_plans and self._graph_cycle(h, depth, dtype, depth > 0) is not None:
                break  # the plan holds every level's arrays from here down
            with serial_if_small(level.n):
                scale = self._local_scale(h, depth, dtype, grid=False)
                nweight = normalized_graph(level, scale, dt)[2]
                self._ell_weights(level, "normalized", nweight)
                self._ell_weights(level, "weight", host_arrays(level, dt)["weight"])
                if depth < last:
                    self._axis_split(level, dtype, self._level_omegas(h, depth, grid=False))
            depth += 1

    def _prepare_grid(self, h, dtype: torch.dtype) -> None:
        """`prepare_inference` for h's grid level: its stencil arrays, the wavefront's
        scratch and, below it, the transfer weights and maps."""
        from deepcd.nn.fastpath import normalized_grid, sweep_extra, sweep_faces, wavefront_work

        self._grid_arrays(h.grid, dtype)
        links = normalized_grid(h.grid, self._local_scale(h, 0, dtype), self.dim, dtype)[2]
        grid = (1,) * (3 - self.dim) + tuple(h.shape)
        extra, deg, lag = h.grid.extra, self.config["degree"], 1
        if extra is not None:
            lag = sweep_extra(h.grid.cache, grid, extra.host(_np_dtype(dtype)), deg)[0]
        if wavefront_work(h.grid.cache, grid, _np_dtype(dtype), deg, lag) is not None:
            sweep_faces(h.grid.cache, grid, links)
        if len(h.levels) > 1:
            if self.fused_cycle and any(h.levels[0].halved) and extra is None:
                from deepcd.nn.fastpath import restrict_splits

                self._fused_transfer_args(h, dtype, grid)  # ŵ only: no degrees to hold
                restrict_splits(h.grid.cache, grid, h.grid_map(), h.levels[1].n)
            else:
                self._grid_axis_arrays(h, dtype, self._level_omegas(h, 0))
                h.grid_members()

    def _smooth_axes(self, level, x: torch.Tensor, omegas, axes) -> torch.Tensor:
        """Apply S_a for the axes in `axes`, in that order, to a node vector (N, C); omegas:
        one ω per axis (d,), or per link in CSR order (nnz,) with local weights."""
        per_link = self.local is not None
        if _fast(x, self.transfers):
            from deepcd.kernels.aggregate import small
            from deepcd.kernels.ell import axis_smooth
            from deepcd.nn.graph_cycle import axis_passes

            split = self._axis_split(level, x.dtype, omegas)
            oms = [1.0 if per_link else float(omegas[a]) for a in axes]
            v = x.contiguous().numpy().reshape(-1)
            out = axis_passes(small(axis_smooth, level.n), [split[a] for a in axes], oms, v)
            return torch.from_numpy(v.copy() if not axes else out).reshape(x.shape)
        for a in axes:
            if per_link:
                on = torch.as_tensor(level.host["axis"] == a, device=omegas.device)
                x = level.smooth_axis(x, a, omegas[on][:, None])
            else:
                x = level.smooth_axis(x, a, omegas[a])
        return x

    def _level_omegas(self, h, depth: int, grid: bool = True):
        """What `_smooth_axes` (grid False on level 0) / `_grid_smooth` take for level
        `depth`."""
        if self.local is not None:
            return self._local_omegas(h, depth, grid)
        return self._omegas(min(depth + h.offset, self._J - 1))

    def _restrict(self, h, depth: int, r: torch.Tensor) -> torch.Tensor:
        """Pᵀ r = P₀ᵀ S_{d-1} ⋯ S_0 r for a level-`depth` node vector (N, C)."""
        from deepcd.nn.multigrid import restrict

        level, coarse = h.levels[depth], h.levels[depth + 1]
        axes = [a for a, on in enumerate(level.halved) if on]
        r = self._smooth_axes(level, r, self._level_omegas(h, depth, grid=False), axes)
        if _fast(r, self.transfers):
            from deepcd.kernels.aggregate import restrict_sum, small

            out = np.empty(coarse.n, dtype=_np_dtype(r.dtype))
            small(restrict_sum, level.n)(
                r.contiguous().numpy().reshape(-1),
                level.host_full()["mstart"],
                level.host_full()["members"],
                out,
            )
            return torch.from_numpy(out)[:, None]
        return restrict(level, coarse.n, r)

    def _prolong(self, h, depth: int, xc: torch.Tensor) -> torch.Tensor:
        """P xc = S_0 ⋯ S_{d-1} P₀ xc, the exact transpose of `_restrict`."""
        from deepcd.nn.multigrid import prolong

        level = h.levels[depth]
        axes = [a for a, on in enumerate(level.halved) if on]
        if _fast(xc, self.transfers):
            from deepcd.kernels.aggregate import prolong_copy, small
            from deepcd.nn.multigrid import host_arrays

            dt = _np_dtype(xc.dtype)
            out = np.empty(level.n, dtype=dt)
            agg = host_arrays(level, dt)["agg"]
            small(prolong_copy, level.n)(xc.contiguous().numpy().reshape(-1), agg, out)
            x = torch.from_numpy(out)[:, None]
        else:
            x = prolong(level, xc)
        return self._smooth_axes(level, x, self._level_omegas(h, depth, grid=False), axes[::-1])

    def _grid_smooth(self, h, x: torch.Tensor, axes) -> torch.Tensor:
        """S_a on the grid for the axes in `axes`, in that order (fields (B, 1, *g))."""
        omegas = self._level_omegas(h, 0)
        local = self.local is not None
        if _fast(x, self.transfers):
            from deepcd.kernels.aggregate import grid_axis_smooth
            from deepcd.nn.fastpath import grid_kernel

            grid = (1,) * (3 - self.dim) + tuple(x.shape[2:])
            weights = self._grid_axis_arrays(h, x.dtype, omegas)
            v = x.contiguous().numpy().reshape(grid)
            extra = h.grid.extra
            if len(axes) > 1 and self.fused_transfers and extra is None:  # every axis, one pass
                from deepcd.nn.fastpath import transfer_smooth

                lead = 3 - self.dim
                pairs = [None] * lead + list(weights)
                oms = [1.0] * 3 if local else [0.0] * lead + [float(o) for o in omegas]
                out = transfer_smooth(v, [a + lead for a in axes], pairs, oms)
                return torch.from_numpy(out).reshape(x.shape)
            bufs = _pass_buffers(v, len(axes))
            axis_smooth = grid_kernel(grid_axis_smooth, v.size)
            for a, out in zip(axes, bufs, strict=True):
                nlink, deg = weights[a]
                omega = 1.0 if local else float(omegas[a])
                axis_smooth(v, nlink, deg, a + 3 - self.dim, omega, out)
                if extra is not None:  # its links along a (the degree counts them)
                    from deepcd.kernels.extra_links import extra_axis_add

                    rows, ptr, cols, _, _, nw, axis = extra.host(v.dtype)
                    extra_axis_add(
                        v.reshape(-1), rows, ptr, cols, nw, axis, a, omega, out.reshape(-1)
                    )
                v = out
            return torch.from_numpy(v.copy() if not axes else v).reshape(x.shape)
        for a in axes:
            if local:
                nlink, deg = _weighted_axis(h.grid_axis_faces[a], omegas[a], a)
                x = _grid_axis_step(x, nlink, deg, a)
            else:
                x = h.smooth_grid_axis(x, a, omegas[a])
        return x

    def _restrict_grid(self, h, r: torch.Tensor) -> torch.Tensor:
        """`_restrict` from level 0 in grid form (r (B, 1, *g)): the same Pᵀ r."""
        axes = [a for a, on in enumerate(h.levels[0].halved) if on]
        r = self._grid_smooth(h, r, axes)
        if _fast(r, self.transfers):
            from deepcd.kernels.aggregate import restrict_sum
            from deepcd.nn.fastpath import grid_kernel

            mstart, members, _ = h.grid_members()
            out = np.empty(h.levels[1].n, dtype=_np_dtype(r.dtype))
            rv = r.contiguous().numpy().reshape(-1)
            grid_kernel(restrict_sum, rv.size)(rv, mstart, members, out)
            return torch.from_numpy(out)[:, None]
        return h.restrict_grid(r)

    def _prolong_grid(self, h, xc: torch.Tensor) -> torch.Tensor:
        """`_prolong` to level 0 in grid form: the exact transpose of `_restrict_grid`."""
        axes = [a for a, on in enumerate(h.levels[0].halved) if on]
        if _fast(xc, self.transfers) and h.grid.diag.shape[0] == 1:
            from deepcd.kernels.aggregate import prolong_copy
            from deepcd.nn.fastpath import grid_kernel

            agg = h.grid_members()[2]
            out = np.empty(agg.shape[0], dtype=_np_dtype(xc.dtype))
            grid_kernel(prolong_copy, out.size)(xc.contiguous().numpy().reshape(-1), agg, out)
            x = torch.from_numpy(out).reshape(1, 1, *h.shape)
        else:
            x = h.prolong_grid(xc)
        return self._grid_smooth(h, x, axes[::-1])

    def _fused_grid(self, h, x: torch.Tensor) -> bool:
        """Whether CPU inference runs level 0's transfers and corrections on the grid as two
        passes, `_restrict_fused` and `_prolong_fused` (`fused_cycle`; one field, one
        column)."""
        return (
            self.fused_cycle
            and _fast(x, self.transfers)
            and _fast(x, self.corrections)
            and h.grid.diag.shape[0] == 1
            and h.grid.extra is None  # links off the grid: the unfused passes add them
            and len(h.levels) > 1
            and any(h.levels[0].halved)
        )

    def _restrict_fused(self, h, level, r: torch.Tensor, x: torch.Tensor, down) -> torch.Tensor:
        """Pᵀ(r − A x) (n1, 1) from level 0 on the grid in one pass — residual, transfer
        smoothing and sum (`fastpath.residual_restrict`): `_restrict_grid` of `_residual`,
        the same sums in another order. down: `_fused_transfer_args`' restriction."""
        from deepcd.nn.fastpath import residual_restrict

        grid = (1,) * (3 - self.dim) + tuple(x.shape[2:])
        _, diag, links = self._grid_arrays(level, x.dtype)
        rv = r.to(x.dtype).contiguous().numpy().reshape(grid)
        xv = x.contiguous().numpy().reshape(grid)
        rc = residual_restrict(rv, xv, diag, links, down, h.grid_map(), h.levels[1].n, h.grid.cache)
        return torch.from_numpy(rc)[:, None]

    def _prolong_fused(self, h, level, e: torch.Tensor, r: torch.Tensor, x: torch.Tensor, c, up):
        """(x + c·P e, r − A(x + c·P e)) on level 0 on the grid in one pass — copy, transfer
        smoothing, correction and residual (`fastpath.prolong_correct`): `_prolong_grid`, the
        update and `_residual`, the same sums in another order. c: the correction weight; up:
        `_fused_transfer_args`' prolongation."""
        from deepcd.nn.fastpath import prolong_correct

        grid = (1,) * (3 - self.dim) + tuple(x.shape[2:])
        _, diag, links = self._grid_arrays(level, x.dtype)
        rv = r.to(x.dtype).contiguous().numpy().reshape(grid)
        xv = x.contiguous().numpy().reshape(grid)
        ev = e.to(x.dtype).contiguous().numpy().reshape(-1)
        x_new, res = prolong_correct(ev, h.grid_map(), up, c, xv, rv, diag, links)
        return torch.from_numpy(x_new).reshape(x.shape), torch.from_numpy(res).reshape(x.shape)

    def _fused_transfer_args(self, h, dtype: torch.dtype, grid: tuple[int, ...]):
        """`fastpath.transfer_args`' args of level 0's restriction and prolongation, cached
        on the grid while its transfer weights and ω are the same."""
        from deepcd.nn.fastpath import transfer_args

        omegas = self._level_omegas(h, 0)
        weights = self._grid_axis_arrays(h, dtype, omegas, degrees=False)
        lead = 3 - self.dim
        oms = (1.0,) * 3 if self.local is not None else (0.0,) * lead + tuple(map(float, omegas))
        key = ("fused_transfer", _np_dtype(dtype).str)
        cached = h.grid.cache.get(key)
        if cached is None or cached[0] is not weights or cached[1] != oms:
            axes = [a + lead for a, on in enumerate(h.levels[0].halved) if on]
            pairs = [None] * lead + list(weights)
            down = transfer_args(grid, axes, pairs, oms)[1]
            up = transfer_args(grid, axes[::-1], pairs, oms)[1]
            h.grid.cache[key] = cached = (weights, oms, down, up)
        return cached[2], cached[3]

    @property
    def _J(self) -> int:
        return self.corrections.shape[0]

    def macs_per_unknown(self, shape: Sequence[int]) -> float:
        """Multiply-adds per grid cell of one application at `shape` on an open grid (every
        block one component): the level stencils (2d+1 taps; degree − 1 per smoothing step
        plus one per residual), the per-axis prolongation smoothing (3 taps per halved axis,
        both ways) and the dense coarsest solve."""
        plan = coarsening_plan(shape, self.coarsest)
        d, degree = self.dim, self.config["degree"]
        stencil = 2 * d + 1
        per_smooth = (degree - 1) * stencil + 4  # plus the scalings and the weighted sum
        sizes, total = [int(n) for n in shape], 0.0
        for axes in plan:
            cells = math.prod(sizes)
            total += cells * (2 * self.smooth * (per_smooth + stencil) + 2 * (3 * sum(axes) + 1))
            sizes = [math.ceil(n / 2) if on else n for n, on in zip(sizes, axes, strict=True)]
        total += math.prod(sizes) ** 2
        return total / math.prod(int(n) for n in shape)

    # -- the cycle -----------------------------------------------------------------------------
    def hierarchy(
        self,
        flags: torch.Tensor,
        grid: tuple[int, ...],
        boundary,
        dtype,
        columns=1,
        operator=None,
    ):
        """The levels of (flags, boundary) — or of a variable-coefficient `operator` on them —
        (`deepcd.nn.multigrid.build_hierarchy`), cached for repeated calls on the same grid
        (DCDM applies the network to one problem many times)."""
        from deepcd.nn.multigrid import build_hierarchy

        weighted = operator is not None and getattr(operator, "weighted", False)

        key = (
            tuple(map(tuple, boundary.tolist()))
            if isinstance(boundary, torch.Tensor)
            else repr(boundary),
            dtype,
            int(columns),
            torch.is_inference_mode_enabled(),  # inference tensors cannot be saved for backward
        )
        # compared by content, so another solve on the same grid (a projection every time
        # step) reuses the levels; one pass over int8 flags, small next to one V-cycle
        c = self._cache
        stencil = (operator.diag, *operator.links()) if weighted else ()
        if (
            c is not None
            and c[0] == key
            and _same_bytes(c[1], flags)  # shape, dtype and device included
            and len(c[3]) == len(stencil)
            and all(_same_bytes(a, b) for a, b in zip(c[3], stencil, strict=True))
        ):
            return c[2]
        plan = coarsening_plan(grid, self.coarsest)
        batch = _flag_batch(flags, self.dim, grid)
        with torch.no_grad():
            h = build_hierarchy(
                batch[:, 0],
                boundary,
                plan,
                dtype=dtype,
                columns=columns,
                operator=operator if weighted else None,
            )
        self._cache = (key, flags.detach().clone(), h, tuple(t.detach().clone() for t in stencil))
        return h

    def _cycle(self, h, depth: int, r: torch.Tensor, grid: bool = True) -> torch.Tensor:
        """One V-cycle from level `depth` (0: r a grid field (B, 1, *g), or level 0's node
        vector when `grid` is False; else a node vector)."""
        J, last = self._J, len(h.levels) - 1
        on_grid = depth == 0 and grid
        if depth > 0 and self._on_grid_form(h, r):  # a graph level that is a grid
            sub = self._grid_form(h, depth)
            if sub is not None:
                return sub.to_nodes(self._cycle(sub, 0, sub.from_nodes(r)))
        level = h.grid if on_grid else h.levels[depth]
        if depth == last and h.coarse_inverse is not None:  # coarsest: exact
            inv = h.coarse_inverse.to(r.dtype)
            if on_grid:
                return h.from_nodes(inv @ h.to_nodes(r))
            return inv @ r
        if not on_grid and self.graph_plans and _fast(r, self.smoothers):
            plan = self._graph_cycle(h, depth, r.dtype, grid)
            if plan is not None:  # the same V-cycle from arrays and kernels resolved once
                return torch.from_numpy(plan(r.contiguous().numpy().reshape(-1))).reshape(r.shape)
        scale = self._local_scale(h, depth, r.dtype, grid)
        if depth == last:  # too many unknowns for a dense solve: smoothing sweeps
            weights = self.smoothers[J]
            x = self._smoother(level, r, weights, scale)
            for _ in range(self.coarse_sweeps - 1):
                x = x + self._smoother(level, self._residual(level, r, x), weights, scale)
            return x
        i = min(depth + h.offset, J - 1)
        weights = self.smoothers[i]
        x = self._smoother(level, r, weights, scale)
        for _ in range(self.smooth - 1):
            x = x + self._smoother(level, self._residual(level, r, x), weights, scale)
        c = F.softplus(self.corrections[i]).to(r.dtype)
        if on_grid and self._fused_grid(h, x):  # two passes between the smoothings
            grid = (1,) * (3 - self.dim) + tuple(x.shape[2:])
            down, up = self._fused_transfer_args(h, x.dtype, grid)  # once per cycle
            rc = self._restrict_fused(h, level, r, x, down)
            e = self._cycle(h, 1, rc)
            x, res = self._prolong_fused(h, level, e, r, x, float(c), up)
            self._smoother(level, res, weights, scale, into=x)
            for _ in range(self.smooth - 1):
                self._smoother(level, self._residual(level, r, x), weights, scale, into=x)
            return x
        res = self._residual(level, r, x)
        if on_grid:  # level 0's transfers in grid form
            rc = self._restrict_grid(h, res)
            corr = self._prolong_grid(h, self._cycle(h, 1, rc))
        else:
            rc = self._restrict(h, depth, res)
            corr = self._prolong(h, depth, self._cycle(h, depth + 1, rc))
        if _fast(x, self.corrections):  # x is this call's own array: update it in place
            x.add_(corr.reshape(x.shape), alpha=float(c))
            for _ in range(self.smooth):
                self._smoother(level, self._residual(level, r, x), weights, scale, into=x)
            return x
        x = x + c * corr
        for _ in range(self.smooth):
            x = x + self._smoother(level, self._residual(level, r, x), weights, scale)
        return x

    def forward(
        self,
        r: torch.Tensor,
        flags: torch.Tensor | None = None,
        boundary=None,
        *,
        operator=None,
        levels=None,
    ) -> torch.Tensor:
        """q = M r for r (B, 1, *grid): one V-cycle on the levels of `operator` (a
        `GridLaplacian`: the system's own stencil, coefficients included) or, without one, of
        the flags' Laplacian with `boundary`. levels: the hierarchy `hierarchy` returned for
        these flags, boundary, operator and r's batch and dtype, used as it is (a caller that
        applies the network many times to one system, `NetworkDirection`: no per-call check
        that the flags and the stencil are still the cached ones — ~1 ms per call for a 64³
        variable-coefficient stencil)."""
        if operator is not None:
            flags = operator.flags if flags is None else flags
            boundary = operator.boundary if boundary is None else boundary
        if flags is None:
            raise ValueError("vcycle builds its operator from the cell flags: pass flags")
        if r.ndim != self.dim + 2 or r.shape[1] != 1:
            raise ValueError(
                f"r must have shape (B, 1, *grid) with {self.dim} grid axes, got {tuple(r.shape)}"
            )
        dtype = r.dtype if r.dtype in (torch.float32, torch.float64) else torch.float32
        if levels is not None:
            batch = levels.grid.diag.shape[0] * levels.columns
            if tuple(levels.shape) != tuple(r.shape[2:]) or r.shape[0] != batch:
                raise ValueError(
                    f"levels for grid {tuple(levels.shape)} and a batch of {batch} do not "
                    f"match r of shape {tuple(r.shape)}"
                )
            h = levels
        else:
            bf = _flag_batch(flags, self.dim, tuple(r.shape[2:])).shape[0]
            if r.shape[0] % bf:
                raise ValueError(f"flags batch {bf} does not match r's {r.shape[0]}")
            h = self.hierarchy(
                flags,
                tuple(r.shape[2:]),
                SOLID if boundary is None else boundary,
                dtype,
                columns=r.shape[0] // bf,
                operator=operator,
            )
        x = r.to(dtype)
        if not _fast(x, self.smoothers):
            x = x * h.grid.active
        # CPU inference reads level 0's right-hand side only where it has unknowns (as s·r,
        # s = 0 elsewhere; the residual off them reaches no coarse node), so it needs no
        # masking pass (tests/test_nn_vcycle.py::test_cpu_inference_ignores_r_off_unknowns)
        if _fast(x, self.smoothers) and self.fine_on_graph(h):
            return h.from_nodes(self._cycle(h, 0, h.to_nodes(x), grid=False)).to(r.dtype)
        return self._cycle(h, 0, x).to(r.dtype)

    def _graph_cycle(self, h, depth: int, dtype: torch.dtype, grid: bool = True):
        """The V-cycle from graph level `depth` (level 0 when `grid` is False) as a
        `deepcd.nn.graph_cycle.GraphCycle`, cached on the level per hierarchy offset, dtype
        and parameter state; None where a level below runs on its grid (`grid_form`), whose
        kernels the plan does not hold, or in a batch of columns."""
        if h.columns != 1:
            return None
        params = (self.smoothers, self.transfers, self.corrections)
        state = tuple((p.data_ptr(), p._version) for p in params)
        state += (self.local.version() if self.local is not None else None,)
        state += (self.smooth, self.coarse_sweeps, h.coarse_inverse is not None)
        state += (self._grid_forms_on(),)
        key = ("graph_cycle", h.offset, grid, dtype)
        cache = h.levels[depth].cache
        cached = cache.get(key)
        if cached is None or cached[0] != state:
            last = len(h.levels) - 1
            forms = self._grid_forms_on() and any(
                self._grid_form(h, d) is not None for d in range(max(depth, 1), last)
            )  # (grid forms are fixed per hierarchy: checked once, with the plan)
            plan = None if forms else self._build_graph_cycle(h, depth, dtype, grid)
            cached = cache[key] = (state, plan)
        return cached[1]

    def _build_graph_cycle(self, h, depth: int, dtype: torch.dtype, grid: bool):
        """`_graph_cycle`'s plan: each level's arrays from the helpers `_cycle` calls."""
        from deepcd.kernels.aggregate import serial_if_small
        from deepcd.nn import graph_cycle as gc

        last = len(h.levels) - 1
        ops = []
        coarsest = None
        if h.coarse_inverse is not None:  # the last level: its dense inverse alone
            coarsest = gc.dense_op(h.coarse_inverse.to(dtype))
        for d in range(depth, last + 1 if coarsest is None else last):
            with serial_if_small(h.levels[d].n):  # small levels' setup kernels on one thread
                ops.append(self._graph_level_ops(h, d, dtype, grid if d == depth else True))
        if coarsest is not None:
            ops.append(gc.GraphLevelOps(n=h.levels[last].n))
        return gc.GraphCycle(ops, self.smooth, coarsest, self.coarse_sweeps)

    def _graph_level_ops(self, h, d: int, dtype: torch.dtype, grid: bool):
        """Graph level d's `deepcd.nn.graph_cycle.GraphLevelOps` (`_build_graph_cycle`)."""
        from deepcd.kernels import ell
        from deepcd.kernels.aggregate import prolong_copy, restrict_sum, small
        from deepcd.nn import graph_cycle as gc
        from deepcd.nn.multigrid import host_arrays

        dt = _np_dtype(dtype)
        last, J = len(h.levels) - 1, self._J
        per_link = self.local is not None
        level = h.levels[d]
        weights = self.smoothers[J if d == last else min(d + h.offset, J - 1)]
        scale = self._local_scale(h, d, dtype, grid)
        op = gc.GraphLevelOps(
            n=level.n,
            smooth=self._graph_smoother_op(level, weights, 1.0 - 2.0**-8, scale, dt),
            residual=self._graph_residual_op(level, dt),
        )
        if d < last:
            i = min(d + h.offset, J - 1)
            axes = [a for a, on in enumerate(level.halved) if on]
            omegas = self._level_omegas(h, d, grid=False)
            split = self._axis_split(level, dtype, omegas)
            splits = [split[a] for a in axes]
            oms = [1.0 if per_link else float(omegas[a]) for a in axes]
            axis_kernel = small(ell.axis_smooth, level.n)
            full = level.host_full()
            op.restrict = gc.restrict_op(
                axis_kernel,
                splits,
                oms,
                small(restrict_sum, level.n),
                full["mstart"],
                full["members"],
                h.levels[d + 1].n,
                dt,
            )
            op.prolong = gc.prolong_op(
                small(prolong_copy, level.n),
                host_arrays(level, dt)["agg"],
                axis_kernel,
                splits,
                oms,
                dt,
            )
            op.correction = float(F.softplus(self.corrections[i]).to(dtype))
        return op

    def _grid_form(self, h, depth: int):
        """`grid_form`(h, depth) where this network runs it on the grid kernels: a level with
        links off its grid only where its wavefront smoother (stages `lag` planes apart)
        still gets every thread. Where it would not — level 1 of a 64³ grid, 32 planes for
        lag 2 — the graph kernels were faster (`benchmarks/close-cases`: splash and
        ghost-splash at 64³); at 128³ the grid kernels were (splash, pool, bunny)."""
        from deepcd.nn.fastpath import grid_threads, sweep_extra, wavefront_chunks

        sub = grid_form(h, depth)
        if sub is None or sub.grid.extra is None:
            return sub
        degree = self.config["degree"]
        key = ("wavefront_threads", degree)
        if key not in sub.grid.cache:
            grid = (1,) * (3 - self.dim) + tuple(sub.shape)
            extra = sub.grid.extra.host(np.float32)
            lag = sweep_extra(sub.grid.cache, grid, extra, degree)[0]
            chunks = wavefront_chunks(grid, degree, lag)
            sub.grid.cache[key] = chunks == grid_threads(math.prod(grid))
        return sub if sub.grid.cache[key] else None

    def _on_grid_form(self, h, r: torch.Tensor) -> bool:
        """Whether CPU inference runs graph levels that are grids (`grid_form`) on the grid
        kernels: one column, global weights (local ones are per link of the graph), every
        parameter without a gradient to track."""
        params = (self.smoothers, self.transfers, self.corrections)
        return self._grid_forms_on() and all(_fast(r, p) for p in params)

    def _grid_forms_on(self) -> bool:
        return self.local is None and self.grid_forms

    def fine_on_graph(self, h) -> bool:
        """Whether CPU inference runs level 0 on its graph of unknowns rather than on the grid
        (`fine_layout`: "grid", "graph", or "auto": the graph when fewer than
        GRAPH_FINE_BELOW of the cells are unknowns (mazes: `benchmarks/fine-layout`),
        where the grid kernels would stream every SOLID and AIR cell). The two compute the
        same V-cycle (the same sums in another order)."""
        if self.fine_layout not in ("auto", "grid", "graph"):
            raise ValueError(f"fine_layout must be auto, grid or graph, got {self.fine_layout!r}")
        if h.grid.diag.shape[0] != 1 or h.columns != 1 or self.fine_layout == "grid":
            return False
        if self.fine_layout == "graph":
            return True
        return h.levels[0].n < GRAPH_FINE_BELOW * math.prod(h.shape)


def _host_local(local, device: torch.device) -> bool:
    """Whether local weights come from the fused CPU kernels (`deepcd.kernels.local`):
    inference (no autograd) on the CPU with float32 local networks, which the kernels match
    to float32 rounding; training keeps the torch form, whose gradients it needs, and a
    float64 network keeps its float64 numbers."""
    return (
        device.type == "cpu"
        and not torch.is_grad_enabled()
        and local.node[0].weight.dtype == torch.float32
    )


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b hold the same values byte for byte (the levels' cache check, once per
    application): compared as int64 words where they allow it — ~6x faster than
    `torch.equal` on int8 flags (0.1 against 0.6 ms at 128³), which compares element by
    element into a temporary. Equal bytes are equal tensors; the converse misses only −0.0
    against 0.0, a rebuild."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    size = a.numel() * a.element_size()
    if a.is_contiguous() and b.is_contiguous() and size % 8 == 0 and size > 0:
        return torch.equal(a.reshape(-1).view(torch.int64), b.reshape(-1).view(torch.int64))
    return torch.equal(a, b)


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b hold the same values: views of the same memory (no scan) or equal arrays."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    same = a.strides == b.strides and a.ctypes.data == b.ctypes.data
    return same or np.array_equal(a, b)


def _weighted_axis(nlink: torch.Tensor, omega: torch.Tensor, a: int):
    """(ω·ŵ, its sum per cell) for the faces along grid axis a: one smoothing step with
    per-face weights is `_grid_axis_step` of these (the kernels: the same with ω = 1)."""
    w = nlink * omega.to(nlink.dtype)
    ax, n = a + 2, w.shape[a + 2] + 1
    shape = list(w.shape)
    shape[ax] = n
    deg = torch.zeros(shape, dtype=w.dtype, device=w.device)
    if n > 1:
        deg = deg.index_add(ax, torch.arange(n - 1, device=w.device), w)
        deg = deg.index_add(ax, torch.arange(1, n, device=w.device), w)
    return w, deg


def _grid_axis_step(x: torch.Tensor, w: torch.Tensor, deg: torch.Tensor, a: int):
    """x − (deg·x − Σ_faces w·x_nbr) along grid axis a (fields (B, 1, *g))."""
    ax, n = a + 2, x.shape[a + 2]
    lap = deg.to(x.dtype) * x
    if n > 1:
        w = w.to(x.dtype)
        lap = lap.clone()
        lap.narrow(ax, 0, n - 1).addcmul_(w, x.narrow(ax, 1, n - 1), value=-1.0)
        lap.narrow(ax, 1, n - 1).addcmul_(w, x.narrow(ax, 0, n - 1), value=-1.0)
    return x - lap


def _fast(x: torch.Tensor, params: torch.Tensor) -> bool:
    """CPU inference on one column in float32/64: the numba kernels apply."""
    grad = torch.is_grad_enabled() and (x.requires_grad or params.requires_grad)
    if grad or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return x.shape[0] == 1 if x.ndim > 2 else x.shape[1] == 1


def _pass_buffers(v: np.ndarray, passes: int) -> list[np.ndarray]:
    """Output arrays for `passes` passes that each read the previous one's output, the first
    reading v: two new arrays taken in turn, so v (the caller's) is never written."""
    if passes == 0:
        return []
    a = np.empty_like(v)
    b = np.empty_like(v) if passes > 1 else a
    return [a if k % 2 == 0 else b for k in range(passes)]


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == torch.float32 else np.dtype(np.float64)
