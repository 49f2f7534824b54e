"""Build the Cython extensions.

cython_kernels/_kernels.pyx (every chunk and reduce kernel) is compiled once per
instruction-set level and becomes fusedoptim._kernels_<level>: "baseline" (the platform's
default target, x86-64/SSE2 on x86-64) everywhere, plus "avx2" and "avx512" on x86-64 when the
compiler accepts them. What does not depend on the ISA level lives in
cython_kernels/fusedoptim/ and is compiled once, with no ISA flags, so it imports on any CPU:
the parallel driver and kernel registry (_driver), the buffer checks (_checks) and the CPU
feature probe (_cpu). Their .pxd files sit in that folder under their package path, which is
where Cython looks for `from fusedoptim._driver cimport ...`. fusedoptim/_kernels.py asks the probe and
loads the best level the CPU runs. Because every level is compiled with -ffp-contract=off and
uses only correctly rounded operations, all levels give bitwise identical results (tested).

The levels are compiled in parallel: Cython translates the sources on a process pool, and
build_ext compiles the extensions on one thread per CPU (``--parallel``; set
FUSEDOPTIM_BUILD_JOBS to override). Cython's utility code is one shared module
(fusedoptim._cyutility) compiled once, not part of every level.

OpenMP is detected by compiling and linking a tiny test program: gcc's -fopenmp, MSVC's
/openmp, or on macOS Apple clang with Homebrew's libomp. Without it the build still succeeds:
the driver's parallel region compiles out, every pass runs on the calling thread, and
``fusedoptim.show_config()`` reports ``openmp: False``.

Environment:
    FUSEDOPTIM_NATIVE=1     build a single "native" level with -march=native (local builds only)
    FUSEDOPTIM_BUILD_JOBS=N parallel compile jobs (default: the CPUs this process may use)
    FUSEDOPTIM_SANITIZE=address,undefined
                            build every extension with -fsanitize=address,undefined (any of
                            address, undefined, leak, thread; thread excludes address and
                            leak), -fno-omit-frame-pointer and -g, for testing only: Python
                            must run with the sanitizer runtime preloaded (docs/install.md)
"""

import glob
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import warnings

import Cython
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -fno-math-errno lets gcc vectorise sqrt; -fno-trapping-math lets it if-convert selects.
# -ffp-contract=off: no silent FMA contraction, so a -march=native build gives the same bits
# as the portable one and as the NumPy reference. Never -ffast-math: NaN/Inf must keep meaning.
# -g0 overrides the -g in Python's own CFLAGS: debug info for ~70K lines of generated C per
# level made each compile take about half again as long and the wheel about twice as big.
# MSVC: /fp:precise neither contracts nor reassociates, and keeps NaN/Inf semantics.
BASE_FLAGS = {"unix": ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
                       "-g0"],
              "msvc": ["/O2", "/fp:precise"]}

# (level name, {compiler family: extra flags}). The baseline has no extra flags, so it runs on
# any CPU of the platform; the others are built on x86-64 only, and fusedoptim/_kernels.py
# loads them only when the CPU has every feature the level's flags allow the compiler to use.
ISA_LEVELS = [
    ("baseline", {"unix": [], "msvc": []}),
    # -mf16c: float16 params, grads and state convert with vcvtph2ps/vcvtps2ph (codecs.h).
    ("avx2", {"unix": ["-mavx2", "-mf16c"], "msvc": ["/arch:AVX2"]}),
    ("avx512", {"unix": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2",
                         "-mf16c",
                         "-mprefer-vector-width=512"],
                "msvc": ["/arch:AVX512"]}),
]
# cython_kernels/*.pyx are compiled once per level; cython_kernels/fusedoptim/*.pyx once.
PER_LEVEL_DIR = "cython_kernels"
ONCE_DIR = os.path.join("cython_kernels", "fusedoptim")
# The kernel families (cython_kernels/*.pxi.tp) are expanded here by cython_kernels/kernelgen.py
# (Tempita, shipped with Cython) before Cython runs; the expanded .pxi are never committed.
GENERATED_DIR = os.path.join("build", "generated")
# Cython's utility code (memoryviews, type imports, ...: ~30K of each module's ~70K lines of
# C) goes into one shared module compiled once, instead of into every level.
SHARED_UTILITY = "fusedoptim._cyutility"

_OMP_TEST = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;
}
"""


def _compiles(compiler, source, flags, link=True, link_flags=None):
    tmp = tempfile.mkdtemp(prefix="fusedoptim-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            if link:
                compiler.link_executable(objs, os.path.join(tmp, "probe"),
                                         extra_postargs=flags + (link_flags or []))
        except Exception:  # CompileError / LinkError: the toolchain lacks the feature
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


def _family(compiler):
    return "msvc" if compiler.compiler_type == "msvc" else "unix"


def _openmp_flags(compiler):
    """(compile flags, link flags) that enable OpenMP, or None when nothing works."""
    family = _family(compiler)
    if family == "msvc":
        candidates = [(["/openmp"], [])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
        if sys.platform == "darwin":
            # Apple clang has no -fopenmp driver flag; libomp (Homebrew, or LIBOMP_PREFIX)
            # gives the runtime, and the preprocessor flag turns the pragmas on.
            prefixes = [os.environ.get("LIBOMP_PREFIX", ""), "/opt/homebrew/opt/libomp",
                        "/usr/local/opt/libomp"]
            for prefix in filter(os.path.isdir, filter(None, prefixes)):
                candidates.append(
                    (["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"],
                     [f"-L{prefix}/lib", "-lomp", f"-Wl,-rpath,{prefix}/lib"]))
    for cflags, lflags in candidates:
        if _compiles(compiler, _OMP_TEST, cflags, link_flags=lflags):
            return cflags, lflags
    return None


SANITIZERS = ("address", "undefined", "leak", "thread")


def _sanitize_flags(family):
    """(compile flags, link flags) for FUSEDOPTIM_SANITIZE, e.g. "address,undefined"."""
    raw = os.environ.get("FUSEDOPTIM_SANITIZE", "").strip()
    if not raw:
        return [], []
    kinds = [k.strip() for k in raw.split(",") if k.strip()]
    bad = [k for k in kinds if k not in SANITIZERS]
    if bad or not kinds:
        raise SystemExit(f"FUSEDOPTIM_SANITIZE={raw!r}: unknown sanitizer(s) {bad}; give a "
                         f"comma-separated list of {', '.join(SANITIZERS)}, e.g. "
                         f"FUSEDOPTIM_SANITIZE=address,undefined")
    if "thread" in kinds and ({"address", "leak"} & set(kinds)):
        raise SystemExit("FUSEDOPTIM_SANITIZE: 'thread' cannot be combined with 'address' or "
                         "'leak' (the runtimes exclude each other); build them separately")
    if family != "unix":
        raise SystemExit("FUSEDOPTIM_SANITIZE needs gcc or clang (-fsanitize=...)")
    flag = "-fsanitize=" + ",".join(kinds)
    # -g after BASE_FLAGS' -g0 wins: reports need line numbers. -fno-sanitize-recover: a
    # UBSan finding stops the process, as halt_on_error does for ASan.
    return ([flag, "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-g"],
            [flag])


def _build_jobs():
    jobs = os.environ.get("FUSEDOPTIM_BUILD_JOBS", "")
    if jobs.isdigit() and int(jobs) > 0:
        return int(jobs)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# build_ext skips an extension whose output is newer than its sources, whatever flags built
# it, and build/ is shared by every build of this tree (pip builds in-tree; --inplace builds
# there too, then copies). So FUSEDOPTIM_SANITIZE=... after a plain build would silently keep
# the plain modules, and a plain build after a sanitized one would keep modules that cannot
# import without the sanitizer runtime preloaded. Each output's flags are recorded here, and
# an output built with other flags is deleted before the build.
FLAGS_RECORD = os.path.join("build", "extension-flags.json")


def _read_flags_record():
    try:
        with open(FLAGS_RECORD) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class BuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:          # `build_ext --parallel N` on the command line wins
            self.parallel = _build_jobs()

    def build_extensions(self):
        family = _family(self.compiler)
        compile_flags = list(BASE_FLAGS[family])
        link_flags = []
        openmp = _openmp_flags(self.compiler)
        if openmp:
            compile_flags += openmp[0]
            link_flags += openmp[1]
        else:
            warnings.warn("fusedoptim: the C compiler has no OpenMP support; building serial "
                          "kernels (fusedoptim.show_config() will report openmp: False).")
        sanitize_compile, sanitize_link = _sanitize_flags(family)
        compile_flags += sanitize_compile
        link_flags += sanitize_link
        built = []
        for ext in list(self.extensions):
            level = _isa_level(ext.name)
            isa_flags = dict(ISA_LEVELS).get(level, {}).get(family, []) if level else []
            if level == "native":
                isa_flags = ["-march=native"] if family == "unix" else []
            if isa_flags and not _compiles(self.compiler, "int main(void){return 0;}",
                                           isa_flags, link=False):
                self.extensions.remove(ext)   # this compiler cannot target that level
                continue
            if level:
                built.append(level)
            # Modules compiled once (driver, checks, probe, Cython's utility code) get no ISA
            # flags: they must import on any CPU of the platform.
            ext.extra_compile_args = compile_flags + isa_flags
            ext.extra_link_args = link_flags + ext.extra_link_args
        self._write_build_config(compile_flags, bool(openmp), built)
        recorded = _read_flags_record()
        flags = {os.path.abspath(self.get_ext_fullpath(ext.name)):
                 [ext.extra_compile_args, ext.extra_link_args] for ext in self.extensions}
        for path, ext_flags in flags.items():
            if recorded.get(path) != ext_flags and os.path.exists(path):
                os.remove(path)          # built with other flags: build_ext now rebuilds it
        super().build_extensions()
        with open(FLAGS_RECORD, "w") as f:
            json.dump({**recorded, **flags}, f, indent=1)

    def _write_build_config(self, flags, openmp, levels):
        """Record how the kernels were built, for show_config()."""
        text = (
            "# Generated by setup.py at build time. Do not edit.\n"
            f"COMPILE_FLAGS = {flags!r}\n"
            f"OPENMP = {openmp!r}\n"
            f"COMPILER = {' '.join(getattr(self.compiler, 'compiler_so', ['msvc'])[:1])!r}\n"
            f"ISA_LEVELS = {levels!r}\n"
        )
        for root in {self.build_lib, os.path.join("src")}:
            path = os.path.join(root, "fusedoptim", "_build_config.py")
            if os.path.isdir(os.path.dirname(path)):
                with open(path, "w") as f:
                    f.write(text)


def _levels():
    if os.environ.get("FUSEDOPTIM_NATIVE", "") == "1":
        return [("native", {})]      # BuildExt gives it -march=native (gcc and clang)
    return ISA_LEVELS if _is_x86_64() else ISA_LEVELS[:1]


def _per_level_names():
    return {os.path.splitext(os.path.basename(p))[0]
            for p in glob.glob(os.path.join(PER_LEVEL_DIR, "*.pyx"))}


def _isa_level(module_name):
    """"avx2" for fusedoptim._kernels_avx2; None for a module compiled once."""
    base, _, level = module_name.rsplit(".", 1)[-1].rpartition("_")
    return level if base in _per_level_names() else None


def _generate_kernel_glue():
    """Expand every family template (body + scalars + storage whitelist -> glue) into
    build/generated/, where _kernels.pyx's `include "<family>.pxi"` finds it."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "fusedoptim_kernelgen", os.path.join(PER_LEVEL_DIR, "kernelgen.py"))
    kernelgen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernelgen)
    return kernelgen.expand(glob.glob(os.path.join(PER_LEVEL_DIR, "*.pxi.tp")), GENERATED_DIR)


def _extension(name, source):
    return Extension(
        name,
        [source],
        include_dirs=[np.get_include(), "cython_kernels"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )


def extensions():
    """One Extension per (per-level pyx, ISA level) and one per other pyx. Each level compiles
    a generated one-line .pyx (in build/, never committed) that includes the real source, so
    the module gets its own name and init function."""
    exts = []
    _generate_kernel_glue()
    gen_dir = os.path.join("build", "isa_sources")
    os.makedirs(gen_dir, exist_ok=True)
    for pyx in sorted(glob.glob(os.path.join(ONCE_DIR, "*.pyx"))):
        exts.append(_extension(f"fusedoptim.{os.path.splitext(os.path.basename(pyx))[0]}", pyx))
    for name in sorted(_per_level_names()):
        for level, _ in _levels():
            wrapper = os.path.join(gen_dir, f"{name}_{level}.pyx")
            text = f'include "{name}.pyx"\n'
            if not os.path.exists(wrapper) or open(wrapper).read() != text:
                with open(wrapper, "w") as f:
                    f.write(text)
            exts.append(_extension(f"fusedoptim.{name}_{level}", wrapper))
    exts.append(Extension(SHARED_UTILITY, []))     # cythonize writes its source
    # build_ext --parallel starts the extensions in list order. Longest first (measured here:
    # Cython's utility code ~5 s, the driver ~6 s, a kernel level ~3.5 s, the checks ~2 s,
    # the probe 0.5 s) keeps both cores busy to the end instead of leaving a long job last.
    levels = [level for level, _ in ISA_LEVELS][::-1]        # avx512 first
    def cost_rank(ext):
        level = _isa_level(ext.name)
        if level is not None:
            return 2 + (levels.index(level) if level in levels else 0) / 10
        return {SHARED_UTILITY: 0, "fusedoptim._driver": 1}.get(ext.name, 3)
    exts.sort(key=cost_rank)
    return _cythonize_unless_unchanged(exts)


def _cython_inputs_fingerprint():
    """A hash of everything the generated C depends on: our Cython sources, this file, and the
    Cython and NumPy versions."""
    h = hashlib.sha256(f"{Cython.__version__} {np.__version__}\n".encode())
    for pattern in ("*.pyx", "*.pxi", "*.pxd", "*.h", "*.tp", "*.py"):
        for path in sorted(glob.glob(os.path.join("cython_kernels", "**", pattern),
                                     recursive=True)):
            with open(path, "rb") as f:
                h.update(path.encode() + b"\0" + f.read())
    with open(__file__, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def _cythonize_unless_unchanged(exts):
    """cythonize, unless the last run here had the same inputs: then reuse its C.

    pip builds in a fresh isolated environment each time, so numpy's .pxd files always look
    new to Cython's own timestamp check, which regenerates every .c, which makes build_ext
    recompile every level (~40 s) even when nothing changed, e.g. for the README's second
    command after the first. Keeping the C when the inputs hash the same lets build_ext find
    its objects in build/ up to date. Delete build/ to force a full rebuild.
    """
    stamp_path = os.path.join("build", "cython-inputs.json")
    fingerprint = _cython_inputs_fingerprint()
    try:
        with open(stamp_path) as f:
            stamp = json.load(f)
    except (OSError, ValueError):
        stamp = {}
    generated = stamp.get("sources", {})
    if (stamp.get("fingerprint") == fingerprint
            and all(ext.name in generated and all(map(os.path.exists, generated[ext.name]))
                    for ext in exts)):
        for ext in exts:
            ext.sources = list(generated[ext.name])
        return exts
    exts = cythonize(
        exts,
        include_path=["cython_kernels", GENERATED_DIR],
        build_dir=os.path.join("build", "cython"),
        force=True,         # the inputs changed (maybe only a flag here): new C, so a new build
        nthreads=_build_jobs(),
        shared_utility_qualified_name=SHARED_UTILITY,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )
    with open(stamp_path, "w") as f:
        json.dump({"fingerprint": fingerprint,
                   "sources": {ext.name: ext.sources for ext in exts}}, f, indent=1)
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
