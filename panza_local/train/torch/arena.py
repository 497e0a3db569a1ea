"""One training step's saved activations in a few large reused blocks instead of many heap allocations.

Why: a step's forward keeps ~10 tensors a layer for its backward (0.2-1.2 MB each) while it allocates and
frees much larger temporaries (the 6 MB gate|up product) between them. glibc's heap then holds the kept
tensors with freed holes between them: at seq 512 on SmolLM2-135M, ~350 MB of the step's peak RSS was heap
that nothing used (jemalloc, or a heap trimmed after every free, both peaked ~340 MB lower). Here the
tensors kept for backward are carved, in order, out of 32 MB blocks that live for the whole run: the heap
only sees the temporaries, which free in the order they came.

The big temporaries inside one op (the int32 product, the logits of a chunk) come from `scratch`: one
buffer per purpose, reused by every layer, so that they never reach the heap either.

Safety: `reset` reuses the blocks only when nothing else refers to them (the previous step's backward ran
and freed its saved tensors). Otherwise it starts new blocks and leaves the old ones to whatever still
holds them (a graph nobody ran backward on), so a tensor is never overwritten while it is still needed.
"""

from __future__ import annotations

import math

import torch

BLOCK = 32 * 2**20
ALIGN = 64
UNKNOWN = 1 << 30


def _alias(block: torch.Tensor, offset: int, shape, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of its own on `block`'s storage at byte `offset`, not a view: views share one version
    counter, and autograd would see every later write into the block as a change to each kept tensor."""
    return torch.empty(0, dtype=dtype).set_(block.untyped_storage(), offset // dtype.itemsize, tuple(shape))


def _refs(t: torch.Tensor) -> int:
    """How many tensors share t's storage (a torch without the count: always "more", so never reused)."""
    try:
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata)
    except (AttributeError, RuntimeError):
        return UNKNOWN


class Arena:
    """Bump allocation of tensors out of reused blocks; `reset` before each training forward."""

    def __init__(self, block: int = BLOCK):
        self.block = block
        self.blocks: list[torch.Tensor] = []
        self.base_refs: list[int] = []
        self.cur, self.off = 0, 0
        self.slots: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        """Start a step: reuse the blocks if the previous step's tensors are gone, else new blocks."""
        if any(_refs(b) > r or r >= UNKNOWN for b, r in zip(self.blocks, self.base_refs)):
            self.blocks, self.base_refs = [], []
        self.cur, self.off = 0, 0

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self.blocks)

    def take(self, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """An uninitialised contiguous tensor that lives until the next `reset` (or longer, if held)."""
        n = math.prod(shape) * dtype.itemsize
        size = -(-n // ALIGN) * ALIGN
        while self.cur < len(self.blocks) and self.off + size > self.blocks[self.cur].numel():
            self.cur, self.off = self.cur + 1, 0
        if self.cur == len(self.blocks):
            b = torch.empty(max(self.block, size), dtype=torch.uint8)
            self.blocks.append(b)
            self.base_refs.append(_refs(b))
        t = _alias(self.blocks[self.cur], self.off, shape, dtype)
        self.off += size
        return t

    def scratch(self, slot: str, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A temporary for `slot`, the same memory every call: only for a tensor dead before the slot's next
        use (a product inside one op), never one that leaves the op or is kept for backward."""
        n = math.prod(shape) * dtype.itemsize
        b = self.slots.get(slot)
        if b is None or b.numel() < n:
            self.slots[slot] = b = torch.empty(n, dtype=torch.uint8)
        return _alias(b, 0, shape, dtype)


class ScratchOnly(Arena):
    """Reused scratch (`scratch`) without the bump blocks: `take` is a plain allocation. For a checkpointed
    step, whose backward runs each layer's forward again (it would take fresh room a layer at a time), but
    whose per-op temporaries (the int8 weight made from blocks, the int32 product) are as large as ever."""

    def reset(self) -> None:
        pass

    def take(self, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)


def scratch(arena: Arena | None, slot: str, shape, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """`arena.scratch` (CPU), or a plain `torch.empty` on `device` without an arena."""
    return arena.scratch(slot, shape, dtype) if arena is not None else torch.empty(shape, dtype=dtype, device=device)


def take(arena: Arena | None, shape, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """`arena.take` (CPU), or a plain `torch.empty` on `device` without an arena."""
    return arena.take(shape, dtype) if arena is not None else torch.empty(shape, dtype=dtype, device=device)
