"""Process-wide settings, made once by each entry point (docs/design.md §6.3).

The command line (``sdecore.cli``), the dashboard (``dashboard/app.py``) and the benchmarks
(``bench``) call :func:`configure_threads` before anything imports torch; a program that
uses ``sdecore`` as a library keeps its own settings. Nothing here imports torch.
"""

from __future__ import annotations

import os


def configure_threads() -> None:
    """Passive OpenMP waiting (``OMP_WAIT_POLICY=PASSIVE``) unless the environment says otherwise.

    Idle OpenMP threads that spin (the default of the runtime torch ships with) slow torch
    many times over on a busy 2-core machine, and after numba (UMAP) has run in the same
    process. The runtime reads the variable when it loads, so this must run before torch
    is imported.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def quiet_libraries() -> None:
    """No progress bars from the Hugging Face libraries (such as sentence-transformers'
    "Loading weights") and only their errors, unless the environment says otherwise: the
    command line's output is its own. ``--verbose`` skips this."""
    for var, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_VERBOSITY", "error"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(var, value)
