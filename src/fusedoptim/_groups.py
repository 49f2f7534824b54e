"""The param-group surface that every optimizer class shares with ``torch.optim.Optimizer``,
written once: ``add_param_group``'s check, the check of a new group's keys, ``zero_grad`` for
grads the caller owns, and torch's ``repr``. The spec-built :class:`fusedoptim.Optimizer` and
the classes with their own step (Adafactor, SparseAdam) derive from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._exclusive import exclusive


class ParamGroups:
    """Base of the optimizer classes: they have ``defaults`` and ``param_groups`` and add a
    checked group in ``_add_group``."""

    defaults: dict[str, Any]
    param_groups: list[dict[str, Any]]

    @exclusive
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, as in torch. Its unset hyperparameters take the defaults."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(f"param_group must be a dict with a 'params' entry, got "
                            f"{type(param_group).__name__}")
        self._add_group(param_group)

    def _add_group(self, group_in: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _check_group_keys(self, group_in: Mapping[str, Any]) -> None:
        """Refuse a group with keys that are not hyperparameters of this optimizer
        (``initial_lr`` is a scheduler's, accepted as torch accepts it)."""
        unknown = set(group_in) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} in a param group; "
                             f"accepted: {sorted(self.defaults)}")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Grads are owned by the caller: nothing to do (kept for torch compatibility)."""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)
