"""McNemar's test against textbook tables."""

import numpy as np
import pytest

from vib_deploy.report.stats import Paired, mcnemar_chi2, mcnemar_exact, paired, pooled


def test_wikipedia_example_exact_and_chi2():
    # Wikipedia "McNemar's test", example table a=59, b=6, c=16, d=80: exact binomial p = 0.0525 (sum_{k<=6} C(22,k) = 110056)
    assert mcnemar_exact(6, 16) == pytest.approx(2 * 110056 / 2**22, rel=1e-12)
    assert mcnemar_exact(6, 16) == pytest.approx(0.0525, abs=5e-5)
    stat, p = mcnemar_chi2(6, 16, correction=False)
    assert stat == pytest.approx(100 / 22) and p == pytest.approx(0.0330, abs=5e-4)  # 4.55, p = 0.033
    stat, p = mcnemar_chi2(6, 16)
    assert stat == pytest.approx(81 / 22) and p == pytest.approx(0.0550, abs=5e-4)


def test_agresti_presidential_approval():
    # Agresti, Categorical Data Analysis, Table 10.1: 794 / 150 / 86 / 570; z^2 = 17.36, p < 0.001
    stat, p = mcnemar_chi2(150, 86, correction=False)
    assert stat == pytest.approx(17.36, abs=5e-3) and p < 1e-3
    assert mcnemar_chi2(86, 150) == mcnemar_chi2(150, 86)
    assert mcnemar_exact(150, 86) == pytest.approx(mcnemar_exact(86, 150)) and mcnemar_exact(150, 86) < 1e-3


def test_edge_cases_and_large_n():
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 1) == 1.0  # 2 * 0.5 capped at 1
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert 0 < mcnemar_exact(2000, 2200) < 0.01  # no float underflow at thousands of discordant images


def test_paired_counts_and_verdicts():
    a = np.array([1, 1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 0, 1, 0, 1], bool)
    p = paired(a, b)
    assert (p.a_only, p.b_only, p.n) == (2, 1, 6) and p.verdict() == "tie"  # never a win without significance
    assert Paired(40, 10, 10_000, mcnemar_exact(40, 10)).verdict() == "better"
    assert Paired(10, 40, 10_000, mcnemar_exact(10, 40)).verdict() == "worse"
    both = pooled([Paired(20, 5, 100, 0.0), Paired(20, 5, 100, 0.0)])
    assert (both.a_only, both.b_only, both.n) == (40, 10, 200) and both.p_value == mcnemar_exact(40, 10)
    with pytest.raises(ValueError):
        paired(a, b[:3])


def test_compare_verdicts_use_the_test_and_never_call_a_tie_a_win():
    from vib_deploy.studies.compare import verdicts

    def rec(method, seed, error, a=None, b=None):
        r = {"method": method, "seed": seed, "error": error}
        if a is not None:
            r["vs_vib"] = {"a_only": a, "b_only": b, "n": 10_000, "p_value": mcnemar_exact(a, b)}
        return r

    vib = [rec("vib", 0, 0.0180), rec("vib", 1, 0.0182)]
    # VIB lower error on both seeds, but 12 vs 9 discordant images: not significant -> tie
    lines = verdicts(vib + [rec("l1", 0, 0.0183, 7, 4), rec("l1", 1, 0.0183, 5, 5)])
    assert "McNemar" in lines[0] and lines[1].endswith("**tie**") and "p = " in lines[1]
    lines = verdicts(vib + [rec("random", 0, 0.0300, 140, 20), rec("random", 1, 0.0290, 130, 22)])
    assert lines[1].endswith("**VIB better**")
    lines = verdicts(vib + [rec("l1", 0, 0.0100, 10, 90)])
    assert lines[1].endswith("**VIB worse**")
    lines = verdicts(vib + [rec("l1", 0, 0.0100)])  # an old record without per-image correctness
    assert "**not tested**" in lines[1]
