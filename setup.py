"""e2urec_fast: fast, faithful E2URec unlearning for LLM recommenders.

The top-level `kernels/` folder installs as `e2urec_fast.kernels` (a top-level
package named `kernels` would shadow the PyPI package of that name, which
bitsandbytes imports). The native op in `csrc/` is compiled at first use with
torch.utils.cpp_extension (cached), so `pip install` never needs a second torch in
a build environment; see e2urec_fast/native.py.
"""

from setuptools import setup

setup(
    name="e2urec_fast",
    version="0.1.0",
    description="Fast, faithful E2URec unlearning for LLM recommenders (LoRA student, cached teachers, fused kernels)",
    python_requires=">=3.10",
    packages=["e2urec_fast", "e2urec_fast.data", "e2urec_fast.models", "e2urec_fast.methods", "e2urec_fast.kernels",
              "e2urec_fast.csrc"],
    package_dir={"e2urec_fast": "e2urec_fast", "e2urec_fast.kernels": "kernels", "e2urec_fast.csrc": "csrc"},
    package_data={"e2urec_fast.csrc": ["*.cpp", "*.cu", "*.h"]},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0",
        "transformers>=5.0",
        "tokenizers>=0.20",
        "bitsandbytes>=0.45",
        "safetensors>=0.4",
        "numpy>=1.24",
        "scikit-learn>=1.3",
        "scipy>=1.10",  # the audit's forget quality (two-sample KS test)
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6", "ruff>=0.5", "peft>=0.13"]},
)
