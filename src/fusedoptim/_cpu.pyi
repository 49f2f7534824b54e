"""Types of fusedoptim._cpu (cython_kernels/_cpu.pyx): the CPU feature probe."""

#: the features cpu_features() reports, by NumPy's names
FEATURES: tuple[str, ...]

def cpu_features() -> dict[str, bool]: ...
