"""Online state on a Redis Cluster (``redis+cluster://host:port``), via redis-py's cluster client.

Place in DESIGN.md: the same role as ``state_redis`` (the speed layer's user vectors, recent
history, counters and exposure), for the ~100 GB of user state that the design's scale spreads
over many Redis nodes. Only the window counters' key names and the multi-user reads differ.

Key layout (``prefix`` defaults to ``rr``; ``{...}`` is the hash tag that picks the slot)::

    rr:s:{<user>}:r|f|v|x|p      a user's list, hash, vector, set and zset: one slot per user
    rr:s:{w:<counter>}:<bucket>  ZSET  window counter buckets: one slot per counter
    rr:s:b                       HASH  bandit evidence (one key)
    rr:s:e:<event_id>            STRING idempotency markers, spread by their own key

* A user's keys share the tag ``{<user>}``, so the users spread over every slot while anything
  that touches one user stays in one slot (and could run in one MULTI).
* Every bucket of one counter (``trending:IN``) shares the tag ``{w:<counter>}``, so a window read
  stays one ``ZUNION ... WEIGHTS`` on one node; ZUNION across slots is refused by a cluster.
  Different counters (regions, ``top10:global``) land on different nodes. A counter's writes
  are one ``ZINCRBY`` per distinct title per ``bump`` (the speed layer sums a batch first), so
  one counter stays far below one node's capacity; a counter that outgrew a node would be split
  into ``<counter>#<shard>`` counters read with one ZUNION each and merged by the caller.
* ``vectors(users)`` sends one ``MGET`` per slot, pipelined: one round trip per node.
* ``seen_many`` pipelines its ``SET NX`` commands grouped by node.
"""

from __future__ import annotations

from reelrec.errors import InvalidInput
from reelrec.storage._redis import connect_cluster
from reelrec.storage.state_redis import RedisState


class RedisClusterState(RedisState):
    def __init__(self, url: str, *, prefix: str = "rr", **kw):
        if not prefix or any(c in prefix for c in " {}"):
            # A brace in the prefix would become the hash tag of every key.
            raise InvalidInput("must be a non-empty string without spaces or braces",
                               field="state_url.prefix")
        super().__init__(url, prefix=prefix, **kw)

    def _connect(self, url: str):
        return connect_cluster(url, role="state")

    def _mget(self, keys: list[str]) -> list[bytes | None]:
        return self._r.mget_nonatomic(keys)

    def _bucket_key(self, counter: str, b: int) -> str:
        # The tag starts with "w:" so it is never empty (an empty "{}" would hash the whole
        # key); whatever braces the counter holds, the tag ends inside the text common to all
        # of its buckets, so they always share a slot.
        return f"{self._p}{{w:{counter}}}:{b}"
