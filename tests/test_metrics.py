import itertools

import numpy as np
import pytest
from scipy import stats

from rsd_rerank.metrics import footrule, kemeny, kendall_tau, positions, similarity, spearman_rho


@pytest.fixture
def pairs():
    rng = np.random.default_rng(0)
    k, n = 20, 200
    pred = np.stack([rng.permutation(k) for _ in range(n)])
    target = np.stack([rng.permutation(k) for _ in range(n)])
    return pred, target


def test_kendall_and_spearman_match_scipy(pairs):
    pred, target = pairs
    p, t = positions(pred), positions(target)
    kt = [stats.kendalltau(a, b).statistic for a, b in zip(p, t, strict=True)]
    sr = [stats.spearmanr(a, b).statistic for a, b in zip(p, t, strict=True)]
    np.testing.assert_allclose(kendall_tau(pred, target), kt, atol=1e-12)
    np.testing.assert_allclose(spearman_rho(pred, target), sr, atol=1e-12)


def test_footrule_and_kemeny_match_brute_force(pairs):
    pred, target = pairs
    for a, b, fd, kd in zip(pred, target, footrule(pred, target), kemeny(pred, target), strict=True):
        ra, rb = {d: r for r, d in enumerate(a)}, {d: r for r, d in enumerate(b)}
        assert fd == sum(abs(ra[d] - rb[d]) for d in ra)
        assert kd == sum((ra[x] - ra[y]) * (rb[x] - rb[y]) < 0 for x, y in itertools.combinations(ra, 2))


def test_extremes():
    ident = np.arange(5)[None]
    rev = ident[:, ::-1]
    assert similarity(ident, ident) == {"KT": 1.0, "SR": 1.0, "FD": 0.0, "KD": 0.0}
    assert kendall_tau(rev, ident)[0] == -1.0 and spearman_rho(rev, ident)[0] == -1.0
    assert kemeny(rev, ident)[0] == 10 and footrule(rev, ident)[0] == 12


@pytest.mark.parametrize("bad", [[[0, 0, 1]], [[0, 1, 3]], [[[0, 1]]]])
def test_rejects_non_permutations(bad):
    with pytest.raises(ValueError, match="permutations"):
        kendall_tau(np.array(bad), np.array(bad))


def test_one_table_of_fidelity_measures_drives_similarity():
    from rsd_rerank.metrics import MEASURES

    pred, target = np.array([[1, 0, 2]]), np.array([[0, 1, 2]])
    values = similarity(pred, target)
    assert list(values) == list(MEASURES) == ["KT", "SR", "FD", "KD"]
    assert [m.higher_is_better for m in MEASURES.values()] == [True, True, False, False]
    assert values == {name: float(m.fn(pred, target)[0]) for name, m in MEASURES.items()}
