"""Whole networks built from ODE blocks.

``cifar_resnet`` (He et al. 2015/2016 CIFAR ResNets, depth 6n+2 / 9n+2), ``wide_resnet``
(Zagoruyko & Komodakis 2016's WRN-d-k), ``chen_odenet`` and ``chen_resnet`` (Chen et al.
2018's MNIST ODE-Net and its ResNet twin) and ``mlp_resnet`` (vector data). ``MODELS``
maps each family's name to its builder. ``imagenet_resnet`` is He et al. (2015)'s ImageNet
ResNet-18/34/50/101/152, torchvision's networks, whose weights ``load_torchvision_state_dict``
loads.
"""

from odenet.models.chen import chen_odenet, chen_resnet
from odenet.models.cifar import BLOCKS, cifar_resnet, valid_depths, wide_resnet
from odenet.models.common import ResidualNetwork, Transition, ZeroPadShortcut
from odenet.models.imagenet import imagenet_resnet, load_torchvision_state_dict, torchvision_state_dict
from odenet.models.mlp import mlp_resnet

MODELS = {
    "cifar_resnet": cifar_resnet,
    "chen_odenet": chen_odenet,
    "chen_resnet": chen_resnet,
    "imagenet_resnet": imagenet_resnet,
    "mlp_resnet": mlp_resnet,
    "wide_resnet": wide_resnet,
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
    "imagenet_resnet",
    "load_torchvision_state_dict",
    "mlp_resnet",
    "torchvision_state_dict",
    "valid_depths",
    "wide_resnet",
]
