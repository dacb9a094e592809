/* libFuzzer driver for mg_sigv4: bytes become a request (NUL-separated fields,
 * then header pairs), signed with and without the key cache. Aborts unless it
 * is deterministic, the debug text ignores secret and token, the canonical
 * request is well formed and hashed, and errors are the documented ones. */
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mg_buf.h"
#include "mg_err.h"
#include "mg_sigv4.h"

#define ENSURE(c)                                                                \
  do {                                                                           \
    if (!(c)) {                                                                  \
      fprintf(stderr, "fuzz_sigv4: invariant failed: %s (line %d)\n", #c, __LINE__); \
      abort();                                                                   \
    }                                                                            \
  } while (0)

enum { F_METHOD, F_PATH, F_QUERY, F_REGION, F_SERVICE, F_AKID, F_SECRET, F_TOKEN, F_PAYLOAD, F_N };
#define MAX_HEADERS 40

/* Control byte bits. */
enum {
  C_CONTENT_SHA = 1,
  C_TOKEN = 2,
  C_PRECOMPUTED = 4,
  C_NULL_QUERY = 8,
  C_NULL_PATH = 16,
  C_TIME_IN_RANGE = 32,
  C_ADD_HOST = 64,
};

static const char *or_default(const char *s, const char *def) { return *s ? s : def; }

static bool is_hex_lower(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
  return true;
}

static bool is_hex_upper(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); }

/* Only unreserved bytes, the `also` bytes and %XX with upper-case hex. */
static bool canonical_encoded(const char *s, size_t n, const char *also) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
        (c && (strchr("-_.~", c) || strchr(also, c))))
      continue;
    if (c != '%' || i + 2 >= n || !is_hex_upper(s[i + 1]) || !is_hex_upper(s[i + 2])) return false;
    i += 2;
  }
  return true;
}

/* Line idx of text (NUL-terminated), as pointer and length. */
static const char *line_at(const char *text, int idx, size_t *len) {
  const char *p = text;
  for (int i = 0; i < idx; i++) {
    p = strchr(p, '\n');
    if (!p) return NULL;
    p++;
  }
  *len = strcspn(p, "\n");
  return p;
}

static void check_result(const mg_sigv4_request_t *r, const mg_sigv4_creds_t *c, int flags,
                         const mg_sigv4_result_t *res, const mg_buf_t *d) {
  /* Authorization: fixed prefix, scope, signed headers, 64 hex digits. */
  char prefix[400];
  snprintf(prefix, sizeof prefix,
           "AWS4-HMAC-SHA256 Credential=%s/%.8s/%s/%s/aws4_request, SignedHeaders=",
           c->access_key_id, res->amz_date, r->region, r->service);
  size_t pl = strlen(prefix), al = strlen(res->authorization);
  ENSURE(strncmp(res->authorization, prefix, pl) == 0);
  const char *sig = strstr(res->authorization, ", Signature=");
  ENSURE(sig && al - (size_t)(sig + 12 - res->authorization) == 64 && is_hex_lower(sig + 12, 64));
  ENSURE(strlen(res->amz_date) == 16 && res->amz_date[8] == 'T' && res->amz_date[15] == 'Z');
  bool token = c->session_token && *c->session_token;
  ENSURE(res->nadd == 2 + !!(flags & MG_SIGV4_ADD_CONTENT_SHA256) + token);

  /* Canonical request: method, path, query, headers, blank, signed list, hash. */
  const char *creq_end = strstr(d->data, "\n\nAWS4-HMAC-SHA256\n");
  ENSURE(creq_end);
  size_t n;
  const char *l = line_at(d->data, 0, &n);
  ENSURE(l && n == strlen(r->method) && memcmp(l, r->method, n) == 0);
  l = line_at(d->data, 1, &n);
  ENSURE(l && n >= 1 && l[0] == '/' && canonical_encoded(l, n, "/"));
  /* Normalised: no empty (but a trailing one), "." or ".." segment. */
  for (size_t i = 1, j; i < n; i = j + 1) {
    for (j = i; j < n && l[j] != '/';) j++;
    ENSURE(j > i || j == n);
    ENSURE(!(j - i == 1 && l[i] == '.') && !(j - i == 2 && l[i] == '.' && l[i + 1] == '.'));
  }
  l = line_at(d->data, 2, &n);
  ENSURE(l && canonical_encoded(l, n, "&="));
  /* The signed-header list is the line before the payload hash and equals
   * the one in Authorization. */
  const char *sh = res->authorization + pl;
  size_t shl = (size_t)(sig - sh);
  const char *hash_line = creq_end;
  while (hash_line > d->data && hash_line[-1] != '\n') hash_line--;
  ENSURE(strncmp(hash_line, res->content_sha256, strlen(res->content_sha256)) == 0);
  const char *list_end = hash_line - 1, *list = list_end;
  while (list > d->data && list[-1] != '\n') list--;
  ENSURE((size_t)(list_end - list) == shl && memcmp(list, sh, shl) == 0);
  ENSURE(list >= d->data + 2 && list[-2] == '\n'); /* blank line before it */

  /* Without a token (ours or a caller's x-amz-security-token, both shown
   * redacted) the debug text is the real canonical request: its hash is
   * the string to sign's last line. */
  bool redacted = token;
  for (size_t i = 0; i < r->nheaders; i++)
    redacted |= strcasecmp(r->headers[i].name, "x-amz-security-token") == 0;
  if (!redacted) {
    unsigned char md[32];
    unsigned int mdl = 0;
    ENSURE(EVP_Digest(d->data, (size_t)(creq_end - d->data), md, &mdl, EVP_sha256(), NULL) == 1);
    char hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    ENSURE(d->len >= 64 && memcmp(d->data + d->len - 64, hex, 64) == 0);
  } else {
    ENSURE(strstr(d->data, "\nx-amz-security-token:<session token>"));
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 9) return 0;
  uint8_t ctl = data[0];
  int64_t t;
  memcpy(&t, data + 1, 8);
  if (ctl & C_TIME_IN_RANGE) t = (int64_t)((uint64_t)t % UINT64_C(253402300800));
  data += 9;
  size -= 9;

  /* Fields and header pairs, NUL-separated, in a NUL-terminated copy. */
  char *buf = malloc(size + 1);
  if (!buf) return 0;
  memcpy(buf, data, size);
  buf[size] = '\0';
  const char *f[F_N];
  mg_sigv4_header_t hs[MAX_HEADERS + 1];
  size_t nh = 0;
  char *p = buf, *end = buf + size;
  for (int i = 0; i < F_N; i++) {
    f[i] = p <= end ? p : "";
    if (p <= end) p += strlen(p) + 1;
  }
  if (ctl & C_ADD_HOST) hs[nh++] = (mg_sigv4_header_t){"Host", "example.amazonaws.com"};
  while (p < end && nh < MAX_HEADERS + 1) {
    const char *name = p;
    p += strlen(p) + 1;
    const char *value = p <= end ? p : "";
    if (p <= end) p += strlen(p) + 1;
    hs[nh++] = (mg_sigv4_header_t){name, value};
  }

  char hash[65];
  mg_sigv4_request_t r = {
      .method = or_default(f[F_METHOD], "POST"),
      .url_path = ctl & C_NULL_PATH ? NULL : f[F_PATH],
      .query = ctl & C_NULL_QUERY ? NULL : f[F_QUERY],
      .headers = hs,
      .nheaders = nh,
      .payload = f[F_PAYLOAD],
      .payload_len = strlen(f[F_PAYLOAD]),
      .region = or_default(f[F_REGION], "us-east-1"),
      .service = or_default(f[F_SERVICE], "aps"),
      .unix_time = t,
  };
  if (ctl & C_PRECOMPUTED) {
    snprintf(hash, sizeof hash, "%s", f[F_PAYLOAD]);
    r.payload_sha256_hex = hash;
  }
  mg_sigv4_creds_t c = {or_default(f[F_AKID], "AKIDEXAMPLE"), or_default(f[F_SECRET], "secret"),
                        ctl & C_TOKEN ? f[F_TOKEN] : NULL};
  int flags = ctl & C_CONTENT_SHA ? MG_SIGV4_ADD_CONTENT_SHA256 : 0;

  mg_sigv4_key_cache_t cache;
  mg_sigv4_key_cache_init(&cache);
  mg_sigv4_result_t a, b;
  mg_buf_t da, db;
  mg_buf_init(&da, 0);
  mg_buf_init(&db, 0);
  int rc = mg_sigv4_sign(&cache, &r, &c, flags, &a, &da);
  ENSURE(rc == 0 || rc == MG_EINVAL || rc == MG_ETOOBIG);
  if (rc == 0) {
    check_result(&r, &c, flags, &a, &da);
    /* Same inputs, cache hit: same result. */
    int rc2 = mg_sigv4_sign(&cache, &r, &c, flags, &b, NULL);
    ENSURE(rc2 == 0 && cache.hits == 1 && cache.misses == 1);
    ENSURE(strcmp(a.authorization, b.authorization) == 0);
    /* Another secret and token: the debug text must not change (it never
     * shows either), the signature must. */
    char secret2[300], token2[40];
    snprintf(secret2, sizeof secret2, "%s#", c.secret_access_key);
    snprintf(token2, sizeof token2, "other-token");
    mg_sigv4_creds_t c2 = {c.access_key_id, strlen(secret2) <= 256 ? secret2 : "x",
                           c.session_token && *c.session_token ? token2 : c.session_token};
    rc2 = mg_sigv4_sign(NULL, &r, &c2, flags, &b, &db);
    ENSURE(rc2 == 0);
    if (!(c.session_token && *c.session_token)) {
      ENSURE(da.len == db.len && memcmp(da.data, db.data, da.len) == 0);
    } else {
      /* The hash line may differ (the token is in the real request). */
      ENSURE(da.len == db.len && memcmp(da.data, db.data, da.len - 64) == 0);
    }
    ENSURE(strcmp(a.authorization, b.authorization) != 0);
  } else {
    ENSURE(a.nadd == 0 && a.authorization[0] == '\0');
  }
  mg_buf_cleanup(&da);
  mg_buf_cleanup(&db);
  mg_sigv4_key_cache_cleanup(&cache);
  free(buf);
  return 0;
}
