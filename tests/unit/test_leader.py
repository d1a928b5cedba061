"""The Lease records leader election writes (operator/rlhf_operator/leader.py), as client-go writes them."""

from datetime import UTC, datetime, timedelta

from rlhf_operator.leader import held_spec, micro_time, released_spec

T0 = datetime(2026, 12, 4, 21, 0, 0, 123456, tzinfo=UTC)


def test_a_new_lease_starts_a_first_term_without_a_transition():
    spec = held_spec(None, "a", T0, 15.0)
    assert spec == {"holderIdentity": "a", "leaseDurationSeconds": 15, "acquireTime": "2026-12-04T21:00:00.123456Z",
                    "renewTime": "2026-12-04T21:00:00.123456Z", "leaseTransitions": 0}


def test_the_holder_renews_only_the_renew_time():
    first = held_spec(None, "a", T0, 15.0)
    renewed = held_spec(first, "a", T0 + timedelta(seconds=2), 15.0)
    assert renewed == {**first, "renewTime": micro_time(T0 + timedelta(seconds=2))}


def test_taking_over_from_another_holder_counts_a_transition_and_a_released_lease_is_free_at_once():
    first = held_spec(None, "a", T0, 15.0)
    taken = held_spec(first, "b", T0 + timedelta(seconds=20), 15.0)
    assert (taken["holderIdentity"], taken["leaseTransitions"]) == ("b", 1)
    assert taken["acquireTime"] == taken["renewTime"] == micro_time(T0 + timedelta(seconds=20))
    released = released_spec(taken, T0 + timedelta(seconds=30))
    assert (released["holderIdentity"], released["leaseDurationSeconds"]) == (None, 1)
    assert held_spec(released, "a", T0 + timedelta(seconds=31), 15.0)["leaseTransitions"] == 2
