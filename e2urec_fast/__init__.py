"""e2urec_fast: fast, faithful E2URec unlearning for LLM recommenders."""

__version__ = "0.1.0"
