# cython: language_level=3
"""What this CPU and its OS can run, asked of the CPU itself (CPUID and XGETBV).

Compiled once, with no instruction-set flags, so it imports on any CPU of the platform. The
kernel loader (fusedoptim/_kernels.py) asks it before importing an AVX2 or AVX-512 build,
so forcing a level the CPU lacks is an ImportError and never an illegal instruction.

A feature counts only when the CPU has it *and* the OS saves its registers: AVX needs the
XMM and YMM state enabled in XCR0, AVX-512 also the opmask and ZMM state. That is the rule
NumPy's own dispatcher follows; the names are NumPy's (``__cpu_features__``), and a test
checks that both probes agree.
"""

cdef extern from *:
    """
    #if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
    #define FO_X86 1
    #if defined(_MSC_VER) && !defined(__clang__)
    #include <intrin.h>
    static void fo_cpuid(int leaf, int sub, unsigned r[4]) {
        int o[4]; __cpuidex(o, leaf, sub);
        r[0] = (unsigned)o[0]; r[1] = (unsigned)o[1]; r[2] = (unsigned)o[2]; r[3] = (unsigned)o[3];
    }
    static unsigned long long fo_xcr0(void) { return _xgetbv(0); }
    #else
    #include <cpuid.h>
    static void fo_cpuid(int leaf, int sub, unsigned r[4]) {
        __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    }
    /* The xgetbv mnemonic as bytes: no -mxsave needed, and this file has no ISA flags. */
    static unsigned long long fo_xcr0(void) {
        unsigned lo, hi;
        __asm__ volatile (".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
        return ((unsigned long long)hi << 32) | lo;
    }
    #endif
    #else
    #define FO_X86 0
    static void fo_cpuid(int leaf, int sub, unsigned r[4]) { r[0] = r[1] = r[2] = r[3] = 0; }
    static unsigned long long fo_xcr0(void) { return 0; }
    #endif
    static int fo_is_x86(void) { return FO_X86; }
    """
    int fo_is_x86() noexcept nogil
    void fo_cpuid(int leaf, int sub, unsigned* r) noexcept nogil
    unsigned long long fo_xcr0() noexcept nogil


cdef inline bint _bit(unsigned word, int bit) noexcept nogil:
    return (word >> bit) & 1u


# XCR0 bits: 1 SSE (XMM), 2 AVX (YMM upper halves), 5 opmask, 6 ZMM upper halves, 7 ZMM16-31.
cdef unsigned long long _XCR0_AVX = 0x06
cdef unsigned long long _XCR0_AVX512 = 0xE6

FEATURES = ("SSE2", "AVX", "F16C", "FMA3", "AVX2",
            "AVX512F", "AVX512CD", "AVX512VL", "AVX512BW", "AVX512DQ")


def cpu_features():
    """Every feature in FEATURES mapped to True when this CPU and its OS can run it."""
    cdef unsigned r[4]
    cdef unsigned ecx1, edx1, ebx7
    cdef unsigned long long xcr0 = 0
    found = dict.fromkeys(FEATURES, False)
    if not fo_is_x86():
        return found
    fo_cpuid(0, 0, r)
    max_leaf = r[0]
    fo_cpuid(1, 0, r)
    ecx1, edx1 = r[2], r[3]
    ebx7 = 0
    if max_leaf >= 7:
        fo_cpuid(7, 0, r)
        ebx7 = r[1]
    if _bit(ecx1, 27):                      # OSXSAVE: the OS uses XSAVE, so XGETBV works
        xcr0 = fo_xcr0()
    os_avx = (xcr0 & _XCR0_AVX) == _XCR0_AVX
    os_avx512 = (xcr0 & _XCR0_AVX512) == _XCR0_AVX512
    found["SSE2"] = bool(_bit(edx1, 26))
    found["AVX"] = bool(_bit(ecx1, 28)) and os_avx
    found["F16C"] = found["AVX"] and bool(_bit(ecx1, 29))
    found["FMA3"] = found["AVX"] and bool(_bit(ecx1, 12))
    found["AVX2"] = found["AVX"] and bool(_bit(ebx7, 5))
    avx512 = found["AVX"] and os_avx512
    found["AVX512F"] = avx512 and bool(_bit(ebx7, 16))
    for name, bit in (("AVX512DQ", 17), ("AVX512CD", 28), ("AVX512BW", 30), ("AVX512VL", 31)):
        found[name] = found["AVX512F"] and bool(_bit(ebx7, bit))
    return found
