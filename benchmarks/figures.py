"""The figures a benchmark prints as it goes and keeps for its JSON summary."""

from __future__ import annotations

from common import load

FIGURES: dict = {}


def say(key: str, text: str, value=None) -> None:
    """Print a figure and keep it for the JSON summary."""
    print(f"{key}: {text}  [load {load()}]", flush=True)
    FIGURES[key] = value if value is not None else text


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
