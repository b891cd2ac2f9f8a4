"""Local search over archs as flat integer rows: steepest-ascent hill climbing, greedy
budget repair and random shrinking under a cost limit."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compofa_bench.encoding import ArchArrays, fill_inactive
from compofa_bench.errors import SearchError
from compofa_bench.search.model import AccuracySource
from compofa_bench.spaces import SearchSpace


class _Flat:
    """Archs as one integer row each: ``[r | d per stage | ks per slot | e per slot]``, so a
    move is "set these columns to these values" and thousands of neighbours are one array."""

    def __init__(self, space: SearchSpace) -> None:
        self.sizes = space.stage_sizes
        self.ns, self.nl = len(space.stage_sizes), sum(space.stage_sizes)
        self.width = 1 + self.ns + 2 * self.nl
        self.ks0 = 1 + self.ns
        self.e0 = self.ks0 + self.nl
        self.slot_stage = np.repeat(np.arange(self.ns), self.sizes)
        # move templates: (mask, values) over the flat row; a template equal to the current
        # arch (or touching only inactive slots) is a no-op and is dropped per state
        masks: list[np.ndarray] = []
        vals: list[np.ndarray] = []

        def add(cols: list[int], values: list[int]) -> None:
            m = np.zeros(self.width, dtype=bool)
            v = np.zeros(self.width, dtype=np.int64)
            m[cols] = True
            v[cols] = values
            masks.append(m)
            vals.append(v)

        for r in space.resolutions:
            add([0], [r])
        for st in range(self.ns):
            slots = [int(s) for s in np.nonzero(self.slot_stage == st)[0]]
            for depth, ce in space.stage_genes(st):
                if ce is None:
                    add([1 + st], [depth])
                else:
                    add([1 + st] + [self.e0 + s for s in slots], [depth] + [ce] * len(slots))
        for s in range(self.nl):
            for k in space.kernel_choices[s]:
                add([self.ks0 + s], [k])
            if space.coupling is None:
                for x in space.expand_choices:
                    add([self.e0 + s], [x])
        self.mask = np.stack(masks)
        self.vals = np.stack(vals)

    def flat(self, a: ArchArrays) -> np.ndarray:
        return np.concatenate([a.r[:, None], a.d, a.ks, a.e], axis=1).astype(np.int64)

    def arrays(self, f: np.ndarray) -> ArchArrays:
        return ArchArrays(
            f[:, self.ks0 : self.e0].copy(),
            f[:, self.e0 :].copy(),
            f[:, 1 : self.ks0].copy(),
            f[:, 0].copy(),
        )

    def neighbours(self, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every single-gene move of each row of ``cur``: ``(b * templates, width)`` canonical
        rows, template-minor, and a mask of those that change the arch (the others are
        no-ops: the current value, or a slot the depth leaves inactive)."""
        b, nt = len(cur), len(self.mask)
        nb = self.canonical(
            np.where(self.mask[None], self.vals[None], cur[:, None, :]).reshape(b * nt, -1)
        )
        return nb, np.any(nb != np.repeat(cur, nt, 0), 1)

    def canonical(self, f: np.ndarray) -> np.ndarray:
        """:class:`Arch`'s normalization: an inactive slot holds its stage's last active
        values, so rows equal here run the same layers, and a depth increase adds copies of
        the stage's last layer, as the space's own neighbours do."""
        depth = f[:, 1 : self.ks0]
        out = f.copy()
        out[:, self.ks0 : self.e0] = fill_inactive(f[:, self.ks0 : self.e0], depth, self.sizes)
        out[:, self.e0 :] = fill_inactive(f[:, self.e0 :], depth, self.sizes)
        return out


def local_search(
    space: SearchSpace,
    accuracy: Callable[[ArchArrays], np.ndarray],
    cost: Callable[[ArchArrays], np.ndarray],
    starts: ArchArrays,
    limits: np.ndarray,
    pairs: int = 64,
    max_steps: int = 200,
) -> tuple[ArchArrays, np.ndarray, np.ndarray]:
    """Steepest-ascent hill climbing of many feasible starts at once.

    Each step scores, for every state, ALL its single-gene neighbours (resolution; each
    stage's depth, with its coupled expand ratio in CompOFA spaces; each active slot's kernel
    and, uncoupled, expand ratio) in one batch, and moves each state to its best neighbour
    that meets its limit and scores strictly higher. A state with no such neighbour then tries
    the ``pairs`` most promising two-gene moves (ranked by the sum of their single moves'
    score and cost changes, so a costly gain can be paid for by a saving elsewhere: the moves
    that matter at a tight budget); it stops when none of them is feasible and better either.
    So every returned state is a local optimum: no single-gene neighbour is feasible and
    better. States that meet (same layers, same limit) continue as one. Deterministic.

    Returns the final states, their scores and costs (same order as ``starts``).
    """
    fl = _Flat(space)
    x = fl.canonical(fl.flat(starts))
    limits = np.asarray(limits, dtype=np.float64)
    sc = np.asarray(accuracy(starts), dtype=np.float64)
    co = np.asarray(cost(starts), dtype=np.float64)
    if np.any(co > limits + 1e-12):
        raise SearchError("local search needs feasible starts")
    mask, vals = fl.mask, fl.vals
    nt = mask.shape[0]
    ii, jj = np.triu_indices(nt, k=1)
    disjoint = ~np.any(mask[ii] & mask[jj], axis=1)
    ii, jj = ii[disjoint], jj[disjoint]
    follow = np.arange(len(x))  # follow[i]: the state whose climb i shares
    live = np.arange(len(x))
    for _ in range(max_steps):
        if live.size == 0:
            break
        # merge states that have met: one climb per (layers, limit)
        key = np.concatenate([x[live], limits[live, None].view(np.int64)], axis=1)
        _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
        follow[live] = live[first[inv.reshape(-1)]]
        live = np.unique(live[first])
        b = live.size
        cur = x[live]
        # single moves of every live state: (b, templates, width)
        flat_nb, valid = fl.neighbours(cur)
        nb = flat_nb.reshape(b, nt, -1)
        # price every move (a cheap gather), but score only those that meet the limit: near
        # the limit about half do not, and the scorer is the main cost
        c1 = np.full(b * nt, np.inf)
        vi = np.nonzero(valid)[0]
        c1[vi] = np.asarray(cost(fl.arrays(flat_nb[vi])), dtype=np.float64)
        feas = c1 <= np.repeat(limits[live], nt)
        s1 = _score_only(accuracy, fl, flat_nb, feas)
        valid = valid.reshape(b, nt)
        s1, c1 = s1.reshape(b, nt), c1.reshape(b, nt)
        rows = np.arange(b)
        better = valid & (c1 <= limits[live, None]) & (s1 > sc[live, None])
        pick = np.argmax(np.where(better, s1, -np.inf), axis=1)
        moved = better[rows, pick]
        idx = live[moved]
        x[idx] = nb[rows[moved], pick[moved]]
        sc[idx], co[idx] = s1[rows[moved], pick[moved]], c1[rows[moved], pick[moved]]
        stuck = np.nonzero(~moved)[0]
        if pairs > 0 and stuck.size:
            # promising pairs: feasible by their summed cost change, best by summed gain
            live_s = live[stuck]
            # the pairs need the gains of the moves over the limit too: score them now
            late = valid[stuck] & ~feas.reshape(b, nt)[stuck]
            s1[stuck] = np.where(
                late,
                _score_only(
                    accuracy, fl, nb[stuck].reshape(-1, fl.width), late.reshape(-1)
                ).reshape(late.shape),
                s1[stuck],
            )
            gain = np.where(valid[stuck], s1[stuck] - sc[live_s, None], -np.inf)
            dcost = c1[stuck] - co[live_s, None]
            g2 = gain[:, ii] + gain[:, jj]
            c2 = co[live_s, None] + dcost[:, ii] + dcost[:, jj]
            g2 = np.where(c2 <= limits[live_s, None], g2, -np.inf)
            k = min(pairs, g2.shape[1])
            top = np.argpartition(-g2, k - 1, axis=1)[:, :k]
            pi, pj = ii[top], jj[top]  # (stuck, k)
            r2 = np.arange(stuck.size)[:, None]
            pn = np.where(mask[pj], vals[pj], nb[stuck[:, None], pi])
            pn = fl.canonical(pn.reshape(-1, fl.width)).reshape(pn.shape)
            ok = np.isfinite(g2[r2, top])
            s2, c2x = _score_rows(accuracy, cost, fl, pn.reshape(-1, fl.width), ok.reshape(-1))
            s2, c2x = s2.reshape(stuck.size, k), c2x.reshape(stuck.size, k)
            better2 = ok & (c2x <= limits[live_s, None]) & (s2 > sc[live_s, None])
            pick2 = np.argmax(np.where(better2, s2, -np.inf), axis=1)
            rr = np.arange(stuck.size)
            moved2 = better2[rr, pick2]
            idx2 = live_s[moved2]
            x[idx2] = pn[rr[moved2], pick2[moved2]]
            sc[idx2], co[idx2] = s2[rr[moved2], pick2[moved2]], c2x[rr[moved2], pick2[moved2]]
            idx = np.concatenate([idx, idx2])
        live = np.sort(idx)
    # a merged state ends where the climb it joined ended (follow chains to their end)
    while np.any(follow[follow] != follow):
        follow = follow[follow]
    x, sc, co = x[follow], sc[follow], co[follow]
    return fl.arrays(x), sc, co


def repair(
    space: SearchSpace,
    accuracy: Callable[[ArchArrays], np.ndarray],
    cost: Callable[[ArchArrays], np.ndarray],
    states: ArchArrays,
    limits: np.ndarray,
    max_steps: int = 200,
) -> tuple[ArchArrays, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy budget repair: while a state breaks its limit, take the single-gene move that
    loses the least score per unit of cost saved. Returns states, scores, costs and a
    feasibility mask (a state can stay infeasible if no move saves cost; never in a space
    whose smallest member meets the limit at that resolution... or at all)."""
    fl = _Flat(space)
    x = fl.canonical(fl.flat(states))
    limits = np.asarray(limits, dtype=np.float64)
    sc = np.asarray(accuracy(states), dtype=np.float64)
    co = np.asarray(cost(states), dtype=np.float64)
    nt = len(fl.mask)

    def least_loss_per_saving(live: np.ndarray, flat_nb: np.ndarray, valid: np.ndarray) -> _Moves:
        b = live.size
        s1, c1 = _score_rows(accuracy, cost, fl, flat_nb, valid)
        s1, c1 = s1.reshape(b, nt), c1.reshape(b, nt)
        saved = co[live, None] - c1
        loss = np.maximum(sc[live, None] - s1, 0.0)
        # a move that reaches the limit is charged for the saving it needs, not more: the
        # cheapest way over the line wins over an oversized cut
        need = (co[live] - limits[live])[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):  # no-op moves: inf / inf
            ratio = np.where(saved > 1e-12, loss / np.minimum(saved, need), np.inf)
        pick = np.argmin(ratio, axis=1)
        return pick, np.isfinite(ratio[np.arange(b), pick]), (c1, s1)

    _descend(fl, x, (co, sc), limits, least_loss_per_saving, max_steps)
    return fl.arrays(x), sc, co, co <= limits


def scorer(accuracy: AccuracySource) -> Callable[[ArchArrays], np.ndarray]:
    return lambda a: np.asarray(accuracy.score(a), dtype=np.float64)


def _score_rows(
    accuracy: Callable[[ArchArrays], np.ndarray],
    cost: Callable[[ArchArrays], np.ndarray],
    fl: _Flat,
    rows: np.ndarray,
    valid: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Score and price only the ``valid`` rows (no-op moves are most templates); the others
    get score -inf and cost +inf, so they never win."""
    s = np.full(len(rows), -np.inf)
    c = np.full(len(rows), np.inf)
    idx = np.nonzero(valid)[0]
    if idx.size:
        sub = fl.arrays(rows[idx])
        s[idx] = np.asarray(accuracy(sub), dtype=np.float64)
        c[idx] = np.asarray(cost(sub), dtype=np.float64)
    return s, c


def _shrink(
    space: SearchSpace,
    cost: Callable[[ArchArrays], np.ndarray],
    states: ArchArrays,
    limits: np.ndarray,
    rng: np.random.Generator,
    max_steps: int = 200,
) -> tuple[ArchArrays, np.ndarray]:
    """Random descent under a cost limit: while a state breaks its limit, apply a uniformly
    drawn single-gene move that lowers its cost. Cost-only (no scoring), so cheap enough for
    many random starts; the local search that follows climbs back up. Returns the states and
    a feasibility mask."""
    fl = _Flat(space)
    x = fl.flat(states)
    co = np.asarray(cost(states), dtype=np.float64)
    nt = len(fl.mask)

    def any_cheaper(live: np.ndarray, nb: np.ndarray, _valid: np.ndarray) -> _Moves:
        b = live.size
        c1 = np.asarray(cost(fl.arrays(nb)), dtype=np.float64).reshape(b, nt)
        down = c1 < co[live, None] - 1e-12
        # a uniform choice among the cost-lowering moves: random keys, masked argmax
        pick = np.argmax(np.where(down, rng.random((b, nt)), -1.0), axis=1)
        return pick, down[np.arange(b), pick], (c1,)

    _descend(fl, x, (co,), limits, any_cheaper, max_steps)
    return fl.arrays(x), co <= limits


#: A descent step's choice per live state: the move picked, whether it is taken, and per move
#: the new values of the tracked arrays (cost first), each shaped (live states, moves).
_Moves = tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]


def _descend(
    fl: _Flat,
    x: np.ndarray,
    tracked: tuple[np.ndarray, ...],
    limits: np.ndarray,
    choose: Callable[[np.ndarray, np.ndarray, np.ndarray], _Moves],
    max_steps: int,
) -> None:
    """The loop :func:`repair` and :func:`_shrink` share: while a state breaks its limit,
    move it to the single-gene neighbour ``choose`` picks, updating ``x`` and the ``tracked``
    arrays (``tracked[0]``: the cost) in place. Stops when every state meets its limit, when
    no state can move, or after ``max_steps`` rounds."""
    co = tracked[0]
    nt = len(fl.mask)
    for _ in range(max_steps):
        live = np.nonzero(co > limits)[0]
        if live.size == 0:
            break
        b = live.size
        flat_nb, valid = fl.neighbours(x[live])
        pick, ok, per_move = choose(live, flat_nb, valid)
        if not ok.any():
            break
        rows, p, idx = np.arange(b)[ok], pick[ok], live[ok]
        x[idx] = flat_nb.reshape(b, nt, -1)[rows, p]
        for arr, values in zip(tracked, per_move, strict=True):
            arr[idx] = values[rows, p]


def _score_only(
    accuracy: Callable[[ArchArrays], np.ndarray], fl: _Flat, rows: np.ndarray, which: np.ndarray
) -> np.ndarray:
    """Scores of the ``which`` rows, -inf elsewhere."""
    out = np.full(len(rows), -np.inf)
    idx = np.nonzero(which)[0]
    if idx.size:
        out[idx] = np.asarray(accuracy(fl.arrays(rows[idx])), dtype=np.float64)
    return out
