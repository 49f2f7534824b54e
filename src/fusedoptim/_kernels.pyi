"""Types of fusedoptim._kernels: the loader's own names plus every name it copies from the
compiled module fusedoptim._kernels_<isa> (cython_kernels/_kernels.pyx and its .pxi files).

Keep in step with the def/cdef-class signatures in cython_kernels/fusedoptim/_driver.pyx and
the registries the family templates (cython_kernels/*.pxi.tp) fill. Cython's ``list``
arguments also accept None; None is declared below only where the Python layer passes it. ``bint`` arguments take any truth
value; they are declared bool.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, final

import numpy as np
from numpy.typing import NDArray
from typing_extensions import Unpack

_T = TypeVar("_T")

# float32 or float64: the only dtypes the kernels accept (checked at run time).
_FloatArray = NDArray[np.floating[Any]]
# Plan's state: per tensor, its state buffers in column order (None: not created), or None
# for a tensor with no state yet. (A union of list types, as list is invariant: a table
# where every tensor has state, or none has, is a list[list[...]] or a list[None].) A column
# may hold float state, quantized codes, absmaxes, step keys or rank-1 descriptors.
_StateTable = (list[list[NDArray[Any] | None] | None] | list[list[NDArray[Any] | None]]
               | list[None])

# -- the loader (src/fusedoptim/_kernels.py) ----------------------------------------------------

#: the instruction-set level of the loaded module ("baseline", "avx2", "avx512", "native")
ISA: str
#: the loaded module's name, "fusedoptim._kernels_<ISA>"
MODULE: str
#: the levels the loader knows, best first
LEVELS: tuple[str, ...]
#: level -> the CPU features (NumPy's names) its compiler flags let the compiler use
REQUIRES: dict[str, tuple[str, ...]]

class UnsupportedISAError(ImportError): ...

def cpu_features() -> dict[str, bool]: ...
def built_levels() -> list[str]: ...
def missing_features(level: str, features: Mapping[str, bool] | None = None) -> list[str]: ...
def supported_levels(features: Mapping[str, bool] | None = None,
                     built: Sequence[str] | None = None) -> list[str]: ...
def select_level(forced: str, features: Mapping[str, bool] | None = None,
                 built: Sequence[str] | None = None) -> str: ...

# -- registries (driver.pxi) --------------------------------------------------------------------

#: elements per work unit (driver.pxi's CHUNK)
CHUNK_ELEMENTS: int
DEF_CHUNK: int
#: the quantization block: a tensor cut into units is cut at multiples of it
BLOCK_ELEMENTS: int
DEF_BLOCK: int
#: storage names by storage number: the registry's key space ("float32", "float64",
#: "bfloat16", "float16", "bfloat16+master", "float16+master")
STORAGE_NAMES: tuple[str, ...]
#: a kernel's own buffer columns are at most MAX_BUFFERS; the master param is column MASTER_COL
MAX_BUFFERS: int
MASTER_COL: int

ABSMAX_COL: int
#: a stochastic-rounding plan's column of per-tensor step keys
SR_COL: int
#: int64 words of a rank-1 descriptor (cython_kernels/rank1.h)
R1_WORDS: int
#: kernel name -> its scan kernel, for kernels that write rank-1 normalized int4 state
RANK1_SCANS: dict[str, str]
#: kernel name -> its buffer roles as declared ("param", "grad", "state", "state+", "-")
KERNEL_ROLES: dict[str, tuple[str, ...]]

def set_qmaps(signed8: NDArray[np.float32], unsigned8: NDArray[np.float32],
              signed4: NDArray[np.float32], unsigned4: NDArray[np.float32]) -> None:
    """Load the four quantization maps into the kernels (fusedoptim.quant.dynamic_map)."""
def qmaps_loaded() -> bool: ...
def register_bfloat16(typenum: int) -> None:
    """Tell the driver (and the checks) ml_dtypes.bfloat16's type number in this process."""
def storage_of(dtype: Any) -> int:
    """The storage number of arrays of `dtype`."""

def registered_variants(name: str) -> list[tuple[str, str, str]]:
    """The (param, grad, state) storages a kernel is registered for."""

#: chunk kernel name -> id for Plan.run
KERNEL_IDS: dict[str, int]
#: reduce kernel name -> id for Plan.reduce and Plan.arm_gate
REDUCE_IDS: dict[str, int]
#: kernel name (chunk or reduce) -> names of its per-tensor scalars, in hp column order
SCALARS: dict[str, tuple[str, ...]]
#: reduce kernel name -> ((output name, how partial results combine), ...)
REDUCE_OUTPUTS: dict[str, tuple[tuple[str, Literal["sum", "max"]], ...]]
#: tile kernel name -> id for Plan.reduce_tiles (per-row and per-column reductions)
TILE_IDS: dict[str, int]
#: tile kernel name -> ((output name, "sum"), ...)
TILE_OUTPUTS: dict[str, tuple[tuple[str, Literal["sum"]], ...]]
#: about how many elements one tile of Plan.reduce_tiles holds
TILE_ELEMENTS: int
#: kernel name -> the modes its body implements (the hp "mode" column); Plan.run/reduce refuse
#: any other value on an active tensor. Kernels that do not branch on a mode are absent.
MODES: dict[str, tuple[int, ...]]

# Each family's scalar names (the tuples registered in SCALARS).
ADADELTA_SCALARS: tuple[str, ...]
ADAGRAD_SCALARS: tuple[str, ...]
ADAM_SCALARS: tuple[str, ...]
ADAMAX_SCALARS: tuple[str, ...]
ASGD_SCALARS: tuple[str, ...]
LAMB_SCALARS: tuple[str, ...]
LARS_SCALARS: tuple[str, ...]
LION_SCALARS: tuple[str, ...]
MADGRAD_SCALARS: tuple[str, ...]
NADAM_SCALARS: tuple[str, ...]
RADAM_SCALARS: tuple[str, ...]
RMSPROP_SCALARS: tuple[str, ...]
RPROP_SCALARS: tuple[str, ...]
SGD_SCALARS: tuple[str, ...]
# The gradient utilities' scalars (sumpow's p, scale's coef, clamp's lo and hi).
SUMPOW_SCALARS: tuple[str, ...]
SCALE_SCALARS: tuple[str, ...]
CLAMP_SCALARS: tuple[str, ...]
# The wrappers' passes (fusedoptim.wrappers): Lookahead's alpha, MultiSteps' mode.
LOOKAHEAD_SCALARS: tuple[str, ...]
ACCUMULATE_SCALARS: tuple[str, ...]

# -- threads ------------------------------------------------------------------------------------

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def openmp_enabled() -> bool: ...

# -- buffer checks ------------------------------------------------------------------------------

def check_buffer(obj: _T, param: _FloatArray, label: str, writeable: bool = True) -> _T:
    """Raises unless obj can stand beside param in a kernel; returns obj."""

def check_param(obj: _T, label: str) -> _T:
    """Raises unless obj is a float32/float64 C-contiguous aligned writeable ndarray."""

# `arrays` holds the caller's objects (None entries skipped), validated here.
def check_arrays(arrays: list[Any], name: str, keys: list[Any] | None = None,
                 writeable: bool = True) -> tuple[list[_FloatArray], int]: ...
def find_overlap(arrays: list[_FloatArray]) -> tuple[int, int] | None: ...
# SparseAdam's row table (2 * nnz int64: head, nxt), or None when an index is out of range.
def sparse_row_table(indices: NDArray[np.int64], nrows: int,
                     out: NDArray[np.int64] | None = None) -> NDArray[np.int64] | None: ...

# -- buffers laid end to end --------------------------------------------------------------------

# `arrays` may hold anything: a non-array (or None) makes the result None.
def tile_view(arrays: list[Any], like: list[_FloatArray] | None = None) -> _FloatArray | None: ...
def same_items(live: object, pinned: tuple[object, ...]) -> bool: ...
def views_at(templates: list[Any], addresses: list[int], typenums: list[Any],
             owners: list[Any]) -> list[Any]: ...
def flat_views_at(sizes: list[int], addresses: list[int], typenums: list[Any],
                  owners: list[Any]) -> list[Any]: ...

# -- the plan -----------------------------------------------------------------------------------

@final
class Plan:
    """Pointer, scalar and work-unit tables for one group of tensors of one dtype."""

    @property
    def params(self) -> list[_FloatArray]: ...
    @property
    def labels(self) -> list[str] | None: ...
    @property
    def ntensors(self) -> int: ...
    @property
    def nbufs(self) -> int: ...
    @property
    def nscalars(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def nunits(self) -> int: ...
    @property
    def typenum(self) -> int: ...
    @property
    def hp_array(self) -> NDArray[np.float64]:
        """(ntensors, max(nscalars, 1)): each tensor's kernel scalars."""
    @property
    def steps_array(self) -> NDArray[np.int64]:
        """(ntensors,): each tensor's step count."""
    @property
    def active_array(self) -> NDArray[np.uint8]:
        """(ntensors,): 1 for the tensors bound with a grad."""
    @property
    def missing_state(self) -> int: ...
    @property
    def nsstate(self) -> int: ...
    @property
    def nactive(self) -> int: ...
    @property
    def sstate_array(self) -> NDArray[np.float64]:
        """(ntensors, max(nsstate, 1)): each tensor's scalar state."""

    def __init__(self, params: list[_FloatArray], state: _StateTable, nstate: int, nscalars: int,
                 labels: list[str] | None,
                 steps: Sequence[int] | NDArray[np.integer[Any]] | None = None,
                 scalar_state: Sequence[Sequence[float]] | None = None,
                 required: Iterable[int] | None = None,
                 storages: tuple[int, int] | None = None,
                 grad_dtypes: Sequence[np.dtype[Any]] | None = None) -> None: ...
    @property
    def grad_dtype(self) -> np.dtype[Any] | None:
        """The dtype of the grads bound last (None before the first bind)."""
    def _index_written(self, state: _StateTable, nstate: int) -> None: ...
    def bind(self, grads: list[_FloatArray | None]) -> int: ...
    def alias_grads(self) -> None: ...
    def activate_ready(self) -> int:
        """Make active the tensors that have their state, with no grad bound."""
    def rebase(self, params: list[_FloatArray]) -> None:
        """Point column 0 at new arrays of the same dtype and sizes (a gather kernel's
        per-step input)."""
    @property
    def storages(self) -> tuple[str, str, str]:
        """The (param, grad, state) storage names of the kernels this plan runs."""
    def advance(self) -> int: ...
    def undo_advance(self) -> None: ...
    def arm_gate(self, reduce_id: int) -> None: ...
    def disarm_gate(self) -> Literal["tripped", "passed", "unused"]: ...
    def distinct_active_steps(self) -> list[int]: ...
    def set_scalars(self, row: tuple[float, ...], step: int = -1, tensor: int = -1) -> None: ...
    def group_active(self) -> list[tuple[int, Unpack[tuple[float, ...]]]]:
        """The distinct keys (step, s_0, s_1, ...) of the active tensors."""
    def set_group(self, k: int, row: tuple[float, ...],
                  new_state: tuple[float, ...] = ()) -> None: ...
    def segments(self) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp],
                                NDArray[np.intp]]: ...
    def column(self, b: int) -> list[Any]: ...
    def unit_sizes(self) -> NDArray[np.intp]: ...
    def run(self, kernel_id: int, num_threads: int = 0) -> None: ...
    def reduce(self, reduce_id: int, column: int = 0, stop_early: bool = False,
               num_threads: int = 0) -> tuple[NDArray[np.float64], tuple[float, ...]]: ...
    def partials(self) -> NDArray[np.float64]:
        """The last reduce()'s per-segment partials (segments x outputs), a copy."""
    def tile_shape(self) -> tuple[int, int]:
        """The lengths of reduce_tiles' row and column results."""
    def reduce_tiles(self, tile_id: int, rows: NDArray[np.float64], cols: NDArray[np.float64],
                     num_threads: int = 0) -> tuple[NDArray[np.float64], tuple[float, ...]]: ...
