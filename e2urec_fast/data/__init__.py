from .loaders import Interactions, load_dataset, load_goodreads, load_ml1m, load_ml100k  # noqa: F401
from .prepare import Prepared, prepare  # noqa: F401
from .samples import Sample, build_samples, render_prompt, split_samples, target_text  # noqa: F401
