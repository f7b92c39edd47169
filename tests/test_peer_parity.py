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


# --- rhubarbwu/neural-collapse, run once (tests/data/rhubarbwu_parity_record.py) --------------

RHUBARBWU = os.path.join(os.path.dirname(__file__), "data", "rhubarbwu_parity.npz")
# Their pairwise grids (CDNV, the kernels) are written into a torch.zeros((K, K)) of torch's default
# float32 whatever the inputs' dtype; each entry then carries float32's rounding (6e-8 relative),
# so those compare at 1e-6. Everything else they compute in the float64 asked for.
GRID_RTOL = 1e-6


@pytest.fixture(scope="module")
def rhubarbwu():
    with np.load(RHUBARBWU) as f:
        data = {k: f[k] for k in f.files}
    ours = measure_arrays(data["H"], data["labels"], data["W"], None,
                          global_mean="samples")["layers"]["features"]
    return data, ours


def test_rhubarbwu_nc1_pinv_and_svd_are_our_nc1(rhubarbwu):
    """Balanced classes: their global mean (the mean of the class means) is the samples' mean."""
    data, ours = rhubarbwu
    assert ours["nc1"] == pytest.approx(float(data["peer/nc1_pinv"]), rel=1e-12)
    assert ours["nc1"] == pytest.approx(float(data["peer/nc1_svd"]), rel=1e-12)
    assert ours["nc1_quotient"] == pytest.approx(float(data["peer/nc1_quotient"]), rel=1e-12)


def test_rhubarbwu_cdnv_and_log_kernel_are_ours_to_their_float32_grid(rhubarbwu):
    data, ours = rhubarbwu
    assert ours["nc1_cdnv"] == pytest.approx(float(data["peer/nc1_cdnv"]), rel=GRID_RTOL)
    assert ours["hyperspherical_log"] == pytest.approx(float(data["peer/log_kernel_var"]),
                                                       rel=GRID_RTOL)
    assert ours["nc1_cdnv"] != pytest.approx(float(data["peer/nc1_cdnv"]), rel=1e-12)


def test_rhubarbwu_means_etf_duality_and_agreement_are_ours(rhubarbwu):
    data, ours = rhubarbwu
    H, y = data["H"], data["labels"]
    means = np.stack([H[y == k].mean(axis=0) for k in range(len(np.unique(y)))])
    np.testing.assert_allclose(data["peer/means"], means, rtol=1e-13, atol=1e-14)
    assert ours["nc2_etf_H"] == pytest.approx(float(data["peer/simplex_etf_error"]), rel=1e-12)
    assert ours["nc3_etf"] == pytest.approx(float(data["peer/self_duality_error"]), rel=1e-12)
    assert 1 - ours["nc4_mismatch"] == pytest.approx(
        float(data["peer/clf_ncc_agreement"]), abs=1e-15)
    norms = data["peer/mean_norms"]  # their mean_norms; our equinorm is its CoV (ddof 0)
    assert ours["equinorm_H"] == pytest.approx(norms.std() / norms.mean(), rel=1e-12)


def test_rhubarbwu_orthogonality_deviation_is_our_uncentred_nc5(rhubarbwu):
    from ufm.measure.ood import Detector

    data, _ = rhubarbwu
    nc5, nc5_raw = Detector(data["H"], data["labels"], data["W"]).nc5(data["ood"])
    assert nc5_raw == pytest.approx(float(data["peer/orthogonality_deviation"]), rel=1e-12)
    assert nc5 != pytest.approx(nc5_raw, rel=1e-3)  # the centred one is a different number
