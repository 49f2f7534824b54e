# cython: language_level=3
"""fusedoptim's chunk and reduce kernels, compiled once per ISA level.

Importing the module registers every kernel with the one parallel driver (fusedoptim._driver,
compiled once: cython_kernels/fusedoptim/). Each optimizer family is one <family>.pxi.tp (its
body, scalars and modes; kernelgen.py generates the glue and the include list below). A new
optimizer adds a kernel, not a loop.
"""

include "register.pxi"
include "elementwise.pxi"
# Every cython_kernels/<family>.pxi.tp, expanded (kernelgen.py writes the list).
include "families.pxi"
