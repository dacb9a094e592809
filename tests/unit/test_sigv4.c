/* Unit tests for mg_sigv4: AWS's published suite (read from $MG_SHARED_DIR,
 * never copied), the AWS documentation example, each canonical piece, the key
 * cache, the 403 debug text, input checks, allocation failures. "oracle" is
 * the C half of tests/integration/test_sigv4_botocore.py (idle on its own). */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "mg_buf.h"
#include "mg_err.h"
#include "mg_mem.h"
#include "mg_sigv4.h"
#include "mg_test.h"

/* AWS's example credentials (public, from the SigV4 documentation). */
#define EX_AKID "AKIDEXAMPLE"
#define EX_SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define EX_TIME INT64_C(1440938160) /* 2015-08-30T12:36:00Z */
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static bool contains(const void *hay, size_t n, const char *needle) {
  size_t k = strlen(needle);
  const char *h = hay;
  for (size_t i = 0; k <= n && i <= n - k; i++)
    if (memcmp(h + i, needle, k) == 0) return true;
  return false;
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  mg_buf_t b;
  mg_buf_init(&b, 0);
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    if (mg_buf_append(&b, chunk, n)) break;
  fclose(f);
  if (!b.data && mg_buf_reserve(&b, 1)) return NULL;
  return mg_buf_steal(&b, len);
}

/* Line `idx` (0-based) of a debug text, into out. */
static void debug_line(const mg_buf_t *d, int idx, char *out, size_t outsz) {
  const char *p = d->data ? d->data : "";
  for (int i = 0; i < idx && p; i++) {
    p = strchr(p, '\n');
    if (p) p++;
  }
  out[0] = '\0';
  if (!p) return;
  size_t n = strcspn(p, "\n");
  if (n >= outsz) n = outsz - 1;
  memcpy(out, p, n);
  out[n] = '\0';
}

/* Sign with the example credentials and return one line of the canonical
 * request (0 method, 1 path, 2 query, 3.. headers). */
static int creq_line(const char *path, const char *query, const mg_sigv4_header_t *hs, size_t nh,
                     int line, char *out, size_t outsz) {
  mg_sigv4_request_t r = {.method = "GET", .url_path = path, .query = query, .headers = hs,
                          .nheaders = nh, .region = "us-east-1", .service = "service",
                          .unix_time = EX_TIME};
  mg_sigv4_creds_t c = {EX_AKID, EX_SECRET, NULL};
  mg_sigv4_result_t res;
  mg_buf_t d;
  mg_buf_init(&d, 0);
  int rc = mg_sigv4_sign(NULL, &r, &c, 0, &res, &d);
  debug_line(&d, line, out, outsz);
  mg_buf_cleanup(&d);
  return rc;
}

static const mg_sigv4_header_t HOST[] = {{"Host", "example.amazonaws.com"}};

/* ---- AWS documentation example ---------------------------------------------- */

/* The worked example of the SigV4 documentation (IAM ListUsers), with its
 * published canonical-request hash, signing key and signature. */
MG_TEST(aws_doc_example) {
  const mg_sigv4_header_t hs[] = {
      {"Host", "iam.amazonaws.com"},
      {"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"},
  };
  mg_sigv4_request_t r = {.method = "GET", .url_path = "/",
                          .query = "Action=ListUsers&Version=2010-05-08", .headers = hs,
                          .nheaders = 2, .region = "us-east-1", .service = "iam",
                          .unix_time = EX_TIME};
  mg_sigv4_creds_t c = {EX_AKID, EX_SECRET, NULL};
  mg_sigv4_key_cache_t cache;
  mg_sigv4_key_cache_init(&cache);
  mg_sigv4_result_t res;
  mg_buf_t d;
  mg_buf_init(&d, 0);
  REQUIRE(mg_sigv4_sign(&cache, &r, &c, 0, &res, &d) == 0);
  CHECK_STR(res.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date, "
            "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");
  CHECK_STR(res.amz_date, "20150830T123600Z");
  CHECK_STR(res.content_sha256, EMPTY_SHA256);
  CHECK_STR(d.data,
            "GET\n/\nAction=ListUsers&Version=2010-05-08\n"
            "content-type:application/x-www-form-urlencoded; charset=utf-8\n"
            "host:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
            "content-type;host;x-amz-date\n" EMPTY_SHA256 "\n\n"
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n"
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59");
  static const unsigned char kSigning[32] = {
      0xc4, 0xaf, 0xb1, 0xcc, 0x57, 0x71, 0xd8, 0x71, 0x76, 0x3a, 0x39, 0x3e, 0x44, 0xb7, 0x03, 0x57,
      0x1b, 0x55, 0xcc, 0x28, 0x42, 0x4d, 0x1a, 0x5e, 0x86, 0xda, 0x6e, 0xd3, 0xc1, 0x54, 0xa4,
      0xb9};
  CHECK(cache.valid);
  CHECK_MEM(cache.key, 32, kSigning, 32);
  CHECK_INT(res.nadd, 2);
  CHECK_STR(res.add[0].name, "Authorization");
  CHECK(res.add[0].value == res.authorization);
  CHECK_STR(res.add[1].name, "X-Amz-Date");
  CHECK_STR(res.add[1].value, "20150830T123600Z");
  mg_buf_cleanup(&d);
  mg_sigv4_key_cache_cleanup(&cache);
}

/* ---- AWS test suite --------------------------------------------------------- */

typedef struct suite_req {
  char *method, *path, *query;
  mg_sigv4_header_t h[16];
  char *hv[16];
  size_t nh;
  const char *body;
  size_t body_len;
} suite_req_t;

static void suite_req_free(suite_req_t *r) {
  mg_free(r->method);
  mg_free(r->path);
  mg_free(r->query);
  for (size_t i = 0; i < r->nh; i++) {
    mg_free((char *)r->h[i].name);
    mg_free(r->hv[i]);
  }
}

/* request.txt: request line, "Name:value" lines (a line starting with a space
 * continues the previous value: obs-fold, kept verbatim with its line
 * break), a blank line, the body. The target may contain spaces. */
static bool parse_suite_request(char *text, size_t len, suite_req_t *r) {
  memset(r, 0, sizeof *r);
  char *end = text + len;
  char *sep = strstr(text, "\n\n");
  r->body = sep ? sep + 2 : end;
  r->body_len = (size_t)(end - r->body);
  char *head_end = sep ? sep : end;
  char *eol = memchr(text, '\n', (size_t)(head_end - text));
  if (!eol) eol = head_end;
  char *sp1 = memchr(text, ' ', (size_t)(eol - text));
  char *sp2 = eol;
  while (sp2 > text && sp2[-1] != ' ') sp2--;
  if (!sp1 || sp2 <= sp1 + 1) return false;
  r->method = mg_strndup(text, (size_t)(sp1 - text));
  char *target = sp1 + 1, *tend = sp2 - 1;
  char *q = memchr(target, '?', (size_t)(tend - target));
  r->path = mg_strndup(target, (size_t)((q ? q : tend) - target));
  r->query = q ? mg_strndup(q + 1, (size_t)(tend - q - 1)) : NULL;
  for (char *line = eol + 1; line < head_end;) {
    char *le = memchr(line, '\n', (size_t)(head_end - line));
    if (!le) le = head_end;
    if ((*line == ' ' || *line == '\t') && r->nh) {
      mg_buf_t v;
      mg_buf_init(&v, 0);
      mg_buf_append_str(&v, r->hv[r->nh - 1]);
      mg_buf_append(&v, "\n", 1);
      mg_buf_append(&v, line, (size_t)(le - line));
      mg_free(r->hv[r->nh - 1]);
      r->hv[r->nh - 1] = mg_buf_steal(&v, NULL);
      r->h[r->nh - 1].value = r->hv[r->nh - 1];
    } else {
      char *colon = memchr(line, ':', (size_t)(le - line));
      if (!colon || r->nh == 16) return false;
      r->h[r->nh].name = mg_strndup(line, (size_t)(colon - line));
      r->hv[r->nh] = mg_strndup(colon + 1, (size_t)(le - colon - 1));
      r->h[r->nh].value = r->hv[r->nh];
      r->nh++;
    }
    line = le + 1;
  }
  return true;
}

/* Value of "key": "string" (no escapes in the suite) or true/false in
 * context.json. Returns a malloc'd string, "true"/"false", or NULL. */
static char *json_get(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\"", key);
  const char *p = strstr(json, pat);
  if (!p) return NULL;
  p += strlen(pat);
  while (*p == ' ' || *p == ':' || *p == '\n' || *p == '\t') p++;
  if (*p == '"') {
    const char *e = strchr(p + 1, '"');
    if (!e || memchr(p + 1, '\\', (size_t)(e - p - 1))) return NULL;
    return mg_strndup(p + 1, (size_t)(e - p - 1));
  }
  if (strncmp(p, "true", 4) == 0) return mg_strdup("true");
  if (strncmp(p, "false", 5) == 0) return mg_strdup("false");
  return NULL;
}

static char *case_file(const char *dir, const char *name, const char *file, size_t *len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s/%s", dir, name, file);
  size_t l = 0;
  char *s = read_file(path, &l);
  if (len) *len = l;
  return s;
}

/* In `text`, replace every `from` with `to` (for the redacted token). */
static char *replace_all(const char *text, const char *from, const char *to) {
  mg_buf_t b;
  mg_buf_init(&b, 0);
  size_t fl = strlen(from);
  const char *p = text, *h;
  while (fl && (h = strstr(p, from))) {
    mg_buf_append(&b, p, (size_t)(h - p));
    mg_buf_append_str(&b, to);
    p = h + fl;
  }
  mg_buf_append_str(&b, p);
  return mg_buf_steal(&b, NULL);
}

/* Runs one header-signing case; returns false (after CHECK failures) when
 * any output differs from the suite's. */
static bool run_suite_case(const char *dir, const char *name, const char *ctx) {
  bool ok = false;
  char *akid = json_get(ctx, "access_key_id"), *secret = json_get(ctx, "secret_access_key");
  char *token = json_get(ctx, "token"), *region = json_get(ctx, "region");
  char *service = json_get(ctx, "service"), *ts = json_get(ctx, "timestamp");
  char *sign_body = json_get(ctx, "sign_body"), *omit = json_get(ctx, "omit_session_token");
  size_t req_len = 0;
  char *req_text = case_file(dir, name, "request.txt", &req_len);
  char *creq = case_file(dir, name, "header-canonical-request.txt", NULL);
  char *sts = case_file(dir, name, "header-string-to-sign.txt", NULL);
  char *sig = case_file(dir, name, "header-signature.txt", NULL);
  char *signed_req = case_file(dir, name, "header-signed-request.txt", NULL);
  suite_req_t r = {0};
  mg_buf_t d;
  mg_buf_init(&d, 0);
  char *want_debug = NULL;
  if (!akid || !secret || !region || !service || !ts || !req_text || !creq || !sts || !sig ||
      !signed_req || !parse_suite_request(req_text, req_len, &r)) {
    MG_FAIL_("%s: incomplete or unparsable case", name);
    goto done;
  }
  struct tm tm = {0};
  if (!strptime(ts, "%Y-%m-%dT%H:%M:%SZ", &tm)) {
    MG_FAIL_("%s: bad timestamp %s", name, ts);
    goto done;
  }
  /* omit_session_token: the token is sent but not signed; the caller does
   * that by signing without it and adding the header afterwards. */
  bool token_signed = token && !(omit && strcmp(omit, "true") == 0);
  mg_sigv4_request_t q = {.method = r.method, .url_path = r.path, .query = r.query,
                          .headers = r.h, .nheaders = r.nh, .payload = r.body,
                          .payload_len = r.body_len, .region = region, .service = service,
                          .unix_time = (int64_t)timegm(&tm)};
  mg_sigv4_creds_t c = {akid, secret, token_signed ? token : NULL};
  int flags = sign_body && strcmp(sign_body, "true") == 0 ? MG_SIGV4_ADD_CONTENT_SHA256 : 0;
  mg_sigv4_result_t res;
  int rc = mg_sigv4_sign(NULL, &q, &c, flags, &res, &d);
  if (rc) {
    MG_FAIL_("%s: sign failed: %s", name, mg_err_name(rc));
    goto done;
  }
  int before = mg_test_failed_checks_;
  /* The debug text shows the token redacted; the signature below proves the
   * real canonical request matched too. */
  char *creq_shown = token_signed ? replace_all(creq, token, "<session token>") : mg_strdup(creq);
  mg_buf_t want;
  mg_buf_init(&want, 0);
  mg_buf_append_str(&want, creq_shown);
  mg_buf_append_str(&want, "\n\n");
  mg_buf_append_str(&want, sts);
  mg_free(creq_shown);
  want_debug = mg_buf_steal(&want, NULL);
  if (strcmp(d.data, want_debug) != 0)
    MG_FAIL_("%s: canonical request / string to sign:\n%s\n--- want:\n%s", name, d.data,
             want_debug);
  const char *sigp = strstr(res.authorization, "Signature=");
  CHECK(sigp && strncmp(sigp + 10, sig, 64) == 0 && strlen(sig) >= 64);
  /* Every X-Amz-* header and the Authorization in the suite's signed
   * request must be exactly what the signer told the caller to add. */
  size_t want_added = 0, found = 0;
  for (char *line = signed_req; *line;) {
    size_t n = strcspn(line, "\n");
    char *colon = memchr(line, ':', n);
    if (colon && line != signed_req) {
      size_t nl = (size_t)(colon - line);
      const char *val = colon + 1;
      size_t vl = n - nl - 1;
      for (size_t i = 0; i < res.nadd; i++) {
        if (strlen(res.add[i].name) == nl && strncasecmp(res.add[i].name, line, nl) == 0) {
          found++;
          if (strlen(res.add[i].value) != vl || memcmp(res.add[i].value, val, vl) != 0)
            MG_FAIL_("%s: %s: got %s, want %.*s", name, res.add[i].name, res.add[i].value,
                     (int)vl, val);
        }
      }
      if ((nl == 13 && strncasecmp(line, "authorization", nl) == 0) ||
          (nl > 6 && strncasecmp(line, "x-amz-", 6) == 0))
        want_added++;
    }
    line += n + (line[n] == '\n');
  }
  /* With an unsigned token the suite's request carries one header we did not
   * return (X-Amz-Security-Token, added by the caller). */
  size_t extra = token && !token_signed ? 1 : 0;
  CHECK_INT(found, res.nadd);
  CHECK_INT(want_added, res.nadd + extra);
  ok = mg_test_failed_checks_ == before;
done:
  mg_free(want_debug);
  mg_buf_cleanup(&d);
  suite_req_free(&r);
  mg_free(akid);
  mg_free(secret);
  mg_free(region);
  mg_free(service);
  mg_free(ts);
  mg_free(sign_body);
  mg_free(omit);
  mg_free(token);
  mg_free(req_text);
  mg_free(creq);
  mg_free(sts);
  mg_free(sig);
  mg_free(signed_req);
  return ok;
}

static int dir_filter(const struct dirent *e) { return e->d_name[0] != '.'; }

/* Each case directory holds a header-signing variant (run here) and a
 * presigned-URL variant (query-*.txt: X-Amz-* in the query string), which
 * moongate does not implement: it signs headers only. */
MG_TEST(aws_suite) {
  const char *shared = getenv("MG_SHARED_DIR");
  char dir[512];
  snprintf(dir, sizeof dir, "%s/aws-sigv4-test-suite/v4", shared ? shared : "../shared");
  struct dirent **names = NULL;
  int n = scandir(dir, &names, dir_filter, alphasort);
  if (n < 0) {
    printf("skipped: aws-sigv4-test-suite not found (%s)\n", dir);
    return;
  }
  int ran = 0, passed = 0, skipped = 0, query_variants = 0;
  for (int i = 0; i < n; i++) {
    const char *name = names[i]->d_name;
    char *ctx = case_file(dir, name, "context.json", NULL);
    char *q = case_file(dir, name, "query-signature.txt", NULL);
    if (q) query_variants++;
    mg_free(q);
    if (!ctx) {
      MG_FAIL_("%s: no context.json", name);
    } else {
      char *normalize = json_get(ctx, "normalize");
      if (normalize && strcmp(normalize, "false") == 0) {
        /* normalize=false signs the path verbatim: S3's convention. The
         * services moongate signs (aps, sts) always normalise. */
        printf("  skip %-40s normalize=false (S3-style verbatim path)\n", name);
        skipped++;
      } else {
        ran++;
        if (run_suite_case(dir, name, ctx)) passed++;
        else printf("  FAIL %s\n", name);
      }
      mg_free(normalize);
    }
    mg_free(ctx);
    free(names[i]);
  }
  free(names);
  printf("  aws suite: %d cases, header signing: %d ran, %d passed, %d skipped; "
         "%d presigned-URL (query) variants skipped: not implemented\n",
         n, ran, passed, skipped, query_variants);
  CHECK(ran > 0);
  CHECK_INT(passed, ran);
}

/* ---- canonical pieces --------------------------------------------------------- */

MG_TEST(canonical_uri) {
  static const struct {
    const char *in, *want;
  } cases[] = {
      {"", "/"},
      {"/", "/"},
      {"//", "/"},
      {"/a/b/..", "/a"}, /* as AWS's signers (and botocore) do, not RFC 3986's "/a/" */
      {"/a/b/../", "/a/"},
      {"/a/./b/.", "/a/b"},
      {"/..", "/"},
      {"/../../a", "/a"},
      {"a/b", "/a/b"},
      {"/a//b///c//", "/a/b/c/"},
      {"/.a/..b/...", "/.a/..b/..."},
      {"/%2E%2E/x", "/%252E%252E/x"}, /* encoded dots are not dot segments */
      {"/example space/", "/example%20space/"},
      {"/a%20b", "/a%2520b"}, /* the wire form is encoded again */
      {"/ws-1/api/v1/remote_write", "/ws-1/api/v1/remote_write"},
      {"/\xe1\x88\xb4", "/%E1%88%B4"},
      {"/a+b=c;d:e@f!$&'()*,", "/a%2Bb%3Dc%3Bd%3Ae%40f%21%24%26%27%28%29%2A%2C"},
      {"/-._~AZaz09", "/-._~AZaz09"},
  };
  char got[256];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    CHECK_INT(creq_line(cases[i].in, NULL, HOST, 1, 1, got, sizeof got), 0);
    CHECK_STR(got, cases[i].want);
  }
  /* A NULL path is an empty path. */
  CHECK_INT(creq_line(NULL, NULL, HOST, 1, 1, got, sizeof got), 0);
  CHECK_STR(got, "/");
  /* Many segments (past the on-stack list). */
  char path[400] = "", want[400] = "";
  for (int i = 0; i < 40; i++) strcat(path, i % 3 == 2 ? "/.." : "/s");
  for (int i = 0; i < 40; i++)
    if (i % 3 == 1) strcat(want, "/s");
  strcat(want, "/s");
  CHECK_INT(creq_line(path, NULL, HOST, 1, 1, got, sizeof got), 0);
  CHECK_STR(got, want);
}

MG_TEST(canonical_query) {
  static const struct {
    const char *in, *want;
  } cases[] = {
      {"", ""},
      {"a=1", "a=1"},
      {"b=2&a=1&a=0", "a=0&a=1&b=2"},
      {"a", "a="},
      {"a=", "a="},
      {"=v", "=v"},
      {"a&&b&", "a=&b="}, /* empty pieces are not parameters */
      {"a=1=2", "a=1%3D2"},
      {"%e1%88%b4=x", "%E1%88%B4=x"},
      {"\xe1\x88\xb4=bar", "%E1%88%B4=bar"},
      {"k=%41%7e%2d", "k=A~-"}, /* unreserved bytes are decoded */
      {"k=a+b", "k=a%2Bb"},     /* '+' is a plus, not a space */
      {"k=a b", "k=a%20b"},
      {"k=%zz&j=%&i=%4", "i=%254&j=%25&k=%25zz"},
      {"k=%2520", "k=%2520"},
      {"Param-3=Value3&Param=Value2&%E1%88%B4=Value1",
       "%E1%88%B4=Value1&Param=Value2&Param-3=Value3"},
      {"a-=1&a=2", "a=2&a-=1"}, /* by name first, then value: not by "name=value" */
      {"B=1&a=1&_=1&~=1", "B=1&_=1&a=1&~=1"},
  };
  char got[256];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    CHECK_INT(creq_line("/", cases[i].in, HOST, 1, 2, got, sizeof got), 0);
    CHECK_STR(got, cases[i].want);
  }
}

MG_TEST(canonical_headers) {
  const mg_sigv4_header_t hs[] = {
      {"Host", "h"},
      {"My-Header", "  a \t b   c  "},
      {"X-Empty", ""},
      {"X-Blank", " \t "},
      {"my-header", "second"},
      {"Z", "\"a   b\""},
      {"A-Fold", "one\r\n  two\n\tthree"},
      {"X-UTF8", "caf\xc3\xa9  "},
  };
  mg_sigv4_request_t r = {.method = "POST", .url_path = "/", .headers = hs, .nheaders = 8,
                          .region = "r", .service = "s", .unix_time = 0};
  mg_sigv4_creds_t c = {"AK", "SK", NULL};
  mg_sigv4_result_t res;
  mg_buf_t d;
  mg_buf_init(&d, 0);
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, 0, &res, &d) == 0);
  CHECK(contains(d.data, d.len,
                 "\n\na-fold:one two three\nhost:h\nmy-header:a b c,second\n"
                 "x-amz-date:19700101T000000Z\nx-blank:\nx-empty:\n"
                 "x-utf8:caf\xc3\xa9\nz:\"a b\"\n\n"
                 "a-fold;host;my-header;x-amz-date;x-blank;x-empty;x-utf8;z\n" EMPTY_SHA256
                 "\n\n"));
  CHECK(contains(res.authorization, strlen(res.authorization),
                 "SignedHeaders=a-fold;host;my-header;x-amz-date;x-blank;x-empty;x-utf8;z, "));
  CHECK_STR(res.amz_date, "19700101T000000Z");
  mg_buf_cleanup(&d);

  /* 40 headers (past the on-stack list) keep their order within a name. */
  mg_sigv4_header_t many[40];
  char names[40][8], values[40][8];
  for (int i = 0; i < 40; i++) {
    snprintf(names[i], sizeof names[i], i == 0 ? "host" : i % 2 ? "X-B" : "x-a");
    snprintf(values[i], sizeof values[i], "%d", 39 - i);
    many[i] = (mg_sigv4_header_t){names[i], values[i]};
  }
  r.headers = many;
  r.nheaders = 40;
  mg_buf_init(&d, 0);
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, 0, &res, &d) == 0);
  CHECK(contains(d.data, d.len,
                 "\nx-a:37,35,33,31,29,27,25,23,21,19,17,15,13,11,9,7,5,3,1\n"
                 "x-amz-date:19700101T000000Z\n"
                 "x-b:38,36,34,32,30,28,26,24,22,20,18,16,14,12,10,8,6,4,2,0\n\n"));
  mg_buf_cleanup(&d);
}

MG_TEST(payload_and_added_headers) {
  const mg_sigv4_header_t hs[] = {{"host", "aps-workspaces.us-west-2.amazonaws.com"},
                                  {"Content-Encoding", "snappy"}};
  mg_sigv4_request_t r = {.method = "POST", .url_path = "/workspaces/ws-1/api/v1/remote_write",
                          .headers = hs, .nheaders = 2, .payload = "abc", .payload_len = 3,
                          .region = "us-west-2", .service = "aps", .unix_time = EX_TIME};
  mg_sigv4_creds_t c = {"ASIAEXAMPLE", EX_SECRET, "tok/en+=="};
  mg_sigv4_result_t a, b;
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, MG_SIGV4_ADD_CONTENT_SHA256, &a, NULL) == 0);
  CHECK_STR(a.content_sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK_INT(a.nadd, 4);
  CHECK_STR(a.add[0].name, "Authorization");
  CHECK_STR(a.add[1].name, "X-Amz-Date");
  CHECK_STR(a.add[2].name, "X-Amz-Content-SHA256");
  CHECK_STR(a.add[2].value, a.content_sha256);
  CHECK_STR(a.add[3].name, "X-Amz-Security-Token");
  CHECK(a.add[3].value == c.session_token);
  CHECK(contains(a.authorization, strlen(a.authorization),
                 "Credential=ASIAEXAMPLE/20150830/us-west-2/aps/aws4_request, SignedHeaders="
                 "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-security-token, "));
  /* A precomputed hash signs the same. */
  r.payload = NULL;
  r.payload_len = 0;
  r.payload_sha256_hex = a.content_sha256;
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, MG_SIGV4_ADD_CONTENT_SHA256, &b, NULL) == 0);
  CHECK_STR(b.authorization, a.authorization);
  /* So does UNSIGNED-PAYLOAD, as given. */
  r.payload_sha256_hex = "UNSIGNED-PAYLOAD";
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, MG_SIGV4_ADD_CONTENT_SHA256, &b, NULL) == 0);
  CHECK_STR(b.content_sha256, "UNSIGNED-PAYLOAD");
  CHECK(strcmp(b.authorization, a.authorization) != 0);
  /* Without the flag the hash is in the canonical request but not a header. */
  r.payload_sha256_hex = NULL;
  r.payload = "abc";
  r.payload_len = 3;
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, 0, &b, NULL) == 0);
  CHECK_INT(b.nadd, 3);
  CHECK_STR(b.add[2].name, "X-Amz-Security-Token");
  CHECK(!contains(b.authorization, strlen(b.authorization), "x-amz-content-sha256"));
  /* An empty body hashes as the empty string, with or without a pointer. */
  r.payload = NULL;
  r.payload_len = 0;
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, MG_SIGV4_ADD_CONTENT_SHA256, &b, NULL) == 0);
  CHECK_STR(b.content_sha256, EMPTY_SHA256);
  /* An empty token is no token. */
  c.session_token = "";
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, 0, &b, NULL) == 0);
  CHECK_INT(b.nadd, 2);
}

/* x-amz-date against libc's gmtime_r over the whole range. */
MG_TEST(amz_date) {
  mg_sigv4_request_t r = {.method = "GET", .url_path = "/", .headers = HOST, .nheaders = 1,
                          .region = "r", .service = "s"};
  mg_sigv4_creds_t c = {"AK", "SK", NULL};
  mg_sigv4_result_t res;
  static const int64_t fixed[] = {0, 59, 86399, 86400, 951782400 /* 2000-02-29 */,
                                  951868799, 4107542399 /* 2100-02-28T23:59:59 */, 4107542400,
                                  253402300799, 68169600 /* 1972-02-29 */, 2147483647,
                                  2147483648};
  uint64_t x = 0x9e3779b97f4a7c15u;
  for (int i = 0; i < 20000; i++) {
    int64_t t;
    if (i < (int)(sizeof fixed / sizeof fixed[0])) {
      t = fixed[i];
    } else {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      t = (int64_t)(x % 253402300800u);
    }
    r.unix_time = t;
    REQUIRE(mg_sigv4_sign(NULL, &r, &c, 0, &res, NULL) == 0);
    time_t tt = (time_t)t;
    struct tm tm;
    char want[96];
    gmtime_r(&tt, &tm);
    snprintf(want, sizeof want, "%04d%02d%02dT%02d%02d%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (strcmp(res.amz_date, want) != 0) {
      CHECK_STR(res.amz_date, want);
      break;
    }
  }
  r.unix_time = -1;
  CHECK_INT(mg_sigv4_sign(NULL, &r, &c, 0, &res, NULL), MG_EINVAL);
  r.unix_time = INT64_C(253402300800);
  CHECK_INT(mg_sigv4_sign(NULL, &r, &c, 0, &res, NULL), MG_EINVAL);
}

/* ---- key cache ---------------------------------------------------------------- */

MG_TEST(key_cache) {
  mg_sigv4_request_t r = {.method = "POST", .url_path = "/", .headers = HOST, .nheaders = 1,
                          .region = "us-east-1", .service = "aps", .unix_time = EX_TIME};
  mg_sigv4_creds_t c = {EX_AKID, EX_SECRET, "session-token-value"};
  mg_sigv4_key_cache_t k;
  mg_sigv4_key_cache_init(&k);
  mg_sigv4_result_t cached, fresh;
  REQUIRE(mg_sigv4_sign(&k, &r, &c, 0, &cached, NULL) == 0);
  CHECK_U64(k.misses, 1);
  CHECK_U64(k.hits, 0);
  r.unix_time += 3600; /* same day */
  REQUIRE(mg_sigv4_sign(&k, &r, &c, 0, &cached, NULL) == 0);
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, 0, &fresh, NULL) == 0);
  CHECK_U64(k.hits, 1);
  CHECK_STR(cached.authorization, fresh.authorization);

  /* Each part of the key's identity forces a new derivation, and the
   * result always equals an uncached signature. */
  struct {
    const char *what;
    int64_t dt;
    const char *akid, *secret, *region, *service;
  } changes[] = {
      {"next day", 86400, EX_AKID, EX_SECRET, "us-east-1", "aps"},
      {"access key id", 86400, "AKIDOTHER", EX_SECRET, "us-east-1", "aps"},
      {"secret, same key id", 86400, "AKIDOTHER", "another-secret", "us-east-1", "aps"},
      {"region", 86400, "AKIDOTHER", "another-secret", "eu-west-1", "aps"},
      {"service", 86400, "AKIDOTHER", "another-secret", "eu-west-1", "sts"},
  };
  char prev[MG_SIGV4_AUTHORIZATION_MAX];
  strcpy(prev, cached.authorization);
  for (size_t i = 0; i < sizeof changes / sizeof changes[0]; i++) {
    r.unix_time = EX_TIME + changes[i].dt;
    r.region = changes[i].region;
    r.service = changes[i].service;
    c.access_key_id = changes[i].akid;
    c.secret_access_key = changes[i].secret;
    uint64_t misses = k.misses, hits = k.hits;
    REQUIRE(mg_sigv4_sign(&k, &r, &c, 0, &cached, NULL) == 0);
    REQUIRE(mg_sigv4_sign(NULL, &r, &c, 0, &fresh, NULL) == 0);
    if (k.misses != misses + 1 || k.hits != hits) MG_FAIL_("%s: not a miss", changes[i].what);
    CHECK_STR(cached.authorization, fresh.authorization);
    /* The key id is not part of the signed text (only of Credential=), so
     * changing it alone keeps the signature; anything else changes it. */
    const char *a = strstr(prev, "Signature="), *b = strstr(cached.authorization, "Signature=");
    bool same_sig = !a || !b || strcmp(a, b) == 0;
    if (same_sig != (i == 1))
      MG_FAIL_("%s: signature %s", changes[i].what, same_sig ? "unchanged" : "changed");
    if (strcmp(prev, cached.authorization) == 0)
      MG_FAIL_("%s: same Authorization", changes[i].what);
    strcpy(prev, cached.authorization);
    REQUIRE(mg_sigv4_sign(&k, &r, &c, 0, &cached, NULL) == 0);
    CHECK_U64(k.hits, hits + 1);
  }
  /* The cache holds the derived key, never the secret or the token. */
  CHECK(!contains(&k, sizeof k, "another-secret"));
  CHECK(!contains(&k, sizeof k, "session-token-value"));
  CHECK(!contains(&cached, sizeof cached, "another-secret"));
  /* A failed signature leaves the entry alone. */
  uint64_t misses = k.misses;
  r.nheaders = 0;
  CHECK_INT(mg_sigv4_sign(&k, &r, &c, 0, &cached, NULL), MG_EINVAL);
  CHECK_U64(k.misses, misses);
  mg_sigv4_key_cache_cleanup(&k);
  static const mg_sigv4_key_cache_t zero;
  CHECK(memcmp(&k, &zero, sizeof k) == 0);
}

/* ---- 403 debug text ------------------------------------------------------------- */

MG_TEST(debug_text) {
  const char *secret = "SECRETsecretSECRETsecretSECRETsecret1234";
  const char *token = "FwoGZXIvYXdzEXAMPLETOKEN/abc+def==";
  const mg_sigv4_header_t hs[] = {{"Host", "sts.amazonaws.com"}};
  mg_sigv4_request_t r = {.method = "POST", .url_path = "/", .query = "Action=AssumeRole",
                          .headers = hs, .nheaders = 1, .payload = "x=1", .payload_len = 3,
                          .region = "us-east-1", .service = "sts", .unix_time = EX_TIME};
  mg_sigv4_creds_t c = {"ASIAEXAMPLE", secret, token};
  mg_sigv4_result_t res;
  mg_buf_t d;
  mg_buf_init(&d, 0);
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, MG_SIGV4_ADD_CONTENT_SHA256, &res, &d) == 0);
  CHECK(!contains(d.data, d.len, secret));
  CHECK(!contains(d.data, d.len, token));
  CHECK(!contains(d.data, d.len, "SECRET"));
  CHECK(contains(d.data, d.len, "\nx-amz-security-token:<session token>\n"));
  CHECK(contains(d.data, d.len, "POST\n/\nAction=AssumeRole\nhost:sts.amazonaws.com\n"));
  CHECK(contains(d.data, d.len,
                 "\n\nAWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/sts/aws4_request\n"));
  /* The string to sign's last line is the hash of the real canonical
   * request, so it differs from the hash of the text shown. */
  char last[80];
  debug_line(&d, 14, last, sizeof last);
  CHECK_INT(strlen(last), 64);
  CHECK(!contains(res.authorization, strlen(res.authorization), secret));
  /* Appends: the caller decides when to reset. A debug limit is honoured. */
  size_t len = d.len;
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, 0, &res, &d) == 0);
  CHECK(d.len > len);
  mg_buf_cleanup(&d);
  mg_buf_init(&d, 64);
  CHECK_INT(mg_sigv4_sign(NULL, &r, &c, 0, &res, &d), MG_ETOOBIG);
  CHECK_STR(res.authorization, "");
  CHECK(d.len <= 64);
  mg_buf_cleanup(&d);
}

/* ---- input checks ----------------------------------------------------------------- */

MG_TEST(invalid_input) {
  mg_sigv4_header_t hs[3] = {{"Host", "h"}, {"X-Ok", "v"}, {"X-Ok", "v"}};
  mg_sigv4_request_t base = {.method = "GET", .url_path = "/", .headers = hs, .nheaders = 3,
                             .region = "us-east-1", .service = "aps", .unix_time = EX_TIME};
  mg_sigv4_creds_t cbase = {"AK", "SK", "TOKEN"};
  mg_sigv4_result_t res;
  REQUIRE(mg_sigv4_sign(NULL, &base, &cbase, MG_SIGV4_ADD_CONTENT_SHA256, &res, NULL) == 0);

#define BAD(field, value, flags)                                                   \
  do {                                                                             \
    mg_sigv4_request_t r = base;                                                   \
    mg_sigv4_creds_t c = cbase;                                                    \
    field = value;                                                                 \
    memset(&res, 'x', sizeof res);                                                 \
    int rc_ = mg_sigv4_sign(NULL, &r, &c, flags, &res, NULL);                      \
    if (rc_ != MG_EINVAL) MG_FAIL_("%s = %s: got %s", #field, #value, mg_err_name(rc_)); \
    CHECK(res.authorization[0] == 0 && res.nadd == 0);                             \
  } while (0)
  BAD(r.method, NULL, 0);
  BAD(r.method, "", 0);
  BAD(r.method, "GE T", 0);
  BAD(r.method, "GET\n", 0);
  BAD(r.region, NULL, 0);
  BAD(r.region, "", 0);
  BAD(r.region, "us/east", 0);
  BAD(r.region, "us east", 0);
  BAD(r.region, "a123456789012345678901234567890123456789012345678901234567890123", 0);
  BAD(r.service, "a,b", 0);
  BAD(r.service, NULL, 0);
  BAD(c.access_key_id, NULL, 0);
  BAD(c.access_key_id, "", 0);
  BAD(c.access_key_id, "AK/ID", 0);
  BAD(c.access_key_id, "AK ID", 0);
  BAD(c.secret_access_key, NULL, 0);
  BAD(c.secret_access_key, "", 0);
  BAD(c.session_token, "tok en", 0);
  BAD(c.session_token, "tok\r\nX-Evil: 1", 0);
  BAD(r.unix_time, -86400, 0);
  BAD(r.payload_sha256_hex, "", 0);
  BAD(r.payload_sha256_hex, "has space", 0);
  BAD(r.payload_sha256_hex, EMPTY_SHA256 "0", 0);
  BAD(r.payload_len, 5, 0); /* no payload pointer */
  BAD(r.nheaders, 0, 0);    /* no host */
  BAD(r.headers, NULL, 0);
  BAD(hs[1].name, "X-Bad Name", 0);
  BAD(hs[1].name, "", 0);
  BAD(hs[1].name, "X:Y", 0);
  BAD(hs[1].value, NULL, 0);
  BAD(hs[1].name, "Authorization", 0);
  BAD(hs[1].name, "X-AMZ-DATE", 0);
  BAD(hs[1].name, "x-amz-security-token", 0);
  BAD(hs[1].name, "X-Amz-Content-Sha256", MG_SIGV4_ADD_CONTENT_SHA256);
#undef BAD
  hs[1].name = "X-Ok";
  hs[1].value = "v";
  CHECK_INT(mg_sigv4_sign(NULL, NULL, &cbase, 0, &res, NULL), MG_EINVAL);
  CHECK_INT(mg_sigv4_sign(NULL, &base, NULL, 0, &res, NULL), MG_EINVAL);
  CHECK_INT(mg_sigv4_sign(NULL, &base, &cbase, 0, NULL, NULL), MG_EINVAL);

  /* What the signer adds is fine from the caller when the signer does not
   * add it: a token header without a session token, a content hash
   * without the flag (both signed as given). */
  mg_sigv4_header_t own[] = {{"Host", "h"}, {"X-Amz-Security-Token", "t"},
                             {"x-amz-content-sha256", "UNSIGNED-PAYLOAD"}};
  mg_sigv4_request_t r = base;
  r.headers = own;
  mg_sigv4_creds_t c = {"AK", "SK", NULL};
  mg_buf_t d;
  mg_buf_init(&d, 0);
  CHECK_INT(mg_sigv4_sign(NULL, &r, &c, 0, &res, &d), 0);
  CHECK_INT(res.nadd, 2);
  CHECK(contains(res.authorization, strlen(res.authorization),
                 "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, "));
  /* A caller's token header is redacted in the debug text too. */
  CHECK(contains(d.data, d.len, "\nx-amz-security-token:<session token>\n"));
  mg_buf_cleanup(&d);

  /* Limits: a 64-char region, 129-char key id, 257-byte secret. */
  char longs[300];
  memset(longs, 'a', sizeof longs);
  longs[63] = '\0';
  r = base;
  r.region = longs;
  CHECK_INT(mg_sigv4_sign(NULL, &r, &c, 0, &res, NULL), 0);
  longs[63] = 'a';
  longs[128] = '\0';
  c.access_key_id = longs;
  CHECK_INT(mg_sigv4_sign(NULL, &base, &c, 0, &res, NULL), 0);
  longs[128] = 'a';
  longs[129] = '\0';
  CHECK_INT(mg_sigv4_sign(NULL, &base, &c, 0, &res, NULL), MG_EINVAL);
  c.access_key_id = "AK";
  longs[129] = 'a';
  longs[256] = '\0';
  c.secret_access_key = longs;
  CHECK_INT(mg_sigv4_sign(NULL, &base, &c, 0, &res, NULL), 0);
  longs[256] = 'a';
  longs[257] = '\0';
  CHECK_INT(mg_sigv4_sign(NULL, &base, &c, 0, &res, NULL), MG_EINVAL);
}

/* A signed-header list too long for the Authorization buffer is refused,
 * not truncated. */
MG_TEST(authorization_too_long) {
  enum { N = 100 };
  mg_sigv4_header_t hs[N];
  char names[N][24];
  hs[0] = (mg_sigv4_header_t){"host", "h"};
  for (int i = 1; i < N; i++) {
    snprintf(names[i], sizeof names[i], "x-header-number-%03d", i);
    hs[i] = (mg_sigv4_header_t){names[i], "v"};
  }
  mg_sigv4_request_t r = {.method = "GET", .url_path = "/", .headers = hs, .nheaders = N,
                          .region = "r", .service = "s", .unix_time = 0};
  mg_sigv4_creds_t c = {"AK", "SK", NULL};
  mg_sigv4_result_t res;
  CHECK_INT(mg_sigv4_sign(NULL, &r, &c, 0, &res, NULL), MG_ETOOBIG);
  CHECK_INT(res.nadd, 0);
  r.nheaders = 40;
  CHECK_INT(mg_sigv4_sign(NULL, &r, &c, 0, &res, NULL), 0);
  CHECK(strlen(res.authorization) > 800);
}

/* Every allocation failure is reported as MG_ENOMEM and leaks nothing
 * (ASan checks the leaks); the first success equals the reference. */
MG_TEST(alloc_failures) {
  mg_sigv4_header_t hs[30];
  char names[30][8];
  hs[0] = (mg_sigv4_header_t){"Host", "h"};
  for (int i = 1; i < 30; i++) {
    snprintf(names[i], sizeof names[i], "x-%d", i);
    hs[i] = (mg_sigv4_header_t){names[i], "v"};
  }
  char path[200] = "";
  for (int i = 0; i < 20; i++) strcat(path, "/seg");
  mg_sigv4_request_t r = {.method = "GET", .url_path = path, .query = "b=2&a=1", .headers = hs,
                          .nheaders = 30, .region = "r", .service = "s", .unix_time = EX_TIME};
  mg_sigv4_creds_t c = {"AK", "SK", "T"};
  mg_sigv4_result_t want, res;
  REQUIRE(mg_sigv4_sign(NULL, &r, &c, 0, &want, NULL) == 0);
  int failures = 0;
  for (uint64_t nth = 1; nth < 100; nth++) {
    mg_buf_t d;
    mg_buf_init(&d, 0);
    mg_mem_fail_at(nth);
    int rc = mg_sigv4_sign(NULL, &r, &c, 0, &res, &d);
    mg_mem_fail_at(0);
    mg_buf_cleanup(&d);
    if (rc == 0) {
      CHECK_STR(res.authorization, want.authorization);
      break;
    }
    CHECK_INT(rc, MG_ENOMEM);
    failures++;
  }
  CHECK(failures >= 3); /* header list, path segments, query, debug */
}

/* ---- botocore oracle (driven by tests/integration/test_sigv4_botocore.py) ---- */

static int hexdigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* A driver field: hex bytes; "-" is NULL (returns 1), "=" the empty string. */
static int unhex(const char *s, mg_buf_t *out) {
  mg_buf_reset(out);
  if (strcmp(s, "-") == 0) return 1;
  if (strcmp(s, "=") == 0) s = "";
  size_t n = strlen(s);
  if (n % 2) return -1;
  if (mg_buf_reserve(out, n / 2 + 1)) return -1;
  for (size_t i = 0; i < n; i += 2) {
    int hi = hexdigit(s[i]), lo = hexdigit(s[i + 1]);
    if (hi < 0 || lo < 0) return -1;
    out->data[out->len++] = (char)(hi << 4 | lo);
  }
  out->data[out->len] = '\0';
  if (mg_buf_reserve(out, 1)) return -1; /* data is never NULL after this */
  return 0;
}

/* Input, one request per block (hex fields, "-" for NULL, "=" for empty):
 *   R method path query region service unix_time flags akid secret token mode payload
 *   H name value        (repeated)
 *   E
 * mode B: payload is the body; P: payload is payload_sha256_hex.
 * Output, one line per request: "OK\t<authorization>\t<debug text, hex>" or
 * "ERR\t<error name>". */
MG_TEST(oracle) {
  const char *in_path = getenv("MG_SIGV4_ORACLE_IN"), *out_path = getenv("MG_SIGV4_ORACLE_OUT");
  if (!in_path || !out_path) {
    printf("  oracle: MG_SIGV4_ORACLE_IN/OUT not set; run by test_sigv4_botocore.py\n");
    return;
  }
  FILE *in = fopen(in_path, "r"), *out = fopen(out_path, "w");
  REQUIRE(in && out);
  enum { F_METHOD, F_PATH, F_QUERY, F_REGION, F_SERVICE, F_TIME, F_FLAGS, F_AKID, F_SECRET,
         F_TOKEN, F_MODE, F_PAYLOAD, F_N };
  mg_buf_t f[F_N], hn[64], hv[64];
  for (int i = 0; i < F_N; i++) mg_buf_init(&f[i], 0);
  for (int i = 0; i < 64; i++) mg_buf_init(&hn[i], 0), mg_buf_init(&hv[i], 0);
  mg_sigv4_header_t hs[64];
  size_t nh = 0;
  bool isnull[F_N] = {false};
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int requests = 0;
  while ((len = getline(&line, &cap, in)) > 0) {
    if (line[len - 1] == '\n') line[--len] = '\0';
    if (line[0] == 'R') {
      nh = 0;
      char *save = NULL, *tok = strtok_r(line + 1, " ", &save);
      for (int i = 0; i < F_N; i++, tok = strtok_r(NULL, " ", &save)) {
        REQUIRE(tok);
        if (i == F_REGION || i == F_SERVICE || i == F_TIME || i == F_FLAGS || i == F_MODE) {
          mg_buf_reset(&f[i]);
          REQUIRE(mg_buf_append_str(&f[i], tok) == 0);
          isnull[i] = false;
        } else {
          int u = unhex(tok, &f[i]);
          REQUIRE(u >= 0);
          isnull[i] = u == 1;
        }
      }
    } else if (line[0] == 'H') {
      REQUIRE(nh < 64);
      char *save = NULL, *a = strtok_r(line + 1, " ", &save), *b = strtok_r(NULL, " ", &save);
      REQUIRE(a && b && unhex(a, &hn[nh]) == 0 && unhex(b, &hv[nh]) == 0);
      hs[nh] = (mg_sigv4_header_t){hn[nh].data, hv[nh].data};
      nh++;
    } else if (line[0] == 'E') {
      bool body = f[F_MODE].data[0] == 'B';
      mg_sigv4_request_t r = {
          .method = isnull[F_METHOD] ? NULL : f[F_METHOD].data,
          .url_path = isnull[F_PATH] ? NULL : f[F_PATH].data,
          .query = isnull[F_QUERY] ? NULL : f[F_QUERY].data,
          .headers = hs,
          .nheaders = nh,
          .payload = body ? f[F_PAYLOAD].data : NULL,
          .payload_len = body ? f[F_PAYLOAD].len : 0,
          .payload_sha256_hex = body ? NULL : f[F_PAYLOAD].data,
          .region = f[F_REGION].data,
          .service = f[F_SERVICE].data,
          .unix_time = strtoll(f[F_TIME].data, NULL, 10),
      };
      mg_sigv4_creds_t c = {f[F_AKID].data, f[F_SECRET].data,
                            isnull[F_TOKEN] ? NULL : f[F_TOKEN].data};
      mg_sigv4_result_t res;
      mg_buf_t d;
      mg_buf_init(&d, 0);
      int rc = mg_sigv4_sign(NULL, &r, &c, atoi(f[F_FLAGS].data), &res, &d);
      if (rc) {
        fprintf(out, "ERR\t%s\n", mg_err_name(rc));
      } else {
        fprintf(out, "OK\t%s\t", res.authorization);
        for (size_t i = 0; i < d.len; i++) fprintf(out, "%02x", (unsigned char)d.data[i]);
        fputc('\n', out);
      }
      mg_buf_cleanup(&d);
      requests++;
    }
  }
  free(line);
  for (int i = 0; i < F_N; i++) mg_buf_cleanup_secret(&f[i]);
  for (int i = 0; i < 64; i++) mg_buf_cleanup(&hn[i]), mg_buf_cleanup(&hv[i]);
  fclose(in);
  CHECK(fclose(out) == 0);
  printf("  oracle: signed %d requests\n", requests);
  CHECK(requests > 0);
}

MG_TEST_MAIN()
