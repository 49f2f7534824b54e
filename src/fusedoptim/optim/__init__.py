"""Optimizer classes with torch.optim's names, arguments and defaults."""

from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .asgd import ASGD
from .lamb import LAMB
from .lars import LARS
from .lion import Lion
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD

__all__ = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Lion", "Rprop", "ASGD", "SGD", "Adagrad",
           "RMSprop", "Adadelta", "LAMB", "LARS"]
