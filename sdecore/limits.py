"""Valid ranges of user-facing settings, and the checks that enforce them (docs/design.md §5.2).

One place for every range: the command line builds its argument types from these checks,
the library calls them on entry, and the dashboard sizes its widgets from :data:`LIMITS`.
Each check raises ``ValueError`` with a message that names the setting (``--paths``) and
its valid range, and returns the value converted to its plain Python type.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable

MAX_PROMPT_TOKENS = 512  # a longer prompt keeps its last MAX_PROMPT_TOKENS tokens
LIMITS: dict[str, tuple[float, float]] = {
    "paths": (1, 4096),
    "tokens": (1, 512),
    "diffusion_scale": (0.0, 10.0),
    "substeps": (1, 64),
}
SOLVERS = ("em", "euler", "milstein", "srk")
MAP_KINDS = ("none", "pca", "umap")  # the reference map a training run fits
PRECISIONS = ("fp32", "bf16")  # training's forward pass: float32, or bfloat16 autocast (docs/design.md §2.5)
DEVICES = ("auto", "cpu", "cuda")  # and cuda:N


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_int(value, flag: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool, not 1.5) within [lo, hi] (either bound may be open)."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            value = value.strip()
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (lo is None or value >= lo) and (hi is None or value <= hi):
        return int(value)
    if lo is not None and hi is not None:
        want = f"an integer between {lo} and {hi}"
    elif lo == 0:
        want = "a non-negative integer"
    elif lo is not None:
        want = f"an integer of at least {lo}"
    else:
        want = f"an integer of at most {hi}"
    raise ValueError(f"{flag} must be {want}, got {value!r}")


def check_number(value, flag: str, lo: float | None = None, hi: float | None = None) -> float:
    """A finite real number within [lo, hi] (either bound may be open)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            value = value.strip()
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and (lo is None or value >= lo) and (hi is None or value <= hi):
        return float(value)
    if lo is not None and hi is not None:
        want = f"a finite number between {lo:g} and {hi:g}"
    elif lo is not None:
        want = f"a finite number of at least {lo:g}"
    else:
        want = f"a finite number of at most {hi:g}"
    raise ValueError(f"{flag} must be {want}, got {value!r}")


def check_limit(name: str, value, flag: str | None = None):
    """``value`` checked against ``LIMITS[name]`` (integers for paths, tokens, substeps)."""
    lo, hi = LIMITS[name]
    flag = flag or _flag(name)
    if isinstance(lo, int):
        return check_int(value, flag, lo, hi)
    return check_number(value, flag, lo, hi)


def check_seed(value, flag: str = "--seed") -> int:
    return check_int(value, flag, lo=0)


def check_temperature(value, flag: str = "--temperature") -> float:
    return check_number(value, flag, lo=0.0)


def check_choice(value, choices: Iterable[str], flag: str) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_device(value: str, flag: str = "--device") -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; whether a GPU is there is checked where it is used."""
    if isinstance(value, str) and (value in DEVICES or (value.startswith("cuda:") and value[5:].isdigit())):
        return value
    raise ValueError(f"{flag} must be one of {', '.join(DEVICES)} or cuda:N, got {value!r}")


def check_scales(values, flag: str = "--scales") -> tuple[float, ...]:
    """A non-empty list of diffusion scales, each within ``LIMITS['diffusion_scale']``; duplicates dropped."""
    lo, hi = LIMITS["diffusion_scale"]
    try:
        values = list(values)
    except TypeError:
        raise ValueError(f"{flag} must be a list of numbers between {lo:g} and {hi:g}, got {values!r}") from None
    if not values:
        raise ValueError(f"{flag} is empty; give at least one diffusion scale between {lo:g} and {hi:g}, e.g. 0 0.5 1")
    return tuple(dict.fromkeys(check_limit("diffusion_scale", v, flag) for v in values))


def check_lengths(values, flag: str = "--lengths") -> tuple[int, ...]:
    """A non-empty list of continuation lengths within ``LIMITS['tokens']``, sorted, duplicates dropped."""
    values = list(values)
    if not values:
        raise ValueError(f"{flag} is empty; give at least one continuation length between 1 and "
                         f"{LIMITS['tokens'][1]}, e.g. 16 64")
    return tuple(sorted({check_limit("tokens", v, flag) for v in values}))


def progress_delay() -> float:
    """Seconds before the progress bar shows: 2, or tqdm's own ``TQDM_DELAY``."""
    value = os.environ.get("TQDM_DELAY", "2")
    try:
        delay = float(value)
    except ValueError:
        delay = math.nan
    if not delay >= 0:
        raise ValueError(f"TQDM_DELAY must be a number of seconds (0 or more), not {value!r}")
    return delay
