/* libFuzzer driver for mg_xml and the STS answers built on it: any input
 * is accepted or refused the same way twice (and with element ends, which
 * follow each leaf at once); accepted leaves have a path of
 * non-empty names within the depth limit and valid UTF-8 text; the error
 * line lies inside the input; mg_creds_parse_sts (AssumeRole and
 * AssumeRoleWithWebIdentity, HTTP 200 and 403) yields a well-formed value
 * or an error whose message holds none of the credential elements' text. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_creds.h"
#include "mg_err.h"
#include "mg_mem.h"
#include "mg_xml.h"

#define ENSURE(c)                                                                \
  do {                                                                           \
    if (!(c)) {                                                                  \
      fprintf(stderr, "fuzz_xml: invariant failed: %s (line %d)\n", #c, __LINE__); \
      abort();                                                                   \
    }                                                                            \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool utf8_ok(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    unsigned char c = s[i];
    size_t k;
    unsigned cp;
    if (c < 0x80) {
      if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') return false;
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
        (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFFFE || cp == 0xFFFF)
      return false;
    i += k;
  }
  return true;
}

/* Every fixed word of the error messages (see fuzz_json.c). */
static const char vocabulary[] =
    "STS AssumeRoleWithWebIdentity: HTTP 200 403 (body is not an AWS error document); answer is not XML (line : "
    "answer AccessKeyId is missing; SecretAccessKey is missing; Expiration is missing; SessionToken is missing for a "
    "temporary access key id (ASIA...); a credential field appears twice; a credential field is not a string; "
    "Expiration is not an RFC 3339 time; credentials expired already (expiration ); access key id is empty, too long "
    "or has characters other than A-Z a-z 0-9 - _ .; secret access key is empty, longer than 256 bytes or not "
    "printable ASCII; session token is longer than 32768 bytes or not printable ASCII; out of memory; expected a "
    "name, invalid UTF-8 in a name, unknown entity (only the five predefined ones and &#N; are allowed), bad "
    "character reference, character reference too long, character reference to a character XML does not allow, "
    "unterminated comment, '--' inside a comment, invalid character in a comment, misplaced XML declaration, bad "
    "processing instruction, unterminated processing instruction, invalid character in a processing instruction, "
    "DOCTYPE and other declarations are not accepted, unterminated start tag, expected a blank before an attribute, "
    "repeated attribute, too many attributes, expected '=' after an attribute name, attribute value must be quoted, "
    "unterminated attribute value, '<' in an attribute value, invalid character in an attribute value, elements "
    "nested too deep, expected '>' closing an end tag, end tag does not match its start tag, unterminated element, "
    "unterminated CDATA section, invalid character in CDATA, declarations are not accepted inside elements, ']]>' in "
    "text, invalid character in text, expected the root element, content after the root element";

typedef struct st {
  int leaves;
  char quoted[4096]; /* text of Code and Message elements: errors quote AWS's words on purpose */
  uint64_t digest;
  char secrets[8][64];
  int nsecrets;
} st_t;

static int on_leaf(void *ud, const mg_str_t *path, size_t depth, mg_str_t text) {
  st_t *s = ud;
  ENSURE(depth >= 1 && depth <= MG_XML_MAX_DEPTH);
  for (size_t i = 0; i < depth; i++) {
    ENSURE(path[i].n > 0 && utf8_ok((const unsigned char *)path[i].p, path[i].n));
    ENSURE(!memchr(path[i].p, '<', path[i].n) && !memchr(path[i].p, '>', path[i].n) &&
           !memchr(path[i].p, ' ', path[i].n));
  }
  ENSURE(utf8_ok((const unsigned char *)text.p, text.n));
  mg_str_t leaf = path[depth - 1];
  if (mg_str_eq_c(leaf, "Code") || mg_str_eq_c(leaf, "Message")) {
    size_t o = strlen(s->quoted);
    snprintf(s->quoted + o, sizeof s->quoted - o, "%.*s|", (int)text.n, text.p);
  }
  if ((mg_str_eq_c(leaf, "SecretAccessKey") || mg_str_eq_c(leaf, "SessionToken") || mg_str_eq_c(leaf, "AccessKeyId")) &&
      text.n >= 12 && s->nsecrets < 8 && !memchr(text.p, '\0', text.n)) {
    char v[64];
    snprintf(v, sizeof v, "%.*s", (int)(text.n < 63 ? text.n : 63), text.p);
    if (!strstr(vocabulary, v)) snprintf(s->secrets[s->nsecrets++], 64, "%s", v);
  }
  s->leaves++;
  for (size_t i = 0; i < text.n; i++) s->digest = (s->digest ^ (unsigned char)text.p[i]) * 0x100000001b3ull;
  s->digest = (s->digest ^ depth) * 0x100000001b3ull;
  return 0;
}

/* Element ends: every leaf ends right after it is reported, and every
 * end is at a depth within the limit. */
typedef struct ends {
  st_t leaves;
  int ends, open_leaf;
} ends_t;

static int count_leaf(void *ud, const mg_str_t *path, size_t depth, mg_str_t text) {
  ends_t *e = ud;
  ENSURE(e->open_leaf == 0);
  e->open_leaf = (int)depth;
  return on_leaf(&e->leaves, path, depth, text);
}

static int count_end(void *ud, const mg_str_t *path, size_t depth) {
  ends_t *e = ud;
  ENSURE(depth >= 1 && depth <= MG_XML_MAX_DEPTH && path[depth - 1].n > 0);
  ENSURE(e->open_leaf == 0 || e->open_leaf == (int)depth);
  e->open_leaf = 0;
  e->ends++;
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
  mg_xml_error_t ea, eb;
  int ra = mg_xml_parse(in, size, on_leaf, &a, &ea);
  int rb = mg_xml_parse(in, size, on_leaf, &b, &eb);
  ENSURE(ra == rb && a.leaves == b.leaves && a.digest == b.digest);
  ENSURE(ra == 0 || ra == MG_EPARSE);
  ends_t e = {0};
  mg_xml_handlers_t h = {.leaf = count_leaf, .end = count_end};
  ENSURE(mg_xml_parse_ex(in, size, &h, &e, NULL) == ra && e.leaves.digest == a.digest);
  ENSURE(e.leaves.leaves == a.leaves && (ra != 0 || e.ends >= a.leaves));
  if (ra) {
    uint32_t lines = 1;
    for (size_t i = 0; i < size; i++) lines += data[i] == '\n';
    ENSURE(ea.msg && ea.line >= 1 && ea.line <= lines && ea.line == eb.line);
  } else {
    ENSURE(a.leaves >= 1);
  }
  static const char *actions[] = {"AssumeRole", "AssumeRoleWithWebIdentity"};
  static const int statuses[] = {200, 403};
  for (size_t k = 0; k < 4; k++) {
    char msg[512] = "";
    mg_creds_value_t *v = NULL;
    int rc = mg_creds_parse_sts(actions[k & 1], statuses[k >> 1], in, size, 1714579200000LL, "fuzz", "fuzz", &v, msg,
                                sizeof msg);
    if (rc == 0) {
      ENSURE(ra == 0 && statuses[k >> 1] == 200 && v);
      ENSURE(printable(v->access_key_id, 128) && printable(v->secret_access_key, 256));
      ENSURE(v->session_token && printable(v->session_token, 32 * 1024));
      ENSURE(v->expires_ms > 1714579200000LL);
      mg_creds_value_unref(v);
    } else {
      ENSURE(!v && msg[0]);
      for (int i = 0; i < a.nsecrets; i++) ENSURE(strstr(msg, a.secrets[i]) == NULL || strstr(a.quoted, a.secrets[i]));
    }
  }
  return 0;
}
