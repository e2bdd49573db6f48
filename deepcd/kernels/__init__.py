"""numba kernels: CSR and stencil matvecs, fused vector updates, IC(0)/MIC(0)."""
