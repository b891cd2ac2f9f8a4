"""Search starts from a first-order model of the score, solved exactly under an additive cost.

Around a reference arch the accuracy predictor is nearly separable: the score change of a
layer's kernel, a layer's expand ratio or a stage's depth depends little on the other genes.
Measured once per reference (one predictor batch of single-gene probes), those changes and the
additive cost (a lookup table or MACs: per-layer terms) make a multiple-choice knapsack. Dynamic
programming over a discretized budget solves it exactly, for every budget at once, in a few
numpy passes per stage. The solutions are starts for the local search, which corrects what the
first-order model misses.

Two kinds of variety come almost free: the table of optima covers every budget, so one program
serves several limits (targets); and pinning one stage's depth at a time yields solutions with
other depth patterns, which the model ranks a little lower but the local search often climbs
higher from.

Costs are rounded up to the budget grid, so a solution always meets its limit; the rounding
gives away at most one grid cell per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from compofa_bench.encoding import ArchArrays, fill_inactive, take

if TYPE_CHECKING:
    from compofa_bench.search.model import AdditiveModel
    from compofa_bench.spaces import SearchSpace

#: Budget grid cells between zero and the largest limit.
GRID_CELLS = 500


def linearized_optima(
    space: SearchSpace,
    score: Callable[[ArchArrays], np.ndarray],
    model: AdditiveModel,
    refs: ArchArrays,
    limits: np.ndarray,
    pin_depths: bool = False,
) -> tuple[ArchArrays, np.ndarray, np.ndarray, np.ndarray]:
    """The archs at each row's resolution that maximize the first-order model of ``score``
    around ``refs[row]`` subject to ``model``'s cost <= each of the row's ``limits``.

    ``limits`` is (rows,) or (rows, L): one dynamic program per row gives its optimum at every
    budget, so L limits per row cost only L read-outs. With ``pin_depths``, each row also yields
    one solution per (stage, depth gene) with that stage pinned to that gene: the model's
    optimum alone always picks one depth pattern, while the best arch often has another that
    the model ranks a little lower.

    Returns the solutions, a mask of those that exist (a limit below the cheapest arch at the
    resolution has none; such a solution holds its reference), and per solution its row in
    ``refs`` and its column in ``limits``. Solutions come in the order of ``refs`` (row for row
    when ``limits`` is 1-D and ``pin_depths`` is off)."""
    lim = np.asarray(limits, dtype=np.float64)
    lim = lim[:, None] if lim.ndim == 1 else lim
    # rows sorted by resolution, so that a layer's cost is one slice shift per resolution
    order = np.argsort(refs.r, kind="stable")
    sol, ok, src, col = _solve(space, score, model, take(refs, order), lim[order], pin_depths)
    # back to the caller's row order (a reference's pinned variants and read-outs follow it)
    src = order[src]
    back = np.argsort(src, kind="stable")
    return take(sol, back), ok[back], src[back], col[back]


def _solve(
    space: SearchSpace,
    score: Callable[[ArchArrays], np.ndarray],
    model: AdditiveModel,
    refs: ArchArrays,
    limits: np.ndarray,
    pin_depths: bool,
) -> tuple[ArchArrays, np.ndarray, np.ndarray, np.ndarray]:
    sizes = space.stage_sizes
    n = len(refs)
    # deepening a stage repeats its last layer, as the space's own neighbours do
    base = ArchArrays(
        fill_inactive(refs.ks, refs.d, sizes), fill_inactive(refs.e, refs.d, sizes), refs.d, refs.r
    )
    coupled = space.coupling is not None

    # ---- first-order gains around each reference: one batch of single-gene probes. A
    # stage's depth gene is measured on the reference; a layer's kernel or expand on the
    # reference where the layer runs, else on the reference deepened just enough to run it
    probes: list[ArchArrays] = [base]

    def probe(ks: np.ndarray, e: np.ndarray, d: np.ndarray) -> int:
        probes.append(ArchArrays(ks, e, d, base.r))
        return len(probes) - 1

    k_probe: dict[tuple[int, int], int] = {}
    e_probe: dict[tuple[int, int], int] = {}
    g_probe: dict[tuple[int, int], int] = {}
    slot_ref: dict[int, tuple[np.ndarray, int]] = {}  # slot -> (runs in the reference, gene)
    start = 0
    for st, size in enumerate(sizes):
        genes = space.stage_genes(st)
        g_arr = []
        for gi, (depth, ce) in enumerate(genes):
            d = base.d.copy()
            d[:, st] = depth
            e = base.e.copy()
            if ce is not None:
                e[:, start : start + size] = ce
            g_probe[st, gi] = probe(base.ks, e, d)
            g_arr.append((e, d))
        # a layer that no depth gene runs needs no probe
        for j in range(max(depth for depth, _ in genes)):
            s = start + j
            runs = j < base.d[:, st]
            # the shallowest gene that runs this layer
            gi = min((g for g in range(len(genes)) if genes[g][0] > j), key=lambda g: genes[g])
            ge, gd = g_arr[gi]
            ref_e = np.where(runs[:, None], base.e, ge)
            ref_d = np.where(runs[:, None], base.d, gd)
            slot_ref[s] = (runs, gi)
            for k in space.kernel_choices[s]:
                ks = base.ks.copy()
                ks[:, s] = k
                k_probe[s, k] = probe(ks, ref_e, ref_d)
            if not coupled:
                for x in space.expand_choices:
                    e = ref_e.copy()
                    e[:, s] = x
                    e_probe[s, x] = probe(base.ks, e, ref_d)
        start += size
    allp = ArchArrays(
        np.concatenate([p.ks for p in probes]),
        np.concatenate([p.e for p in probes]),
        np.concatenate([p.d for p in probes]),
        np.concatenate([p.r for p in probes]),
    )
    f = np.asarray(score(allp), dtype=np.float64).reshape(len(probes), n)
    slot_st = np.repeat(np.arange(len(sizes)), sizes)
    gain = np.empty_like(f)
    for i in g_probe.values():
        gain[i] = f[i] - f[0]
    for (s, _), i in list(k_probe.items()) + list(e_probe.items()):
        runs, gi = slot_ref[s]
        gain[i] = f[i] - np.where(runs, f[0], f[g_probe[int(slot_st[s]), gi]])

    # ---- the rows to solve: each reference, and with pin_depths each of its pinned variants
    pins = [(-1, -1)]
    if pin_depths:
        pins += [(st, gi) for st in range(len(sizes)) for gi in range(len(space.stage_genes(st)))]
    src = np.repeat(np.arange(n), len(pins))
    pin_st = np.tile(np.array([p[0] for p in pins]), n)
    pin_gi = np.tile(np.array([p[1] for p in pins]), n)
    gain = gain[:, src]
    base = take(base, src)
    refs = take(refs, src)
    limits = limits[src]
    n = len(src)

    # ---- exact cost terms per row (its resolution) and the budget grid
    ri = np.array([model.resolutions.index(int(r)) for r in refs.r], dtype=np.int64)
    per_slot = model.slot_prices()[ri]  # (n, slots, k, e)
    budget = limits - model.fixed[ri][:, None]  # (rows, read-outs)
    cell = max(float(np.max(budget)), 1e-12) / GRID_CELLS
    rows = np.arange(n)
    cut = np.nonzero(np.diff(refs.r))[0] + 1
    groups = list(zip([0, *cut.tolist()], [*cut.tolist(), n], strict=True))

    def relax(
        best: np.ndarray, pick: np.ndarray, v: np.ndarray, c: np.ndarray, g: np.ndarray, tag: int
    ) -> None:
        """best[i, b] = max(best[i, b], v[i, b - c[i]] + g[i]), noting ``tag`` where it wins."""
        # rows are grouped by resolution, and a layer costs the same at one resolution
        for lo, hi in groups:
            cc = int(c[lo])
            if cc > GRID_CELLS:
                continue
            cand = v[lo:hi, : GRID_CELLS + 1 - cc] + g[lo:hi, None]
            dst = best[lo:hi, cc:]
            win = cand > dst
            np.copyto(dst, cand, where=win)
            pick[lo:hi, cc:][win] = tag

    def cells(cost: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(cost), np.ceil(cost / cell - 1e-9), GRID_CELLS + 1).astype(
                np.int64
            )

    # value[i, b]: best model gain with cost <= b cells; stage by stage
    value = np.zeros((n, GRID_CELLS + 1), dtype=np.float32)
    trace: list[tuple[np.ndarray, list[tuple[int, int | None]], dict]] = []
    start = 0
    for st, size in enumerate(sizes):
        genes = space.stage_genes(st)
        # per expand set (one per coupled gene, one shared when uncoupled) a chain of slot
        # steps; a gene of depth d reads its chain after d slots
        chains: dict[int | None, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        for key in {ce for _, ce in genes}:
            allowed_e = [key] if key is not None else list(space.expand_choices)
            v = value
            chain = []
            for j in range(max(dd for dd, c in genes if c == key)):
                s = start + j
                opts = [(k, x) for k in space.kernel_choices[s] for x in allowed_e]
                best = np.full_like(v, -np.inf)
                pick = np.zeros(v.shape, dtype=np.int8)
                costs = np.empty((len(opts), n), dtype=np.int64)
                for oi, (k, x) in enumerate(opts):
                    g = gain[k_probe[s, k]] + (0.0 if coupled else gain[e_probe[s, x]])
                    c = cells(per_slot[rows, s, model.kernels.index(k), model.expands.index(x)])
                    relax(best, pick, v, c, g.astype(np.float32), oi)
                    costs[oi] = c
                v = best
                chain.append((v, pick, np.asarray(opts), costs))
            chains[key] = chain
        best = np.full_like(value, -np.inf)
        gpick = np.zeros(value.shape, dtype=np.int8)
        for gi, (depth, ce) in enumerate(genes):
            cand = chains[ce][depth - 1][0] + gain[g_probe[st, gi]][:, None].astype(np.float32)
            cand[(pin_st == st) & (pin_gi != gi)] = -np.inf
            win = cand > best
            np.copyto(best, cand, where=win)
            gpick[win] = gi
        trace.append((gpick, genes, chains))
        value = best
        start += size

    # ---- read each row's optimum at each of its budgets and walk the choices back (the
    # table holds the optimum at every budget, so another budget costs only this walk)
    nl = budget.shape[1]
    rd = np.repeat(np.arange(n), nl)  # read-out -> row
    col = np.tile(np.arange(nl), n)
    at = np.floor(budget[rd, col] / cell + 1e-9).astype(np.int64)
    ok = (at >= 0) & np.isfinite(value[rd, np.clip(at, 0, GRID_CELLS)])
    ks, e, d = base.ks[rd], base.e[rd], base.d[rd]
    live = np.nonzero(ok)[0]
    b = np.minimum(at[live], GRID_CELLS)
    start = sum(sizes)
    for st in range(len(sizes) - 1, -1, -1):
        gpick, genes, chains = trace[st]
        start -= sizes[st]
        gi = gpick[rd[live], b].astype(np.int64)
        depth = np.array([g[0] for g in genes])[gi]
        d[live, st] = depth
        key_of = [g[1] for g in genes]
        for key, chain in chains.items():
            mine = np.array([key_of[x] == key for x in range(len(genes))])[gi]
            for j in range(len(chain) - 1, -1, -1):
                sel = np.nonzero(mine & (j < depth))[0]
                if sel.size == 0:
                    continue
                _, pick, opts, costs = chain[j]
                out_l, rows_l, bl = live[sel], rd[live[sel]], b[sel]
                o = pick[rows_l, bl].astype(np.int64)
                ks[out_l, start + j] = opts[o, 0]
                e[out_l, start + j] = opts[o, 1]
                b[sel] = bl - costs[o, rows_l]
        # inactive slots copy the last active one (the space's normalization)
        last = start + depth - 1
        for j in range(sizes[st]):
            beyond = j >= depth
            ks[live[beyond], start + j] = ks[live[beyond], last[beyond]]
            e[live[beyond], start + j] = e[live[beyond], last[beyond]]
    out = ArchArrays(
        np.where(ok[:, None], ks, refs.ks[rd]),
        np.where(ok[:, None], e, refs.e[rd]),
        np.where(ok[:, None], d, refs.d[rd]),
        refs.r[rd],
    )
    return out, ok, src[rd], col
