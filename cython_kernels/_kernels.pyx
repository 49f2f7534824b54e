# cython: language_level=3
"""fusedoptim's chunk and reduce kernels, compiled once per ISA level.

Importing the module registers every kernel with the one parallel driver (fusedoptim._driver,
compiled once: cython_kernels/fusedoptim/). Each optimizer family adds a .pxi with its kernels
and a _register() call. A new optimizer adds a kernel, not a loop.
"""

include "register.pxi"
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
