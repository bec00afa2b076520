"""The online state's batched calls that the speed layer relies on, on every backend (memory, a
real redis-server, a real three-node Redis Cluster): many users' fields and exposure read and
written in one call, and ``seen_check``, which reads the idempotency markers without setting
them."""

from __future__ import annotations

import pytest

from reelrec.errors import InvalidInput
from reelrec.storage.state import open_state


@pytest.fixture(params=["memory", "redis", "redis_cluster"])
def state(request):
    if request.param == "memory":
        s = open_state("memory://?seen_ttl_s=60")
    else:
        s = open_state(f"{request.getfixturevalue(f'{request.param}_url')}?seen_ttl_s=60")
    yield s
    s.close()


USERS = [f"user-{i}" for i in range(12)]  # spread over the cluster's slots


def test_fields_of_many_users_in_one_call(state):
    assert state.fields_many(USERS) == {u: {} for u in USERS}
    state.set_fields_many({u: {"region": f"R{i}", "n": i} for i, u in enumerate(USERS)})
    state.set_fields_many({USERS[0]: {"log": "[]"}, USERS[1]: {}})
    got = state.fields_many(USERS)
    assert got[USERS[0]] == {"region": "R0", "n": "0", "log": "[]"}
    assert all(got[u] == {"region": f"R{i}", "n": str(i)} for i, u in enumerate(USERS) if i)
    assert got == {u: state.fields(u) for u in USERS}
    assert state.fields_many([]) == {}
    with pytest.raises(InvalidInput) as e:
        state.fields_many([""])
    assert e.value.errors[0].field == "user_ids"


def test_exposure_of_many_users_in_one_call(state):
    state.add_exposure_many({USERS[0]: ["t1", "t2"], USERS[5]: ["t3"], USERS[6]: []})
    state.add_exposure_many({USERS[0]: ["t2", "t4"]})
    got = state.exposure_many(USERS[:7])
    assert got[USERS[0]] == {"t1", "t2", "t4"} and got[USERS[5]] == {"t3"}
    assert all(got[u] == set() for u in USERS[1:5] + USERS[6:7])
    assert got == {u: state.exposure(u) for u in USERS[:7]}


def test_seen_check_reads_markers_without_setting_them(state):
    ids = [f"e{i}" for i in range(10)]
    assert state.seen_check(ids) == [False] * 10
    assert state.seen_check(ids) == [False] * 10  # checking marks nothing
    assert state.seen_many(ids[:4]) == [False] * 4
    assert state.seen_check(ids) == [True] * 4 + [False] * 6
    assert state.seen_many(ids[2:6]) == [True, True, False, False]
    assert state.seen_check(ids[::-1]) == [False] * 4 + [True] * 6
    assert state.seen_check([]) == []
