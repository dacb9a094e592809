/* libFuzzer driver for mg_relabel: the input is a small text program of
 * rules and labels; rules are compiled and applied, and every result is
 * checked against invariants (sorted unique names, no empty values, same
 * result twice, keep/drop rules never change labels). Regexes written only
 * with a b c . ( ) | * + ? are also run through PCRE2 directly, untranslated
 * (their meaning is the same in both dialects), and the captures must
 * agree. Aborts on the first broken invariant.
 *
 * Input lines (fields split by TAB; \n \t \\ \xHH escapes; "~" = unset):
 *   r action  sources(comma-separated)  separator  regex  target  replacement  modulus
 *   l name  value */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_err.h"
#include "mg_relabel.h"

#define ENSURE(c)                                                                 \
  do {                                                                            \
    if (!(c)) {                                                                   \
      fprintf(stderr, "fuzz_relabel: invariant failed: %s (line %d)\n", #c, __LINE__); \
      abort();                                                                    \
    }                                                                             \
  } while (0)

#define MAX_RULES 8
#define MAX_LABELS 16
#define MAX_FIELDS 8
#define MAX_SRC 4

typedef struct prog {
  mg_conf_relabel_t rules[MAX_RULES];
  mg_conf_relabel_t *rp[MAX_RULES];
  char *srcv[MAX_RULES][MAX_SRC];
  size_t nrules;
  mg_str_t names[MAX_LABELS], values[MAX_LABELS];
  size_t nlabels;
  char *mem[256]; /* everything allocated, freed at the end */
  size_t nmem;
} prog_t;

static char *keep_mem(prog_t *p, char *s) {
  if (!s) abort();
  if (p->nmem == sizeof p->mem / sizeof p->mem[0]) {
    free(s);
    return NULL;
  }
  return p->mem[p->nmem++] = s;
}

static int unhex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Unescapes s[0..n) into a new NUL-terminated string; *len gets its length
 * (it may hold NUL bytes: label values are views). */
static char *field(prog_t *p, const char *s, size_t n, size_t *len) {
  if (n == 1 && s[0] == '~') return NULL;
  char *o = keep_mem(p, malloc(n + 1));
  if (!o) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\\' && i + 1 < n) {
      char c = s[++i];
      if (c == 'n') o[k++] = '\n';
      else if (c == 't') o[k++] = '\t';
      else if (c == 'x' && i + 2 < n && unhex(s[i + 1]) >= 0 && unhex(s[i + 2]) >= 0) {
        o[k++] = (char)(unhex(s[i + 1]) * 16 + unhex(s[i + 2]));
        i += 2;
      } else o[k++] = c;
    } else {
      o[k++] = s[i];
    }
  }
  o[k] = 0;
  if (len) *len = k;
  return o;
}

static void parse(prog_t *p, const char *data, size_t size) {
  const char *end = data + size;
  while (data < end) {
    const char *nl = memchr(data, '\n', (size_t)(end - data));
    const char *le = nl ? nl : end;
    const char *f[MAX_FIELDS];
    size_t fl[MAX_FIELDS], nf = 0;
    const char *q = data;
    while (nf < MAX_FIELDS) {
      const char *tab = memchr(q, '\t', (size_t)(le - q));
      const char *fe = tab ? tab : le;
      f[nf] = q;
      fl[nf++] = (size_t)(fe - q);
      if (!tab) break;
      q = tab + 1;
    }
    if (fl[0] == 1 && f[0][0] == 'l' && nf >= 3 && p->nlabels < MAX_LABELS) {
      size_t nn = 0, vn = 0;
      char *name = field(p, f[1], fl[1], &nn), *value = field(p, f[2], fl[2], &vn);
      if (name && value) {
        p->names[p->nlabels] = mg_str_n(name, nn);
        p->values[p->nlabels++] = mg_str_n(value, vn);
      }
    } else if (fl[0] >= 1 && f[0][0] == 'r' && p->nrules < MAX_RULES) {
      mg_conf_relabel_t *r = &p->rules[p->nrules];
      memset(r, 0, sizeof *r);
      if (nf > 1) r->action = field(p, f[1], fl[1], NULL);
      if (nf > 2) {
        char *srcs = field(p, f[2], fl[2], NULL);
        for (char *s = srcs, *c; s && r->nsource_labels < MAX_SRC; s = c ? c + 1 : NULL) {
          c = strchr(s, ',');
          if (c) *c = 0;
          p->srcv[p->nrules][r->nsource_labels++] = s;
        }
        r->source_labels = r->nsource_labels ? p->srcv[p->nrules] : NULL;
      }
      if (nf > 3) r->separator = field(p, f[3], fl[3], NULL);
      if (nf > 4) r->regex = field(p, f[4], fl[4], NULL);
      if (nf > 5) r->target_label = field(p, f[5], fl[5], NULL);
      if (nf > 6) r->replacement = field(p, f[6], fl[6], NULL);
      if (nf > 7) r->modulus = strtoull(f[7], NULL, 10) % 100000;
      r->line = (uint32_t)p->nrules + 1;
      p->rp[p->nrules] = r;
      p->nrules++;
    }
    data = nl ? nl + 1 : end;
  }
}

/* Applies r to the program's labels in a fresh builder; copies the result. */
typedef struct result {
  int rc;
  bool keep;
  size_t n;
  mg_label_t v[4 * MAX_LABELS + 64];
  char bytes[1 << 16];
  size_t used;
} result_t;

static void run(const prog_t *p, const mg_relabel_t *r, result_t *res) {
  mg_labels_t ls;
  ENSURE(mg_labels_init(&ls, 256, 1 << 20) == 0);
  for (size_t i = 0; i < p->nlabels; i++) ENSURE(mg_labels_set(&ls, p->names[i], p->values[i]) == 0 || p->values[i].n == 0);
  res->rc = mg_relabel_apply(r, &ls, &res->keep);
  ENSURE(res->rc == 0 || res->rc == MG_ETOOBIG);
  ENSURE(res->rc == 0 || !res->keep);
  res->n = 0;
  res->used = 0;
  if (res->rc == 0 && res->keep) {
    for (size_t i = 0; i < ls.n; i++) {
      mg_label_t l = ls.v[i];
      ENSURE(l.value.n > 0 && l.value.p && l.name.p);
      if (i) ENSURE(mg_str_cmp(ls.v[i - 1].name, l.name) < 0);
      mg_str_t got = mg_labels_get(&ls, l.name);
      ENSURE(got.p == l.value.p && got.n == l.value.n);
      if (res->n < sizeof res->v / sizeof res->v[0] && res->used + l.name.n + l.value.n <= sizeof res->bytes) {
        memcpy(res->bytes + res->used, l.name.p, l.name.n);
        res->v[res->n].name = mg_str_n(res->bytes + res->used, l.name.n);
        res->used += l.name.n;
        memcpy(res->bytes + res->used, l.value.p, l.value.n);
        res->v[res->n].value = mg_str_n(res->bytes + res->used, l.value.n);
        res->used += l.value.n;
        res->n++;
      }
    }
  }
  mg_labels_cleanup(&ls);
}

static bool same(const result_t *a, const result_t *b) {
  if (a->rc != b->rc || a->keep != b->keep || a->n != b->n) return false;
  for (size_t i = 0; i < a->n; i++)
    if (!mg_str_eq(a->v[i].name, b->v[i].name) || !mg_str_eq(a->v[i].value, b->v[i].value)) return false;
  return true;
}

/* Same meaning in RE2 and PCRE2 (no "(?": PCRE2 has its own groups there). */
static bool plain_subset(const char *re) {
  for (const char *c = re; *c; c++)
    if (!strchr("abc.()|*+?", *c) || (c[0] == '(' && c[1] == '?')) return false;
  return true;
}

/* The differential check: "<$0>$1,$2,$3" through mg_relabel vs PCRE2 on the
 * untranslated anchored pattern. */
static void differential(const char *re, mg_str_t value) {
  for (size_t i = 0; i < value.n; i++)
    if ((unsigned char)value.p[i] >= 0x80) return; /* keep to ASCII: no transcoding here */
  char *src[] = {"v"};
  mg_conf_relabel_t rule = {.source_labels = src, .nsource_labels = 1, .regex = (char *)re,
                            .target_label = "t", .replacement = "<$0>$1,$2,$3"};
  mg_conf_relabel_t *rp = &rule;
  mg_conf_relabels_t rs = {.v = &rp, .n = 1, .cap = 1};
  mg_relabel_t *r;
  char err[256];
  if (mg_relabel_compile(&rs, &r, err, sizeof err) != 0) return; /* refused as RE2 refuses it */
  size_t plen = strlen(re) + 16;
  char *pat = malloc(plen);
  snprintf(pat, plen, "^(?s:%s)$", re);
  int ec;
  PCRE2_SIZE eo;
  pcre2_code *code = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_DOLLAR_ENDONLY, &ec, &eo, NULL);
  free(pat);
  if (!code) { /* e.g. ^* which RE2 accepts and PCRE2 refuses */
    mg_relabel_free(r);
    return;
  }
  pcre2_match_data *md = pcre2_match_data_create(8, NULL);
  int rc = pcre2_match(code, (PCRE2_SPTR)(value.n ? value.p : ""), value.n, 0, 0, md, NULL);
  char want[4096];
  size_t wn = 0;
  bool have = rc >= 0;
  if (have) {
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    uint32_t ovn = pcre2_get_ovector_count(md);
    const char *seps[] = {"<", ">", ",", ",", ""};
    for (uint32_t g = 0; g < 4; g++) {
      size_t sl = strlen(seps[g]);
      memcpy(want + wn, seps[g], sl);
      wn += sl;
      if (g < ovn && ov[2 * g] != PCRE2_UNSET) {
        size_t len = ov[2 * g + 1] - ov[2 * g];
        if (wn + len + 8 > sizeof want) goto out;
        memcpy(want + wn, value.p + ov[2 * g], len);
        wn += len;
      }
    }
  } else if (rc != PCRE2_ERROR_NOMATCH) {
    goto out; /* a limit: not comparable */
  }
  mg_labels_t ls;
  ENSURE(mg_labels_init(&ls, 0, 0) == 0);
  mg_labels_set(&ls, MG_STR_LIT("v"), value);
  bool keep;
  int arc = mg_relabel_apply(r, &ls, &keep);
  if (arc == 0) {
    mg_str_t t = mg_labels_get(&ls, MG_STR_LIT("t"));
    if (have) ENSURE(t.n == wn && memcmp(t.p, want, wn) == 0);
    else ENSURE(t.n == 0);
  }
  mg_labels_cleanup(&ls);
out:
  pcre2_match_data_free(md);
  pcre2_code_free(code);
  mg_relabel_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096) return 0;
  prog_t *p = calloc(1, sizeof *p);
  parse(p, (const char *)data, size);
  mg_conf_relabels_t rs = {.v = p->rp, .n = p->nrules, .cap = p->nrules};
  mg_relabel_t *r = NULL;
  char err[300];
  int rc = mg_relabel_compile(&rs, &r, err, sizeof err);
  ENSURE(rc == 0 || rc == MG_ECONFIG);
  if (rc) {
    ENSURE(r == NULL && strncmp(err, "rule ", 5) == 0 && !strchr(err, '\n'));
  } else {
    result_t *a = malloc(sizeof *a), *b = malloc(sizeof *b);
    run(p, r, a);
    run(p, r, b);
    ENSURE(same(a, b));
    bool filters_only = true;
    for (size_t i = 0; i < p->nrules; i++) {
      const char *act = p->rules[i].action ? p->rules[i].action : "replace";
      filters_only &= !strcasecmp(act, "keep") || !strcasecmp(act, "drop") || !strcasecmp(act, "keepequal") ||
                      !strcasecmp(act, "dropequal");
    }
    if (filters_only && a->rc == 0 && a->keep) { /* the input, sorted, empty values left out */
      size_t nonempty = 0;
      for (size_t i = 0; i < p->nlabels; i++) {
        bool later = false; /* a later set of the same name wins */
        for (size_t j = i + 1; j < p->nlabels; j++) later |= mg_str_eq(p->names[i], p->names[j]);
        if (later || !p->values[i].n) continue;
        nonempty++;
        bool found = false;
        for (size_t k = 0; k < a->n; k++) found |= mg_str_eq(a->v[k].name, p->names[i]) && mg_str_eq(a->v[k].value, p->values[i]);
        ENSURE(found);
      }
      ENSURE(nonempty == a->n);
    }
    free(a);
    free(b);
    mg_relabel_free(r);
  }
  for (size_t i = 0; i < p->nrules; i++) {
    const char *re = p->rules[i].regex;
    if (re && plain_subset(re))
      for (size_t k = 0; k < p->nlabels && k < 3; k++) differential(re, p->values[k]);
  }
  for (size_t i = 0; i < p->nmem; i++) free(p->mem[i]);
  free(p);
  return 0;
}
