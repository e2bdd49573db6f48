"""Torch side of deepcd: the grid Laplacian, the DCDM loss and the direction networks."""

from deepcd.nn.loss import dcdm_loss
from deepcd.nn.networks import (
    ARCHITECTURES,
    GridNet,
    MultilevelNet,
    PaperNet,
    build_network,
    coarsening_plan,
    count_parameters,
    flops_per_unknown,
)
from deepcd.nn.stencil import GridLaplacian, problem_to_tensor, tensor_to_problem

__all__ = [
    "ARCHITECTURES",
    "GridLaplacian",
    "GridNet",
    "MultilevelNet",
    "PaperNet",
    "build_network",
    "coarsening_plan",
    "count_parameters",
    "dcdm_loss",
    "flops_per_unknown",
    "problem_to_tensor",
    "tensor_to_problem",
]
