"""The model zoo's names: the one list `model.name` is validated against and `sources` builds from.

Kept free of torch so the config can check a name without importing the nets.
"""

from __future__ import annotations

# the paper's LeNets: gated Sequentials (vib_deploy/zoo/lenet.py), pruned by prune.sequential
SEQUENTIAL_ZOO = ("lenet300", "lenet5")
# zoo nets that are plain modules (gates found by the dependency graph), by factory reference
MODULE_ZOO = {
    "resnet20": "vib_deploy.zoo.resnet:resnet20",
    "resnet56": "vib_deploy.zoo.resnet:resnet56",
    "mobilenet": "vib_deploy.zoo.mobilenet:mobilenet_small",
    "vgg16": "vib_deploy.zoo.vgg:vgg16",
}
ZOO_NAMES = (*SEQUENTIAL_ZOO, *MODULE_ZOO)
