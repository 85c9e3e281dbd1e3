"""Composition blocks, as AdapterHub has them: tiny values, not code paths.

`Stack("a", "b")` applies `a` then `b`; `Parallel("a", "b")` applies both to the same input
and sums their contributions; `Fuse("a", "b")` (AdapterFusion, see `fusion.py`) lets a learned
attention weigh the adapters' outputs per token. Each adapter layer reads the active
setup and interprets it for its own method.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, init=False)
class Block:
    """An ordered, non-empty tuple of adapter names; its subclass says how they compose.

    Use `Stack`, `Parallel` or `Fuse`: each adapter layer reads the subclass.
    """

    names: tuple[str, ...]

    def __init__(self, *names: str) -> None:
        if not names:
            raise ValueError(f"{type(self).__name__} needs at least one adapter name")
        object.__setattr__(self, "names", tuple(names))

    def __iter__(self):
        return iter(self.names)


class Stack(Block):
    """Adapters applied one after another; the output of one is the input of the next."""


class Parallel(Block):
    """Adapters applied to the same input; their contributions are summed."""


class Fuse(Block):
    """AdapterFusion over bottleneck adapters' outputs (add it with `add_fusion`)."""


Setup = Block | str | None


def as_block(setup: Setup) -> Block | None:
    """Normalise `"a"` to `Stack("a")`, so layers only ever see blocks."""
    if setup is None or isinstance(setup, Block):
        return setup
    if isinstance(setup, str):
        return Stack(setup)
    raise TypeError(f"an active setup is a name, Stack, Parallel or Fuse, not {setup!r}")
