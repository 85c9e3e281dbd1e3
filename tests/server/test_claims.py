"""SecAgg+ sees each client's num-examples but not the delta it weighs: one bad claim voids
the round's mean (an over-large weight overflows the masked fixed-point sum)."""

import pytest

from fedadapt.server.claims import secagg_rejections


def test_honest_claims_keep_the_mean():
    assert secagg_rejections([12, 50, 109], cap=1000, max_weight=1000.0) == {}


@pytest.mark.parametrize(
    ("claims", "cap", "max_weight", "reasons"),
    [
        ([12, 10**9], 1000, 1000.0, {"num-examples-cap": 1}),
        ([12, 1001], 0, 1000.0, {"num-examples-cap": 1}),  # no cap: max_weight still bounds
        ([12, 600], 500, 1000.0, {"num-examples-cap": 1}),  # the tighter of the two
        ([12, 600], 1000, 500.0, {"num-examples-cap": 1}),
        ([0, -3, 12], 1000, 1000.0, {"num-examples": 2}),
        ([12.5, True], 1000, 1000.0, {"num-examples": 2}),
    ],
)
def test_a_bad_claim_voids_the_mean_with_its_reason(claims, cap, max_weight, reasons):
    assert dict(secagg_rejections(claims, cap, max_weight)) == reasons
