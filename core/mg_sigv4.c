/* mg_sigv4: SigV4 header signing. The canonical request is streamed into
 * SHA-256 (and into the debug buffer when asked), never built; the heap is
 * used only for a query and long header/segment lists. Derived keys and
 * "AWS4"+secret are wiped before return; the secret is never kept or logged. */
#include "mg_sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "mg_err.h"
#include "mg_mem.h"
#include "mg_str.h"

#define ALGORITHM "AWS4-HMAC-SHA256"
#define AKID_MAX 128 /* IAM's documented maximum access key id length */
#define SCOPE_PART_MAX 63
#define SECRET_MAX 256
#define TOKEN_SHOWN "<session token>"
/* 9999-12-31T23:59:59Z: x-amz-date has a four-digit year. */
#define UNIX_TIME_MAX INT64_C(253402300799)
/* Arbitrary: seeds the secret fingerprint so it is not a plain XXH3. */
#define SECRET_FP_SEED UINT64_C(0x6d6f6f6e67617465)

static const char hex_upper[] = "0123456789ABCDEF"; /* percent-encoding */
static const char hex_lower[] = "0123456789abcdef"; /* hashes, signature */

/* ---- character classes ---------------------------------------------------- */

static bool is_unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '~';
}

/* RFC 9110 tchar: what a method or header name may contain. */
static bool is_tchar(unsigned char c) {
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) return true;
  return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_token(const char *s) {
  if (!s || !*s) return false;
  for (; *s; s++)
    if (!is_tchar((unsigned char)*s)) return false;
  return true;
}

/* Scope parts end up between '/' in Credential=: keep them to a safe set. */
static bool is_scope_part(const char *s, size_t max) {
  if (!s || !*s) return false;
  size_t n = 0;
  for (; s[n]; n++) {
    unsigned char c = (unsigned char)s[n];
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.';
    if (!ok || n >= max) return false;
  }
  return true;
}

static bool is_visible_ascii(const char *s, size_t max) {
  size_t n = 0;
  for (; s[n]; n++)
    if ((unsigned char)s[n] < 0x21 || (unsigned char)s[n] > 0x7e || n >= max) return false;
  return n > 0;
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static unsigned char lower(unsigned char c) {
  return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static bool is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

/* Header names compare case-insensitively, byte-wise on the lower case. */
static int name_cmp(const char *a, const char *b) {
  const unsigned char *p = (const unsigned char *)a, *q = (const unsigned char *)b;
  for (; *p && lower(*p) == lower(*q); p++, q++) {
  }
  return lower(*p) == lower(*q) ? 0 : lower(*p) < lower(*q) ? -1 : 1;
}

static void to_hex(char *dst, const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    dst[2 * i] = hex_lower[p[i] >> 4];
    dst[2 * i + 1] = hex_lower[p[i] & 15];
  }
  dst[2 * n] = '\0';
}

/* ---- the canonical-request stream ---------------------------------------- */

/* Bytes are staged, then fed to SHA-256 and (when set) to debug. The first
 * error sticks in rc; emit_canonical_request returns it. */
typedef struct emit {
  EVP_MD_CTX *md;
  mg_buf_t *debug;
  int rc;
  size_t n;
  unsigned char stage[512];
} emit_t;

static void emit_flush(emit_t *e) {
  if (e->n && e->rc == 0) {
    /* EVP_DigestUpdate on SHA-256 fails only on allocation inside
     * OpenSSL; report it as such. */
    if (EVP_DigestUpdate(e->md, e->stage, e->n) != 1) e->rc = MG_ENOMEM;
    else if (e->debug) e->rc = mg_buf_append(e->debug, e->stage, e->n);
  }
  e->n = 0;
}

static void emit_byte(emit_t *e, unsigned char c) {
  if (e->n == sizeof e->stage) emit_flush(e);
  e->stage[e->n++] = c;
}

static void emit_bytes(emit_t *e, const void *p, size_t n) {
  const unsigned char *s = p;
  while (n) {
    if (e->n == sizeof e->stage) emit_flush(e);
    size_t k = sizeof e->stage - e->n;
    if (k > n) k = n;
    memcpy(e->stage + e->n, s, k);
    e->n += k;
    s += k;
    n -= k;
  }
}

static void emit_str(emit_t *e, const char *s) { emit_bytes(e, s, strlen(s)); }

static void emit_pct(emit_t *e, unsigned char c) {
  emit_byte(e, '%');
  emit_byte(e, (unsigned char)hex_upper[c >> 4]);
  emit_byte(e, (unsigned char)hex_upper[c & 15]);
}

/* RFC 3986 percent-encoding as SigV4 wants it: unreserved bytes as is,
 * everything else (including '%') as %XX, upper-case hex. */
static void emit_encoded(emit_t *e, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (is_unreserved(c)) emit_byte(e, c);
    else emit_pct(e, c);
  }
}

/* ---- canonical URI ---------------------------------------------------------- */

/* Normalisation as AWS's own signers do it for non-S3 services (and as the
 * published suite expects): drop empty and "." segments, ".." removes the
 * previous kept segment (never above the root), one leading '/', a trailing
 * '/' only if the path had one. Unlike RFC 3986 section 5.2.4, "/a/b/.."
 * gives "/a", not "/a/". Segments are then encoded as given: the path is
 * already encoded for the wire, so this is the "encode twice" of the spec. */
static int emit_canonical_uri(emit_t *e, const char *path) {
  size_t len = path ? strlen(path) : 0;
  size_t nseg = 1;
  for (size_t i = 0; i < len; i++) nseg += path[i] == '/';
  mg_str_t small[16];
  mg_str_t *keep = small;
  if (nseg > sizeof small / sizeof small[0]) {
    keep = mg_mallocarray(nseg, sizeof *keep);
    if (!keep) return MG_ENOMEM;
  }
  size_t nkeep = 0;
  for (size_t i = 0; i <= len;) {
    size_t j = i;
    while (j < len && path[j] != '/') j++;
    size_t n = j - i;
    if (n == 2 && path[i] == '.' && path[i + 1] == '.') {
      if (nkeep) nkeep--;
    } else if (n != 0 && !(n == 1 && path[i] == '.')) {
      keep[nkeep++] = mg_str_n(path + i, n);
    }
    i = j + 1;
  }
  bool trailing = len > 0 && path[len - 1] == '/';
  emit_byte(e, '/');
  for (size_t k = 0; k < nkeep; k++) {
    emit_encoded(e, keep[k].p, keep[k].n);
    if (k + 1 < nkeep || trailing) emit_byte(e, '/');
  }
  if (keep != small) mg_free(keep);
  return 0;
}

/* ---- canonical query -------------------------------------------------------- */

typedef struct qparam {
  mg_str_t name, value; /* canonical (re-encoded) forms */
} qparam_t;

/* Decode %XX (a '%' without two hex digits stays literal, '+' is a plus:
 * RFC 3986 has no '+' for space) and re-encode into b. */
static void recode(mg_buf_t *b, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    int hi, lo;
    if (c == '%' && i + 2 < n && (hi = hexval((unsigned char)p[i + 1])) >= 0 &&
        (lo = hexval((unsigned char)p[i + 2])) >= 0) {
      c = (unsigned char)(hi << 4 | lo);
      i += 2;
    }
    if (is_unreserved(c)) {
      b->data[b->len++] = (char)c;
    } else {
      b->data[b->len++] = '%';
      b->data[b->len++] = hex_upper[c >> 4];
      b->data[b->len++] = hex_upper[c & 15];
    }
  }
}

static int qparam_cmp(const void *a, const void *b) {
  const qparam_t *x = a, *y = b;
  int c = mg_str_cmp(x->name, y->name);
  return c ? c : mg_str_cmp(x->value, y->value);
}

static int emit_canonical_query(emit_t *e, const char *query) {
  size_t len = query ? strlen(query) : 0;
  if (len == 0) return 0;
  size_t np = 1;
  for (size_t i = 0; i < len; i++) np += query[i] == '&';
  if (len > SIZE_MAX / 3) return MG_ETOOBIG;
  mg_buf_t enc;
  mg_buf_init(&enc, 0);
  qparam_t *ps = mg_mallocarray(np, sizeof *ps);
  /* Re-encoding grows a byte to at most three, so one reservation makes
   * every write below in bounds and keeps enc.data from moving. */
  int rc = ps ? mg_buf_reserve(&enc, 3 * len) : MG_ENOMEM;
  if (rc) {
    mg_free(ps);
    mg_buf_cleanup(&enc);
    return rc;
  }
  size_t n = 0;
  for (size_t i = 0; i <= len;) {
    size_t j = i;
    while (j < len && query[j] != '&') j++;
    if (j > i) {
      size_t eq = i;
      while (eq < j && query[eq] != '=') eq++;
      size_t at = enc.len;
      recode(&enc, query + i, eq - i);
      ps[n].name = mg_str_n(enc.data + at, enc.len - at);
      at = enc.len;
      if (eq < j) recode(&enc, query + eq + 1, j - eq - 1);
      ps[n].value = mg_str_n(enc.data + at, enc.len - at);
      n++;
    }
    i = j + 1;
  }
  qsort(ps, n, sizeof *ps, qparam_cmp);
  for (size_t k = 0; k < n; k++) {
    if (k) emit_byte(e, '&');
    emit_bytes(e, ps[k].name.p, ps[k].name.n);
    emit_byte(e, '=');
    emit_bytes(e, ps[k].value.p, ps[k].value.n);
  }
  emit_flush(e); /* ps points into enc: hash it before freeing */
  mg_free(ps);
  mg_buf_cleanup(&enc);
  return 0;
}

/* ---- canonical headers ------------------------------------------------------ */

typedef struct hdr {
  const char *name, *value;
  size_t order; /* keeps repeated names in the order given (qsort is unstable) */
  bool hidden;  /* a session token, ours or the caller's: not shown in debug */
} hdr_t;

static int hdr_cmp(const void *a, const void *b) {
  const hdr_t *x = a, *y = b;
  int c = name_cmp(x->name, y->name);
  if (c) return c;
  return x->order < y->order ? -1 : x->order > y->order;
}

/* Trimall: no leading or trailing whitespace, inner runs become one space.
 * Line breaks count as whitespace so an obs-folded value signs as one line. */
static void emit_trimmed(emit_t *e, const char *v) {
  const unsigned char *p = (const unsigned char *)v;
  while (is_ws(*p)) p++;
  while (*p) {
    if (is_ws(*p)) {
      while (is_ws(*p)) p++;
      if (*p) emit_byte(e, ' ');
    } else {
      emit_byte(e, *p++);
    }
  }
}

/* A session token: hashed like any value, shown in debug as a placeholder. */
static void emit_hidden(emit_t *e, const char *v) {
  emit_flush(e);
  mg_buf_t *debug = e->debug;
  e->debug = NULL;
  emit_trimmed(e, v);
  emit_flush(e);
  e->debug = debug;
  if (e->rc == 0 && debug) e->rc = mg_buf_append_str(debug, TOKEN_SHOWN);
}

/* ---- Authorization text ----------------------------------------------------- */

typedef struct text {
  char *p;
  size_t len, cap;
  bool overflow;
} text_t;

static void text_add(text_t *t, const char *s, size_t n) {
  if (t->overflow || n >= t->cap - t->len) {
    t->overflow = true;
    return;
  }
  memcpy(t->p + t->len, s, n);
  t->len += n;
  t->p[t->len] = '\0';
}

static void text_str(text_t *t, const char *s) { text_add(t, s, strlen(s)); }

static void text_lower(text_t *t, const char *s) {
  for (; *s; s++) {
    char c = (char)lower((unsigned char)*s);
    text_add(t, &c, 1);
  }
}

/* ---- time and keys ---------------------------------------------------------- */

/* Days since 1970-01-01 to a proleptic Gregorian date, using 400-year eras
 * that start on March 1st so leap days fall at the end of a year. */
static void civil_from_days(int64_t days, int *y, int *m, int *d) {
  int64_t z = days + 719468; /* days from 0000-03-01 to 1970-01-01 */
  int64_t era = z / 146097;  /* z >= 0 here: unix_time is never negative */
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = (int)(yoe + era * 400 + (*m <= 2));
}

static void put_digits(char *dst, int v, int width) {
  for (int i = width - 1; i >= 0; i--) {
    dst[i] = (char)('0' + v % 10);
    v /= 10;
  }
}

static void format_amz_date(int64_t t, char out[17]) {
  int y, mo, d;
  civil_from_days(t / 86400, &y, &mo, &d);
  int sod = (int)(t % 86400);
  put_digits(out, y, 4);
  put_digits(out + 4, mo, 2);
  put_digits(out + 6, d, 2);
  out[8] = 'T';
  put_digits(out + 9, sod / 3600, 2);
  put_digits(out + 11, sod / 60 % 60, 2);
  put_digits(out + 13, sod % 60, 2);
  out[15] = 'Z';
  out[16] = '\0';
}

static int hmac(const unsigned char *key, size_t klen, const void *msg, size_t mlen,
                unsigned char out[32]) {
  unsigned int olen = 0;
  /* HMAC-SHA256 fails only when OpenSSL cannot allocate its context. */
  if (!HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &olen) || olen != 32) return MG_ENOMEM;
  return 0;
}

/* kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service),
 * "aws4_request"). Every intermediate is wiped. */
static int derive_key(const char *secret, const char *date, const char *region,
                      const char *service, unsigned char out[32]) {
  unsigned char ksecret[4 + SECRET_MAX], k1[32], k2[32], k3[32];
  size_t slen = strlen(secret);
  memcpy(ksecret, "AWS4", 4);
  memcpy(ksecret + 4, secret, slen);
  int rc = hmac(ksecret, 4 + slen, date, 8, k1);
  if (!rc) rc = hmac(k1, 32, region, strlen(region), k2);
  if (!rc) rc = hmac(k2, 32, service, strlen(service), k3);
  if (!rc) rc = hmac(k3, 32, "aws4_request", 12, out);
  mg_mem_wipe(ksecret, sizeof ksecret);
  mg_mem_wipe(k1, sizeof k1);
  mg_mem_wipe(k2, sizeof k2);
  mg_mem_wipe(k3, sizeof k3);
  return rc;
}

void mg_sigv4_key_cache_init(mg_sigv4_key_cache_t *c) { memset(c, 0, sizeof *c); }

void mg_sigv4_key_cache_cleanup(mg_sigv4_key_cache_t *c) {
  if (c) mg_mem_wipe(c, sizeof *c);
}

static int signing_key(mg_sigv4_key_cache_t *c, const mg_sigv4_creds_t *cr, const char *date,
                       const char *region, const char *service, unsigned char out[32]) {
  if (!c) return derive_key(cr->secret_access_key, date, region, service, out);
  uint64_t fp = mg_hash64(cr->secret_access_key, strlen(cr->secret_access_key), SECRET_FP_SEED);
  if (c->valid && c->secret_fp == fp && memcmp(c->date, date, 8) == 0 &&
      strcmp(c->access_key_id, cr->access_key_id) == 0 && strcmp(c->region, region) == 0 &&
      strcmp(c->service, service) == 0) {
    c->hits++;
    memcpy(out, c->key, 32);
    return 0;
  }
  c->misses++;
  mg_mem_wipe(c->key, sizeof c->key);
  c->valid = 0;
  int rc = derive_key(cr->secret_access_key, date, region, service, out);
  if (rc) return rc;
  /* Lengths were checked against these fields before we got here. */
  memcpy(c->key, out, 32);
  c->secret_fp = fp;
  memcpy(c->date, date, 8);
  c->date[8] = '\0';
  strcpy(c->access_key_id, cr->access_key_id);
  strcpy(c->region, region);
  strcpy(c->service, service);
  c->valid = 1;
  return 0;
}

/* ---- signing ------------------------------------------------------------------ */

static int check_request(const mg_sigv4_request_t *req, const mg_sigv4_creds_t *cr, int flags,
                         bool *has_token) {
  if (!req || !cr || !is_token(req->method)) return MG_EINVAL;
  if (!is_scope_part(req->region, SCOPE_PART_MAX) || !is_scope_part(req->service, SCOPE_PART_MAX))
    return MG_EINVAL;
  if (!is_scope_part(cr->access_key_id, AKID_MAX)) return MG_EINVAL;
  if (!cr->secret_access_key || !*cr->secret_access_key ||
      strlen(cr->secret_access_key) > SECRET_MAX)
    return MG_EINVAL;
  *has_token = cr->session_token && *cr->session_token;
  if (*has_token && !is_visible_ascii(cr->session_token, SIZE_MAX)) return MG_EINVAL;
  if (req->unix_time < 0 || req->unix_time > UNIX_TIME_MAX) return MG_EINVAL;
  if (req->payload_sha256_hex && !is_visible_ascii(req->payload_sha256_hex, 64)) return MG_EINVAL;
  if (!req->payload_sha256_hex && req->payload_len && !req->payload) return MG_EINVAL;
  if (req->nheaders && !req->headers) return MG_EINVAL;
  bool host = false;
  for (size_t i = 0; i < req->nheaders; i++) {
    const mg_sigv4_header_t *h = &req->headers[i];
    if (!is_token(h->name) || !h->value) return MG_EINVAL;
    if (name_cmp(h->name, "authorization") == 0 || name_cmp(h->name, "x-amz-date") == 0)
      return MG_EINVAL;
    if (*has_token && name_cmp(h->name, "x-amz-security-token") == 0) return MG_EINVAL;
    if ((flags & MG_SIGV4_ADD_CONTENT_SHA256) && name_cmp(h->name, "x-amz-content-sha256") == 0)
      return MG_EINVAL;
    host |= name_cmp(h->name, "host") == 0;
  }
  return host ? 0 : MG_EINVAL;
}

static int payload_hash(const mg_sigv4_request_t *req, char out[65]) {
  if (req->payload_sha256_hex) {
    strcpy(out, req->payload_sha256_hex);
    return 0;
  }
  unsigned char md[32];
  unsigned int mdlen = 0;
  static const char empty = 0;
  const void *p = req->payload ? req->payload : &empty;
  if (EVP_Digest(p, req->payload_len, md, &mdlen, EVP_sha256(), NULL) != 1) return MG_ENOMEM;
  to_hex(out, md, 32);
  return 0;
}

/* Canonical request into e. The signed-header list comes from the
 * Authorization text, where it was written once for both uses. */
static int emit_canonical_request(emit_t *e, const mg_sigv4_request_t *req, const hdr_t *hs,
                                  size_t nh, const char *signed_headers, size_t sh_len,
                                  const char *content_sha256) {
  emit_str(e, req->method);
  emit_byte(e, '\n');
  int rc = emit_canonical_uri(e, req->url_path);
  if (rc) return rc;
  emit_byte(e, '\n');
  rc = emit_canonical_query(e, req->query);
  if (rc) return rc;
  emit_byte(e, '\n');
  for (size_t i = 0; i < nh;) {
    for (const char *p = hs[i].name; *p; p++) emit_byte(e, lower((unsigned char)*p));
    emit_byte(e, ':');
    size_t j = i;
    for (; j < nh && name_cmp(hs[i].name, hs[j].name) == 0; j++) {
      if (j > i) emit_byte(e, ',');
      if (hs[j].hidden) emit_hidden(e, hs[j].value);
      else emit_trimmed(e, hs[j].value);
    }
    emit_byte(e, '\n');
    i = j;
  }
  emit_byte(e, '\n');
  emit_bytes(e, signed_headers, sh_len);
  emit_byte(e, '\n');
  emit_str(e, content_sha256);
  emit_flush(e);
  return e->rc;
}

static int sign(mg_sigv4_key_cache_t *cache, const mg_sigv4_request_t *req,
                const mg_sigv4_creds_t *cr, int flags, mg_sigv4_result_t *out, mg_buf_t *debug,
                bool has_token, hdr_t *hs) {
  char date[9];
  format_amz_date(req->unix_time, out->amz_date);
  memcpy(date, out->amz_date, 8);
  date[8] = '\0';
  int rc = payload_hash(req, out->content_sha256);
  if (rc) return rc;

  for (size_t i = 0; i < req->nheaders; i++) {
    const mg_sigv4_header_t *h = &req->headers[i];
    hs[i] = (hdr_t){h->name, h->value, i, name_cmp(h->name, "x-amz-security-token") == 0};
  }
  size_t n = req->nheaders;
  hs[n] = (hdr_t){"x-amz-date", out->amz_date, n, false};
  n++;
  if (flags & MG_SIGV4_ADD_CONTENT_SHA256) {
    hs[n] = (hdr_t){"x-amz-content-sha256", out->content_sha256, n, false};
    n++;
  }
  if (has_token) {
    hs[n] = (hdr_t){"x-amz-security-token", cr->session_token, n, true};
    n++;
  }
  qsort(hs, n, sizeof *hs, hdr_cmp);

  text_t auth = {out->authorization, 0, sizeof out->authorization, false};
  out->authorization[0] = '\0';
  text_str(&auth, ALGORITHM " Credential=");
  text_str(&auth, cr->access_key_id);
  text_str(&auth, "/");
  size_t scope_at = auth.len;
  text_str(&auth, date);
  text_str(&auth, "/");
  text_str(&auth, req->region);
  text_str(&auth, "/");
  text_str(&auth, req->service);
  text_str(&auth, "/aws4_request");
  size_t scope_len = auth.len - scope_at;
  text_str(&auth, ", SignedHeaders=");
  size_t sh_at = auth.len;
  for (size_t i = 0; i < n; i++) {
    if (i && name_cmp(hs[i - 1].name, hs[i].name) == 0) continue;
    if (i) text_str(&auth, ";");
    text_lower(&auth, hs[i].name);
  }
  size_t sh_len = auth.len - sh_at;
  if (auth.overflow) return MG_ETOOBIG;

  emit_t e = {.debug = debug};
  e.md = EVP_MD_CTX_new();
  if (!e.md || EVP_DigestInit_ex(e.md, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(e.md);
    return MG_ENOMEM;
  }
  rc = emit_canonical_request(&e, req, hs, n, out->authorization + sh_at, sh_len,
                              out->content_sha256);
  unsigned char md[32];
  unsigned int mdlen = 0;
  if (!rc && EVP_DigestFinal_ex(e.md, md, &mdlen) != 1) rc = MG_ENOMEM;
  EVP_MD_CTX_free(e.md);
  if (rc) return rc;

  /* String to sign: algorithm, time, scope, hash of the canonical request.
   * Bounded: 16 + 1 + 16 + 1 + scope (<= 8+1+63+1+63+13) + 1 + 64. */
  char sts[320], creq_hex[65];
  to_hex(creq_hex, md, 32);
  size_t sl = 0;
  memcpy(sts + sl, ALGORITHM "\n", sizeof ALGORITHM);
  sl += sizeof ALGORITHM;
  memcpy(sts + sl, out->amz_date, 16);
  sl += 16;
  sts[sl++] = '\n';
  memcpy(sts + sl, out->authorization + scope_at, scope_len);
  sl += scope_len;
  sts[sl++] = '\n';
  memcpy(sts + sl, creq_hex, 64);
  sl += 64;
  if (debug) {
    rc = mg_buf_append(debug, "\n\n", 2);
    if (!rc) rc = mg_buf_append(debug, sts, sl);
    if (rc) return rc;
  }

  unsigned char key[32], sig[32];
  rc = signing_key(cache, cr, date, req->region, req->service, key);
  if (!rc) rc = hmac(key, 32, sts, sl, sig);
  mg_mem_wipe(key, sizeof key);
  if (rc) return rc;
  char sig_hex[65];
  to_hex(sig_hex, sig, 32);
  text_str(&auth, ", Signature=");
  text_str(&auth, sig_hex);
  if (auth.overflow) return MG_ETOOBIG;

  out->add[out->nadd++] = (mg_sigv4_header_t){"Authorization", out->authorization};
  out->add[out->nadd++] = (mg_sigv4_header_t){"X-Amz-Date", out->amz_date};
  if (flags & MG_SIGV4_ADD_CONTENT_SHA256)
    out->add[out->nadd++] = (mg_sigv4_header_t){"X-Amz-Content-SHA256", out->content_sha256};
  if (has_token)
    out->add[out->nadd++] = (mg_sigv4_header_t){"X-Amz-Security-Token", cr->session_token};
  return 0;
}

int mg_sigv4_sign(mg_sigv4_key_cache_t *cache, const mg_sigv4_request_t *req,
                  const mg_sigv4_creds_t *creds, int flags, mg_sigv4_result_t *out,
                  mg_buf_t *debug) {
  if (!out) return MG_EINVAL;
  memset(out, 0, sizeof *out);
  bool has_token = false;
  int rc = check_request(req, creds, flags, &has_token);
  if (rc) return rc;
  /* Room for the caller's headers plus the three the signer may add. */
  hdr_t small[24];
  hdr_t *hs = small;
  size_t nh = req->nheaders + 3;
  if (nh < req->nheaders) return MG_ETOOBIG;
  if (nh > sizeof small / sizeof small[0]) {
    hs = mg_mallocarray(nh, sizeof *hs);
    if (!hs) return MG_ENOMEM;
  }
  rc = sign(cache, req, creds, flags, out, debug, has_token, hs);
  if (hs != small) mg_free(hs);
  if (rc) memset(out, 0, sizeof *out);
  return rc;
}
