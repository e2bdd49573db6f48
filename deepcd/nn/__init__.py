"""Torch side of deepcd: the grid Laplacian, the DCDM loss and the direction networks."""

from deepcd.nn.loss import dcdm_loss
from deepcd.nn.networks import (
    ARCHITECTURES,
    GridNet,
    MultilevelNet,
    PaperNet,
    VCycleNet,
    build_network,
    coarsening_plan,
    count_parameters,
    flops_per_unknown,
)
from deepcd.nn.stencil import GridLaplacian, problem_to_tensor, tensor_to_problem
from deepcd.nn.weights import default_solver, load_solver, save_solver

__all__ = [
    "ARCHITECTURES",
    "GridLaplacian",
    "GridNet",
    "MultilevelNet",
    "PaperNet",
    "VCycleNet",
    "build_network",
    "coarsening_plan",
    "count_parameters",
    "dcdm_loss",
    "default_solver",
    "flops_per_unknown",
    "load_solver",
    "problem_to_tensor",
    "save_solver",
    "tensor_to_problem",
]
