"""Find a finished run's summaries in new images (``python -m vislight.apply RUN_DIR ...``).

:func:`~vislight.apply.core.apply_images` is the algorithm on tensors; :func:`apply_run` reads a
run folder, applies it to the images its data config (with overrides) names and writes
``apply/<name>/`` (``apply.json`` and HTML pages linked from the run's report).
"""

from vislight.apply.core import ApplySettings, apply_images, calibrate_on_images, load_prototypes
from vislight.apply.run import apply_run

__all__ = [
    "ApplySettings",
    "apply_images",
    "apply_run",
    "calibrate_on_images",
    "load_prototypes",
]
