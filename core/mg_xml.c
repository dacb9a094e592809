/* mg_xml: a single forward pass with an explicit element stack (no
 * recursion, so depth costs no C stack). Character data of the innermost
 * element is decoded into one scratch block of the input's size (decoding
 * never grows text), wiped and freed at the end. */
#include "mg_xml.h"

#include <stdbool.h>
#include <string.h>

#include "mg_err.h"
#include "mg_mem.h"

#define MAX_ATTRS 32

typedef struct parser {
  const unsigned char *s;
  size_t n, i;
  size_t start; /* after a byte order mark: where an XML declaration may be */
  mg_xml_error_t *err;
  mg_str_t path[MG_XML_MAX_DEPTH];
  bool has_child[MG_XML_MAX_DEPTH];
  size_t depth;
  char *text;
  size_t tlen;
  mg_xml_leaf_cb cb;
  mg_xml_end_cb end;
  void *ud;
} parser_t;

static int fail(parser_t *p, const char *msg) {
  if (p->err) {
    uint32_t line = 1;
    for (size_t k = 0; k < p->i && k < p->n; k++) line += p->s[k] == '\n';
    p->err->line = line;
    p->err->msg = msg;
  }
  return MG_EPARSE;
}

static bool at(parser_t *p, const char *lit) {
  size_t k = strlen(lit);
  return p->n - p->i >= k && memcmp(p->s + p->i, lit, k) == 0;
}

static bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static void skip_space(parser_t *p) {
  while (p->i < p->n && is_space(p->s[p->i])) p->i++;
}

/* Length of a valid UTF-8 sequence at s (RFC 3629), 0 if invalid; also
 * refuses U+FFFE/U+FFFF, which XML does not allow. */
static size_t utf8_len(const unsigned char *s, size_t avail) {
  if (s[0] < 0x80) return 1;
  size_t n = mg_utf8_seq(s, avail);
  if (n == 3 && s[0] == 0xEF && s[1] == 0xBF && (s[2] == 0xBE || s[2] == 0xBF)) return 0;
  return n;
}

/* One character of XML text at p->i: its byte length, 0 if not a Char. */
static size_t xml_char(parser_t *p) {
  unsigned char c = p->s[p->i];
  if (c < 0x20) return (c == '\t' || c == '\n' || c == '\r') ? 1 : 0;
  return utf8_len(p->s + p->i, p->n - p->i);
}

/* ASCII letters, '_', ':' and any non-ASCII character (checked as UTF-8
 * by parse_name): AWS names are ASCII, the rest only needs to be safe. */
static bool name_start(unsigned char c) {
  return ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '_' || c == ':' || c >= 0x80;
}
static bool name_char(unsigned char c) { return name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.'; }

static int parse_name(parser_t *p, mg_str_t *out) {
  size_t start = p->i;
  if (p->i >= p->n || !name_start(p->s[p->i])) return fail(p, "expected a name");
  while (p->i < p->n && name_char(p->s[p->i])) {
    if (p->s[p->i] >= 0x80) {
      size_t k = utf8_len(p->s + p->i, p->n - p->i);
      if (!k) return fail(p, "invalid UTF-8 in a name");
      p->i += k;
    } else {
      p->i++;
    }
  }
  *out = mg_str_n((const char *)p->s + start, p->i - start);
  return 0;
}


/* At '&'. Appends the decoded character to out (NULL: validate only). */
static int parse_entity(parser_t *p, char *out, size_t *olen) {
  static const struct {
    const char *name;
    char c;
  } named[] = {{"&lt;", '<'}, {"&gt;", '>'}, {"&amp;", '&'}, {"&quot;", '"'}, {"&apos;", '\''}};
  for (size_t k = 0; k < sizeof named / sizeof named[0]; k++) {
    if (at(p, named[k].name)) {
      p->i += strlen(named[k].name);
      if (out) out[*olen] = named[k].c;
      (*olen)++;
      return 0;
    }
  }
  if (!at(p, "&#")) return fail(p, "unknown entity (only the five predefined ones and &#N; are allowed)");
  p->i += 2;
  bool hex = p->i < p->n && p->s[p->i] == 'x';
  if (hex) p->i++;
  unsigned long cp = 0;
  size_t digits = 0;
  while (p->i < p->n && p->s[p->i] != ';') {
    unsigned char c = p->s[p->i];
    int v;
    if (c >= '0' && c <= '9') v = c - '0';
    else if (hex && (c | 0x20) >= 'a' && (c | 0x20) <= 'f') v = (c | 0x20) - 'a' + 10;
    else return fail(p, "bad character reference");
    if (++digits > 8) return fail(p, "character reference too long");
    cp = cp * (hex ? 16 : 10) + (unsigned long)v;
    p->i++;
  }
  if (p->i >= p->n || digits == 0) return fail(p, "bad character reference");
  p->i++;
  bool ok = cp == 0x9 || cp == 0xA || cp == 0xD || (cp >= 0x20 && cp <= 0xD7FF) || (cp >= 0xE000 && cp <= 0xFFFD) ||
            (cp >= 0x10000 && cp <= 0x10FFFF);
  if (!ok) return fail(p, "character reference to a character XML does not allow");
  char tmp[4];
  size_t k = mg_utf8_put(out ? out + *olen : tmp, (unsigned)cp);
  *olen += k;
  return 0;
}

/* At "<!--". XML forbids "--" inside a comment. */
static int parse_comment(parser_t *p) {
  p->i += 4;
  for (;;) {
    if (p->i >= p->n) return fail(p, "unterminated comment");
    if (at(p, "--")) {
      if (!at(p, "-->")) return fail(p, "'--' inside a comment");
      p->i += 3;
      return 0;
    }
    size_t k = xml_char(p);
    if (!k) return fail(p, "invalid character in a comment");
    p->i += k;
  }
}

/* At "<?". first: the XML declaration is allowed here. */
static int parse_pi(parser_t *p, bool first) {
  p->i += 2;
  mg_str_t target;
  int rc = parse_name(p, &target);
  if (rc) return rc;
  bool is_xml =
      target.n == 3 && (target.p[0] | 0x20) == 'x' && (target.p[1] | 0x20) == 'm' && (target.p[2] | 0x20) == 'l';
  if (is_xml && (!first || memcmp(target.p, "xml", 3) != 0)) return fail(p, "misplaced XML declaration");
  if (p->i < p->n && !is_space(p->s[p->i]) && !at(p, "?>")) return fail(p, "bad processing instruction");
  for (;;) {
    if (p->i >= p->n) return fail(p, "unterminated processing instruction");
    if (at(p, "?>")) {
      p->i += 2;
      return 0;
    }
    size_t k = xml_char(p);
    if (!k) return fail(p, "invalid character in a processing instruction");
    p->i += k;
  }
}

/* Comments, PIs and blanks outside the root element. */
static int parse_misc(parser_t *p, bool allow_decl) {
  for (;;) {
    skip_space(p);
    if (at(p, "<!--")) {
      int rc = parse_comment(p);
      if (rc) return rc;
    } else if (at(p, "<?")) {
      int rc = parse_pi(p, allow_decl && p->i == p->start);
      if (rc) return rc;
    } else if (at(p, "<!")) {
      return fail(p, "DOCTYPE and other declarations are not accepted");
    } else {
      return 0;
    }
    allow_decl = false;
  }
}

/* At '<' of a start tag. Pushes the element; reports it at once if empty. */
static int parse_start(parser_t *p) {
  p->i++;
  mg_str_t name;
  int rc = parse_name(p, &name);
  if (rc) return rc;
  mg_str_t attrs[MAX_ATTRS];
  size_t nattrs = 0;
  for (;;) {
    size_t before = p->i;
    skip_space(p);
    if (p->i >= p->n) return fail(p, "unterminated start tag");
    if (p->s[p->i] == '>' || at(p, "/>")) break;
    if (p->i == before) return fail(p, "expected a blank before an attribute");
    mg_str_t an;
    if ((rc = parse_name(p, &an)) != 0) return rc;
    for (size_t k = 0; k < nattrs; k++)
      if (mg_str_eq(attrs[k], an)) return fail(p, "repeated attribute");
    if (nattrs == MAX_ATTRS) return fail(p, "too many attributes");
    attrs[nattrs++] = an;
    skip_space(p);
    if (p->i >= p->n || p->s[p->i] != '=') return fail(p, "expected '=' after an attribute name");
    p->i++;
    skip_space(p);
    if (p->i >= p->n || (p->s[p->i] != '"' && p->s[p->i] != '\'')) return fail(p, "attribute value must be quoted");
    unsigned char q = p->s[p->i++];
    for (;;) {
      if (p->i >= p->n) return fail(p, "unterminated attribute value");
      unsigned char c = p->s[p->i];
      if (c == q) {
        p->i++;
        break;
      }
      if (c == '<') return fail(p, "'<' in an attribute value");
      if (c == '&') {
        size_t dummy = 0;
        if ((rc = parse_entity(p, NULL, &dummy)) != 0) return rc;
        continue;
      }
      size_t k = xml_char(p);
      if (!k) return fail(p, "invalid character in an attribute value");
      p->i += k;
    }
  }
  if (p->depth == MG_XML_MAX_DEPTH) return fail(p, "elements nested too deep");
  if (p->depth) p->has_child[p->depth - 1] = true;
  p->path[p->depth] = name;
  p->has_child[p->depth] = false;
  p->depth++;
  p->tlen = 0;
  if (at(p, "/>")) {
    p->i += 2;
    rc = p->cb(p->ud, p->path, p->depth, mg_str_n(p->text, 0));
    if (!rc && p->end) rc = p->end(p->ud, p->path, p->depth);
    p->depth--;
    return rc;
  }
  p->i++;
  return 0;
}

/* At "</". */
static int parse_end(parser_t *p) {
  p->i += 2;
  mg_str_t name;
  int rc = parse_name(p, &name);
  if (rc) return rc;
  skip_space(p);
  if (p->i >= p->n || p->s[p->i] != '>') return fail(p, "expected '>' closing an end tag");
  if (!p->depth || !mg_str_eq(name, p->path[p->depth - 1])) return fail(p, "end tag does not match its start tag");
  p->i++;
  rc = 0;
  if (!p->has_child[p->depth - 1]) rc = p->cb(p->ud, p->path, p->depth, mg_str_n(p->text, p->tlen));
  if (!rc && p->end) rc = p->end(p->ud, p->path, p->depth);
  p->depth--;
  return rc;
}

/* Inside the root element until it closes. */
static int parse_content(parser_t *p) {
  while (p->depth) {
    if (p->i >= p->n) return fail(p, "unterminated element");
    unsigned char c = p->s[p->i];
    int rc = 0;
    if (c == '<') {
      if (at(p, "<!--")) rc = parse_comment(p);
      else if (at(p, "<![CDATA[")) {
        p->i += 9;
        for (;;) {
          if (p->i >= p->n) return fail(p, "unterminated CDATA section");
          if (at(p, "]]>")) {
            p->i += 3;
            break;
          }
          size_t k = xml_char(p);
          if (!k) return fail(p, "invalid character in CDATA");
          memcpy(p->text + p->tlen, p->s + p->i, k);
          p->tlen += k;
          p->i += k;
        }
      } else if (at(p, "<!")) rc = fail(p, "declarations are not accepted inside elements");
      else if (at(p, "<?")) rc = parse_pi(p, false);
      else if (at(p, "</")) rc = parse_end(p);
      else rc = parse_start(p);
    } else if (c == '&') {
      rc = parse_entity(p, p->text, &p->tlen);
    } else {
      if (at(p, "]]>")) return fail(p, "']]>' in text");
      size_t k = xml_char(p);
      if (!k) return fail(p, "invalid character in text");
      memcpy(p->text + p->tlen, p->s + p->i, k);
      p->tlen += k;
      p->i += k;
    }
    if (rc) return rc;
  }
  return 0;
}

int mg_xml_parse(const char *doc, size_t len, mg_xml_leaf_cb cb, void *ud, mg_xml_error_t *err) {
  mg_xml_handlers_t h = {.leaf = cb};
  return mg_xml_parse_ex(doc, len, &h, ud, err);
}

int mg_xml_parse_ex(const char *doc, size_t len, const mg_xml_handlers_t *h, void *ud, mg_xml_error_t *err) {
  if (err) *err = (mg_xml_error_t){0, NULL};
  if (!h || !h->leaf || (len && !doc)) return MG_EINVAL;
  if (len > (h->max_input ? h->max_input : MG_XML_MAX_INPUT) || len == SIZE_MAX) return MG_ETOOBIG;
  parser_t *p = mg_calloc(1, sizeof *p);
  if (!p) return MG_ENOMEM;
  *p = (parser_t){.s = (const unsigned char *)doc, .n = len, .err = err, .cb = h->leaf, .end = h->end, .ud = ud};
  p->text = mg_malloc(len + 1);
  if (!p->text) {
    mg_free(p);
    return MG_ENOMEM;
  }
  if (at(p, "\xEF\xBB\xBF")) p->i += 3; /* a UTF-8 byte order mark */
  p->start = p->i;
  int rc = parse_misc(p, true);
  if (rc == 0 && (p->i >= p->n || p->s[p->i] != '<')) rc = fail(p, "expected the root element");
  if (rc == 0) rc = parse_start(p);
  if (rc == 0) rc = parse_content(p);
  if (rc == 0) rc = parse_misc(p, false);
  if (rc == 0 && p->i != p->n) rc = fail(p, "content after the root element");
  mg_mem_wipe(p->text, len + 1);
  mg_free(p->text);
  mg_free(p);
  return rc;
}
