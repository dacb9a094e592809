/* mg_json: recursive descent over one document, depth-bounded. Top-level
 * keys and string values are unescaped into one scratch block of the
 * input's size (unescaping never grows text), wiped and freed at the end;
 * nested values are only validated. Errors carry an offset, never input. */
#include "mg_json.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "mg_err.h"
#include "mg_mem.h"

typedef struct parser {
  const unsigned char *s;
  size_t n, i;
  mg_json_error_t *err;
} parser_t;

static int fail(parser_t *p, const char *msg) {
  if (p->err) {
    p->err->offset = p->i;
    p->err->msg = msg;
  }
  return MG_EPARSE;
}

static void skip_ws(parser_t *p) {
  while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
    p->i++;
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int read_u16(parser_t *p, unsigned *out) {
  if (p->n - p->i < 4) return fail(p, "truncated \\u escape");
  unsigned v = 0;
  for (int k = 0; k < 4; k++) {
    int h = hexval(p->s[p->i + (size_t)k]);
    if (h < 0) return fail(p, "bad hex digit in \\u escape");
    v = v << 4 | (unsigned)h;
  }
  p->i += 4;
  *out = v;
  return 0;
}


/* At the opening quote. Unescapes into out (may be NULL: validate only). */
static int parse_string(parser_t *p, char *out, size_t *outlen) {
  size_t o = 0;
  p->i++;
  for (;;) {
    if (p->i >= p->n) return fail(p, "unterminated string");
    unsigned char c = p->s[p->i];
    if (c == '"') {
      p->i++;
      break;
    }
    if (c < 0x20) return fail(p, "control byte in string");
    if (c == '\\') {
      if (p->i + 1 >= p->n) return fail(p, "unterminated escape");
      unsigned char e = p->s[p->i + 1];
      p->i += 2;
      char ch;
      switch (e) {
      case '"': ch = '"'; break;
      case '\\': ch = '\\'; break;
      case '/': ch = '/'; break;
      case 'b': ch = '\b'; break;
      case 'f': ch = '\f'; break;
      case 'n': ch = '\n'; break;
      case 'r': ch = '\r'; break;
      case 't': ch = '\t'; break;
      case 'u': {
        unsigned cp, lo;
        int rc = read_u16(p, &cp);
        if (rc) return rc;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(p, "unpaired low surrogate");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (p->n - p->i < 2 || p->s[p->i] != '\\' || p->s[p->i + 1] != 'u')
            return fail(p, "unpaired high surrogate");
          p->i += 2;
          if ((rc = read_u16(p, &lo)) != 0) return rc;
          if (lo < 0xDC00 || lo > 0xDFFF) return fail(p, "unpaired high surrogate");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (out) o += mg_utf8_put(out + o, cp);
        continue;
      }
      default: p->i -= 1; return fail(p, "invalid escape");
      }
      if (out) out[o] = ch;
      o++;
      continue;
    }
    if (c < 0x80) {
      if (out) out[o] = (char)c;
      o++;
      p->i++;
      continue;
    }
    size_t k = mg_utf8_seq(p->s + p->i, p->n - p->i);
    if (!k) return fail(p, "invalid UTF-8");
    if (out) memcpy(out + o, p->s + p->i, k);
    o += k;
    p->i += k;
  }
  if (outlen) *outlen = o;
  return 0;
}

static bool digit(parser_t *p) { return p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9'; }

static int parse_number(parser_t *p) {
  if (p->i < p->n && p->s[p->i] == '-') p->i++;
  if (!digit(p)) return fail(p, "bad number");
  if (p->s[p->i] == '0') {
    p->i++;
    if (digit(p)) return fail(p, "leading zero in number");
  } else {
    while (digit(p)) p->i++;
  }
  if (p->i < p->n && p->s[p->i] == '.') {
    p->i++;
    if (!digit(p)) return fail(p, "bad fraction");
    while (digit(p)) p->i++;
  }
  if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
    p->i++;
    if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-')) p->i++;
    if (!digit(p)) return fail(p, "bad exponent");
    while (digit(p)) p->i++;
  }
  return 0;
}

static int parse_literal(parser_t *p, const char *word) {
  size_t k = strlen(word);
  if (p->n - p->i < k || memcmp(p->s + p->i, word, k) != 0) return fail(p, "unexpected character");
  p->i += k;
  return 0;
}

static int parse_value(parser_t *p, int depth, mg_json_type_t *type);

/* At '{' or '['. */
static int parse_container(parser_t *p, int depth, bool object) {
  if (depth > MG_JSON_MAX_DEPTH) return fail(p, "nesting too deep");
  unsigned char close = object ? '}' : ']';
  p->i++;
  skip_ws(p);
  if (p->i < p->n && p->s[p->i] == close) {
    p->i++;
    return 0;
  }
  for (;;) {
    int rc;
    if (object) {
      if (p->i >= p->n || p->s[p->i] != '"') return fail(p, "expected a member name");
      if ((rc = parse_string(p, NULL, NULL)) != 0) return rc;
      skip_ws(p);
      if (p->i >= p->n || p->s[p->i] != ':') return fail(p, "expected ':'");
      p->i++;
      skip_ws(p);
    }
    mg_json_type_t t;
    if ((rc = parse_value(p, depth, &t)) != 0) return rc;
    skip_ws(p);
    if (p->i >= p->n) return fail(p, "unterminated container");
    if (p->s[p->i] == close) {
      p->i++;
      return 0;
    }
    if (p->s[p->i] != ',') return fail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    p->i++;
    skip_ws(p);
  }
}

static int parse_value(parser_t *p, int depth, mg_json_type_t *type) {
  if (p->i >= p->n) return fail(p, "expected a value");
  switch (p->s[p->i]) {
  case '{': *type = MG_JSON_OBJECT; return parse_container(p, depth + 1, true);
  case '[': *type = MG_JSON_ARRAY; return parse_container(p, depth + 1, false);
  case '"': *type = MG_JSON_STRING; return parse_string(p, NULL, NULL);
  case 't': *type = MG_JSON_TRUE; return parse_literal(p, "true");
  case 'f': *type = MG_JSON_FALSE; return parse_literal(p, "false");
  case 'n': *type = MG_JSON_NULL; return parse_literal(p, "null");
  default: *type = MG_JSON_NUMBER; return parse_number(p);
  }
}

/* One value of the top level: a string is unescaped into out, anything
 * else is reported as written. */
static int read_value(parser_t *p, char *out, mg_json_type_t *t, mg_str_t *v) {
  size_t start = p->i, vlen = 0;
  int rc;
  if (p->i < p->n && p->s[p->i] == '"') {
    *t = MG_JSON_STRING;
    if ((rc = parse_string(p, out, &vlen)) != 0) return rc;
    *v = mg_str_n(out, vlen);
    return 0;
  }
  if ((rc = parse_value(p, 1, t)) != 0) return rc;
  *v = mg_str_n((const char *)p->s + start, p->i - start);
  return 0;
}

static int top_object(parser_t *p, char *scratch, mg_json_member_cb cb, void *ud) {
  skip_ws(p);
  if (p->i >= p->n || p->s[p->i] != '{') return fail(p, "expected an object");
  p->i++;
  skip_ws(p);
  if (p->i < p->n && p->s[p->i] == '}') {
    p->i++;
  } else {
    for (;;) {
      if (p->i >= p->n || p->s[p->i] != '"') return fail(p, "expected a member name");
      size_t klen = 0;
      int rc = parse_string(p, scratch, &klen);
      if (rc) return rc;
      skip_ws(p);
      if (p->i >= p->n || p->s[p->i] != ':') return fail(p, "expected ':'");
      p->i++;
      skip_ws(p);
      mg_json_type_t t;
      mg_str_t v;
      if ((rc = read_value(p, scratch + klen, &t, &v)) != 0) return rc;
      if ((rc = cb(ud, mg_str_n(scratch, klen), t, v)) != 0) return rc;
      skip_ws(p);
      if (p->i >= p->n) return fail(p, "unterminated object");
      if (p->s[p->i] == '}') {
        p->i++;
        break;
      }
      if (p->s[p->i] != ',') return fail(p, "expected ',' or '}'");
      p->i++;
      skip_ws(p);
    }
  }
  skip_ws(p);
  if (p->i != p->n) return fail(p, "trailing data after the object");
  return 0;
}

/* Only string elements need the scratch block, so it is allocated at the
 * first one: a list of objects (HTTP discovery) costs no copy of its size. */
static int top_array(parser_t *p, char **scratch, mg_json_element_cb cb, void *ud) {
  skip_ws(p);
  if (p->i >= p->n || p->s[p->i] != '[') return fail(p, "expected an array");
  p->i++;
  skip_ws(p);
  if (p->i < p->n && p->s[p->i] == ']') {
    p->i++;
  } else {
    for (size_t index = 0;; index++) {
      if (p->i < p->n && p->s[p->i] == '"' && !*scratch && !(*scratch = mg_malloc(p->n + 1))) return MG_ENOMEM;
      mg_json_type_t t;
      mg_str_t v;
      int rc = read_value(p, *scratch, &t, &v);
      if (rc) return rc;
      if ((rc = cb(ud, index, t, v)) != 0) return rc;
      skip_ws(p);
      if (p->i >= p->n) return fail(p, "unterminated array");
      if (p->s[p->i] == ']') {
        p->i++;
        break;
      }
      if (p->s[p->i] != ',') return fail(p, "expected ',' or ']'");
      p->i++;
      skip_ws(p);
    }
  }
  skip_ws(p);
  if (p->i != p->n) return fail(p, "trailing data after the array");
  return 0;
}

int mg_json_object(const char *doc, size_t len, mg_json_member_cb cb, void *ud, mg_json_error_t *err) {
  if (err) *err = (mg_json_error_t){0, NULL};
  if (!cb || (len && !doc)) return MG_EINVAL;
  if (len > MG_JSON_MAX_INPUT) return MG_ETOOBIG;
  parser_t p = {(const unsigned char *)doc, len, 0, err};
  /* A key plus its value never unescape to more bytes than the input. */
  char *scratch = mg_malloc(len + 1);
  if (!scratch) return MG_ENOMEM;
  int rc = top_object(&p, scratch, cb, ud);
  mg_mem_wipe(scratch, len + 1);
  mg_free(scratch);
  return rc;
}

int mg_json_array(const char *doc, size_t len, mg_json_element_cb cb, void *ud, mg_json_error_t *err) {
  if (err) *err = (mg_json_error_t){0, NULL};
  if (!cb || (len && !doc)) return MG_EINVAL;
  if (len > MG_JSON_MAX_ARRAY_INPUT) return MG_ETOOBIG;
  parser_t p = {(const unsigned char *)doc, len, 0, err};
  char *scratch = NULL;
  int rc = top_array(&p, &scratch, cb, ud);
  if (scratch) mg_mem_wipe(scratch, len + 1);
  mg_free(scratch);
  return rc;
}
