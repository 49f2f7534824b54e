"""Types of fusedoptim._build_config, which setup.py writes at build time (it is not in the
source tree; fusedoptim._config falls back when it is absent)."""

#: the flags every kernel module was compiled with (the ISA levels add their own)
COMPILE_FLAGS: list[str]
#: whether the kernels were built with OpenMP
OPENMP: bool
#: the C compiler's executable
COMPILER: str
#: the instruction-set levels built, e.g. ["baseline", "avx2", "avx512"]
ISA_LEVELS: list[str]
