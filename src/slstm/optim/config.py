"""Configuration of a learned optimizer, stored with every checkpoint."""

import dataclasses
import json
from dataclasses import dataclass

from slstm.optim.features import FEATURE_INPUTS
from slstm.optim.features import num_features as count_features

# Diagonal-Hessian estimators of slstm.curvature that can feed the "hessian" input.
CURVATURE_METHODS = ("becker-lecun", "gauss-newton", "hutchinson", "exact")

# Parameter kinds that get their own update network: convolution weights and
# biases ("conv") and fully connected weights and biases ("fc").
PARAMETER_KINDS = ("conv", "fc")


@dataclass(frozen=True)
class LearnedOptimizerConfig:
    """Architecture and inputs of the learned LSTM/SLSTM optimizers.

    Attributes:
        inputs: per-coordinate inputs, in feature-column order: ``("grad",)`` for
            the LSTM optimizer, ``("grad", "hessian")`` for SLSTM.
        preprocess_p: exponent ``p`` of the log-magnitude preprocessing; inputs
            with ``|x| < e^-p`` are fed linearly.
        hidden_size: LSTM units per layer.
        num_layers: stacked LSTM layers.
        output_scale: factor on the read-out, in parameter units per step.
        curvature_method: estimator of the diagonal Hessian that meta-training and
            training use for the ``"hessian"`` input (a ``slstm.curvature`` method).
        kinds: parameter kinds, one update network each.
    """

    inputs: tuple[str, ...] = ("grad",)
    preprocess_p: float = 10.0
    hidden_size: int = 20
    num_layers: int = 2
    output_scale: float = 0.1
    curvature_method: str = "becker-lecun"
    kinds: tuple[str, ...] = PARAMETER_KINDS

    def __post_init__(self):
        # Accept lists (as read back from JSON) but store tuples, so configs hash
        # and compare by value.
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if not self.inputs or len(set(self.inputs)) != len(self.inputs):
            raise ValueError(
                f"inputs must be a non-empty list without repeats, got {self.inputs}"
            )
        for name in self.inputs:
            if name not in FEATURE_INPUTS:
                raise ValueError(
                    f"unknown input {name!r}; expected a subset of {FEATURE_INPUTS}"
                )
        if not (isinstance(self.preprocess_p, int | float) and self.preprocess_p > 0):
            raise ValueError(
                f"preprocess_p must be a positive number, got {self.preprocess_p!r}"
            )
        for name in ("hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.output_scale, int | float) and self.output_scale > 0):
            raise ValueError(
                f"output_scale must be a positive number, got {self.output_scale!r}"
            )
        if self.curvature_method not in CURVATURE_METHODS:
            raise ValueError(
                f"unknown curvature_method {self.curvature_method!r}; expected one "
                f"of {CURVATURE_METHODS}"
            )
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(
                f"kinds must be a non-empty list without repeats, got {self.kinds}"
            )
        for kind in self.kinds:
            if kind not in PARAMETER_KINDS:
                raise ValueError(
                    f"unknown parameter kind {kind!r}; expected a subset of "
                    f"{PARAMETER_KINDS}"
                )

    @property
    def needs_curvature(self) -> bool:
        """Whether each step reads ``p.hessian_diag``."""
        return "hessian" in self.inputs

    @property
    def num_features(self) -> int:
        """Input size of the update networks: two features per input."""
        return count_features(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> "LearnedOptimizerConfig":
        """Return the configuration named ``"lstm"`` or ``"slstm"``, with overrides."""
        if name not in PRESETS:
            raise ValueError(
                f"unknown learned optimizer preset {name!r}; expected one of "
                f"{tuple(PRESETS)}"
            )
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        """Return a JSON-compatible dict (tuples become lists)."""
        values = dataclasses.asdict(self)
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in values.items()
        }

    @classmethod
    def from_dict(cls, values: dict) -> "LearnedOptimizerConfig":
        """Build a configuration from ``to_dict()`` output; unknown keys raise."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown learned optimizer configuration keys {unknown}; "
                f"expected a subset of {sorted(known)}"
            )
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LearnedOptimizerConfig":
        return cls.from_dict(json.loads(text))


PRESETS = {
    # Andrychowicz et al. (2016): the gradient alone.
    "lstm": LearnedOptimizerConfig(inputs=("grad",)),
    # The gradient and the diagonal second derivative.
    "slstm": LearnedOptimizerConfig(inputs=("grad", "hessian")),
}
