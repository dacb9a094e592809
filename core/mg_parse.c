/* mg_parse: one forward pass over a scrape body (Prometheus text 0.0.4 or
 * OpenMetrics 1.0) that hands out views into the body. Owns and allocates
 * nothing: labels go into a fixed array in a parser state on the stack.
 * Every read is bounds-checked; the body has no terminator to rely on. */
#include "mg_parse.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_err.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* ---- character classes ------------------------------------------------ */

enum {
  C_MSTART = 1 << 0, /* [a-zA-Z_:]     first byte of a metric name */
  C_MCHAR = 1 << 1,  /* [a-zA-Z0-9_:]  rest of a metric name */
  C_LSTART = 1 << 2, /* [a-zA-Z_]      first byte of a label name */
  C_LCHAR = 1 << 3,  /* [a-zA-Z0-9_]   rest of a label name */
  C_LVSPEC = 1 << 4, /* '"' '\\' '\n' or >= 0x80: needs a look inside a label value */
  C_TVEND = 1 << 5,  /* ' ' '\t' '\n' '{': ends a text-format value token */
  C_DIGIT = 1 << 6,
};

/* The table is computed by the compiler from these predicates, so it cannot
 * drift from the grammar written next to it. */
#define ALPHA_(c) (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define DIGIT_(c) ((c) >= '0' && (c) <= '9')
#define CLS_(c)                                                                                   \
  ((ALPHA_(c) || (c) == '_' ? C_MSTART | C_MCHAR | C_LSTART | C_LCHAR : 0) |                     \
   ((c) == ':' ? C_MSTART | C_MCHAR : 0) | (DIGIT_(c) ? C_MCHAR | C_LCHAR | C_DIGIT : 0) |       \
   ((c) == '"' || (c) == '\\' || (c) == '\n' || (c) >= 0x80 ? C_LVSPEC : 0) |                    \
   ((c) == ' ' || (c) == '\t' || (c) == '\n' || (c) == '{' ? C_TVEND : 0))
#define R4_(c) CLS_(c), CLS_((c) + 1), CLS_((c) + 2), CLS_((c) + 3)
#define R16_(c) R4_(c), R4_((c) + 4), R4_((c) + 8), R4_((c) + 12)
#define R64_(c) R16_(c), R16_((c) + 16), R16_((c) + 32), R16_((c) + 48)
static const uint8_t cls[256] = {R64_(0), R64_(64), R64_(128), R64_(192)};

#define CL(p) cls[*(const uint8_t *)(p)]

/* Label values are most of a body's bytes. Scan them a word at a time for
 * the bytes that need a closer look ('"', '\\', '\n', >= 0x80). In each
 * zero-byte test below, a false hit can only sit above a true one, so the
 * lowest set bit is always a real match. */
#define ONES_ 0x0101010101010101ULL
#define HIGHS_ 0x8080808080808080ULL
static inline uint64_t bytes_eq(uint64_t x, uint8_t b) {
  uint64_t y = x ^ (ONES_ * b);
  return (y - ONES_) & ~y & HIGHS_;
}

static const char *scan_value(const char *p, const char *end) {
#ifdef __SSE2__
  /* Sixteen bytes a step where SSE2 exists (every x86-64): compare against
   * the three special bytes; the sign bit of the data itself marks >= 0x80. */
  const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), nl = _mm_set1_epi8('\n');
  while (end - p >= 16) {
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
                             _mm_or_si128(_mm_cmpeq_epi8(x, nl), x));
    unsigned bits = (unsigned)_mm_movemask_epi8(m);
    if (bits) return p + __builtin_ctz(bits);
    p += 16;
  }
#endif
  while (end - p >= 8) {
    uint64_t x;
    memcpy(&x, p, sizeof x);
    uint64_t hit = bytes_eq(x, '"') | bytes_eq(x, '\\') | bytes_eq(x, '\n') | (x & HIGHS_);
    if (hit) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
      return p + (__builtin_ctzll(hit) >> 3);
#else
      break; /* byte order would need clz; finish bytewise */
#endif
    }
    p += 8;
  }
  while (p < end && !(CL(p) & C_LVSPEC)) p++;
  return p;
}

#ifdef __SSE2__
/* Bytes of x in [lo, hi]; both below 0x80, so the signed compares leave
 * bytes >= 0x80 out. */
static inline __m128i in_range(__m128i x, char lo, char hi) {
  return _mm_and_si128(_mm_cmpgt_epi8(x, _mm_set1_epi8((char)(lo - 1))), _mm_cmplt_epi8(x, _mm_set1_epi8((char)(hi + 1))));
}

/* Mask of the bytes of p[0..16) in [a-zA-Z0-9_], plus ':' when colon. */
static inline unsigned name_bytes16(const char *p, bool colon) {
  __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
  __m128i m = _mm_or_si128(in_range(_mm_or_si128(x, _mm_set1_epi8(0x20)), 'a', 'z'), in_range(x, '0', '9'));
  m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8('_')));
  if (colon) m = _mm_or_si128(m, _mm_cmpeq_epi8(x, _mm_set1_epi8(':')));
  return (unsigned)_mm_movemask_epi8(m);
}
#endif

/* First byte at or after p that cannot continue a metric name (colon) or a
 * label name. Metric names are a sixth of a typical body. */
static inline const char *scan_name(const char *p, const char *end, bool colon) {
#ifdef __SSE2__
  while (end - p >= 16) {
    unsigned out = ~name_bytes16(p, colon) & 0xffffu;
    if (out) return p + __builtin_ctz(out);
    p += 16;
  }
#endif
  unsigned cls_mask = colon ? C_MCHAR : C_LCHAR;
  while (p < end && (CL(p) & cls_mask)) p++;
  return p;
}

static const char *skip_blank(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t')) p++;
  return p;
}

/* ---- UTF-8 (the rules of Go's utf8.Valid: no overlongs, no surrogates,
 * nothing above U+10FFFF) ------------------------------------------------ */


/* Offset of the first byte that is not valid UTF-8, or n. */
static size_t utf8_check(const char *s, size_t n) {
  const uint8_t *p = (const uint8_t *)s, *end = p + n;
  while (p < end) {
    if (*p < 0x80) {
      p++;
      continue;
    }
    size_t k = mg_utf8_seq(p, (size_t)(end - p));
    if (!k) break;
    p += k;
  }
  return (size_t)(p - (const uint8_t *)s);
}

/* ---- floats ------------------------------------------------------------ */

/* Prometheus maps every NaN it parses to this one value so that a NaN in a
 * body can never be taken for the staleness marker (0x7ff0000000000002). */
#define NORMAL_NAN_BITS 0x7ff8000000000001ULL

static double normal_nan(void) {
  uint64_t bits = NORMAL_NAN_BITS;
  double d;
  memcpy(&d, &bits, sizeof d);
  return d;
}

/* Powers of ten up to 1e22 are exact doubles (5^22 < 2^53). */
static const double pow10_exact[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
static const uint64_t pow10_u64[16] = {1ULL,
                                       10ULL,
                                       100ULL,
                                       1000ULL,
                                       10000ULL,
                                       100000ULL,
                                       1000000ULL,
                                       10000000ULL,
                                       100000000ULL,
                                       1000000000ULL,
                                       10000000000ULL,
                                       100000000000ULL,
                                       1000000000000ULL,
                                       10000000000000ULL,
                                       100000000000000ULL,
                                       1000000000000000ULL};
#define TWO53 (1ULL << 53)

#if defined(__x86_64__) && LDBL_MANT_DIG == 64
/* Go's shortest formatting gives many exporter values 16-17 digits, past
 * Clinger's 2^53 bound. x87 extended precision holds every 19-digit
 * mantissa and 10^k up to k = 27 (5^27 < 2^63) exactly, so m*10^k or m/10^k
 * is a single rounding to 64 bits. Rounding that to 53 bits gives the
 * correctly rounded double unless it landed exactly on a midpoint between
 * two doubles (extra 11 bits 10000000000), where the first rounding may
 * have erased which side the true value was on: leave those to strtod.
 * Results lie within 1e-27..1e46, so double overflow and subnormals cannot
 * occur here. If someone lowered the x87 precision to 53 bits, the first
 * rounding is already the final one and the extra bits are zero. (Valgrind
 * emulates x87 in double precision, so under it a last bit may differ.) */
#define HAVE_EXT_PATH 1
static const long double pow10_ext[28] = {1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
                                          1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
                                          1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L};

static bool ext_path(uint64_t mant, int64_t e10, double *out) {
  if (e10 < -27 || e10 > 27) return false;
  long double r = e10 < 0 ? (long double)mant / pow10_ext[-e10] : (long double)mant * pow10_ext[e10];
  uint64_t sig; /* x86 extended: the low 8 bytes are the significand */
  memcpy(&sig, &r, sizeof sig);
  if ((sig & 0x7FF) == 0x400) return false;
  *out = (double)r;
  return true;
}
#endif

/* Case-insensitive compare of s[0..n) against a lower-case word. */
static bool eq_nocase(const char *s, size_t n, const char *word) {
  size_t wn = strlen(word);
  if (n != wn) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c + ('a' - 'A'));
    if (c != word[i]) return false;
  }
  return true;
}

/* Go's special(): [+-]inf, [+-]infinity, nan (no sign), any case. */
static int parse_special(const char *s, size_t n, double *out) {
  bool neg = false;
  if (n && (s[0] == '+' || s[0] == '-')) {
    neg = s[0] == '-';
    if (eq_nocase(s + 1, n - 1, "inf") || eq_nocase(s + 1, n - 1, "infinity")) {
      *out = neg ? -INFINITY : INFINITY;
      return 0;
    }
    return MG_EPARSE;
  }
  if (eq_nocase(s, n, "inf") || eq_nocase(s, n, "infinity")) {
    *out = INFINITY;
    return 0;
  }
  if (eq_nocase(s, n, "nan")) {
    *out = normal_nan();
    return 0;
  }
  return MG_EPARSE;
}

/* Digits kept for strtod. The exact decimal value of a point halfway between
 * two doubles has at most 767 significant digits, so 768 digits plus one
 * non-zero "sticky" digit standing for everything dropped round the same way
 * as the full string. */
#define SLOW_DIGITS 768

/* The slow path rewrites the number as "[-]DIGITSe[-]EXP" (no decimal point,
 * so strtod's locale cannot matter, and bounded in size however long the
 * input) and lets glibc's correctly rounded strtod finish. */
static int parse_float_slow(const char *s, size_t n, double *out) {
  char buf[1 + SLOW_DIGITS + 1 + 1 + 24];
  size_t w = 0, nsig = 0;
  const char *p = s, *end = s + n;
  bool neg = false, sticky = false, seen_dot = false;
  int64_t point = 0; /* value = 0.DIGITS x 10^(point + exp) */
  if (*p == '+' || *p == '-') neg = *p++ == '-';
  if (neg) buf[w++] = '-';
  for (; p < end && (DIGIT_(*p) || *p == '.'); p++) {
    if (*p == '.') {
      seen_dot = true;
      continue;
    }
    if (nsig == 0 && *p == '0') {
      if (seen_dot) point--;
      continue;
    }
    if (!seen_dot) point++;
    if (nsig < SLOW_DIGITS)
      buf[w++] = *p;
    else if (*p != '0')
      sticky = true;
    nsig++;
  }
  if (nsig == 0) {
    *out = neg ? -0.0 : 0.0;
    return 0;
  }
  int64_t exp = 0;
  if (p < end) { /* the caller validated: this is [eE][+-]?digits */
    bool eneg = false;
    p++;
    if (*p == '+' || *p == '-') eneg = *p++ == '-';
    /* Anything past 1e9 is far outside double range either way. */
    for (; p < end; p++)
      if (exp < 1000000000) exp = exp * 10 + (*p - '0');
    if (eneg) exp = -exp;
  }
  size_t kept = nsig < SLOW_DIGITS ? nsig : SLOW_DIGITS;
  if (sticky) {
    buf[w++] = '1';
    kept++;
  }
  int64_t e10 = point + exp - (int64_t)kept;
  /* Clamp so the text stays short; results are already 0 or Inf there. */
  if (e10 > 100000) e10 = 100000;
  if (e10 < -100000) e10 = -100000;
  int k = snprintf(buf + w, sizeof buf - w, "e%lld", (long long)e10);
  if (k < 0 || (size_t)k >= sizeof buf - w) return MG_EPARSE;
  double d = strtod(buf, NULL);
  /* Go's ParseFloat reports overflow as ErrRange and Prometheus rejects the
   * sample; underflow to zero or a subnormal is not an error. */
  if (isinf(d)) return MG_EPARSE;
  *out = d;
  return 0;
}

int mg_parse_float(const char *s, size_t n, double *out) {
  const char *p = s, *end = s + n;
  bool neg = false;
  if (n == 0) return MG_EPARSE;
  if (*p == '+' || *p == '-') {
    neg = *p == '-';
    p++;
  }
  if (p == end) return MG_EPARSE;
  if (!DIGIT_(*p) && *p != '.') return parse_special(s, n, out);

  /* Syntax (Go ParseFloat, base 10; Prometheus rejects '_' and hex):
   * digits [ '.' digits ] | '.' digits, then optional [eE][+-]?digits.
   * While checking it, gather up to 19 significant digits. */
  uint64_t mant = 0;
  int nd = 0;
  int64_t dexp = 0;
  bool any = false, trunc = false;
  for (; p < end && DIGIT_(*p); p++) {
    unsigned d = (unsigned)(*p - '0');
    any = true;
    if (mant == 0 && d == 0) continue;
    if (nd < 19) {
      mant = mant * 10 + d;
      nd++;
    } else {
      dexp++;
      trunc |= d != 0;
    }
  }
  if (p < end && *p == '.') {
    for (p++; p < end && DIGIT_(*p); p++) {
      unsigned d = (unsigned)(*p - '0');
      any = true;
      if (mant == 0 && d == 0) {
        dexp--;
        continue;
      }
      if (nd < 19) {
        mant = mant * 10 + d;
        nd++;
        dexp--;
      } else {
        trunc |= d != 0;
      }
    }
  }
  if (!any) return MG_EPARSE;
  int64_t e = 0;
  if (p < end && (*p == 'e' || *p == 'E')) {
    bool eneg = false;
    p++;
    if (p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
    if (p == end || !DIGIT_(*p)) return MG_EPARSE;
    for (; p < end && DIGIT_(*p); p++)
      if (e < 1000000000) e = e * 10 + (*p - '0');
    if (eneg) e = -e;
  }
  if (p != end) return MG_EPARSE;

  /* Clinger's fast path: an exact integer mantissa times or divided by an
   * exact power of ten is one correctly rounded IEEE operation. */
  if (!trunc) {
    int64_t e10 = dexp + e;
    double v;
    if (mant == 0) {
      *out = neg ? -0.0 : 0.0;
      return 0;
    }
    if (e10 == 0) { /* one correctly rounded conversion, any 64-bit mantissa */
      v = (double)mant;
      *out = neg ? -v : v;
      return 0;
    }
    if (mant <= TWO53) {
      if (e10 > 0 && e10 <= 22) {
        v = (double)mant * pow10_exact[e10];
        *out = neg ? -v : v;
        return 0;
      }
      if (e10 < 0 && e10 >= -22) {
        v = (double)mant / pow10_exact[-e10];
        *out = neg ? -v : v;
        return 0;
      }
      /* 1234e25: move the excess exponent into the integer while it stays
       * exact, then one multiplication. */
      if (e10 > 22 && e10 - 22 < 16 && mant <= TWO53 / pow10_u64[e10 - 22]) {
        v = (double)(mant * pow10_u64[e10 - 22]) * 1e22;
        *out = neg ? -v : v;
        return 0;
      }
    }
#ifdef HAVE_EXT_PATH
    if (ext_path(mant, e10, &v)) {
      *out = neg ? -v : v;
      return 0;
    }
#endif
  }
  return parse_float_slow(s, n, out);
}

/* ---- parser state ------------------------------------------------------- */

typedef struct pstate {
  const char *end;
  const char *ls; /* first byte of the current line */
  uint32_t line;
  const mg_parse_callbacks_t *cb;
  void *ud;
  mg_parse_error_t *err;
  mg_parse_label_t labels[MG_PARSE_MAX_LABELS];
} pstate_t;

static const char MSG_CRLF[] = "carriage return before newline (CRLF line endings are not allowed)";

static int fail_at(pstate_t *st, uint32_t line, const char *ls, const char *at, const char *msg) {
  size_t col = (size_t)(at - ls) + 1;
  /* A '\r' at the end of a line means a CRLF body; say so instead of
   * blaming the token it happens to end. */
  if (at < st->end && *at == '\r' && (at + 1 == st->end || at[1] == '\n')) msg = MSG_CRLF;
  st->err->line = line;
  st->err->column = col > UINT32_MAX ? UINT32_MAX : (uint32_t)col;
  st->err->msg = msg;
  return MG_EPARSE;
}

static int fail(pstate_t *st, const char *at, const char *msg) { return fail_at(st, st->line, st->ls, at, msg); }

static void next_line(pstate_t *st, const char *ls) {
  st->ls = ls;
  if (st->line < UINT32_MAX) st->line++;
}

/* A float token that failed may end in the '\r' of a CRLF line: point there. */
static const char *bad_token_at(const char *tok, size_t n) {
  return n && tok[n - 1] == '\r' ? tok + n - 1 : tok;
}

/* ---- labels ------------------------------------------------------------- */

/* Parse "{...}" with *pp at '{'; on success *pp is just past '}'. Labels are
 * stored in out (NULL: validate only, for exemplars). The text format allows
 * blanks around every token and a missing comma, as Prometheus' lexer does;
 * OpenMetrics allows neither. Both allow a trailing comma. */
static int parse_labels(pstate_t *st, const char **pp, bool om, mg_parse_label_t *out, size_t *nout,
                        bool *sorted) {
  const char *p = *pp + 1, *end = st->end;
  size_t n = 0;
  bool asc = true;
  /* Blanks between tokens are rare: each skip_blank below is guarded by a
   * test for the byte that usually stands there. */
  for (;;) {
    if (!om && p < end && (*p == ' ' || *p == '\t')) p = skip_blank(p, end);
    if (p < end && *p == '}') {
      p++;
      break;
    }
    if (p >= end) return fail(st, p, "unterminated label set");
    if (!(CL(p) & C_LSTART)) return fail(st, p, "invalid label name");
    const char *name = p++;
    p = scan_name(p, end, false);
    size_t nlen = (size_t)(p - name);
    if (!om && p < end && *p != '=') p = skip_blank(p, end);
    if (p >= end || *p != '=') return fail(st, p, "expected '=' after label name");
    p++;
    if (!om && p < end && *p != '"') p = skip_blank(p, end);
    if (p >= end || *p != '"') return fail(st, p, "expected '\"' to open label value");
    const char *open = p++;
    const char *vstart = p;
    uint32_t open_line = st->line;
    const char *open_ls = st->ls;
    bool esc = false;
    for (;;) {
      p = scan_value(p, end);
      if (p >= end) return fail_at(st, open_line, open_ls, open, "unterminated label value");
      char c = *p;
      if (c == '"') break;
      if (c == '\\') {
        /* Any escape is lexically fine (only \\ \" \n mean something);
         * a backslash may not escape a newline or the end of the body. */
        esc = true;
        if (p + 1 >= end) return fail_at(st, open_line, open_ls, open, "unterminated label value");
        if (p[1] == '\n') return fail(st, p, "invalid escape in label value");
        /* A multi-byte character after '\\' still gets its UTF-8 check. */
        p += (uint8_t)p[1] < 0x80 ? 2 : 1;
        continue;
      }
      if (c == '\n') {
        /* Prometheus' text lexer takes a raw newline inside quotes as part
         * of the value; OpenMetrics forbids it. */
        if (om) return fail(st, p, "unterminated label value");
        p++;
        next_line(st, p);
        continue;
      }
      size_t k = mg_utf8_seq((const unsigned char *)p, (size_t)(end - p));
      if (!k) return fail(st, p, "invalid UTF-8 in label value");
      p += k;
    }
    if (out) {
      if (nlen == 8 && memcmp(name, "__name__", 8) == 0)
        return fail(st, name, "duplicate label name (__name__ is set by the metric name)");
      if (n == MG_PARSE_MAX_LABELS) return fail(st, name, "too many labels");
      if (n && asc && mg_str_cmp(out[n - 1].name, mg_str_n(name, nlen)) >= 0) asc = false;
      out[n].name = mg_str_n(name, nlen);
      out[n].value = mg_str_n(vstart, (size_t)(p - vstart));
      out[n].escaped = esc;
    }
    n++;
    p++; /* closing quote */
    if (!om) {
      if (p < end && *p != ',' && *p != '}') p = skip_blank(p, end);
      if (p < end && *p == ',') p++;
    } else if (p < end && *p == ',') {
      p++;
    } else if (p >= end || *p != '}') {
      return fail(st, p, "expected ',' or '}' after label value");
    }
  }
  *pp = p;
  if (nout) *nout = n;
  if (sorted) *sorted = asc;
  return 0;
}

/* Index of a label whose name repeats an earlier one, or -1. Series carry a
 * handful of labels, where comparing all pairs is cheapest; a long label set
 * goes through a small hash table so a hostile body stays linear. */
static long find_duplicate(const mg_parse_label_t *l, size_t n) {
  if (n <= 16) {
    /* Length and first byte rule out nearly every pair without memcmp. */
    for (size_t i = 1; i < n; i++)
      for (size_t j = 0; j < i; j++)
        if (l[i].name.n == l[j].name.n && l[i].name.p[0] == l[j].name.p[0] &&
            memcmp(l[i].name.p, l[j].name.p, l[i].name.n) == 0)
          return (long)i;
    return -1;
  }
  enum { SLOTS = 2 * MG_PARSE_MAX_LABELS }; /* load factor <= 1/2 */
  uint16_t slot[SLOTS];                     /* label index + 1; 0 = empty */
  memset(slot, 0, sizeof slot);
  for (size_t i = 0; i < n; i++) {
    size_t h = (size_t)mg_hash64(l[i].name.p, l[i].name.n, 0) & (SLOTS - 1);
    while (slot[h]) {
      if (mg_str_eq(l[slot[h] - 1].name, l[i].name)) return (long)i;
      h = (h + 1) & (SLOTS - 1);
    }
    slot[h] = (uint16_t)(i + 1);
  }
  return -1;
}

/* ls0 is where the sample's line starts: a text-format label value may
 * have carried the parse onto later lines, so find the line of `at` again. */
static int fail_in_sample(pstate_t *st, const mg_parse_sample_t *s, const char *ls0, const char *at,
                          const char *msg) {
  uint32_t line = s->line;
  for (const char *q = ls0; q < at; q++)
    if (*q == '\n') {
      ls0 = q + 1;
      if (line < UINT32_MAX) line++;
    }
  return fail_at(st, line, ls0, at, msg);
}

static int emit_sample(pstate_t *st, const mg_parse_sample_t *s, const char *ls0) {
  /* Names in strictly rising order cannot repeat. */
  if (s->nlabels > 1 && !s->sorted) {
    long d = find_duplicate(st->labels, s->nlabels);
    if (d >= 0) return fail_in_sample(st, s, ls0, st->labels[d].name.p, "duplicate label name");
  }
  if (st->cb && st->cb->on_sample) return st->cb->on_sample(st->ud, s);
  return 0;
}

static int emit_meta(pstate_t *st, mg_meta_kind_t kind, mg_str_t family, mg_str_t text, mg_metric_kind_t type) {
  if (!st->cb || !st->cb->on_meta) return 0;
  mg_parse_meta_t m = {.kind = kind, .family = family, .text = text, .type = type, .line = st->line};
  return st->cb->on_meta(st->ud, &m);
}

/* ---- Prometheus text format 0.0.4 ---------------------------------------- */

static bool text_type(mg_str_t t, mg_metric_kind_t *k) {
  if (mg_str_eq_c(t, "counter")) *k = MG_MTYPE_COUNTER;
  else if (mg_str_eq_c(t, "gauge")) *k = MG_MTYPE_GAUGE;
  else if (mg_str_eq_c(t, "histogram")) *k = MG_MTYPE_HISTOGRAM;
  else if (mg_str_eq_c(t, "summary")) *k = MG_MTYPE_SUMMARY;
  else if (mg_str_eq_c(t, "untyped")) *k = MG_MTYPE_UNKNOWN;
  else return false;
  return true;
}

/* p is at '#'. "#[ \t]+(HELP|TYPE)[ \t]+name text" is metadata; any other
 * comment is skipped. On return *pp is past the line. */
static int text_comment(pstate_t *st, const char **pp) {
  const char *p = *pp, *end = st->end;
  const char *eol = memchr(p, '\n', (size_t)(end - p));
  if (!eol) eol = end;
  const char *q = p + 1;
  if (q < eol && (*q == ' ' || *q == '\t')) {
    q = skip_blank(q, eol);
    mg_meta_kind_t kind = MG_META_HELP;
    bool meta = false;
    if (eol - q > 4 && (q[4] == ' ' || q[4] == '\t')) {
      if (memcmp(q, "HELP", 4) == 0) {
        kind = MG_META_HELP;
        meta = true;
      } else if (memcmp(q, "TYPE", 4) == 0) {
        kind = MG_META_TYPE;
        meta = true;
      }
    }
    if (meta) {
      q = skip_blank(q + 4, eol);
      if (q >= eol || !(CL(q) & C_MSTART))
        return fail(st, q, kind == MG_META_HELP ? "expected metric name after HELP" : "expected metric name after TYPE");
      const char *name = q++;
      while (q < eol && (CL(q) & C_MCHAR)) q++;
      mg_str_t family = mg_str_n(name, (size_t)(q - name));
      /* What Prometheus' lexer does: the rest of the line minus its first
       * byte (the separator) is the text, and a rest made only of blanks is
       * no text at all. */
      mg_str_t text = mg_str_n(eol, 0);
      if (skip_blank(q, eol) < eol) text = mg_str_n(q + 1, (size_t)(eol - q - 1));
      int rc;
      if (kind == MG_META_TYPE) {
        mg_metric_kind_t type;
        if (!text_type(text, &type)) return fail(st, bad_token_at(text.p, text.n), "invalid metric type");
        rc = emit_meta(st, kind, family, mg_str_n(text.p, 0), type);
      } else {
        size_t bad = utf8_check(text.p, text.n);
        if (bad < text.n) return fail(st, text.p + bad, "invalid UTF-8 in HELP text");
        rc = emit_meta(st, kind, family, text, MG_MTYPE_UNKNOWN);
      }
      if (rc) return rc;
    }
  }
  *pp = eol < end ? eol + 1 : end;
  if (eol < end) next_line(st, eol + 1);
  return 0;
}

/* p is at the first byte of a sample line (after leading blanks). */
static int text_sample(pstate_t *st, const char **pp) {
  const char *p = *pp, *end = st->end, *ls0 = st->ls;
  mg_parse_sample_t s;
  if (!(CL(p) & C_MSTART)) return fail(st, p, "invalid metric name");
  const char *name = p++;
  p = scan_name(p, end, true);
  s.name = mg_str_n(name, (size_t)(p - name));
  s.series = s.name;
  s.labels = st->labels;
  s.nlabels = 0;
  s.sorted = true;
  s.line = st->line;
  if (p < end && *p != '{') p = skip_blank(p, end);
  if (p < end && *p == '{') {
    int rc = parse_labels(st, &p, false, st->labels, &s.nlabels, &s.sorted);
    if (rc) return rc;
    s.series.n = (size_t)(p - name);
    p = skip_blank(p, end);
  }
  const char *v = p;
  while (p < end && !(CL(p) & C_TVEND)) p++;
  if (p == v) return fail(st, p, "expected value after metric");
  if (mg_parse_float(v, (size_t)(p - v), &s.value)) return fail(st, bad_token_at(v, (size_t)(p - v)), "invalid float value");
  p = skip_blank(p, end);
  s.has_timestamp = false;
  s.timestamp_ms = 0;
  if (p < end && *p != '\n') {
    /* Prometheus' lexer takes only [0-9]+ here: no sign. */
    if (!(CL(p) & C_DIGIT)) return fail(st, p, "expected timestamp or newline after value");
    const char *t = p;
    uint64_t ts = 0;
    for (; p < end && (CL(p) & C_DIGIT); p++) {
      unsigned d = (unsigned)(*p - '0');
      if (ts > ((uint64_t)INT64_MAX - d) / 10) return fail(st, t, "timestamp out of range");
      ts = ts * 10 + d;
    }
    s.has_timestamp = true;
    s.timestamp_ms = (int64_t)ts;
    p = skip_blank(p, end);
    if (p < end && *p != '\n') return fail(st, p, "unexpected text after timestamp");
  }
  int rc = emit_sample(st, &s, ls0);
  if (rc) return rc;
  if (p < end) {
    p++;
    next_line(st, p);
  }
  *pp = p;
  return 0;
}

static int parse_text(pstate_t *st, const char *p) {
  const char *end = st->end;
  while (p < end) {
    st->ls = p;
    p = skip_blank(p, end);
    if (p == end) break;
    int rc;
    if (*p == '\n') {
      p++;
      next_line(st, p);
      continue;
    }
    if (*p == '#')
      rc = text_comment(st, &p);
    else
      rc = text_sample(st, &p);
    if (rc) return rc;
  }
  return 0;
}

/* ---- OpenMetrics 1.0 ----------------------------------------------------- */

static bool om_type(mg_str_t t, mg_metric_kind_t *k) {
  if (mg_str_eq_c(t, "counter")) *k = MG_MTYPE_COUNTER;
  else if (mg_str_eq_c(t, "gauge")) *k = MG_MTYPE_GAUGE;
  else if (mg_str_eq_c(t, "histogram")) *k = MG_MTYPE_HISTOGRAM;
  else if (mg_str_eq_c(t, "gaugehistogram")) *k = MG_MTYPE_GAUGEHISTOGRAM;
  else if (mg_str_eq_c(t, "summary")) *k = MG_MTYPE_SUMMARY;
  else if (mg_str_eq_c(t, "info")) *k = MG_MTYPE_INFO;
  else if (mg_str_eq_c(t, "stateset")) *k = MG_MTYPE_STATESET;
  else if (mg_str_eq_c(t, "unknown")) *k = MG_MTYPE_UNKNOWN;
  else return false;
  return true;
}

static const char MSG_NO_EOF[] = "missing # EOF";

/* p is at '#'. Only "# HELP", "# TYPE", "# UNIT" and "# EOF" exist in
 * OpenMetrics, each with single spaces. Sets *eof at a valid "# EOF". */
static int om_comment(pstate_t *st, const char **pp, bool *eof) {
  const char *p = *pp, *end = st->end;
  if (end - p < 2 || p[1] != ' ') return fail(st, p, "expected '# HELP', '# TYPE', '# UNIT' or '# EOF'");
  const char *q = p + 2;
  size_t rem = (size_t)(end - q);
  if (rem >= 3 && memcmp(q, "EOF", 3) == 0) {
    q += 3;
    if (q < end && *q == '\n') {
      q++;
      next_line(st, q);
    }
    if (q != end) return fail(st, q, "unexpected data after # EOF");
    *eof = true;
    return 0;
  }
  mg_meta_kind_t kind;
  const char *noname;
  if (rem >= 5 && q[4] == ' ' && memcmp(q, "HELP", 4) == 0) {
    kind = MG_META_HELP;
    noname = "expected metric name after HELP";
  } else if (rem >= 5 && q[4] == ' ' && memcmp(q, "TYPE", 4) == 0) {
    kind = MG_META_TYPE;
    noname = "expected metric name after TYPE";
  } else if (rem >= 5 && q[4] == ' ' && memcmp(q, "UNIT", 4) == 0) {
    kind = MG_META_UNIT;
    noname = "expected metric name after UNIT";
  } else {
    return fail(st, q, "expected HELP, TYPE, UNIT or EOF after '# '");
  }
  q += 5;
  if (q >= end || !(CL(q) & C_MSTART)) return fail(st, q, noname);
  const char *name = q++;
  while (q < end && (CL(q) & C_MCHAR)) q++;
  mg_str_t family = mg_str_n(name, (size_t)(q - name));
  if (q >= end) return fail(st, q, MSG_NO_EOF);
  if (*q != ' ') return fail(st, q, "expected ' ' after metric name");
  q++;
  const char *eol = memchr(q, '\n', (size_t)(end - q));
  if (!eol) return fail(st, end, MSG_NO_EOF);
  mg_str_t text = mg_str_n(q, (size_t)(eol - q));
  int rc = 0;
  switch (kind) {
  case MG_META_TYPE: {
    mg_metric_kind_t type;
    if (!om_type(text, &type)) return fail(st, bad_token_at(text.p, text.n), "invalid metric type");
    rc = emit_meta(st, kind, family, mg_str_n(text.p, 0), type);
    break;
  }
  case MG_META_HELP: {
    size_t bad = utf8_check(text.p, text.n);
    if (bad < text.n) return fail(st, text.p + bad, "invalid UTF-8 in HELP text");
    rc = emit_meta(st, kind, family, text, MG_MTYPE_UNKNOWN);
    break;
  }
  case MG_META_UNIT:
    /* A non-empty unit must be the family name's "_<unit>" suffix. */
    if (text.n && (family.n < text.n + 1 || memcmp(family.p + family.n - text.n, text.p, text.n) != 0 ||
                   family.p[family.n - text.n - 1] != '_'))
      return fail(st, bad_token_at(text.p, text.n), "unit is not a suffix of the metric name");
    rc = emit_meta(st, kind, family, text, MG_MTYPE_UNKNOWN);
    break;
  }
  if (rc) return rc;
  *pp = eol + 1;
  next_line(st, eol + 1);
  return 0;
}

/* A token of an OpenMetrics sample line: bytes up to ' ' or '\n'. */
static const char *om_token_end(const char *p, const char *end) {
  while (p < end && *p != ' ' && *p != '\n') p++;
  return p;
}

/* OpenMetrics timestamps are float seconds; Prometheus keeps
 * int64(seconds * 1000), truncating toward zero, and refuses NaN/Inf. */
static int om_timestamp(const char *t, size_t n, int64_t *ms) {
  double sec;
  if (mg_parse_float(t, n, &sec) || !isfinite(sec)) return MG_EPARSE;
  double m = sec * 1000.0;
  /* Outside int64 the Go conversion is undefined; refuse it. */
  if (!(m >= -9223372036854775808.0 && m < 9223372036854775808.0)) return MG_EPARSE;
  *ms = (int64_t)m;
  return 0;
}

/* p is at '#' of " # {labels} value [timestamp]" after a sample. Validates
 * the exemplar and leaves *pp at the newline. */
static int om_exemplar(pstate_t *st, const char **pp) {
  const char *p = *pp + 2, *end = st->end; /* at '{' (checked by caller) */
  int rc = parse_labels(st, &p, true, NULL, NULL, NULL);
  if (rc) return rc;
  if (p >= end) return fail(st, p, MSG_NO_EOF);
  if (*p != ' ') return fail(st, p, "expected value after exemplar labels");
  const char *v = ++p;
  p = om_token_end(p, end);
  double val;
  if (p == v) return fail(st, p, "expected value after exemplar labels");
  if (mg_parse_float(v, (size_t)(p - v), &val)) return fail(st, bad_token_at(v, (size_t)(p - v)), "invalid exemplar value");
  if (p < end && *p == ' ') {
    const char *t = ++p;
    int64_t ms;
    p = om_token_end(p, end);
    if (p == t) return fail(st, p, "expected timestamp or newline after exemplar value");
    if (om_timestamp(t, (size_t)(p - t), &ms)) return fail(st, bad_token_at(t, (size_t)(p - t)), "invalid exemplar timestamp");
  }
  if (p >= end) return fail(st, p, MSG_NO_EOF);
  if (*p != '\n') return fail(st, p, "expected newline after exemplar");
  *pp = p;
  return 0;
}

static bool at_exemplar(const char *p, const char *end) {
  return end - p >= 3 && p[0] == '#' && p[1] == ' ' && p[2] == '{';
}

static int om_sample(pstate_t *st, const char **pp) {
  const char *p = *pp, *end = st->end;
  mg_parse_sample_t s;
  if (*p == '\n') return fail(st, p, "empty line (not allowed in OpenMetrics)");
  if (!(CL(p) & C_MSTART)) return fail(st, p, "invalid metric name");
  const char *name = p++;
  p = scan_name(p, end, true);
  s.name = mg_str_n(name, (size_t)(p - name));
  s.series = s.name;
  s.labels = st->labels;
  s.nlabels = 0;
  s.sorted = true;
  s.line = st->line;
  if (p < end && *p == '{') {
    int rc = parse_labels(st, &p, true, st->labels, &s.nlabels, &s.sorted);
    if (rc) return rc;
    s.series.n = (size_t)(p - name);
  }
  if (p >= end || *p != ' ') return fail(st, p, "expected value after metric");
  const char *v = ++p;
  p = om_token_end(p, end);
  if (p == v) return fail(st, p, "expected value after metric");
  if (mg_parse_float(v, (size_t)(p - v), &s.value)) return fail(st, bad_token_at(v, (size_t)(p - v)), "invalid float value");
  s.has_timestamp = false;
  s.timestamp_ms = 0;
  if (p < end && *p == ' ') {
    p++;
    if (!at_exemplar(p, end)) {
      const char *t = p;
      p = om_token_end(p, end);
      if (p == t) return fail(st, p, "expected timestamp or exemplar after value");
      if (om_timestamp(t, (size_t)(p - t), &s.timestamp_ms)) return fail(st, bad_token_at(t, (size_t)(p - t)), "invalid timestamp");
      s.has_timestamp = true;
      if (p < end && *p == ' ') {
        p++;
        if (!at_exemplar(p, end)) return fail(st, p, "expected exemplar or newline after timestamp");
      }
    }
    if (p < end && *p == '#') {
      int rc = om_exemplar(st, &p);
      if (rc) return rc;
    }
  }
  if (p >= end) return fail(st, p, MSG_NO_EOF);
  int rc = emit_sample(st, &s, st->ls);
  if (rc) return rc;
  p++; /* '\n': every stop above is ' ', '\n' or the end */
  next_line(st, p);
  *pp = p;
  return 0;
}

static int parse_om(pstate_t *st, const char *p) {
  for (;;) {
    st->ls = p;
    if (p >= st->end) return fail(st, p, MSG_NO_EOF);
    int rc;
    bool eof = false;
    if (*p == '#')
      rc = om_comment(st, &p, &eof);
    else
      rc = om_sample(st, &p);
    if (rc) return rc;
    if (eof) return 0;
  }
}

/* ---- public ---------------------------------------------------------------- */

int mg_parse(const char *body, size_t len, mg_parse_format_t fmt, const mg_parse_callbacks_t *cb, void *ud,
             mg_parse_error_t *err) {
  mg_parse_error_t dummy;
  pstate_t st; /* the label array is written before it is read: no memset */
  if (!err) err = &dummy;
  err->line = 0;
  err->column = 0;
  err->msg = NULL;
  if (!body) {
    if (len) {
      err->msg = "NULL body";
      return MG_EINVAL;
    }
    body = "";
  }
  st.end = body + len;
  st.ls = body;
  st.line = 1;
  st.cb = cb;
  st.ud = ud;
  st.err = err;
  return fmt == MG_FMT_OPENMETRICS ? parse_om(&st, body) : parse_text(&st, body);
}

mg_parse_format_t mg_parse_format_from_content_type(const char *ct, size_t n) {
  if (!ct) return MG_FMT_PROM_TEXT;
  const char *p = skip_blank(ct, ct + n), *end = ct + n;
  const char *q = p;
  /* The media type runs to ';' or blanks; it compares case-insensitively. */
  while (q < end && *q != ';' && *q != ' ' && *q != '\t') q++;
  if (eq_nocase(p, (size_t)(q - p), "application/openmetrics-text")) return MG_FMT_OPENMETRICS;
  return MG_FMT_PROM_TEXT;
}

/* One unescaper for both rule sets: a backslash followed by one of the
 * listed bytes is replaced, any other byte after a backslash is kept as is
 * together with the backslash (Go's strings.Replacer semantics). */
static size_t unescape(mg_str_t raw, char *out, bool quote) {
  size_t w = 0;
  for (size_t i = 0; i < raw.n; i++) {
    char c = raw.p[i];
    if (c == '\\' && i + 1 < raw.n) {
      char e = raw.p[i + 1];
      if (e == '\\' || e == 'n' || (quote && e == '"')) {
        out[w++] = e == 'n' ? '\n' : e;
        i++;
        continue;
      }
    }
    out[w++] = c;
  }
  return w;
}

size_t mg_parse_unescape(mg_str_t raw, char *out) { return unescape(raw, out, true); }

size_t mg_parse_unescape_help(mg_str_t raw, mg_parse_format_t fmt, char *out) {
  /* Text format HELP knows only \\ and \n; OpenMetrics uses the label rules. */
  return unescape(raw, out, fmt == MG_FMT_OPENMETRICS);
}

bool mg_parse_valid_metric_name(mg_str_t s) {
  if (s.n == 0 || !(CL(s.p) & C_MSTART)) return false;
  for (size_t i = 1; i < s.n; i++)
    if (!(CL(s.p + i) & C_MCHAR)) return false;
  return true;
}

bool mg_parse_valid_label_name(mg_str_t s) {
  if (s.n == 0 || !(CL(s.p) & C_LSTART)) return false;
  for (size_t i = 1; i < s.n; i++)
    if (!(CL(s.p + i) & C_LCHAR)) return false;
  return true;
}
