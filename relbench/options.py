"""Bounds of the run options that evaluate, generate and sweep share: output size and seeds.

Checked before any model loads, each mistake as one line naming the option: a typo such as
``--resolution 100000`` would otherwise take tens of GB before the allocator gives up, and
``--seeds 99999999999999999999`` would overflow inside torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from relbench.errors import RelbenchError

# Output side in pixels. SDXL-based methods work at 1024; 4096 is 16 times its pixels, about as far
# as an 80 GB GPU decodes, and far below what a mistyped size would ask for.
MAX_RESOLUTION = 4096
# Seeds seed numpy (which takes 0..2**32-1) as well as torch.
MAX_SEED = 2**32 - 1


def size_multiple(multiples: Iterable[int]) -> int:
    """The smallest size step every method accepts (their ``resolution_multiple``s' lcm)."""
    import math

    return math.lcm(8, *multiples)


def check_resolution(size: Any, multiple: int = 8, where: str = "--resolution") -> int:
    """``size`` if it is a multiple of ``multiple`` from ``multiple`` to MAX_RESOLUTION, else one line.
    0 is refused too (not read as "the default": a default is chosen by leaving the option out)."""
    if isinstance(size, bool) or not isinstance(size, int) or not multiple <= size <= MAX_RESOLUTION or size % multiple:
        raise RelbenchError(f"{where}: expected a multiple of {multiple} from {multiple} to {MAX_RESOLUTION}, got {size!r}")
    return size


def check_seed(seed: Any, where: str = "--seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise RelbenchError(f"{where}: expected an integer from 0 to {MAX_SEED} (2**32 - 1), got {seed!r}")
    return seed


def check_seeds(seeds: Sequence[Any], where: str = "--seeds") -> tuple[int, ...]:
    """At least one seed, each in range, none twice (a repeated seed would make the same image twice
    and store it once)."""
    if not seeds:
        raise RelbenchError(f"{where}: expected at least one seed")
    checked = tuple(check_seed(seed, where) for seed in seeds)
    repeated = [seed for seed, n in Counter(checked).items() if n > 1]
    if repeated:
        raise RelbenchError(f"{where}: seed {repeated[0]} given more than once; give each seed once")
    return checked
