"""Search spaces and Arch: counting, enumeration, sampling, evolution operators, parsing."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compofa_bench import spaces
from compofa_bench.errors import ArchError, SpaceError
from compofa_bench.spaces import Arch

ALL = ("ofa", "compofa", "compofa-ek")


def stage_genes(arch: Arch) -> list[tuple[int, tuple[int, ...]]]:
    """Per stage: depth and the expand ratios of the active layers."""
    return [
        (arch.d[s], tuple(arch.e[i] for i in arch.stage_slots(s)[: arch.d[s]]))
        for s in range(arch.n_stages)
    ]


def test_names_and_unknown() -> None:
    assert set(ALL) <= set(spaces.names())
    with pytest.raises(SpaceError, match="unknown space"):
        spaces.get("nope")


def test_exact_counts() -> None:
    # Per stage: sum over depths d of (kernels * expands)^d  (OFA) or kernels^d (coupled).
    assert spaces.get("ofa").structure_count() == (9**2 + 9**3 + 9**4) ** 5 == 7371**5
    assert spaces.get("compofa").structure_count() == 3**5 == 243
    assert spaces.get("compofa-ek").structure_count() == (3**2 + 3**3 + 3**4) ** 5 == 117**5
    space = spaces.get("compofa", resolutions=[160, 224])
    assert space.size() == 486


def test_enumerate_compofa_unique_valid_and_complete() -> None:
    space = spaces.get("compofa")
    archs = list(space.enumerate())
    assert len(archs) == space.size() == 243 * len(space.resolutions)
    assert len(set(archs)) == len(archs)
    assert len({a.key() for a in archs}) == len(archs)
    for a in archs:
        space.validate(a)
        # fixed kernels 3,5,3,3,5 per stage
        for stage, slot, _ in a.active_layers():
            assert a.ks[slot] == spaces.COMPOFA_KERNELS[stage]


def test_enumerate_refuses_huge_space() -> None:
    with pytest.raises(SpaceError, match="too many"):
        next(spaces.get("compofa-ek").enumerate())


@pytest.mark.parametrize("name", ALL)
def test_sample_in_space_and_reproducible(name: str) -> None:
    space = spaces.get(name)
    a = [space.sample(np.random.default_rng(5)) for _ in range(1)] + [
        space.sample(np.random.default_rng(5))
    ]
    assert a[0] == a[1]
    many = space.sample_many(50, np.random.default_rng(1))
    assert many == space.sample_many(50, np.random.default_rng(1))
    assert len(set(many)) == 50
    for arch in many:
        assert space.validate(arch) is arch
    # different seeds give different draws (50 draws from a space of >= 972)
    assert many != space.sample_many(50, np.random.default_rng(2))


def test_sample_many_too_many() -> None:
    space = spaces.get("compofa", resolutions=[224])
    assert len(set(space.sample_many(243, np.random.default_rng(0)))) == 243
    with pytest.raises(SpaceError):
        space.sample_many(244, np.random.default_rng(0))


@pytest.mark.parametrize("name", ALL)
def test_mutate_and_crossover_stay_in_space(name: str) -> None:
    space = spaces.get(name)
    rng = np.random.default_rng(3)
    parents = space.sample_many(20, rng)
    for a, b in zip(parents[::2], parents[1::2], strict=True):
        m = space.mutate(a, rng, prob=0.5)
        c = space.crossover(a, b, rng)
        space.validate(m)
        space.validate(c)
    a, b = parents[0], parents[1]
    assert space.mutate(a, np.random.default_rng(9), 0.3) == space.mutate(
        a, np.random.default_rng(9), 0.3
    )
    assert space.crossover(a, b, np.random.default_rng(9)) == space.crossover(
        a, b, np.random.default_rng(9)
    )
    assert space.mutate(a, np.random.default_rng(9), 0.0) == a


@pytest.mark.parametrize("name", ["compofa", "compofa-ek"])
def test_coupled_operators_keep_depth_and_expand_together(name: str) -> None:
    space = spaces.get(name)
    coupling = dict(spaces.COMPOFA_COUPLING)
    rng = np.random.default_rng(11)
    changed_depth = False
    for _ in range(40):
        a, b = space.sample(rng), space.sample(rng)
        m = space.mutate(a, rng, prob=0.5)
        c = space.crossover(a, b, rng)
        for child in (m, c):
            for depth, es in stage_genes(child):
                assert set(es) == {coupling[depth]}
        ga, gb = stage_genes(a), stage_genes(b)
        for s, gene in enumerate(stage_genes(c)):
            assert gene in (ga[s], gb[s])
        changed_depth |= m.d != a.d
    assert changed_depth


def test_uncoupled_mutation_moves_expand_independently() -> None:
    space = spaces.get("ofa")
    rng = np.random.default_rng(0)
    seen_mixed = False
    for _ in range(20):
        m = space.mutate(space.sample(rng), rng, prob=0.5)
        seen_mixed |= any(len(set(es)) > 1 for _, es in stage_genes(m))
    assert seen_mixed


def test_ofa_round_trip_r_and_image_size() -> None:
    arch = spaces.get("ofa").sample(np.random.default_rng(4))
    d = arch.to_ofa()
    assert d["r"] == [arch.resolution]
    assert Arch.from_ofa(d) == arch
    d2 = arch.to_ofa("image_size")
    assert d2["image_size"] == arch.resolution and "r" not in d2
    assert Arch.from_ofa(d2) == arch
    assert Arch.from_ofa(json.loads(json.dumps(d))) == arch
    assert Arch.from_ofa({**d, "r": arch.resolution}) == arch  # a bare int works too
    no_res = {k: v for k, v in d.items() if k != "r"}
    assert Arch.from_ofa(no_res, resolution=160).resolution == 160
    with pytest.raises(ArchError, match="resolution"):
        Arch.from_ofa(no_res)
    with pytest.raises(ValueError):
        arch.to_ofa("size")


def test_values_beyond_depth_are_ignored_and_normalized() -> None:
    base = spaces.get("ofa").smallest(224)  # depth 2 everywhere
    ks, e = list(base.ks), list(base.e)
    ks[2], ks[3], e[2], e[3] = 7, 5, 6, 4  # slots 2,3 of stage 0 are inactive
    other = Arch(tuple(ks), tuple(e), base.d, 224)
    assert other == base and hash(other) == hash(base) and other.key() == base.key()
    assert other.ks[2] == other.ks[1] and other.e[3] == other.e[1]
    spaces.get("ofa").validate(other)
    # an out-of-space value in an inactive slot is ignored too
    ks[3] = 9
    spaces.get("ofa").validate(Arch(tuple(ks), tuple(e), base.d, 224))


def test_validate_messages_name_the_field() -> None:
    space = spaces.get("compofa")
    good = space.sample(np.random.default_rng(0)).to_ofa()
    bad = dict(good, ks=[7] * 20)
    with pytest.raises(ArchError, match=r"ks\[0\].*kernel 7"):
        space.parse(bad)
    bad = dict(good, d=[2, 2, 2, 2, 2], e=[6] * 20)
    with pytest.raises(ArchError, match=r"e\[0\].*couples depth 2 with expand 3"):
        space.parse(bad)
    with pytest.raises(ArchError, match="resolution 100"):
        space.parse(dict(good, r=[100]))
    with pytest.raises(ArchError, match=r"d\[1\]"):
        spaces.get("ofa").parse(dict(good, d=[2, 1, 2, 2, 2]))
    with pytest.raises(ArchError, match=r"expected 20 values|ks/e have"):
        space.parse(dict(good, ks=[3] * 19))


def test_resolutions_parsing() -> None:
    assert spaces.parse_resolutions("160,224") == (160, 224)
    assert spaces.parse_resolutions("128-224:32") == (128, 160, 192, 224)
    assert spaces.parse_resolutions("224,160,160") == (160, 224)
    for bad in ("abc", "130", "", "16", "1000", "128-224:x"):
        with pytest.raises(SpaceError):
            spaces.parse_resolutions(bad)


def test_largest_smallest() -> None:
    for name in ALL:
        space = spaces.get(name)
        big, small = space.largest(), space.smallest()
        space.validate(big)
        space.validate(small)
        assert big.d == (4,) * 5 and small.d == (2,) * 5
        assert big.resolution == max(space.resolutions)


def test_key_is_stable_across_processes() -> None:
    archs = spaces.get("ofa").sample_many(5, np.random.default_rng(123))
    code = (
        "import json, numpy as np\n"
        "from compofa_bench import spaces\n"
        "a = spaces.get('ofa').sample_many(5, np.random.default_rng(123))\n"
        "print(json.dumps([x.key() for x in a]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "987"},
    )
    assert json.loads(out.stdout) == [a.key() for a in archs]
    k = archs[0].key()
    assert k.startswith(f"r{archs[0].resolution}-d") and "-k" in k and "-e" in k


# ------------------------------------------------------------------ property tests

junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=10,
)
int_lists = st.lists(
    st.one_of(st.integers(-3, 10), st.floats(allow_nan=True), st.text(max_size=2), st.none()),
    max_size=22,
)


@st.composite
def malformed_arch(draw: st.DrawFn) -> object:
    good = spaces.get("ofa").sample(np.random.default_rng(draw(st.integers(0, 1000)))).to_ofa()
    mode = draw(st.sampled_from(["junk", "field", "drop", "res", "lengths"]))
    if mode == "junk":
        return draw(junk)
    spec = dict(good)
    if mode == "field":
        spec[draw(st.sampled_from(["ks", "e", "d", "r"]))] = draw(junk | int_lists)
    elif mode == "drop":
        spec.pop(draw(st.sampled_from(["ks", "e", "d", "r"])))
    elif mode == "res":
        spec["r"] = draw(
            st.sampled_from([[float("nan")], [224.5], ["224"], [], [224, 160], -4, True, 2**70])
        )
    else:
        spec["ks"] = good["ks"][: draw(st.integers(0, 25))]
        spec["d"] = good["d"] * draw(st.integers(0, 3))
    return spec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_arch(), st.sampled_from(ALL))
def test_malformed_archs_raise_only_arch_or_space_errors(spec: object, name: str) -> None:
    space = spaces.get(name)
    for parse in (Arch.from_ofa, space.parse):
        try:
            arch = parse(spec)  # type: ignore[arg-type]
        except (ArchError, SpaceError):
            continue
        # whatever parses is a well-formed arch
        assert isinstance(arch, Arch)
        assert all(isinstance(v, int) for v in (*arch.ks, *arch.e, *arch.d, arch.resolution))
        assert math.isfinite(arch.resolution)
