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

Body signatures: chunk  body(<one pointer per used buffer>, n, [s], [flags...])
                 reduce body(<pointers>, n, [s], out, [flags...]) -> int (nonzero: stop early)
Buffer roles, by buffer column: "param", "grad" (passed const), "state", or "-" (not used).
Each role's storage comes from the variant's (param, grad, state) storages, via its codec
(codecs.h).
"""

import keyword
import os

from Cython.Tempita import Template

# -- storages and their codecs (codecs.h) --------------------------------------------------------
# storage -> (driver storage id, C element type, compute type, identity codec?)
# An identity storage is handed to the body as a plain pointer: the compiler sees p[i].
# A non-identity storage (bf16, f16, int8/int4 blocks: issue 11) needs the tile path: decode a
# block into a compute-type array on the stack (fo_<st>_decode), run the same body on it,
# encode it back (fo_<st>_encode). Blocks never span two work units (_driver._cut_units).
STORAGES = {
    "f32": ("ST_F32", "float", "float", True),
    "f64": ("ST_F64", "double", "double", True),
}

# -- THE WHITELIST: which (param, grad, state) storage combinations each kernel is built and
# registered for. Register only what the Python layer can request, and test every row.
DEFAULT_VARIANTS = (("f32", "f32", "f32"), ("f64", "f64", "f64"))
VARIANTS = {
    # kernel name -> its rows, where they differ from DEFAULT_VARIANTS
    "_thread_id_f32_only": (("f32", "f32", "f32"),),
}

ROLES = ("param", "grad", "state")
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
    def chunk(self, name, body, buffers, scalars=None, flags="", modes=None):
        return self._kernel("chunk", name, body, buffers, scalars, flags, modes, None)

    def reduce(self, name, body, buffers, scalars=None, flags="", modes=None, outputs=()):
        if not outputs:
            raise GenError(f"reduce kernel {name!r} needs outputs")
        return self._kernel("reduce", name, body, buffers, scalars, flags, modes, outputs)

    def _kernel(self, kind, name, body, buffers, scalars, flags, modes, outputs):
        if name in self.kernels:
            raise GenError(f"kernel {name!r} declared twice")
        self.kernels.add(name)
        roles = buffers.split()
        for r in roles:
            if r not in ROLES + ("-",):
                raise GenError(f"{name}: buffer role {r!r} is not one of {ROLES} or '-'")
        used = [(i, r) for i, r in enumerate(roles) if r != "-"]
        flags = flags.split()
        names = self.scalar_sets.get(scalars) if scalars else None
        if scalars and names is None:
            raise GenError(f"{name}: scalars {scalars!r} not declared (declare them first)")
        is_reduce = kind == "reduce"
        ret = "int" if is_reduce else "void"
        out = []

        # The body's call, with the flags appended.
        call_args = [f"b{i}" for i, _ in used] + ["n"]
        if names is not None:
            call_args.append("s")
        if is_reduce:
            call_args.append("out")
        call = f"{body}({', '.join(call_args)}"

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
            sig = [f"{'const ' if r == 'grad' else ''}floating* b{i}" for i, r in used]
            sig += ["Py_ssize_t n", f"const {scalars}_scalars* s"]
            if is_reduce:
                sig.append("double* out")
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
                if not is_reduce:
                    pass
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

        # One entry point per whitelisted storage row.
        rows = VARIANTS.get(name, DEFAULT_VARIANTS)
        regs = []
        for row in rows:
            if len(row) != 3 or any(st not in STORAGES for st in row):
                raise GenError(f"{name}: variant {row!r} names an unknown storage")
            storage_of = dict(zip(ROLES, row))
            computes = {STORAGES[st][2] for st in row}
            compute = "double" if "double" in computes else "float"
            for i, r in used:
                st = storage_of[r]
                if not STORAGES[st][3] or STORAGES[st][1] != compute:
                    raise GenError(f"{name}: variant {row!r} needs the tile path (decode into "
                                   f"{compute} tiles, run the body, encode back): not "
                                   f"generated yet (issue 11)")
            entry = f"{name}__{'_'.join(row)}"
            ptrs = []
            for i, r in used:
                ctype = STORAGES[storage_of[r]][1]
                q = "const " if r == "grad" else ""
                ptrs.append(f"(<{q}{ctype}*>b[{i}]) + start")
            args = ptrs + ["n"]
            if names is not None:
                args.append(f"<const {scalars}_scalars*>hp")
            if is_reduce:
                args.append("out")
            head = call.split("(", 1)[0]
            if is_reduce:
                out.append(f"cdef int {entry}(char** b, Py_ssize_t start, Py_ssize_t n, "
                           f"const double* hp, double* out) noexcept nogil:")
                out.append(f"    return {head}({', '.join(args)})")
            else:
                out.append(f"cdef void {entry}(char** b, Py_ssize_t start, Py_ssize_t n, "
                           f"const double* hp) noexcept nogil:")
                out.append(f"    {head}({', '.join(args)})")
            out.append("")
            out.append("")
            ids = ", ".join(STORAGES[st][0] for st in row)
            stup = f"{scalars.upper()}_SCALARS" if names is not None else "()"
            if is_reduce:
                regs.append(f"register_reduce({name!r}, {ids}, {entry}, {stup}, {outputs!r})")
            else:
                regs.append(f"register_chunk({name!r}, {ids}, {entry}, {stup})")
        if names is not None:
            regs.append(f"_check_scalars_struct({scalars!r}, sizeof({scalars}_scalars), "
                        f"{len(names)})")
        if modes is not None:
            regs.append(f"register_modes({name!r}, {is_reduce}, {names.index('mode')}, "
                        f"{modes!r})")
        out += regs
        return "\n".join(out)

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
        ns = {"scalars": gen.scalars, "chunk": gen.chunk, "reduce": gen.reduce}
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
