"""Per-group bottom-k selection over a stream: running top-k lists and uniform reservoirs.

`GroupedBottomK(k, n_groups)` keeps, for every group, the k entries with the smallest key seen
so far, with any payload tensors carried along. With key = -activation it is a running top-k per
feature; with key = uniform random it is a uniform sample without replacement per group
(bottom-k sampling, equivalent to reservoir sampling), all vectorized in torch.
"""

from __future__ import annotations

import torch


def rank_within_groups(sorted_groups: torch.Tensor) -> torch.Tensor:
    """Rank of each entry inside its group for group ids sorted ascending: [m] -> [m] int64."""
    first_of_group = torch.searchsorted(sorted_groups, sorted_groups, right=False)
    return torch.arange(len(sorted_groups), device=sorted_groups.device) - first_of_group


def bottom_k_per_group(groups: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (into the inputs) of the k smallest keys in each group, ordered by (group, key).

    groups: [m] int64, keys: [m] float. Returns [m'] int64 with m' <= m.
    """
    if groups.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=groups.device)
    by_key = torch.argsort(keys, stable=True)
    order = by_key[torch.argsort(groups[by_key], stable=True)]
    return order[rank_within_groups(groups[order]) < k]


class GroupedBottomK:
    """Running selection of the k smallest-key entries per group (memory <= n_groups * k).

    Once a group holds k entries, offers with a key not below its current k-th smallest are
    dropped before any sorting, so a long stream costs little more than one comparison per
    offered entry.
    """

    def __init__(self, k: int, n_groups: int):
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        self.k = k
        self.n_groups = n_groups
        self.threshold = torch.full((n_groups,), float("inf"))
        self.groups = torch.zeros(0, dtype=torch.long)
        self.keys = torch.zeros(0)
        self.payload: dict[str, torch.Tensor] = {}

    def add(self, groups: torch.Tensor, keys: torch.Tensor, **payload: torch.Tensor) -> None:
        """Offer entries: groups [m] int64 in [0, n_groups), keys [m], payload tensors [m]."""
        groups, keys = groups.detach().cpu().long(), keys.detach().cpu().float()
        useful = keys < self.threshold[groups]
        groups, keys = groups[useful], keys[useful]
        payload = {name: t.detach().cpu()[useful] for name, t in payload.items()}
        if not self.payload:
            self.payload = {name: t[:0] for name, t in payload.items()}
        if set(payload) != set(self.payload):
            raise ValueError(f"payload names changed: {sorted(payload)} vs {sorted(self.payload)}")
        if len(groups) == 0:
            return
        all_groups = torch.cat([self.groups, groups])
        all_keys = torch.cat([self.keys, keys])
        keep = bottom_k_per_group(all_groups, all_keys, self.k)
        self.groups, self.keys = all_groups[keep], all_keys[keep]
        self.payload = {
            name: torch.cat([self.payload[name], payload[name]])[keep] for name in self.payload
        }
        full = torch.bincount(self.groups, minlength=self.n_groups) >= self.k
        largest = torch.full((self.n_groups,), -float("inf")).scatter_reduce(
            0, self.groups, self.keys, reduce="amax")
        self.threshold = torch.where(full, largest, torch.full_like(largest, float("inf")))

    def result(self) -> dict[str, torch.Tensor]:
        """{"group", "key", **payload}, ordered by group then key."""
        return {"group": self.groups, "key": self.keys, **self.payload}
