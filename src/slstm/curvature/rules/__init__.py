"""One backward rule per supported module type, looked up by exact type."""

from torch import nn

from slstm.curvature.rules.activations import (
    ELURule,
    GELURule,
    LeakyReLURule,
    ReLURule,
    SigmoidRule,
    SiLURule,
    SoftplusRule,
    TanhRule,
)
from slstm.curvature.rules.base import BackwardContext, ModuleRule
from slstm.curvature.rules.batchnorm import BatchNorm2dRule
from slstm.curvature.rules.conv import Conv2dRule
from slstm.curvature.rules.linear import LinearRule
from slstm.curvature.rules.pooling import (
    AdaptiveAvgPool2dRule,
    AvgPool2dRule,
    MaxPool2dRule,
)
from slstm.curvature.rules.reshape import DropoutRule, IdentityRule, ReshapeRule

#: Module type -> rule class. Subclasses are not matched: they may override forward.
RULES: dict[type[nn.Module], type[ModuleRule]] = {
    nn.Linear: LinearRule,
    nn.Conv2d: Conv2dRule,
    nn.ReLU: ReLURule,
    nn.LeakyReLU: LeakyReLURule,
    nn.Sigmoid: SigmoidRule,
    nn.Tanh: TanhRule,
    nn.ELU: ELURule,
    nn.GELU: GELURule,
    nn.SiLU: SiLURule,
    nn.Softplus: SoftplusRule,
    nn.MaxPool2d: MaxPool2dRule,
    nn.AvgPool2d: AvgPool2dRule,
    nn.AdaptiveAvgPool2d: AdaptiveAvgPool2dRule,
    nn.Flatten: ReshapeRule,
    nn.Unflatten: ReshapeRule,
    nn.Dropout: DropoutRule,
    nn.Identity: IdentityRule,
    nn.BatchNorm2d: BatchNorm2dRule,
}

__all__ = ["RULES", "BackwardContext", "ModuleRule"]
