"""One call at a time per optimizer: a concurrent step is refused, not interleaved.

A fused step writes params and state in place from C with the GIL released. Two Python
threads stepping the *same* optimizer at once would run two kernels over the same buffers at
the same time and bind their grads into the same pointer tables: the params then match neither
serial order, silently (issue 16 measured 399,970 of 400,000 elements differing). Every
public entry that writes an optimizer's params or state (``step``, ``load_state_dict``,
``add_param_group``, ``AveragedParams.update_parameters``) therefore first marks the object
busy (see How, below). A second caller gets a RuntimeError naming the class and saying it is
being stepped concurrently, before it reads or writes anything; the first call runs to the end
untouched.

Why an error and not serialisation: two threads stepping one optimizer is a bug in the calling
code in either case (which of the two steps comes first, and so the result, would depend on
timing), so it is reported rather than hidden. Callers who mean to share one optimizer between
threads hold their own lock around ``step()``.

Different optimizers (over different params) never share mutable state in fusedoptim: each
has its own plans, state buffers and scratch, and the driver's parallel regions are
independent, so they may be stepped from different threads at the same moment, with results
bitwise equal to stepping them one after the other. The functional entries
(:mod:`fusedoptim.functional`) and the gradient utilities build their tables per call and keep
nothing between calls; concurrent calls on disjoint arrays are safe, and calls writing the
same arrays race exactly as two NumPy in-place operations would.

A grad array mutated by another thread while a step reads it is the caller's race: the step
reads some mix of old and new values (the result is then undefined, as for any NumPy read of
an array being written), but the step cannot crash, because it only reads the grad's memory,
whose address and size were checked and pinned (the step holds a reference to the array) for
the duration of the call.

How: the object's ``__dict__`` gets a key ``_fo_busy`` for the duration of the call, set with
``dict.setdefault`` to a token made for the call. ``setdefault`` is one atomic step (under the
GIL, and in free-threaded CPython), so exactly one caller finds its own token there; any other
finds someone else's and is refused. It costs a ``setdefault`` and a ``del`` per call, about
0.1 us (a ``threading.Lock`` pair cost 0.3 us on the same machine, a 1-element step ~9 us).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

__all__ = ["ConcurrentStepError", "BUSY", "exclusive", "concurrent_error", "held"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S")

#: the ``__dict__`` key present while a guarded call runs on the object
BUSY = "_fo_busy"


class ConcurrentStepError(RuntimeError):
    """Raised by a call on an optimizer while another call on it is still running."""


def concurrent_error(obj: object, method: str) -> ConcurrentStepError:
    name = type(obj).__name__
    return ConcurrentStepError(
        f"{name}.{method}() was called while another call on the same {name} (id "
        f"{id(obj):#x}) is still running: it is being stepped concurrently from another "
        f"thread (or re-entered from inside its own step, e.g. from a closure). fusedoptim "
        f"writes params and state in place with the GIL released, so two concurrent steps "
        f"would corrupt them; nothing was read or written by this call. Step one optimizer "
        f"from one thread at a time (hold a threading.Lock around step() if threads share "
        f"it), or give each thread its own optimizer over its own params.")


def exclusive(method: Callable[Concatenate[_S, _P], _R]) -> Callable[Concatenate[_S, _P], _R]:
    """Decorate a method that writes the object's params or state: a second call on the
    same object while one is running raises :class:`ConcurrentStepError` before doing
    anything."""
    name = method.__name__

    @functools.wraps(method)
    def guarded(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        d: dict[str, Any] = self.__dict__
        token: list[Any] = []
        if d.setdefault(BUSY, token) is not token:
            raise concurrent_error(self, name)
        try:
            return method(self, *args, **kwargs)
        finally:
            del d[BUSY]

    return guarded


@contextlib.contextmanager
def held(obj: object) -> Iterator[None]:
    """Mark `obj` busy, as a call running in another thread does (for tests)."""
    d: dict[str, Any] = obj.__dict__
    token: list[Any] = []
    if d.setdefault(BUSY, token) is not token:
        raise concurrent_error(obj, "held")
    try:
        yield
    finally:
        del d[BUSY]
