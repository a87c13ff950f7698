"""e2urec_fast: fast, faithful E2URec unlearning for LLM recommenders.

The Triton kernels live in `e2urec_fast/kernels/` (a top-level folder named `kernels`
shadowed the PyPI package of that name for any command run from the checkout's root,
`python -m e2urec_fast.unlearn` included: transformers then imports it and fails). The native op in `csrc/` is compiled at first use with
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
    package_dir={"e2urec_fast": "e2urec_fast", "e2urec_fast.csrc": "csrc"},
    package_data={"e2urec_fast.csrc": ["*.cpp", "*.cu", "*.h"]},
    install_requires=[
        "torch>=2.4",
        # triton ships wheels for Linux only, bitsandbytes for Linux and Windows: elsewhere the
        # package installs without them (the fused KL runs on the native op or torch; --load-in-8bit
        # is refused with one line), and a missing one costs one warning where it would be used
        'triton>=3.0; platform_system == "Linux"',
        "transformers>=5.0",
        "tokenizers>=0.20",
        'bitsandbytes>=0.45; platform_system == "Linux" or platform_system == "Windows"',
        "safetensors>=0.4",
        "numpy>=1.24",
        "scipy>=1.10",  # the audit's forget quality (two-sample KS test)
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6", "ruff>=0.5", "peft>=0.13",
                             "scikit-learn>=1.3"]},  # the metrics are checked against it
)
