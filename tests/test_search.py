"""Search: additive cost models, CompOFA-aware genes, exhaustive optimum, evolution."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compofa_bench import search as S
from compofa_bench import sources, spaces, supernet
from compofa_bench.encoding import ArchArrays
from compofa_bench.errors import SearchError


def _archs(a: ArchArrays, space: spaces.SearchSpace) -> list[spaces.Arch]:
    return [S.to_arch(a, i, space.stage_sizes) for i in range(len(a))]


class SlowMacs:
    """MACs without an additive model: forces the per-arch, memoized path."""

    unit = "MMACs"
    name = "macs (per arch)"

    def __init__(self) -> None:
        self.calls = 0

    def latency_ms(self, archs):
        self.calls += len(archs)
        return np.array([supernet.count_macs(a) / 1e6 for a in archs])


@pytest.fixture(scope="module")
def note10(reference_dir):
    from compofa_bench.lut import import_ofa_dir

    table = import_ofa_dir(reference_dir / "compofa" / "latency_table@note10", width_mult=1.2)
    return sources.LutLatency(table, width_mult=1.2)


@pytest.mark.parametrize("name", ["ofa", "compofa", "compofa-ek"])
def test_macs_additive_model_equals_count_macs(name: str) -> None:
    space = spaces.get(name, [128, 176, 224])
    model = sources.MacsLatency(1.0).additive(space)
    sample = S.Genome(space).sample(60, np.random.default_rng(0))
    want = [supernet.count_macs(a) / 1e6 for a in _archs(sample, space)]
    np.testing.assert_allclose(model.evaluate(sample), want, rtol=1e-12)


def test_lut_additive_model_equals_table(note10) -> None:
    space = spaces.get("ofa", [160, 192, 224])
    model = note10.additive(space)
    sample = S.Genome(space).sample(300, np.random.default_rng(1))
    want = note10.table.predict_ms(_archs(sample, space), width_mult=1.2)
    np.testing.assert_allclose(model.evaluate(sample), want, rtol=1e-12)


@pytest.mark.parametrize("name", ["compofa", "compofa-ek", "ofa"])
def test_genes_stay_in_space_and_coupled(name: str) -> None:
    space = spaces.get(name, [160, 224])
    g = S.Genome(space)
    rng = np.random.default_rng(2)
    a = g.sample(200, rng)
    b = g.sample(200, rng)
    for batch in (a, g.mutate(a, rng, 0.3), g.crossover(a, b, rng)):
        for arch in _archs(batch, space):
            space.validate(arch)
    # a child's genes come from its parents; coupled stages come whole from one parent
    child = g.crossover(a, b, rng)
    assert np.all((child.ks == a.ks) | (child.ks == b.ks))
    assert np.all((child.r == a.r) | (child.r == b.r))
    if space.coupling is not None:
        for st, size in enumerate(space.stage_sizes):
            sl = slice(st * 4, st * 4 + size)
            from_a = (child.d[:, st] == a.d[:, st]) & np.all(child.e[:, sl] == a.e[:, sl], 1)
            from_b = (child.d[:, st] == b.d[:, st]) & np.all(child.e[:, sl] == b.e[:, sl], 1)
            assert np.all(from_a | from_b)


def test_mutation_probability() -> None:
    space = spaces.get("ofa", [160, 176, 192, 208, 224])
    g = S.Genome(space)
    rng = np.random.default_rng(3)
    a = g.sample(2000, rng)
    same = g.mutate(a, rng, 0.0)
    assert np.array_equal(same.ks, a.ks) and np.array_equal(same.d, a.d)
    m = g.mutate(a, rng, 0.5)
    # a resampled kernel differs from the old one with probability 0.5 * 2/3
    changed = np.mean(m.ks != a.ks)
    assert 0.28 < changed < 0.39


def test_enumerate_matches_space() -> None:
    space = spaces.get("compofa", [160, 224])
    every = S.Genome(space).enumerate()
    got = set(_archs(every, space))
    assert len(got) == len(every) == space.size()
    assert got == set(space.enumerate())


def test_pareto_front_is_non_dominated() -> None:
    rng = np.random.default_rng(4)
    score, cost = rng.random(300), rng.random(300)
    front = set(S.pareto_front(score, cost).tolist())
    for i in range(300):
        dominated = np.any(
            (cost <= cost[i]) & (score >= score[i]) & ((cost < cost[i]) | (score > score[i]))
        )
        assert (i in front) == (not dominated)


def test_exhaustive_is_the_true_optimum(note10, reference_dir) -> None:
    from compofa_bench import predictor

    pred = predictor.load(reference_dir / "compofa" / "acc_predictor.pth")
    space = spaces.get("compofa", [160, 192, 224])
    targets = [11.0, 14.0, 18.0, 23.0, 40.0]
    out = S.search(
        space, sources.PredictorAccuracy(pred), note10, targets, np.random.default_rng(0)
    )
    assert out.method == "exhaustive"
    archs = list(space.enumerate())  # independent path: Arch objects, the table's own predict
    acc = pred.predict(archs)
    lat = note10.table.predict_ms(archs, width_mult=1.2)
    for r in out.results:
        ok = lat <= r.target
        assert r.feasible and r.arch is not None
        assert r.score == pytest.approx(acc[ok].max(), abs=1e-9)
        assert note10.table.predict_ms([r.arch], width_mult=1.2)[0] <= r.target
    # the frontier is exactly the non-dominated set of the whole space
    assert len(out.frontier) == len(S.pareto_front(acc, lat))


def test_infeasible_target_names_the_fastest() -> None:
    space = spaces.get("compofa", [160, 224])
    macs = sources.MacsLatency(1.0)
    fastest = min(supernet.count_macs(a) / 1e6 for a in space.enumerate())
    for method in ("exhaustive", "evolution"):
        out = S.search(
            space,
            sources.MacsProxy(space),
            macs,
            [fastest * 0.9, fastest * 3],
            np.random.default_rng(0),
            method=method,
            config=S.EvolutionConfig(generations=5),
        )
        bad, good = out.results
        assert not bad.feasible and bad.arch is None
        assert f"{fastest:.3f}" in bad.message
        assert good.feasible
        assert out.fastest[1] == pytest.approx(fastest)


def test_evolution_reproducible_feasible_and_near_optimal() -> None:
    space = spaces.get("compofa", [128, 160, 192, 224])
    macs = sources.MacsLatency(1.0)
    acc = sources.MacsProxy(space)  # maximizing MACs under a MACs cap: the optimum is known exactly
    every = list(space.enumerate())
    all_macs = np.array([supernet.count_macs(a) / 1e6 for a in every])
    # the fastest member exactly (tight), and looser caps
    targets = [float(all_macs.min()), 150.0, 250.0, 400.0]
    cfg = S.EvolutionConfig(population_size=40, generations=40)
    runs = [
        S.search(
            space, acc, macs, targets, np.random.default_rng(7), method="evolution", config=cfg
        )
        for _ in range(2)
    ]
    assert [r.arch for r in runs[0].results] == [r.arch for r in runs[1].results]
    for r in runs[0].results:
        assert r.feasible
        true_cost = supernet.count_macs(r.arch) / 1e6
        assert true_cost == pytest.approx(r.cost) and true_cost <= r.target + 1e-9
        best = all_macs[all_macs <= r.target].max()
        assert r.score >= 0.98 * best


def test_non_additive_source_is_memoized() -> None:
    space = spaces.get("compofa", [160])
    src = SlowMacs()
    out = S.search(
        space,
        sources.MacsProxy(space),
        src,
        [200.0],
        np.random.default_rng(0),
        method="evolution",
        config=S.EvolutionConfig(population_size=20, generations=10),
    )
    assert out.results[0].feasible
    assert src.calls <= space.size()  # each distinct arch priced once at most


def test_targets_parsing_and_bad_method() -> None:
    assert S.parse_targets("15, 20,25") == [15.0, 20.0, 25.0]
    for bad in ("", "x", "-3", "nan"):
        with pytest.raises(SearchError):
            S.parse_targets(bad)
    space = spaces.get("ofa")
    with pytest.raises(SearchError, match="exhaustive"):
        S.search(
            space,
            sources.MacsProxy(space.with_resolutions([160])),
            sources.MacsLatency(),
            [300.0],
            np.random.default_rng(0),
            method="exhaustive",
        )


def test_macs_proxy_score_is_macs() -> None:
    space = spaces.get("compofa", [160, 224])
    arr = S.Genome(space).sample(10, np.random.default_rng(5))
    got = sources.MacsProxy(space).score(arr)
    want = [supernet.count_macs(a) / 1e6 for a in _archs(arr, space)]
    np.testing.assert_allclose(got, want)
    assert sources.MacsProxy.is_proxy and "not an accuracy" in sources.MacsProxy.label


def test_cached_score_counts_each_arch_once() -> None:
    space = spaces.get("compofa", [160, 224])
    calls = []

    class Counting:
        label, is_proxy = "count", True

        def score(self, arr):
            calls.append(len(arr))
            return arr.r.astype(float)

    cached = S.CachedScore(Counting(), space.stage_sizes)
    a = S.Genome(space).sample(50, np.random.default_rng(6))
    both = S.concat([a, a])
    np.testing.assert_array_equal(cached(both), both.r.astype(float))
    np.testing.assert_array_equal(cached(a), a.r.astype(float))
    n_distinct = len(set(_archs(a, space)))
    assert sum(calls) == n_distinct


def test_keys_ignore_inactive_slots() -> None:
    space = spaces.get("ofa", [160])
    x = space.smallest(160)
    a = ArchArrays(np.array([x.ks]), np.array([x.e]), np.array([x.d]), np.array([160]))
    ks = np.array([x.ks])
    ks[0, 3] = 7 if ks[0, 3] != 7 else 5  # slot 3 is inactive at depth 2
    b = ArchArrays(ks, np.array([x.e]), np.array([x.d]), np.array([160]))
    assert S.arch_keys(a, space.stage_sizes) == S.arch_keys(b, space.stage_sizes)
    assert math.isfinite(sources.MacsLatency().additive(space).evaluate(b)[0])


@pytest.mark.slow
def test_measured_latency_is_memoized_in_the_store(tmp_path) -> None:
    from compofa_bench.adapters import open_adapter
    from compofa_bench.devices import load_device
    from compofa_bench.store import ResultStore

    space = spaces.get("compofa", [64])
    fast = {"warmup_runs": 1, "warmup_min_s": 0.0, "min_runs": 3, "min_s": 0.0, "max_s": 1.0}
    store = str(tmp_path / "r.db")
    cfg = S.EvolutionConfig(population_size=4, generations=1)

    def run():
        spec = load_device("cpu-ort-1t")
        with open_adapter(spec) as adapter, ResultStore(store) as st:
            cost = sources.MeasuredLatency(
                spec, adapter, st, space="compofa", protocol_overrides=fast
            )
            return S.search(
                space,
                sources.MacsProxy(space),
                cost,
                [1000.0],
                np.random.default_rng(0),
                method="evolution",
                config=cfg,
            )

    first = run()
    with ResultStore(store) as st:
        n = st.count()
    assert n >= 4
    r = first.results[0]
    assert r.feasible and r.cost > 0
    again = run()  # same seed, same archs: all answered from the store
    with ResultStore(store) as st:
        assert st.count() == n
    assert again.results[0].arch == r.arch and again.results[0].cost == r.cost


def test_avoid_repeats_option_stays_feasible() -> None:
    space = spaces.get("compofa", [160, 192])
    cfg = S.EvolutionConfig(population_size=20, generations=15, avoid_repeats=True)
    out = S.search(
        space,
        sources.MacsProxy(space),
        sources.MacsLatency(),
        [120.0, 250.0],
        np.random.default_rng(3),
        method="evolution",
        config=cfg,
    )
    for r in out.results:
        assert r.feasible and supernet.count_macs(r.arch) / 1e6 <= r.target


# ------------------------------------------------------------------ local search


def _random_predictor(space: spaces.SearchSpace, seed: int):
    """A real predictor (OFA's MLP shape) with seeded random weights: a rugged, non-additive
    score that needs no reference data."""
    import torch

    from compofa_bench import predictor as P
    from compofa_bench.encoding import Encoder

    enc = Encoder.for_space(space)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = P.build_mlp(enc.dim, (64, 64))
    return P.AccuracyPredictor(enc, model, (64, 64))


def _neighbours(arch: spaces.Arch, space: spaces.SearchSpace) -> list[spaces.Arch]:
    """Every single-gene neighbour, written from the space's rules (not from search.py)."""
    out = []
    sizes = space.stage_sizes
    for r in space.resolutions:
        if r != arch.resolution:
            out.append(spaces.Arch(arch.ks, arch.e, arch.d, r, sizes))
    start = 0
    for st, size in enumerate(sizes):
        if space.coupling is None:
            genes = [(d, None) for d in space.depth_choices[st]]
        else:
            genes = [(d, e) for d, e in space.coupling if d in space.depth_choices[st]]
        for d, e in genes:
            dd = list(arch.d)
            dd[st] = d
            ee = list(arch.e)
            if e is not None:
                ee[start : start + size] = [e] * size
            out.append(spaces.Arch(arch.ks, tuple(ee), tuple(dd), arch.resolution, sizes))
        for j in range(arch.d[st]):  # active slots only
            s = start + j
            for k in space.kernel_choices[s]:
                ks = list(arch.ks)
                ks[s] = k
                out.append(spaces.Arch(tuple(ks), arch.e, arch.d, arch.resolution, sizes))
            if space.coupling is None:
                for x in space.expand_choices:
                    ee = list(arch.e)
                    ee[s] = x
                    out.append(spaces.Arch(arch.ks, tuple(ee), arch.d, arch.resolution, sizes))
        start += size
    return out


@pytest.mark.parametrize("name", ["ofa", "compofa"])
def test_local_search_ends_in_a_feasible_local_optimum(name: str) -> None:
    space = spaces.get(name, [160, 192, 224])
    pred = _random_predictor(space, 5)
    pricer = S.Pricer(sources.MacsLatency(1.0), space)
    limit = 260.0 if name == "ofa" else 220.0
    rng = np.random.default_rng(4)
    starts = S.Genome(space).sample(12, rng)
    limits = np.full(12, limit)
    fixed, fsc, fco, ok = S.repair(space, pred.predict, pricer, starts, limits)
    assert ok.all()
    assert np.all(fco <= limit)
    np.testing.assert_allclose(fsc, pred.predict(fixed), rtol=1e-6)
    out, sc, co = S.local_search(space, pred.predict, pricer, fixed, limits, pairs=16)
    assert np.all(sc >= fsc)  # never worse than where it started
    for i, arch in enumerate(_archs(out, space)):
        space.validate(arch)
        true_cost = supernet.count_macs(arch) / 1e6
        assert true_cost == pytest.approx(co[i]) and true_cost <= limit + 1e-9
        assert sc[i] == pytest.approx(float(pred.predict([arch])[0]), abs=1e-6)
        nbs = _neighbours(arch, space)
        nb_cost = np.array([supernet.count_macs(a) / 1e6 for a in nbs])
        nb_score = pred.predict(nbs)
        ok_nb = nb_cost <= limit
        # a local optimum: no feasible single-gene neighbour scores strictly higher
        assert not np.any(nb_score[ok_nb] > sc[i] + 1e-7)


def test_local_search_refuses_infeasible_starts() -> None:
    space = spaces.get("compofa", [224])
    pricer = S.Pricer(sources.MacsLatency(1.0), space)
    big = ArchArrays.from_archs([space.largest(224)])
    with pytest.raises(SearchError):
        S.local_search(space, sources.MacsProxy(space).score, pricer, big, np.array([100.0]))


@pytest.mark.parametrize(
    "starts",
    [
        {},  # the default: knapsack starts
        # the first session's default: repaired projections, random starts, cross-target
        # starts and kicks
        {"local_knapsack": 0, "local_random": 2, "local_cross": True, "local_kicks": 2},
    ],
)
def test_search_with_local_search_reproducible_and_not_worse(starts) -> None:
    space = spaces.get("ofa", [160, 192, 224])
    acc = sources.PredictorAccuracy(_random_predictor(space, 9))
    macs = sources.MacsLatency(1.0)
    targets = [200.0, 300.0, 450.0]
    base = S.EvolutionConfig(population_size=30, generations=10, **starts)

    def run(cfg: S.EvolutionConfig) -> S.SearchOutcome:
        return S.search(
            space, acc, macs, targets, np.random.default_rng(11), method="evolution", config=cfg
        )

    plain = run(S.EvolutionConfig(population_size=30, generations=10, local_starts=0))
    a, b = run(base), run(base)
    assert [r.arch for r in a.results] == [r.arch for r in b.results]
    assert [r.score for r in a.results] == [r.score for r in b.results]
    for r, p in zip(a.results, plain.results, strict=True):
        space.validate(r.arch)
        assert r.feasible and supernet.count_macs(r.arch) / 1e6 <= r.target + 1e-9
        # the same evolution runs first, so polishing can only keep or raise its winner
        assert r.score >= p.score
    # on this rugged score it does raise some: the local search is not a no-op
    assert any(r.score > p.score for r, p in zip(a.results, plain.results, strict=True))
    # the frontier includes the polished winners and stays non-dominated
    costs = [c for _, _, c in a.frontier]
    scores = [s for _, s, _ in a.frontier]
    assert costs == sorted(costs) and scores == sorted(scores)


def test_generations_default_to_a_short_evolution_only_before_a_local_search() -> None:
    space = spaces.get("compofa", [160, 192])
    macs = sources.MacsLatency(1.0)

    def run(cfg: S.EvolutionConfig) -> S.SearchOutcome:
        return S.search(
            space,
            sources.MacsProxy(space),
            macs,
            [250.0],
            np.random.default_rng(0),
            "evolution",
            cfg,
        )

    assert S.EvolutionConfig().generations is None
    polished = run(S.EvolutionConfig(population_size=8))
    assert polished.config is not None and polished.config.generations == S.SHORT_GENERATIONS
    # no local search follows: the evolution runs OFA's budget on its own
    plain = run(S.EvolutionConfig(population_size=4, local_starts=0))
    assert plain.config is not None and plain.config.generations == S.OFA_GENERATIONS
    # an explicit value stands, and exhaustive search has no evolution settings
    assert run(S.EvolutionConfig(population_size=8, generations=3)).config.generations == 3
    assert (
        S.search(space, sources.MacsProxy(space), macs, [250.0], np.random.default_rng(0)).config
        is None
    )
