# How a kernel family joins the driver's registry (fusedoptim._driver, compiled once). This
# module is compiled once per ISA level and only one level is imported, so its variants are
# the ones registered. Today every family registers its float32 and float64 kernels, with
# grads and state stored like the params: the registry's first rows.

from fusedoptim._driver cimport (chunk_kernel, reduce_kernel, register_chunk, register_reduce,
                                 ST_F32, ST_F64)


cdef int _register(str name, chunk_kernel f32, chunk_kernel f64, tuple scalars) except -1:
    register_chunk(name, ST_F32, ST_F32, ST_F32, f32, scalars)
    register_chunk(name, ST_F64, ST_F64, ST_F64, f64, scalars)
    return 0


cdef int _register_reduce(str name, reduce_kernel f32, reduce_kernel f64, tuple scalars,
                          tuple outputs) except -1:
    register_reduce(name, ST_F32, ST_F32, ST_F32, f32, scalars, outputs)
    register_reduce(name, ST_F64, ST_F64, ST_F64, f64, scalars, outputs)
    return 0
