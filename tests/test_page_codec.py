"""The Page document and the compact cache blob: round trip, size, shared shelves, bad blobs."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelrec.compose import (ColdStartPriors, ThompsonBandit, UserProfile, build_shared_shelves, compose_fallback,
                             compose_page)
from reelrec.compose import reasons as R
from reelrec.compose.page import (Assembler, decode_page, decode_shared, encode_page, encode_shared,
                                  parse_page, referenced_keys)
from reelrec.compose.shelves import (BECAUSE, CONTINUE, GENRE, KIND, ONBOARDING, TOP10, TOP_PICKS, TRENDING,
                                     ComposedPage, Shelf, shared_key)
from reelrec.compose.testing import random_candidates, random_features, random_profile
from reelrec.errors import InvalidInput

TODAY = dt.date(2026, 11, 1)
NOW = dt.datetime(2026, 11, 1, 21, 30, 5, tzinfo=dt.timezone.utc)
ITEM_KEYS = {"title_id", "name", "kind", "genres", "slot_kind", "reason", "score"}


@pytest.fixture(scope="module")
def big():
    """A 100 K-title catalog (17-bit title indices), as the size bound is stated for."""
    rng = np.random.default_rng(42)
    f = random_features(100_000, rng, n_genres=20)
    shared = build_shared_shelves(f, "IN", today=TODAY)
    return f, shared, ColdStartPriors(f), ThompsonBandit(f.cluster_names)


def typical_page(big, seed: int) -> ComposedPage:
    f, shared, cold, bandit = big
    rng = np.random.default_rng(seed)
    p = random_profile(f, rng, user_id=f"u{seed}", n_history=60)
    nb = {int(a): rng.choice(len(f), 40, replace=False) for a in p.recent_positives}
    c = random_candidates(f, rng, anchors=p.recent_positives)
    return compose_page(f, p, c, neighbours=nb, shared=shared, cold=cold, bandit=bandit, rng=rng, now=NOW)


def assert_same(a: ComposedPage, b: ComposedPage) -> None:
    assert (a.mode, a.region, int(a.generated_at.timestamp())) == (b.mode, b.region, int(b.generated_at.timestamp()))
    assert [s.type for s in a.shelves] == [s.type for s in b.shelves]
    for x, y in zip(a.shelves, b.shelves):
        if x.shared:
            assert y.key == x.key
            continue
        assert x.titles.tolist() == y.titles.tolist() and x.arg == y.arg
        if x.type == TOP_PICKS:
            assert x.slots.tolist() == y.slots.tolist()
            assert x.reasons.tolist() == y.reasons.tolist()
            assert x.reason_args.tolist() == y.reason_args.tolist()
            span = float(x.scores.max() - x.scores.min()) if len(x.scores) else 0.0
            assert np.allclose(x.scores, y.scores, atol=span / 255 + 1e-5 * (1 + np.abs(x.scores).max(initial=0)))
    assert sorted(a.hidden.tolist()) == sorted(b.hidden.tolist())


def test_typical_page_round_trips_within_300_bytes(big):
    f = big[0]
    sizes = []
    for seed in range(12):
        page = typical_page(big, seed)
        blob = encode_page(page, f)
        sizes.append(len(blob))
        assert_same(page, decode_page(blob, f, page.user_id))
    assert max(sizes) <= 300, sizes


def test_document_from_bytes_equals_document_from_page(big):
    f, shared, _, _ = big
    page = typical_page(big, 99)
    a = Assembler(f)
    shared_blobs = {k: encode_shared(v, f) for k, v in shared.items()}
    doc = a.decode(encode_page(page, f), page.user_id, "2026-11-01T00", shared_blobs)
    direct = a.document(page, "2026-11-01T00", shared)
    assert json.loads(json.dumps(doc)) == doc
    assert set(doc) == {"user_id", "model_version", "generated_at", "mode", "shelves"}
    assert doc["generated_at"] == "2026-11-01T21:30:05Z" and doc["mode"] == "personal"
    assert doc["shelves"][0]["id"] == "top-picks" and len(doc["shelves"][0]["items"]) == 20
    for s in doc["shelves"]:
        assert set(s) == {"id", "title", "items"}
        for item in s["items"]:
            assert set(item) == ITEM_KEYS
            assert item["slot_kind"] in ("exploit", "explore", "novel")
            assert item["kind"] in ("movie", "series", "documentary") and item["reason"]
    # identical but for the 8-bit scores of top picks
    for s, t in zip(doc["shelves"], direct["shelves"]):
        assert [i["title_id"] for i in s["items"]] == [i["title_id"] for i in t["items"]]
        assert [i["reason"] for i in s["items"]] == [i["reason"] for i in t["items"]]
    assert referenced_keys(encode_page(page, f)) == [shared_key(TRENDING, "IN"), shared_key(TOP10, "IN"),
                                                     "new:IN"]
    for k, v in shared.items():
        got = decode_shared(shared_blobs[k])
        assert got.key == k and got.titles.tolist() == v.titles.tolist()


def test_hidden_titles_are_dropped_from_shared_shelves(big):
    f, shared, cold, _ = big
    trending = shared[shared_key(TRENDING, "IN")].titles
    rng = np.random.default_rng(1)
    p = random_profile(f, rng)
    p.thumbs_down = np.concatenate([p.thumbs_down, trending[:2]])
    page = compose_page(f, p, random_candidates(f, rng), shared=shared, cold=cold, rng=rng, now=NOW)
    assert set(trending[:2].tolist()) <= set(page.hidden.tolist())
    doc = Assembler(f).decode(encode_page(page, f), "u", "v", shared)
    shelf = next(s for s in doc["shelves"] if s["id"] == "trending-in")
    assert not {f.ids[t] for t in trending[:2]} & {i["title_id"] for i in shelf["items"]}
    assert shelf["items"][0]["reason"] == "Trending in India"
    # a shared shelf missing from the cache is left out, never an error
    doc = Assembler(f).decode(encode_page(page, f), "u", "v", {})
    assert all(not s["id"].startswith(("trending", "top-10", "new-releases")) for s in doc["shelves"])


def test_cold_start_page_round_trips(big):
    f, shared, cold, _ = big
    u = UserProfile("new", region="IN", device="mobile", hour=22, onboarding_genres=["comedy", "k-drama", "crime"])
    page = compose_page(f, u, None, cold=cold, shared=shared, rng=np.random.default_rng(0), now=NOW)
    blob = encode_page(page, f)
    assert_same(page, decode_page(blob, f, "new"))
    doc = Assembler(f).decode(blob, "new", "v1", shared)
    assert doc["mode"] == "cold_start"
    assert [s["id"] for s in doc["shelves"]][:2] == ["top-picks", "trending-in"]
    assert "onboarding-k-drama" in [s["id"] for s in doc["shelves"]]


titles = st.lists(st.integers(0, 99_999), min_size=0, max_size=30, unique=True)


@st.composite
def pages(draw):
    f_n = 100_000
    region = draw(st.sampled_from(["KR", None]))
    top = draw(st.lists(st.integers(0, f_n - 1), min_size=0, max_size=20, unique=True))
    n = len(top)
    codes = draw(st.lists(st.integers(0, R.N_CODES - 1), min_size=n, max_size=n))
    shelves = [Shelf(TOP_PICKS, np.asarray(top, np.int64),
                     slots=np.asarray(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), np.uint8),
                     reasons=np.asarray(codes, np.uint8), reason_args=np.full(n, -1, np.int64),
                     scores=np.asarray(draw(st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n))))]
    for t in draw(st.lists(st.sampled_from([CONTINUE, BECAUSE, GENRE, KIND, ONBOARDING, TRENDING]), max_size=6)):
        arg = {BECAUSE: draw(st.integers(0, f_n - 1)), GENRE: draw(st.integers(0, 19)),
               ONBOARDING: draw(st.integers(0, 19)), KIND: draw(st.integers(0, 2))}.get(t, -1)
        items = np.zeros(0, np.int64) if t == TRENDING else np.asarray(draw(titles), np.int64)
        shelves.append(Shelf(t, items, arg=arg, key=shared_key(t, region) if t == TRENDING else None))
    mode = draw(st.sampled_from(["personal", "cold_start", "fallback"]))
    return ComposedPage("u", mode, region, NOW, shelves,
                        np.asarray(draw(titles), np.int64))


def assert_json_is_the_document(a: Assembler, page: ComposedPage, shared) -> None:
    """``Assembler.json`` writes ``orjson.dumps(document)`` byte for byte, from the composed
    page and from its blob parsed into lists, with shared shelves as objects or as bytes."""
    f = a.f
    assert a.json(page, "v1", shared) == orjson.dumps(a.document(page, "v1", shared))
    blob = encode_page(page, f)
    as_bytes = {k: encode_shared(v, f) for k, v in shared.items()}
    for sh in (shared, as_bytes):
        want = orjson.dumps(a.decode(blob, page.user_id, "v1", sh))
        assert a.json(parse_page(blob, f, page.user_id), "v1", sh) == want
    # the reads that follow hit the fragments encoded by the first
    assert a.json(parse_page(blob, f, page.user_id), "v1", shared) == want
    # the serving read: the blob to JSON in one pass
    objects = {k: decode_shared(v) if isinstance(v, bytes) else v for k, v in shared.items()}
    asked = []
    got = a.blob_json(blob, page.user_id, "v1", lambda r: asked.append(r) or objects)
    assert got == want and asked == [page.region]
    # its Python reference, which serves where the compiled splice is not built
    assert a.blob_json_py(blob, page.user_id, "v1", lambda r: objects) == want


def test_json_is_the_document_byte_for_byte(big):
    f, shared, cold, _ = big
    a = Assembler(f)
    for seed in range(12):
        assert_json_is_the_document(a, typical_page(big, seed), shared)
    # hidden titles in a shared shelf, a cold-start page, a fallback page, a shelf missing
    rng = np.random.default_rng(1)
    p = random_profile(f, rng, user_id="u\u00e9\"")
    p.thumbs_down = np.concatenate([p.thumbs_down, shared[shared_key(TRENDING, "IN")].titles[:2]])
    page = compose_page(f, p, random_candidates(f, rng), shared=shared, cold=cold, rng=rng, now=NOW)
    assert len(page.hidden)
    assert_json_is_the_document(a, page, shared)
    u = UserProfile("new", region="IN", onboarding_genres=["comedy", "k-drama", "crime"])
    assert_json_is_the_document(a, compose_page(f, u, None, cold=cold, shared=shared,
                                                rng=np.random.default_rng(0), now=NOW), shared)
    assert_json_is_the_document(a, compose_fallback(f, "u9", "IN", shared, now=NOW), shared)
    assert_json_is_the_document(a, typical_page(big, 5), {})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pages())
def test_any_page_round_trips(big, page):
    f = big[0]
    top = page.shelves[0]
    # give reasons arguments the codec can carry: a genre of the title, an anchor, a rank
    for j, (t, c) in enumerate(zip(top.titles, top.reasons)):
        if c in R.GENRE_ARG and f.title_genres[t]:
            top.reason_args[j] = f.title_genres[t][-1]
        elif c in R.TITLE_ARG:
            top.reason_args[j] = int(top.titles[0])
        elif c in (R.TOP10, R.TOP10_GLOBAL):
            top.reason_args[j] = 1 + j % 10
        elif c == R.KIND:
            top.reason_args[j] = j % 3
    assert_same(page, decode_page(encode_page(page, f), f))
    assert_json_is_the_document(Assembler(f), page, big[1])


def test_fallback_page_comes_from_shared_shelves(big):
    f, shared, _, _ = big
    page = compose_fallback(f, "u9", "IN", shared, now=NOW)
    doc = Assembler(f).decode(encode_page(page, f), "u9", "v1", shared)
    assert doc["mode"] == "fallback" and doc["shelves"][0]["id"] == "top-picks"
    top10 = shared[shared_key(TOP10, "IN")].titles
    assert [i["title_id"] for i in doc["shelves"][0]["items"][:10]] == [f.ids[t] for t in top10]
    assert doc["shelves"][0]["items"][0]["reason"] == "Popular in India"


def test_bad_blobs_are_rejected_clearly(big):
    f = big[0]
    blob = encode_page(typical_page(big, 3), f)
    with pytest.raises(InvalidInput, match="truncated"):
        decode_page(blob[:40], f)
    with pytest.raises(InvalidInput, match="version"):
        decode_page(b"\x07" + blob[1:], f)
    a = Assembler(f)
    for cut in (1, 5, 40, len(blob) - 1):
        with pytest.raises(InvalidInput, match="truncated"):
            a.blob_json(blob[:cut], "u", "v1", lambda r: {})
    with pytest.raises(InvalidInput, match="version"):
        a.blob_json(b"\x07" + blob[1:], "u", "v1", lambda r: {})
    bad = ComposedPage("u", "sideways", None, NOW, [])
    with pytest.raises(InvalidInput, match="mode"):
        encode_page(bad, f)


def test_scores_are_written_as_orjson_writes_them_rounded():
    """The top picks' scores go out through a fast formatter where it is exact; any score,
    quantised as the codec does or not, must come out as ``orjson.dumps(round(x, 6))``."""
    import random
    import struct

    from reelrec.compose.page import _scores_json
    rng = random.Random(5)
    specials = [0.0, -0.0, 1e-3, -1e-3, 0.0015, 0.0025, 2.5e-7, 1e9 - 1e-7, 1e9, float("nan"), float("inf")]
    for _ in range(5000):
        mag = 10 ** rng.uniform(-5, 10)
        lo = struct.unpack("f", struct.pack("f", rng.uniform(-mag, mag)))[0]
        hi = struct.unpack("f", struct.pack("f", lo + rng.uniform(0, mag)))[0]
        xs = [lo + rng.randint(0, 255) / 255.0 * (hi - lo) for _ in range(rng.randint(0, 20))]
        if rng.random() < 0.1:
            xs = [rng.choice(specials) for _ in xs]
        assert _scores_json(xs) == (orjson.dumps([round(x, 6) for x in xs])[1:-1].split(b",") if xs else [])


def test_the_compiled_splice_is_built():
    """``make install`` builds the compiled splice; without it the service still serves, through
    the Python splice, at a higher CPU cost. The test environment must have it."""
    from reelrec.compose import page
    assert page._splice is not None, "reelrec.compose._splice is not built: pip install -e . needs a C compiler"


def _outcome(fn):
    try:
        return fn()
    except InvalidInput as exc:
        return ("InvalidInput", str(exc))
    except Exception as exc:  # what a corrupt blob makes the reference raise, the same either way
        return (type(exc).__name__,)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 11), cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 399),
                                                                                  st.integers(0, 7)), max_size=4),
       region=st.sampled_from([None, "IN", "KR"]), noise=st.binary(max_size=300))
def test_compiled_and_python_splice_agree_on_any_blob(big, seed, cut, flips, region, noise):
    """Valid, truncated, bit-flipped and random blobs: the compiled splice writes what the
    Python one writes, or fails the same way."""
    from reelrec.compose import page as P
    if P._splice is None:
        pytest.skip("the compiled splice is not built")
    f, shared = big[0], big[1]
    a = Assembler(f)
    blob = bytearray(encode_page(typical_page(big, seed), f))
    for at, bit in flips:
        if at < len(blob):
            blob[at] ^= 1 << bit
    for b in (bytes(blob[:cut]) if cut < len(blob) else bytes(blob), bytes(noise)):
        want = _outcome(lambda: a.blob_json_py(b, "u", "v1", lambda r: shared, region))
        assert _outcome(lambda: a.blob_json(b, "u", "v1", lambda r: shared, region)) == want


def test_compiled_score_format_is_orjsons_rounded():
    """The compiled splice formats a score as ``"%.6f"`` does (correctly rounded, in integers)
    where that is ``orjson.dumps(round(x, 6))`` (1e-3 <= |x| < 1e9) and hands every other one
    back."""
    import random
    import struct

    from reelrec.compose import page as P
    if P._splice is None:
        pytest.skip("the compiled splice is not built")
    rng = random.Random(7)
    xs = [0.0, -0.0, 1e-3, -1e-3, 0.0015, 0.0025, 0.0078125, 2.5e-7, 1e9 - 1e-7, -(1e9 - 1e-7), 1e9,
          float("nan"), float("inf"), 123456.0000005, 0.1 + 0.2]
    for _ in range(20000):
        mag = 10 ** rng.uniform(-5, 10)
        lo = struct.unpack("f", struct.pack("f", rng.uniform(-mag, mag)))[0]
        hi = struct.unpack("f", struct.pack("f", lo + rng.uniform(0, mag)))[0]
        xs.append(lo + rng.randint(0, 255) / 255.0 * (hi - lo))
    fast = 0
    for x in xs:
        got = P._splice.format_score(x)
        if 1e-3 <= abs(x) < 1e9:
            fast += 1
            assert got == orjson.dumps(round(x, 6)), x
        else:
            assert got is None, x
    assert fast > 15000
    # ties at the sixth decimal (odd multiples of 1/128 are x.xxxxxx5 exactly) go to the even
    # digit, as "%.6f" rounds them; random doubles of every exponent
    ties = [m / 128 for m in range(1, 20000, 2)] + [-m / 128 for m in range(1, 2000, 2)]
    ties += [rng.randint(1, 2 ** 40) / 2 ** rng.randint(0, 50) for _ in range(20000)]
    ties += [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(50000)]
    checked = 0
    for x in ties:
        if 1e-3 <= abs(x) < 1e9:
            text = ("%.6f" % x).rstrip("0")
            assert P._splice.format_score(x) == (text + "0" if text.endswith(".") else text).encode(), x
            checked += 1
    assert checked > 20000


def test_an_assembler_pickles_and_its_copy_splices_the_same(big):
    """Models travel to Ray workers pickled: the copy builds its own compiled splicer."""
    import pickle

    from reelrec.compose import page as P
    f, shared = big[0], big[1]
    a = Assembler(f)
    blob = encode_page(typical_page(big, 2), f)
    want = a.blob_json(blob, "u", "v1", lambda r: shared)
    b = pickle.loads(pickle.dumps(a))
    assert (b._splicer is None) == (P._splice is None)
    assert b.blob_json(blob, "u", "v1", lambda r: shared) == want
