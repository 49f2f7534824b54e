"""fusedoptim: fast, fused, in-place optimizer steps for NumPy.

Every step is one GIL-free Cython/OpenMP pass over contiguous float32/float64 buffers, behind
an API shaped like torch.optim. See README.md.
"""

__version__ = "0.1.0"

try:
    from . import _kernels
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only in an unbuilt source tree
    # Only a missing compiled module of ours means "not built". Any other ImportError
    # (numpy missing, FUSEDOPTIM_ISA naming a level this CPU cannot run) says what is wrong
    # itself and propagates unchanged.
    if not (exc.name or "").startswith("fusedoptim."):
        raise
    raise ImportError(
        "fusedoptim's compiled kernels (fusedoptim._kernels) are not built. Install the "
        "package with `pip install .` (or build in place with `python setup.py build_ext "
        "--inplace`) from the repository root, and do not import it from the source tree "
        f"without building. Original error: {exc}"
    ) from None

from ._config import get_num_threads, set_num_threads, show_config
from . import functional, lr_scheduler, optim, reference, schedules
from .optim import *  # noqa: F401,F403  every optimizer class (fusedoptim.optim finds them)
from .flat import FlatParams
from .optimizer import Optimizer
from .grad_utils import all_finite, clip_grad_norm_, clip_grad_value_, global_norm
from .wrappers import Lookahead, MultiSteps
from .checkpoint import CheckpointError, load, save
from ._exclusive import ConcurrentStepError

__all__ = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Lion", "Rprop", "ASGD", "SGD", "Adagrad",
           "RMSprop", "Adadelta", "LAMB", "LARS", "LBFGS", "Optimizer", "FlatParams", "functional",
           "lr_scheduler", "reference", "schedules", "get_num_threads", "set_num_threads",
           "show_config", "__version__", "clip_grad_norm_", "clip_grad_value_", "global_norm",
           "all_finite", "Lookahead", "MultiSteps", "save", "load", "CheckpointError",
           "ConcurrentStepError"]
# Optimizers that fusedoptim.optim found beyond the ones named above (see its docstring).
__all__ += [_name for _name in optim.__all__ if _name not in __all__]
