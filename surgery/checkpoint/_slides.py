"""Step 4 of :mod:`surgery.checkpoint._align`: which aligned pairs another alignment could replace.

Positions are into the two pending token sequences (checkpoint ``tc``, model
``tm``); ``pairs`` maps model position -> checkpoint position. Each function
returns model position -> its ambiguity group ``(model positions, checkpoint
positions)``; the members of one group share the two set objects.
"""

from __future__ import annotations

import bisect

__all__ = ["run_slides", "slides"]


def run_slides(
    tc: list[int], tm: list[int], runs: list[tuple[int, int, int]], pairs: dict[int, int]
) -> dict[int, tuple[set[int], set[int]]]:
    """Runs of aligned tensors that fit as well at another free place (a second copy).

    A run's token sequence found again in free positions of one side, with no other
    aligned tensor in between, is an alignment of the same size: every pair of the
    run is ambiguous, with the tensors of both places as candidates.
    """
    groups: dict[int, tuple[set[int], set[int]]] = {}
    taken_c = set(pairs.values())
    taken_m = set(pairs)
    for side, seq, taken in (("c", tc, taken_c), ("m", tm, taken_m)):
        for r, (a0, b0, n) in enumerate(runs):
            start = a0 if side == "c" else b0
            window = seq[start : start + n]
            lo = (runs[r - 1][0 if side == "c" else 1] + runs[r - 1][2]) if r else 0
            hi = runs[r + 1][0 if side == "c" else 1] if r + 1 < len(runs) else len(seq)
            for s0 in range(lo, hi - n + 1):
                if s0 == start or seq[s0] != window[0] or seq[s0 : s0 + n] != window:
                    continue
                if any(x in taken for x in range(s0, s0 + n)):
                    continue
                for k in range(n):
                    q, p = b0 + k, a0 + k
                    if side == "c":
                        g = groups.setdefault(q, ({q}, {p}))
                        g[1].add(s0 + k)
                    else:
                        g = groups.setdefault(q, ({q}, {p}))
                        g[0].add(s0 + k)
                        groups[s0 + k] = g
        # a suffix (prefix) of a run shifted into the free tensors right after (before) it
        for r, (a0, b0, n) in enumerate(runs):
            start = a0 if side == "c" else b0
            end = start + n
            nxt = runs[r + 1][0 if side == "c" else 1] if r + 1 < len(runs) else len(seq)
            prv = (runs[r - 1][0 if side == "c" else 1] + runs[r - 1][2]) if r else 0
            for d in range(1, min(nxt - end, _MAX_SHIFT) + 1):
                k = 0
                while k < min(n, _MAX_SHIFT) and seq[end - 1 - k] == seq[end - 1 - k + d]:
                    k += 1
                for x in range(end - k, end):
                    _add(groups, side, b0 + (x - start), a0 + (x - start), x + d)
            for d in range(1, min(start - prv, _MAX_SHIFT) + 1):
                k = 0
                while k < min(n, _MAX_SHIFT) and seq[start + k] == seq[start + k - d]:
                    k += 1
                for x in range(start, start + k):
                    _add(groups, side, b0 + (x - start), a0 + (x - start), x - d)
    return groups


_MAX_SHIFT = 512


def _add(
    groups: dict[int, tuple[set[int], set[int]]], side: str, q: int, p: int, other: int
) -> None:
    """Pair (q, p) could also be (q, other) [side "c"] or (other, p) [side "m"]."""
    g = groups.setdefault(q, ({q}, {p}))
    if side == "c":
        g[1].add(other)
    else:
        g[0].add(other)
        groups[other] = g


def slides(
    tc: list[int],
    tm: list[int],
    pairs: dict[int, int],
    unique: set[int],
    groups: dict[int, tuple[set[int], set[int]]],
) -> dict[int, tuple[set[int], set[int]]]:
    """Pairs that another alignment of the same size could replace (see step 4).

    Returns model position -> its group (model positions, checkpoint positions);
    the positions of one group share the set objects.
    """
    if not pairs:
        return groups
    by_c = {p: q for q, p in pairs.items()}

    def merge(qs: set[int], ps: set[int]) -> None:
        ms, cs = set(qs), set(ps)
        for q in list(qs):
            if q in groups:
                gm, gc = groups[q]
                ms |= gm
                cs |= gc
        for q in ms:
            groups[q] = (ms, cs)

    changed = True
    while changed:
        changed = False
        kept = sorted((p, q) for q, p in pairs.items() if q not in groups and q not in unique)
        kept_c = [p for p, _ in kept]
        kept_m = sorted(q for _, q in kept)
        pos_c = {p: q for p, q in kept}
        pos_m = {q: p for p, q in kept}
        free_c = [p for p in range(len(tc)) if p not in by_c or by_c[p] in groups]
        free_m = [q for q in range(len(tm)) if q not in pairs or q in groups]
        for p in free_c:  # a free checkpoint tensor next to a kept pair of its token
            for n in _neighbours(kept_c, p):
                q = pos_c[n]
                if tc[n] == tc[p] and q not in groups:
                    merge({q}, {n, p})
                    changed = True
        for q in free_m:  # a free model tensor next to a kept pair of its token
            for n in _neighbours(kept_m, q):
                p = pos_m[n]
                if tm[n] == tm[q] and n not in groups:
                    merge({n, q}, {p})
                    changed = True
        if changed:
            # a free element joins the groups it can slide into
            for g_m, g_c in list(groups.values()):
                for q in list(g_m):
                    if q in pairs:
                        g_c.add(pairs[q])
    return groups


def _neighbours(sorted_positions: list[int], p: int) -> list[int]:
    k = bisect.bisect_left(sorted_positions, p)
    out = []
    if k > 0:
        out.append(sorted_positions[k - 1])
    if k < len(sorted_positions) and sorted_positions[k] != p:
        out.append(sorted_positions[k])
    return out
