"""Expand the kernel families (cython_kernels/*.pxi.tp) into the .pxi files _kernels.pyx includes.

Run by setup.py at build time; the output goes to build/generated/ and is never committed.

A family file is Cython with three Tempita calls (Cython ships Tempita as Cython.Tempita):

    {{scalars("adam", "sign beta1 ... mode")}}
        One declaration, two faces: the Python tuple ADAM_SCALARS (which becomes SCALARS[name],
        the hp column order the Python layer fills) and the C struct `adam_scalars` of doubles
        in the same order, which the body reads by name (s.beta1). They cannot drift.

    the body, hand-written once over the compute type (Cython's fused `floating`): plain loops
    over plain pointers, as fast as before, e.g.
        cdef inline void _adam_body(floating* p, const floating* g, ..., Py_ssize_t n,
                                    const adam_scalars* s, bint l2, ...) noexcept nogil

    {{chunk("adam", "_adam_body", "param grad state state state", scalars="adam",
            flags="l2 decoupled amsgrad", modes=(0, 1, 2, 4, 5, 6))}}
    {{reduce("lars_norms", "_lars_norms", "param grad", scalars="lars",
             outputs=(("param_sumsq", "sum"), ("grad_sumsq", "sum")))}}
        The generated glue: the mode ladder (mode bit k sets flag k; an unlisted mode ends in
        a defined error branch), one entry point per whitelisted (param, grad, state) storage
        combination, and the registration of exactly those rows, of the scalars and of the
        allowed modes with the driver (Plan.run/reduce refuse any other mode).

    {{tiles("adafactor_factors", "_adafactor_factors", "param grad", scalars="adafactor",
            outputs=(("param_sumsq", "sum"),))}}
        A tile kernel (Plan.reduce_tiles: per-row and per-column results over the last two
        dimensions), float32/float64 only.

Body signatures: chunk  body(<one pointer per used buffer>, n, [start], [s], [flags...])
                 reduce body(<pointers>, n, [start], [s], out, [flags...]) -> int (nonzero: stop
                        early)
                 tiles  body(<pointers>, nr, nc, ld, [s], rows, cols, out) -> int
                 gather body(<base pointers>, start, n, [s])   (chunk(..., gather=True))
Buffer roles, by buffer column: "param", "grad" (passed const), "state", or "-" (not used);
"whole": a buffer that is not laid out like the param (Adafactor's row and column factors),
passed at its start, not at the segment's; the body then also gets the segment's `start`
(the index of its first element in the tensor) and finds its elements itself. Kernels with a
"whole" buffer are float32/float64 only (rows="float"). A gather kernel may also take "index"
buffers (const int64_t*).

A gather kernel (SparseAdam's row update, its roofline) works on a virtual tensor that is not
laid out like its buffers: element e of the plan's tensor says, through the kernel's own index
buffers, which rows it reads and writes. Its buffers reach the body as base pointers (not
offset by the segment's start), with the segment's start and length; it is built for the
float32/float64 rows only, and takes no modes.

Each role's storage comes from the variant's (param, grad, state) storages, via its codec
(codecs.h).
"""

import keyword
import os

from Cython.Tempita import Template

# -- storages and their codecs (codecs.h, quant.h) ----------------------------------------------
# storage -> (driver storage id, C element type, how the glue reaches it)
#   direct   the body gets a plain pointer into the buffer (float32, float64)
#   half     decoded into a float tile per FO_TILE elements, encoded back (bfloat16, float16)
#   master   (param only) a half-precision param with a float32 master copy in column
#            MASTER_COL: the body updates the master in place; the glue then writes the
#            rounded param from it
STORAGES = {
    "f32": ("ST_F32", "float", "direct"),
    "f64": ("ST_F64", "double", "direct"),
    "bf16": ("ST_BF16", "uint16_t", "half"),
    "f16": ("ST_F16", "uint16_t", "half"),
    "bf16m": ("ST_BF16M", "uint16_t", "master"),
    "f16m": ("ST_F16M", "uint16_t", "master"),
    "bf16sr": ("ST_BF16SR", "uint16_t", "sr"),
    "q8": ("ST_Q8", "uint8_t", "q8"),
    "q4": ("ST_Q4", "uint8_t", "q4"),
    "q4r1": ("ST_Q4R1", "uint8_t", "q4r1"),
}
# The codec of each half storage (a master storage rounds its master to the same one).
HALF_CODEC = {"bf16": "bf16", "f16": "f16", "bf16m": "bf16", "f16m": "f16"}
#   q8, q4   (state only) blockwise quantized (quant.h): codes in the buffer, one float32
#            absmax per block (256 elements for q8, 128 for q4) in column ABSMAX_COL + i for
#            the kernel's buffer i. A tensor whose absmax column is NULL keeps float32 state
#            (bitsandbytes' min_8bit_size: small tensors are not quantized): the glue then
#            hands the body the float32 buffer itself. A "state" buffer is quantized with the
#            signed dynamic map, a "state+" one (a non-negative moment) with the unsigned one.
#   q4r1     (state only) int4 state whose non-negative ("state+") buffers are normalized by
#            rank-1 statistics (Li et al. 2023; rank1.h): column ABSMAX_COL + i holds the
#            tensor's descriptor for such a buffer i; its signed buffers stay blockwise q4. Only
#            kernels with a "state+" buffer get these rows. A kernel that writes one also gets
#            a scan kernel "<name>.scan" on the same rows: the body run on copies, whose
#            "state+" outputs are max-accumulated into the descriptor's fresh maxima; the
#            driver runs it before the kernel, in the same parallel region (Plan.run).
# Extra buffer columns, after a kernel's own (at most MAX_BUFFERS of them): the float32
# master param (master storages), then the absmax columns. The driver's plan lays its
# columns out the same way (_driver.pxd).
MAX_BUFFERS = 6
MASTER_COL = 6
ABSMAX_COL = 7
#   bf16sr   (param only) bfloat16 params written back with stochastic rounding (codecs.h);
#            column SR_COL points at the tensor's two uint32 step keys
SR_COL = ABSMAX_COL + MAX_BUFFERS

# -- THE WHITELIST: which (param, grad, state) storage combinations each kernel is built and
# registered for. Register only what the Python layer can request, and test every row.
#   float   float32 and float64, nothing mixed
#   grad    the gradient utilities: also bfloat16 and float16 arrays (a gate or a clip over
#           half-precision grads reads them as they are)
#   opt     an optimizer step (issue 11): float32 params with float32/bfloat16/float16 grads,
#           half params (bfloat16, float16) with grads of their own dtype, half params with
#           float32 master weights and any of the three grads; state float32 or bfloat16
#           (or the half params' own dtype)
FLOAT_ROWS = (("f32", "f32", "f32"), ("f64", "f64", "f64"))
#   optq    opt, and quantized state (int8, int4, int4 with rank-1 normalization; the last only
#           for kernels with a "state+" buffer) under float32 params (float32 or bfloat16
#           grads), half params with their own grads, and half params with master weights
#           (float32 grads or their own)
QUANT_ROWS = tuple((p, g, q) for q in ("q8", "q4", "q4r1") for p, g in (
    ("f32", "f32"), ("f32", "bf16"), ("bf16", "bf16"), ("f16", "f16"),
    ("bf16m", "bf16"), ("bf16m", "f32"), ("f16m", "f16"), ("f16m", "f32")))
ROW_SETS = {
    "float": FLOAT_ROWS,
    "grad": FLOAT_ROWS + (("bf16", "bf16", "bf16"), ("f16", "f16", "f16")),
    "opt": FLOAT_ROWS + tuple(
        [("f32", g, st) for g in ("f32", "bf16", "f16") for st in ("f32", "bf16")
         if (g, st) != ("f32", "f32")]
        + [(p, p, st) for p in ("bf16", "f16") for st in (p, "f32")]
        + [("bf16sr", "bf16", st) for st in ("bf16", "f32")]
        + [(p, g, st) for p in ("bf16m", "f16m") for g in ("f32", "bf16", "f16")
           for st in ("f32", "bf16")]),
}
ROW_SETS["optq"] = ROW_SETS["opt"] + QUANT_ROWS
#   codec   fusedoptim.quant's fused quantize/dequantize: float32, bfloat16 or float16 values
#           (the param or grad column) against int8/int4 codes
ROW_SETS["codec"] = tuple((x, x, q) for q in ("q8", "q4") for x in ("f32", "bf16", "f16"))
#   opt32   opt with float32 state only (LAMB's fused two-pass step: its second pass recomputes
#           the update from the stored moments, which must be the first pass's exactly, as its
#           trust ratio was computed from them; other state takes LAMB's three-pass kernels)
ROW_SETS["opt32"] = tuple(r for r in ROW_SETS["opt"] if r[2] in ("f32", "f64"))
VARIANTS = {
    # kernel name -> its rows, where they differ from its row set
    "_thread_id_f32_only": (("f32", "f32", "f32"),),
}

ROLES = ("param", "grad", "state")
# A buffer role as declared: a role, or a state buffer that is "state+" (never negative: the
# unsigned map when quantized), "rstate" (only read: decoded, never encoded back) or "wstate"
# (only written: encoded, never decoded), or both ("rstate+", "wstate+").
DECLARED_ROLES = ROLES + ("state+", "rstate", "rstate+", "wstate", "wstate+", "whole", "-")
# only in a gather kernel: a row table, read as const int64_t*
GATHER_ROLES = ("index",)
_C_WORDS = {"auto", "break", "case", "char", "const", "continue", "default", "do", "double",
            "else", "enum", "extern", "float", "for", "goto", "if", "int", "long", "register",
            "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
            "union", "unsigned", "void", "volatile", "while", "inline", "restrict", "ctypedef",
            "cdef", "cpdef", "nogil", "include", "cimport", "by", "gil", "new", "NULL"}


class GenError(Exception):
    pass


def _bools(values):
    return ", ".join("True" if v else "False" for v in values)


class Generator:
    """Holds what the family files declared, across files, to check the whitelist at the end."""

    def __init__(self):
        self.scalar_sets = {}     # family -> list of names
        self.kernels = set()

    # -- {{scalars(...)}} ------------------------------------------------------------------------
    def scalars(self, family, names):
        names = names.split()
        if family in self.scalar_sets:
            raise GenError(f"scalars {family!r} declared twice")
        if len(set(names)) != len(names):
            raise GenError(f"scalars {family!r}: a name is repeated: {names}")
        for n in names:
            if not n.isidentifier() or keyword.iskeyword(n) or n in _C_WORDS:
                raise GenError(f"scalars {family!r}: {n!r} cannot be a C struct field")
        self.scalar_sets[family] = names
        tup = "(" + "".join(f"{n!r}, " for n in names).rstrip(" ") + ")"
        lines = [f"{family.upper()}_SCALARS = {tup}",
                 f"# The same names, in the same order, as the C view of one tensor's hp row.",
                 f"ctypedef struct {family}_scalars:"]
        lines += [f"    double {n}" for n in names]
        return "\n".join(lines)

    # -- {{chunk(...)}} / {{reduce(...)}} --------------------------------------------------------
    def chunk(self, name, body, buffers, scalars=None, flags="", modes=None, rows="float",
              gather=False):
        if gather:
            return self._gather(name, body, buffers, scalars, flags, modes, rows)
        return self._kernel("chunk", name, body, buffers, scalars, flags, modes, None, rows)

    def _gather(self, name, body, buffers, scalars, flags, modes, rows):
        """A gather chunk kernel (see the module docstring): base pointers, start and n."""
        if name in self.kernels:
            raise GenError(f"kernel {name!r} declared twice")
        self.kernels.add(name)
        if flags or modes is not None:
            raise GenError(f"{name}: a gather kernel takes no flags or modes")
        if rows != "float":
            raise GenError(f"{name}: a gather kernel is built for rows='float' only")
        declared = buffers.split()
        for r in declared:
            if r not in ROLES + GATHER_ROLES + ("-",):
                raise GenError(f"{name}: buffer role {r!r} is not one of "
                               f"{ROLES + GATHER_ROLES + ('-',)}")
        if len(declared) > MAX_BUFFERS:
            raise GenError(f"{name}: more than {MAX_BUFFERS} buffers")
        names = self.scalar_sets.get(scalars) if scalars else None
        if scalars and names is None:
            raise GenError(f"{name}: scalars {scalars!r} not declared (declare them first)")
        out, regs = [], []
        for row in VARIANTS.get(name, ROW_SETS[rows]):
            storage_of = dict(zip(ROLES, row))
            args = []
            for i, r in enumerate(declared):
                if r == "-":
                    continue
                if r == "index":
                    args.append(f"<const int64_t*>b[{i}]")
                else:
                    q = "const " if r == "grad" else ""
                    args.append(f"<{q}{STORAGES[storage_of[r]][1]}*>b[{i}]")
            args += ["start", "n"]
            if names is not None:
                args.append(f"<const {scalars}_scalars*>hp")
            entry = f"{name}__{'_'.join(row)}"
            out += [f"cdef void {entry}(char** b, Py_ssize_t start, Py_ssize_t n, "
                    f"const double* hp) noexcept nogil:",
                    f"    {body}({', '.join(args)})", "", ""]
            ids = ", ".join(STORAGES[st][0] for st in row)
            stup = f"{scalars.upper()}_SCALARS" if names is not None else "()"
            regs.append(f"register_chunk({name!r}, {ids}, {entry}, {stup})")
        if names is not None:
            regs.append(f"_check_scalars_struct({scalars!r}, sizeof({scalars}_scalars), "
                        f"{len(names)})")
        regs.append(f"KERNEL_ROLES[{name!r}] = {tuple(declared)!r}")
        return "\n".join(out + regs)

    def reduce(self, name, body, buffers, scalars=None, flags="", modes=None, outputs=(),
               rows="float"):
        if not outputs:
            raise GenError(f"reduce kernel {name!r} needs outputs")
        return self._kernel("reduce", name, body, buffers, scalars, flags, modes, outputs, rows)

    def tiles(self, name, body, buffers, scalars=None, outputs=()):
        """A tile kernel: float32/float64 entries that hand the body the block's pointers
        (offset by the tile's first element), its shape and its partial slots, and their
        registration with the driver's tile registry."""
        if name in self.kernels:
            raise GenError(f"kernel {name!r} declared twice")
        self.kernels.add(name)
        declared = buffers.split()
        for r in declared:
            if r not in ROLES + ("-",):
                raise GenError(f"{name}: tile buffer role {r!r} is not one of {ROLES}")
        if len(declared) > MAX_BUFFERS:
            raise GenError(f"{name}: more than {MAX_BUFFERS} buffers")
        names = self.scalar_sets.get(scalars) if scalars else None
        if scalars and names is None:
            raise GenError(f"{name}: scalars {scalars!r} not declared (declare them first)")
        if not outputs or any(how != "sum" for _, how in outputs):
            raise GenError(f"{name}: a tile kernel needs outputs, each combined by 'sum'")
        used = [(i, r) for i, r in enumerate(declared) if r != "-"]
        out, regs = [], []
        for row in FLOAT_ROWS:
            storage_of = dict(zip(ROLES, row))
            entry = f"{name}__{'_'.join(row)}"
            ptrs = []
            for i, r in used:
                q = "const " if r == "grad" else ""
                ptrs.append(f"(<{q}{STORAGES[storage_of[r]][1]}*>b[{i}]) + start")
            args = ptrs + ["nr", "nc", "ld"]
            if names is not None:
                args.append(f"<const {scalars}_scalars*>hp")
            args += ["rows", "cols", "out"]
            out += [f"cdef int {entry}(char** b, Py_ssize_t start, Py_ssize_t nr, "
                    f"Py_ssize_t nc, Py_ssize_t ld, const double* hp, double* rows, "
                    f"double* cols, double* out) noexcept nogil:",
                    f"    return {body}({', '.join(args)})", "", ""]
            ids = ", ".join(STORAGES[st][0] for st in row)
            stup = f"{scalars.upper()}_SCALARS" if names is not None else "()"
            regs.append(f"register_tile({name!r}, {ids}, {entry}, {stup}, {tuple(outputs)!r})")
        regs.append(f"KERNEL_ROLES[{name!r}] = {tuple(declared)!r}")
        return "\n".join(out + regs)

    def _kernel(self, kind, name, body, buffers, scalars, flags, modes, outputs, rows):
        if name in self.kernels:
            raise GenError(f"kernel {name!r} declared twice")
        self.kernels.add(name)
        declared = buffers.split()
        for r in declared:
            if r not in DECLARED_ROLES:
                raise GenError(f"{name}: buffer role {r!r} is not one of {DECLARED_ROLES}")
        whole = {i for i, r in enumerate(declared) if r == "whole"}
        if whole and rows != "float":
            raise GenError(f"{name}: kernels with 'whole' buffers are float32/float64 only "
                           f"(rows='float'), got rows={rows!r}")
        as_declared = tuple(declared)
        declared = ["state" if r == "whole" else r for r in declared]
        unsigned = {i for i, r in enumerate(declared) if r.endswith("+")}
        access = {i: r[0] for i, r in enumerate(declared) if r[0] in "rw" and "state" in r}
        roles = ["state" if "state" in r else r for r in declared]
        if len(roles) > MAX_BUFFERS:
            raise GenError(f"{name}: more than {MAX_BUFFERS} buffers")
        used = [(i, r) for i, r in enumerate(roles) if r != "-"]
        flags = flags.split()
        names = self.scalar_sets.get(scalars) if scalars else None
        if scalars and names is None:
            raise GenError(f"{name}: scalars {scalars!r} not declared (declare them first)")
        if rows not in ROW_SETS:
            raise GenError(f"{name}: rows={rows!r} is not one of {sorted(ROW_SETS)}")
        is_reduce = kind == "reduce"
        ret = "int" if is_reduce else "void"
        out = []

        # The body's call, with the flags appended.
        call_args = [f"b{i}" for i, _ in used] + ["n"] + (["start"] if whole else [])
        if names is not None:
            call_args.append("s")
        if is_reduce:
            call_args.append("out")
        call = f"{body}({', '.join(call_args)}"
        sig = [f"{'const ' if r == 'grad' or access.get(i) == 'r' else ''}floating* b{i}"
               for i, r in used]
        sig += ["Py_ssize_t n"] + (["Py_ssize_t start"] if whole else [])
        if names is not None:
            sig.append(f"const {scalars}_scalars* s")
        if is_reduce:
            sig.append("double* out")

        if modes is not None:
            # The mode ladder, over the compute type: one literal flag combination per mode, so
            # gcc specialises (and vectorises) one loop per allowed mode.
            modes = tuple(modes)
            if not names or "mode" not in names:
                raise GenError(f"{name}: modes need a 'mode' scalar")
            if not modes or len(set(modes)) != len(modes):
                raise GenError(f"{name}: modes must be distinct and not empty")
            for m in modes:
                if not (isinstance(m, int) and 0 <= m < min(64, 1 << len(flags))):
                    raise GenError(f"{name}: mode {m!r} is not a combination of flags {flags}")
            if used[0][1] != "param" and not is_reduce:
                raise GenError(f"{name}: a moded chunk kernel's first buffer must be the param")
            disp = f"_{name.lstrip('_')}_modes"
            out.append(f"cdef inline {ret} {disp}({', '.join(sig)}) noexcept nogil:")
            out.append(f"    # Generated from modes={modes}, flags={tuple(flags)} (mode bit k sets "
                       f"flag k).")
            out.append("    cdef int mode = <int>s.mode")
            for k, m in enumerate(modes):
                bits = [bool(m >> j & 1) for j in range(len(flags))]
                out.append(f"    {'if' if k == 0 else 'elif'} mode == {m}:")
                fl = f", {_bools(bits)}" if flags else ""
                out.append(f"        {'return ' if is_reduce else ''}{call}{fl})")
            out.append("    else:")
            out.append("        # Unreachable through Plan.run/reduce, which refuse a mode not "
                       "registered below.")
            if is_reduce:
                out.append(f"        return _fo_bad_mode_out(out, {len(outputs)})")
            else:
                out.append(f"        _fo_bad_mode(b{used[0][0]}, n)")
            out.append("")
            out.append("")
            call = f"{disp}({', '.join(call_args)}"
        elif flags:
            raise GenError(f"{name}: flags without modes")
        call += ")"
        head = call.split("(", 1)[0]

        row_list = VARIANTS.get(name, ROW_SETS[rows])
        if not unsigned:            # rank-1 normalization is for the non-negative buffers
            row_list = tuple(r for r in row_list if r[2] != "q4r1")
        for row in row_list:
            if len(row) != 3 or any(st not in STORAGES for st in row):
                raise GenError(f"{name}: variant {row!r} names an unknown storage")
        tiled = [row for row in row_list if not self._direct(row, used)]
        # named after the kernel: two kernels may share a body
        tile_fn = f"_{name.lstrip('_')}_tile"
        if tiled:
            # The float body behind every tiled row, compiled once (not inlined into each
            # row's glue): a row adds only its decode/encode loops.
            tsig = [x.replace("floating", "float") for x in sig]
            out.append(f"cdef {ret} {tile_fn}({', '.join(tsig)}) noexcept nogil:")
            out.append(f"    {'return ' if is_reduce else ''}{call}")
            out.append("")
            out.append("")
            for row in tiled:
                self._check_tiled_row(name, row, used, access)
            out += self._tiled_glue(name, tile_fn, used, names, scalars, is_reduce, outputs,
                                    unsigned, access)

        regs = []
        for row in row_list:
            entry = f"{name}__{'_'.join(row)}"
            if row in tiled:
                # One line per row: the kernel's tiled glue with this row's storages.
                ids = ", ".join(STORAGES[st][0] for st in row)
                glue = f"_{name.lstrip('_')}_tiled"
                if is_reduce:
                    out += [f"cdef int {entry}(char** b, Py_ssize_t start, Py_ssize_t n, "
                            f"const double* hp, double* out) noexcept nogil:",
                            f"    return {glue}(b, start, n, hp, out, {ids})", "", ""]
                else:
                    out += [f"cdef void {entry}(char** b, Py_ssize_t start, Py_ssize_t n, "
                            f"const double* hp) noexcept nogil:",
                            f"    {glue}(b, start, n, hp, {ids})", "", ""]
            else:
                out += self._direct_entry(entry, head, row, used, names, scalars, is_reduce,
                                          whole)
            ids = ", ".join(STORAGES[st][0] for st in row)
            stup = f"{scalars.upper()}_SCALARS" if names is not None else "()"
            if is_reduce:
                regs.append(f"register_reduce({name!r}, {ids}, {entry}, {stup}, {outputs!r})")
            else:
                regs.append(f"register_chunk({name!r}, {ids}, {entry}, {stup})")
        later = []          # registered after the kernel's modes
        scan_rows = [row for row in tiled if row[2] == "q4r1"]
        written_plus = [i for i in unsigned if access.get(i) != "r"]
        if scan_rows and written_plus and not is_reduce:
            scan = f"{name}.scan"
            glue, r1 = self._scan_glue(name, tile_fn, used, names, scalars, unsigned, access)
            out += glue
            stup = f"{scalars.upper()}_SCALARS" if names is not None else "()"
            for row in scan_rows:
                entry = f"{name}__scan__{'_'.join(row)}"
                ids = ", ".join(STORAGES[st][0] for st in row)
                out += [f"cdef void {entry}(char** b, Py_ssize_t start, Py_ssize_t n, "
                        f"const double* hp) noexcept nogil:",
                        f"    _{name.lstrip('_')}_scan_tiled(b, start, n, hp, {ids})", "", ""]
                regs.append(f"register_chunk({scan!r}, {ids}, {entry}, {stup})")
            if modes is not None:
                regs.append(f"register_modes({scan!r}, False, {names.index('mode')}, "
                            f"{modes!r})")
            later.append(f"register_rank1({name!r}, {scan!r}, {sum(1 << i for i in r1)})")
        if names is not None:
            regs.append(f"_check_scalars_struct({scalars!r}, sizeof({scalars}_scalars), "
                        f"{len(names)})")
        if modes is not None:
            regs.append(f"register_modes({name!r}, {is_reduce}, {names.index('mode')}, "
                        f"{modes!r})")
        regs += later
        regs.append(f"KERNEL_ROLES[{name!r}] = {as_declared!r}")
        out += regs
        return "\n".join(out)

    @staticmethod
    def _direct(row, used):
        """Every used buffer is a plain float32 pointer, or every one a float64 pointer."""
        storage_of = dict(zip(ROLES, row))
        kinds = {storage_of[r] for _, r in used}
        return kinds <= {"f32"} or kinds <= {"f64"}

    @staticmethod
    def _direct_entry(entry, head, row, used, names, scalars, is_reduce, whole=()):
        storage_of = dict(zip(ROLES, row))
        ptrs = []
        for i, r in used:
            ctype = STORAGES[storage_of[r]][1]
            q = "const " if r == "grad" else ""
            ptrs.append(f"<{q}{ctype}*>b[{i}]" if i in whole else f"(<{q}{ctype}*>b[{i}]) + start")
        args = ptrs + ["n"] + (["start"] if whole else [])
        if names is not None:
            args.append(f"<const {scalars}_scalars*>hp")
        if is_reduce:
            args.append("out")
            return [f"cdef int {entry}(char** b, Py_ssize_t start, Py_ssize_t n, "
                    f"const double* hp, double* out) noexcept nogil:",
                    f"    return {head}({', '.join(args)})", "", ""]
        return [f"cdef void {entry}(char** b, Py_ssize_t start, Py_ssize_t n, "
                f"const double* hp) noexcept nogil:",
                f"    {head}({', '.join(args)})", "", ""]

    @staticmethod
    def _check_tiled_row(name, row, used, access):
        """A tiled row computes in float: every storage must be one the tiled glue converts,
        in a role it may take."""
        storage_of = dict(zip(ROLES, row))
        for i, r in used:
            kind = STORAGES[storage_of[r]][2]
            if storage_of[r] == "f64":
                raise GenError(f"{name}: a tiled row computes in float; f64 cannot join {row}")
            if kind in ("master", "sr") and r != "param":
                raise GenError(f"{name}: {storage_of[r]} is a param storage")
            if kind in ("q8", "q4", "q4r1") and r != "state":
                raise GenError(f"{name}: {storage_of[r]} is a state storage")
            if access.get(i) == "w" and kind not in ("q8", "q4", "q4r1"):
                raise GenError(f"{name}: write-only buffers are for quantized storages")

    @staticmethod
    def _tiled_glue(name, tile_fn, used, names, scalars, is_reduce, outputs, unsigned, access):
        """The glue of every row of a kernel that is not plain float32/float64, compiled
        once: per tile of at most FO_TILE elements, each buffer is handed to the float body
        through tiles.h (a float32 buffer itself; a bfloat16/float16 buffer or int8/int4
        blocks decoded into a float array on the stack; a master storage's float32 master in
        column MASTER_COL), and what the body writes is encoded back (the param rounded from
        its master, or stochastically). The row's storages arrive as arguments (sp, sg, ss):
        a switch per tile, not a copy of the glue per row. A state buffer may be absent
        (NULL, e.g. AMSGrad's max when amsgrad is off): the body never reads it then."""
        glue = f"_{name.lstrip('_')}_tiled"
        ret = "int" if is_reduce else "void"
        outarg = ", double* out" if is_reduce else ""
        lines = [f"cdef {ret} {glue}(char** b, Py_ssize_t start, Py_ssize_t n, const double* hp"
                 f"{outarg}, int sp, int sg, int ss) noexcept nogil:"]
        decl, dec, enc, args = [], [], [], []
        for i, r in used:
            decl.append(f"cdef float t{i}[FO_TILE]")
            q = "const " if r == "grad" or access.get(i) == "r" else ""
            decl.append(f"cdef {q}float* x{i}")
            args.append(f"x{i}")
            if r == "param":
                dec.append(f"x{i} = fo_param_in(b, {i}, sp, at, m, t{i})")
                if not is_reduce:       # (no reduce kernel writes its buffer 0)
                    enc.append(f"fo_param_out(b, {i}, sp, at, m, t{i})")
            elif r == "grad":
                dec.append(f"x{i} = fo_grad_in(b[{i}], sg, at, m, t{i})")
            else:
                sign = "u" if i in unsigned else "s"
                maps = f"&_fo_qmap_{sign}8, &_fo_qmap_{sign}4"
                absmax = f"b[{ABSMAX_COL + i}]"
                how = "fo_state_wptr" if access.get(i) == "w" else "fo_state_in"
                # a signed buffer of an int4+rank1 row is blockwise int4 (rank1.h)
                st = "ss" if i in unsigned else "ssq"
                dec.append(f"x{i} = {how}(b[{i}], {absmax}, {st}, at, m, {maps}, t{i})")
                if access.get(i) != "r":
                    enc.append(f"fo_state_out(b[{i}], {absmax}, {st}, at, m, {maps}, x{i})")
        if any(r == "state" and i not in unsigned for i, r in used):
            decl.append("cdef int ssq = FO_ST_Q4 if ss == FO_ST_Q4R1 else ss")
        call_args = args + ["m"]
        if names is not None:
            call_args.append(f"<const {scalars}_scalars*>hp")
        lines += [f"    {d}" for d in decl]
        lines.append("    cdef Py_ssize_t off = 0, m, at")
        if is_reduce:
            lines.append(f"    cdef double part[{len(outputs)}]")
            lines.append("    cdef int stop = 0")
            lines.append("    cdef bint first = True")
        lines.append("    while off < n:")
        lines.append("        m = n - off if n - off < FO_TILE else FO_TILE")
        lines.append("        at = start + off")
        lines += [f"        {d}" for d in dec]
        if is_reduce:
            # Each tile's partials, folded in tile order: sums add, maxima keep a NaN.
            call_args.append("part")
            lines.append(f"        stop |= {tile_fn}({', '.join(call_args)})")
            for k, (_, how) in enumerate(outputs):
                op = "_fo_fold_sum" if how == "sum" else "_fo_fold_max"
                lines.append(f"        out[{k}] = part[{k}] if first else "
                             f"{op}(out[{k}], part[{k}])")
            lines.append("        first = False")
        else:
            lines.append(f"        {tile_fn}({', '.join(call_args)})")
        lines += [f"        {e}" for e in enc]
        lines.append("        off += m")
        if is_reduce:
            lines.append("    return stop")
        return lines + ["", ""]

    @staticmethod
    def _scan_glue(name, tile_fn, used, names, scalars, unsigned, access):
        """The scan pass of an int4+rank1 row (rank1.h): per tile, the body runs on copies of
        every buffer (the param copied, quantized state decoded into stack tiles; the grads
        are only read), so nothing is written; each "state+" buffer it writes is then
        max-accumulated into its tensor's fresh rank-1 maxima. A tensor without a rank-1
        buffer (float32 or blockwise state) returns at once."""
        glue = f"_{name.lstrip('_')}_scan_tiled"
        r1 = [i for i, r in used if r == "state" and i in unsigned and access.get(i) != "r"]
        lines = [f"cdef void {glue}(char** b, Py_ssize_t start, Py_ssize_t n, const double* hp, "
                 f"int sp, int sg, int ss) noexcept nogil:"]
        decl, dec, args = [], [], []
        for i, r in used:
            decl.append(f"cdef float t{i}[FO_TILE]")
            q = "const " if r == "grad" or access.get(i) == "r" else ""
            decl.append(f"cdef {q}float* x{i}")
            args.append(f"x{i}")
            if r == "param":
                dec.append(f"x{i} = fo_param_copy(b, {i}, sp, at, m, t{i})")
            elif r == "grad":
                dec.append(f"x{i} = fo_grad_in(b[{i}], sg, at, m, t{i})")
            else:
                sign = "u" if i in unsigned else "s"
                maps = f"&_fo_qmap_{sign}8, &_fo_qmap_{sign}4"
                st = "ss" if i in unsigned else "ssq"
                how = "fo_state_wptr" if access.get(i) == "w" else "fo_state_in"
                dec.append(f"x{i} = {how}(b[{i}], b[{ABSMAX_COL + i}], {st}, at, m, {maps}, "
                           f"t{i})")
        if any(r == "state" and i not in unsigned for i, r in used):
            decl.append("cdef int ssq = FO_ST_Q4 if ss == FO_ST_Q4R1 else ss")
        call_args = args + ["m"]
        if names is not None:
            call_args.append(f"<const {scalars}_scalars*>hp")
        lines += [f"    {d}" for d in decl]
        lines.append("    cdef Py_ssize_t off = 0, m, at")
        active = " or ".join(f"fo_r1_active(b[{ABSMAX_COL + i}])" for i in r1)
        lines.append(f"    if not ({active}):")
        lines.append("        return")
        lines.append("    while off < n:")
        lines.append("        m = n - off if n - off < FO_TILE else FO_TILE")
        lines.append("        at = start + off")
        lines += [f"        {d}" for d in dec]
        lines.append(f"        {tile_fn}({', '.join(call_args)})")
        lines += [f"        fo_r1_scan(b[{ABSMAX_COL + i}], at, m, x{i})" for i in r1]
        lines.append("        off += m")
        return lines + ["", ""], r1

    def check(self):
        unknown = set(VARIANTS) - self.kernels
        if unknown:
            raise GenError(f"VARIANTS names kernels nobody declares: {sorted(unknown)}")


def expand(template_paths, out_dir):
    """Expand each <name>.pxi.tp into out_dir/<name>.pxi (rewritten only when it changes)."""
    gen = Generator()
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path in sorted(template_paths):
        with open(path) as f:
            text = f.read()
        ns = {"scalars": gen.scalars, "chunk": gen.chunk, "reduce": gen.reduce,
              "tiles": gen.tiles}
        try:
            body = Template(text, name=path, namespace=ns).substitute()
        except GenError as e:
            raise GenError(f"{path}: {e}") from None
        name = os.path.basename(path)[:-len(".tp")]
        body = (f"# Generated from {path} by cython_kernels/kernelgen.py. Do not edit.\n" + body)
        dest = os.path.join(out_dir, name)
        if not os.path.exists(dest) or open(dest).read() != body:
            with open(dest, "w") as f:
                f.write(body)
        written.append(dest)
    gen.check()
    # The include list of every family, so a new family is one new .pxi.tp and nothing else.
    families = "".join(f'include "{os.path.basename(w)}"\n' for w in written)
    dest = os.path.join(out_dir, "families.pxi")
    text = "# Generated by cython_kernels/kernelgen.py: every family. Do not edit.\n" + families
    if not os.path.exists(dest) or open(dest).read() != text:
        with open(dest, "w") as f:
            f.write(text)
    return written + [dest]
