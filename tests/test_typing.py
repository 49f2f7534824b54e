"""The package type-checks: ``mypy`` (strict, as configured in pyproject.toml) passes on the
source tree's src/fusedoptim, the demo package excluded.

The compiled kernels are not needed: src/fusedoptim/_kernels.pyi stands in for them. The
check reads the repository's files, so it is skipped when the tests run without the source
tree beside them, or without mypy (the ``test`` extra installs it).
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "fusedoptim"
CONFIG = ROOT / "pyproject.toml"


def test_mypy_strict_passes_on_the_package(request, tmp_path, monkeypatch):
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install .[test])")
    if not (PACKAGE / "__init__.py").is_file() or not CONFIG.is_file():
        pytest.skip(f"no source tree at {ROOT} (src/fusedoptim and pyproject.toml): the "
                    f"typing check reads the repository, not the installed package")
    # A cache that survives between runs (pytest's own cache directory) keeps reruns fast;
    # without pytest's cache plugin, a fresh one under the test's tmp_path.
    cache = getattr(request.config, "cache", None)
    cache_dir = cache.mkdir("mypy") if cache is not None else tmp_path / "mypy_cache"
    # pyproject's [tool.mypy] names the files ("src/fusedoptim") and the demo exclusion
    # relative to the repository root.
    monkeypatch.chdir(ROOT)
    stdout, stderr, status = api.run(["--config-file", str(CONFIG),
                                      "--cache-dir", str(cache_dir)])
    assert status == 0, f"mypy reported problems (exit status {status}):\n{stdout}{stderr}"
