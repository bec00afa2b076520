"""The Page document the API returns, and the compact binary page stored in the cache.

A composed page (``reelrec.compose.shelves.ComposedPage``) becomes the document

    {"user_id", "model_version", "generated_at", "mode": personal | cold_start | fallback,
     "shelves": [{"id", "title", "items": [{"title_id", "name", "kind", "genres", "slot_kind",
                                            "reason", "score"}]}]}

with ``top-picks`` first. For the cache it becomes a bit-packed blob of title indices (as many bits
as the catalog needs: 17 for 100 K titles), 2-bit slot kinds, one byte of reason per top pick (a
4-bit code and a 4-bit argument that points into the title's genres or the page's anchors), an
8-bit quantised score per top pick, and references to the region's shared shelves by type only.
The user id and the model version live in the cache key, not in the blob. A typical page is about
250 bytes; ``decode`` rebuilds the document from the blob, the catalog arrays and the shared
shelves, whose own blobs are stored once per region (``encode_shared``).

``score`` is the ranker's score on top picks (to 1/255 of the page's score range) and null on
shelves ordered by other rules.
"""

from __future__ import annotations

import datetime as dt
import functools
import struct
from typing import Callable, Mapping

import numpy as np
import orjson

from reelrec.compose import reasons as R
from reelrec.compose.features import CatalogFeatures
from reelrec.compose.shelves import (BECAUSE, CONTINUE, GENRE, KIND, KIND_IDS, MODES, NEW, ONBOARDING,
                                     SHARED_TYPES, TOP10, TOP10_GLOBAL, TOP_PICKS, TRENDING,
                                     ComposedPage, SharedShelf, Shelf, shared_key)
from reelrec.compose.toppicks import SLOT_KINDS
from reelrec.domain.catalog import KINDS
from reelrec.errors import FieldError, InvalidInput

try:  # the compiled splice (setup.py); optional: without it, the Python one serves
    from reelrec.compose import _splice
except ImportError:
    _splice = None

VERSION = 1
SHARED_VERSION = 1
NONE_NIBBLE = 15
_COUNT_BITS = 7  # items per shelf, up to 127


class _Writer:
    """Appends fixed-width fields to one bit stream, MSB first.

    The stream is a Python integer: a page has about a hundred small fields, for which integer
    shifts cost a fraction of a microsecond each, far below numpy's per-call overhead.
    """

    def __init__(self) -> None:
        self.acc = 0
        self.nbits = 0

    def put(self, value: int, width: int) -> None:
        value = int(value)
        if value < 0 or value >> width:
            raise InvalidInput(FieldError("page", f"value {value} does not fit in {width} bits"))
        self.acc = (self.acc << width) | value
        self.nbits += width

    def array(self, values: np.ndarray | list[int], width: int) -> None:
        """Append each value in ``width`` bits (a list must hold ints).

        A page writes about a hundred array items: the range is checked once (``min``, ``max``)
        and the items are packed into a small integer before one shift of the page's long one,
        instead of a check and a shift of the long integer per item (``encode_page`` 85 -> 66 us
        a page)."""
        if isinstance(values, list):
            vals = values
        else:
            a = np.asarray(values)
            vals = a.tolist() if a.dtype.kind in "iub" else [int(v) for v in a.tolist()]
        if not vals:
            return
        if min(vals) < 0 or max(vals) >> width:
            bad = next(v for v in vals if v < 0 or v >> width)
            raise InvalidInput(FieldError("page", f"value {bad} does not fit in {width} bits"))
        chunk = 0
        for v in vals:
            chunk = (chunk << width) | v
        self.acc = (self.acc << (width * len(vals))) | chunk
        self.nbits += width * len(vals)

    def raw(self, data: bytes) -> None:
        self.put(int.from_bytes(data, "big"), 8 * len(data))

    def bytes(self) -> bytes:
        pad = -self.nbits % 8
        return (self.acc << pad).to_bytes((self.nbits + pad) // 8, "big")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.acc = int.from_bytes(data, "big")
        self.total = 8 * len(data)
        self.pos = 0

    def get(self, width: int) -> int:
        end = self.pos + width
        if end > self.total:
            raise InvalidInput(FieldError("page", "truncated page blob"))
        self.pos = end
        return (self.acc >> (self.total - end)) & ((1 << width) - 1)

    def ints(self, count: int, width: int) -> list[int]:
        if count == 0:
            return []
        seg = self.get(count * width)  # one shift of the long integer, then small ones
        if width == 8:  # reasons and scores of top picks: the segment's bytes are the values
            return list(seg.to_bytes(count, "big"))
        mask = (1 << width) - 1
        return [(seg >> (width * k)) & mask for k in range(count - 1, -1, -1)]

    def array(self, count: int, width: int) -> np.ndarray:
        return np.asarray(self.ints(count, width), dtype=np.int64)

    def raw(self, n: int) -> bytes:
        return self.get(8 * n).to_bytes(n, "big")


def index_bits(n_titles: int) -> int:
    return max(1, int(n_titles - 1).bit_length())


def _region_bytes(region: str | None) -> bytes:
    r = (region or "").upper().encode("ascii", "replace")[:15]
    return r


def encode_page(page: ComposedPage, features: CatalogFeatures) -> bytes:
    """The cache blob of a composed page (see the module docstring for the layout).

    Raises:
        InvalidInput: a shelf too long for the format (more than 127 items) or an unknown mode.
    """
    if page.mode not in MODES:
        raise InvalidInput(FieldError("mode", f"must be one of {', '.join(MODES)}"))
    b = index_bits(len(features))
    w = _Writer()
    w.put(VERSION, 8)
    w.put(MODES.index(page.mode), 2)
    w.put(int(page.generated_at.timestamp()), 34)  # seconds; 34 bits last until the year 2514
    region = _region_bytes(page.region)
    w.put(len(region), 4)
    w.raw(region)
    w.put(b, 5)
    w.put(len(page.shelves), 5)
    for s in page.shelves:
        w.put(s.type, 4)
        if s.type in SHARED_TYPES:
            continue
        if len(s.titles) > 2**_COUNT_BITS - 1:
            raise InvalidInput(FieldError("shelves", f"shelf of {len(s.titles)} items; at most 127"))
        if s.type == BECAUSE:
            w.put(s.arg, b)
        elif s.type in (GENRE, ONBOARDING):
            w.put(s.arg, 8)
        elif s.type == KIND:
            w.put(s.arg, 2)
        w.put(len(s.titles), _COUNT_BITS)
        w.array(s.titles, b)
        if s.type == TOP_PICKS:
            _encode_top(w, s, features, b)
    hidden = np.asarray(page.hidden, np.int64)[:2**_COUNT_BITS - 1]
    w.put(len(hidden), _COUNT_BITS)
    w.array(hidden, b)
    return w.bytes()


_SMALL_ARG = frozenset({R.TOP10, R.TOP10_GLOBAL, R.KIND})  # reasons whose argument fits the nibble itself


def _encode_top(w: _Writer, s: Shelf, features: CatalogFeatures, b: int) -> None:
    n = len(s.titles)
    w.array(s.slots, 2)
    # twenty items: plain lists, each argument becomes a position in a short list
    codes = np.asarray(s.reasons, np.int64).tolist()
    args = np.asarray(s.reason_args, np.int64).tolist()
    titles = np.asarray(s.titles, np.int64).tolist()
    anchors = list(dict.fromkeys(a for a, c in zip(args, codes) if c in R.TITLE_ARG and a >= 0))[:14]
    tgs = features.title_genres
    nib = [NONE_NIBBLE] * n
    for j in range(n):
        c, a = codes[j], args[j]
        if c in R.GENRE_ARG:
            tg = tgs[titles[j]]
            if a in tg and tg.index(a) < NONE_NIBBLE:
                nib[j] = tg.index(a)
        elif c in R.TITLE_ARG and a in anchors:
            nib[j] = anchors.index(a)
        elif c in _SMALL_ARG and 0 <= a < NONE_NIBBLE:
            nib[j] = a
    w.put(len(anchors), 4)
    w.array(anchors, b)
    w.array([(c << 4) | x for c, x in zip(codes, nib)], 8)
    # the numpy expression round(clip((scores - lo) / (hi - lo) * 255, 0, 255)) in Python floats:
    # the same IEEE operations, and round() rounds half to even as np.round does
    sc = np.asarray(s.scores, np.float64).tolist()
    lo, hi = (min(sc), max(sc)) if n else (0.0, 0.0)
    w.raw(struct.pack(">ff", lo, hi))
    span = hi - lo
    w.array([min(255, max(0, round((x - lo) / span * 255))) for x in sc] if hi > lo else [0] * n, 8)


# the reason every item of a personal row carries (its argument: the row's own, none for Continue)
_ROW_REASON = {CONTINUE: R.CONTINUE, BECAUSE: R.BECAUSE, GENRE: R.AFFINITY, ONBOARDING: R.ONBOARDING,
               KIND: R.KIND}


def decode_page(blob: bytes, features: CatalogFeatures, user_id: str = "") -> ComposedPage:
    """The composed page back from its blob (scores to 1/255 of their range).

    Raises:
        InvalidInput: a blob of another format version or a truncated one.
    """
    page = parse_page(blob, features, user_id)
    for s in page.shelves:
        s.titles = np.asarray(s.titles, np.int64)
        if s.type == TOP_PICKS:
            s.slots = np.asarray(s.slots, np.uint8)
            s.reasons = np.asarray(s.reasons, np.uint8)
            s.reason_args = np.asarray(s.reason_args, np.int64)
            s.scores = np.asarray(s.scores, np.float64)
    page.hidden = np.asarray(page.hidden, np.int64)
    return page


def parse_page(blob: bytes, features: CatalogFeatures, user_id: str = "") -> ComposedPage:
    """``decode_page`` with Python lists where the page holds arrays: what a read needs to
    write the document (``Assembler.json``), without a numpy call per field.

    Raises:
        InvalidInput: a blob of another format version or a truncated one.
    """
    r = _Reader(blob)
    version = r.get(8)
    if version != VERSION:
        raise InvalidInput(FieldError("page", f"format version {version}, expected {VERSION}"))
    mode = MODES[r.get(2)]
    ts = r.get(34)
    region = r.raw(r.get(4)).decode("ascii") or None
    b = r.get(5)
    shelves = []
    for _ in range(r.get(5)):
        t = r.get(4)
        if t in SHARED_TYPES:
            shelves.append(Shelf(type=t, titles=[], key=shared_key(t, region)))
            continue
        arg = -1
        if t == BECAUSE:
            arg = r.get(b)
        elif t in (GENRE, ONBOARDING):
            arg = r.get(8)
        elif t == KIND:
            arg = r.get(2)
        titles = r.ints(r.get(_COUNT_BITS), b)
        s = Shelf(type=t, titles=titles, arg=arg)
        if t == TOP_PICKS:
            _decode_top(r, s, features, b)
        else:
            s.reason, s.reason_arg = _ROW_REASON[t], (-1 if t == CONTINUE else arg)
        shelves.append(s)
    hidden = r.ints(r.get(_COUNT_BITS), b)
    return ComposedPage(user_id=user_id, mode=mode, region=region,
                        generated_at=dt.datetime.fromtimestamp(ts, dt.timezone.utc), shelves=shelves,
                        hidden=hidden)


def _decode_top(r: _Reader, s: Shelf, features: CatalogFeatures, b: int) -> None:
    """The top picks' per-item fields, as lists (``decode_page`` makes them arrays)."""
    n = len(s.titles)
    s.slots = r.ints(n, 2)
    anchors = r.ints(r.get(4), b)
    packed = r.ints(n, 8)
    codes = [p >> 4 for p in packed]
    args = [-1] * n
    # per item in Python ints (a page has ~20): numpy scalar indexing would cost more than the work
    for j, (c, p, t) in enumerate(zip(codes, packed, s.titles)):
        p &= 15
        if p == NONE_NIBBLE:
            continue
        if c in R.GENRE_ARG:
            tg = features.title_genres[t]
            args[j] = int(tg[p]) if p < len(tg) else -1
        elif c in R.TITLE_ARG:
            args[j] = anchors[p] if p < len(anchors) else -1
        else:
            args[j] = p
    s.reasons, s.reason_args = codes, args
    lo, hi = struct.unpack(">ff", r.raw(8))
    span = hi - lo
    # the same float64 operations, in the same order, as numpy's lo + q / 255.0 * (hi - lo)
    s.scores = [lo + q / 255.0 * span for q in r.ints(n, 8)]


# --- shared shelves -------------------------------------------------------------------------
def encode_shared(shelf: SharedShelf, features: CatalogFeatures) -> bytes:
    b = index_bits(len(features))
    w = _Writer()
    w.put(SHARED_VERSION, 8)
    w.put(shelf.type, 4)
    region = _region_bytes(shelf.region)
    w.put(len(region), 4)
    w.raw(region)
    w.put(b, 5)
    w.put(min(len(shelf.titles), 127), _COUNT_BITS)
    w.array(np.asarray(shelf.titles, np.int64)[:127], b)
    return w.bytes()


def decode_shared(blob: bytes) -> SharedShelf:
    r = _Reader(blob)
    if r.get(8) != SHARED_VERSION:
        raise InvalidInput(FieldError("shelf", "unknown shared shelf format version"))
    t = r.get(4)
    region = r.raw(r.get(4)).decode("ascii") or None
    b = r.get(5)
    return SharedShelf(t, region, r.array(r.get(_COUNT_BITS), b))


# --- the document ---------------------------------------------------------------------------
class Assembler:
    """Builds Page documents for one model version; caches each title's static fields."""

    def __init__(self, features: CatalogFeatures):
        self.f = features
        self._ids = features.ids.tolist()
        self._names = features.names.tolist()
        self._kinds = [KINDS[k] if 0 <= k < 3 else "movie" for k in features.kind.tolist()]
        self._genres: dict[int, list[str]] = {}
        self._static: dict[int, dict] = {}
        # reads repeat the same words and the same shared shelves for every user of a region:
        # reasons are rendered once per (code, argument, region), and a shared shelf's items once
        # per decoded shelf and region (keyed by the shelf object, which callers reuse while its
        # cached bytes do not change). Both stay small: bounded by codes x arguments x regions.
        self._reasons: dict[tuple[int, int, str | None], str] = {}
        self._shared_items: dict[int, tuple[object, str | None, list[int], list[dict], list[bytes],
                                            bytes]] = {}
        # ``json`` splices documents from JSON fragments encoded once per model version (this
        # object lives as long as its model): a title's fields, an item's fields after them, a
        # shelf's header. Bounded like the reasons: by titles, and codes x arguments x regions.
        self._title_json = _Memo(self._encode_title)
        # per region, keyed by (reason arg + 1) << 6 | reason code << 2 | slot: one small int
        self._item_tails: dict[str | None, _Memo] = {}
        self._header_json = _Memo(self._encode_header, limit=100_000)
        self._stamp_json = _Memo(_encode_stamp, limit=100_000)  # a page's generated_at
        # the compiled form of ``blob_json_py`` over the same fragment tables (None where the
        # extension is not built): the serving read's path
        self._splicer = self._make_splicer()

    def _make_splicer(self):
        if _splice is None:
            return None
        return _splice.Splicer(
            titles_json=self._title_json, n_titles=len(self._ids), header=self._header_json,
            tails=self._tails, shared_body=self._shared_body, shared_entry=self._shared_titles_body,
            shared_key=shared_key, genres=self.f.title_genres, stamp_json=self._stamp_json,
            score_slow=_score_json_slow, layout=_SPLICE_LAYOUT,
            error=lambda message: InvalidInput(FieldError("page", message)))

    def __getstate__(self) -> dict:
        """Pickled (a model sent to Ray workers) without the compiled splicer, which holds C
        buffers; ``__setstate__`` builds a new one."""
        return {**self.__dict__, "_splicer": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._splicer = self._make_splicer()

    def _genres_of(self, t: int) -> list[str]:
        g = self._genres.get(t)
        if g is None:
            g = [self.f.genre_names[i] for i in self.f.title_genres[t]]
            self._genres[t] = g
        return g

    def reason(self, code: int, arg: int, region: str | None) -> str:
        key = (code, arg, region)
        text = self._reasons.get(key)
        if text is None:
            if len(self._reasons) > 100_000:
                self._reasons.clear()
            text = self._reasons[key] = R.render(code, arg, self.f, region)
        return text

    def _shared_entry(self, got: SharedShelf, code: int, region: str | None) -> tuple:
        """A shared shelf's titles, rendered items (ranks are positions before any user's hidden
        titles are dropped), each item's JSON and all of them joined, made once per shelf object
        and region."""
        entry = self._shared_items.get(id(got))
        if entry is None or entry[0] is not got or entry[1] != region:
            if len(self._shared_items) > 4096:
                self._shared_items.clear()
            titles = got.titles.tolist()
            reasons = [self.reason(code, k, region) for k in range(1, len(titles) + 1)]
            items = self._items(titles, [0] * len(titles), reasons, region, [None] * len(titles))
            frags = [orjson.dumps(i) for i in items]
            entry = self._shared_items[id(got)] = (got, region, titles, items, frags, b",".join(frags))
        return entry

    def _shared_body(self, got: SharedShelf, shelf_type: int, region: str | None,
                     hidden: set[int]) -> bytes:
        """A shared shelf's items as JSON, without the user's ``hidden`` titles (empty: none left)."""
        _, _, titles, _, frags, body = self._shared_entry(got, _SHARED_CODE[shelf_type], region)
        if hidden and not hidden.isdisjoint(titles):
            body = b",".join([f for t, f in zip(titles, frags) if t not in hidden])
        return body

    def _shared_titles_body(self, got: SharedShelf, shelf_type: int, region: str | None) -> tuple[list[int], bytes]:
        """A shared shelf's titles and its items as JSON (for the compiled splice's memo)."""
        entry = self._shared_entry(got, _SHARED_CODE[shelf_type], region)
        return entry[2], entry[5]

    def _shared(self, got: SharedShelf, code: int, region: str | None) -> tuple[list[int], list[dict]]:
        entry = self._shared_entry(got, code, region)
        return entry[2], entry[3]

    def _title_fields(self, t: int) -> dict:
        """The fields of an item that depend on the title alone (built once per title)."""
        got = self._static.get(t)
        if got is None:
            got = self._static[t] = {"title_id": self._ids[t], "name": self._names[t],
                                     "kind": self._kinds[t], "genres": self._genres_of(t)}
        return got

    def _items(self, titles, slots, reasons, region, scores) -> list[dict]:
        fields = self._title_fields
        return [{**fields(t), "slot_kind": SLOT_KINDS[s], "reason": reason, "score": sc}
                for t, s, reason, sc in zip(titles, slots, reasons, scores)]

    def shelf_header(self, s: Shelf, region: str | None) -> tuple[str, str]:
        f = self.f
        where = R.region_name(region)
        if s.type == TOP_PICKS:
            return "top-picks", "Top picks for you"
        if s.type == CONTINUE:
            return "continue-watching", "Continue watching"
        if s.type == BECAUSE:
            return f"because-you-watched-{self._ids[s.arg]}", f"Because you watched {self._names[s.arg]}"
        if s.type in (GENRE, ONBOARDING):
            name = f.genre_names[s.arg]
            return f"{'genre' if s.type == GENRE else 'onboarding'}-{name}", R.genre_row_title(name)
        if s.type == KIND:
            return f"kind-{KIND_IDS[s.arg]}", f"{R.KIND_PLURAL[s.arg]} for you"
        if s.type == TRENDING:
            return f"trending-{(region or 'global').lower()}", f"Trending in {where}" if where else "Trending now"
        if s.type == TOP10:
            return "top-10", f"Top 10 in {where} today" if where else "Top 10 today"
        if s.type == NEW:
            return "new-releases", "New releases"
        return "top-10-global", "Top 10 worldwide today"

    def document(self, page: ComposedPage, model_version: str,
                 shared: Mapping[str, SharedShelf | bytes] | None = None) -> dict:
        """The Page document. Shared shelves missing from ``shared`` are left out; the user's
        ``hidden`` titles are dropped from the shared ones. Documents share the item dicts of
        shared shelves with other reads: treat them as read-only."""
        region = page.region
        shelves = []
        hidden = set(np.asarray(page.hidden).tolist())
        for s in page.shelves:
            sid, title = self.shelf_header(s, region)
            titles = np.asarray(s.titles, np.int64).tolist()
            if s.type in SHARED_TYPES:
                got = (shared or {}).get(s.key or shared_key(s.type, region))
                if got is None:
                    continue
                got = decode_shared(got) if isinstance(got, (bytes, bytearray)) else got
                all_titles, all_items = self._shared(got, _SHARED_CODE[s.type], region)
                if hidden.isdisjoint(all_titles):
                    items = list(all_items)
                else:
                    items = [i for t, i in zip(all_titles, all_items) if t not in hidden]
            elif s.type == TOP_PICKS:
                reason = self.reason
                reasons = [reason(c, a, region) for c, a in zip(s.reasons.tolist(), s.reason_args.tolist())]
                scores = [round(x, 6) for x in s.scores.tolist()]
                items = self._items(titles, s.slots.tolist(), reasons, region, scores)
            else:
                why = self.reason(s.reason, s.reason_arg, region)
                items = self._items(titles, [0] * len(titles), [why] * len(titles), region, [None] * len(titles))
            if items or s.type == TOP_PICKS:
                shelves.append({"id": sid, "title": title, "items": items})
        return {"user_id": page.user_id, "model_version": model_version,
                "generated_at": page.generated_at.isoformat().replace("+00:00", "Z"),
                "mode": page.mode, "shelves": shelves}

    # --- the document as JSON bytes --------------------------------------------------------
    def _encode_title(self, t: int) -> bytes:
        """``{"title_id":...,"genres":[...]`` : an item's JSON up to its per-read fields. Only
        the bytes are kept: a catalog's worth of cached dicts would be objects for every pass
        of the garbage collector to walk."""
        genres = [self.f.genre_names[i] for i in self.f.title_genres[t]]
        return orjson.dumps({"title_id": self._ids[t], "name": self._names[t], "kind": self._kinds[t],
                             "genres": genres})[:-1]

    def _tails(self, region: str | None) -> "_Memo":
        """The item tails (``_encode_tail``) of ``region``, by packed (argument, code, slot)."""
        got = self._item_tails.get(region)
        if got is None:
            if len(self._item_tails) >= 256:  # request regions are whatever a client sends
                self._item_tails.clear()
            got = self._item_tails[region] = _Memo(functools.partial(self._encode_tail, region=region),
                                                   limit=100_000)
        return got

    def _encode_tail(self, packed: int, region: str | None) -> bytes:
        """``,"slot_kind":...,"reason":...,"score":`` : an item's JSON after its title's fields,
        up to its score."""
        slot, code, arg = packed & 3, (packed >> 2) & 15, (packed >> 6) - 1
        return b',"slot_kind":' + orjson.dumps(SLOT_KINDS[slot]) + b',"reason":' + orjson.dumps(
            self.reason(code, arg, region)) + b',"score":'

    def _encode_header(self, key: tuple[int, int, str | None]) -> bytes:
        """``{"id":...,"title":...,"items":[`` of a shelf."""
        sid, title = self.shelf_header(Shelf(type=key[0], titles=[], arg=key[1]), key[2])
        return b'{"id":' + orjson.dumps(sid) + b',"title":' + orjson.dumps(title) + b',"items":['

    def json(self, page: ComposedPage, model_version: str,
             shared: Mapping[str, SharedShelf | bytes] | None = None) -> bytes:
        """``orjson.dumps(self.document(page, model_version, shared))``, byte for byte, spliced
        from fragments encoded once per model version (each title's fields, each item's reason
        and slot, each shelf header, each shared shelf's items) instead of building ~90 dicts
        per read and encoding them. ``page`` may hold lists where it holds arrays
        (``parse_page``)."""
        region = page.region
        hidden = set(_ints(page.hidden))
        titles_json, tail, header = self._title_json, self._tails(region), self._header_json
        out = []
        for s in page.shelves:
            if s.type in SHARED_TYPES:
                got = (shared or {}).get(s.key or shared_key(s.type, region))
                if got is None:
                    continue
                got = decode_shared(got) if isinstance(got, (bytes, bytearray)) else got
                body = self._shared_body(got, s.type, region, hidden)
                if not body:
                    continue
            elif s.type == TOP_PICKS:
                titles = _ints(s.titles)
                scores = _scores_json(_ints(s.scores))
                body = b",".join([titles_json[t] + tail[(a + 1) << 6 | c << 2 | k] + sc + b"}"
                                  for t, k, c, a, sc in zip(titles, _ints(s.slots), _ints(s.reasons),
                                                            _ints(s.reason_args), scores)])
            else:
                titles = _ints(s.titles)
                if not titles:
                    continue
                end = tail[(s.reason_arg + 1) << 6 | s.reason << 2] + b"null}"
                body = (end + b",").join(map(titles_json.__getitem__, titles)) + end
            out.append(header[(s.type, s.arg, region)] + body + b"]}")
        return b"".join((b'{"user_id":', orjson.dumps(page.user_id), b',"model_version":',
                         orjson.dumps(model_version), b',"generated_at":',
                         orjson.dumps(page.generated_at.isoformat().replace("+00:00", "Z")),
                         b',"mode":', orjson.dumps(page.mode), b',"shelves":[', b",".join(out), b"]}"))

    def blob_json(self, blob: bytes, user_id: str, model_version: str,
                  shared_for: Callable[[str | None], Mapping[str, SharedShelf]],
                  region: str | None = None) -> bytes:
        """``blob_json_py``, compiled where ``reelrec.compose._splice`` is built (the same bytes
        at a fraction of the CPU; docs/benchmarks.md, Serving).

        Raises:
            InvalidInput: a blob of another format version or a truncated one.
        """
        if self._splicer is None:
            return self.blob_json_py(blob, user_id, model_version, shared_for, region)
        return self._splicer.blob_json(blob, orjson.dumps(user_id), orjson.dumps(model_version),
                                       shared_for, region)

    def blob_json_py(self, blob: bytes, user_id: str, model_version: str,
                     shared_for: Callable[[str | None], Mapping[str, SharedShelf]],
                     region: str | None = None) -> bytes:
        """``json(parse_page(blob), ...)`` in one pass, byte for byte: the serving read's path
        where the compiled splice is not built, and the reference it is tested against.

        The blob's fields are read off one integer into tuples and the document is spliced
        from the same fragments as ``json``, with no page, shelf or datetime objects in between.
        ``region`` (the request's) replaces the page's own when given; ``shared_for(region)``
        gives the shared shelves, by ``shared_key``, of the region the page ends up in.

        Raises:
            InvalidInput: a blob of another format version or a truncated one.
        """
        acc, end = int.from_bytes(blob, "big"), 8 * len(blob)
        titles_json, header = self._title_json, self._header_json
        try:
            version = acc >> (end - 8)
            if version != VERSION:
                raise InvalidInput(FieldError("page", f"format version {version}, expected {VERSION}"))
            head = (acc >> (end - 48)) & 0xFFFFFFFFFF  # mode 2, time 34, region length 4
            nreg = head & 15
            pos = 48 + 8 * nreg
            page_region = ((acc >> (end - pos)) & ((1 << 8 * nreg) - 1)).to_bytes(nreg, "big").decode(
                "ascii") if nreg else None
            region = region or page_region
            pos += 10
            fields = (acc >> (end - pos)) & 1023
            b, nshelves = fields >> 5, fields & 31
            mask = (1 << b) - 1
            shelves = []
            for _ in range(nshelves):
                pos += 4
                t = (acc >> (end - pos)) & 15
                if t in SHARED_TYPES:
                    shelves.append((t, -1, None, None))
                    continue
                w = b if t == BECAUSE else 8 if t == GENRE or t == ONBOARDING else 2 if t == KIND else 0
                arg = -1
                if w:
                    pos += w
                    arg = (acc >> (end - pos)) & ((1 << w) - 1)
                pos += _COUNT_BITS
                n = (acc >> (end - pos)) & 127
                pos += n * b
                seg = (acc >> (end - pos)) & ((1 << n * b) - 1)
                if t != TOP_PICKS:  # a row: its titles are read where its JSON is written
                    shelves.append((t, arg, (seg, n), None))
                    continue
                titles = [(seg >> k) & mask for k in range((n - 1) * b, -1, -b)]
                pos += 2 * n
                seg = (acc >> (end - pos)) & ((1 << 2 * n) - 1)
                slots = [(seg >> k) & 3 for k in range(2 * n - 2, -1, -2)]
                pos += 4
                na = (acc >> (end - pos)) & 15
                pos += na * b
                seg = (acc >> (end - pos)) & ((1 << na * b) - 1)
                anchors = [(seg >> k) & mask for k in range((na - 1) * b, -1, -b)]
                pos += 8 * n + 64
                seg = (acc >> (end - pos)) & ((1 << (8 * n + 64)) - 1)
                raw = seg.to_bytes(n + 8, "big")
                lo, hi = struct.unpack(">ff", raw[n:])
                pos += 8 * n
                qs = ((acc >> (end - pos)) & ((1 << 8 * n) - 1)).to_bytes(n, "big")
                shelves.append((t, arg, titles, (slots, anchors, raw[:n], lo, hi, qs)))
            pos += _COUNT_BITS
            nh = (acc >> (end - pos)) & 127
            pos += nh * b
            seg = (acc >> (end - pos)) & ((1 << nh * b) - 1)
            hidden = {(seg >> (b * k)) & mask for k in range(nh)}
        except ValueError:  # a shift past the blob's end
            raise InvalidInput(FieldError("page", "truncated page blob")) from None
        shared, tail = shared_for(region), self._tails(region)
        out = []
        for t, arg, titles, top in shelves:
            if titles is None:
                got = shared.get(shared_key(t, region))
                if got is None:
                    continue
                body = self._shared_body(got, t, region, hidden)
                if not body:
                    continue
            elif top is not None:
                slots, anchors, packed, lo, hi, qs = top
                genres = self.f.title_genres
                parts = []
                span = hi - lo
                scores = _scores_json([lo + q / 255.0 * span for q in qs])
                for x, k, p, sc in zip(titles, slots, packed, scores):
                    c, p = p >> 4, p & 15
                    if p == NONE_NIBBLE:
                        a = -1
                    else:
                        how = _ARG_OF[c]
                        if how == 1:  # a position in the title's genres
                            tg = genres[x]
                            a = int(tg[p]) if p < len(tg) else -1
                        elif how == 2:  # a position in the page's anchors
                            a = anchors[p] if p < len(anchors) else -1
                        else:
                            a = p
                    parts += (titles_json[x], tail[(a + 1) << 6 | c << 2 | k], sc, b"},")
                body = b"".join(parts)[:-1]
            else:
                seg, n = titles
                if not n:
                    continue
                code, rarg = _ROW_REASON[t], (-1 if t == CONTINUE else arg)
                last = tail[(rarg + 1) << 6 | code << 2] + b"null}"
                body = (last + b",").join([titles_json[(seg >> k) & mask]
                                           for k in range((n - 1) * b, -1, -b)]) + last
            out += (header[(t, arg, region)], body, b"]},")
        if out:
            out[-1] = b"]}"
        return b"".join((b'{"user_id":', orjson.dumps(user_id), b',"model_version":',
                         orjson.dumps(model_version), b',"generated_at":',
                         self._stamp_json[(head >> 4) & 0x3FFFFFFFF], b',"mode":',
                         _MODE_JSON[head >> 38], b',"shelves":[', *out, b"]}"))

    def decode(self, blob: bytes, user_id: str, model_version: str,
               shared: Mapping[str, SharedShelf | bytes] | None = None) -> dict:
        """The Page document from a cached blob and the region's shared shelves."""
        return self.document(decode_page(blob, self.f, user_id), model_version, shared)


_SHARED_CODE = {TRENDING: R.TRENDING, TOP10: R.TOP10, NEW: R.NEW_RELEASE, TOP10_GLOBAL: R.TOP10_GLOBAL}
_MODE_JSON = [orjson.dumps(m) for m in MODES]
# how a top pick's 4-bit reason argument reads, by reason code: 1 a position in the title's genres,
# 2 a position in the page's anchors, 0 the value itself
_ARG_OF = tuple(1 if c in R.GENRE_ARG else 2 if c in R.TITLE_ARG else 0 for c in range(16))


# the blob's constants, for the compiled splice (which defines none of its own)
_SPLICE_LAYOUT = {"version": VERSION, "count_bits": _COUNT_BITS, "none_nibble": NONE_NIBBLE,
                  "top_picks": TOP_PICKS, "because": BECAUSE, "genre": GENRE, "onboarding": ONBOARDING,
                  "kind": KIND, "continue": CONTINUE, "shared_types": SHARED_TYPES,
                  "row_reason": _ROW_REASON, "mode_json": _MODE_JSON, "arg_of": _ARG_OF}


def _encode_stamp(ts: int) -> bytes:
    """``generated_at`` of a page written at unix time ``ts``, as the document's JSON string."""
    return orjson.dumps(dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z"))


def _scores_json(scores: list[float]) -> list[bytes]:
    """``orjson.dumps(round(x, 6))`` of each score, for a list of ~20 at a time.

    ``round(x, 6)`` and ``"%.6f"`` round alike (correctly, to 6 decimals); for 1e-3 <= |x| < 1e9
    that decimal has at most 15 significant digits, so it is the shortest that reads back as the
    rounded float, which is what orjson writes, and a format of the whole list writes them all
    at once. Other values (or NaN) take the slow road."""
    if not scores:
        return []
    lo, hi, total = min(scores), max(scores), sum(scores)
    # every |x| in [1e-3, 1e9) when the extremes are on one side of zero and inside it (a NaN
    # anywhere makes the sum NaN)
    if total != total or not (1e-3 <= lo and hi < 1e9 or -1e9 < lo and hi <= -1e-3):
        return [_score_json_slow(x) for x in scores]
    text = ("%.6f," * len(scores)) % tuple(scores)
    while "0," in text:  # trailing zeros off, one per pass (a pass is one C scan of ~200 chars)
        text = text.replace("0,", ",")
    return text.replace(".,", ".0,").encode().split(b",")[:-1]


def _score_json_slow(x: float) -> bytes:
    """One score's JSON outside ``_scores_json``'s fast path (also the compiled splice's)."""
    return orjson.dumps(round(x, 6))


def _ints(values) -> list:
    """A list as is, an array as a list of Python scalars."""
    return values if isinstance(values, list) else np.asarray(values).tolist()


class _Memo(dict):
    """``memo[key]``: the stored value, or ``make(key)`` stored on first use; emptied when it
    would grow past ``limit`` entries."""

    def __init__(self, make, limit: int | None = None):
        super().__init__()
        self.make, self.limit = make, limit

    def __missing__(self, key):
        if self.limit is not None and len(self) >= self.limit:
            self.clear()
        value = self[key] = self.make(key)
        return value


def referenced_keys(blob: bytes) -> list[str]:
    """Shared shelf keys a page blob refers to (for the second half of an MGET)."""
    page_region, types = _peek(blob)
    return [shared_key(t, page_region) for t in types]


def _peek(blob: bytes) -> tuple[str | None, list[int]]:
    r = _Reader(blob)
    r.get(8)
    r.get(2)
    r.get(34)
    region = r.raw(r.get(4)).decode("ascii") or None
    b = r.get(5)
    types = []
    for _ in range(r.get(5)):
        t = r.get(4)
        if t in SHARED_TYPES:
            types.append(t)
            continue
        if t == BECAUSE:
            r.get(b)
        elif t in (GENRE, ONBOARDING):
            r.get(8)
        elif t == KIND:
            r.get(2)
        n = r.get(_COUNT_BITS)
        r.array(n, b)
        if t == TOP_PICKS:
            r.array(n, 2)
            r.array(r.get(4), b)
            r.array(n, 8)
            r.raw(8)
            r.array(n, 8)
    return region, types
