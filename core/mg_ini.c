/* mg_ini: one pass over the lines of an AWS profile file. Values without
 * continuation lines are reported as views into the input; continued
 * values are joined in one scratch buffer sized up front (so it never
 * reallocates and leaves copies of secrets behind) and wiped at the end.
 * Must not quote input bytes in errors: they may be secret keys. */
#include "mg_ini.h"

#include <stdbool.h>
#include <string.h>

#include "mg_buf.h"
#include "mg_err.h"

static bool is_blank(char c) { return c == ' ' || c == '\t'; }

static mg_str_t trim(mg_str_t s) {
  while (s.n && is_blank(s.p[0])) {
    s.p++;
    s.n--;
  }
  while (s.n && is_blank(s.p[s.n - 1])) s.n--;
  return s;
}

/* Cut a trailing comment. For property lines a '#' or ';' starts one only
 * after a blank (so "key=a#b" keeps its '#', secrets may hold any byte but
 * blanks); for section headers any '#' or ';' does (the SDKs' rule). */
static mg_str_t cut_comment(mg_str_t s, bool need_blank) {
  bool prev_blank = false;
  for (size_t i = 0; i < s.n; i++) {
    char c = s.p[i];
    if ((c == '#' || c == ';') && (prev_blank || !need_blank)) return trim(mg_str_n(s.p, i));
    prev_blank = is_blank(c);
  }
  return trim(s);
}

typedef struct pending {
  bool has;
  bool continued;      /* value lives in the scratch buffer */
  bool sub_mode;       /* continuation lines are sub-properties */
  bool parent_emitted; /* the property itself was already reported */
  mg_str_t key, value;
  uint32_t line;
} pending_t;

typedef struct parser {
  mg_ini_cb cb;
  void *ud;
  mg_str_t section;
  pending_t pend;
  mg_buf_t scratch;
  mg_ini_error_t *err;
} parser_t;

static int fail(parser_t *p, uint32_t line, const char *msg) {
  if (p->err) {
    p->err->line = line;
    p->err->msg = msg;
  }
  return MG_EPARSE;
}

static int emit(parser_t *p, mg_ini_kind_t kind, mg_str_t parent, mg_str_t key, mg_str_t value, uint32_t line) {
  mg_ini_item_t it = {kind, p->section, parent, key, value, line};
  return p->cb(p->ud, &it);
}

static int flush(parser_t *p) {
  pending_t *pd = &p->pend;
  int rc = 0;
  if (pd->has && !pd->parent_emitted) {
    mg_str_t v = pd->continued ? mg_str_n(p->scratch.data, p->scratch.len) : pd->value;
    rc = emit(p, MG_INI_PROPERTY, mg_str_n("", 0), pd->key, v, pd->line);
  }
  memset(pd, 0, sizeof *pd);
  return rc;
}

/* "key = value" -> key and value views (value comment-stripped). */
static int split_kv(mg_str_t s, mg_str_t *key, mg_str_t *value) {
  const char *eq = memchr(s.p, '=', s.n);
  if (!eq) return -1;
  *key = trim(mg_str_n(s.p, (size_t)(eq - s.p)));
  *value = trim(mg_str_n(eq + 1, s.n - (size_t)(eq + 1 - s.p)));
  return key->n ? 0 : -2;
}

static int continuation(parser_t *p, mg_str_t text, uint32_t lineno) {
  pending_t *pd = &p->pend;
  if (!pd->has) return fail(p, lineno, "indented line without a property to continue");
  if (pd->sub_mode || (pd->value.n == 0 && !pd->continued)) {
    mg_str_t k, v;
    int r = split_kv(text, &k, &v);
    if (r == -1) return fail(p, lineno, "expected 'name = value' in a sub-property");
    if (r == -2) return fail(p, lineno, "empty sub-property name");
    int rc = 0;
    if (!pd->parent_emitted) {
      rc = emit(p, MG_INI_PROPERTY, mg_str_n("", 0), pd->key, mg_str_n("", 0), pd->line);
      pd->parent_emitted = true;
    }
    pd->sub_mode = true;
    return rc ? rc : emit(p, MG_INI_SUBPROPERTY, pd->key, k, v, lineno);
  }
  int rc = 0;
  if (!pd->continued) {
    mg_buf_reset(&p->scratch);
    rc = mg_buf_append(&p->scratch, pd->value.p, pd->value.n);
    pd->continued = true;
  }
  if (rc == 0) rc = mg_buf_append_byte(&p->scratch, '\n');
  if (rc == 0) rc = mg_buf_append(&p->scratch, text.p, text.n);
  return rc;
}

static int parse_line(parser_t *p, mg_str_t line, uint32_t lineno) {
  if (memchr(line.p, '\0', line.n)) return fail(p, lineno, "NUL byte in line");
  mg_str_t t = trim(line);
  if (t.n == 0 || t.p[0] == '#' || t.p[0] == ';') return 0;
  if (is_blank(line.p[0])) return continuation(p, cut_comment(t, true), lineno);
  int rc = flush(p);
  if (rc) return rc;
  if (line.p[0] == '[') {
    mg_str_t s = cut_comment(t, false);
    if (s.n < 2 || s.p[s.n - 1] != ']') return fail(p, lineno, "section header must end with ']'");
    p->section = trim(mg_str_n(s.p + 1, s.n - 2));
    if (memchr(p->section.p, '[', p->section.n) || memchr(p->section.p, ']', p->section.n))
      return fail(p, lineno, "section name contains '[' or ']'");
    return emit(p, MG_INI_SECTION, mg_str_n("", 0), mg_str_n("", 0), mg_str_n("", 0), lineno);
  }
  mg_str_t k, v;
  int r = split_kv(cut_comment(t, true), &k, &v);
  if (r == -1) return fail(p, lineno, "expected 'name = value'");
  if (r == -2) return fail(p, lineno, "empty property name");
  if (!p->section.p) return fail(p, lineno, "property outside any [section]");
  p->pend = (pending_t){.has = true, .key = k, .value = v, .line = lineno};
  return 0;
}

int mg_ini_parse(const char *data, size_t len, mg_ini_cb cb, void *ud, mg_ini_error_t *err) {
  if (err) *err = (mg_ini_error_t){0, NULL};
  if (!cb || (len && !data)) return MG_EINVAL;
  if (len > MG_INI_MAX_INPUT) return MG_ETOOBIG;
  parser_t p = {.cb = cb, .ud = ud, .err = err};
  /* A joined value is never longer than the input: one allocation. */
  mg_buf_init(&p.scratch, len + 1);
  int rc = len ? mg_buf_reserve(&p.scratch, len + 1) : 0;
  size_t pos = 0;
  uint32_t lineno = 0;
  while (rc == 0 && pos < len) {
    const char *nl = memchr(data + pos, '\n', len - pos);
    size_t end = nl ? (size_t)(nl - data) : len;
    mg_str_t line = mg_str_n(data + pos, end - pos);
    if (line.n && line.p[line.n - 1] == '\r') line.n--;
    lineno++;
    rc = parse_line(&p, line, lineno);
    pos = nl ? end + 1 : len;
  }
  if (rc == 0) rc = flush(&p);
  mg_buf_cleanup_secret(&p.scratch);
  return rc;
}
