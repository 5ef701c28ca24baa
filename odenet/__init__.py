"""odenet: deep residual networks as discretised ordinary differential equations.

A residual block is one step of an ODE solver, x_{k+1} = x_k + h·F_k(x_k). odenet makes
the step rule (any explicit Butcher tableau, or an adaptive torchdiffeq solver) a
parameter of the network, so the same model can be a ResNet, an RK-Net or an ODE-Net.
"""

from importlib.metadata import PackageNotFoundError, version

from odenet import models
from odenet.blocks import MEMORY, ODEBlock, SolverError, ode_blocks, total_nfe
from odenet.depth import StepwiseField, depth_field
from odenet.fields import (
    BasicConvField,
    BottleneckField,
    ConcatConv2d,
    ConcatLinear,
    MLPField,
    PostActBottleneckField,
    PreActConvField,
)
from odenet.models.imagenet import imagenet_resnet, load_torchvision_state_dict
from odenet.solvers import METHODS, Method, UnknownSolverError, get_method, method_names
from odenet.tableaus import ButcherTableau, TableauError

try:
    __version__ = version("odenet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "MEMORY",
    "METHODS",
    "BasicConvField",
    "BottleneckField",
    "ButcherTableau",
    "ConcatConv2d",
    "ConcatLinear",
    "MLPField",
    "Method",
    "ODEBlock",
    "PostActBottleneckField",
    "PreActConvField",
    "SolverError",
    "StepwiseField",
    "TableauError",
    "UnknownSolverError",
    "depth_field",
    "get_method",
    "imagenet_resnet",
    "load_torchvision_state_dict",
    "method_names",
    "models",
    "ode_blocks",
    "total_nfe",
]
