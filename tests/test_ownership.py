"""Store ownership by rendezvous hashing over the live replicas, and the ownership epoch
(core/ownership.py): pure logic, no server."""

from __future__ import annotations

from collections import Counter

import pytest
from quiver.server.core.ownership import Ownership, Replica, owner_of
from quiver.server.core.replicas import check_advertise, check_replica_settings
from quiver.server.storage.rows import ReplicaRow

A = Replica("replica-a", "10.0.0.1:50051")
B = Replica("replica-b", "10.0.0.2:50051")
C = Replica("replica-c", "10.0.0.3:50051")
STORES = [f"vs_{i:06d}" for i in range(3000)]


def row(replica: Replica, at: float) -> ReplicaRow:
    return ReplicaRow(replica.replica_id, replica.address, at)


def test_the_owner_does_not_depend_on_the_order_replicas_are_listed_in() -> None:
    for store in STORES[:200]:
        owner = owner_of(store, [A, B, C])
        assert owner == owner_of(store, [C, A, B]) == owner_of(store, [B, C, A])
    assert owner_of("vs_x", []) is None
    assert owner_of("vs_x", [A]) == A


def test_stores_spread_over_the_replicas() -> None:
    shares = Counter(owner_of(s, [A, B, C]) for s in STORES)
    assert set(shares) == {A, B, C}
    for replica, n in shares.items():
        assert 0.28 <= n / len(STORES) <= 0.39, (replica, n)


def test_a_replica_leaving_moves_only_its_own_stores_and_spreads_them() -> None:
    before = {s: owner_of(s, [A, B, C]) for s in STORES}
    after = {s: owner_of(s, [A, B]) for s in STORES}
    moved = [s for s in STORES if before[s] != after[s]]
    assert moved and all(before[s] == C for s in moved)
    assert len(moved) == sum(1 for s in STORES if before[s] == C)
    taken = Counter(after[s] for s in moved)
    assert taken[A] > len(moved) // 4 and taken[B] > len(moved) // 4


def test_a_replica_joining_takes_stores_only_for_itself() -> None:
    before = {s: owner_of(s, [A, B]) for s in STORES}
    after = {s: owner_of(s, [A, B, C]) for s in STORES}
    assert all(after[s] == C for s in STORES if before[s] != after[s])


def test_the_epoch_moves_only_when_the_live_set_changes() -> None:
    own = Ownership(A)
    assert own.view.epoch == 1 and own.view.replicas == (A,)
    assert all(own.view.is_mine(s) for s in STORES[:50])  # alone: owner of everything
    view = own.observe([row(A, 10.0), row(B, 10.0)])
    assert view.epoch == 2 and view.replicas == (A, B)
    assert own.observe([row(A, 11.0), row(B, 11.5)]).epoch == 2  # heartbeats alone: same set
    assert own.observe([row(B, 12.0)]).replicas == (A, B)  # this replica is always live
    view = own.observe([row(A, 13.0)])  # B's heartbeat left the window
    assert view.epoch == 3 and view.replicas == (A,)
    moved = Replica(B.replica_id, "10.0.0.9:50051")
    assert own.observe([row(A, 14.0), row(moved, 14.0)]).epoch == 4
    assert own.observe([row(A, 15.0), row(moved, 15.0)]).epoch == 4


def test_a_replica_marked_dead_stays_out_until_it_heartbeats_again() -> None:
    own = Ownership(A)
    own.observe([row(A, 10.0), row(B, 10.0), row(C, 10.0)])
    epoch = own.view.epoch
    view = own.mark_dead(B.replica_id)
    assert view.replicas == (A, C) and view.epoch == epoch + 1
    # Its row, unchanged, is still within the window: it stays out.
    assert own.observe([row(A, 11.0), row(B, 10.0), row(C, 11.0)]).replicas == (A, C)
    # A newer heartbeat: it is back, at a new epoch.
    view = own.observe([row(A, 12.0), row(B, 12.0), row(C, 12.0)])
    assert view.replicas == (A, B, C) and view.epoch == epoch + 2
    # This replica is never marked dead by itself.
    assert own.mark_dead(A.replica_id).replicas == (A, B, C)


def test_stores_of_a_dead_owner_move_to_the_live_replicas() -> None:
    own = Ownership(A)
    own.observe([row(A, 1.0), row(B, 1.0)])
    theirs = [s for s in STORES if not own.view.is_mine(s)]
    assert theirs
    own.mark_dead(B.replica_id)
    assert all(own.view.is_mine(s) for s in theirs)


@pytest.mark.parametrize(
    ("heartbeat", "window", "forward", "flag"),
    [
        (0.0, 10.0, 5.0, "--replica-heartbeat-seconds"),
        (2.0, 3.0, 5.0, "--replica-timeout-seconds"),
        (2.0, 10.0, 0.0, "--replica-forward-timeout-seconds"),
    ],
)
def test_replica_settings_that_cannot_work_name_their_flag(
    heartbeat: float, window: float, forward: float, flag: str
) -> None:
    with pytest.raises(ValueError, match=flag):
        check_replica_settings(heartbeat, window, forward)


def test_advertise_must_be_a_dialable_host_and_port() -> None:
    assert check_advertise("") is None
    assert check_advertise("db1.internal:50051") is None
    assert check_advertise("[::1]:50051") is None
    for bad in ("db1", "db1:", ":50051", "db1:0", "db1:70000", "0.0.0.0:50051", "[::]:1"):
        problem = check_advertise(bad)
        assert problem is not None and "--advertise" in problem, bad
