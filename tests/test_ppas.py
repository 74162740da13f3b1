"""PPAS (deid.anonymize.ppas): t-closeness keep/flip on small tables with known answers,
randomized-response frequencies against their epsilon (binomial and chi-square tests), and the
attribute charges in a real ledger, composed with dp-image charges by the same accountant."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from deid.anonymize.ppas import (AttributePolicy, Reference, attribute_facts, earth_movers, keep_probability,
                                 randomized_response, rr_release, select, selected, total_variation)
from deid.attributes.base import AttributeSpec, Estimate
from deid.privacy.accountant import Charge, compose, kary_rr_epsilon
from deid.privacy.ledger import Ledger
from deid.privacy.mechanisms import calibrate_gaussian, calibrate_laplace

GENDER = AttributeSpec("gender", ("female", "male"))
AGE = AttributeSpec("age", ("<30", "30-44", "45-59", "60+"), ordered=True)
MOUTH = AttributeSpec("mouth", ("closed", "open"))
REF = {"gender": Reference(GENDER, (0.3, 0.7)), "age": Reference(AGE, (0.1, 0.2, 0.3, 0.4)),
       "mouth": Reference(MOUTH, (0.5, 0.5))}
ALPHA = 1e-3  # false-alarm rate of each statistical test below
KEY = "ab" * 32


# --------------------------------------------------------------------------- t-closeness
def test_distances_on_known_tables():
    assert total_variation((0.3, 0.7), (1.0, 0.0)) == pytest.approx(0.7)
    # CDFs (0.1, 0.3, 0.6) vs (1, 1, 1): |0.9| + |0.7| + |0.4| = 2.0, over k - 1 = 3
    assert earth_movers((0.1, 0.2, 0.3, 0.4), (1, 0, 0, 0)) == pytest.approx(2.0 / 3)
    assert earth_movers((0.1, 0.2, 0.3, 0.4), (0, 0, 0, 1)) == pytest.approx(1.0 / 3)
    assert earth_movers((0, 0, 0, 1), (1, 0, 0, 0)) == pytest.approx(1.0)


def test_keep_within_t_flip_beyond():
    female, male = Estimate.point(GENDER, 0), Estimate.point(GENDER, 1)
    # TV(female point, (0.3, 0.7)) = 0.7, TV(male point) = 0.3
    assert selected(female, REF["gender"], AttributePolicy(epsilon=1, t=0.8)) == 0      # 0.7 <= 0.8: keep
    assert selected(female, REF["gender"], AttributePolicy(epsilon=1, t=0.5)) == 1      # 0.7 > 0.5: not-E
    assert selected(male, REF["gender"], AttributePolicy(epsilon=1, t=0.5)) == 1        # 0.3 <= 0.5: keep
    assert selected(male, REF["gender"], AttributePolicy(epsilon=1, t=0.2)) == 0        # 0.3 > 0.2: flipped
    # ordered: EMD of band 60+ is 1/3 (kept at t=0.5), of band <30 is 2/3 (flipped to the mode, 60+)
    policy = AttributePolicy(epsilon=1, t=0.5)
    assert selected(Estimate.point(AGE, 3), REF["age"], policy) == 3
    assert selected(Estimate.point(AGE, 0), REF["age"], policy) == 3
    # ... and the mode itself flips to the next most probable band when t is tight
    assert selected(Estimate.point(AGE, 3), REF["age"], AttributePolicy(epsilon=1, t=0.2)) == 2
    # total variation forced on the ordered attribute: TV(<30 point) = 0.9 > 0.5
    assert selected(Estimate.point(AGE, 1), REF["age"], AttributePolicy(epsilon=1, t=0.85, distance="tv")) == 1
    # soft: the estimator's probabilities (0.6, 0.4) are 0.3 from the reference: kept at t=0.5
    soft = Estimate(GENDER, 0, (0.6, 0.4))
    assert selected(soft, REF["gender"], policy, "soft") == 0
    assert selected(soft, REF["gender"], policy, "point") == 1
    # not estimated: the reference's own mode, at distance 0
    assert selected(None, REF["age"], policy) == 3


def test_select_releases_every_attribute_with_its_charge():
    est = {"gender": Estimate.point(GENDER, 0), "age": Estimate.point(AGE, 0)}
    params = {"attributes": {"gender": {"epsilon": 40, "t": 0.8}, "age": {"epsilon": 40, "t": 0.5}}}
    released, sel = select(est, REF, params, test_seed=3)
    # at epsilon 40 randomized response keeps with probability 1 - 3e-18: the t-closeness answer
    assert released == {"gender": "female", "age": "60+"} and sel.test_mode
    assert [(r.mechanism, r.categories, r.epsilon) for r in sel.releases] == [("kary_rr", 2, 40.0), ("kary_rr", 4, 40.0)]
    assert sel.epsilon == 80.0
    name, facts = attribute_facts(sel)
    assert name == "attributes" and facts == [
        {"name": "gender", "categories": 2, "epsilon": 40.0, "mechanism": "kary_rr"},
        {"name": "age", "categories": 4, "epsilon": 40.0, "mechanism": "kary_rr"}]
    assert "female" not in repr(facts) and "60+" not in repr(facts)   # facts carry no values
    with pytest.raises(ValueError, match="'pitch' has no public reference"):
        select(est, REF, {"attributes": {"pitch": {"epsilon": 1}}})
    _, real = select(est, REF, params)
    assert not real.test_mode and real.sampler.startswith("opendp")


# --------------------------------------------------------------------------- randomized response
@pytest.mark.parametrize("eps, k", [(1.0, 3), (0.25, 2)])
def test_randomized_response_frequencies_match_epsilon(eps, k):
    """H0: the OpenDP draw keeps the value with probability e^eps / (e^eps + k - 1) and spreads the
    rest evenly. Binomial test on the keep count and chi-square on all k counts, each at alpha 1e-3;
    the same counts must reject the next epsilon up (1.5x), so the test can tell epsilons apart."""
    keep = math.exp(eps) / (math.exp(eps) + k - 1)
    wrong = math.exp(1.5 * eps) / (math.exp(1.5 * eps) + k - 1)
    # enough draws that the two keep rates are 8 standard errors apart: both checks then fail by
    # chance with probability far below alpha (3000 draws were 3.4 SE apart at eps 0.25, k 2: flaky)
    n = max(3000, math.ceil((8 * math.sqrt(keep * (1 - keep)) / (wrong - keep)) ** 2))
    draws = Counter(randomized_response(0, eps, k) for _ in range(n))
    assert keep_probability(eps, k) == pytest.approx(keep, rel=1e-12)
    assert stats.binomtest(draws[0], n, keep).pvalue > ALPHA
    expected = [n * keep] + [n * (1 - keep) / (k - 1)] * (k - 1)
    assert stats.chisquare([draws[i] for i in range(k)], expected).pvalue > ALPHA
    assert stats.binomtest(draws[0], n, wrong).pvalue < ALPHA


def test_test_mode_is_reproducible_and_has_the_same_law():
    a = [randomized_response(1, 1.0, 3, _gen=np.random.Generator(np.random.PCG64(7))) for _ in range(5)]
    b = [randomized_response(1, 1.0, 3, _gen=np.random.Generator(np.random.PCG64(7))) for _ in range(5)]
    assert a == b
    gen = np.random.Generator(np.random.PCG64(11))
    n = 20000
    kept = sum(randomized_response(1, 1.0, 3, _gen=gen) == 1 for _ in range(n))
    assert stats.binomtest(kept, n, math.e / (math.e + 2)).pvalue > ALPHA


def test_release_facts_are_certified():
    r = rr_release(1.0, 3)
    c = Charge.of(r)
    assert (c.mechanism, c.delta, c.sensitivity, c.categories) == ("kary_rr", 0.0, 1.0, 3)
    assert kary_rr_epsilon(c.noise_scale, 3) <= 1.0 * (1 + 1e-9)
    # a claim below what the noise gives is refused, as for Laplace
    with pytest.raises(ValueError, match="more than the stated"):
        Charge("kary_rr", 0.9, 0.0, 1.0, c.noise_scale, 3)
    with pytest.raises(ValueError, match="categories"):
        Charge("kary_rr", 1.0, 0.0, 1.0, c.noise_scale)
    with pytest.raises(ValueError, match="no categories"):
        Charge("laplace", 1.0, 0.0, 1.0, 1.0, 3)


# --------------------------------------------------------------------------- ledger and composition
def test_attribute_charges_in_the_ledger_compose_with_dp_image(tmp_path):
    est = {"gender": Estimate.point(GENDER, 1), "mouth": Estimate.point(MOUTH, 0)}
    _, sel = select(est, REF, {"attributes": {"gender": {"epsilon": 0.5}, "mouth": {"epsilon": 0.25}}})
    image = calibrate_laplace(1.0, 4.0, 8).release()           # a dp-image (Laplace) release
    with Ledger.open(tmp_path / "ledger.sqlite", max_epsilon=2.0, max_delta=1e-5) as led:
        res = led.reserve("run", "img-1", [(KEY, Charge.of(image))])
        assert res.ok
        res = led.reserve("run", "img-1#attributes", [(KEY, Charge.of(r)) for r in sel.releases])
        assert res.ok
        # all pure: the plain sum, 1 + 0.5 + 0.25
        assert led.spent(KEY) == (1.75, 0.0)
        hist = led.history(KEY)
        assert sorted(c.mechanism for c in hist) == ["kary_rr", "kary_rr", "laplace"]
        assert {c.categories for c in hist if c.mechanism == "kary_rr"} == {2}
        # the next attribute release would pass the cap of 2: refused, nothing written
        assert not led.reserve("run", "img-2#attributes", [(KEY, Charge.of(r)) for r in sel.releases]).ok
        assert len(led.history(KEY)) == 3
    # with a Gaussian dp-image release the history is read at max_delta through RDP, which holds the
    # randomized responses by their own curve: more than the Gaussian alone, at most the basic sum
    g = Charge.of(calibrate_gaussian(1.0, 1e-6, 4.0, 8).release())
    rr = [Charge.of(r) for r in sel.releases]
    eps_g, _ = compose([g], target_delta=1e-5)
    eps_all, delta_all = compose([g, *rr], target_delta=1e-5)
    assert eps_g < eps_all <= 1.0 + 0.5 + 0.25 and delta_all == 1e-5
    # k-ary randomized response over more values costs less RDP than binary at the same epsilon
    big = Charge.of(rr_release(0.5, 8))
    assert compose([g, big], target_delta=1e-5)[0] < compose([g, Charge.of(rr_release(0.5, 2))], target_delta=1e-5)[0]


def test_schema_1_ledger_is_migrated_and_keeps_its_charges(tmp_path):
    import sqlalchemy as sa

    path = tmp_path / "old.sqlite"
    eng = sa.create_engine(f"sqlite:///{path}")
    with eng.begin() as c:  # the schema-1 tables, as deid 0.x wrote them
        c.exec_driver_sql("CREATE TABLE deid_ledger_meta (name VARCHAR(64) NOT NULL PRIMARY KEY, value TEXT NOT NULL)")
        c.exec_driver_sql('CREATE TABLE subjects ("key" VARCHAR(64) NOT NULL PRIMARY KEY, created DATETIME NOT NULL)')
        c.exec_driver_sql(
            "CREATE TABLE charges (id INTEGER NOT NULL PRIMARY KEY, subject_key VARCHAR(64) NOT NULL REFERENCES "
            "subjects(key), run_id VARCHAR(200) NOT NULL, record_id VARCHAR(200) NOT NULL, face_index INTEGER NOT "
            "NULL, mechanism VARCHAR(16) NOT NULL, epsilon DOUBLE NOT NULL, delta DOUBLE NOT NULL, sensitivity "
            "DOUBLE NOT NULL, noise_scale DOUBLE NOT NULL, state VARCHAR(16) NOT NULL, created DATETIME NOT NULL, "
            "committed_at DATETIME, CONSTRAINT uq_charges_run_record_face UNIQUE (run_id, record_id, face_index), "
            "CONSTRAINT ck_charges_state CHECK (state IN ('reserved', 'committed')), CONSTRAINT "
            "ck_charges_mechanism CHECK (mechanism IN ('laplace', 'gaussian')))")
        c.exec_driver_sql("CREATE INDEX ix_charges_subject_key ON charges (subject_key)")
        c.exec_driver_sql("INSERT INTO deid_ledger_meta VALUES ('schema_version', '1'), ('max_epsilon', '5.0'), "
                          "('max_delta', '1e-05')")
        c.exec_driver_sql(f"INSERT INTO subjects VALUES ('{KEY}', '2024-01-01 00:00:00')")
        c.exec_driver_sql(f"INSERT INTO charges VALUES (1, '{KEY}', 'old', 'r', 0, 'laplace', 1.0, 0.0, 2.0, 2.0, "
                          "'committed', '2024-01-01 00:00:00', '2024-01-01 00:00:00')")
        with pytest.raises(sa.exc.IntegrityError):  # schema 1 cannot hold an attribute charge
            with c.begin_nested():
                c.exec_driver_sql(f"INSERT INTO charges VALUES (2, '{KEY}', 'x', 'r', 0, 'kary_rr', 1.0, 0.0, 1.0, "
                                  "0.5, 'reserved', '2024-01-01 00:00:00', NULL)")
    eng.dispose()
    with Ledger.open(path) as led:
        assert led.spent(KEY) == (1.0, 0.0)
        assert led.reserve("new", "r", [(KEY, Charge.of(rr_release(1.0, 2)))]).ok
        assert led.spent(KEY) == (2.0, 0.0)
    with sa.create_engine(f"sqlite:///{path}").connect() as c:
        assert c.exec_driver_sql("SELECT value FROM deid_ledger_meta WHERE name='schema_version'").scalar() == "2"
        assert c.exec_driver_sql("SELECT count(*) FROM sqlite_master WHERE name='charges_v1'").scalar() == 0
