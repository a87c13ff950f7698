import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton reads this when a kernel is defined: without a GPU, run the kernels in the interpreter
if not os.environ.get("E2UREC_GPU_TESTS"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2urec_fast.data.synthetic import make_ml1m  # noqa: E402,F401  (tests import it from here)


def bench_module(name: str):
    """A script of benchmarks/ (not a package) loaded as a module, e.g. bench_module("bench_unlearn")."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def ml1m_dir(tmp_path):
    return make_ml1m(tmp_path / "ml1m")
