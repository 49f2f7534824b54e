"""Optimizer classes with torch.optim's names, arguments and defaults.

Each module here holds one optimizer family: its spec(s) (:class:`fusedoptim._spec.OptSpec`),
its scalars function and its class(es). Every module of this package is imported, and every
class bound to a spec is exported from here and from :mod:`fusedoptim`: a new module needs no
edit here. The imports below name the classes for static type checkers and the docs, which
cannot see what is found at run time.
"""

from .adabelief import AdaBelief as AdaBelief
from .adadelta import Adadelta as Adadelta
from .adafactor import Adafactor as Adafactor
from .adagrad import Adagrad as Adagrad
from .adam import Adam as Adam, AdamW as AdamW
from .ademamix import AdEMAMix as AdEMAMix
from .adopt import ADOPT as ADOPT
from .adamax import Adamax as Adamax
from .adan import Adan as Adan
from .asgd import ASGD as ASGD
from .lamb import LAMB as LAMB
from .lars import LARS as LARS
from .lbfgs import LBFGS as LBFGS
from .lion import Lion as Lion
from .madgrad import MADGRAD as MADGRAD
from .muon import Muon as Muon, MuonWithAuxAdam as MuonWithAuxAdam
from .nadam import NAdam as NAdam
from .prodigy import Prodigy as Prodigy
from .radam import RAdam as RAdam
from .rmsprop import RMSprop as RMSprop
from .rprop import Rprop as Rprop
from .schedule_free import ScheduleFreeAdamW as ScheduleFreeAdamW, \
    ScheduleFreeSGD as ScheduleFreeSGD
from .sgd import SGD as SGD
from .signsgd import SignSGD as SignSGD
from .sparse_adam import SparseAdam as SparseAdam, SparseGrad as SparseGrad
from .yogi import Yogi as Yogi
from .._spec import discover as _discover

__all__ = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Lion", "Rprop", "ASGD", "SGD", "Adagrad",
           "RMSprop", "Adadelta", "LAMB", "LARS", "SignSGD", "SparseAdam", "SparseGrad",
           "Adafactor", "LBFGS",
           "Muon", "MuonWithAuxAdam", "ScheduleFreeAdamW", "ScheduleFreeSGD", "AdEMAMix",
           "ADOPT", "MADGRAD", "Yogi", "Prodigy", "Adan", "AdaBelief"]

for _name, _cls in _discover(__name__, __path__).items():
    if _name not in __all__:
        globals()[_name] = _cls
        __all__.append(_name)
del _name, _cls
