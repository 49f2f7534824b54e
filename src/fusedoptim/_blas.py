"""BLAS threads for the steps that call BLAS through NumPy (Muon's Newton-Schulz iteration).

fusedoptim's element-wise passes run on its own OpenMP threads (:func:`fusedoptim.set_num_threads`);
matrix products run in the BLAS NumPy was built with (OpenBLAS in the NumPy wheels, MKL or
Accelerate elsewhere), which keeps a thread pool of its own. The two never compute at the same
time: a step calls BLAS between its fused passes while the OpenMP threads wait. But OpenBLAS's
idle workers spin for a while after each multi-threaded call (up to 2^28 cycles unless
OPENBLAS_THREAD_TIMEOUT, read when NumPy loads OpenBLAS, says less), and on a small machine they
take the cores that whatever runs next needs: measured on the 2-core AMD EPYC family 25 model 17 (AVX-512), 20 torch matmuls of 512 x
512 took 55 ms after a 2-thread BLAS step and 32 ms without the spinning. So Muon runs its many
small products on worker threads of its own, each with BLAS at one thread, and calls BLAS on
several threads only for a matrix too large to share out (fusedoptim.optim.muon.orthogonalize).
:class:`blas_threads` sets the BLAS pool to a given size for the duration of a block, and puts
the previous size back afterwards, through threadpoolctl (a core dependency: it is pure
Python). Setting and restoring costs about a microsecond per library per step.

The libraries are found once, on first use (a scan of the loaded shared libraries, a few
milliseconds). The setting is process-wide, as BLAS's own: a thread that calls NumPy's BLAS
while a Muon step runs in another sees the step's thread count.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

_LIBS: list[Any] | None = None


def blas_libraries() -> list[Any]:
    """threadpoolctl's controllers of the BLAS libraries loaded in this process (NumPy's
    among them), found on first use."""
    global _LIBS
    if _LIBS is None:
        from threadpoolctl import ThreadpoolController
        _LIBS = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _LIBS


class blas_threads:
    """``with blas_threads(n):`` runs the block with every BLAS library at n threads."""

    __slots__ = ("n", "_saved")

    def __init__(self, n: int) -> None:
        self.n = n
        self._saved: list[tuple[Any, int]] = []

    def __enter__(self) -> blas_threads:
        saved = self._saved = []
        for lib in blas_libraries():
            current = lib.num_threads
            if current != self.n:
                saved.append((lib, current))
                lib.set_num_threads(self.n)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for lib, n in self._saved:
            lib.set_num_threads(n)
        self._saved = []
