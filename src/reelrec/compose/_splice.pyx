# cython: language_level=3, cdivision=True
"""The serving read's splice, compiled: a cached page blob to its JSON document.

``Splicer.blob_json`` is ``reelrec.compose.page.Assembler.blob_json_py`` (the reference, kept in
Python and used where this module is not built) done in C: the blob's fixed-width fields are read
where they lie, and the document is written into one buffer by ``memcpy`` of the same fragments
the Python splice joins, with the titles' fragments (most of a page) copied once into one
contiguous table. A homepage read inside a request cost ~63 us in the Python-object form of this
splice against ~36 us when timed alone: the page's ~150 small objects, lists and dict lookups
miss the CPU caches that the rest of the request has filled. This form touches a few contiguous
buffers instead.

Everything it writes comes from the assembler's own fragment tables and callbacks, so the
document is the same byte for byte; tests/test_page_codec.py compares both on generated pages
and on truncated, bit-flipped and random blobs (same bytes, or the same error).

Nothing here knows the blob's constants: the assembler passes them in (``layout``), so
``reelrec.compose.page`` stays their one definition.

Threads: the callbacks are Python code, during which another thread may enter the same splicer.
Each call writes into its own buffer, and the shared title table is only read or grown in C
stretches with no Python call between a lookup and its copy.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport fabs
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove

cdef enum:
    MAX_SHELVES = 32  # a 5-bit shelf count


cdef struct _Out:
    char* p
    Py_ssize_t n, cap


cdef int _grow(_Out* o, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = o.cap * 2 if o.cap else 32768
    while cap < o.n + need:
        cap *= 2
    cdef char* p = <char*> realloc(o.p, cap)
    if p == NULL:
        raise MemoryError()
    o.p, o.cap = p, cap
    return 0


cdef inline int _put(_Out* o, const char* s, Py_ssize_t n) except -1:
    if o.n + n > o.cap:
        _grow(o, n)
    memcpy(o.p + o.n, s, n)
    o.n += n
    return 0


cdef inline int _putb(_Out* o, bytes b) except -1:
    return _put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef extern from *:
    ctypedef unsigned long long u128 "unsigned __int128"


cdef int _put_score(_Out* o, double x) except -1:
    """``orjson.dumps(round(x, 6))`` for 1e-3 <= |x| < 1e9 (``page._scores_json``'s reasoning):
    x to 6 decimals, rounded half to even on its exact binary value as ``"%.6f"`` rounds it,
    without the trailing zeros. Done in integers (|x| = m * 2**k exactly, so |x| * 10**6 =
    m * 15625 * 2**(k + 6)): C's ``printf`` did the same in a tenth of a request's splice."""
    cdef uint64_t bits_, m, q, rem, half, whole, frac
    cdef u128 p
    cdef int k, sh, n = 0, i
    cdef char buf[40]
    cdef char digits[24]
    memcpy(&bits_, &x, 8)
    m = (bits_ & ((<uint64_t>1 << 52) - 1)) | (<uint64_t>1 << 52)  # normal: |x| >= 1e-3
    k = <int> ((bits_ >> 52) & 0x7FF) - 1075
    p = <u128> m * 15625
    sh = -(k + 6)
    if sh <= 0:
        q = <uint64_t> (p << (-sh))  # an integer already: |x| * 10**6 < 10**15
    else:
        q = <uint64_t> (p >> sh)
        rem = <uint64_t> (p - ((<u128> q) << sh))
        half = <uint64_t>1 << (sh - 1)
        if rem > half or (rem == half and q & 1):
            q += 1
    whole, frac = q // 1000000, q % 1000000
    if bits_ >> 63:
        buf[n] = 45  # '-'
        n += 1
    i = 0
    while True:  # the integer part's digits, least significant first
        digits[i] = <char> (48 + whole % 10)
        i += 1
        whole //= 10
        if not whole:
            break
    while i:
        i -= 1
        buf[n] = digits[i]
        n += 1
    buf[n] = 46  # '.'
    for i in range(6):
        buf[n + 6 - i] = <char> (48 + frac % 10)
        frac //= 10
    n += 7
    while buf[n - 1] == 48 and buf[n - 2] != 46:  # trailing zeros, but one digit after the point
        n -= 1
    return _put(o, buf, n)


cdef struct _Shelf:
    int t
    long long arg
    Py_ssize_t n, titles, slots, na, anchors, reasons, scores  # counts, and bit positions
    double lo, hi


cdef class _Bits:
    """Fields of a blob, MSB first, read by their end position (as ``acc >> (end - pos)``)."""

    cdef const unsigned char* p
    cdef Py_ssize_t nbits

    cdef inline uint64_t get(self, Py_ssize_t pos, int width) except? 0xFFFFFFFFFFFFFFFF:
        """The ``width``-bit field (at most 57 bits) that ends at bit ``pos``."""
        cdef Py_ssize_t byte, last
        cdef uint64_t v = 0
        if pos > self.nbits:
            raise ValueError("a read past the blob's end")
        if width == 0:
            return 0
        byte = (pos - width) >> 3
        last = (pos - 1) >> 3
        while byte <= last:
            v = (v << 8) | self.p[byte]
            byte += 1
        return (v >> ((last + 1) * 8 - pos)) & ((<uint64_t>1 << width) - 1)


cdef inline float _f32(unsigned int bits_):
    cdef float f
    memcpy(&f, &bits_, 4)
    return f


def format_score(double x):
    """A score's JSON as the splice writes it where C formats it (1e-3 <= |x| < 1e9), else None."""
    cdef _Out o = _Out(NULL, 0, 0)
    if not 1e-3 <= fabs(x) < 1e9:
        return None
    try:
        _put_score(&o, x)
        return PyBytes_FromStringAndSize(o.p, o.n)
    finally:
        free(o.p)


cdef class Splicer:
    """One assembler's compiled ``blob_json`` (see the module docstring)."""

    cdef object titles_json, header, tails, shared_body, shared_key, genres, stamp_json
    cdef object error, score_slow, row_reason, mode_json, shared_entry
    cdef dict shared_keys, bodies  # (type, region) -> cache key; id(shelf) -> its body
    cdef int version, count_bits, none_nibble
    cdef int top_picks, because, genre, onboarding, kind, cont
    cdef int shared_type[16]
    cdef int arg_of[16]
    # every title fragment copied so far, back to back: title t at tbuf[toff[t]:toff[t] + tlen[t]]
    cdef char* tbuf
    cdef Py_ssize_t tn, tcap, ntitles
    cdef int64_t* toff
    cdef int* tlen

    def __init__(self, *, titles_json, n_titles, header, tails, shared_body, shared_entry,
                 shared_key, genres, stamp_json, error, score_slow, layout):
        """``titles_json[t]`` is title t's fragment (``n_titles`` of them); ``tails(region)`` the
        item-tail memo of a region; ``shared_entry(shelf, type, region)`` a shared shelf's
        titles and its items' JSON, ``shared_body`` the same without a user's hidden titles;
        ``error(message)`` the exception a bad blob raises;
        ``score_slow(x)`` a score's JSON outside [1e-3, 1e9) in magnitude; ``layout`` the blob's
        constants (``page._SPLICE_LAYOUT``)."""
        self.titles_json, self.header, self.tails = titles_json, header, tails
        self.shared_body, self.shared_key, self.genres = shared_body, shared_key, genres
        self.stamp_json, self.error, self.score_slow = stamp_json, error, score_slow
        self.shared_entry, self.shared_keys, self.bodies = shared_entry, {}, {}
        self.version, self.count_bits = layout["version"], layout["count_bits"]
        self.none_nibble = layout["none_nibble"]
        self.top_picks, self.because = layout["top_picks"], layout["because"]
        self.genre, self.onboarding = layout["genre"], layout["onboarding"]
        self.kind, self.cont = layout["kind"], layout["continue"]
        self.row_reason, self.mode_json = layout["row_reason"], layout["mode_json"]
        for i in range(16):
            self.shared_type[i] = i in layout["shared_types"]
            self.arg_of[i] = layout["arg_of"][i]
        self.ntitles = n_titles
        self.toff = <int64_t*> malloc(max(1, n_titles) * sizeof(int64_t))
        self.tlen = <int*> malloc(max(1, n_titles) * sizeof(int))
        if self.toff == NULL or self.tlen == NULL:
            raise MemoryError()
        for i in range(n_titles):
            self.toff[i] = -1

    def __dealloc__(self):
        free(self.tbuf)
        free(self.toff)
        free(self.tlen)

    cdef int _put_title(self, _Out* o, uint64_t t) except -1:
        """Title ``t``'s fragment into ``o``; a title past the catalog goes to ``titles_json``
        (which raises what the Python splice raises)."""
        cdef bytes frag
        cdef Py_ssize_t n, cap
        cdef char* p
        if t >= <uint64_t> self.ntitles:
            frag = self.titles_json[t]
            return _putb(o, frag)
        if self.toff[t] < 0:
            frag = self.titles_json[t]  # may run Python: the table is touched only after it
            if self.toff[t] < 0:
                n = PyBytes_GET_SIZE(frag)
                if self.tn + n > self.tcap:
                    cap = max(65536, 2 * self.tcap)
                    while cap < self.tn + n:
                        cap *= 2
                    p = <char*> realloc(self.tbuf, cap)
                    if p == NULL:
                        raise MemoryError()
                    self.tbuf, self.tcap = p, cap
                memcpy(self.tbuf + self.tn, PyBytes_AS_STRING(frag), n)
                self.toff[t], self.tlen[t] = self.tn, <int> n
                self.tn += n
        return _put(o, self.tbuf + self.toff[t], self.tlen[t])

    def blob_json(self, blob, user_id_json, model_version_json, shared_for, region=None):
        """``Assembler.blob_json_py`` with the user id and model version given as JSON.

        Raises:
            the ``error`` of the layout: a blob of another format version or a truncated one.
        """
        cdef bytes data = blob if type(blob) is bytes else bytes(blob)
        cdef _Bits bits = _Bits.__new__(_Bits)
        bits.p = <const unsigned char*> PyBytes_AS_STRING(data)
        bits.nbits = 8 * PyBytes_GET_SIZE(data)
        cdef _Shelf shelves[MAX_SHELVES]
        cdef _Shelf* s
        cdef Py_ssize_t pos, b, nreg, nshelves, t, w, n, nh, k, i
        cdef uint64_t head = 0, fields, u
        cdef int version
        cdef set hidden
        try:
            if bits.nbits < 8:
                raise ValueError("empty")
            version = <int> bits.get(8, 8)
            if version != self.version:
                raise self.error(f"format version {version}, expected {self.version}")
            head = bits.get(48, 40)  # mode 2, time 34, region length 4
            nreg = head & 15
            pos = 48 + 8 * nreg
            page_region = None
            if nreg:
                bits.get(pos, 8)  # the end check of the region's bytes (they start at byte 6)
                page_region = data[6:6 + nreg].decode("ascii")
            region = region or page_region
            pos += 10
            fields = bits.get(pos, 10)
            b, nshelves = fields >> 5, fields & 31
            for i in range(nshelves):
                s = &shelves[i]
                pos += 4
                t = bits.get(pos, 4)
                s.t, s.arg, s.n = <int> t, -1, 0
                if self.shared_type[t]:
                    continue
                w = (b if t == self.because else 8 if t == self.genre or t == self.onboarding
                     else 2 if t == self.kind else 0)
                if w:
                    pos += w
                    s.arg = bits.get(pos, w)
                pos += self.count_bits
                n = s.n = bits.get(pos, self.count_bits)
                s.titles = pos
                pos += n * b
                bits.get(pos, 0)  # the end check of the titles
                if t != self.top_picks:  # a row
                    continue
                s.slots = pos
                pos += 2 * n + 4
                s.na = bits.get(pos, 4)
                s.anchors = pos
                pos += s.na * b
                s.reasons = pos
                pos += 8 * n
                u = 0
                for k in range(8):  # the score range: two big-endian float32, low then high
                    u = (u << 8) | bits.get(pos + 8 * (k + 1), 8)
                s.lo, s.hi = _f32(<unsigned int> (u >> 32)), _f32(<unsigned int> (u & 0xFFFFFFFF))
                s.scores = pos + 64
                pos += 64 + 8 * n
                bits.get(pos, 0)
            pos += self.count_bits
            nh = bits.get(pos, self.count_bits)
            bits.get(pos + nh * b, 0)
            hidden = {bits.get(pos + (k + 1) * b, b) for k in range(nh)}
        except ValueError:  # a read past the blob's end, or a region that is not ASCII
            raise self.error("truncated page blob") from None
        cdef _Out o = _Out(NULL, 0, 0)
        cdef bytes doc
        cdef char* d
        try:
            self._splice(&o, bits, shelves, nshelves, b, hidden, region, shared_for)
            prefix = b"".join((b'{"user_id":', user_id_json, b',"model_version":', model_version_json,
                               b',"generated_at":', self.stamp_json[(head >> 4) & 0x3FFFFFFFF],
                               b',"mode":', self.mode_json[head >> 38], b',"shelves":['))
            doc = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(prefix) + o.n + 2)
            d = PyBytes_AS_STRING(doc)
            memcpy(d, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix))
            if o.n:
                memcpy(d + PyBytes_GET_SIZE(prefix), o.p, o.n)
            memcpy(d + PyBytes_GET_SIZE(prefix) + o.n, b"]}", 2)
            return doc
        finally:
            free(o.p)

    cdef bytes _shared(self, shared, int t, region, set hidden):
        """A shared shelf's items (``Assembler._shared_body``; b"" when it is missing or the
        user's hidden titles empty it), from this splicer's memo of each shelf object's body:
        the usual read (no hidden title on the shelf) calls no Python."""
        key = self.shared_keys.get((t, region))
        if key is None:
            if len(self.shared_keys) >= 4096:  # request regions are whatever a client sends
                self.shared_keys.clear()
            key = self.shared_keys[(t, region)] = self.shared_key(t, region)
        got = shared.get(key)
        if got is None:
            return b""
        entry = self.bodies.get(id(got))
        if entry is None or (<tuple> entry)[0] is not got or (<tuple> entry)[1] != t \
                or (<tuple> entry)[2] != region:
            if len(self.bodies) >= 4096:
                self.bodies.clear()
            titles, body = self.shared_entry(got, t, region)
            entry = self.bodies[id(got)] = (got, t, region, frozenset(titles), body)
        if hidden and not hidden.isdisjoint((<tuple> entry)[3]):
            return self.shared_body(got, t, region, hidden)
        return (<tuple> entry)[4]

    cdef int _splice(self, _Out* o, _Bits bits, _Shelf* shelves, Py_ssize_t nshelves, Py_ssize_t b,
                     set hidden, region, shared_for) except -1:
        """The shelves of the document, ``[...]`` without its brackets, into ``o``; the fragments
        are looked up in the Python splice's order (each shelf's body before its header), so a
        corrupt blob fails the same way."""
        cdef object shared = shared_for(region)
        cdef object tail = self.tails(region)
        cdef object genres = self.genres
        cdef bytes body, last
        cdef double span, x
        cdef Py_ssize_t i, j, start
        cdef long long a, c, p, how
        cdef uint64_t x_title, code
        cdef _Shelf* s
        for i in range(nshelves):
            s = &shelves[i]
            start = o.n
            if o.n:
                _put(o, b",", 1)
            if self.shared_type[s.t]:
                body = self._shared(shared, s.t, region, hidden)
                if not body:
                    o.n = start
                    continue
                _putb(o, body)
            elif s.t == self.top_picks:
                span = s.hi - s.lo
                for j in range(s.n):
                    x_title = bits.get(s.titles + (j + 1) * b, b)
                    code = bits.get(s.reasons + 8 * (j + 1), 8)
                    c, p = code >> 4, code & 15
                    if p == self.none_nibble:
                        a = -1
                    else:
                        how = self.arg_of[c]
                        if how == 1:  # a position in the title's genres
                            tg = genres[x_title]
                            a = tg[p] if p < len(tg) else -1
                        elif how == 2:  # a position in the page's anchors
                            a = bits.get(s.anchors + (p + 1) * b, b) if p < s.na else -1
                        else:
                            a = p
                    if j:
                        _put(o, b",", 1)
                    self._put_title(o, x_title)
                    _putb(o, tail[(a + 1) << 6 | c << 2 | bits.get(s.slots + 2 * (j + 1), 2)])
                    x = s.lo + bits.get(s.scores + 8 * (j + 1), 8) / 255.0 * span
                    if 1e-3 <= fabs(x) < 1e9:
                        _put_score(o, x)
                    else:
                        _putb(o, self.score_slow(x))
                    _put(o, b"}", 1)
            else:
                if not s.n:
                    o.n = start
                    continue
                c = self.row_reason[s.t]
                last = tail[((-1 if s.t == self.cont else s.arg) + 1) << 6 | c << 2] + b"null}"
                for j in range(s.n):
                    if j:
                        _put(o, b",", 1)
                    self._put_title(o, bits.get(s.titles + (j + 1) * b, b))
                    _putb(o, last)
            _put(o, b"]}", 2)
            # the shelf's header goes in front of its body
            last = self.header[(s.t, s.arg, region)]
            j = PyBytes_GET_SIZE(last)
            start += start > 0  # after the comma
            if o.n + j > o.cap:
                _grow(o, j)
            memmove(o.p + start + j, o.p + start, o.n - start)
            memcpy(o.p + start, PyBytes_AS_STRING(last), j)
            o.n += j
        return 0
