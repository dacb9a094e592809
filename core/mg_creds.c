/* mg_creds: a tree of provider nodes behind a vtable (like Fluent Bit's
 * flb_aws_credentials): leaves fetch from one source, "assume_role" wraps
 * a source node, "chain" tries its children in the SDKs' order and caches
 * the first that worked, "profile" re-reads the shared files and turns the
 * profile into a plan (a small config tree) whose nodes it keeps while the
 * plan is unchanged. The root object owns the current value, one refresh
 * timer, the waiters and the self-metrics. Everything runs on the loop;
 * one root refresh runs at a time, so a node never serves two fetches.
 * Lifetime: every open handle, fs request, HTTP request and child process
 * counts in c->pending; mg_creds_free sets closing, cancels, closes, and
 * the last callback frees. Secrets live only in values (one wiped block),
 * in pre-sized buffers that are wiped (so no realloc leaves copies), and
 * never in messages. */
#include "mg_creds.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mg_buf.h"
#include "mg_err.h"
#include "mg_ini.h"
#include "mg_json.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_metrics.h"
#include "mg_sigv4.h"
#include "mg_str.h"
#include "mg_xml.h"

#define MOD "creds"
#define MSG_MAX 512
#define DOC_LIMIT (64 * 1024)         /* IMDS, ECS, STS and credential_process answers */
#define TOKEN_FILE_LIMIT (64 * 1024)  /* web identity / ECS authorization token files */
#define MAX_NESTING 8                 /* assume_role over assume_role ... */
#define STAT_INTERVAL_MS 1000         /* stat() fallback in mg_creds_current */
#define DEBOUNCE_MS 30                /* fs events of one write arrive in bursts */
#define SETTLE_MS 2000                /* after a file change, failures are retried quietly */
#define SETTLE_RETRY_MS 150
#define FRESH_WRITE_MS 1000           /* a file without final newline younger than this may be half-written */
#define MIN_REFRESH_DELAY_MS 1000
#define IMDS_TOKEN_TTL_S 21600
#define IMDS_DEFAULT "http://169.254.169.254"
#define IMDS_DEFAULT_V6 "http://[fd00:ec2::254]"
#define ECS_HOST "http://169.254.170.2"
#define STS_VERSION "2011-06-15"
#define MAX_KEY_ID 128
#define MAX_SECRET 256
#define MAX_TOKEN (32 * 1024)

/* ------------------------------------------------------------ small helpers */

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Jitter only: xorshift64*, seeded from the monotonic clock. */
static uint64_t rng_state;
static uint64_t rnd(void) {
  if (!rng_state) rng_state = uv_hrtime() | 1;
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1Dull;
}

static void msgf(char *out, size_t outsz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void msgf(char *out, size_t outsz, const char *fmt, ...) {
  if (!out || !outsz) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out, outsz, fmt, ap);
  va_end(ap);
}

/* Copy text from a peer (an AWS error code or message) for a message:
 * printable ASCII only, at most max bytes, "..." when cut. */
static void clean_copy(char *out, size_t outsz, const char *s, size_t n, size_t max) {
  size_t o = 0;
  if (!outsz) return;
  for (size_t i = 0; i < n && o + 4 < outsz; i++) {
    if (i == max) {
      memcpy(out + o, "...", 3);
      o += 3;
      break;
    }
    unsigned char ch = (unsigned char)s[i];
    out[o++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
  }
  out[o] = '\0';
}

static bool str_has(const char *s) { return s && *s; }

static bool is_loopback_host(mg_str_t h) {
  if (mg_str_eq_c(h, "localhost") || mg_str_eq_c(h, "::1")) return true;
  if (h.n >= 4 && memcmp(h.p, "127.", 4) == 0) {
    for (size_t i = 4; i < h.n; i++)
      if (!((h.p[i] >= '0' && h.p[i] <= '9') || h.p[i] == '.')) return false;
    return true;
  }
  return false;
}

/* scheme://authority/path?query -> parts (views into url). */
typedef struct url_parts {
  bool https;
  mg_str_t authority, host, path, query;
} url_parts_t;

static int url_split(const char *url, url_parts_t *u) {
  memset(u, 0, sizeof *u);
  const char *p;
  if (strncasecmp(url, "http://", 7) == 0) p = url + 7;
  else if (strncasecmp(url, "https://", 8) == 0) {
    p = url + 8;
    u->https = true;
  } else {
    return MG_EINVAL;
  }
  size_t alen = strcspn(p, "/?#");
  if (!alen || memchr(p, '@', alen)) return MG_EINVAL;
  u->authority = mg_str_n(p, alen);
  if (p[0] == '[') {
    const char *close = memchr(p, ']', alen);
    if (!close) return MG_EINVAL;
    u->host = mg_str_n(p + 1, (size_t)(close - p - 1));
  } else {
    const char *colon = memchr(p, ':', alen);
    u->host = mg_str_n(p, colon ? (size_t)(colon - p) : alen);
  }
  const char *rest = p + alen;
  size_t plen = strcspn(rest, "?#");
  u->path = plen ? mg_str_n(rest, plen) : MG_STR_LIT("/");
  if (rest[plen] == '?') {
    const char *q = rest + plen + 1;
    u->query = mg_str_n(q, strcspn(q, "#"));
  }
  for (const char *q = url; *q; q++)
    if ((unsigned char)*q <= 0x20 || *q == 0x7f) return MG_EINVAL;
  return 0;
}

static bool unreserved(unsigned char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
         ch == '_' || ch == '.' || ch == '~';
}

/* Append name=value to an application/x-www-form-urlencoded body. */
static int form_add(mg_buf_t *b, const char *name, const char *value, size_t vlen) {
  static const char hex[] = "0123456789ABCDEF";
  int rc = b->len ? mg_buf_append_byte(b, '&') : 0;
  if (rc == 0) rc = mg_buf_append_str(b, name);
  if (rc == 0) rc = mg_buf_append_byte(b, '=');
  for (size_t i = 0; i < vlen && rc == 0; i++) {
    unsigned char ch = (unsigned char)value[i];
    if (unreserved(ch)) {
      rc = mg_buf_append_byte(b, ch);
    } else {
      char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
      rc = mg_buf_append(b, e, 3);
    }
  }
  return rc;
}

static void fmt_time(int64_t ms, char *out, size_t outsz) {
  if (!ms) {
    snprintf(out, outsz, "never");
    return;
  }
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  if (!gmtime_r(&t, &tm) || strftime(out, outsz, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) snprintf(out, outsz, "?");
}

/* ------------------------------------------------------------ values */

static bool key_id_ok(const char *s, size_t n) {
  if (n == 0 || n > MAX_KEY_ID) return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
          ch == '_' || ch == '.'))
      return false;
  }
  return true;
}

/* Secrets and tokens go into headers and HMACs: printable, no blanks. */
static bool secret_ok(const char *s, size_t n, size_t max) {
  if (n == 0 || n > max) return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) return false;
  return true;
}

/* When to refresh and when to stop handing out a value: refresh at
 * max(5 min, 10 % of the lifetime) before expiry (at most half the
 * lifetime, with up to 20 % of that as jitter so fleets spread out); stale
 * min(60 s, 10 % of the lifetime) before expiry. */
static void value_plan(mg_creds_value_t *v, int64_t now) {
  v->obtained_ms_ = now;
  if (!v->expires_ms) {
    v->refresh_ms_ = v->stale_ms_ = INT64_MAX;
    return;
  }
  int64_t life = v->expires_ms > now ? v->expires_ms - now : 0;
  int64_t ahead = life / 10;
  if (ahead < 300000) ahead = 300000;
  if (ahead > life / 2) ahead = life / 2;
  int64_t j = ahead / 5;
  if (j > 60000) j = 60000;
  v->refresh_ms_ = v->expires_ms - ahead - (j > 0 ? (int64_t)(rnd() % (uint64_t)j) : 0);
  int64_t margin = life / 10;
  if (margin > 60000) margin = 60000;
  v->stale_ms_ = v->expires_ms - margin;
}

static mg_creds_value_t *value_new(const char *kind, mg_str_t akid, mg_str_t secret, mg_str_t token,
                                   int64_t expires_ms, const char *source, int64_t now, int *err, char *msg,
                                   size_t msgsz) {
  *err = MG_ECREDS;
  if (!key_id_ok(akid.p, akid.n)) {
    msgf(msg, msgsz, "access key id is empty, too long or has characters other than A-Z a-z 0-9 - _ .");
    return NULL;
  }
  if (!secret_ok(secret.p, secret.n, MAX_SECRET)) {
    msgf(msg, msgsz, "secret access key is empty, longer than %d bytes or not printable ASCII", MAX_SECRET);
    return NULL;
  }
  if (token.n && !secret_ok(token.p, token.n, MAX_TOKEN)) {
    msgf(msg, msgsz, "session token is longer than %d bytes or not printable ASCII", MAX_TOKEN);
    return NULL;
  }
  if (expires_ms && expires_ms <= now) {
    char t[32];
    fmt_time(expires_ms, t, sizeof t);
    msgf(msg, msgsz, "credentials expired already (expiration %s)", t);
    return NULL;
  }
  size_t klen = strlen(kind), slen = strlen(source);
  size_t size = sizeof(mg_creds_value_t) + akid.n + secret.n + token.n + klen + slen + 5;
  mg_creds_value_t *v = mg_calloc(1, size);
  if (!v) {
    *err = MG_ENOMEM;
    msgf(msg, msgsz, "out of memory");
    return NULL;
  }
  char *p = (char *)(v + 1);
#define PUT_(field, src, n)                                                  \
  do {                                                                       \
    memcpy(p, (src), (n));                                                   \
    p[(n)] = '\0';                                                           \
    (field) = p;                                                             \
    p += (n) + 1;                                                            \
  } while (0)
  PUT_(v->access_key_id, akid.p, akid.n);
  PUT_(v->secret_access_key, secret.p, secret.n);
  if (token.n) PUT_(v->session_token, token.p, token.n);
  PUT_(v->kind, kind, klen);
  PUT_(v->source, source, slen);
#undef PUT_
  v->expires_ms = expires_ms;
  v->refs_ = 1;
  v->size_ = size;
  value_plan(v, now);
  *err = 0;
  return v;
}

mg_creds_value_t *mg_creds_value_ref(mg_creds_value_t *v) {
  if (v) v->refs_++;
  return v;
}

void mg_creds_value_unref(mg_creds_value_t *v) {
  if (!v || --v->refs_) return;
  mg_mem_wipe(v, v->size_);
  mg_free(v);
}

static bool opt_eq(const char *a, const char *b) { return (!a && !b) || (a && b && strcmp(a, b) == 0); }

static bool value_same(const mg_creds_value_t *a, const mg_creds_value_t *b) {
  size_t as = strlen(a->secret_access_key), bs = strlen(b->secret_access_key);
  size_t at = a->session_token ? strlen(a->session_token) : 0, bt = b->session_token ? strlen(b->session_token) : 0;
  return strcmp(a->access_key_id, b->access_key_id) == 0 && as == bs &&
         CRYPTO_memcmp(a->secret_access_key, b->secret_access_key, as) == 0 && at == bt &&
         (at == 0 || CRYPTO_memcmp(a->session_token, b->session_token, at) == 0) && a->expires_ms == b->expires_ms &&
         opt_eq(a->source, b->source);
}

/* ------------------------------------------------------------ time */

static int digits(const char *s, size_t n) {
  int v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (s[i] - '0');
  }
  return v;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

int mg_creds_parse_time(const char *s, size_t n, int64_t *ms) {
  static const int dim[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (!s || n < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
      s[13] != ':' || s[16] != ':')
    return MG_EPARSE;
  int y = digits(s, 4), mo = digits(s + 5, 2), d = digits(s + 8, 2);
  int h = digits(s + 11, 2), mi = digits(s + 14, 2), sec = digits(s + 17, 2);
  if (y < 1970 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 60)
    return MG_EPARSE;
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (d > dim[mo - 1] + (mo == 2 && leap)) return MG_EPARSE;
  if (sec == 60) sec = 59; /* a leap second: close enough for an expiry */
  size_t i = 19;
  int frac_ms = 0;
  if (i < n && s[i] == '.') {
    size_t k = 0;
    i++;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
      if (k < 3) frac_ms = frac_ms * 10 + (s[i] - '0');
      k++;
      i++;
    }
    if (k == 0 || k > 9) return MG_EPARSE;
    for (; k < 3; k++) frac_ms *= 10;
  }
  int64_t offset_s = 0;
  if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
    i++;
  } else if (i < n && (s[i] == '+' || s[i] == '-')) {
    if (n - i != 6 || s[i + 3] != ':') return MG_EPARSE;
    int oh = digits(s + i + 1, 2), om = digits(s + i + 4, 2);
    if (oh < 0 || oh > 23 || om < 0 || om > 59) return MG_EPARSE;
    offset_s = (int64_t)(oh * 3600 + om * 60) * (s[i] == '-' ? -1 : 1);
    i += 6;
  } else {
    return MG_EPARSE;
  }
  if (i != n) return MG_EPARSE;
  int64_t t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset_s;
  *ms = t * 1000 + frac_ms;
  return 0;
}

/* ------------------------------------------------------------ documents */

/* Fields copied out of a document while it is parsed (views die with the
 * parser's scratch). Freed with wipe. */
typedef struct fields {
  char *akid, *secret, *token, *expiration, *code, *message, *type;
  bool version_ok, version_seen, duplicate, bad_type, has_nul;
} fields_t;

static void fields_free(fields_t *f) {
  mg_mem_free_secret(f->akid);
  mg_mem_free_secret(f->secret);
  mg_mem_free_secret(f->token);
  mg_mem_free_secret(f->expiration);
  mg_mem_free_secret(f->code);
  mg_mem_free_secret(f->message);
  mg_mem_free_secret(f->type);
  memset(f, 0, sizeof *f);
}

static int field_set(fields_t *f, char **slot, mg_str_t v) {
  if (*slot) {
    f->duplicate = true;
    return 0;
  }
  if (memchr(v.p, '\0', v.n)) f->has_nul = true;
  *slot = mg_strndup(v.p, v.n);
  return *slot ? 0 : MG_ENOMEM;
}

typedef struct json_ctx {
  mg_creds_doc_t doc;
  fields_t f;
} json_ctx_t;

static int json_member(void *ud, mg_str_t key, mg_json_type_t type, mg_str_t value) {
  json_ctx_t *j = ud;
  fields_t *f = &j->f;
  const char *token_key = j->doc == MG_CREDS_DOC_PROCESS ? "SessionToken" : "Token";
  char **slot = NULL;
  if (mg_str_eq_c(key, "AccessKeyId")) slot = &f->akid;
  else if (mg_str_eq_c(key, "SecretAccessKey")) slot = &f->secret;
  else if (mg_str_eq_c(key, token_key)) slot = &f->token;
  else if (mg_str_eq_c(key, "Expiration")) slot = &f->expiration;
  else if (mg_str_eq_c(key, "Code") && j->doc == MG_CREDS_DOC_IMDS) slot = &f->code;
  else if ((mg_str_eq_c(key, "message") || mg_str_eq_c(key, "Message")) && j->doc == MG_CREDS_DOC_ECS)
    slot = &f->message;
  else if (mg_str_eq_c(key, "Version") && j->doc == MG_CREDS_DOC_PROCESS) {
    if (f->version_seen) f->duplicate = true;
    f->version_seen = true;
    f->version_ok = type == MG_JSON_NUMBER && mg_str_eq_c(value, "1");
    return 0;
  }
  if (!slot) return 0;
  if (type == MG_JSON_NULL && slot == &f->token) return 0; /* "Token": null means none */
  if (type != MG_JSON_STRING) {
    f->bad_type = true;
    return 0;
  }
  return field_set(f, slot, value);
}

/* need: expiration and token are required (STS, IMDS and ECS always send
 * both; credential_process may leave them out). */
static int value_from_fields(fields_t *f, bool need, const char *token_name, int64_t now, const char *kind,
                             const char *source, mg_creds_value_t **out, char *msg, size_t msgsz) {
  if (f->duplicate) {
    msgf(msg, msgsz, "a credential field appears twice");
    return MG_EPARSE;
  }
  if (f->bad_type || f->has_nul) {
    msgf(msg, msgsz, "a credential field is not a string");
    return MG_EPARSE;
  }
  if (!f->akid || !f->secret) {
    msgf(msg, msgsz, "%s is missing", !f->akid ? "AccessKeyId" : "SecretAccessKey");
    return MG_ECREDS;
  }
  int64_t exp = 0;
  if (f->expiration) {
    if (mg_creds_parse_time(f->expiration, strlen(f->expiration), &exp) != 0) {
      msgf(msg, msgsz, "Expiration is not an RFC 3339 time");
      return MG_EPARSE;
    }
  } else if (need) {
    msgf(msg, msgsz, "Expiration is missing");
    return MG_ECREDS;
  }
  if (!f->token && need) {
    msgf(msg, msgsz, "%s is missing", token_name);
    return MG_ECREDS;
  }
  if (!f->token && strncmp(f->akid, "ASIA", 4) == 0) {
    msgf(msg, msgsz, "%s is missing for a temporary access key id (ASIA...)", token_name);
    return MG_ECREDS;
  }
  int err;
  *out = value_new(kind, mg_str(f->akid), mg_str(f->secret), mg_str(f->token), exp, source, now, &err, msg, msgsz);
  return *out ? 0 : err;
}

int mg_creds_parse_json(mg_creds_doc_t doc, const char *json, size_t len, int64_t now_ms, const char *kind,
                        const char *source, mg_creds_value_t **out, char *msg, size_t msgsz) {
  *out = NULL;
  json_ctx_t j = {.doc = doc};
  mg_json_error_t jerr;
  int rc = mg_json_object(json, len, json_member, &j, &jerr);
  if (rc == MG_EPARSE) {
    msgf(msg, msgsz, "not a JSON object (byte %zu: %s)", jerr.offset, jerr.msg);
  } else if (rc == MG_ETOOBIG) {
    msgf(msg, msgsz, "document over %d bytes", MG_JSON_MAX_INPUT);
  } else if (rc) {
    msgf(msg, msgsz, "%s", mg_err_str(rc));
  } else if (doc == MG_CREDS_DOC_PROCESS && !j.f.version_ok) {
    msgf(msg, msgsz, "\"Version\": 1 is missing or another version");
    rc = MG_ECREDS;
  } else if (doc == MG_CREDS_DOC_IMDS && j.f.code && strcmp(j.f.code, "Success") != 0) {
    char c[64];
    clean_copy(c, sizeof c, j.f.code, strlen(j.f.code), 40);
    msgf(msg, msgsz, "instance metadata answered Code=%s", c);
    rc = MG_ECREDS;
  } else {
    rc = value_from_fields(&j.f, doc != MG_CREDS_DOC_PROCESS,
                           doc == MG_CREDS_DOC_PROCESS ? "SessionToken" : "Token", now_ms, kind, source, out, msg,
                           msgsz);
  }
  fields_free(&j.f);
  return rc;
}

typedef struct sts_ctx {
  const char *action;
  fields_t f;
} sts_ctx_t;

static mg_str_t local_name(mg_str_t s) {
  const char *colon = memchr(s.p, ':', s.n);
  return colon ? mg_str_n(colon + 1, s.n - (size_t)(colon + 1 - s.p)) : s;
}

static bool name_is(mg_str_t s, const char *prefix, const char *suffix) {
  s = local_name(s);
  size_t pl = strlen(prefix), sl = strlen(suffix);
  return s.n == pl + sl && memcmp(s.p, prefix, pl) == 0 && memcmp(s.p + pl, suffix, sl) == 0;
}

static int sts_leaf(void *ud, const mg_str_t *path, size_t depth, mg_str_t text) {
  sts_ctx_t *x = ud;
  fields_t *f = &x->f;
  if (depth == 4 && name_is(path[0], x->action, "Response") && name_is(path[1], x->action, "Result") &&
      name_is(path[2], "Credentials", "")) {
    mg_str_t n = local_name(path[3]);
    if (mg_str_eq_c(n, "AccessKeyId")) return field_set(f, &f->akid, text);
    if (mg_str_eq_c(n, "SecretAccessKey")) return field_set(f, &f->secret, text);
    if (mg_str_eq_c(n, "SessionToken")) return field_set(f, &f->token, text);
    if (mg_str_eq_c(n, "Expiration")) return field_set(f, &f->expiration, text);
    return 0;
  }
  /* <ErrorResponse><Error><Code>, and the EC2-style <Response><Errors><Error><Code>. */
  bool err3 = depth == 3 && name_is(path[0], "ErrorResponse", "") && name_is(path[1], "Error", "");
  bool err4 = depth == 4 && name_is(path[0], "Response", "") && name_is(path[1], "Errors", "") &&
              name_is(path[2], "Error", "");
  if (err3 || err4) {
    mg_str_t n = local_name(path[depth - 1]);
    if (mg_str_eq_c(n, "Code")) return field_set(f, &f->code, text);
    if (mg_str_eq_c(n, "Message")) return field_set(f, &f->message, text);
  }
  return 0;
}

int mg_creds_parse_sts(const char *action, int status, const char *xml, size_t len, int64_t now_ms, const char *kind,
                       const char *source, mg_creds_value_t **out, char *msg, size_t msgsz) {
  *out = NULL;
  sts_ctx_t x = {.action = action};
  mg_xml_error_t xerr;
  int rc = mg_xml_parse(xml, len, sts_leaf, &x, &xerr);
  if (rc == 0 && x.f.code) {
    char code[96], text[256];
    clean_copy(code, sizeof code, x.f.code, strlen(x.f.code), 64);
    clean_copy(text, sizeof text, x.f.message ? x.f.message : "", x.f.message ? strlen(x.f.message) : 0, 200);
    msgf(msg, msgsz, "STS %s: HTTP %d %s: %s", action, status, code, text);
    rc = MG_ECREDS;
  } else if (status != 200) {
    msgf(msg, msgsz, "STS %s: HTTP %d%s", action, status, rc ? " (body is not an AWS error document)" : "");
    rc = MG_ESTATUS;
  } else if (rc == MG_EPARSE) {
    msgf(msg, msgsz, "STS %s: answer is not XML (line %u: %s)", action, xerr.line, xerr.msg);
  } else if (rc) {
    msgf(msg, msgsz, "STS %s: %s", action, mg_err_str(rc));
  } else {
    char m[MSG_MAX];
    m[0] = '\0';
    rc = value_from_fields(&x.f, true, "SessionToken", now_ms, kind, source, out, m, sizeof m);
    if (rc) msgf(msg, msgsz, "STS %s: answer %s", action, m);
  }
  fields_free(&x.f);
  return rc;
}

bool mg_creds_is_rejection(int status, const char *error_type, const char *body, size_t body_len) {
  static const char *codes[] = {"ExpiredToken",       "ExpiredTokenException",       "InvalidClientTokenId",
                                "UnrecognizedClient", "UnrecognizedClientException", "InvalidSignatureException",
                                "SignatureDoesNotMatch", "IncompleteSignature",      "IncompleteSignatureException"};
  static const char *messages[] = {"security token included in the request is expired",
                                   "security token included in the request is invalid",
                                   "request signature we calculated does not match"};
  if (status != 400 && status != 401 && status != 403) return false;
  if (error_type && *error_type) {
    size_t n = strcspn(error_type, ":");
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
      if (strlen(codes[i]) == n && strncmp(error_type, codes[i], n) == 0) return true;
  }
  if (!body || !body_len) return false;
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    char pat[64];
    /* JSON "__type"/"code" values and XML <Code> elements. */
    snprintf(pat, sizeof pat, "\"%s\"", codes[i]);
    if (memmem(body, body_len, pat, strlen(pat))) return true;
    snprintf(pat, sizeof pat, "#%s\"", codes[i]);
    if (memmem(body, body_len, pat, strlen(pat))) return true;
    snprintf(pat, sizeof pat, "<Code>%s</Code>", codes[i]);
    if (memmem(body, body_len, pat, strlen(pat))) return true;
  }
  for (size_t i = 0; i < sizeof messages / sizeof messages[0]; i++)
    if (memmem(body, body_len, messages[i], strlen(messages[i]))) return true;
  return false;
}

/* ------------------------------------------------------------ object */

/* The AWS_* environment, read once by mg_creds_new. Empty means unset. */
typedef struct env {
  char *access_key_id, *secret_access_key, *session_token, *credential_expiration;
  char *profile, *credentials_file, *config_file, *region, *default_region;
  char *web_identity_token_file, *role_arn, *role_session_name;
  char *endpoint_url_sts, *endpoint_url;
  char *imds_endpoint, *imds_mode, *imds_disabled;
  char *ecs_relative_uri, *ecs_full_uri, *ecs_auth_token, *ecs_auth_token_file;
  char *home;
} env_t;

typedef struct node node_t;
typedef struct watch watch_t;

struct mg_creds {
  uv_loop_t *loop;
  mg_http_client_t *http;
  const mg_fileio_t *io; /* reads the files it serves (--user); NULL: all files directly */
  char name[64];
  mg_creds_opts_t opts;
  env_t env;
  char *default_region;
  node_t *root;
  node_t *nodes; /* every live node, for cancel on free */
  watch_t *watches;
  mg_creds_value_t *cur;
  uv_timer_t timer;
  mg_creds_waiter_t waiters; /* sentinel */
  uint32_t pending;          /* open handles + requests in flight */
  bool closing, refreshing, want_force, forcing, rejected_pending;
  unsigned fail_count;
  uint64_t fetches, fetches_at_start;
  const char *fail_kind;
  uint64_t last_force_ms; /* uv_now of the last forced refresh */
  bool forced_before;
  int64_t last_stat_ms, file_change_ms;
  char last_error[MSG_MAX], logged_error[MSG_MAX];
  int64_t logged_ms;
  bool again; /* something changed during a refresh: run another */
  uint64_t successes, failures;
  int64_t last_success_ms, last_failure_ms;
};

static void maybe_finish(mg_creds_t *c);
static void request_refresh(mg_creds_t *c, uint64_t delay_ms);
static void on_timer(uv_timer_t *t);

static const mg_fileio_t *g_fileio; /* installed at start-up by mg_creds_use_fileio */

void mg_creds_use_fileio(const mg_fileio_t *io) { g_fileio = io; }

static bool io_serves(const mg_creds_t *c, const char *path) { return c->io && c->io->serves(c->io->ud, path); }

static void on_close_pending(uv_handle_t *h) {
  mg_creds_t *c = h->data;
  c->pending--;
  maybe_finish(c);
}

/* ------------------------------------------------------------ nodes */

typedef void (*node_done_fn)(void *ud, int err, mg_creds_value_t *v, const char *msg);

typedef struct node_vt {
  const char *kind;
  bool caches; /* the generic cache answers while the value is fresh */
  void (*fetch)(node_t *n, bool force);
  void (*cancel)(node_t *n);  /* closing: stop in-flight work */
  void (*destroy)(node_t *n); /* free private state and child nodes */
} node_vt_t;

struct node {
  const node_vt_t *vt;
  mg_creds_t *c;
  char *desc; /* for messages and value sources; no secrets */
  mg_creds_value_t *cached;
  bool busy, dirty;
  uint64_t dirty_gen;
  node_done_fn done;
  void *done_ud;
  node_t *next_all;
};

static void *node_alloc(mg_creds_t *c, size_t size, const node_vt_t *vt, const char *desc) {
  node_t *n = mg_calloc(1, size);
  if (!n) return NULL;
  n->desc = mg_strdup(desc);
  if (!n->desc) {
    mg_free(n);
    return NULL;
  }
  n->vt = vt;
  n->c = c;
  n->next_all = c->nodes;
  c->nodes = n;
  return n;
}

static void node_free(node_t *n) {
  if (!n) return;
  for (node_t **pp = &n->c->nodes; *pp; pp = &(*pp)->next_all) {
    if (*pp == n) {
      *pp = n->next_all;
      break;
    }
  }
  if (n->vt->destroy) n->vt->destroy(n);
  mg_creds_value_unref(n->cached);
  mg_free(n->desc);
  mg_free(n);
}

static bool fresh(const node_t *n, const mg_creds_value_t *v, int64_t now) {
  if (!v->expires_ms) return !n->dirty;
  return now < v->refresh_ms_;
}

/* Ask n for credentials; done runs exactly once, possibly before this
 * returns (internal callers are written for that; the root only starts
 * from its timer, so public callbacks never nest in a caller's call). v
 * passed to done is borrowed: ref it to keep it. */
static void node_get(node_t *n, bool force, node_done_fn done, void *ud) {
  if (n->busy) {
    done(ud, MG_EAGAIN, NULL, "internal: provider busy");
    return;
  }
  if (!force && n->vt->caches && n->cached && fresh(n, n->cached, wall_ms())) {
    done(ud, 0, n->cached, NULL);
    return;
  }
  n->busy = true;
  n->done = done;
  n->done_ud = ud;
  n->c->fetches++;
  n->vt->fetch(n, force);
}

/* A fetch ended. Takes v. Identical credentials keep the cached object
 * (so mg_creds_invalidate's identity check still works), and if they come
 * back at or after their refresh time (IMDS and ECS hand out the same
 * credentials until shortly before expiry), the next try is spaced out
 * geometrically instead of every second. */
static void node_finish(node_t *n, int err, mg_creds_value_t *v, const char *msg) {
  mg_creds_t *c = n->c;
  n->busy = false;
  if (c->closing) {
    mg_creds_value_unref(v);
    return;
  }
  if (err == 0) {
    if (n->cached && value_same(n->cached, v)) {
      mg_creds_value_unref(v);
      v = n->cached;
      int64_t now = wall_ms();
      if (v->expires_ms && now >= v->refresh_ms_) {
        int64_t d = (v->stale_ms_ - now) / 3;
        if (d < MIN_REFRESH_DELAY_MS) d = MIN_REFRESH_DELAY_MS;
        if (d > 300000) d = 300000;
        v->refresh_ms_ = now + d;
      }
    } else {
      mg_creds_value_unref(n->cached);
      n->cached = v;
    }
    n->done(n->done_ud, 0, v, NULL);
  } else {
    mg_creds_value_unref(v);
    if (!c->fail_kind && err != MG_ENOTFOUND) c->fail_kind = n->vt->kind; /* the deepest real failure */
    n->done(n->done_ud, err, NULL, msg ? msg : mg_err_str(err));
  }
}

static void node_failf(node_t *n, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void node_failf(node_t *n, int err, const char *fmt, ...) {
  char msg[MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  node_finish(n, err, NULL, msg);
}

/* ------------------------------------------------------------ async file reads */

typedef mg_fileio_sig_t filesig_t;

static bool sig_eq(const filesig_t *a, const filesig_t *b) {
  if (a->exists != b->exists) return false;
  return !a->exists || (a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_ns == b->mtime_ns &&
                        a->ctime_ns == b->ctime_ns);
}

static void sig_from_uv(filesig_t *s, const uv_stat_t *st) {
  s->exists = true;
  s->dev = st->st_dev;
  s->ino = st->st_ino;
  s->size = st->st_size;
  s->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
  s->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

typedef struct rd rd_t;
typedef void (*rd_done_fn)(void *ud, rd_t *r);

/* One whole-file read through uv_fs_*: open, fstat, read into a buffer
 * sized from fstat (a file that grows while read fails with MG_EAGAIN
 * rather than reallocating secret bytes), close. A file that c->io serves
 * is read by it instead, with the same outcomes. */
struct rd {
  mg_creds_t *c;
  uv_fs_t req;
  uv_file fd;
  char *path;
  mg_buf_t buf;
  size_t room; /* bytes reserved for this read */
  size_t limit;
  filesig_t sig;
  int err;   /* 0, MG_ENOTFOUND (missing), MG_EIO, MG_ETOOBIG, MG_EAGAIN; from c->io also MG_ENOMEM,
                MG_ECLOSED (its helper exited), MG_ECANCELED */
  int uverr; /* the libuv error behind MG_EIO */
  bool via_io; /* read by c->io */
  rd_done_fn done;
  void *ud;
};

static void rd_free(rd_t *r) {
  if (!r) return;
  mg_buf_cleanup_secret(&r->buf);
  mg_free(r->path);
  mg_free(r);
}

static void rd_on_close(uv_fs_t *req);
static void rd_on_read(uv_fs_t *req);

static void rd_close(rd_t *r) {
  if (r->fd >= 0) {
    uv_file fd = r->fd;
    r->fd = -1;
    r->c->pending++;
    if (uv_fs_close(r->c->loop, &r->req, fd, rd_on_close) == 0) return;
    r->c->pending--;
  }
  if (r->c->closing) {
    maybe_finish(r->c);
    return;
  }
  r->done(r->ud, r);
}

static void rd_on_close(uv_fs_t *req) {
  rd_t *r = req->data;
  uv_fs_req_cleanup(req);
  r->c->pending--;
  if (r->c->closing) {
    maybe_finish(r->c);
    return;
  }
  r->done(r->ud, r);
}

static void rd_fail(rd_t *r, int err, int uverr) {
  r->err = err;
  r->uverr = uverr;
  rd_close(r);
}

static void rd_next(rd_t *r) {
  uv_buf_t b = uv_buf_init(r->buf.data + r->buf.len, (unsigned)(r->room - r->buf.len));
  r->c->pending++;
  int rc = uv_fs_read(r->c->loop, &r->req, r->fd, &b, 1, -1, rd_on_read);
  if (rc < 0) {
    r->c->pending--;
    rd_fail(r, MG_EIO, rc);
  }
}

static void rd_on_read(uv_fs_t *req) {
  rd_t *r = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  r->c->pending--;
  if (r->c->closing) {
    rd_close(r);
    return;
  }
  if (n < 0) {
    rd_fail(r, MG_EIO, (int)n);
    return;
  }
  if (n == 0) {
    r->buf.data[r->buf.len] = '\0';
    rd_close(r);
    return;
  }
  r->buf.len += (size_t)n;
  if (r->buf.len >= r->room) {
    rd_fail(r, r->room >= r->limit ? MG_ETOOBIG : MG_EAGAIN, 0);
    return;
  }
  rd_next(r);
}

static void rd_on_stat(uv_fs_t *req) {
  rd_t *r = req->data;
  int res = (int)req->result;
  uv_stat_t st = req->statbuf;
  uv_fs_req_cleanup(req);
  r->c->pending--;
  if (r->c->closing) {
    rd_close(r);
    return;
  }
  if (res < 0) {
    rd_fail(r, MG_EIO, res);
    return;
  }
  if (!S_ISREG(st.st_mode)) {
    rd_fail(r, MG_EIO, UV_EISDIR);
    return;
  }
  sig_from_uv(&r->sig, &st);
  if (st.st_size > r->limit) {
    rd_fail(r, MG_ETOOBIG, 0);
    return;
  }
  /* Room for the file as it is now plus slack; growing past it means the
   * file is being written: read again later. */
  size_t want = (size_t)st.st_size + 4096;
  if (want > r->limit) want = r->limit;
  if (mg_buf_reserve(&r->buf, want) != 0) {
    rd_fail(r, MG_EIO, UV_ENOMEM);
    return;
  }
  r->room = want; /* never read past the reservation */
  rd_next(r);
}

static void rd_on_open(uv_fs_t *req) {
  rd_t *r = req->data;
  int res = (int)req->result;
  uv_fs_req_cleanup(req);
  r->c->pending--;
  if (res >= 0) r->fd = res;
  if (r->c->closing) {
    rd_close(r);
    return;
  }
  if (res < 0) {
    rd_fail(r, res == UV_ENOENT || res == UV_ENOTDIR ? MG_ENOTFOUND : MG_EIO, res);
    return;
  }
  r->c->pending++;
  if (uv_fs_fstat(r->c->loop, &r->req, r->fd, rd_on_stat) < 0) {
    r->c->pending--;
    rd_fail(r, MG_EIO, UV_EIO);
  }
}

/* A read through c->io ended: the same outcome as the uv_fs steps. The
 * data is copied into the wiped buffer, sized once. */
static void rd_on_io(void *ctx, int err, int sys_errno, const mg_fileio_sig_t *sig, const char *data, size_t len) {
  rd_t *r = ctx;
  r->c->pending--;
  if (r->c->closing) {
    maybe_finish(r->c);
    return;
  }
  if (!err && (mg_buf_reserve(&r->buf, len) != 0 || mg_buf_append(&r->buf, data, len) != 0)) {
    err = MG_EIO;
    sys_errno = ENOMEM;
  }
  if (!err) r->sig = *sig;
  r->err = err;
  r->uverr = err == MG_EIO && sys_errno > 0 ? -sys_errno : 0;
  r->done(r->ud, r);
}

/* Start reading path; done(ud, r) runs later unless the object closes.
 * The caller frees r with rd_free after done (or at destroy). */
static int rd_start(mg_creds_t *c, const char *path, size_t limit, rd_done_fn done, void *ud, rd_t **out) {
  rd_t *r = mg_calloc(1, sizeof *r);
  if (!r) return MG_ENOMEM;
  r->path = mg_strdup(path);
  if (!r->path) {
    mg_free(r);
    return MG_ENOMEM;
  }
  r->c = c;
  r->fd = -1;
  r->limit = limit;
  r->done = done;
  r->ud = ud;
  r->req.data = r;
  mg_buf_init(&r->buf, limit);
  c->pending++;
  r->via_io = io_serves(c, path);
  int rc = r->via_io ? c->io->read(c->io->ud, path, limit, rd_on_io, r)
                     : uv_fs_open(c->loop, &r->req, path, O_RDONLY | O_CLOEXEC, 0, rd_on_open);
  if (rc < 0) {
    c->pending--;
    rd_free(r);
    return rc > MG_ERR_FIRST_ && rc < MG_ERR_LAST_ ? rc : mg_err_from_uv(rc);
  }
  *out = r;
  return 0;
}

static void rd_describe(const rd_t *r, char *out, size_t outsz) {
  switch (r->err) {
  case MG_ENOTFOUND: msgf(out, outsz, "%s does not exist", r->path); break;
  case MG_ETOOBIG: msgf(out, outsz, "%s is larger than %zu bytes", r->path, r->limit); break;
  case MG_EAGAIN: msgf(out, outsz, "%s changed while it was read", r->path); break;
  case MG_ECLOSED:
  case MG_ECANCELED:
    msgf(out, outsz, "cannot read %s: the privileged helper that reads it (moongate run --user) %s", r->path,
         r->err == MG_ECLOSED ? "has exited; restart moongate" : "is stopping");
    break;
  default:
    /* An unprivileged process (--user) reads files the helper does not
     * serve itself: say which files the helper serves. */
    msgf(out, outsz, "cannot read %s: %s%s", r->path,
         r->uverr ? uv_strerror(r->uverr) : r->err == MG_ENOMEM ? "out of memory" : "error",
         r->uverr == UV_EACCES && r->c->io && !r->via_io
             ? " (moongate runs unprivileged; its privileged helper reads only the files named at start by "
               "AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, AWS_WEB_IDENTITY_TOKEN_FILE, "
               "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE or the ~/.aws defaults)"
             : "");
    break;
  }
}

/* Trimmed content of a token file, or NULL (message in msg). */
static const char *rd_token(rd_t *r, size_t *n, char *msg, size_t msgsz) {
  if (r->err) {
    rd_describe(r, msg, msgsz);
    return NULL;
  }
  const char *s = r->buf.data ? r->buf.data : "";
  size_t len = r->buf.len;
  while (len && ((unsigned char)s[0] <= ' ')) {
    s++;
    len--;
  }
  while (len && ((unsigned char)s[len - 1] <= ' ')) len--;
  if (!len) {
    msgf(msg, msgsz, "%s is empty", r->path);
    return NULL;
  }
  for (size_t i = 0; i < len; i++) {
    if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f) {
      msgf(msg, msgsz, "%s contains control characters", r->path);
      return NULL;
    }
  }
  *n = len;
  return s;
}

/* ------------------------------------------------------------ HTTP requests */

typedef struct hreq {
  mg_http_req_t *h;
  mg_buf_t body; /* the answer; may hold secrets: wiped */
  bool active;
} hreq_t;

static int hreq_start(node_t *n, hreq_t *r, mg_http_request_t *req, mg_http_done_cb cb) {
  mg_creds_t *c = n->c;
  if (!r->body.data) {
    mg_buf_init(&r->body, DOC_LIMIT);
    if (mg_buf_reserve(&r->body, DOC_LIMIT) != 0) return MG_ENOMEM; /* no realloc of secrets later */
  }
  mg_mem_wipe(r->body.data, r->body.len);
  mg_buf_reset(&r->body);
  req->body_out = &r->body;
  req->max_body = DOC_LIMIT;
  int rc = mg_http_client_request(c->http, req, cb, n, &r->h);
  if (rc == 0) {
    r->active = true;
    c->pending++;
  }
  return rc;
}

/* First thing in an HTTP callback: false when the object is closing (the
 * callback must then return at once). */
static bool hreq_end(node_t *n, hreq_t *r) {
  r->active = false;
  r->h = NULL;
  n->c->pending--;
  if (n->c->closing) {
    maybe_finish(n->c);
    return false;
  }
  return true;
}

static void hreq_cancel(hreq_t *r) {
  if (r->active && r->h) mg_http_client_cancel(r->h);
}

static void hreq_release(hreq_t *r) { mg_buf_cleanup_secret(&r->body); }

static uint64_t http_timeout(const mg_creds_t *c) { return c->opts.http_timeout_ms; }

/* ------------------------------------------------------------ STS endpoints */

typedef struct sts {
  char *url;
  char *region; /* signing region */
} sts_t;

static bool region_ok(const char *r) {
  size_t n = strlen(r);
  if (!n || n > 63) return false;
  for (size_t i = 0; i < n; i++)
    if (!((r[i] >= 'a' && r[i] <= 'z') || (r[i] >= '0' && r[i] <= '9') || r[i] == '-')) return false;
  return true;
}

/* Where STS is: conf endpoint, AWS_ENDPOINT_URL_STS, AWS_ENDPOINT_URL, else
 * the regional endpoint (global when no region is known). Plain http only
 * to loopback: the request carries a session token or a web identity
 * token. */
static int sts_resolve(mg_creds_t *c, const char *endpoint, const char *region, const char *region_hint, sts_t *out,
                       char *msg, size_t msgsz) {
  const char *reg = str_has(region) ? region
                    : str_has(region_hint) ? region_hint
                    : str_has(c->default_region) ? c->default_region
                    : str_has(c->env.region) ? c->env.region
                                             : c->env.default_region;
  if (reg && !region_ok(reg)) {
    msgf(msg, msgsz, "STS region \"%.64s\" is not a region name", reg);
    return MG_ECONFIG;
  }
  const char *ep = str_has(endpoint) ? endpoint : str_has(c->env.endpoint_url_sts) ? c->env.endpoint_url_sts
                                                                                    : c->env.endpoint_url;
  char buf[300];
  if (ep) {
    url_parts_t u;
    if (url_split(ep, &u) != 0) {
      msgf(msg, msgsz, "STS endpoint \"%.200s\" is not an http(s) URL", ep);
      return MG_ECONFIG;
    }
    if (!u.https && !is_loopback_host(u.host)) {
      msgf(msg, msgsz, "STS endpoint %.200s: plain http is only allowed to loopback addresses", ep);
      return MG_ECONFIG;
    }
    snprintf(buf, sizeof buf, "%s", ep);
  } else if (reg) {
    snprintf(buf, sizeof buf, "https://sts.%s.amazonaws.com%s", reg, strncmp(reg, "cn-", 3) == 0 ? ".cn" : "");
  } else {
    snprintf(buf, sizeof buf, "https://sts.amazonaws.com");
  }
  out->url = mg_strdup(buf);
  out->region = mg_strdup(reg ? reg : "us-east-1");
  if (!out->url || !out->region) {
    mg_free(out->url);
    mg_free(out->region);
    out->url = out->region = NULL;
    return MG_ENOMEM;
  }
  return 0;
}

static void sts_cleanup(sts_t *s) {
  mg_free(s->url);
  mg_free(s->region);
  s->url = s->region = NULL;
}

/* POST a form to STS; signed with creds when given (AssumeRole), else
 * unsigned (AssumeRoleWithWebIdentity). form must live until the callback. */
static int sts_post(node_t *n, hreq_t *r, const sts_t *sts, const mg_buf_t *form, const mg_creds_value_t *creds,
                    mg_http_done_cb cb, char *msg, size_t msgsz) {
  static const char ctype[] = "application/x-www-form-urlencoded; charset=utf-8";
  url_parts_t u;
  if (url_split(sts->url, &u) != 0) {
    msgf(msg, msgsz, "bad STS URL");
    return MG_EINVAL;
  }
  mg_http_header_t hdrs[6];
  size_t nh = 0;
  hdrs[nh++] = (mg_http_header_t){"Content-Type", ctype};
  mg_sigv4_result_t *res = NULL;
  int rc = 0;
  if (creds) {
    res = mg_calloc(1, sizeof *res);
    char host[300], path[1024], query[1024];
    if (!res) return MG_ENOMEM;
    if (u.authority.n >= sizeof host || u.path.n >= sizeof path || u.query.n >= sizeof query) {
      mg_free(res);
      msgf(msg, msgsz, "STS URL too long");
      return MG_EINVAL;
    }
    snprintf(host, sizeof host, "%.*s", (int)u.authority.n, u.authority.p);
    snprintf(path, sizeof path, "%.*s", (int)u.path.n, u.path.p);
    snprintf(query, sizeof query, "%.*s", (int)u.query.n, u.query.p);
    mg_sigv4_header_t sh[2] = {{"host", host}, {"content-type", ctype}};
    mg_sigv4_request_t sreq = {.method = "POST",
                               .url_path = path,
                               .query = query,
                               .headers = sh,
                               .nheaders = 2,
                               .payload = form->data,
                               .payload_len = form->len,
                               .region = sts->region,
                               .service = "sts",
                               .unix_time = wall_ms() / 1000};
    mg_sigv4_creds_t sc = {creds->access_key_id, creds->secret_access_key, creds->session_token};
    rc = mg_sigv4_sign(NULL, &sreq, &sc, 0, res, NULL);
    if (rc) {
      mg_free(res);
      msgf(msg, msgsz, "cannot sign the STS request: %s", mg_err_str(rc));
      return rc;
    }
    for (size_t i = 0; i < res->nadd && nh < sizeof hdrs / sizeof hdrs[0]; i++)
      hdrs[nh++] = (mg_http_header_t){res->add[i].name, res->add[i].value};
  }
  mg_http_request_t req = {.method = "POST",
                           .url = sts->url,
                           .headers = hdrs,
                           .nheaders = nh,
                           .body = form->data,
                           .body_len = form->len,
                           .timeout_ms = http_timeout(n->c)};
  rc = hreq_start(n, r, &req, cb); /* headers are copied by the client */
  if (res) {
    mg_mem_wipe(res, sizeof *res);
    mg_free(res);
  }
  if (rc) msgf(msg, msgsz, "cannot send to STS at %s: %s", sts->url, mg_err_str(rc));
  return rc;
}

/* An STS answer that says the caller's own credentials are bad. */
static bool sts_says_source_bad(const char *msg) {
  return strstr(msg, " ExpiredToken") || strstr(msg, " InvalidClientTokenId") ||
         strstr(msg, " SignatureDoesNotMatch") || strstr(msg, " IncompleteSignature");
}

/* ------------------------------------------------------------ static, env */

static void static_fetch(node_t *n, bool force) {
  (void)force;
  node_finish(n, 0, mg_creds_value_ref(n->cached), NULL);
}

static const node_vt_t static_vt = {"static", true, static_fetch, NULL, NULL};

static void env_fetch(node_t *n, bool force) {
  (void)force;
  const env_t *e = &n->c->env;
  if (!e->access_key_id && !e->secret_access_key) {
    node_failf(n, MG_ENOTFOUND, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set");
    return;
  }
  if (!e->access_key_id || !e->secret_access_key) {
    node_failf(n, MG_ECREDS, "%s is set but %s is not",
               e->access_key_id ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
               e->access_key_id ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID");
    return;
  }
  int64_t exp = 0;
  if (e->credential_expiration &&
      mg_creds_parse_time(e->credential_expiration, strlen(e->credential_expiration), &exp) != 0) {
    node_failf(n, MG_ECREDS, "AWS_CREDENTIAL_EXPIRATION is not an RFC 3339 time");
    return;
  }
  if (!e->session_token && strncmp(e->access_key_id, "ASIA", 4) == 0) {
    node_failf(n, MG_ECREDS, "AWS_SESSION_TOKEN is not set for a temporary access key id (ASIA...)");
    return;
  }
  char msg[MSG_MAX];
  int err;
  mg_creds_value_t *v = value_new("env", mg_str(e->access_key_id), mg_str(e->secret_access_key),
                                  mg_str(e->session_token), exp, "environment", wall_ms(), &err, msg, sizeof msg);
  if (!v) {
    node_failf(n, err, "environment: %s", msg);
    return;
  }
  node_finish(n, 0, v, NULL);
}

static const node_vt_t env_vt = {"env", true, env_fetch, NULL, NULL};

/* ------------------------------------------------------------ chain */

#define CHAIN_MAX 5

typedef struct chain_node {
  node_t base;
  node_t *kids[CHAIN_MAX];
  size_t nkids, idx;
  node_t *winner; /* the first source that worked is asked from then on */
  char errs[MSG_MAX];
} chain_node_t;

static void chain_try(chain_node_t *ch);

static void chain_on_kid(void *ud, int err, mg_creds_value_t *v, const char *msg) {
  chain_node_t *ch = ud;
  node_t *kid = ch->kids[ch->idx];
  if (err == 0) {
    ch->winner = kid;
    node_finish(&ch->base, 0, mg_creds_value_ref(v), NULL);
    return;
  }
  if (err == MG_ENOTFOUND) {
    size_t o = strlen(ch->errs);
    snprintf(ch->errs + o, sizeof ch->errs - o, "%s%s: %s", o ? "; " : "", kid->vt->kind, msg);
    ch->idx++;
    chain_try(ch);
    return;
  }
  /* A source that is there but broken (a malformed file, a refused
   * token) stops the chain, as in the SDKs: falling through to another
   * identity would hide the problem. */
  node_failf(&ch->base, err, "%s: %s", kid->vt->kind, msg);
}

static void chain_try(chain_node_t *ch) {
  if (ch->idx == ch->nkids) {
    node_failf(&ch->base, MG_ENOTFOUND, "no credentials in any source of the default chain (%s)", ch->errs);
    return;
  }
  node_get(ch->kids[ch->idx], false, chain_on_kid, ch);
}

static void chain_on_winner(void *ud, int err, mg_creds_value_t *v, const char *msg) {
  chain_node_t *ch = ud;
  if (err == MG_ENOTFOUND) { /* the source went away (a deleted file): search again */
    MG_INFO(MOD, "credentials_source_gone", "creds=%s source=%s", ch->base.c->name, ch->winner->vt->kind);
    ch->winner = NULL;
    ch->idx = 0;
    ch->errs[0] = '\0';
    chain_try(ch);
    return;
  }
  if (err) {
    node_failf(&ch->base, err, "%s: %s", ch->winner->vt->kind, msg);
    return;
  }
  node_finish(&ch->base, 0, mg_creds_value_ref(v), NULL);
}

static void chain_fetch(node_t *n, bool force) {
  chain_node_t *ch = (chain_node_t *)n;
  if (ch->winner) {
    node_get(ch->winner, force, chain_on_winner, ch);
    return;
  }
  ch->idx = 0;
  ch->errs[0] = '\0';
  chain_try(ch);
}

static void chain_destroy(node_t *n) {
  chain_node_t *ch = (chain_node_t *)n;
  for (size_t i = 0; i < ch->nkids; i++) node_free(ch->kids[i]);
}

static const node_vt_t chain_vt = {"chain", false, chain_fetch, NULL, chain_destroy};

/* ------------------------------------------------------------ file watches */

/* A shared file watched through its directory (so a rename-replacement is
 * seen, and a directory that symlink-swaps its files, as Kubernetes does),
 * plus the stat() fallback that mg_creds_current runs once a second. A
 * file that c->io serves is watched by it instead (it reports changes and
 * checks at least once a second itself); the debounce stays ours. */
struct watch {
  mg_creds_t *c;
  node_t *owner;
  char *path, *dir, *base;
  uv_fs_event_t ev;
  uv_timer_t debounce;
  uv_fs_t statreq;
  bool ev_active, hit, stat_busy;
  filesig_t sig; /* as last read by the owner */
  bool have_sig;
  bool served;       /* watched through c->io */
  uint64_t io_token;
  filesig_t io_sig;  /* as c->io last reported it */
  watch_t *next;
};

static void on_watch_close(uv_handle_t *h) {
  watch_t *w = h->data;
  w->c->pending--;
  maybe_finish(w->c);
}

static void watch_changed(watch_t *w) {
  mg_creds_t *c = w->c;
  w->owner->dirty = true;
  w->owner->dirty_gen++;
  c->file_change_ms = wall_ms();
  MG_DEBUG(MOD, "credentials_file_changed", "creds=%s file=%s", c->name, w->path);
  request_refresh(c, 0);
}

static void sig_from_stat(filesig_t *s, const struct stat *st) {
  s->exists = true;
  s->dev = st->st_dev;
  s->ino = st->st_ino;
  s->size = (uint64_t)st->st_size;
  s->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
  s->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

static void on_watch_stat(uv_fs_t *req) {
  watch_t *w = req->data;
  filesig_t s = {0};
  if (req->result == 0) sig_from_uv(&s, &req->statbuf);
  uv_fs_req_cleanup(req);
  w->stat_busy = false;
  w->c->pending--;
  if (w->c->closing) {
    maybe_finish(w->c);
    return;
  }
  if (!w->have_sig || !sig_eq(&s, &w->sig)) watch_changed(w);
}

static void on_debounce(uv_timer_t *t) {
  watch_t *w = t->data;
  if (w->c->closing) return;
  if (w->hit) { /* an event named the file itself: changed, whatever stat says */
    w->hit = false;
    watch_changed(w);
    return;
  }
  if (w->served) { /* the reader stat()ed it already */
    if (!w->have_sig || !sig_eq(&w->io_sig, &w->sig)) watch_changed(w);
    return;
  }
  if (w->stat_busy) return;
  w->stat_busy = true;
  w->c->pending++;
  if (uv_fs_stat(w->c->loop, &w->statreq, w->path, on_watch_stat) < 0) {
    w->stat_busy = false;
    w->c->pending--;
  }
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status) {
  (void)events;
  watch_t *w = h->data;
  if (w->c->closing) return;
  if (status < 0) {
    MG_DEBUG(MOD, "credentials_watch_error", "creds=%s dir=%s err=%s", w->c->name, w->dir, uv_err_name(status));
    return;
  }
  if (!filename || strcmp(filename, w->base) == 0) w->hit = true;
  uv_timer_start(&w->debounce, on_debounce, DEBOUNCE_MS, 0);
}

static void on_io_change(void *ctx, const mg_fileio_sig_t *sig, bool named) {
  watch_t *w = ctx;
  if (w->c->closing) return;
  w->io_sig = *sig;
  if (named) w->hit = true;
  uv_timer_start(&w->debounce, on_debounce, DEBOUNCE_MS, 0);
}

static void watch_try_start(watch_t *w) {
  if (w->ev_active || w->served) return;
  int rc = uv_fs_event_start(&w->ev, on_fs_event, w->dir, 0);
  w->ev_active = rc == 0;
  if (rc) MG_DEBUG(MOD, "credentials_watch_unavailable", "creds=%s dir=%s err=%s", w->c->name, w->dir, uv_err_name(rc));
}

static watch_t *watch_new(mg_creds_t *c, node_t *owner, const char *path) {
  watch_t *w = mg_calloc(1, sizeof *w);
  if (!w) return NULL;
  w->path = mg_strdup(path);
  const char *slash = w->path ? strrchr(w->path, '/') : NULL;
  w->dir = !w->path ? NULL
           : slash  ? mg_strndup(w->path, slash == w->path ? 1 : (size_t)(slash - w->path))
                    : mg_strdup(".");
  w->base = !w->path ? NULL : mg_strdup(slash ? slash + 1 : w->path);
  if (!w->path || !w->dir || !w->base) {
    mg_free(w->path);
    mg_free(w->dir);
    mg_free(w->base);
    mg_free(w);
    return NULL;
  }
  w->c = c;
  w->owner = owner;
  w->statreq.data = w;
  uv_timer_init(c->loop, &w->debounce);
  w->debounce.data = w;
  uv_fs_event_init(c->loop, &w->ev);
  w->ev.data = w;
  c->pending += 2;
  /* Served but the reader cannot watch (out of memory): our own fs event
   * and stat() still see changes, where this process may look. */
  w->served = io_serves(c, path) && c->io->watch(c->io->ud, path, on_io_change, w, &w->io_token) == 0;
  watch_try_start(w);
  w->next = c->watches;
  c->watches = w;
  return w;
}

static void watch_close(watch_t *w) {
  if (w->served) w->c->io->unwatch(w->c->io->ud, w->io_token);
  w->served = false;
  uv_close((uv_handle_t *)&w->debounce, on_watch_close);
  uv_close((uv_handle_t *)&w->ev, on_watch_close);
}

static void watch_free(watch_t *w) {
  mg_free(w->path);
  mg_free(w->dir);
  mg_free(w->base);
  mg_free(w);
}

/* The stat() fallback: at most once per second, from mg_creds_current. */
static void stat_check(mg_creds_t *c, int64_t now) {
  if (!c->watches || now - c->last_stat_ms < STAT_INTERVAL_MS) return;
  c->last_stat_ms = now;
  for (watch_t *w = c->watches; w; w = w->next) {
    if (!w->have_sig || w->served) continue; /* not read yet: a fetch is on its way; served: c->io checks */
    struct stat st;
    filesig_t s = {0};
    if (stat(w->path, &st) == 0) sig_from_stat(&s, &st);
    if (!sig_eq(&s, &w->sig)) watch_changed(w);
    watch_try_start(w); /* the directory may exist by now */
  }
}

/* ------------------------------------------------------------ profile files */

typedef struct pent {
  char *key;
  char *value; /* may be secret: wiped */
  uint32_t line;
  int prio;  /* credentials file 3, config [profile x] 2, config [default] 1 */
  bool cred; /* from the credentials file */
} pent_t;

typedef struct prof {
  char *name;
  pent_t *v;
  size_t n, cap;
} prof_t;

typedef struct profset {
  prof_t *v;
  size_t n, cap;
} profset_t;

static void profset_free(profset_t *s) {
  for (size_t i = 0; i < s->n; i++) {
    prof_t *p = &s->v[i];
    for (size_t k = 0; k < p->n; k++) {
      mg_free(p->v[k].key);
      mg_mem_free_secret(p->v[k].value);
    }
    mg_free(p->v);
    mg_free(p->name);
  }
  mg_free(s->v);
  memset(s, 0, sizeof *s);
}

static long profset_find(const profset_t *s, mg_str_t name) {
  for (size_t i = 0; i < s->n; i++)
    if (mg_str_eq_c(name, s->v[i].name)) return (long)i;
  return -1;
}

static const pent_t *prof_get(const prof_t *p, const char *key) {
  for (size_t i = 0; i < p->n; i++)
    if (strcasecmp(p->v[i].key, key) == 0) return p->v[i].value[0] ? &p->v[i] : NULL;
  return NULL;
}

typedef struct ini_ctx {
  profset_t *set;
  bool cred;
  long cur;
  int prio;
} ini_ctx_t;

static int ini_item(void *ud, const mg_ini_item_t *it) {
  ini_ctx_t *x = ud;
  profset_t *s = x->set;
  if (it->kind == MG_INI_SECTION) {
    mg_str_t name = it->section;
    x->cur = -1;
    if (x->cred) {
      x->prio = 3;
    } else if (mg_str_eq_c(name, "default")) {
      x->prio = 1;
    } else if (name.n > 8 && memcmp(name.p, "profile", 7) == 0 && (name.p[7] == ' ' || name.p[7] == '\t')) {
      name = mg_str_n(name.p + 8, name.n - 8);
      while (name.n && (name.p[0] == ' ' || name.p[0] == '\t')) {
        name.p++;
        name.n--;
      }
      x->prio = 2;
    } else {
      return 0; /* sso-session, services, plugins, or a config section without "profile " */
    }
    if (!name.n) return 0;
    long i = profset_find(s, name);
    if (i < 0) {
      if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        prof_t *v = mg_reallocarray(s->v, cap, sizeof *v);
        if (!v) return MG_ENOMEM;
        s->v = v;
        s->cap = cap;
      }
      prof_t *p = &s->v[s->n];
      memset(p, 0, sizeof *p);
      p->name = mg_strndup(name.p, name.n);
      if (!p->name) return MG_ENOMEM;
      i = (long)s->n++;
    }
    x->cur = i;
    return 0;
  }
  if (it->kind != MG_INI_PROPERTY || x->cur < 0) return 0;
  prof_t *p = &s->v[x->cur];
  pent_t *e = NULL;
  for (size_t k = 0; k < p->n; k++)
    if (it->key.n == strlen(p->v[k].key) && strncasecmp(p->v[k].key, it->key.p, it->key.n) == 0) e = &p->v[k];
  if (e && e->prio > x->prio) return 0;
  char *value = mg_strndup(it->value.p, it->value.n);
  if (!value) return MG_ENOMEM;
  if (!e) {
    if (p->n == p->cap) {
      size_t cap = p->cap ? p->cap * 2 : 8;
      pent_t *v = mg_reallocarray(p->v, cap, sizeof *v);
      if (!v) {
        mg_mem_free_secret(value);
        return MG_ENOMEM;
      }
      p->v = v;
      p->cap = cap;
    }
    e = &p->v[p->n];
    memset(e, 0, sizeof *e);
    e->key = mg_strndup(it->key.p, it->key.n);
    if (!e->key) {
      mg_mem_free_secret(value);
      return MG_ENOMEM;
    }
    p->n++;
  }
  mg_mem_free_secret(e->value);
  e->value = value;
  e->line = it->line;
  e->prio = x->prio;
  e->cred = x->cred;
  return 0;
}

/* ------------------------------------------------------------ profile plans */

/* A plan is a config tree built from a profile (mg_conf_creds_t, so the
 * same builder makes its nodes). Inside plans, `profile` carries the label
 * of STATIC and PROCESS nodes (e.g. "shared-credentials-file PATH [p]"). */
static void plan_free(mg_conf_creds_t *p) {
  if (!p) return;
  mg_free(p->access_key_id);
  mg_mem_free_secret(p->secret_access_key);
  mg_mem_free_secret(p->session_token);
  mg_free(p->profile);
  mg_free(p->credentials_file);
  mg_free(p->config_file);
  mg_free(p->role_arn);
  mg_free(p->external_id);
  mg_free(p->role_session_name);
  mg_free(p->sts_region);
  mg_free(p->sts_endpoint);
  mg_free(p->web_identity_token_file);
  mg_free(p->process);
  plan_free(p->source);
  mg_free(p);
}

static void hash_str(EVP_MD_CTX *md, const char *s) {
  uint32_t n = s ? (uint32_t)strlen(s) + 1 : 0; /* NULL and "" differ */
  EVP_DigestUpdate(md, &n, sizeof n);
  if (s) EVP_DigestUpdate(md, s, n - 1);
}

static void plan_hash(EVP_MD_CTX *md, const mg_conf_creds_t *p) {
  int32_t k = p ? (int32_t)p->kind : -1;
  EVP_DigestUpdate(md, &k, sizeof k);
  if (!p) return;
  const char *f[] = {p->access_key_id, p->secret_access_key, p->session_token,      p->profile,
                     p->role_arn,      p->external_id,       p->role_session_name,  p->sts_region,
                     p->sts_endpoint,  p->web_identity_token_file, p->process};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) hash_str(md, f[i]);
  EVP_DigestUpdate(md, &p->duration_s, sizeof p->duration_s);
  plan_hash(md, p->source);
}

static int plan_digest(const mg_conf_creds_t *p, unsigned char out[32]) {
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  unsigned int n = 0;
  int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL);
  if (ok) {
    plan_hash(md, p);
    ok = EVP_DigestFinal_ex(md, out, &n) && n == 32;
  }
  EVP_MD_CTX_free(md);
  return ok ? 0 : MG_ENOMEM;
}

typedef struct profile_node {
  node_t base;
  char *profile;
  char *cred_path, *conf_path;
  watch_t *wcred, *wconf;
  rd_t *rcred, *rconf;
  int reads_left, start_err;
  uint64_t gen_at_start;
  bool force, have_plan, plan_static;
  unsigned char plan_sig[32];
  node_t *sub;
  char *sts_region, *sts_endpoint; /* from the configuration: they beat the profile's region */
} profile_node_t;

typedef struct rctx {
  profile_node_t *pn;
  profset_t *set;
  const char *stack[MAX_NESTING + 1];
  int depth;
  char *msg;
  size_t msgsz;
} rctx_t;

static const char *where(const rctx_t *x, const pent_t *e, char *buf, size_t n) {
  snprintf(buf, n, "%s line %u", e->cred ? x->pn->cred_path : x->pn->conf_path, e->line);
  return buf;
}

static int set_or_nomem(char **slot, const char *s) { return mg_conf_set_str(slot, s) < 0 ? MG_ENOMEM : 0; }

static int resolve(rctx_t *x, const char *name, mg_conf_creds_t **out);

/* Static keys of profile p (from either file). */
static int resolve_static(rctx_t *x, const prof_t *p, mg_conf_creds_t **out) {
  char w[300];
  const pent_t *akid = prof_get(p, "aws_access_key_id"), *sec = prof_get(p, "aws_secret_access_key");
  const pent_t *tok = prof_get(p, "aws_session_token");
  if (!akid || !sec) {
    const pent_t *have = akid ? akid : sec;
    if (!have) {
      msgf(x->msg, x->msgsz, "profile \"%s\" has no aws_access_key_id and aws_secret_access_key", p->name);
      return MG_ECREDS;
    }
    msgf(x->msg, x->msgsz, "profile \"%s\" (%s): %s is missing", p->name, where(x, have, w, sizeof w),
         akid ? "aws_secret_access_key" : "aws_access_key_id");
    return MG_ECREDS;
  }
  if (!tok && strncmp(akid->value, "ASIA", 4) == 0) {
    msgf(x->msg, x->msgsz, "profile \"%s\" (%s): aws_session_token is missing for a temporary access key id (ASIA...)",
         p->name, where(x, akid, w, sizeof w));
    return MG_ECREDS;
  }
  mg_conf_creds_t *pc = mg_calloc(1, sizeof *pc);
  if (!pc) return MG_ENOMEM;
  pc->kind = MG_CREDS_STATIC;
  char label[400];
  if (akid->cred) snprintf(label, sizeof label, "shared-credentials-file %s [%s]", x->pn->cred_path, p->name);
  else snprintf(label, sizeof label, "config-file %s [profile %s]", x->pn->conf_path, p->name);
  int rc = set_or_nomem(&pc->access_key_id, akid->value);
  if (!rc) rc = mg_conf_set_secret(&pc->secret_access_key, sec->value) < 0 ? MG_ENOMEM : 0;
  if (!rc && tok) rc = mg_conf_set_secret(&pc->session_token, tok->value) < 0 ? MG_ENOMEM : 0;
  if (!rc) rc = set_or_nomem(&pc->profile, label);
  if (rc) {
    plan_free(pc);
    return rc;
  }
  *out = pc;
  return 0;
}

static int resolve_role(rctx_t *x, const prof_t *p, const pent_t *role, mg_conf_creds_t **out) {
  char w[300];
  const pent_t *sp = prof_get(p, "source_profile"), *cs = prof_get(p, "credential_source");
  const pent_t *wit = prof_get(p, "web_identity_token_file"), *ext = prof_get(p, "external_id");
  const pent_t *rsn = prof_get(p, "role_session_name"), *dur = prof_get(p, "duration_seconds");
  const pent_t *reg = prof_get(p, "region");
  if (sp && cs) {
    msgf(x->msg, x->msgsz, "profile \"%s\" (%s): source_profile and credential_source are both set", p->name,
         where(x, sp, w, sizeof w));
    return MG_ECREDS;
  }
  mg_conf_creds_t *pc = mg_calloc(1, sizeof *pc);
  if (!pc) return MG_ENOMEM;
  int rc = set_or_nomem(&pc->role_arn, role->value);
  if (!rc && rsn) rc = set_or_nomem(&pc->role_session_name, rsn->value);
  if (!rc && reg) rc = set_or_nomem(&pc->sts_region, reg->value);
  if (rc) goto out;
  if (wit && !sp && !cs) {
    pc->kind = MG_CREDS_WEB_IDENTITY;
    rc = set_or_nomem(&pc->web_identity_token_file, wit->value);
    goto out;
  }
  pc->kind = MG_CREDS_ASSUME_ROLE;
  if (ext && (rc = set_or_nomem(&pc->external_id, ext->value)) != 0) goto out;
  if (dur) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(dur->value, &end, 10);
    if (errno || *end || dur->value[0] < '0' || dur->value[0] > '9' || v < 1 || v > 43200) {
      msgf(x->msg, x->msgsz, "profile \"%s\" (%s): duration_seconds must be a number of seconds up to 43200",
           p->name, where(x, dur, w, sizeof w));
      rc = MG_ECREDS;
      goto out;
    }
    pc->duration_s = v;
  }
  if (sp) {
    if (strcmp(sp->value, p->name) == 0) { /* its own static keys are the source */
      rc = resolve_static(x, p, &pc->source);
      goto out;
    }
    for (int i = 0; i <= x->depth; i++) {
      if (strcmp(x->stack[i], sp->value) == 0) {
        msgf(x->msg, x->msgsz, "profile \"%s\" (%s): source_profile \"%.64s\" leads back to itself", p->name,
             where(x, sp, w, sizeof w), sp->value);
        rc = MG_ECREDS;
        goto out;
      }
    }
    if (x->depth + 1 >= MAX_NESTING) {
      msgf(x->msg, x->msgsz, "profile \"%s\": more than %d chained source_profile roles", p->name, MAX_NESTING);
      rc = MG_ECREDS;
      goto out;
    }
    x->stack[++x->depth] = sp->value;
    rc = resolve(x, sp->value, &pc->source);
    x->depth--;
    if (rc == MG_ENOTFOUND) {
      char inner[MSG_MAX];
      snprintf(inner, sizeof inner, "%s", x->msg);
      msgf(x->msg, x->msgsz, "profile \"%s\" (%s): source_profile: %s", p->name, where(x, sp, w, sizeof w), inner);
      rc = MG_ECREDS;
    }
    goto out;
  }
  if (cs) {
    mg_creds_kind_t k;
    if (strcmp(cs->value, "Environment") == 0) k = MG_CREDS_ENV;
    else if (strcmp(cs->value, "Ec2InstanceMetadata") == 0) k = MG_CREDS_IMDS;
    else if (strcmp(cs->value, "EcsContainer") == 0) k = MG_CREDS_ECS;
    else {
      msgf(x->msg, x->msgsz,
           "profile \"%s\" (%s): credential_source must be Environment, Ec2InstanceMetadata or EcsContainer",
           p->name, where(x, cs, w, sizeof w));
      rc = MG_ECREDS;
      goto out;
    }
    pc->source = mg_calloc(1, sizeof *pc->source);
    if (!pc->source) rc = MG_ENOMEM;
    else pc->source->kind = k;
    goto out;
  }
  msgf(x->msg, x->msgsz,
       "profile \"%s\" (%s): role_arn needs source_profile, credential_source or web_identity_token_file", p->name,
       where(x, role, w, sizeof w));
  rc = MG_ECREDS;
out:
  if (rc) plan_free(pc);
  else *out = pc;
  return rc;
}

/* The profile's credentials as a plan, in botocore's order: role_arn
 * (assume role / web identity), static keys, credential_process.
 * MG_ENOTFOUND: the profile does not exist or holds no credentials. */
static int resolve(rctx_t *x, const char *name, mg_conf_creds_t **out) {
  long i = profset_find(x->set, mg_str(name));
  if (i < 0) {
    msgf(x->msg, x->msgsz, "profile \"%.64s\" is in neither %s nor %s", name, x->pn->cred_path, x->pn->conf_path);
    return MG_ENOTFOUND;
  }
  const prof_t *p = &x->set->v[i];
  const pent_t *role = prof_get(p, "role_arn");
  if (role) return resolve_role(x, p, role, out);
  if (prof_get(p, "aws_access_key_id") || prof_get(p, "aws_secret_access_key")) return resolve_static(x, p, out);
  const pent_t *cp = prof_get(p, "credential_process");
  if (cp) {
    mg_conf_creds_t *pc = mg_calloc(1, sizeof *pc);
    if (!pc) return MG_ENOMEM;
    pc->kind = MG_CREDS_PROCESS;
    char label[300];
    snprintf(label, sizeof label, "credential_process [profile %s]", p->name);
    int rc = set_or_nomem(&pc->process, cp->value);
    if (!rc) rc = set_or_nomem(&pc->profile, label);
    if (rc) plan_free(pc);
    else *out = pc;
    return rc;
  }
  if (prof_get(p, "sso_start_url") || prof_get(p, "sso_session")) {
    msgf(x->msg, x->msgsz, "profile \"%s\" uses IAM Identity Center (SSO), which moongate does not support; "
         "use credential_process or a role", p->name);
    return MG_ECREDS;
  }
  msgf(x->msg, x->msgsz, "profile \"%s\" has no credentials (no aws_access_key_id, role_arn or credential_process)",
       p->name);
  return MG_ENOTFOUND;
}

static int node_build(mg_creds_t *c, const mg_conf_creds_t *conf, bool in_plan, bool in_chain, int depth,
                      node_t **out, char *msg, size_t msgsz);

static int plan_apply_sts(mg_conf_creds_t *p, const char *region, const char *endpoint) {
  for (; p; p = p->source) {
    if (str_has(region) && mg_conf_set_str(&p->sts_region, region) < 0) return MG_ENOMEM;
    if (str_has(endpoint) && !p->sts_endpoint && mg_conf_set_str(&p->sts_endpoint, endpoint) < 0) return MG_ENOMEM;
  }
  return 0;
}

static void profile_on_sub(void *ud, int err, mg_creds_value_t *v, const char *msg) {
  profile_node_t *pn = ud;
  if (err) {
    node_failf(&pn->base, err == MG_ENOTFOUND ? MG_ECREDS : err, "profile \"%s\": %s", pn->profile, msg);
    return;
  }
  node_finish(&pn->base, 0, mg_creds_value_ref(v), NULL);
}

static void profile_drop_reads(profile_node_t *pn) {
  rd_free(pn->rcred);
  rd_free(pn->rconf);
  pn->rcred = pn->rconf = NULL;
}

static int check_read(rd_t *r, watch_t *w, char *msg, size_t msgsz) {
  if (r->err == 0 || r->err == MG_ENOTFOUND) {
    if (w) {
      memset(&w->sig, 0, sizeof w->sig);
      if (!r->err) w->sig = r->sig;
      w->have_sig = true;
    }
    return 0;
  }
  rd_describe(r, msg, msgsz);
  return r->err == MG_EAGAIN || r->err == MG_ETOOBIG ? r->err : MG_EIO;
}

static int parse_file(rd_t *r, bool cred, profset_t *set, char *msg, size_t msgsz) {
  if (r->err) return 0; /* missing: nothing to parse */
  ini_ctx_t x = {set, cred, -1, 0};
  mg_ini_error_t e;
  int rc = mg_ini_parse(r->buf.data ? r->buf.data : "", r->buf.len, ini_item, &x, &e);
  const char *what = cred ? "shared credentials file" : "config file";
  if (rc == MG_EPARSE) msgf(msg, msgsz, "%s %s line %u: %s", what, r->path, e.line, e.msg);
  else if (rc) msgf(msg, msgsz, "%s %s: %s", what, r->path, mg_err_str(rc));
  return rc;
}

/* A writer that truncates and rewrites in place leaves moments where the
 * file holds a prefix. A prefix that still parses (cut at a line end) is
 * caught by the key checks (a temporary key without its token); a prefix
 * cut inside a line has no final newline: if the file was modified within
 * the last second, wait for the writer rather than use it. */
static bool half_written(const rd_t *r, int64_t now, int64_t *age_ms) {
  if (r->err || r->buf.len == 0 || r->buf.data[r->buf.len - 1] == '\n') return false;
  *age_ms = now - r->sig.mtime_ns / 1000000;
  return *age_ms < FRESH_WRITE_MS;
}

static void profile_on_files(profile_node_t *pn) {
  node_t *n = &pn->base;
  mg_creds_t *c = n->c;
  char msg[MSG_MAX] = "";
  profset_t set = {0};
  mg_conf_creds_t *plan = NULL;
  int64_t now = wall_ms(), age = 0;
  int rc = 0;
  if (pn->start_err) {
    rc = pn->start_err;
    msgf(msg, sizeof msg, "cannot read %s: %s", pn->conf_path, mg_err_str(rc));
    goto fail;
  }
  rc = check_read(pn->rcred, pn->wcred, msg, sizeof msg);
  if (!rc) rc = check_read(pn->rconf, pn->wconf, msg, sizeof msg);
  if (rc) goto fail;
  if (pn->rcred->err && pn->rconf->err) {
    msgf(msg, sizeof msg, "neither %s nor %s exists", pn->cred_path, pn->conf_path);
    rc = MG_ENOTFOUND;
    goto fail;
  }
  if (half_written(pn->rcred, now, &age) || half_written(pn->rconf, now, &age)) {
    msgf(msg, sizeof msg,
         "%s ends without a newline and changed less than a second ago: waiting for the writer to finish",
         half_written(pn->rcred, now, &age) ? pn->cred_path : pn->conf_path);
    rc = MG_EAGAIN;
    goto fail;
  }
  if ((rc = parse_file(pn->rcred, true, &set, msg, sizeof msg)) != 0) goto fail;
  if ((rc = parse_file(pn->rconf, false, &set, msg, sizeof msg)) != 0) goto fail;
  rctx_t x = {.pn = pn, .set = &set, .stack = {pn->profile}, .msg = msg, .msgsz = sizeof msg};
  if ((rc = resolve(&x, pn->profile, &plan)) != 0) goto fail;
  if ((rc = plan_apply_sts(plan, pn->sts_region, pn->sts_endpoint)) != 0) {
    msgf(msg, sizeof msg, "out of memory");
    goto fail;
  }
  profset_free(&set);
  profile_drop_reads(pn);
  n->dirty = n->dirty_gen != pn->gen_at_start; /* another change arrived while reading */
  if (plan->kind == MG_CREDS_STATIC) {
    int err;
    mg_creds_value_t *v =
        value_new("profile", mg_str(plan->access_key_id), mg_str(plan->secret_access_key), mg_str(plan->session_token),
                  0, plan->profile, now, &err, msg, sizeof msg);
    char label[400];
    snprintf(label, sizeof label, "%s", plan->profile);
    plan_free(plan);
    if (!v) {
      node_failf(n, err, "%s: %s", label, msg);
      return;
    }
    node_free(pn->sub);
    pn->sub = NULL;
    pn->have_plan = pn->plan_static = true;
    node_finish(n, 0, v, NULL);
    return;
  }
  unsigned char sig[32];
  if ((rc = plan_digest(plan, sig)) != 0) {
    plan_free(plan);
    node_failf(n, rc, "profile \"%s\": out of memory", pn->profile);
    return;
  }
  if (!pn->have_plan || pn->plan_static || memcmp(sig, pn->plan_sig, sizeof sig) != 0) {
    node_t *sub = NULL;
    rc = node_build(c, plan, true, false, 0, &sub, msg, sizeof msg);
    plan_free(plan);
    node_free(pn->sub);
    pn->sub = sub;
    pn->have_plan = rc == 0;
    pn->plan_static = false;
    if (rc) {
      node_failf(n, rc == MG_ENOMEM ? rc : MG_ECREDS, "profile \"%s\": %s", pn->profile, msg);
      return;
    }
    memcpy(pn->plan_sig, sig, sizeof sig);
  } else {
    plan_free(plan);
  }
  node_get(pn->sub, pn->force, profile_on_sub, pn);
  return;
fail:
  profset_free(&set);
  plan_free(plan);
  profile_drop_reads(pn);
  node_finish(n, rc, NULL, msg);
}

static void profile_on_read(void *ud, rd_t *r) {
  (void)r;
  profile_node_t *pn = ud;
  if (--pn->reads_left == 0) profile_on_files(pn);
}

static void profile_fetch(node_t *n, bool force) {
  profile_node_t *pn = (profile_node_t *)n;
  pn->force = force;
  if (!n->dirty && !force && pn->have_plan) { /* files unchanged since the plan was made */
    if (pn->plan_static) node_finish(n, 0, mg_creds_value_ref(n->cached), NULL);
    else node_get(pn->sub, false, profile_on_sub, pn);
    return;
  }
  pn->gen_at_start = n->dirty_gen;
  pn->start_err = 0;
  pn->reads_left = 1; /* reads complete asynchronously: counting after the starts is safe */
  int rc = rd_start(n->c, pn->cred_path, MG_INI_MAX_INPUT, profile_on_read, pn, &pn->rcred);
  if (rc) {
    node_failf(n, rc, "cannot read %s: %s", pn->cred_path, mg_err_str(rc));
    return;
  }
  rc = rd_start(n->c, pn->conf_path, MG_INI_MAX_INPUT, profile_on_read, pn, &pn->rconf);
  if (rc) pn->start_err = rc; /* reported when the first read completes */
  else pn->reads_left = 2;
}

static void profile_cancel(node_t *n) { (void)n; /* reads finish on their own; callbacks see closing */ }

static void profile_destroy(node_t *n) {
  profile_node_t *pn = (profile_node_t *)n;
  node_free(pn->sub);
  profile_drop_reads(pn);
  mg_free(pn->profile);
  mg_free(pn->cred_path);
  mg_free(pn->conf_path);
  mg_free(pn->sts_region);
  mg_free(pn->sts_endpoint);
}

static const node_vt_t profile_vt = {"profile", false, profile_fetch, profile_cancel, profile_destroy};

/* ------------------------------------------------------------ credential_process */

#define PROCESS_OUTPUT_LIMIT (64 * 1024) /* as the AWS SDK for Java */
#define PROCESS_STDERR_LIMIT 2048

/* Runs `/bin/sh -c COMMAND` (as the SDKs do on Unix) in its own process
 * group with a deadline; the whole group is killed on timeout or free.
 * stdout is read into a buffer reserved up front (never reallocated) and
 * wiped; stderr's first line goes into the error message. */
typedef struct proc_node {
  node_t base;
  char *cmd;
  uv_process_t proc;
  uv_pipe_t out, err;
  uv_timer_t timer;
  int open; /* handles of the current run not yet closed */
  bool running, exited, out_open, err_open, timed_out, too_big;
  int spawn_err, term_signal;
  int64_t status;
  mg_buf_t obuf, ebuf;
  char rbuf[4096];
} proc_node_t;

static void proc_complete(proc_node_t *pn) {
  node_t *n = &pn->base;
  pn->running = false;
  char msg[MSG_MAX];
  mg_creds_value_t *v = NULL;
  int rc;
  if (pn->spawn_err) {
    rc = MG_EIO;
    msgf(msg, sizeof msg, "%s: cannot start /bin/sh: %s", n->desc, uv_strerror(pn->spawn_err));
  } else if (pn->timed_out) {
    rc = MG_ETIMEDOUT;
    msgf(msg, sizeof msg, "%s did not finish within %" PRIu64 " ms and was killed", n->desc,
         n->c->opts.process_timeout_ms);
  } else if (pn->too_big) {
    rc = MG_ETOOBIG;
    msgf(msg, sizeof msg, "%s wrote more than %d bytes and was killed", n->desc, PROCESS_OUTPUT_LIMIT);
  } else if (pn->term_signal) {
    rc = MG_ECREDS;
    msgf(msg, sizeof msg, "%s was killed by signal %d", n->desc, pn->term_signal);
  } else if (pn->status) {
    char first[200];
    size_t len = pn->ebuf.len ? strcspn(pn->ebuf.data, "\n") : 0;
    clean_copy(first, sizeof first, pn->ebuf.data ? pn->ebuf.data : "", len, 160);
    rc = MG_ECREDS;
    msgf(msg, sizeof msg, "%s exited with status %" PRId64 "%s%s", n->desc, pn->status, len ? ": " : "", first);
  } else {
    char m[MSG_MAX];
    rc = mg_creds_parse_json(MG_CREDS_DOC_PROCESS, pn->obuf.data ? pn->obuf.data : "", pn->obuf.len, wall_ms(),
                             "process", n->desc, &v, m, sizeof m);
    if (rc) msgf(msg, sizeof msg, "%s output: %s", n->desc, m);
  }
  mg_buf_cleanup_secret(&pn->obuf);
  mg_buf_cleanup(&pn->ebuf);
  node_finish(n, rc, v, rc ? msg : NULL);
}

static void proc_on_close(uv_handle_t *h) {
  proc_node_t *pn = h->data;
  mg_creds_t *c = pn->base.c;
  c->pending--;
  if (--pn->open > 0) return;
  if (c->closing) {
    mg_buf_cleanup_secret(&pn->obuf);
    mg_buf_cleanup(&pn->ebuf);
    maybe_finish(c);
    return;
  }
  proc_complete(pn);
}

static void proc_maybe_done(proc_node_t *pn) {
  if (pn->exited && !pn->out_open && !pn->err_open && !uv_is_closing((uv_handle_t *)&pn->timer))
    uv_close((uv_handle_t *)&pn->timer, proc_on_close);
}

static void proc_kill(proc_node_t *pn) {
  /* Once sh exited and nothing holds its pipes, the group is gone and its
   * id may be reused: never signal it then. */
  if (pn->exited && !pn->out_open && !pn->err_open) return;
  if (pn->proc.pid > 0) kill(-pn->proc.pid, SIGKILL); /* the group: sh and what it started */
  if (!pn->exited) uv_process_kill(&pn->proc, SIGKILL);
}

static void proc_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  proc_node_t *pn = h->data;
  *buf = uv_buf_init(pn->rbuf, sizeof pn->rbuf);
}

static void proc_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  proc_node_t *pn = s->data;
  bool is_out = s == (uv_stream_t *)&pn->out;
  if (nread > 0) {
    if (is_out) {
      if (mg_buf_append(&pn->obuf, buf->base, (size_t)nread) != 0 && !pn->too_big) {
        pn->too_big = true;
        proc_kill(pn);
      }
    } else if (pn->ebuf.len < PROCESS_STDERR_LIMIT) {
      size_t room = PROCESS_STDERR_LIMIT - pn->ebuf.len;
      mg_buf_append(&pn->ebuf, buf->base, (size_t)nread < room ? (size_t)nread : room);
    }
    mg_mem_wipe(buf->base, (size_t)nread);
    return;
  }
  if (nread == 0) return;
  uv_read_stop(s);
  if (is_out) pn->out_open = false;
  else pn->err_open = false;
  uv_close((uv_handle_t *)s, proc_on_close);
  proc_maybe_done(pn);
}

static void proc_on_exit(uv_process_t *p, int64_t status, int term_signal) {
  proc_node_t *pn = p->data;
  pn->exited = true;
  pn->status = status;
  pn->term_signal = term_signal;
  uv_close((uv_handle_t *)p, proc_on_close);
  proc_maybe_done(pn);
}

static void proc_on_timeout(uv_timer_t *t) {
  proc_node_t *pn = t->data;
  pn->timed_out = true;
  proc_kill(pn);
}

static void proc_fetch(node_t *n, bool force) {
  (void)force;
  proc_node_t *pn = (proc_node_t *)n;
  mg_creds_t *c = n->c;
  pn->exited = pn->timed_out = pn->too_big = false;
  pn->spawn_err = pn->term_signal = 0;
  pn->status = 0;
  mg_buf_init(&pn->obuf, PROCESS_OUTPUT_LIMIT);
  mg_buf_init(&pn->ebuf, PROCESS_STDERR_LIMIT + 1);
  if (mg_buf_reserve(&pn->obuf, PROCESS_OUTPUT_LIMIT) != 0) {
    node_failf(n, MG_ENOMEM, "%s: out of memory", n->desc);
    return;
  }
  uv_pipe_init(c->loop, &pn->out, 0);
  uv_pipe_init(c->loop, &pn->err, 0);
  uv_timer_init(c->loop, &pn->timer);
  pn->out.data = pn->err.data = pn->timer.data = pn->proc.data = pn;
  pn->open = 4; /* out, err, timer, and the process handle (closed even when spawn fails) */
  c->pending += 4;
  pn->running = true;
  char *args[] = {"/bin/sh", "-c", pn->cmd, NULL};
  uv_stdio_container_t stdio[3] = {
      {.flags = UV_IGNORE},
      {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&pn->out},
      {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&pn->err},
  };
  uv_process_options_t o = {.exit_cb = proc_on_exit,
                            .file = "/bin/sh",
                            .args = args,
                            .flags = UV_PROCESS_DETACHED, /* own process group: killed as a whole */
                            .stdio_count = 3,
                            .stdio = stdio};
  int rc = uv_spawn(c->loop, &pn->proc, &o);
  if (rc) {
    pn->spawn_err = rc;
    pn->exited = true;
    uv_close((uv_handle_t *)&pn->proc, proc_on_close);
    uv_close((uv_handle_t *)&pn->out, proc_on_close);
    uv_close((uv_handle_t *)&pn->err, proc_on_close);
    uv_close((uv_handle_t *)&pn->timer, proc_on_close);
    return;
  }
  pn->out_open = pn->err_open = true;
  uv_read_start((uv_stream_t *)&pn->out, proc_alloc, proc_on_read);
  uv_read_start((uv_stream_t *)&pn->err, proc_alloc, proc_on_read);
  uv_timer_start(&pn->timer, proc_on_timeout, c->opts.process_timeout_ms, 0);
}

static void proc_cancel(node_t *n) {
  proc_node_t *pn = (proc_node_t *)n;
  if (pn->running) proc_kill(pn);
}

static void proc_destroy(node_t *n) {
  proc_node_t *pn = (proc_node_t *)n;
  mg_mem_free_secret(pn->cmd);
  mg_mem_wipe(pn->rbuf, sizeof pn->rbuf);
}

static const node_vt_t proc_vt = {"process", true, proc_fetch, proc_cancel, proc_destroy};

/* ------------------------------------------------------------ IMDSv2 */

enum { IMDS_TOKEN, IMDS_ROLE, IMDS_CREDS };

typedef struct imds_node {
  node_t base;
  char endpoint[256];
  bool disabled;
  char *token; /* session token of the metadata service; wiped */
  uint64_t token_until; /* uv_now */
  char role[160];
  int step;
  bool retried;
  hreq_t r;
} imds_node_t;

static void imds_on_http(void *ud, int err, const char *detail, mg_http_response_t *resp);

static void imds_request(imds_node_t *in, int step) {
  node_t *n = &in->base;
  char url[512];
  const char *method = "GET";
  mg_http_header_t h;
  in->step = step;
  if (step == IMDS_TOKEN) {
    snprintf(url, sizeof url, "%s/latest/api/token", in->endpoint);
    method = "PUT";
    h = (mg_http_header_t){"X-aws-ec2-metadata-token-ttl-seconds", "21600"};
  } else {
    snprintf(url, sizeof url, "%s/latest/meta-data/iam/security-credentials/%s", in->endpoint,
             step == IMDS_CREDS ? in->role : "");
    h = (mg_http_header_t){"X-aws-ec2-metadata-token", in->token};
  }
  uint64_t t = n->c->opts.imds_timeout_ms;
  mg_http_request_t req = {.method = method, .url = url, .headers = &h, .nheaders = 1, .connect_timeout_ms = t,
                           .timeout_ms = t};
  int rc = hreq_start(n, &in->r, &req, imds_on_http);
  if (rc) node_failf(n, rc, "instance metadata at %s: cannot send a request: %s", in->endpoint, mg_err_str(rc));
}

static void imds_drop_token(imds_node_t *in) {
  mg_mem_free_secret(in->token);
  in->token = NULL;
  in->token_until = 0;
}

static void imds_fail(imds_node_t *in, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void imds_fail(imds_node_t *in, int err, const char *fmt, ...) {
  char msg[MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  hreq_release(&in->r);
  node_finish(&in->base, err, NULL, msg);
}

/* 401 on a metadata read: the session token expired early; one new one. */
static bool imds_retry_token(imds_node_t *in) {
  imds_drop_token(in);
  if (in->retried) return false;
  in->retried = true;
  imds_request(in, IMDS_TOKEN);
  return true;
}

static void imds_on_http(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  imds_node_t *in = ud;
  node_t *n = &in->base;
  if (!hreq_end(n, &in->r)) return;
  if (err) {
    /* No metadata service answering on the token request: not on EC2. */
    imds_fail(in, in->step == IMDS_TOKEN ? MG_ENOTFOUND : err, "no instance metadata service at %s (%s: %s)",
              in->endpoint, mg_err_name(err), detail ? detail : "");
    return;
  }
  int st = resp->status;
  mg_buf_t *b = &in->r.body;
  switch (in->step) {
  case IMDS_TOKEN: {
    if (st == 403) {
      imds_fail(in, MG_ECREDS, "instance metadata at %s refused a session token (HTTP 403): the metadata service "
                "is disabled for this instance", in->endpoint);
      return;
    }
    if (st != 200) {
      imds_fail(in, MG_ESTATUS, "instance metadata token request at %s answered HTTP %d", in->endpoint, st);
      return;
    }
    size_t len = b->len;
    while (len && (unsigned char)b->data[len - 1] <= ' ') len--;
    if (!secret_ok(b->data, len, 4096)) {
      imds_fail(in, MG_EHTTP, "instance metadata at %s sent an unusable session token", in->endpoint);
      return;
    }
    imds_drop_token(in);
    in->token = mg_strndup(b->data, len);
    if (!in->token) {
      imds_fail(in, MG_ENOMEM, "out of memory");
      return;
    }
    in->token_until = uv_now(n->c->loop) + (IMDS_TOKEN_TTL_S - 60) * 1000ull;
    imds_request(in, IMDS_ROLE);
    return;
  }
  case IMDS_ROLE: {
    if (st == 401 && imds_retry_token(in)) return;
    if (st == 404) {
      imds_fail(in, MG_ECREDS, "no IAM role is attached to this instance (instance metadata at %s answered 404)",
                in->endpoint);
      return;
    }
    if (st != 200) {
      imds_fail(in, MG_ESTATUS, "instance metadata role listing at %s answered HTTP %d", in->endpoint, st);
      return;
    }
    size_t len = b->data ? strcspn(b->data, "\r\n") : 0;
    bool ok = len > 0 && len < sizeof in->role;
    for (size_t i = 0; ok && i < len; i++) {
      unsigned char ch = (unsigned char)b->data[i];
      ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           strchr("+=,.@_-", ch) != NULL;
    }
    if (!ok) {
      imds_fail(in, MG_EHTTP, "instance metadata at %s listed no usable role name", in->endpoint);
      return;
    }
    memcpy(in->role, b->data, len);
    in->role[len] = '\0';
    imds_request(in, IMDS_CREDS);
    return;
  }
  default: {
    if (st == 401 && imds_retry_token(in)) return;
    if (st != 200) {
      imds_fail(in, st == 404 ? MG_ECREDS : MG_ESTATUS, "instance metadata credentials of role %s at %s: HTTP %d",
                in->role, in->endpoint, st);
      return;
    }
    char src[sizeof in->endpoint + sizeof in->role + 16], m[MSG_MAX];
    snprintf(src, sizeof src, "imds %s role %s", in->endpoint, in->role);
    mg_creds_value_t *v = NULL;
    int rc = mg_creds_parse_json(MG_CREDS_DOC_IMDS, b->data ? b->data : "", b->len, wall_ms(), "imds", src, &v, m,
                                 sizeof m);
    hreq_release(&in->r);
    if (rc) {
      node_failf(n, rc, "instance metadata credentials of role %s: %s", in->role, m);
      return;
    }
    node_finish(n, 0, v, NULL);
  }
  }
}

static void imds_fetch(node_t *n, bool force) {
  (void)force;
  imds_node_t *in = (imds_node_t *)n;
  if (in->disabled) {
    node_failf(n, MG_ENOTFOUND, "AWS_EC2_METADATA_DISABLED is true");
    return;
  }
  in->retried = false;
  if (in->token && uv_now(n->c->loop) < in->token_until) imds_request(in, IMDS_ROLE);
  else imds_request(in, IMDS_TOKEN);
}

static void imds_cancel(node_t *n) { hreq_cancel(&((imds_node_t *)n)->r); }

static void imds_destroy(node_t *n) {
  imds_node_t *in = (imds_node_t *)n;
  imds_drop_token(in);
  hreq_release(&in->r);
}

static const node_vt_t imds_vt = {"imds", true, imds_fetch, imds_cancel, imds_destroy};

/* ------------------------------------------------------------ ECS / EKS Pod Identity */

typedef struct ecs_node {
  node_t base;
  char *url;
  char *cfg_error; /* set when the variables are missing or the URL is refused */
  bool not_configured;
  char *token;      /* AWS_CONTAINER_AUTHORIZATION_TOKEN; wiped */
  char *token_file; /* AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, re-read on every fetch */
  rd_t *rd;
  char *auth; /* the header value of the current request; wiped */
  hreq_t r;
} ecs_node_t;

/* Plain http only to loopback or to the ECS / EKS link-local agents. */
static bool ecs_host_ok(mg_str_t h) {
  return is_loopback_host(h) || mg_str_eq_c(h, "169.254.170.2") || mg_str_eq_c(h, "169.254.170.23") ||
         mg_str_eq_c(h, "fd00:ec2::23");
}

static void ecs_on_http(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  ecs_node_t *en = ud;
  node_t *n = &en->base;
  if (!hreq_end(n, &en->r)) return;
  mg_mem_free_secret(en->auth);
  en->auth = NULL;
  char m[MSG_MAX];
  if (err) {
    hreq_release(&en->r);
    node_failf(n, err, "container credentials endpoint %s: %s", en->url, detail ? detail : mg_err_str(err));
    return;
  }
  mg_buf_t *b = &en->r.body;
  if (resp->status != 200) {
    int st = resp->status;
    hreq_release(&en->r);
    node_failf(n, st == 401 || st == 403 ? MG_ECREDS : MG_ESTATUS,
               "container credentials endpoint %s answered HTTP %d%s", en->url, st,
               st == 401 || st == 403 ? " (check the authorization token)" : "");
    return;
  }
  mg_creds_value_t *v = NULL;
  char src[400];
  snprintf(src, sizeof src, "ecs %s", en->url);
  int rc =
      mg_creds_parse_json(MG_CREDS_DOC_ECS, b->data ? b->data : "", b->len, wall_ms(), "ecs", src, &v, m, sizeof m);
  hreq_release(&en->r);
  if (rc) {
    node_failf(n, rc, "container credentials endpoint %s: %s", en->url, m);
    return;
  }
  node_finish(n, 0, v, NULL);
}

static void ecs_request(ecs_node_t *en, const char *token, size_t tlen) {
  node_t *n = &en->base;
  mg_http_header_t h;
  size_t nh = 0;
  if (token) {
    en->auth = mg_strndup(token, tlen);
    if (!en->auth) {
      node_failf(n, MG_ENOMEM, "out of memory");
      return;
    }
    h = (mg_http_header_t){"Authorization", en->auth};
    nh = 1;
  }
  mg_http_request_t req = {.method = "GET", .url = en->url, .headers = &h, .nheaders = nh,
                           .timeout_ms = http_timeout(n->c)};
  int rc = hreq_start(n, &en->r, &req, ecs_on_http);
  if (rc) {
    mg_mem_free_secret(en->auth);
    en->auth = NULL;
    node_failf(n, rc, "container credentials endpoint %s: %s", en->url,
               rc == MG_EINVAL ? "the authorization token is not a valid header value" : mg_err_str(rc));
  }
}

static void ecs_on_token(void *ud, rd_t *r) {
  ecs_node_t *en = ud;
  char m[MSG_MAX];
  size_t n = 0;
  const char *t = rd_token(r, &n, m, sizeof m);
  if (!t) {
    rd_free(en->rd);
    en->rd = NULL;
    node_failf(&en->base, MG_ECREDS, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: %s", m);
    return;
  }
  ecs_request(en, t, n);
  rd_free(en->rd);
  en->rd = NULL;
}

static void ecs_fetch(node_t *n, bool force) {
  (void)force;
  ecs_node_t *en = (ecs_node_t *)n;
  if (en->not_configured || en->cfg_error) {
    node_failf(n, en->not_configured ? MG_ENOTFOUND : MG_ECONFIG, "%s",
               en->cfg_error ? en->cfg_error : "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI and _FULL_URI are not set");
    return;
  }
  if (en->token_file) {
    int rc = rd_start(n->c, en->token_file, TOKEN_FILE_LIMIT, ecs_on_token, en, &en->rd);
    if (rc) node_failf(n, rc, "cannot read %s: %s", en->token_file, mg_err_str(rc));
    return;
  }
  ecs_request(en, en->token, en->token ? strlen(en->token) : 0);
}

static void ecs_cancel(node_t *n) { hreq_cancel(&((ecs_node_t *)n)->r); }

static void ecs_destroy(node_t *n) {
  ecs_node_t *en = (ecs_node_t *)n;
  mg_free(en->url);
  mg_free(en->cfg_error);
  mg_mem_free_secret(en->token);
  mg_free(en->token_file);
  mg_mem_free_secret(en->auth);
  rd_free(en->rd);
  hreq_release(&en->r);
}

static const node_vt_t ecs_vt = {"ecs", true, ecs_fetch, ecs_cancel, ecs_destroy};

/* ------------------------------------------------------------ web identity */

typedef struct webid_node {
  node_t base;
  char *token_file, *role_arn, *session_name;
  bool not_configured;
  char *cfg_error;
  sts_t sts;
  rd_t *rd;
  mg_buf_t form; /* holds the identity token: wiped */
  hreq_t r;
} webid_node_t;

static void session_name(const char *configured, char *out, size_t outsz) {
  if (str_has(configured)) snprintf(out, outsz, "%s", configured);
  else snprintf(out, outsz, "moongate-%" PRId64, wall_ms() / 1000);
}

static void webid_on_http(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  webid_node_t *wn = ud;
  node_t *n = &wn->base;
  if (!hreq_end(n, &wn->r)) return;
  mg_buf_cleanup_secret(&wn->form);
  if (err) {
    hreq_release(&wn->r);
    node_failf(n, err, "STS AssumeRoleWithWebIdentity at %s: %s", wn->sts.url, detail ? detail : mg_err_str(err));
    return;
  }
  char src[400], m[MSG_MAX];
  snprintf(src, sizeof src, "web-identity %s", wn->role_arn);
  mg_creds_value_t *v = NULL;
  mg_buf_t *b = &wn->r.body;
  int rc = mg_creds_parse_sts("AssumeRoleWithWebIdentity", resp->status, b->data ? b->data : "", b->len, wall_ms(),
                              "web_identity", src, &v, m, sizeof m);
  hreq_release(&wn->r);
  if (rc) {
    node_failf(n, rc, "%s (role %s)", m, wn->role_arn);
    return;
  }
  node_finish(n, 0, v, NULL);
}

static void webid_on_token(void *ud, rd_t *r) {
  webid_node_t *wn = ud;
  node_t *n = &wn->base;
  char m[MSG_MAX], sess[80];
  size_t tlen = 0;
  const char *t = rd_token(r, &tlen, m, sizeof m);
  if (!t) {
    rd_free(wn->rd);
    wn->rd = NULL;
    node_failf(n, MG_ECREDS, "web identity token file: %s", m);
    return;
  }
  session_name(wn->session_name, sess, sizeof sess);
  mg_buf_init(&wn->form, 0);
  int rc = mg_buf_reserve(&wn->form, 3 * tlen + 3 * strlen(wn->role_arn) + 512); /* no realloc of the token */
  if (!rc) rc = form_add(&wn->form, "Action", "AssumeRoleWithWebIdentity", 25);
  if (!rc) rc = form_add(&wn->form, "Version", STS_VERSION, strlen(STS_VERSION));
  if (!rc) rc = form_add(&wn->form, "RoleArn", wn->role_arn, strlen(wn->role_arn));
  if (!rc) rc = form_add(&wn->form, "RoleSessionName", sess, strlen(sess));
  if (!rc) rc = form_add(&wn->form, "WebIdentityToken", t, tlen);
  rd_free(wn->rd);
  wn->rd = NULL;
  if (!rc) rc = sts_post(n, &wn->r, &wn->sts, &wn->form, NULL, webid_on_http, m, sizeof m);
  else msgf(m, sizeof m, "out of memory");
  if (rc) {
    mg_buf_cleanup_secret(&wn->form);
    node_failf(n, rc, "%s", m);
  }
}

static void webid_fetch(node_t *n, bool force) {
  (void)force;
  webid_node_t *wn = (webid_node_t *)n;
  if (wn->not_configured || wn->cfg_error) {
    node_failf(n, wn->not_configured ? MG_ENOTFOUND : MG_ECONFIG, "%s",
               wn->cfg_error ? wn->cfg_error : "AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN are not set");
    return;
  }
  int rc = rd_start(n->c, wn->token_file, TOKEN_FILE_LIMIT, webid_on_token, wn, &wn->rd);
  if (rc) node_failf(n, rc, "cannot read %s: %s", wn->token_file, mg_err_str(rc));
}

static void webid_cancel(node_t *n) { hreq_cancel(&((webid_node_t *)n)->r); }

static void webid_destroy(node_t *n) {
  webid_node_t *wn = (webid_node_t *)n;
  mg_free(wn->token_file);
  mg_free(wn->role_arn);
  mg_free(wn->session_name);
  mg_free(wn->cfg_error);
  sts_cleanup(&wn->sts);
  rd_free(wn->rd);
  mg_buf_cleanup_secret(&wn->form);
  hreq_release(&wn->r);
}

static const node_vt_t webid_vt = {"web_identity", true, webid_fetch, webid_cancel, webid_destroy};

/* ------------------------------------------------------------ STS AssumeRole */

typedef struct assume_node {
  node_t base;
  node_t *source;
  char *role_arn, *external_id, *session_name;
  uint64_t duration_s;
  sts_t sts;
  mg_buf_t form;
  mg_creds_value_t *src; /* the credentials the request was signed with, until it ends */
  bool source_force;     /* STS refused the source's credentials: fetch them anew next time */
  hreq_t r;
} assume_node_t;

static void assume_on_http(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  assume_node_t *an = ud;
  node_t *n = &an->base;
  if (!hreq_end(n, &an->r)) return;
  mg_buf_cleanup(&an->form);
  mg_creds_value_t *src = an->src;
  an->src = NULL;
  if (err) {
    mg_creds_value_unref(src);
    hreq_release(&an->r);
    node_failf(n, err, "STS AssumeRole at %s: %s", an->sts.url, detail ? detail : mg_err_str(err));
    return;
  }
  char label[400], m[MSG_MAX];
  snprintf(label, sizeof label, "assume-role %s via %s", an->role_arn, src->source);
  mg_creds_value_unref(src);
  mg_creds_value_t *v = NULL;
  mg_buf_t *b = &an->r.body;
  int rc = mg_creds_parse_sts("AssumeRole", resp->status, b->data ? b->data : "", b->len, wall_ms(), "assume_role",
                              label, &v, m, sizeof m);
  hreq_release(&an->r);
  if (rc) {
    if (sts_says_source_bad(m)) an->source_force = true;
    node_failf(n, rc, "%s (role %s)", m, an->role_arn);
    return;
  }
  node_finish(n, 0, v, NULL);
}

static void assume_on_source(void *ud, int err, mg_creds_value_t *v, const char *msg) {
  assume_node_t *an = ud;
  node_t *n = &an->base;
  if (err) {
    node_failf(n, err == MG_ENOTFOUND ? MG_ECREDS : err, "source credentials for role %s: %s", an->role_arn, msg);
    return;
  }
  char sess[80], dur[24], m[MSG_MAX];
  session_name(an->session_name, sess, sizeof sess);
  mg_buf_init(&an->form, 0);
  int rc = form_add(&an->form, "Action", "AssumeRole", 10);
  if (!rc) rc = form_add(&an->form, "Version", STS_VERSION, strlen(STS_VERSION));
  if (!rc) rc = form_add(&an->form, "RoleArn", an->role_arn, strlen(an->role_arn));
  if (!rc) rc = form_add(&an->form, "RoleSessionName", sess, strlen(sess));
  if (!rc && an->duration_s) {
    snprintf(dur, sizeof dur, "%" PRIu64, an->duration_s);
    rc = form_add(&an->form, "DurationSeconds", dur, strlen(dur));
  }
  if (!rc && an->external_id) rc = form_add(&an->form, "ExternalId", an->external_id, strlen(an->external_id));
  if (rc) {
    mg_buf_cleanup(&an->form);
    node_failf(n, rc, "out of memory");
    return;
  }
  an->src = mg_creds_value_ref(v);
  rc = sts_post(n, &an->r, &an->sts, &an->form, v, assume_on_http, m, sizeof m);
  if (rc) {
    mg_creds_value_unref(an->src);
    an->src = NULL;
    mg_buf_cleanup(&an->form);
    node_failf(n, rc, "%s", m);
  }
}

static void assume_fetch(node_t *n, bool force) {
  (void)force; /* forcing this node does not force its source */
  assume_node_t *an = (assume_node_t *)n;
  bool sf = an->source_force;
  an->source_force = false;
  node_get(an->source, sf, assume_on_source, an);
}

static void assume_cancel(node_t *n) { hreq_cancel(&((assume_node_t *)n)->r); }

static void assume_destroy(node_t *n) {
  assume_node_t *an = (assume_node_t *)n;
  node_free(an->source);
  mg_free(an->role_arn);
  mg_free(an->external_id);
  mg_free(an->session_name);
  sts_cleanup(&an->sts);
  mg_buf_cleanup(&an->form);
  mg_creds_value_unref(an->src);
  hreq_release(&an->r);
}

static const node_vt_t assume_vt = {"assume_role", true, assume_fetch, assume_cancel, assume_destroy};

/* ------------------------------------------------------------ building */

static const char *first_set(const char *a, const char *b) { return str_has(a) ? a : str_has(b) ? b : NULL; }

static int dup_opt(char **slot, const char *s) {
  *slot = NULL;
  if (!s) return 0;
  *slot = mg_strdup(s);
  return *slot ? 0 : MG_ENOMEM;
}

static char *expand_home(const char *home, const char *path) {
  if (path[0] != '~' || path[1] != '/') return mg_strdup(path);
  mg_buf_t b;
  mg_buf_init(&b, 4096);
  if (mg_buf_printf(&b, "%s%s", home ? home : "~", path + 1) != 0) {
    mg_buf_cleanup(&b);
    return NULL;
  }
  return mg_buf_steal(&b, NULL);
}

static bool session_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n < 2 || n > 64) return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || strchr("_+=,.@-", ch)))
      return false;
  }
  return true;
}

/* Make the node for conf. in_plan: built from a profile at fetch time
 * (errors become fetch errors); in_chain: a member of the default chain
 * (a source that is not configured answers MG_ENOTFOUND when asked,
 * instead of failing the build). */
static int node_build(mg_creds_t *c, const mg_conf_creds_t *conf, bool in_plan, bool in_chain, int depth,
                      node_t **out, char *msg, size_t msgsz) {
  const env_t *e = &c->env;
  bool lenient = in_plan || in_chain;
  int rc = 0;
  char desc[400];
  *out = NULL;
  if (depth > MAX_NESTING) {
    msgf(msg, msgsz, "assume_role sources nested deeper than %d", MAX_NESTING);
    return MG_ECONFIG;
  }
  switch (conf->kind) {
  case MG_CREDS_CHAIN: {
    chain_node_t *ch = node_alloc(c, sizeof *ch, &chain_vt, "default chain");
    if (!ch) return MG_ENOMEM;
    static const mg_creds_kind_t kinds[CHAIN_MAX] = {MG_CREDS_ENV, MG_CREDS_WEB_IDENTITY, MG_CREDS_PROFILE,
                                                     MG_CREDS_ECS, MG_CREDS_IMDS};
    for (size_t i = 0; i < CHAIN_MAX; i++) {
      mg_conf_creds_t k = {.kind = kinds[i], .sts_region = conf->sts_region, .sts_endpoint = conf->sts_endpoint};
      if ((rc = node_build(c, &k, false, true, depth, &ch->kids[i], msg, msgsz)) != 0) {
        node_free(&ch->base);
        return rc;
      }
      ch->nkids++;
    }
    *out = &ch->base;
    return 0;
  }
  case MG_CREDS_STATIC: {
    if (!str_has(conf->access_key_id) || !str_has(conf->secret_access_key)) {
      msgf(msg, msgsz, "static credentials need access_key_id and secret_access_key");
      return MG_ECONFIG;
    }
    const char *label = in_plan && conf->profile ? conf->profile : "static configuration";
    char m[MSG_MAX];
    int err;
    mg_creds_value_t *v = value_new("static", mg_str(conf->access_key_id), mg_str(conf->secret_access_key),
                                    mg_str(conf->session_token), 0, label, wall_ms(), &err, m, sizeof m);
    if (!v) {
      msgf(msg, msgsz, "%s: %s", label, m);
      return err == MG_ENOMEM ? err : MG_ECONFIG;
    }
    node_t *n = node_alloc(c, sizeof *n, &static_vt, label);
    if (!n) {
      mg_creds_value_unref(v);
      return MG_ENOMEM;
    }
    n->cached = v;
    *out = n;
    return 0;
  }
  case MG_CREDS_ENV: {
    if (!lenient && (!e->access_key_id || !e->secret_access_key)) {
      msgf(msg, msgsz, "credentials from the environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set");
      return MG_ECONFIG;
    }
    node_t *n = node_alloc(c, sizeof *n, &env_vt, "environment");
    if (!n) return MG_ENOMEM;
    *out = n;
    return 0;
  }
  case MG_CREDS_PROFILE: {
    const char *name = first_set(conf->profile, e->profile);
    if (!name) name = "default";
    const char *cp = first_set(conf->credentials_file, e->credentials_file);
    const char *fp = first_set(conf->config_file, e->config_file);
    snprintf(desc, sizeof desc, "profile %s", name);
    profile_node_t *pn = node_alloc(c, sizeof *pn, &profile_vt, desc);
    if (!pn) return MG_ENOMEM;
    pn->profile = mg_strdup(name);
    pn->cred_path = expand_home(c->env.home, cp ? cp : "~/.aws/credentials");
    pn->conf_path = expand_home(c->env.home, fp ? fp : "~/.aws/config");
    pn->base.dirty = true; /* never read */
    if (dup_opt(&pn->sts_region, conf->sts_region) || dup_opt(&pn->sts_endpoint, conf->sts_endpoint) ||
        !pn->profile || !pn->cred_path || !pn->conf_path) {
      node_free(&pn->base);
      return MG_ENOMEM;
    }
    *out = &pn->base;
    return 0;
  }
  case MG_CREDS_IMDS: {
    imds_node_t *in = node_alloc(c, sizeof *in, &imds_vt, "instance metadata");
    if (!in) return MG_ENOMEM;
    const char *ep = e->imds_endpoint;
    if (!ep) ep = e->imds_mode && strcasecmp(e->imds_mode, "IPv6") == 0 ? IMDS_DEFAULT_V6 : IMDS_DEFAULT;
    url_parts_t u;
    size_t n = strlen(ep);
    while (n && ep[n - 1] == '/') n--;
    if (url_split(ep, &u) != 0 || n >= sizeof in->endpoint) {
      node_free(&in->base);
      msgf(msg, msgsz, "AWS_EC2_METADATA_SERVICE_ENDPOINT \"%.200s\" is not an http(s) URL", ep);
      return MG_ECONFIG;
    }
    memcpy(in->endpoint, ep, n);
    in->endpoint[n] = '\0';
    in->disabled = e->imds_disabled && strcasecmp(e->imds_disabled, "true") == 0;
    if (in->disabled && !lenient) {
      node_free(&in->base);
      msgf(msg, msgsz, "instance metadata credentials are configured but AWS_EC2_METADATA_DISABLED is true");
      return MG_ECONFIG;
    }
    *out = &in->base;
    return 0;
  }
  case MG_CREDS_ECS: {
    ecs_node_t *en = node_alloc(c, sizeof *en, &ecs_vt, "container credentials");
    if (!en) return MG_ENOMEM;
    char cfg[MSG_MAX] = "";
    mg_buf_t url;
    mg_buf_init(&url, 4096);
    if (e->ecs_relative_uri) {
      if (e->ecs_relative_uri[0] != '/')
        snprintf(cfg, sizeof cfg, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI must start with '/'");
      else rc = mg_buf_printf(&url, "%s%s", ECS_HOST, e->ecs_relative_uri);
    } else if (e->ecs_full_uri) {
      url_parts_t u;
      if (url_split(e->ecs_full_uri, &u) != 0)
        snprintf(cfg, sizeof cfg, "AWS_CONTAINER_CREDENTIALS_FULL_URI is not an http(s) URL");
      else if (!u.https && !ecs_host_ok(u.host))
        snprintf(cfg, sizeof cfg,
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI %.200s: plain http is only allowed to loopback addresses and "
                 "the ECS/EKS agents (169.254.170.2, 169.254.170.23, fd00:ec2::23)",
                 e->ecs_full_uri);
      else rc = mg_buf_append_str(&url, e->ecs_full_uri);
    } else {
      en->not_configured = true;
    }
    if (!rc) rc = dup_opt(&en->token, e->ecs_auth_token);
    if (!rc) rc = dup_opt(&en->token_file, e->ecs_auth_token_file);
    if (!rc && cfg[0]) rc = dup_opt(&en->cfg_error, cfg);
    en->url = url.data ? mg_buf_steal(&url, NULL) : mg_strdup("");
    if (rc || !en->url) {
      mg_buf_cleanup(&url);
      node_free(&en->base);
      return MG_ENOMEM;
    }
    if (!lenient && (en->not_configured || en->cfg_error)) {
      msgf(msg, msgsz, "container credentials: %s",
           cfg[0] ? cfg : "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or AWS_CONTAINER_CREDENTIALS_FULL_URI must be set");
      node_free(&en->base);
      return MG_ECONFIG;
    }
    *out = &en->base;
    return 0;
  }
  case MG_CREDS_WEB_IDENTITY: {
    const char *tf = first_set(conf->web_identity_token_file, e->web_identity_token_file);
    const char *role = first_set(conf->role_arn, e->role_arn);
    const char *sess = first_set(conf->role_session_name, e->role_session_name);
    snprintf(desc, sizeof desc, "web identity %s", role ? role : "");
    webid_node_t *wn = node_alloc(c, sizeof *wn, &webid_vt, desc);
    if (!wn) return MG_ENOMEM;
    char cfg[MSG_MAX] = "";
    if (!tf && !role) wn->not_configured = true;
    else if (!tf || !role)
      snprintf(cfg, sizeof cfg, "%s is set but %s is not",
               tf ? "the token file (AWS_WEB_IDENTITY_TOKEN_FILE)" : "the role (AWS_ROLE_ARN)",
               tf ? "the role (AWS_ROLE_ARN)" : "the token file (AWS_WEB_IDENTITY_TOKEN_FILE)");
    else if (sess && !session_name_ok(sess))
      snprintf(cfg, sizeof cfg, "role session name must be 2-64 of A-Z a-z 0-9 _+=,.@-");
    if (!wn->not_configured && !cfg[0]) {
      rc = sts_resolve(c, conf->sts_endpoint, conf->sts_region, NULL, &wn->sts, cfg, sizeof cfg);
      if (rc == MG_ENOMEM) {
        node_free(&wn->base);
        return rc;
      }
      rc = 0; /* a configuration error is in cfg: reported below or at fetch */
    }
    if (tf && !(wn->token_file = expand_home(c->env.home, tf))) rc = MG_ENOMEM; /* "~/token" as the SDKs accept it */
    if (rc || (rc = dup_opt(&wn->role_arn, role)) ||
        (rc = dup_opt(&wn->session_name, sess)) || (cfg[0] && (rc = dup_opt(&wn->cfg_error, cfg)))) {
      node_free(&wn->base);
      return rc;
    }
    if (!lenient && (wn->not_configured || wn->cfg_error)) {
      msgf(msg, msgsz, "web identity: %s", cfg[0] ? cfg : "AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN must be set");
      node_free(&wn->base);
      return MG_ECONFIG;
    }
    if (in_plan && wn->cfg_error) { /* a plan is built on demand: its errors are the fetch's */
      msgf(msg, msgsz, "%s", wn->cfg_error);
      node_free(&wn->base);
      return MG_ECONFIG;
    }
    *out = &wn->base;
    return 0;
  }
  case MG_CREDS_PROCESS: {
    if (!str_has(conf->process)) {
      msgf(msg, msgsz, "credential_process needs a command");
      return MG_ECONFIG;
    }
    proc_node_t *pn =
        node_alloc(c, sizeof *pn, &proc_vt, in_plan && conf->profile ? conf->profile : "credential_process");
    if (!pn) return MG_ENOMEM;
    pn->cmd = mg_strdup(conf->process);
    if (!pn->cmd) {
      node_free(&pn->base);
      return MG_ENOMEM;
    }
    *out = &pn->base;
    return 0;
  }
  case MG_CREDS_ASSUME_ROLE: {
    if (!str_has(conf->role_arn)) {
      msgf(msg, msgsz, "assume_role needs role_arn");
      return MG_ECONFIG;
    }
    if (str_has(conf->role_session_name) && !session_name_ok(conf->role_session_name)) {
      msgf(msg, msgsz, "assume_role %s: role_session_name must be 2-64 of A-Z a-z 0-9 _+=,.@-", conf->role_arn);
      return MG_ECONFIG;
    }
    if (conf->duration_s && (conf->duration_s > 43200)) {
      msgf(msg, msgsz, "assume_role %s: duration must be at most 12h", conf->role_arn);
      return MG_ECONFIG;
    }
    snprintf(desc, sizeof desc, "assume-role %s", conf->role_arn);
    assume_node_t *an = node_alloc(c, sizeof *an, &assume_vt, desc);
    if (!an) return MG_ENOMEM;
    char m[MSG_MAX];
    rc = sts_resolve(c, conf->sts_endpoint, conf->sts_region, NULL, &an->sts, m, sizeof m);
    if (rc) {
      msgf(msg, msgsz, "assume_role %s: %s", conf->role_arn, m);
      node_free(&an->base);
      return rc;
    }
    if ((rc = dup_opt(&an->role_arn, conf->role_arn)) || (rc = dup_opt(&an->external_id, conf->external_id)) ||
        (rc = dup_opt(&an->session_name, conf->role_session_name))) {
      node_free(&an->base);
      return rc;
    }
    an->duration_s = conf->duration_s;
    if (conf->source) {
      rc = node_build(c, conf->source, in_plan, false, depth + 1, &an->source, m, sizeof m);
    } else {
      mg_conf_creds_t chain = {.kind = MG_CREDS_CHAIN};
      rc = node_build(c, &chain, in_plan, false, depth + 1, &an->source, m, sizeof m);
    }
    if (rc) {
      msgf(msg, msgsz, "assume_role %s: source: %s", conf->role_arn, m);
      node_free(&an->base);
      return rc;
    }
    *out = &an->base;
    return 0;
  }
  }
  msgf(msg, msgsz, "unknown credentials kind %d", (int)conf->kind);
  return MG_ECONFIG;
}

/* ------------------------------------------------------------ environment */

static char *env_get(const char *name) {
  const char *v = getenv(name);
  return v && *v ? mg_strdup(v) : NULL;
}

static void env_free(env_t *e) {
  mg_free(e->access_key_id);
  mg_mem_free_secret(e->secret_access_key);
  mg_mem_free_secret(e->session_token);
  mg_free(e->credential_expiration);
  mg_free(e->profile);
  mg_free(e->credentials_file);
  mg_free(e->config_file);
  mg_free(e->region);
  mg_free(e->default_region);
  mg_free(e->web_identity_token_file);
  mg_free(e->role_arn);
  mg_free(e->role_session_name);
  mg_free(e->endpoint_url_sts);
  mg_free(e->endpoint_url);
  mg_free(e->imds_endpoint);
  mg_free(e->imds_mode);
  mg_free(e->imds_disabled);
  mg_free(e->ecs_relative_uri);
  mg_free(e->ecs_full_uri);
  mg_mem_free_secret(e->ecs_auth_token);
  mg_free(e->ecs_auth_token_file);
  mg_free(e->home);
  memset(e, 0, sizeof *e);
}

static void env_load(env_t *e) {
  e->access_key_id = env_get("AWS_ACCESS_KEY_ID");
  e->secret_access_key = env_get("AWS_SECRET_ACCESS_KEY");
  e->session_token = env_get("AWS_SESSION_TOKEN");
  if (!e->session_token) e->session_token = env_get("AWS_SECURITY_TOKEN"); /* older SDKs' name */
  e->credential_expiration = env_get("AWS_CREDENTIAL_EXPIRATION");
  e->profile = env_get("AWS_PROFILE");
  if (!e->profile) e->profile = env_get("AWS_DEFAULT_PROFILE");
  e->credentials_file = env_get("AWS_SHARED_CREDENTIALS_FILE");
  e->config_file = env_get("AWS_CONFIG_FILE");
  e->region = env_get("AWS_REGION");
  e->default_region = env_get("AWS_DEFAULT_REGION");
  e->web_identity_token_file = env_get("AWS_WEB_IDENTITY_TOKEN_FILE");
  e->role_arn = env_get("AWS_ROLE_ARN");
  e->role_session_name = env_get("AWS_ROLE_SESSION_NAME");
  e->endpoint_url_sts = env_get("AWS_ENDPOINT_URL_STS");
  e->endpoint_url = env_get("AWS_ENDPOINT_URL");
  e->imds_endpoint = env_get("AWS_EC2_METADATA_SERVICE_ENDPOINT");
  e->imds_mode = env_get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE");
  e->imds_disabled = env_get("AWS_EC2_METADATA_DISABLED");
  e->ecs_relative_uri = env_get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
  e->ecs_full_uri = env_get("AWS_CONTAINER_CREDENTIALS_FULL_URI");
  e->ecs_auth_token = env_get("AWS_CONTAINER_AUTHORIZATION_TOKEN");
  e->ecs_auth_token_file = env_get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
  e->home = env_get("HOME");
  if (!e->home) { /* start-up only: getpwuid_r may read /etc/passwd */
    struct passwd pw, *res = NULL;
    char buf[4096];
    if (getpwuid_r(getuid(), &pw, buf, sizeof buf, &res) == 0 && res && res->pw_dir) e->home = mg_strdup(res->pw_dir);
  }
}

static size_t add_file(char (*paths)[MG_CREDS_PATH_MAX], size_t n, size_t max, char *p) {
  if (!p) return n;
  size_t len = strlen(p);
  bool dup = false;
  for (size_t i = 0; i < n && !dup; i++) dup = strcmp(paths[i], p) == 0;
  if (!dup && n < max && len < MG_CREDS_PATH_MAX) memcpy(paths[n++], p, len + 1);
  mg_free(p);
  return n;
}

size_t mg_creds_env_files(char (*paths)[MG_CREDS_PATH_MAX], size_t max) {
  env_t e = {0};
  env_load(&e);
  size_t n = 0;
  /* Expanded exactly as node_build does: these strings are compared with
   * the paths the nodes read. */
  n = add_file(paths, n, max, expand_home(e.home, e.credentials_file ? e.credentials_file : "~/.aws/credentials"));
  n = add_file(paths, n, max, expand_home(e.home, e.config_file ? e.config_file : "~/.aws/config"));
  if (e.web_identity_token_file) n = add_file(paths, n, max, expand_home(e.home, e.web_identity_token_file));
  if (e.ecs_auth_token_file) n = add_file(paths, n, max, mg_strdup(e.ecs_auth_token_file));
  env_free(&e);
  return n;
}

/* ------------------------------------------------------------ root: refresh */

static void metric_refresh(mg_creds_t *c, const char *source, const char *result) {
  mg_metric_t *m = mg_metrics_counter("moongate_aws_credentials_refresh_total",
                                      "AWS credential refreshes, by credentials object, source and result.",
                                      "credentials", c->name, "source", source, "result", result, NULL);
  if (m) mg_metric_inc(m);
}

static void metric_expiry(mg_creds_t *c, int64_t expires_ms) {
  mg_metric_t *m = mg_metrics_gauge("moongate_aws_credentials_expiry_timestamp_seconds",
                                    "When the current AWS credentials expire (Unix seconds; 0: they do not expire "
                                    "or there are none).",
                                    "credentials", c->name, NULL);
  if (m) mg_metric_set(m, (double)expires_ms / 1000.0);
}

static bool cur_usable(const mg_creds_t *c, int64_t now) {
  return c->cur && !c->rejected_pending && now < c->cur->stale_ms_;
}

static void notify(mg_creds_t *c, int err) {
  mg_creds_waiter_t local;
  if (c->waiters.next_ == &c->waiters) return;
  /* Move the list aside: callbacks may register again (for the next
   * refresh) or cancel others. */
  local.next_ = c->waiters.next_;
  local.prev_ = c->waiters.prev_;
  local.next_->prev_ = &local;
  local.prev_->next_ = &local;
  c->waiters.next_ = c->waiters.prev_ = &c->waiters;
  while (local.next_ != &local) {
    mg_creds_waiter_t *w = local.next_;
    w->next_->prev_ = &local;
    local.next_ = w->next_;
    w->next_ = w->prev_ = w;
    w->c_ = NULL;
    if (c->closing) continue; /* freed from a callback: the rest are detached */
    w->cb_(w->ud_, err);
  }
}

static void log_failure(mg_creds_t *c, const char *kind, int err, const char *msg, int64_t now, uint64_t retry_ms,
                        bool valid) {
  static const int64_t relog_ms = 600000; /* the same error is repeated every 10 minutes at most */
  bool settling = now - c->file_change_ms < SETTLE_MS;
  bool same = c->logged_error[0] && strcmp(c->logged_error, msg) == 0;
  char q[MSG_MAX + 64], until[32];
  mg_log_q(q, sizeof q, msg, strlen(msg));
  if (settling || (same && now - c->logged_ms < relog_ms)) {
    MG_DEBUG(MOD, "credentials_refresh_failed", "creds=%s source=%s err=%s msg=%s retry_in_ms=%" PRIu64, c->name,
             kind, mg_err_name(err), q, retry_ms);
    return;
  }
  snprintf(c->logged_error, sizeof c->logged_error, "%s", msg);
  c->logged_ms = now;
  if (valid) {
    fmt_time(c->cur->expires_ms, until, sizeof until);
    MG_WARN(MOD, "credentials_refresh_failed",
            "creds=%s source=%s err=%s msg=%s current_valid_until=%s retry_in_ms=%" PRIu64
            " hint=\"still signing with the current credentials; retrying\"",
            c->name, kind, mg_err_name(err), q, until, retry_ms);
  } else {
    MG_ERROR(MOD, "credentials_unavailable",
             "creds=%s source=%s err=%s msg=%s retry_in_ms=%" PRIu64 " hint=\"writes wait in the queue until "
             "credentials are available\"",
             c->name, kind, mg_err_name(err), q, retry_ms);
  }
}

static void refresh_failed(mg_creds_t *c, int err, const char *msg, int64_t now) {
  c->fail_count++;
  c->failures++;
  c->last_failure_ms = now;
  snprintf(c->last_error, sizeof c->last_error, "%s", msg);
  const char *kind = c->fail_kind ? c->fail_kind : c->root->vt->kind;
  metric_refresh(c, kind, "failure");
  bool valid = c->cur && now < c->cur->stale_ms_;
  /* Jittered exponential backoff; while the current credentials are still
   * valid, at least three more tries before they go stale. */
  unsigned shift = c->fail_count - 1 < 20 ? c->fail_count - 1 : 20;
  uint64_t d = c->opts.retry_min_ms << shift;
  if (d > c->opts.retry_max_ms || d < c->opts.retry_min_ms) d = c->opts.retry_max_ms;
  if (valid && c->cur->expires_ms) {
    int64_t left = (c->cur->stale_ms_ - now) / 3;
    if (left < 200) left = 200;
    if ((int64_t)d > left) d = (uint64_t)left;
  }
  d = d / 2 + rnd() % (d / 2 + 1);
  if (now - c->file_change_ms < SETTLE_MS && d > SETTLE_RETRY_MS) d = SETTLE_RETRY_MS;
  log_failure(c, kind, err, msg, now, d, valid);
  uv_timer_start(&c->timer, on_timer, d, 0);
}

static void refresh_ok(mg_creds_t *c, mg_creds_value_t *v, bool fetched, int64_t now) {
  mg_creds_value_t *old = c->cur;
  if (fetched || old != v) { /* not a cached answer to a waiter */
    c->successes++;
    c->last_success_ms = now;
    metric_refresh(c, v->kind, "success");
  }
  if (old != v) {
    char mk[16], until[32], src[300];
    mg_log_mask(mk, sizeof mk, v->access_key_id);
    fmt_time(v->expires_ms, until, sizeof until);
    mg_log_q(src, sizeof src, v->source, strlen(v->source));
    if (!old || strcmp(old->source, v->source) != 0)
      MG_INFO(MOD, "credentials_ready", "creds=%s source=%s access_key_id=%s expires=%s", c->name, src, mk, until);
    else
      MG_INFO(MOD, "credentials_rotated", "creds=%s source=%s access_key_id=%s expires=%s", c->name, src, mk, until);
    c->cur = mg_creds_value_ref(v);
    mg_creds_value_unref(old);
  }
  metric_expiry(c, v->expires_ms);
  if (c->logged_error[0]) {
    MG_INFO(MOD, "credentials_recovered", "creds=%s after_failures=%u", c->name, c->fail_count);
    c->logged_error[0] = '\0';
  }
  c->last_error[0] = '\0';
  c->fail_count = 0;
  if (v->expires_ms) {
    int64_t d = v->refresh_ms_ - now;
    if (d < MIN_REFRESH_DELAY_MS) d = MIN_REFRESH_DELAY_MS;
    uv_timer_start(&c->timer, on_timer, (uint64_t)d, 0);
  }
}

static void on_root_done(void *ud, int err, mg_creds_value_t *v, const char *msg) {
  mg_creds_t *c = ud;
  bool forced = c->forcing;
  const mg_creds_value_t *before = c->cur;
  c->refreshing = false;
  c->forcing = false;
  if (c->closing) return;
  int64_t now = wall_ms();
  if (err == 0) refresh_ok(c, v, c->fetches != c->fetches_at_start, now);
  else refresh_failed(c, err, msg, now);
  /* A rejected value is held back until the forced refresh ran (or a new
   * value arrived); a failed forced refresh hands the old one out again
   * (better a 403 than nothing), and invalidate's rate limit applies. */
  if (forced || c->cur != before) c->rejected_pending = false;
  if (c->cur != before) c->want_force = false; /* a refused value was replaced anyway */
  /* Credentials were refused and replacing them failed: the retries (on
   * the backoff timer) keep bypassing the caches until one succeeds. */
  if (forced && err) c->want_force = true;
  if (c->again) {
    c->again = false;
    request_refresh(c, 0);
  }
  int perr = err == MG_ENOTFOUND ? MG_ECREDS : err;
  notify(c, perr); /* last: a callback may free c */
}

static void on_timer(uv_timer_t *t) {
  mg_creds_t *c = t->data;
  if (c->closing || c->refreshing) return;
  c->refreshing = true;
  c->again = false;
  c->forcing = c->want_force;
  c->want_force = false;
  c->fail_kind = NULL;
  c->fetches_at_start = c->fetches;
  node_get(c->root, c->forcing, on_root_done, c);
}

/* Run a refresh within delay_ms (never later than one already scheduled). */
static void request_refresh(mg_creds_t *c, uint64_t delay_ms) {
  if (c->closing) return;
  if (c->refreshing) {
    c->again = true;
    return;
  }
  if (uv_is_active((uv_handle_t *)&c->timer) && uv_timer_get_due_in(&c->timer) <= delay_ms) return;
  uv_timer_start(&c->timer, on_timer, delay_ms, 0);
}

static void maybe_finish(mg_creds_t *c) {
  if (!c->closing || c->pending) return;
  node_free(c->root);
  c->root = NULL;
  while (c->watches) {
    watch_t *w = c->watches;
    c->watches = w->next;
    watch_free(w);
  }
  mg_creds_value_unref(c->cur);
  env_free(&c->env);
  mg_free(c->default_region);
  mg_free(c);
}

/* ------------------------------------------------------------ public API */

mg_creds_t *mg_creds_new(uv_loop_t *loop, mg_http_client_t *http, const mg_conf_creds_t *conf,
                         const char *default_region, const char *name, const mg_creds_opts_t *opts, int *err) {
  int dummy;
  if (!err) err = &dummy;
  *err = 0;
  if (!loop || !conf) {
    *err = MG_EINVAL;
    return NULL;
  }
  mg_creds_t *c = mg_calloc(1, sizeof *c);
  if (!c) {
    *err = MG_ENOMEM;
    return NULL;
  }
  c->loop = loop;
  c->http = http;
  c->io = g_fileio;
  snprintf(c->name, sizeof c->name, "%s", str_has(name) ? name : "default");
  if (opts) c->opts = *opts;
  if (!c->opts.http_timeout_ms) c->opts.http_timeout_ms = 5000;
  if (!c->opts.imds_timeout_ms) c->opts.imds_timeout_ms = 1000;
  if (!c->opts.process_timeout_ms) c->opts.process_timeout_ms = 30000;
  if (!c->opts.retry_min_ms) c->opts.retry_min_ms = 500;
  if (!c->opts.retry_max_ms) c->opts.retry_max_ms = 60000;
  if (c->opts.retry_max_ms < c->opts.retry_min_ms) c->opts.retry_max_ms = c->opts.retry_min_ms;
  if (!c->opts.invalidate_interval_ms) c->opts.invalidate_interval_ms = 10000;
  c->waiters.next_ = c->waiters.prev_ = &c->waiters;
  env_load(&c->env);
  char msg[MSG_MAX] = "";
  int rc = 0;
  if (default_region && !(c->default_region = mg_strdup(default_region))) rc = MG_ENOMEM;
  if (!rc) rc = node_build(c, conf, false, false, 0, &c->root, msg, sizeof msg);
  if (!rc) { /* handles only once the tree stands, so a failed build frees synchronously */
    for (node_t *n = c->nodes; n && !rc; n = n->next_all) {
      if (n->vt != &profile_vt) continue;
      profile_node_t *pn = (profile_node_t *)n;
      pn->wcred = watch_new(c, n, pn->cred_path);
      pn->wconf = pn->wcred ? watch_new(c, n, pn->conf_path) : NULL;
      if (!pn->wconf) rc = MG_ENOMEM;
    }
  }
  if (rc) {
    if (rc != MG_ENOMEM) {
      char q[MSG_MAX + 64];
      mg_log_q(q, sizeof q, msg, strlen(msg));
      MG_ERROR(MOD, "credentials_config_invalid", "creds=%s err=%s msg=%s", c->name, mg_err_name(rc), q);
    }
    *err = rc == MG_ENOMEM ? rc : MG_ECONFIG;
    if (!c->watches) {
      node_free(c->root);
      env_free(&c->env);
      mg_free(c->default_region);
      mg_free(c);
      return NULL;
    }
    /* Watches (handles) exist only after a complete build: this is OOM
     * among them; close what was opened and free in the callbacks. */
    c->closing = true;
    for (watch_t *w = c->watches; w; w = w->next) watch_close(w);
    return NULL;
  }
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  c->pending++;
  metric_expiry(c, 0);
  MG_INFO(MOD, "credentials_configured", "creds=%s provider=\"%s\"", c->name, c->root->desc);
  request_refresh(c, 0);
  return c;
}

void mg_creds_free(mg_creds_t *c) {
  if (!c || c->closing) return;
  c->closing = true;
  while (c->waiters.next_ != &c->waiters) {
    mg_creds_waiter_t *w = c->waiters.next_;
    c->waiters.next_ = w->next_;
    w->next_ = w->prev_ = w;
    w->c_ = NULL;
  }
  c->waiters.prev_ = &c->waiters;
  uv_close((uv_handle_t *)&c->timer, on_close_pending);
  for (watch_t *w = c->watches; w; w = w->next) watch_close(w);
  for (node_t *n = c->nodes; n; n = n->next_all)
    if (n->vt->cancel) n->vt->cancel(n);
  maybe_finish(c);
}

mg_creds_value_t *mg_creds_current(mg_creds_t *c) {
  if (!c || c->closing) return NULL;
  int64_t now = wall_ms();
  stat_check(c, now);
  if (cur_usable(c, now)) return mg_creds_value_ref(c->cur);
  if (!c->refreshing && !uv_is_active((uv_handle_t *)&c->timer)) request_refresh(c, 0);
  return NULL;
}

int mg_creds_wait(mg_creds_t *c, mg_creds_waiter_t *w, void (*cb)(void *ud, int err), void *ud) {
  if (!c || !w || !cb || w->c_) return MG_EINVAL;
  if (c->closing) return MG_ECLOSED;
  w->c_ = c;
  w->cb_ = cb;
  w->ud_ = ud;
  w->prev_ = c->waiters.prev_;
  w->next_ = &c->waiters;
  c->waiters.prev_->next_ = w;
  c->waiters.prev_ = w;
  /* Someone must finish a refresh soon: with usable credentials a cached
   * one (cheap); without, the retry that is scheduled, or one now. */
  if (!c->refreshing && (cur_usable(c, wall_ms()) || !uv_is_active((uv_handle_t *)&c->timer)))
    request_refresh(c, 0);
  return 0;
}

void mg_creds_cancel_wait(mg_creds_waiter_t *w) {
  if (!w || !w->c_) return;
  w->prev_->next_ = w->next_;
  w->next_->prev_ = w->prev_;
  w->next_ = w->prev_ = w;
  w->c_ = NULL;
}

void mg_creds_invalidate(mg_creds_t *c, const mg_creds_value_t *rejected) {
  if (!c || c->closing || !rejected || rejected != c->cur) return; /* rotated meanwhile: nothing to do */
  if (c->rejected_pending) return; /* a forced refresh is on its way: shared */
  char mk[16];
  mg_log_mask(mk, sizeof mk, rejected->access_key_id);
  uint64_t now = uv_now(c->loop);
  if (c->forced_before && now - c->last_force_ms < c->opts.invalidate_interval_ms) {
    MG_DEBUG(MOD, "credentials_rejected", "creds=%s access_key_id=%s action=none reason=rate_limited", c->name, mk);
    return;
  }
  c->forced_before = true;
  c->last_force_ms = now;
  c->want_force = true;
  c->rejected_pending = true;
  MG_INFO(MOD, "credentials_rejected", "creds=%s access_key_id=%s action=refresh", c->name, mk);
  request_refresh(c, 0);
}

void mg_creds_describe(const mg_creds_t *c, mg_creds_info_t *info) {
  memset(info, 0, sizeof *info);
  if (!c) return;
  snprintf(info->name, sizeof info->name, "%s", c->name);
  if (c->cur) {
    snprintf(info->source, sizeof info->source, "%s", c->cur->source);
    snprintf(info->kind, sizeof info->kind, "%s", c->cur->kind);
    mg_log_mask(info->access_key_id, sizeof info->access_key_id, c->cur->access_key_id);
    info->expires_ms = c->cur->expires_ms;
  }
  info->available = !c->closing && cur_usable(c, wall_ms());
  info->refreshing = c->refreshing;
  snprintf(info->last_error, sizeof info->last_error, "%s", c->last_error);
  info->refresh_successes = c->successes;
  info->refresh_failures = c->failures;
  info->last_success_ms = c->last_success_ms;
  info->last_failure_ms = c->last_failure_ms;
}
