"""Type aliases for fusedoptim's annotations.

The modules import these under ``typing.TYPE_CHECKING`` only, so the package never imports
this module itself; it is importable at run time for users who want the same names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypedDict

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import NotRequired   # (typing has it from Python 3.11)
from numpy.typing import NDArray

from .flat import FlatParams

#: A float32 or float64 array: a param, a grad or a state buffer (the kernels take no other
#: dtype, checked at run time).
FloatArray: TypeAlias = NDArray[np.floating[Any]]

#: One param's optimizer state: its state buffers (ndarrays) by slot name, its "step" (an
#: int) and any per-tensor scalar state (floats), as in torch's ``optimizer.state[i]``.
ParamState: TypeAlias = dict[str, Any]

#: A param group as torch has it: ``"params"`` plus hyperparameter values by name. (Given to
#: an optimizer, ``"params"`` may be a list or dict of arrays or a FlatParams, and the
#: hyperparameters are overrides of the defaults.)
ParamGroup: TypeAlias = dict[str, Any]


#: The arrays a gradient utility takes: a list or tuple (None entries are skipped), a dict
#: whose values are used, or one array. (Inside list and dict, which are invariant, the
#: arrays are NDArray[Any]: a list of float64 arrays is no list of floating arrays to a type
#: checker. The dtype is checked at run time.)
ArraysArg: TypeAlias = (FloatArray | list[NDArray[Any]] | list[NDArray[Any] | None]
                        | tuple[FloatArray | None, ...] | dict[str, NDArray[Any]]
                        | dict[str, NDArray[Any] | None])

#: The functional API's per-param lists: one array, or None for a param that does not step
#: (a state buffer may also be None where the call creates it, or does not use it).
BufferList: TypeAlias = Sequence[FloatArray | None]

#: The functional API's step counts: a list of ints or an integer array, one per param,
#: incremented in place for each param that has a grad.
StepList: TypeAlias = list[int] | NDArray[np.integer[Any]]

#: What an optimizer is built from: a list of arrays, a dict name -> array, a FlatParams, one
#: param-group dict, or a list of param-group dicts.
ParamsArg: TypeAlias = (FlatParams | dict[str, Any] | MappingProxyType[str, Any]
                        | Iterable[FloatArray | ParamGroup])

#: The grads of one step: a list with one array (or None) per param in order, a dict keyed
#: by param name, the one array of a one-param optimizer, or None (a FlatParams' grads).
GradsArg: TypeAlias = (Sequence[FloatArray | None] | Mapping[str, FloatArray | None]
                       | FloatArray | None)

#: The hyperparameter tuple an optimizer class validates its group values into (its
#: check_* function's result); each class narrows it to its own tuple type.
Hyper: TypeAlias = tuple[Any, ...]


class ArrayViews(Protocol):
    """``FlatParams.params`` and ``.grads``: the fixed views into the arena, by name (a
    read-only mapping, for an arena built from a dict) or by position (a tuple, from a list).
    The type covers both, so ``arena.params["W"]`` and ``arena.params[0]`` check."""

    def __getitem__(self, key: Any, /) -> FloatArray: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...


class OptimizerStateDict(TypedDict):
    """``Optimizer.state_dict()``: per-param state keyed by flat param index, and the
    param groups with ``"params"`` as those indices (plus ``"param_names"`` when named);
    ``"seed"`` under stochastic rounding."""

    state: dict[int, ParamState]
    param_groups: list[dict[str, Any]]
    seed: NotRequired[int]


class SupportsParamGroups(Protocol):
    """What an lr scheduler drives: any optimizer with torch's ``param_groups``, a list of
    dicts each with an ``"lr"`` (fusedoptim's, torch's, your own)."""

    param_groups: list[dict[str, Any]]


class BuildConfig(TypedDict):
    """``fusedoptim._config.build_config()``: how the kernels were compiled."""

    version: str
    compiler: str
    compile_flags: list[str]
    openmp: bool
    isa: str
    isa_levels: list[str]
    isa_runnable: list[str]
    num_threads: int
    chunk_elements: int
    kernels: list[str]
