import os
import zlib
import sys

# The tests interleave fused calls with NumPy references. With libgomp's default active
# waiting, idle OpenMP workers spin after every fused call and, on a small shared machine,
# slow the NumPy side several-fold (about 3x on the suite's wall time here). Results do not
# depend on the wait policy. Set before any OpenMP runtime is loaded; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np
import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:     # the test extra brings it; without it tests/property skips (its conftest)
    settings = None

# Hypothesis profiles for tests/property (registered here, where every run under tests/ sees
# them before the plugin reads --hypothesis-profile). "ci", the default: a fixed number of
# examples (about 2000 over the suite), derandomized: each test draws the same examples on
# every run and machine, so CI is reproducible and a failure replays from its log alone, with
# no example database to carry between runs. "long" (--hypothesis-profile=long): 100x the
# examples, random, with the local example database (.hypothesis/) replaying what failed.
# No deadline: a shared 2-core machine's timings say nothing about the code.
PROPERTY_EXAMPLES_PER_TEST = 500
if settings is not None:
    settings.register_profile(
        "ci", max_examples=PROPERTY_EXAMPLES_PER_TEST, derandomize=True, database=None,
        deadline=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile(
        "long", parent=settings.get_profile("ci"),
        max_examples=100 * PROPERTY_EXAMPLES_PER_TEST, derandomize=False,
        database=settings.default.database)
    settings.load_profile("ci")

sys.path.insert(0, os.path.dirname(__file__))

SHAPES = [(), (0,), (7,), (3, 5), (40_000,)]   # 0-d, empty, odd, 2-d, several work units


def make_params(rng, dtype, shapes=SHAPES, scale=1.0):
    return [np.asarray(rng.standard_normal(s) * scale, dtype=dtype) for s in shapes]


def ulp_distance(a, b):
    """Elementwise distance in units in the last place (float32 or float64)."""
    a = np.asarray(a)
    b = np.asarray(b)
    itype = np.int32 if a.dtype == np.float32 else np.int64
    ai = a.view(itype).astype(np.int64)
    bi = b.view(itype).astype(np.int64)
    # Map the sign-magnitude float order onto a monotone integer line.
    ai = np.where(ai < 0, np.iinfo(itype).min - ai, ai)
    bi = np.where(bi < 0, np.iinfo(itype).min - bi, bi)
    return np.abs(ai - bi)


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
