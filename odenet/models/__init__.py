"""Whole networks built from ODE blocks.

``cifar_resnet`` (He et al. 2015/2016 CIFAR ResNets, depth 6n+2 / 9n+2), ``chen_odenet``
and ``chen_resnet`` (Chen et al. 2018's MNIST ODE-Net and its ResNet twin) and
``mlp_resnet`` (vector data). ``MODELS`` maps each family's name to its builder.
"""

from odenet.models.chen import chen_odenet, chen_resnet
from odenet.models.cifar import BLOCKS, cifar_resnet, valid_depths
from odenet.models.common import ResidualNetwork, Transition, ZeroPadShortcut
from odenet.models.mlp import mlp_resnet

MODELS = {
    "cifar_resnet": cifar_resnet,
    "chen_odenet": chen_odenet,
    "chen_resnet": chen_resnet,
    "mlp_resnet": mlp_resnet,
}

__all__ = [
    "BLOCKS",
    "MODELS",
    "ResidualNetwork",
    "Transition",
    "ZeroPadShortcut",
    "chen_odenet",
    "chen_resnet",
    "cifar_resnet",
    "mlp_resnet",
    "valid_depths",
]
