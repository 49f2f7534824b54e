cimport numpy as cnp

# Raise unless obj can stand beside param in a kernel: ndarray, same dtype and shape,
# C-contiguous, aligned, writeable when the kernel writes it, not overlapping param.
cdef int check_like(object obj, cnp.ndarray param, str label, bint writeable) except -1
# The same without the dtype check (the caller checked the dtype).
cdef int check_shaped_like(object obj, cnp.ndarray param, str label, bint writeable) except -1
