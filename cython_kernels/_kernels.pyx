# cython: language_level=3
"""fusedoptim's compiled hot path: the shared parallel driver and every chunk kernel.

One extension module: the driver (driver.pxi) is compiled once, and each optimizer family adds
a .pxi with its chunk kernels and a _register() call. A new optimizer adds a kernel, not a loop.
"""

include "driver.pxi"
include "roofline.pxi"
include "elementwise.pxi"
include "adam.pxi"
include "adamax.pxi"
include "nadam.pxi"
include "radam.pxi"
include "lion.pxi"
include "rprop.pxi"
include "asgd.pxi"
include "sgd.pxi"
include "adagrad.pxi"
include "rmsprop.pxi"
include "adadelta.pxi"
include "probe.pxi"
include "gradutils.pxi"
include "lamb.pxi"
include "lars.pxi"
