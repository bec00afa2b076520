# cython: language_level=3, cdivision=True
"""The serving read's splice, compiled: a cached page blob to its JSON document.

``Splicer.blob_json`` is ``reelrec.compose.page.Assembler.blob_json`` (the reference, kept in
Python and used where this module is not built) with the blob's fixed-width fields read by C
instead of Python integer shifts, and the top picks' scores formatted by C. Everything it writes
comes from the assembler's own fragment tables and callbacks, so the document is the same byte
for byte; tests/test_splice.py compares both on every page of a precomputed world and on
generated blobs, corrupt ones included.

Nothing here knows the blob's constants: the assembler passes them in (``layout``), so
``reelrec.compose.page`` stays their one definition.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport fabs
from libc.stdint cimport uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy

cdef enum:
    MAX_ITEMS = 128  # a shelf holds at most 127 items (a 7-bit count)


cdef class _Bits:
    """Fields of a blob, MSB first, read by their end position (as ``acc >> (end - pos)``)."""

    cdef const unsigned char* p
    cdef Py_ssize_t nbits

    cdef inline uint64_t get(self, Py_ssize_t pos, int width) except? 0xFFFFFFFFFFFFFFFF:
        """The ``width``-bit field (at most 57 bits) that ends at bit ``pos``."""
        cdef Py_ssize_t start = pos - width, byte, last
        cdef uint64_t v = 0
        cdef int shift
        if pos > self.nbits:
            raise ValueError("a read past the blob's end")
        if width == 0:
            return 0
        byte = start >> 3
        last = (pos - 1) >> 3
        while byte <= last:
            v = (v << 8) | self.p[byte]
            byte += 1
        shift = <int>((last + 1) * 8 - pos)
        return (v >> shift) & ((<uint64_t>1 << width) - 1)


cdef bytes _score_json(double x):
    """``orjson.dumps(round(x, 6))`` for 1e-3 <= |x| < 1e9 (``page._scores_json``'s reasoning):
    the correctly rounded 6-decimal form without its trailing zeros."""
    cdef char buf[48]
    cdef int n = snprintf(buf, sizeof(buf), "%.6f", x)
    while n > 0 and buf[n - 1] == b'0':
        n -= 1
    if buf[n - 1] == b'.':
        buf[n] = b'0'
        n += 1
    return PyBytes_FromStringAndSize(buf, n)


def format_score(double x):
    """A score's JSON as the splice writes it where C formats it (1e-3 <= |x| < 1e9), else None."""
    return _score_json(x) if 1e-3 <= fabs(x) < 1e9 else None


cdef class Splicer:
    """One assembler's compiled ``blob_json`` (see the module docstring)."""

    cdef object titles_json, header, tails, shared_body, shared_key, genres, stamp_json
    cdef object error, score_slow, row_reason, mode_json
    cdef int version, count_bits, none_nibble
    cdef int top_picks, because, genre, onboarding, kind, cont
    cdef int shared_type[16]
    cdef int arg_of[16]

    def __init__(self, *, titles_json, header, tails, shared_body, shared_key, genres, stamp_json,
                 error, score_slow, layout):
        """``tails(region)`` is the item-tail memo of a region; ``error(message)`` the exception
        a bad blob raises; ``score_slow(x)`` a score's JSON outside [1e-3, 1e9) in magnitude;
        ``layout`` the blob's constants (``page._splice_layout``)."""
        self.titles_json, self.header, self.tails = titles_json, header, tails
        self.shared_body, self.shared_key, self.genres = shared_body, shared_key, genres
        self.stamp_json, self.error, self.score_slow = stamp_json, error, score_slow
        self.version, self.count_bits = layout["version"], layout["count_bits"]
        self.none_nibble = layout["none_nibble"]
        self.top_picks, self.because = layout["top_picks"], layout["because"]
        self.genre, self.onboarding = layout["genre"], layout["onboarding"]
        self.kind, self.cont = layout["kind"], layout["continue"]
        self.row_reason, self.mode_json = layout["row_reason"], layout["mode_json"]
        for i in range(16):
            self.shared_type[i] = i in layout["shared_types"]
            self.arg_of[i] = layout["arg_of"][i]

    def blob_json(self, blob, user_id_json, model_version_json, shared_for, region=None):
        """``Assembler.blob_json`` with the user id and model version given as JSON.

        Raises:
            the ``error`` of the layout: a blob of another format version or a truncated one.
        """
        cdef bytes data = blob if type(blob) is bytes else bytes(blob)
        cdef _Bits bits = _Bits.__new__(_Bits)
        bits.p = <const unsigned char*> PyBytes_AS_STRING(data)
        bits.nbits = 8 * PyBytes_GET_SIZE(data)
        cdef Py_ssize_t pos, b, nreg, nshelves, t, w, n, na, nh, k
        cdef long long arg
        cdef uint64_t head = 0, fields, u
        cdef int version
        cdef list shelves = [], titles, anchors
        cdef unsigned char pk[MAX_ITEMS]
        cdef unsigned char qv[MAX_ITEMS]
        cdef unsigned char sl[MAX_ITEMS]
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
            for _ in range(nshelves):
                pos += 4
                t = bits.get(pos, 4)
                if self.shared_type[t]:
                    shelves.append((t, -1, None, None))
                    continue
                w = (b if t == self.because else 8 if t == self.genre or t == self.onboarding
                     else 2 if t == self.kind else 0)
                arg = -1
                if w:
                    pos += w
                    arg = bits.get(pos, w)
                pos += self.count_bits
                n = bits.get(pos, self.count_bits)
                bits.get(pos + n * b, 0)  # the end check of the titles
                titles = [bits.get(pos + (k + 1) * b, b) for k in range(n)]
                pos += n * b
                if t != self.top_picks:  # a row
                    shelves.append((t, arg, titles, None))
                    continue
                pos += 2 * n
                bits.get(pos, 0)
                for k in range(n):
                    sl[k] = <unsigned char> bits.get(pos - 2 * (n - k - 1), 2)
                pos += 4
                na = bits.get(pos, 4)
                bits.get(pos + na * b, 0)
                anchors = [bits.get(pos + (k + 1) * b, b) for k in range(na)]
                pos += na * b
                bits.get(pos + 16 * n + 64, 0)  # the end check of reasons, score range, scores
                for k in range(n):  # one byte of reason per pick
                    pk[k] = <unsigned char> bits.get(pos + 8 * (k + 1), 8)
                pos += 8 * n
                u = 0
                for k in range(8):  # the score range: two big-endian float32, low then high
                    u = (u << 8) | bits.get(pos + 8 * (k + 1), 8)
                pos += 64
                for k in range(n):  # one quantised score byte per pick
                    qv[k] = <unsigned char> bits.get(pos + 8 * (k + 1), 8)
                pos += 8 * n
                shelves.append((t, arg, titles,
                                (PyBytes_FromStringAndSize(<char*> sl, n), anchors,
                                 PyBytes_FromStringAndSize(<char*> pk, n),
                                 _f32(<unsigned int> (u >> 32)), _f32(<unsigned int> (u & 0xFFFFFFFF)),
                                 PyBytes_FromStringAndSize(<char*> qv, n))))
            pos += self.count_bits
            nh = bits.get(pos, self.count_bits)
            bits.get(pos + nh * b, 0)
            hidden = {bits.get(pos + (k + 1) * b, b) for k in range(nh)}
        except ValueError:  # a read past the blob's end, or a region that is not ASCII
            raise self.error("truncated page blob") from None
        return self._splice(shelves, hidden, region, user_id_json, model_version_json, shared_for,
                            (head >> 4) & 0x3FFFFFFFF, head >> 38)

    cdef bytes _splice(self, list shelves, set hidden, region, user_id_json, model_version_json,
                       shared_for, uint64_t stamp, uint64_t mode):
        cdef object shared = shared_for(region)
        cdef object tail = self.tails(region)
        cdef object titles_json = self.titles_json
        cdef object genres = self.genres
        cdef list out = [], parts, titles, anchors
        cdef bytes slots, packed, qs, body, last
        cdef const unsigned char* sl
        cdef const unsigned char* pk
        cdef const unsigned char* qv
        cdef double lo, hi, span, x
        cdef Py_ssize_t i, n, na
        cdef long long a, c, p, how, arg, t
        for entry in shelves:
            t, arg, titles, top = entry
            if titles is None:
                got = shared.get(self.shared_key(t, region))
                if got is None:
                    continue
                body = self.shared_body(got, t, region, hidden)
                if not body:
                    continue
            elif top is not None:
                slots, anchors, packed, lo, hi, qs = top
                sl = <const unsigned char*> PyBytes_AS_STRING(slots)
                pk = <const unsigned char*> PyBytes_AS_STRING(packed)
                qv = <const unsigned char*> PyBytes_AS_STRING(qs)
                parts = []
                span = hi - lo
                n, na = len(titles), len(anchors)
                for i in range(n):
                    c, p = pk[i] >> 4, pk[i] & 15
                    if p == self.none_nibble:
                        a = -1
                    else:
                        how = self.arg_of[c]
                        if how == 1:  # a position in the title's genres
                            tg = genres[titles[i]]
                            a = tg[p] if p < len(tg) else -1
                        elif how == 2:  # a position in the page's anchors
                            a = anchors[p] if p < na else -1
                        else:
                            a = p
                    x = lo + qv[i] / 255.0 * span
                    parts.append(titles_json[titles[i]])
                    parts.append(tail[(a + 1) << 6 | c << 2 | sl[i]])
                    parts.append(_score_json(x) if 1e-3 <= fabs(x) < 1e9 else self.score_slow(x))
                    parts.append(b"},")
                body = b"".join(parts)[:-1]
            else:
                if not titles:
                    continue
                c = self.row_reason[t]
                last = tail[((-1 if t == self.cont else arg) + 1) << 6 | c << 2] + b"null}"
                body = (last + b",").join([titles_json[v] for v in titles]) + last
            out += (self.header[(t, arg, region)], body, b"]},")
        if out:
            out[-1] = b"]}"
        return b"".join((b'{"user_id":', user_id_json, b',"model_version":', model_version_json,
                         b',"generated_at":', self.stamp_json[stamp], b',"mode":',
                         self.mode_json[mode], b',"shelves":[', *out, b"]}"))


cdef inline float _f32(unsigned int bits_):
    cdef float f
    memcpy(&f, &bits_, 4)
    return f
