/* libFuzzer driver for mg_json and the documents built on it: any input
 * is accepted or refused the same way twice, as an object and as an array;
 * accepted members and elements have valid UTF-8 keys and string values
 * and numbers in RFC 8259 form; mg_sd_http_decode (HTTP discovery) yields
 * targets whose label names are valid and which all carry __meta_url, or
 * an error that leaves the list as it was;
 * mg_creds_parse_json (IMDS, ECS, credential_process) either yields a
 * value whose fields satisfy the header-safety rules or an error whose
 * message holds none of the document's string values; mg_creds_parse_time
 * round-trips what it accepts through gmtime. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mg_creds.h"
#include "mg_err.h"
#include "mg_json.h"
#include "mg_mem.h"
#include "mg_sd_http.h"

#define ENSURE(c)                                                                 \
  do {                                                                            \
    if (!(c)) {                                                                   \
      fprintf(stderr, "fuzz_json: invariant failed: %s (line %d)\n", #c, __LINE__); \
      abort();                                                                    \
    }                                                                             \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool utf8_ok(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned char c = s[i];
    size_t k;
    unsigned cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xE0) == 0xC0) k = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) k = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) k = 4, cp = c & 0x07;
    else return false;
    if (i + k > n) return false;
    for (size_t j = 1; j < k; j++) {
      if ((s[i + j] & 0xC0) != 0x80) return false;
      cp = cp << 6 | (s[i + j] & 0x3F);
    }
    if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += k;
  }
  return true;
}

static bool number_ok(mg_str_t v) {
  size_t i = 0;
  if (i < v.n && v.p[i] == '-') i++;
  if (i >= v.n) return false;
  if (v.p[i] == '0') i++;
  else if (v.p[i] >= '1' && v.p[i] <= '9') while (i < v.n && v.p[i] >= '0' && v.p[i] <= '9') i++;
  else return false;
  if (i < v.n && v.p[i] == '.') {
    size_t d = ++i;
    while (i < v.n && v.p[i] >= '0' && v.p[i] <= '9') i++;
    if (i == d) return false;
  }
  if (i < v.n && (v.p[i] == 'e' || v.p[i] == 'E')) {
    i++;
    if (i < v.n && (v.p[i] == '+' || v.p[i] == '-')) i++;
    size_t d = i;
    while (i < v.n && v.p[i] >= '0' && v.p[i] <= '9') i++;
    if (i == d) return false;
  }
  return i == v.n;
}

/* Every fixed word of the error messages: a "secret" made of these cannot
 * be told apart from the message's own text, so it is not looked for. */
static const char vocabulary[] =
    "AccessKeyId is missing; SecretAccessKey is missing; Expiration is missing; SessionToken Token is missing for a "
    "temporary access key id (ASIA...); a credential field appears twice; a credential field is not a string; "
    "Expiration is not an RFC 3339 time; credentials expired already (expiration ); access key id is empty, too long "
    "or has characters other than A-Z a-z 0-9 - _ .; secret access key is empty, longer than 256 bytes or not "
    "printable ASCII; session token is longer than 32768 bytes or not printable ASCII; not a JSON object (byte : "
    "expected an object, unterminated string, control byte in string, unterminated escape, truncated \\u escape, "
    "bad hex digit in \\u escape, unpaired low surrogate, unpaired high surrogate, invalid escape, invalid UTF-8, "
    "bad number, leading zero in number, bad fraction, bad exponent, unexpected character, nesting too deep, "
    "expected a member name, expected ':', unterminated container, expected ',' or '}', expected ',' or ']', "
    "expected a value, unterminated object, trailing data after the object); \"Version\": 1 is missing or another "
    "version; instance metadata answered Code=; document over 1048576 bytes; out of memory";

typedef struct st {
  int members;
  uint64_t digest;
  char strings[8][64]; /* credential values, to look for in error messages */
  int nstrings;
} st_t;

/* What any reported value must look like. */
static void check_value(mg_json_type_t type, mg_str_t value) {
  switch (type) {
  case MG_JSON_STRING: ENSURE(utf8_ok((const unsigned char *)value.p, value.n)); break;
  case MG_JSON_NUMBER: ENSURE(number_ok(value)); break;
  case MG_JSON_TRUE: ENSURE(mg_str_eq_c(value, "true")); break;
  case MG_JSON_FALSE: ENSURE(mg_str_eq_c(value, "false")); break;
  case MG_JSON_NULL: ENSURE(mg_str_eq_c(value, "null")); break;
  case MG_JSON_OBJECT: ENSURE(value.n >= 2 && value.p[0] == '{' && value.p[value.n - 1] == '}'); break;
  case MG_JSON_ARRAY: ENSURE(value.n >= 2 && value.p[0] == '[' && value.p[value.n - 1] == ']'); break;
  }
}

static int on_element(void *ud, size_t index, mg_json_type_t type, mg_str_t value) {
  st_t *s = ud;
  ENSURE(index == (size_t)s->members);
  check_value(type, value);
  s->members++;
  s->digest = (s->digest ^ (uint64_t)type) * 0x100000001b3ull;
  for (size_t i = 0; i < value.n; i++) s->digest = (s->digest ^ (unsigned char)value.p[i]) * 0x100000001b3ull;
  return 0;
}

static bool label_name_ok(const char *n) {
  if (!((*n >= 'a' && *n <= 'z') || (*n >= 'A' && *n <= 'Z') || *n == '_')) return false;
  for (n++; *n; n++)
    if (!((*n >= 'a' && *n <= 'z') || (*n >= 'A' && *n <= 'Z') || (*n >= '0' && *n <= '9') || *n == '_')) return false;
  return true;
}

static void check_http_sd(const char *in, size_t size, int array_rc) {
  mg_sd_targets_t ts = {0};
  mg_sd_targets_add(&ts, "before:1");
  char why[256] = "";
  int rc = mg_sd_http_decode(in, size, "http://sd.test/", &ts, why, sizeof why);
  if (rc != 0) {
    ENSURE(rc == MG_EPARSE || rc == MG_ENOMEM);
    ENSURE(ts.n == 1 && why[0] != '\0');
    for (const char *m = why; *m; m++) ENSURE((unsigned char)*m >= 0x20 && *m != 0x7f);
  } else {
    ENSURE(array_rc == 0 && ts.n >= 1 && ts.n <= 1 + MG_CONF_MAX_TARGETS);
    for (size_t i = 1; i < ts.n; i++) {
      ENSURE(strcmp(mg_kvs_get(&ts.v[i].labels, "__meta_url"), "http://sd.test/") == 0);
      ENSURE(ts.v[i].labels.n <= MG_CONF_MAX_LABELS + 1 && !mg_kvs_get(&ts.v[i].labels, "__address__"));
      for (size_t k = 0; k < ts.v[i].labels.n; k++) {
        ENSURE(label_name_ok(ts.v[i].labels.v[k].name));
        ENSURE(utf8_ok((const unsigned char *)ts.v[i].labels.v[k].value, strlen(ts.v[i].labels.v[k].value)));
      }
    }
  }
  mg_sd_targets_cleanup(&ts);
}

static int on_member(void *ud, mg_str_t key, mg_json_type_t type, mg_str_t value) {
  st_t *s = ud;
  ENSURE(utf8_ok((const unsigned char *)key.p, key.n));
  check_value(type, value);
  if (type == MG_JSON_STRING) {
    bool secretish = mg_str_eq_c(key, "SecretAccessKey") || mg_str_eq_c(key, "Token") ||
                     mg_str_eq_c(key, "SessionToken") || mg_str_eq_c(key, "AccessKeyId");
    if (secretish && value.n >= 12 && s->nstrings < 8 && !memchr(value.p, '\0', value.n)) {
      char v[64];
      snprintf(v, sizeof v, "%.*s", (int)(value.n < 63 ? value.n : 63), value.p);
      if (!strstr(vocabulary, v)) snprintf(s->strings[s->nstrings++], 64, "%s", v);
    }
    if (value.n >= 20) {
      int64_t ms;
      if (mg_creds_parse_time(value.p, value.n, &ms) == 0) {
        time_t t = (time_t)(ms / 1000);
        struct tm tm;
        ENSURE(ms >= 0 && gmtime_r(&t, &tm) && tm.tm_year + 1900 >= 1970);
      }
    }
  }
  s->members++;
  for (size_t i = 0; i < key.n; i++) s->digest = (s->digest ^ (unsigned char)key.p[i]) * 0x100000001b3ull;
  for (size_t i = 0; i < value.n; i++) s->digest = (s->digest ^ (unsigned char)value.p[i]) * 0x100000001b3ull;
  return 0;
}

static bool printable(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n == 0 || n > max) return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) return false;
  return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 1 << 16) return 0;
  const char *in = (const char *)data;
  st_t a = {0}, b = {0};
  mg_json_error_t ea, eb;
  int ra = mg_json_object(in, size, on_member, &a, &ea);
  int rb = mg_json_object(in, size, on_member, &b, &eb);
  ENSURE(ra == rb && a.members == b.members && a.digest == b.digest);
  ENSURE(ra == 0 || ra == MG_EPARSE);
  if (ra) ENSURE(ea.msg && ea.offset <= size && ea.offset == eb.offset);
  st_t aa = {0}, ab = {0};
  mg_json_error_t xa, xb;
  int qa = mg_json_array(in, size, on_element, &aa, &xa);
  int qb = mg_json_array(in, size, on_element, &ab, &xb);
  ENSURE(qa == qb && aa.members == ab.members && aa.digest == ab.digest);
  ENSURE(qa == 0 || qa == MG_EPARSE);
  if (qa) ENSURE(xa.msg && xa.offset <= size && xa.offset == xb.offset);
  ENSURE(!(qa == 0 && ra == 0)); /* one document is not both */
  check_http_sd(in, size, qa);
  static const mg_creds_doc_t docs[] = {MG_CREDS_DOC_IMDS, MG_CREDS_DOC_ECS, MG_CREDS_DOC_PROCESS};
  for (size_t d = 0; d < 3; d++) {
    char msg[512] = "";
    mg_creds_value_t *v = NULL;
    int rc = mg_creds_parse_json(docs[d], in, size, 1714579200000LL, "fuzz", "fuzz source", &v, msg, sizeof msg);
    if (rc == 0) {
      ENSURE(ra == 0 && v && msg[0] == '\0');
      ENSURE(printable(v->access_key_id, 128) && printable(v->secret_access_key, 256));
      ENSURE(!v->session_token || printable(v->session_token, 32 * 1024));
      ENSURE(v->expires_ms == 0 || v->expires_ms > 1714579200000LL);
      ENSURE(d == 2 || v->expires_ms != 0);
      mg_creds_value_unref(v);
    } else {
      ENSURE(v == NULL && msg[0] != '\0');
      /* IMDS's Code is quoted (it is a status word); it may contain anything. */
      if (strncmp(msg, "instance metadata answered Code=", 32) != 0)
        for (int i = 0; i < a.nstrings; i++) ENSURE(strstr(msg, a.strings[i]) == NULL);
    }
  }
  return 0;
}
