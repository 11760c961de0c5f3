"""Checks that a model is a plain chain of supported modules and records it.

The static check walks the module tree: every leaf must have a rule, every
parameter must belong to a leaf, and no module or parameter may be registered
twice. The dynamic check runs during the one forward pass, through temporary
hooks: each leaf must run once, its input must be the very tensor the previous
leaf returned (unmodified), and the model output must be the last leaf's
output. That rejects branches, residual sums and functional operations between
modules (``x.view(...)``, ``x * 2``) without a second forward pass.
"""

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from slstm.curvature.errors import UnsupportedModelError
from slstm.curvature.rules import RULES, ModuleRule


def supported_modules() -> str:
    return ", ".join(sorted({module.__name__ for module in RULES}))


class Chain:
    """The leaf modules of ``model`` with their rules, in execution order once
    :meth:`record` has run."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.rules: list[ModuleRule] = []
        self._paths: dict[int, str] = {}
        self._collect(model, "")
        self._check_parameters()

    def _collect(self, module: nn.Module, path: str) -> None:
        if id(module) in self._paths:
            raise UnsupportedModelError(
                f"module {path!r} ({type(module).__name__}) is the same object as "
                f"module {self._paths[id(module)]!r}; a module used twice is not "
                "supported, so give each use its own instance (or use "
                "method='hutchinson' or 'exact')"
            )
        self._paths[id(module)] = path
        rule_class = RULES.get(type(module))
        if rule_class is not None:
            rule = rule_class(module, path)
            rule.check()
            self.rules.append(rule)
            return
        # Not named_children(): it hides a module registered twice.
        children = [(n, c) for n, c in module._modules.items() if c is not None]
        if not children:
            raise UnsupportedModelError(
                f"module {path or '<model>'!r} ({type(module).__name__}) is not "
                f"supported by the one-pass engine; supported modules: "
                f"{supported_modules()}, in nn.Sequential or other containers "
                "that run them one after another; use method='hutchinson' or "
                "'exact' for other models"
            )
        for name, child in children:
            self._collect(child, f"{path}.{name}" if path else name)

    def _check_parameters(self) -> None:
        owned = {}
        for rule in self.rules:
            for name, param in rule.module.named_parameters(recurse=False):
                owned[id(param)] = f"{rule.path}.{name}" if rule.path else name
        seen = {}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            if id(param) in seen:
                raise UnsupportedModelError(
                    f"parameter {name!r} is the same tensor as {seen[id(param)]!r}; "
                    "shared (tied) parameters are not supported by the one-pass "
                    "engine; use method='hutchinson' or 'exact'"
                )
            seen[id(param)] = name
            if id(param) not in owned:
                raise UnsupportedModelError(
                    f"parameter {name!r} belongs to a container module whose "
                    "forward uses it directly; the one-pass engine supports only "
                    f"parameters of {supported_modules()}; use method='hutchinson' "
                    "or 'exact'"
                )

    @contextmanager
    def record(
        self, inputs: Tensor, generator: torch.Generator | None = None
    ) -> Iterator[None]:
        """Install the forward hooks for one forward pass on ``inputs``, and
        remove them after.

        The chain is checked as the modules run, because the tensors between
        them may be freed as soon as the next module has read them: recording
        keeps only weak references, so no activation outlives its last reader.
        """
        self.order: list[ModuleRule] = []
        self._previous = (weakref.ref(inputs), inputs._version, None)
        self._pending: dict[int, Tensor] = {}
        handles = []
        replaced = []
        try:
            for rule in self.rules:
                if hasattr(rule, "generator"):
                    rule.generator = generator
                # An instance attribute shadows the class's forward; skip modules
                # whose forward was already replaced that way.
                if rule.forward is not None and "forward" not in vars(rule.module):
                    rule.module.forward = rule.forward
                    replaced.append(rule.module)
                handles.append(
                    rule.module.register_forward_pre_hook(self._pre_hook(rule))
                )
                handles.append(rule.module.register_forward_hook(self._hook(rule)))
            yield
        finally:
            for handle in handles:
                handle.remove()
            for module in replaced:
                del module.forward
            self._pending = {}

    def _pre_hook(self, rule: ModuleRule):
        def hook(module: nn.Module, args: tuple) -> None:
            if len(args) != 1 or not isinstance(args[0], Tensor):
                raise UnsupportedModelError(
                    f"{rule.describe()} was called with {len(args)} positional "
                    "arguments; the one-pass engine needs each module called on "
                    "one tensor"
                )
            if any(done is rule for done in self.order):
                raise UnsupportedModelError(
                    f"{rule.describe()} ran twice in one forward pass; a module used "
                    "twice is not supported, so give each use its own instance"
                )
            x = args[0]
            previous, version, previous_rule = self._previous
            if x is not previous() or x._version != version:
                source = (
                    "the model input"
                    if previous_rule is None
                    else f"the output of {previous_rule.describe()}"
                )
                raise UnsupportedModelError(
                    f"the input of {rule.describe()} is not {source}: the model's "
                    "forward does more than run its modules in sequence (a branch, "
                    "a residual sum or a functional operation such as x.view() "
                    "between modules); use modules such as nn.Flatten inside "
                    "nn.Sequential, or method='hutchinson' or 'exact'"
                )
            self._pending[id(module)] = x
            rule.pre_forward(x)

        return hook

    def _hook(self, rule: ModuleRule):
        def hook(module: nn.Module, args: tuple, output) -> Tensor | None:
            if not isinstance(output, Tensor):
                raise UnsupportedModelError(
                    f"{rule.describe()} returned {type(output).__name__}, not a tensor"
                )
            x = self._pending.pop(id(module))
            replacement = rule.post_forward(x, output)
            if replacement is not None:
                output = replacement
            self.order.append(rule)
            self._previous = (weakref.ref(output), output._version, rule)
            return replacement

        return hook

    def verify(self, output: Tensor, requested: set[str]) -> list[ModuleRule]:
        """Check that ``output`` is the last module's output, unchanged, and that
        every module owning a parameter in ``requested`` (full names) ran.

        Returns the rules in execution order.
        """
        previous, version, previous_rule = self._previous
        if output is not previous() or output._version != version:
            last = previous_rule.describe() if previous_rule else "any module"
            raise UnsupportedModelError(
                f"the model output is not the output of {last}: the model's forward "
                "changes the result after its last module; use method='hutchinson' "
                "or 'exact'"
            )
        ran = {id(rule) for rule in self.order}
        for rule in self.rules:
            if id(rule) in ran:
                continue
            for name, _ in rule.module.named_parameters(recurse=False):
                full_name = f"{rule.path}.{name}" if rule.path else name
                if full_name in requested:
                    raise UnsupportedModelError(
                        f"{rule.describe()} owns parameter {full_name!r} but did not "
                        "run in the forward pass"
                    )
        return self.order
