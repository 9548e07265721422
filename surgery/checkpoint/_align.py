"""The structural key-matching algorithm behind :func:`surgery.match_keys`.

Pure data in, pure data out: two sequences of :class:`Entry` (checkpoint and
model tensors in registration order, with shapes, dtype kinds and names) become
an :class:`Alignment`. Nothing here reads a tensor. ``docs/matching.md`` explains
the algorithm; in short:

1. **names**: a checkpoint key equal to a model key (after the caller's renames)
   is that key; different shapes make it a mismatch.
2. **order**: the remaining tensors of both sides are aligned as two sequences of
   *tokens* (shape without size-1 dimensions + dtype kind, so that a ``(96, 1, 1)``
   layer scale meets a ``(96,)`` one and a 1x1 convolution a ``nn.Linear``; see
   :mod:`surgery.checkpoint._reshape`) in registration order, with a diff
   (:class:`difflib.SequenceMatcher`, no junk heuristic). Two identical token
   sequences align one to one (the only full alignment).
3. **unique shapes**: a tensor whose token (or exact shape) and kind occur exactly
   once among all checkpoint tensors and once among all model tensors is matched
   even when its position moved (a ``pos_embed`` registered elsewhere; a
   ``(1, 1, 768)`` class token, unique as stored although ``(768,)`` is not).
4. **ambiguity**: an aligned pair is only kept when no other alignment of the
   same size exists locally: a free tensor (unaligned, or aligned ambiguously)
   with the same token that could take the pair's place without crossing another
   kept pair makes both ambiguous; this is repeated until nothing changes.
5. **tie-breaks**: an ambiguous group is resolved only when the evidence picks
   one candidate for each key, distinct: the module tree (the candidate lives in
   the checkpoint module that the model key's module already maps to), then the
   role (the same correspondence of paths with their numbers blanked,
   ``block#-#.f.a.#.weight`` -> ``s#.b#.conv#.conv.weight``, is proven in another
   instance of the block), then the leaf name (``weight`` / ``running_mean``).
   Otherwise it stays ambiguous. The tensors left over by every step are aligned
   once more when their token sequences are identical (a shortcut registered
   first on one side and last on the other).
6. **mismatches**: in a region the diff could not align, leftovers of equal
   number that agree pairwise in kind, and in rank and leaf name or in size, are
   reported as mismatched (a 1000- against a 10-class head), never matched, except
   a matrix ``(out, c*kh*kw)`` against a kernel ``(out, c, kh, kw)`` paired in such a
   region (VGG's classifier as ``nn.Linear`` or as a 7x7 convolution), which is
   matched and loaded reshaped; with different numbers, the leading leftovers of
   the region whose ranks and leaf names agree.

Name matches (step 1) accept the same reshapes (a layer scale stored as
``(C, 1, 1)`` under the model's own name).
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from ._reshape import reshape_kind, squeezed
from ._slides import run_slides, slides

__all__ = ["Alignment", "Entry", "align"]


class Entry(NamedTuple):
    """One tensor: its key (as compared by name), shape and dtype kind."""

    key: str
    shape: tuple[int, ...]
    kind: int  # 0 bool, 1 integer, 2 float, 3 complex

    @property
    def token(self) -> tuple[tuple[int, ...], int]:
        """What alignment compares: the shape without size-1 dimensions, and the kind."""
        return (squeezed(self.shape), self.kind)

    @property
    def exact(self) -> tuple[tuple[int, ...], int]:
        """The shape as stored, and the kind."""
        return (self.shape, self.kind)

    @property
    def leaf(self) -> str:
        return self.key.rpartition(".")[2]

    @property
    def parent(self) -> str:
        return self.key.rpartition(".")[0]


@dataclass
class Alignment:
    """Indices into the model and checkpoint sequences.

    Attributes:
        matched: model index -> (checkpoint index, "name" or "structure").
        mismatched: model index -> checkpoint index (shapes differ).
        ambiguous: groups of (model indices, candidate checkpoint indices).
    """

    matched: dict[int, tuple[int, str]] = field(default_factory=dict)
    mismatched: dict[int, int] = field(default_factory=dict)
    ambiguous: list[tuple[list[int], list[int]]] = field(default_factory=list)


class _Counts:
    """How often each token, and each exact shape, occurs on each side (step 3)."""

    def __init__(self, ckpt: list[Entry], model: list[Entry]) -> None:
        self.exact_c = Counter(e.exact for e in ckpt)
        self.exact_m = Counter(e.exact for e in model)
        self.tok_c = _squeezed_counts(self.exact_c)
        self.tok_m = _squeezed_counts(self.exact_m)

    def diff_token(self, e: Entry) -> tuple[tuple[int, ...], int]:
        """The token aligned by the diff: the exact shape where it is unique on both
        sides (a ``(1, 1, 768)`` class token is not one of the ``(768,)`` biases)."""
        if self.exact_c[e.exact] == 1 and self.exact_m[e.exact] == 1:
            return ((*e.shape, -1), e.kind)  # never equal to a squeezed token
        return e.token

    def unique_pair(self, c: Entry, m: Entry) -> bool:
        """``c`` and ``m`` are the only tensors of their token, or of their exact shape."""
        if c.token != m.token:
            return False
        if self.tok_c[c.token] == 1 and self.tok_m[m.token] == 1:
            return True
        return c.exact == m.exact and self.exact_c[c.exact] == 1 and self.exact_m[m.exact] == 1


def _squeezed_counts(
    exact: Counter[tuple[tuple[int, ...], int]],
) -> Counter[tuple[tuple[int, ...], int]]:
    out: Counter[tuple[tuple[int, ...], int]] = Counter()
    for (shape, kind), n in exact.items():
        out[squeezed(shape), kind] += n
    return out


def align(ckpt: list[Entry], model: list[Entry]) -> Alignment:
    """Match ``model`` entries to ``ckpt`` entries (see the module docstring)."""
    out = Alignment()
    by_name = {e.key: i for i, e in enumerate(ckpt)}
    used_c: set[int] = set()
    for j, e in enumerate(model):
        i = by_name.get(e.key)
        if i is None:
            continue
        used_c.add(i)
        if ckpt[i].shape == e.shape or (
            ckpt[i].kind == e.kind and reshape_kind(ckpt[i].shape, e.shape)
        ):
            out.matched[j] = (i, "name")
        else:
            out.mismatched[j] = i
    rc = [i for i in range(len(ckpt)) if i not in used_c]
    rm = [j for j in range(len(model)) if j not in out.matched and j not in out.mismatched]
    if not rc or not rm:
        return out
    counts = _Counts(ckpt, model)
    ids: dict[tuple[tuple[int, ...], int], int] = {}
    tok_c = {i: ids.setdefault(counts.diff_token(ckpt[i]), len(ids)) for i in rc}
    tok_m = {j: ids.setdefault(counts.diff_token(model[j]), len(ids)) for j in rm}
    # rounds: each aligns what the previous ones left (crossing them is allowed: a
    # shortcut registered first on one side and last on the other)
    certain: dict[int, int] = {}  # model index -> checkpoint index
    left: list[tuple[list[int], list[int]]] = []
    regions: list[tuple[list[int], list[int]]] = []
    pend_c, pend_m = rc, rm
    for round_ in range(16):
        tc = [tok_c[i] for i in pend_c]
        tm = [tok_m[j] for j in pend_m]
        if tc == tm:  # the same structure: the one full alignment
            new = dict(zip(pend_m, pend_c))
            left, regions = [], []
        else:
            new, left, regions = _structure_round(
                ckpt, model, pend_c, pend_m, tc, tm, counts, out, certain
            )
        if round_:  # crossing earlier rounds: only unambiguous rounds, whole modules only
            new = {} if left else _whole_modules(ckpt, model, new, certain)
        if not new:
            break
        certain.update(new)
        taken = set(new.values())
        pend_c = [i for i in pend_c if i not in taken]
        pend_m = [j for j in pend_m if j not in new]
        left, regions = [], []
        if not pend_c or not pend_m:
            break
    if not (round_ == 0 and not left and not regions):  # not the one full alignment
        left.extend(_split_modules(ckpt, model, rc, rm, certain, left, counts))
    for j, i in certain.items():
        out.matched[j] = (i, "structure")
    out.ambiguous.extend(left)

    # 6. mismatches: leftovers of a region that agree pairwise in rank and leaf name
    busy_c = set(certain.values()) | {i for _, cs in left for i in cs}
    busy_m = set(certain) | {j for ms, _ in left for j in ms}
    for ra, rb in regions:
        la = [i for i in ra if i not in busy_c]
        lb = [j for j in rb if j not in busy_m]
        if la and len(la) == len(lb):
            if all(_counterparts(ckpt[i], model[j]) for i, j in zip(la, lb)):
                for i, j in zip(la, lb):
                    if reshape_kind(ckpt[i].shape, model[j].shape) == "flatten":
                        out.matched[j] = (i, "structure")  # a matrix against its kernel
                    else:
                        out.mismatched[j] = i
            continue
        # different numbers: the leading leftovers that play the same role (rank, leaf name)
        for i, j in zip(la, lb):
            c, m = ckpt[i], model[j]
            if c.kind != m.kind or len(c.shape) != len(m.shape) or c.leaf != m.leaf:
                break
            out.mismatched[j] = i
    return out


def _split_modules(
    ckpt: list[Entry],
    model: list[Entry],
    rc: list[int],
    rm: list[int],
    certain: dict[int, int],
    left: list[tuple[list[int], list[int]]],
    counts: _Counts,
) -> list[tuple[list[int], list[int]]]:
    """Demote structural pairs that split a module (removed from ``certain``, in place).

    A module whose tensors are matched by order (shapes unique on both sides
    aside) to more than one module of the other side, or only partly matched while
    a tensor of the same shape is left over on the other side, was cut by a
    coincidence of shapes: those pairs become ambiguous. Repeats until stable.
    """
    groups: list[tuple[list[int], list[int]]] = []
    parent_c = {i: ckpt[i].parent for i in rc}
    parent_m = {j: model[j].parent for j in rm}
    in_left_c = {i for _, cs in left for i in cs}
    in_left_m = {j for ms, _ in left for j in ms}
    while True:
        ordered = {j: i for j, i in certain.items() if not counts.unique_pair(ckpt[i], model[j])}
        m_to_c: dict[str, set[str]] = {}
        c_to_m: dict[str, set[str]] = {}
        for j, i in ordered.items():
            m_to_c.setdefault(parent_m[j], set()).add(parent_c[i])
            c_to_m.setdefault(parent_c[i], set()).add(parent_m[j])
        taken_c = set(certain.values())
        free_c = [i for i in rc if i not in taken_c and i not in in_left_c]
        free_m = [j for j in rm if j not in certain and j not in in_left_m]
        free_tok_c = {ckpt[i].token for i in free_c}
        free_tok_m = {model[j].token for j in free_m}
        partial_m = {parent_m[j] for j in free_m if model[j].token in free_tok_c}
        partial_c = {parent_c[i] for i in free_c if ckpt[i].token in free_tok_m}
        bad = {
            j
            for j, i in ordered.items()
            if len(m_to_c[parent_m[j]]) > 1
            or len(c_to_m[parent_c[i]]) > 1
            or parent_m[j] in partial_m
            or parent_c[i] in partial_c
        }
        if not bad:
            return groups
        by_module: dict[str, list[int]] = {}
        for j in bad:
            by_module.setdefault(parent_m[j], []).append(j)
        for js in by_module.values():
            cs = {certain.pop(j) for j in js}
            toks = {model[j].token for j in js}
            cs |= {i for i in free_c if ckpt[i].token in toks}
            groups.append((sorted(js), sorted(cs)))
            in_left_m.update(js)
            in_left_c.update(cs)


def _structure_round(
    ckpt: list[Entry],
    model: list[Entry],
    rc: list[int],
    rm: list[int],
    tc: list[int],
    tm: list[int],
    counts: _Counts,
    out: Alignment,
    earlier: dict[int, int],
) -> tuple[dict[int, int], list[tuple[list[int], list[int]]], list[tuple[list[int], list[int]]]]:
    """Steps 2-5 on the pending tensors ``rc`` / ``rm`` (indices into ckpt / model).

    Returns (new certain pairs model -> ckpt, ambiguous groups, unaligned regions),
    all as indices into ``ckpt`` / ``model``.
    """
    # 2. order: a diff of the token sequences (positions are into rc / rm)
    sm = difflib.SequenceMatcher(None, tc, tm, autojunk=False)
    pairs: dict[int, int] = {}  # rm position -> rc position
    regions: list[tuple[list[int], list[int]]] = []
    runs: list[tuple[int, int, int]] = []  # (rc start, rm start, length)
    for tag, a0, a1, b0, b1 in sm.get_opcodes():
        if tag == "equal":
            runs.append((a0, b0, a1 - a0))
            for k in range(a1 - a0):
                pairs[b0 + k] = a0 + k
        else:
            regions.append(([rc[p] for p in range(a0, a1)], [rm[q] for q in range(b0, b1)]))

    # 3. unique shapes anywhere in both sides
    taken_c = set(pairs.values())
    free_tok = {ckpt[rc[p]].token: p for p in range(len(rc)) if p not in taken_c}
    free_exact = {ckpt[rc[p]].exact: p for p in range(len(rc)) if p not in taken_c}
    for q in range(len(rm)):
        if q in pairs:
            continue
        me = model[rm[q]]
        p_tok, p_exact = free_tok.get(me.token), free_exact.get(me.exact)
        if p_tok is not None and counts.unique_pair(ckpt[rc[p_tok]], me):
            pairs[q] = p_tok
        elif p_exact is not None and counts.unique_pair(ckpt[rc[p_exact]], me):
            pairs[q] = p_exact
        else:
            continue
        free_tok.pop(ckpt[rc[pairs[q]]].token, None)
        free_exact.pop(ckpt[rc[pairs[q]]].exact, None)
    unique = {q for q, p in pairs.items() if counts.unique_pair(ckpt[rc[p]], model[rm[q]])}

    # 4. ambiguity: whole runs that fit elsewhere, then free elements that slide
    groups = run_slides(tc, tm, runs, pairs)
    groups = slides(tc, tm, pairs, unique, groups)

    # 5. tie-breaks for the ambiguous groups
    certain = {q: p for q, p in pairs.items() if q not in groups}
    resolved, left = _tie_break(ckpt, model, rc, rm, groups, certain, out, earlier)
    certain.update(resolved)
    new = {rm[q]: rc[p] for q, p in certain.items()}
    amb = [([rm[q] for q in sorted(mq)], [rc[p] for p in sorted(cp)]) for mq, cp in left]
    return new, amb, regions


def _whole_modules(
    ckpt: list[Entry], model: list[Entry], new: dict[int, int], earlier: dict[int, int]
) -> dict[int, int]:
    """The pairs of ``new`` that keep the module map one to one (with ``earlier`` ones).

    A later round aligns leftovers across the order of earlier rounds; it is only
    trusted where it pairs modules as wholes: every tensor of the model module
    comes from one checkpoint module and every tensor of that module goes to it.
    """
    while new:
        m_to_c: dict[str, set[str]] = {}
        c_to_m: dict[str, set[str]] = {}
        for j, i in list(earlier.items()) + list(new.items()):
            m_to_c.setdefault(model[j].parent, set()).add(ckpt[i].parent)
            c_to_m.setdefault(ckpt[i].parent, set()).add(model[j].parent)
        kept = {
            j: i
            for j, i in new.items()
            if len(m_to_c[model[j].parent]) == 1 and len(c_to_m[ckpt[i].parent]) == 1
        }
        if len(kept) == len(new):
            return kept
        new = kept
    return new


def _counterparts(c: Entry, m: Entry) -> bool:
    """Two leftovers at the same place: same kind, and same rank and leaf name, or same size."""
    if c.kind != m.kind:
        return False
    same_role = len(c.shape) == len(m.shape) and c.leaf == m.leaf
    return same_role or math.prod(c.shape) == math.prod(m.shape)


_DIGITS = re.compile(r"\d+")


def _anon(key: str) -> str:
    """The key with every number replaced: ``blocks.3.fc1.weight`` -> ``blocks.#.fc#.weight``."""
    return _DIGITS.sub("#", key)


def _strict_max(values: list[int], value: int) -> bool:
    return value == max(values) and values.count(value) == 1


def _tie_break(
    ckpt: list[Entry],
    model: list[Entry],
    rc: list[int],
    rm: list[int],
    groups: dict[int, tuple[set[int], set[int]]],
    certain: dict[int, int],
    out: Alignment,
    earlier: dict[int, int],
) -> tuple[dict[int, int], list[tuple[set[int], set[int]]]]:
    """Resolve groups by the module tree, then leaf names; return (resolved, left)."""
    # the module map proven so far: model parent -> checkpoint parents
    parents: dict[str, set[str]] = {}
    proven = {j: i for j, (i, _how) in out.matched.items()}
    proven.update(earlier)
    for j, i in proven.items():
        parents.setdefault(model[j].parent, set()).add(ckpt[i].parent)
    for q, p in certain.items():
        parents.setdefault(model[rm[q]].parent, set()).add(ckpt[rc[p]].parent)
    # the correspondences of anonymized paths proven so far (another instance of a block)
    roles = {(_anon(ckpt[i].key), _anon(model[j].key)) for j, i in proven.items()}
    roles |= {(_anon(ckpt[rc[p]].key), _anon(model[rm[q]].key)) for q, p in certain.items()}
    resolved: dict[int, int] = {}
    left: list[tuple[set[int], set[int]]] = []
    seen: set[int] = set()
    for q0, (g_m, g_c) in groups.items():
        if id(g_m) in seen or q0 in seen:
            continue
        seen.add(id(g_m))
        scores: dict[tuple[int, int], int] = {}
        for q in g_m:
            me = model[rm[q]]
            home = parents.get(me.parent)
            for p in g_c:
                ce = ckpt[rc[p]]
                if ce.token != me.token:
                    continue
                tree = 4 if home is not None and len(home) == 1 and ce.parent in home else 0
                role = 2 if (_anon(ce.key), _anon(me.key)) in roles else 0
                leaf = 1 if ce.leaf == me.leaf else 0
                scores[q, p] = tree + role + leaf
        # a pair is taken when it is strictly the best of its row and of its column
        best_q: dict[int, list[int]] = {}
        best_p: dict[int, list[int]] = {}
        for (q, p), sc in scores.items():
            best_q.setdefault(q, []).append(sc)
            best_p.setdefault(p, []).append(sc)
        choice = {
            q: p
            for (q, p), sc in scores.items()
            if sc > 0 and _strict_max(best_q[q], sc) and _strict_max(best_p[p], sc)
        }
        resolved.update(choice)
        rest_m = g_m - set(choice)
        rest_c = g_c - set(choice.values())
        if rest_m and rest_c and any((q, p) in scores for q in rest_m for p in rest_c):
            left.append((rest_m, rest_c))
    return resolved, left
