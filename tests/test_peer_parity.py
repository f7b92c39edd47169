"""Parity with a peer's own code on a recorded array: felixsh/nc-toolbox's numpy metrics were run
once on tests/data/nc_toolbox_parity.npz (balanced classes, the sample global mean; the peer is
not a dependency) and their numbers saved beside the inputs. Each is ours, or ours converted by a
stated identity (docs/theory.md §4, "The peers' measures")."""
import os

import numpy as np
import pytest

from ufm.measure import measure_arrays

DATA = os.path.join(os.path.dirname(__file__), "data", "nc_toolbox_parity.npz")


@pytest.fixture(scope="module")
def recorded():
    with np.load(DATA) as f:
        data = {k: f[k] for k in f.files}
    ours = measure_arrays(data["H"], data["labels"], data["W"], data["b"],
                          global_mean="samples")["layers"]["features"]
    return data, ours


def test_nc1_is_their_nc1_strong(recorded):
    data, ours = recorded
    assert ours["nc1"] == pytest.approx(float(data["peer/nc1_strong"]), rel=1e-10)


def test_their_weak_nc1_is_our_quotient_normalised(recorded):
    data, ours = recorded
    q = ours["nc1_quotient"]  # trΣ_W/trΣ_B; theirs trΣ_W/(trΣ_W + trΣ_B) and the complement
    assert q / (1 + q) == pytest.approx(float(data["peer/nc1_weak_within"]), rel=1e-12)
    assert 1 / (1 + q) == pytest.approx(float(data["peer/nc1_weak_between"]), rel=1e-12)


def test_their_cdnv_uses_unbiased_class_variances(recorded):
    data, ours = recorded
    n = np.bincount(data["labels"])[0]  # balanced: every class has n samples
    assert ours["nc1_cdnv"] * n / (n - 1) == pytest.approx(float(data["peer/nc1_cdnv"]),
                                                           rel=1e-12)


def test_their_self_duality_is_the_root_of_ours(recorded):
    data, ours = recorded
    assert np.sqrt(ours["self_duality"]) == pytest.approx(
        float(data["peer/nc3_self_duality"]), rel=1e-12)


def test_their_classifier_agreement_is_one_minus_our_mismatch(recorded):
    data, ours = recorded
    assert 1 - ours["nc4_mismatch"] == pytest.approx(
        float(data["peer/nc4_classifier_agreement"]), abs=1e-15)
