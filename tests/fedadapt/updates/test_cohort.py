"""Cohorts over 10,000 device ids: raising the fraction only adds devices, no device flaps,
the share matches the fraction, and a new salt draws a new cohort. The channel body is
exactly its four fields."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from fedadapt.updates.bundles import BundleError
from fedadapt.updates.cohort import Channel, channel_files, channel_role, cohort_point, in_cohort

IDS = [hashlib.sha256(str(i).encode()).hexdigest()[:16] for i in range(10_000)]
SALT = "5a17" * 4


def cohort(fraction: float, salt: str = SALT) -> set[str]:
    return {d for d in IDS if in_cohort(d, salt, fraction)}


def test_raising_the_fraction_only_adds_devices() -> None:
    steps = [cohort(f) for f in (0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 1.0)]
    for smaller, larger in itertools.pairwise(steps):
        assert smaller < larger  # a strict superset: devices added, none removed
    assert steps[0] == set() and steps[-1] == set(IDS)


def test_the_share_in_the_cohort_is_the_fraction() -> None:
    for f in (0.1, 0.5):
        assert abs(len(cohort(f)) / len(IDS) - f) < 0.015


def test_no_device_flaps_between_polls() -> None:
    """The same channel, read again and again, names the same version for every device."""
    channel = Channel(stable=1, candidate=2, fraction=0.1, salt=SALT)
    first = [channel.version_for(d) for d in IDS]
    again = Channel.parse(channel.body())
    for _ in range(3):
        assert [again.version_for(d) for d in IDS] == first
    assert first.count(2) == len(cohort(0.1))


def test_a_new_salt_draws_a_different_cohort() -> None:
    a, b = cohort(0.1), cohort(0.1, "beef" * 4)
    assert len(a & b) < len(a) / 4  # about 10% overlap, as for independent draws


def test_points_are_in_the_unit_interval() -> None:
    points = [cohort_point(d, SALT) for d in IDS]
    assert min(points) >= 0.0 and max(points) < 1.0


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"stable": 1, "candidate": None, "fraction": 0.1}, "exactly the fields"),
        ({"stable": 1, "candidate": None, "fraction": 0.1, "salt": SALT, "x": 1}, "exactly"),
        ({"stable": True, "candidate": None, "fraction": 0.1, "salt": SALT}, "stable"),
        ({"stable": 1, "candidate": 1, "fraction": 0.1, "salt": SALT}, "must differ"),
        ({"stable": 1, "candidate": 2, "fraction": 1.5, "salt": SALT}, "fraction"),
        ({"stable": 1, "candidate": 2, "fraction": "0.1", "salt": SALT}, "fraction"),
        ({"stable": 1, "candidate": 2, "fraction": 0.1, "salt": "ZZ"}, "salt"),
    ],
)
def test_a_malformed_channel_body_is_refused_naming_the_field(body, names) -> None:
    with pytest.raises(BundleError, match=names) as e:
        Channel.parse(body)
    assert e.value.reason == "malformed"


def test_channel_names_are_checked_before_they_become_paths() -> None:
    assert channel_files("beta") == ("channels/beta.json", "channels/beta.sig")
    assert channel_role("beta").replay == "channel-rollback"
    with pytest.raises(BundleError, match="channel name"):
        channel_files("../index")
