"""Bounded-memory helpers for fits on data streams: a uniform row sample.

``weights_fingerprint`` lives in :mod:`.fingerprint` (re-exported here for older imports)."""

import bisect

import torch

from .fingerprint import weights_fingerprint  # noqa: F401


class UniformItemSample:
    """A uniform sample of whole items (e.g. images of different sizes) of a stream whose
    total ``size`` (e.g. pixels) stays within ``budget``: every item draws a random key; the
    items of smallest keys are kept while their sizes fit (the first item always)."""

    def __init__(self, budget: int, seed: int = 0):
        if budget < 1:
            raise ValueError(f"sample budget must be >= 1, got {budget}")
        self.budget = budget
        self.generator = torch.Generator().manual_seed(seed)
        self.kept = []  # (key, size, item), by key
        self.seen = 0

    def add(self, item, size: int):
        self.seen += 1
        key = float(torch.rand((), generator=self.generator))
        bisect.insort(self.kept, (key, size, item), key=lambda entry: entry[0])
        total, keep = 0, []
        for entry in self.kept:
            if keep and total + entry[1] > self.budget:
                break
            keep.append(entry)
            total += entry[1]
        self.kept = keep
        return self

    @property
    def items(self):
        return [item for _, _, item in self.kept]


class UniformSample:
    """A uniform sample without replacement of at most ``size`` rows of a stream, in bounded
    memory: every row draws a random key and the ``size`` smallest keys are kept (the keys
    are i.i.d., so the kept set is uniform among all subsets of that size).

    ``add(values, *columns)``: ``values`` (N, C) and any number of (N,) columns (labels,
    classes, flags) of N new rows; the sample is ``self.values`` and ``self.columns``.
    """

    def __init__(self, size: int, seed: int = 0):
        if size < 1:
            raise ValueError(f"sample size must be >= 1, got {size}")
        self.size = size
        self.generator = torch.Generator().manual_seed(seed)
        self.keys = torch.empty(0)
        self.values, self.columns = None, None
        self.seen = 0

    def add(self, values: torch.Tensor, *columns: torch.Tensor):
        n = len(values)
        if any(len(c) != n for c in columns):
            raise ValueError(
                f"sample rows differ in length: {n} values, columns of {[len(c) for c in columns]}"
            )
        self.seen += n
        keys = torch.rand(n, generator=self.generator)
        values, columns = values.detach().cpu(), [c.detach().cpu() for c in columns]
        if self.values is None:
            self.values, self.columns = values[:0], [c[:0] for c in columns]
        if len(self.keys) == self.size:  # full: only keys below the largest kept can enter
            enter = keys < self.keys.max()
            keys, values, columns = keys[enter], values[enter], [c[enter] for c in columns]
        keys = torch.cat([self.keys, keys])
        values = torch.cat([self.values, values])
        columns = [torch.cat([old, new]) for old, new in zip(self.columns, columns)]
        if len(keys) > self.size:
            keys, keep = keys.topk(self.size, largest=False)
            values, columns = values[keep], [c[keep] for c in columns]
        self.keys, self.values, self.columns = keys, values, columns
        return self
