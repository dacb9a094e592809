/* mg_promyml: walks a libyaml document tree of a prometheus.yml and fills
 * an mg_conf_t through its builders, then finishes it. Owns the document
 * only while loading. Unknown keys are errors, never skipped; the work done
 * is bounded so that aliases cannot expand into billions of nodes. */
#include "mg_promyml.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "mg_err.h"
#include "mg_mem.h"

/* Work units: nodes visited, key comparisons, and allocations for what is
 * built (a target with n labels costs 4 + 2n). Aliases share nodes, so a
 * small file could otherwise describe 10^12 targets; this caps what is
 * built near 4M allocations (a few hundred MB at worst), while 100k
 * targets with ten labels each cost 2.4M. */
#define WORK_BUDGET (4u << 20)
/* Merge keys (<<) nest, and libyaml lets an alias point into its own
 * anchor, so merge resolution is depth-limited to break cycles. */
#define MAX_MERGE_DEPTH 8
/* Keys in one mapping; more than any real section or label set. */
#define MAX_MAP_KEYS 4096

typedef struct pair {
  const char *key;
  yaml_node_t *k, *v;
} pair_t;

typedef struct map {
  pair_t *v;
  size_t n, cap;
} map_t;

typedef struct loader {
  yaml_document_t doc;
  mg_conf_t *c;
  mg_conf_error_t *err;
  const char *name;
  char path[256]; /* key path of the node being read: scrape_configs[1].scheme */
  size_t plen;
  uint64_t work;
  uint32_t *job_line, *dest_line; /* 1-based line of each jobs[i] / dests[i] */
  size_t job_line_cap, dest_line_cap;
} loader_t;

static uint32_t line_of(const yaml_node_t *n) { return n ? (uint32_t)n->start_mark.line + 1 : 0; }

static void set_err(mg_conf_error_t *err, const char *file, uint32_t line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set_err(mg_conf_error_t *err, const char *file, uint32_t line, const char *fmt, ...) {
  if (!err) return;
  snprintf(err->file, sizeof(err->file), "%s", file ? file : "");
  err->line = line;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
  va_end(ap);
  /* Keys and values quoted from the file may hold control bytes; a message
   * must stay one line wherever it is printed or logged. */
  for (char *m = err->msg; *m; m++)
    if ((unsigned char)*m < 0x20 || *m == 0x7f) *m = '?';
}

/* Error at node n, prefixed with the current key path. */
__attribute__((format(printf, 3, 4))) static int fail(loader_t *L, const yaml_node_t *n, const char *fmt, ...) {
  if (!L->err) return MG_ECONFIG;
  char msg[sizeof(L->err->msg)];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (L->plen)
    set_err(L->err, L->name, line_of(n), "%s: %s", L->path, msg);
  else
    set_err(L->err, L->name, line_of(n), "%s", msg);
  return MG_ECONFIG;
}

static int oom(loader_t *L, const yaml_node_t *n) {
  fail(L, n, "out of memory");
  return MG_ENOMEM;
}

static int spend(loader_t *L, const yaml_node_t *n, uint64_t units) {
  L->work += units;
  if (L->work > WORK_BUDGET) return fail(L, n, "document too complex (aliases expand to too many nodes)");
  return 0;
}

/* Key path: push returns the old length for pop. Truncation only shortens
 * the path shown in an error. */
static size_t push_key(loader_t *L, const char *key) {
  size_t old = L->plen;
  int w = snprintf(L->path + L->plen, sizeof(L->path) - L->plen, "%s%s", L->plen ? "." : "", *key ? key : "\"\"");
  if (w > 0) L->plen += (size_t)w < sizeof(L->path) - L->plen ? (size_t)w : sizeof(L->path) - L->plen - 1;
  return old;
}

static size_t push_index(loader_t *L, size_t i) {
  size_t old = L->plen;
  int w = snprintf(L->path + L->plen, sizeof(L->path) - L->plen, "[%zu]", i);
  if (w > 0) L->plen += (size_t)w < sizeof(L->path) - L->plen ? (size_t)w : sizeof(L->path) - L->plen - 1;
  return old;
}

static void pop(loader_t *L, size_t old) {
  L->plen = old;
  L->path[old] = '\0';
}

/* ---- scalars ----------------------------------------------------------- */

static const char *sval(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

static bool is_plain(const yaml_node_t *n) {
  return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

/* YAML 1.1 null, as Go's yaml.v2 resolves it. */
static bool is_null(const yaml_node_t *n) {
  if (!n) return true;
  if (!is_plain(n)) return false;
  const char *s = sval(n);
  return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

static const char *type_name(const yaml_node_t *n) {
  switch (n->type) {
  case YAML_SCALAR_NODE: return "a scalar";
  case YAML_SEQUENCE_NODE: return "a list";
  case YAML_MAPPING_NODE: return "a mapping";
  case YAML_NO_NODE: break;
  }
  return "nothing";
}

static int get_str(loader_t *L, yaml_node_t *n, const char **out) {
  if (n->type != YAML_SCALAR_NODE) return fail(L, n, "expected a string, got %s", type_name(n));
  if (strlen(sval(n)) != n->data.scalar.length) return fail(L, n, "string contains a NUL byte");
  *out = sval(n);
  return 0;
}

static int get_bool(loader_t *L, yaml_node_t *n, bool *out) {
  /* yaml.v2 accepts the YAML 1.1 spellings, unquoted only. */
  static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", "y", "Y"};
  static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", "n", "N"};
  if (is_plain(n)) {
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
      if (!strcmp(sval(n), yes[i])) return *out = true, 0;
      if (!strcmp(sval(n), no[i])) return *out = false, 0;
    }
  }
  if (n->type == YAML_SCALAR_NODE) return fail(L, n, "expected true or false, got \"%.64s\"", sval(n));
  return fail(L, n, "expected true or false, got %s", type_name(n));
}

static int get_uint(loader_t *L, yaml_node_t *n, uint64_t max, uint64_t *out) {
  if (!is_plain(n)) {
    if (n->type == YAML_SCALAR_NODE) return fail(L, n, "expected a number, got \"%.64s\"", sval(n));
    return fail(L, n, "expected a number, got %s", type_name(n));
  }
  const char *s = sval(n);
  uint64_t v = 0;
  if (*s == '+') s++;
  if (!*s) return fail(L, n, "expected a number, got \"%.64s\"", sval(n));
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return fail(L, n, "expected a non-negative integer, got \"%.64s\"", sval(n));
    if (v > (max - (uint64_t)(*s - '0')) / 10)
      return fail(L, n, "%.64s is too large (maximum %llu)", sval(n), (unsigned long long)max);
    v = v * 10 + (uint64_t)(*s - '0');
  }
  *out = v;
  return 0;
}

static int get_duration(loader_t *L, yaml_node_t *n, uint64_t *ms) {
  const char *s = "";
  int rc = get_str(L, n, &s);
  if (rc < 0) return rc;
  if (mg_conf_parse_duration(s, ms) < 0)
    return fail(L, n, "invalid duration \"%.64s\" (use e.g. 15s, 1m30s, 500ms)", s);
  return 0;
}

/* Durations where 0 would mean "the default" in mg_conf but something else
 * (no wait, no timeout) in Prometheus: refuse rather than guess. */
static int get_duration_pos(loader_t *L, yaml_node_t *n, uint64_t *ms) {
  int rc = get_duration(L, n, ms);
  if (rc == 0 && *ms == 0) return fail(L, n, "must be greater than 0");
  return rc;
}

static int get_u32_pos(loader_t *L, yaml_node_t *n, uint32_t *out) {
  uint64_t v = 0;
  int rc = get_uint(L, n, UINT32_MAX, &v);
  if (rc < 0) return rc;
  if (v == 0) return fail(L, n, "must be at least 1");
  *out = (uint32_t)v;
  return 0;
}

static int set_str(loader_t *L, yaml_node_t *n, char **slot, bool secret) {
  const char *s = "";
  int rc = get_str(L, n, &s);
  if (rc < 0) return rc;
  rc = secret ? mg_conf_set_secret(slot, s) : mg_conf_set_str(slot, s);
  return rc < 0 ? oom(L, n) : 0;
}

/* ---- mappings ---------------------------------------------------------- */

static const pair_t *map_find(const map_t *m, const char *key) {
  for (size_t i = 0; i < m->n; i++)
    if (!strcmp(m->v[i].key, key)) return &m->v[i];
  return NULL;
}

static int map_add(loader_t *L, map_t *m, const char *key, yaml_node_t *k, yaml_node_t *v) {
  if (m->n == MAX_MAP_KEYS) return fail(L, k, "more than %d keys in one mapping", MAX_MAP_KEYS);
  if (m->n == m->cap) {
    size_t ncap = m->cap ? m->cap * 2 : 16;
    pair_t *p = mg_reallocarray(m->v, ncap, sizeof(*p));
    if (!p) return oom(L, k);
    m->v = p;
    m->cap = ncap;
  }
  m->v[m->n++] = (pair_t){key, k, v};
  return 0;
}

static void map_cleanup(map_t *m) {
  mg_free(m->v);
  *m = (map_t){0};
}

/* Flatten mapping node n into m: its own keys (a key given twice is an
 * error, as in yaml.v2 strict mode), then keys from merge sources (<<) not
 * already present, earlier sources first, as the YAML merge spec says. */
static int map_collect(loader_t *L, yaml_node_t *n, map_t *m, int depth) {
  if (depth > MAX_MERGE_DEPTH) return fail(L, n, "merge keys (<<) nested too deeply or recursive");
  int rc = spend(L, n, 1);
  if (rc < 0) return rc;
  size_t first = m->n;
  yaml_node_pair_t *p;
  yaml_node_t *merges[64];
  size_t nmerges = 0;
  for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yaml_document_get_node(&L->doc, p->key), *v = yaml_document_get_node(&L->doc, p->value);
    if (!k || !v) return fail(L, n, "malformed mapping");
    if ((rc = spend(L, k, 1 + (m->n - first))) < 0) return rc;
    if (k->type != YAML_SCALAR_NODE || strlen(sval(k)) != k->data.scalar.length)
      return fail(L, k, "mapping keys must be strings");
    if (is_plain(k) && !strcmp(sval(k), "<<")) {
      if (v->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
          if (nmerges == sizeof(merges) / sizeof(merges[0])) return fail(L, k, "too many merge sources");
          merges[nmerges++] = yaml_document_get_node(&L->doc, *it);
        }
      } else {
        if (nmerges == sizeof(merges) / sizeof(merges[0])) return fail(L, k, "too many merge sources");
        merges[nmerges++] = v;
      }
      continue;
    }
    for (size_t i = first; i < m->n; i++)
      if (!strcmp(m->v[i].key, sval(k))) return fail(L, k, "key \"%.64s\" given twice", sval(k));
    if ((rc = map_add(L, m, sval(k), k, v)) < 0) return rc;
  }
  for (size_t i = 0; i < nmerges; i++) {
    yaml_node_t *src = merges[i];
    if (!src || src->type != YAML_MAPPING_NODE) return fail(L, src ? src : n, "merge key (<<) needs a mapping");
    map_t sub = {0};
    if ((rc = map_collect(L, src, &sub, depth + 1)) < 0) {
      map_cleanup(&sub);
      return rc;
    }
    for (size_t s = 0; s < sub.n && rc == 0; s++) {
      if ((rc = spend(L, sub.v[s].k, 1 + (m->n - first))) < 0) break;
      bool present = false;
      for (size_t e = first; e < m->n && !present; e++) present = !strcmp(m->v[e].key, sub.v[s].key);
      if (!present) rc = map_add(L, m, sub.v[s].key, sub.v[s].k, sub.v[s].v);
    }
    map_cleanup(&sub);
    if (rc < 0) return rc;
  }
  return 0;
}

/* Collect node n as a mapping (a null counts as empty). */
static int get_map(loader_t *L, yaml_node_t *n, map_t *m) {
  *m = (map_t){0};
  if (is_null(n)) return 0;
  if (n->type != YAML_MAPPING_NODE) return fail(L, n, "expected a mapping, got %s", type_name(n));
  int rc = map_collect(L, n, m, 0);
  if (rc < 0) map_cleanup(m);
  return rc;
}

/* Items of a list (a null counts as empty). */
static int get_seq(loader_t *L, yaml_node_t *n, yaml_node_item_t **start, size_t *count) {
  *start = NULL;
  *count = 0;
  if (is_null(n)) return 0;
  if (n->type != YAML_SEQUENCE_NODE) return fail(L, n, "expected a list, got %s", type_name(n));
  *start = n->data.sequence.items.start;
  *count = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
  return spend(L, n, *count);
}

static yaml_node_t *item(loader_t *L, yaml_node_item_t *start, size_t i) {
  return yaml_document_get_node(&L->doc, start[i]);
}

/* Keys that Prometheus knows but moongate does not honour: refused, except
 * list-valued ones given as null or [] (an empty list does nothing). */
static const char *const list_keys[] = {
    "rule_files", "remote_read", "scrape_config_files", "relabel_configs", "metric_relabel_configs",
    "write_relabel_configs", "alert_relabel_configs",
};

static bool is_empty_list(const yaml_node_t *v) {
  return is_null(v) || (v->type == YAML_SEQUENCE_NODE && v->data.sequence.items.start == v->data.sequence.items.top);
}

/* Refuse key p (whose name the caller has pushed on the path) unless it is
 * a list-valued Prometheus key given as an empty list. */
static int unsupported(loader_t *L, const pair_t *p) {
  bool listy = false;
  size_t kl = strlen(p->key);
  for (size_t i = 0; i < sizeof(list_keys) / sizeof(list_keys[0]) && !listy; i++) listy = !strcmp(p->key, list_keys[i]);
  if (kl > 11 && !strcmp(p->key + kl - 11, "_sd_configs")) listy = true;
  if (listy && is_empty_list(p->v)) return 0;
  return fail(L, p->k, "not supported by this moongate version");
}

/* Accept key only with the value moongate's behaviour already matches. */
static int only_value(loader_t *L, const pair_t *p, bool want, const char *why) {
  bool b;
  int rc = get_bool(L, p->v, &b);
  if (rc < 0) return rc;
  if (b != want) return fail(L, p->k, "only %s is supported: %s", want ? "true" : "false", why);
  return 0;
}

typedef enum { KVS_PLAIN, KVS_TARGET_LABELS, KVS_EXTERNAL_LABELS } kvs_mode_t;

/* Map of string to string (labels, headers): duplicates were refused when
 * collecting, so kvs_add keeps the file's order. */
static int get_kvs(loader_t *L, yaml_node_t *n, mg_kvs_t *kvs, kvs_mode_t mode) {
  map_t m;
  int rc = get_map(L, n, &m);
  if (rc < 0) return rc;
  if (m.n > MG_CONF_MAX_LABELS) rc = fail(L, n, "%zu entries, more than the maximum %d", m.n, MG_CONF_MAX_LABELS);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    const char *v = "";
    size_t old = push_key(L, m.v[i].key);
    if (!is_null(m.v[i].v)) rc = get_str(L, m.v[i].v, &v);
    /* Prometheus expands $VAR in external label values; moongate does
     * not, so such a value would silently differ. */
    if (rc == 0 && mode == KVS_EXTERNAL_LABELS && strchr(v, '$'))
      rc = fail(L, m.v[i].v, "value contains '$': environment variable expansion is not supported");
    if (rc == 0) rc = spend(L, m.v[i].k, 2);
    if (rc == 0 && mg_kvs_add(kvs, m.v[i].key, v) < 0) rc = oom(L, m.v[i].k);
    pop(L, old);
  }
  map_cleanup(&m);
  return rc;
}

/* ---- shared HTTP client settings --------------------------------------- */

/* A key of a small settings map and the struct field it fills. */
typedef enum { KEY_STR, KEY_SECRET, KEY_BOOL } key_kind_t;
typedef struct {
  const char *key;
  size_t off; /* of a char * (KEY_STR, KEY_SECRET) or a bool (KEY_BOOL) */
  key_kind_t kind;
} map_key_t;

#define MAP_KEY(name, type, field, kind) {name, offsetof(type, field), kind}
#define NKEYS(keys) (sizeof(keys) / sizeof((keys)[0]))

/* A map whose keys fill fields of obj; null values are ignored, keys not
 * in the table refused. */
static int load_keys(loader_t *L, yaml_node_t *n, void *obj, const map_key_t *keys, size_t nkeys) {
  map_t m;
  int rc = get_map(L, n, &m);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    const pair_t *p = &m.v[i];
    size_t old = push_key(L, p->key);
    const map_key_t *k = keys;
    while (k < keys + nkeys && strcmp(p->key, k->key) != 0) k++;
    if (is_null(p->v))
      ;
    else if (k == keys + nkeys)
      rc = fail(L, p->k, "not supported by this moongate version");
    else if (k->kind == KEY_BOOL)
      rc = get_bool(L, p->v, (bool *)((char *)obj + k->off));
    else
      rc = set_str(L, p->v, (char **)((char *)obj + k->off), k->kind == KEY_SECRET);
    pop(L, old);
  }
  map_cleanup(&m);
  return rc;
}

static int load_basic_auth(loader_t *L, yaml_node_t *n, mg_conf_auth_t *a) {
  static const map_key_t keys[] = {
      MAP_KEY("username", mg_conf_auth_t, basic_username, KEY_STR),
      MAP_KEY("password", mg_conf_auth_t, basic_password, KEY_SECRET),
      MAP_KEY("password_file", mg_conf_auth_t, basic_password_file, KEY_STR),
  };
  int rc = load_keys(L, n, a, keys, NKEYS(keys));
  /* basic_auth: {} still means "send basic auth", with empty fields. */
  if (rc == 0 && !a->basic_username && mg_conf_set_str(&a->basic_username, "") < 0) rc = oom(L, n);
  return rc;
}

static int load_authorization(loader_t *L, yaml_node_t *n, mg_conf_auth_t *a) {
  static const map_key_t keys[] = {
      MAP_KEY("type", mg_conf_auth_t, auth_type, KEY_STR),
      MAP_KEY("credentials", mg_conf_auth_t, credentials, KEY_SECRET),
      MAP_KEY("credentials_file", mg_conf_auth_t, credentials_file, KEY_STR),
  };
  int rc = load_keys(L, n, a, keys, NKEYS(keys));
  if (rc == 0 && !a->auth_type && mg_conf_set_str(&a->auth_type, "Bearer") < 0) rc = oom(L, n);
  return rc;
}

static int load_tls(loader_t *L, yaml_node_t *n, mg_conf_tls_t *t) {
  static const map_key_t keys[] = {
      MAP_KEY("ca_file", mg_conf_tls_t, ca_file, KEY_STR),
      MAP_KEY("cert_file", mg_conf_tls_t, cert_file, KEY_STR),
      MAP_KEY("key_file", mg_conf_tls_t, key_file, KEY_STR),
      MAP_KEY("server_name", mg_conf_tls_t, server_name, KEY_STR),
      MAP_KEY("insecure_skip_verify", mg_conf_tls_t, insecure_skip_verify, KEY_BOOL),
  };
  return load_keys(L, n, t, keys, NKEYS(keys));
}

/* The HTTP client keys scrape jobs and remote_write share. Returns 1 when
 * key is one of them (handled or refused through rc), 0 otherwise. */
static int http_key(loader_t *L, const pair_t *p, mg_conf_auth_t *a, mg_conf_tls_t *t, int *rc) {
  if (!strcmp(p->key, "basic_auth"))
    *rc = load_basic_auth(L, p->v, a);
  else if (!strcmp(p->key, "authorization"))
    *rc = load_authorization(L, p->v, a);
  else if (!strcmp(p->key, "bearer_token")) /* legacy spelling of authorization */
    *rc = set_str(L, p->v, &a->credentials, true);
  else if (!strcmp(p->key, "bearer_token_file"))
    *rc = set_str(L, p->v, &a->credentials_file, false);
  else if (!strcmp(p->key, "tls_config"))
    *rc = load_tls(L, p->v, t);
  else if (!strcmp(p->key, "enable_http2")) {
    bool b;
    *rc = get_bool(L, p->v, &b);
  } else if (!strcmp(p->key, "follow_redirects"))
    *rc = only_value(L, p, false, "moongate does not follow redirects");
  else
    return 0;
  return 1;
}

/* Prometheus's checks among the legacy and new auth keys, which all land
 * in the same mg_conf_auth_t fields and so cannot be told apart later. */
static int check_auth_keys(loader_t *L, const map_t *m) {
  const pair_t *bt = map_find(m, "bearer_token"), *btf = map_find(m, "bearer_token_file");
  const pair_t *authz = map_find(m, "authorization"), *basic = map_find(m, "basic_auth");
  if (bt && is_null(bt->v)) bt = NULL;
  if (btf && is_null(btf->v)) btf = NULL;
  if (bt && btf) return fail(L, btf->k, "at most one of bearer_token and bearer_token_file may be set");
  if ((bt || btf) && authz && !is_null(authz->v))
    return fail(L, (bt ? bt : btf)->k, "bearer_token cannot be combined with authorization");
  if ((bt || btf) && basic && !is_null(basic->v))
    return fail(L, (bt ? bt : btf)->k, "at most one of basic_auth and bearer_token may be set");
  return 0;
}

/* ---- scrape_configs ---------------------------------------------------- */

static int load_static_config(loader_t *L, yaml_node_t *n, mg_conf_job_t *j) {
  map_t m;
  int rc = get_map(L, n, &m);
  if (rc < 0) return rc;
  const pair_t *targets = map_find(&m, "targets"), *labels = map_find(&m, "labels");
  for (size_t i = 0; i < m.n && rc == 0; i++)
    if (strcmp(m.v[i].key, "targets") && strcmp(m.v[i].key, "labels")) {
      size_t old = push_key(L, m.v[i].key);
      rc = unsupported(L, &m.v[i]);
      pop(L, old);
    }
  mg_kvs_t kvs = {0};
  if (rc == 0 && labels) {
    size_t old = push_key(L, "labels");
    rc = get_kvs(L, labels->v, &kvs, KVS_TARGET_LABELS);
    pop(L, old);
  }
  if (rc == 0 && targets) {
    size_t old = push_key(L, "targets"), count;
    yaml_node_item_t *items;
    rc = get_seq(L, targets->v, &items, &count);
    for (size_t i = 0; i < count && rc == 0; i++) {
      size_t o2 = push_index(L, i);
      yaml_node_t *t = item(L, items, i);
      const char *addr = "";
      if (j->ntargets >= MG_CONF_MAX_TARGETS)
        rc = fail(L, t, "more than %d targets in one job", MG_CONF_MAX_TARGETS);
      else if ((rc = spend(L, t, 4 + 2 * kvs.n)) == 0 && (rc = get_str(L, t, &addr)) == 0) {
        mg_conf_target_t *tg = mg_conf_job_add_target(j, addr);
        if (!tg) rc = oom(L, t);
        for (size_t l = 0; l < kvs.n && rc == 0; l++)
          if (mg_kvs_add(&tg->labels, kvs.v[l].name, kvs.v[l].value) < 0) rc = oom(L, t);
      }
      pop(L, o2);
    }
    pop(L, old);
  }
  mg_kvs_cleanup(&kvs);
  map_cleanup(&m);
  return rc;
}

static int load_params(loader_t *L, yaml_node_t *n, mg_conf_job_t *j) {
  map_t m;
  int rc = get_map(L, n, &m);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    size_t old = push_key(L, m.v[i].key), count;
    yaml_node_item_t *items;
    rc = get_seq(L, m.v[i].v, &items, &count);
    for (size_t v = 0; v < count && rc == 0; v++) {
      const char *s = "";
      if (j->params.n >= MG_CONF_MAX_LABELS)
        rc = fail(L, m.v[i].k, "more than %d values", MG_CONF_MAX_LABELS);
      else if ((rc = spend(L, m.v[i].k, 2)) < 0)
        break;
      else if ((rc = get_str(L, item(L, items, v), &s)) == 0 && mg_kvs_add(&j->params, m.v[i].key, s) < 0)
        rc = oom(L, m.v[i].k);
    }
    pop(L, old);
  }
  map_cleanup(&m);
  return rc;
}

/* One relabel_config: fields as written (mg_relabel checks and compiles
 * them, with Prometheus's defaults for what is absent). */
static int load_relabel(loader_t *L, yaml_node_t *n, mg_conf_relabels_t *rs) {
  map_t m;
  int rc = get_map(L, n, &m);
  if (rc < 0) return rc;
  mg_conf_relabel_t *r = mg_conf_relabels_add(rs);
  if (!r) rc = oom(L, n);
  if (r) r->line = line_of(n);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    pair_t *pr = &m.v[i];
    size_t old = push_key(L, pr->key);
    yaml_node_t *v = pr->v;
    const char *k = pr->key;
    if (is_null(v)) {
      /* absent */
    } else if (!strcmp(k, "source_labels")) {
      size_t count;
      yaml_node_item_t *items;
      if ((rc = get_seq(L, v, &items, &count)) == 0)
        for (size_t x = 0; x < count && rc == 0; x++) {
          const char *lbl = "";
          size_t o2 = push_index(L, x);
          if ((rc = get_str(L, item(L, items, x), &lbl)) == 0 && mg_conf_relabel_add_source(r, lbl) < 0)
            rc = oom(L, v);
          pop(L, o2);
        }
    } else if (!strcmp(k, "separator")) {
      rc = set_str(L, v, &r->separator, false);
    } else if (!strcmp(k, "regex")) {
      rc = set_str(L, v, &r->regex, false);
    } else if (!strcmp(k, "modulus")) {
      rc = get_uint(L, v, UINT64_MAX, &r->modulus);
    } else if (!strcmp(k, "target_label")) {
      rc = set_str(L, v, &r->target_label, false);
    } else if (!strcmp(k, "replacement")) {
      rc = set_str(L, v, &r->replacement, false);
    } else if (!strcmp(k, "action")) {
      rc = set_str(L, v, &r->action, false);
    } else {
      rc = fail(L, pr->k, "unknown relabel_config field");
    }
    pop(L, old);
  }
  map_cleanup(&m);
  return rc;
}

static int load_relabels(loader_t *L, yaml_node_t *v, mg_conf_relabels_t *rs) {
  size_t count;
  yaml_node_item_t *items;
  int rc = get_seq(L, v, &items, &count);
  for (size_t i = 0; i < count && rc == 0; i++) {
    size_t old = push_index(L, i);
    rc = load_relabel(L, item(L, items, i), rs);
    pop(L, old);
  }
  return rc;
}

/* Options of a discovery source, kept as written for its provider (mg_sd),
 * which checks them: scalars as text, lists and mappings nested, merge
 * keys resolved, null members left out (absent, as yaml.v2 leaves a field
 * at its default). */
static int load_val(loader_t *L, yaml_node_t *n, mg_conf_val_t **out, int depth) {
  *out = NULL;
  if (depth > 32) return fail(L, n, "nested too deeply");
  int rc = spend(L, n, 1);
  if (rc < 0) return rc;
  if (n->type == YAML_SCALAR_NODE) {
    const char *s = "";
    if ((rc = get_str(L, n, &s)) < 0) return rc;
    return (*out = mg_conf_val_new(MG_CONF_VAL_SCALAR, s, line_of(n))) ? 0 : oom(L, n);
  }
  if (n->type == YAML_SEQUENCE_NODE) {
    size_t count;
    yaml_node_item_t *items;
    if ((rc = get_seq(L, n, &items, &count)) < 0) return rc;
    mg_conf_val_t *list = mg_conf_val_new(MG_CONF_VAL_LIST, NULL, line_of(n));
    if (!list) return oom(L, n);
    for (size_t i = 0; i < count && rc == 0; i++) {
      size_t old = push_index(L, i);
      mg_conf_val_t *v = NULL;
      yaml_node_t *it = item(L, items, i);
      if (!it) rc = fail(L, n, "malformed list");
      if (rc == 0 && (rc = load_val(L, it, &v, depth + 1)) == 0 && mg_conf_val_push(list, v) < 0) rc = oom(L, it);
      pop(L, old);
    }
    if (rc < 0) mg_conf_val_free(list);
    else *out = list;
    return rc;
  }
  map_t m;
  if ((rc = get_map(L, n, &m)) < 0) return rc;
  mg_conf_val_t *map = mg_conf_val_new(MG_CONF_VAL_MAP, NULL, line_of(n));
  if (!map) rc = oom(L, n);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    if (is_null(m.v[i].v)) continue;
    size_t old = push_key(L, m.v[i].key);
    mg_conf_val_t *v = NULL;
    if ((rc = load_val(L, m.v[i].v, &v, depth + 1)) == 0 && mg_conf_val_put(map, m.v[i].key, v) < 0)
      rc = oom(L, m.v[i].k);
    pop(L, old);
  }
  map_cleanup(&m);
  if (rc < 0) mg_conf_val_free(map);
  else *out = map;
  return rc;
}

/* <kind>_sd_configs: one discovery source of that kind per entry; an
 * unknown kind is refused later, by mg_sd_check_plan, like bad options. */
static int load_sd_configs(loader_t *L, const pair_t *p, mg_conf_job_t *j) {
  char kind[64];
  size_t kl = strlen(p->key) - strlen("_sd_configs");
  if (kl >= sizeof kind) return fail(L, p->k, "unknown discovery kind");
  memcpy(kind, p->key, kl);
  kind[kl] = '\0';
  size_t count;
  yaml_node_item_t *items;
  int rc = get_seq(L, p->v, &items, &count);
  for (size_t i = 0; i < count && rc == 0; i++) {
    size_t old = push_index(L, i);
    yaml_node_t *n = item(L, items, i);
    mg_conf_val_t *opts = NULL;
    if (!n) rc = fail(L, p->v, "malformed list");
    else if (!is_null(n) && n->type != YAML_MAPPING_NODE) rc = fail(L, n, "expected a mapping, got %s", type_name(n));
    else if (!is_null(n)) rc = load_val(L, n, &opts, 0);
    mg_conf_sd_t *sd = rc == 0 ? mg_conf_job_add_sd(j, kind) : NULL;
    if (rc == 0 && !sd) rc = oom(L, n);
    if (sd) {
      sd->line = line_of(n);
      if (opts) {
        mg_conf_val_free(sd->opts);
        sd->opts = opts;
        opts = NULL;
      }
    }
    mg_conf_val_free(opts);
    pop(L, old);
  }
  return rc;
}

static int job_key(loader_t *L, const pair_t *p, mg_conf_job_t *j) {
  const char *k = p->key;
  yaml_node_t *v = p->v;
  int rc = 0;
  uint64_t u = 0;
  if (is_null(v)) return 0;
  if (!strcmp(k, "job_name")) return set_str(L, v, &j->name, false);
  if (!strcmp(k, "scrape_interval")) return get_duration(L, v, &j->interval_ms);
  if (!strcmp(k, "scrape_timeout")) return get_duration(L, v, &j->timeout_ms);
  if (!strcmp(k, "metrics_path")) return set_str(L, v, &j->metrics_path, false);
  if (!strcmp(k, "scheme")) {
    const char *s = "";
    if ((rc = get_str(L, v, &s)) < 0) return rc;
    if (strcmp(s, "http") && strcmp(s, "https")) return fail(L, v, "must be http or https, not \"%.32s\"", s);
    return set_str(L, v, &j->scheme, false);
  }
  if (!strcmp(k, "params")) return load_params(L, v, j);
  if (!strcmp(k, "relabel_configs")) return load_relabels(L, v, &j->relabel_configs);
  if (!strcmp(k, "metric_relabel_configs")) return load_relabels(L, v, &j->metric_relabel_configs);
  if (!strcmp(k, "honor_labels")) return get_bool(L, v, &j->honor_labels);
  if (!strcmp(k, "honor_timestamps")) return get_bool(L, v, &j->honor_timestamps);
  if (!strcmp(k, "enable_compression")) return get_bool(L, v, &j->enable_compression);
  if (!strcmp(k, "body_size_limit")) {
    const char *s = "";
    if ((rc = get_str(L, v, &s)) < 0) return rc;
    if (mg_conf_parse_bytes(s, &j->body_size_limit) < 0)
      return fail(L, v, "invalid size \"%.64s\" (use e.g. 10MB, 512KiB)", s);
    return 0;
  }
  uint64_t *lim = !strcmp(k, "sample_limit")               ? &j->sample_limit
                  : !strcmp(k, "label_limit")              ? &j->label_limit
                  : !strcmp(k, "label_name_length_limit")  ? &j->label_name_length_limit
                  : !strcmp(k, "label_value_length_limit") ? &j->label_value_length_limit
                                                           : NULL;
  if (lim) {
    if ((rc = get_uint(L, v, UINT32_MAX, &u)) == 0) *lim = u;
    return rc;
  }
  if (!strcmp(k, "static_configs")) {
    size_t count;
    yaml_node_item_t *items;
    if ((rc = get_seq(L, v, &items, &count)) < 0) return rc;
    for (size_t i = 0; i < count && rc == 0; i++) {
      size_t old = push_index(L, i);
      rc = load_static_config(L, item(L, items, i), j);
      pop(L, old);
    }
    return rc;
  }
  size_t kl = strlen(k);
  if (kl > 11 && !strcmp(k + kl - 11, "_sd_configs")) return load_sd_configs(L, p, j);
  if (http_key(L, p, &j->auth, &j->tls, &rc)) return rc;
  return unsupported(L, p);
}

static int track_line(loader_t *L, uint32_t **lines, size_t *cap, size_t index, uint32_t line) {
  if (index >= *cap) {
    size_t ncap = *cap ? *cap * 2 : 16;
    uint32_t *v = mg_reallocarray(*lines, ncap, sizeof(*v));
    if (!v) return MG_ENOMEM;
    *lines = v;
    *cap = ncap;
  }
  (*lines)[index] = line;
  return 0;
}

static int load_job(loader_t *L, yaml_node_t *n) {
  if (L->c->njobs >= MG_CONF_MAX_JOBS) return fail(L, n, "more than %d scrape jobs", MG_CONF_MAX_JOBS);
  if (n->type != YAML_MAPPING_NODE) return fail(L, n, "expected a mapping, got %s", type_name(n));
  map_t m;
  int rc = get_map(L, n, &m);
  if (rc < 0) return rc;
  mg_conf_job_t *j = mg_conf_add_job(L->c, NULL);
  if (!j || track_line(L, &L->job_line, &L->job_line_cap, L->c->njobs - 1, line_of(n)) < 0) {
    map_cleanup(&m);
    return oom(L, n);
  }
  const pair_t *name = map_find(&m, "job_name");
  if (!name || is_null(name->v)) rc = fail(L, n, "job_name is missing");
  if (rc == 0) rc = check_auth_keys(L, &m);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    size_t old = push_key(L, m.v[i].key);
    rc = job_key(L, &m.v[i], j);
    pop(L, old);
  }
  map_cleanup(&m);
  return rc;
}

/* ---- remote_write ------------------------------------------------------ */

static int load_queue(loader_t *L, yaml_node_t *n, mg_conf_queue_t *q) {
  map_t m;
  int rc = get_map(L, n, &m);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    const pair_t *p = &m.v[i];
    size_t old = push_key(L, p->key);
    if (is_null(p->v))
      ;
    else if (!strcmp(p->key, "capacity"))
      rc = get_u32_pos(L, p->v, &q->capacity);
    else if (!strcmp(p->key, "max_shards"))
      rc = get_u32_pos(L, p->v, &q->max_shards);
    else if (!strcmp(p->key, "min_shards"))
      rc = get_u32_pos(L, p->v, &q->min_shards);
    else if (!strcmp(p->key, "max_samples_per_send"))
      rc = get_u32_pos(L, p->v, &q->max_samples_per_send);
    else if (!strcmp(p->key, "batch_send_deadline"))
      rc = get_duration_pos(L, p->v, &q->batch_send_deadline_ms);
    else if (!strcmp(p->key, "min_backoff"))
      rc = get_duration_pos(L, p->v, &q->min_backoff_ms);
    else if (!strcmp(p->key, "max_backoff"))
      rc = get_duration_pos(L, p->v, &q->max_backoff_ms);
    else if (!strcmp(p->key, "retry_on_http_429"))
      rc = get_bool(L, p->v, &q->retry_on_http_429);
    else
      rc = fail(L, p->k, "not supported by this moongate version");
    pop(L, old);
  }
  map_cleanup(&m);
  return rc;
}

static int load_metadata(loader_t *L, yaml_node_t *n, mg_conf_dest_t *d) {
  map_t m;
  int rc = get_map(L, n, &m);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    const pair_t *p = &m.v[i];
    size_t old = push_key(L, p->key);
    if (is_null(p->v))
      ;
    else if (!strcmp(p->key, "send"))
      rc = get_bool(L, p->v, &d->send_metadata);
    else if (!strcmp(p->key, "send_interval"))
      rc = get_duration_pos(L, p->v, &d->metadata_send_interval_ms);
    else
      rc = fail(L, p->k, "not supported by this moongate version");
    pop(L, old);
  }
  map_cleanup(&m);
  return rc;
}

/* remote_write[].sigv4 as Prometheus has it (region, access_key,
 * secret_key, profile, role_arn), plus moongate's external_id,
 * credentials_file and sts_endpoint. Keys given -> static credentials;
 * a profile -> that profile of the shared files; role_arn -> AssumeRole on
 * top of either, or of the default chain; nothing -> the default chain. */
static int load_sigv4(loader_t *L, yaml_node_t *n, mg_conf_dest_t *d) {
  map_t m;
  int rc = get_map(L, n, &m);
  if (rc < 0) return rc;
  mg_conf_sigv4_t *sv = &d->sigv4;
  sv->enabled = true;
  char *access = NULL, *secret = NULL, *profile = NULL, *role = NULL, *ext = NULL, *file = NULL, *sts = NULL;
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    pair_t *pr = &m.v[i];
    size_t old = push_key(L, pr->key);
    const char *k = pr->key;
    if (is_null(pr->v)) rc = 0;
    else if (!strcmp(k, "region")) rc = set_str(L, pr->v, &sv->region, false);
    else if (!strcmp(k, "access_key")) rc = set_str(L, pr->v, &access, false);
    else if (!strcmp(k, "secret_key")) rc = set_str(L, pr->v, &secret, true);
    else if (!strcmp(k, "profile")) rc = set_str(L, pr->v, &profile, false);
    else if (!strcmp(k, "role_arn")) rc = set_str(L, pr->v, &role, false);
    else if (!strcmp(k, "external_id")) rc = set_str(L, pr->v, &ext, false);
    else if (!strcmp(k, "credentials_file")) rc = set_str(L, pr->v, &file, false);
    else if (!strcmp(k, "sts_endpoint")) rc = set_str(L, pr->v, &sts, false);
    else rc = fail(L, pr->k, "not supported by this moongate version");
    pop(L, old);
  }
  if (rc == 0 && (!access) != (!secret)) rc = fail(L, n, "access_key and secret_key go together");
  if (rc == 0 && access && (profile || file)) rc = fail(L, n, "give either access_key/secret_key or a profile");
  if (rc == 0) {
    mg_conf_creds_t *base = &sv->creds;
    if (role) {
      base->kind = MG_CREDS_ASSUME_ROLE;
      base->role_arn = role, role = NULL;
      base->external_id = ext, ext = NULL;
      base->sts_endpoint = sts, sts = NULL;
      if (access || profile || file) {
        base = mg_conf_creds_add_source(&sv->creds, MG_CREDS_CHAIN);
        if (!base) rc = oom(L, n);
      } else {
        base = NULL; /* the default chain */
      }
    } else if (ext) {
      rc = fail(L, n, "external_id needs role_arn");
    }
    if (rc == 0 && base) {
      if (access) {
        base->kind = MG_CREDS_STATIC;
        base->access_key_id = access, access = NULL;
        base->secret_access_key = secret, secret = NULL;
      } else if (profile || file) {
        base->kind = MG_CREDS_PROFILE;
        base->profile = profile, profile = NULL;
        base->credentials_file = file, file = NULL;
      } else if (!role) {
        base->kind = MG_CREDS_CHAIN;
      }
    }
  }
  mg_free(access);
  mg_mem_free_secret(secret);
  mg_free(profile);
  mg_free(role);
  mg_free(ext);
  mg_free(file);
  mg_free(sts);
  map_cleanup(&m);
  return rc;
}

static int dest_key(loader_t *L, const pair_t *p, mg_conf_dest_t *d) {
  const char *k = p->key;
  yaml_node_t *v = p->v;
  int rc = 0;
  if (is_null(v)) return 0;
  if (!strcmp(k, "url")) return set_str(L, v, &d->url, false);
  if (!strcmp(k, "name")) {
    const char *s = "";
    if ((rc = get_str(L, v, &s)) < 0) return rc;
    /* Prometheus treats "" as unnamed too; finish then names it rw-<i>. */
    return *s ? set_str(L, v, &d->name, false) : 0;
  }
  if (!strcmp(k, "remote_timeout")) return get_duration_pos(L, v, &d->remote_timeout_ms);
  if (!strcmp(k, "headers")) return get_kvs(L, v, &d->headers, KVS_PLAIN);
  if (!strcmp(k, "queue_config")) return load_queue(L, v, &d->queue);
  if (!strcmp(k, "metadata_config")) return load_metadata(L, v, d);
  if (!strcmp(k, "write_relabel_configs")) return load_relabels(L, v, &d->write_relabel_configs);
  if (!strcmp(k, "sigv4")) return load_sigv4(L, v, d);
  if (!strcmp(k, "send_exemplars")) return only_value(L, p, false, "moongate sends no exemplars");
  if (!strcmp(k, "send_native_histograms"))
    return only_value(L, p, false, "moongate sends no native histograms");
  if (http_key(L, p, &d->auth, &d->tls, &rc)) return rc;
  return unsupported(L, p);
}

static int load_dest(loader_t *L, yaml_node_t *n) {
  if (L->c->ndests >= MG_CONF_MAX_DESTS) return fail(L, n, "more than %d remote_write entries", MG_CONF_MAX_DESTS);
  if (n->type != YAML_MAPPING_NODE) return fail(L, n, "expected a mapping, got %s", type_name(n));
  map_t m;
  int rc = get_map(L, n, &m);
  if (rc < 0) return rc;
  mg_conf_dest_t *d = mg_conf_add_dest(L->c, NULL, MG_DEST_REMOTE_WRITE);
  if (!d || track_line(L, &L->dest_line, &L->dest_line_cap, L->c->ndests - 1, line_of(n)) < 0) {
    map_cleanup(&m);
    return oom(L, n);
  }
  const pair_t *url = map_find(&m, "url");
  if (!url || is_null(url->v)) rc = fail(L, n, "url is missing");
  if (rc == 0) rc = check_auth_keys(L, &m);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    size_t old = push_key(L, m.v[i].key);
    rc = dest_key(L, &m.v[i], d);
    pop(L, old);
  }
  map_cleanup(&m);
  return rc;
}

/* ---- top level --------------------------------------------------------- */

static int load_global(loader_t *L, yaml_node_t *n) {
  map_t m;
  int rc = get_map(L, n, &m);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    const pair_t *p = &m.v[i];
    size_t old = push_key(L, p->key);
    uint64_t ignored;
    if (is_null(p->v))
      ;
    else if (!strcmp(p->key, "scrape_interval"))
      rc = get_duration(L, p->v, &L->c->scrape_interval_ms);
    else if (!strcmp(p->key, "scrape_timeout"))
      rc = get_duration(L, p->v, &L->c->scrape_timeout_ms);
    else if (!strcmp(p->key, "evaluation_interval")) /* no rules in moongate: checked, unused */
      rc = get_duration(L, p->v, &ignored);
    else if (!strcmp(p->key, "external_labels"))
      rc = get_kvs(L, p->v, &L->c->external_labels, KVS_EXTERNAL_LABELS);
    else
      rc = fail(L, p->k, "not supported by this moongate version");
    pop(L, old);
  }
  map_cleanup(&m);
  return rc;
}

/* alerting is harmless only while it names no Alertmanager (the shape of
 * the prometheus.yml Prometheus ships: one static_configs entry whose
 * targets are commented out). With no rules there are no alerts anyway,
 * but a configured Alertmanager suggests the user expects some. */
static int no_alertmanager(loader_t *L, const yaml_node_t *at) {
  return fail(L, at, "Alertmanagers are not supported (moongate evaluates no rules and sends no alerts)");
}

static int load_alertmanager(loader_t *L, yaml_node_t *n) {
  map_t am;
  int rc = get_map(L, n, &am);
  for (size_t k = 0; k < am.n && rc == 0; k++) {
    size_t old = push_key(L, am.v[k].key), nsc = 0;
    yaml_node_item_t *scs = NULL;
    if (strcmp(am.v[k].key, "static_configs"))
      rc = no_alertmanager(L, am.v[k].k);
    else
      rc = get_seq(L, am.v[k].v, &scs, &nsc);
    for (size_t s = 0; s < nsc && rc == 0; s++) {
      map_t sc;
      size_t o2 = push_index(L, s);
      if ((rc = get_map(L, item(L, scs, s), &sc)) == 0) {
        for (size_t t = 0; t < sc.n && rc == 0; t++)
          if (strcmp(sc.v[t].key, "targets") || !is_empty_list(sc.v[t].v)) rc = no_alertmanager(L, sc.v[t].k);
        map_cleanup(&sc);
      }
      pop(L, o2);
    }
    pop(L, old);
  }
  map_cleanup(&am);
  return rc;
}

static int load_list(loader_t *L, const pair_t *p, int (*one)(loader_t *, yaml_node_t *));

static int load_alerting(loader_t *L, yaml_node_t *n) {
  map_t m;
  int rc = get_map(L, n, &m);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    size_t old = push_key(L, m.v[i].key);
    if (!strcmp(m.v[i].key, "alertmanagers"))
      rc = load_list(L, &m.v[i], load_alertmanager);
    else
      rc = unsupported(L, &m.v[i]);
    pop(L, old);
  }
  map_cleanup(&m);
  return rc;
}

static int load_list(loader_t *L, const pair_t *p, int (*one)(loader_t *, yaml_node_t *)) {
  size_t count;
  yaml_node_item_t *items;
  int rc = get_seq(L, p->v, &items, &count);
  for (size_t i = 0; i < count && rc == 0; i++) {
    size_t old = push_index(L, i);
    rc = one(L, item(L, items, i));
    pop(L, old);
  }
  return rc;
}

static int load_root(loader_t *L, yaml_node_t *root) {
  map_t m;
  if (root && root->type != YAML_MAPPING_NODE && !is_null(root))
    return fail(L, root, "expected a mapping at the top of the file, got %s", type_name(root));
  int rc = get_map(L, root, &m);
  for (size_t i = 0; i < m.n && rc == 0; i++) {
    const pair_t *p = &m.v[i];
    size_t old = push_key(L, p->key);
    if (!strcmp(p->key, "global"))
      rc = load_global(L, p->v);
    else if (!strcmp(p->key, "scrape_configs"))
      rc = load_list(L, p, load_job);
    else if (!strcmp(p->key, "remote_write"))
      rc = load_list(L, p, load_dest);
    else if (!strcmp(p->key, "alerting"))
      rc = load_alerting(L, p->v);
    else
      rc = unsupported(L, p);
    pop(L, old);
  }
  map_cleanup(&m);
  return rc;
}

static void yaml_problem(const yaml_parser_t *P, const char *name, mg_conf_error_t *err) {
  const char *what = P->problem ? P->problem : "malformed YAML";
  if (P->context)
    set_err(err, name, (uint32_t)P->problem_mark.line + 1, "YAML: %s %s (from line %zu)", what, P->context,
            P->context_mark.line + 1);
  else
    set_err(err, name, (uint32_t)P->problem_mark.line + 1, "YAML: %s", what);
}

int mg_promyml_load_buf(const char *yaml, size_t len, const char *name, mg_conf_t **out, mg_conf_error_t *err) {
  *out = NULL;
  if (!name) name = "prometheus.yml";
  if (len > MG_PROMYML_MAX_BYTES) {
    set_err(err, name, 0, "file larger than %u MiB", MG_PROMYML_MAX_BYTES >> 20);
    return MG_ETOOBIG;
  }
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) {
    set_err(err, name, 0, "out of memory");
    return MG_ENOMEM;
  }
  yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
  loader_t L = {.err = err, .name = name};
  int rc = 0;
  if (!yaml_parser_load(&parser, &L.doc)) {
    yaml_problem(&parser, name, err);
    rc = parser.error == YAML_MEMORY_ERROR ? MG_ENOMEM : MG_ECONFIG;
    yaml_parser_delete(&parser);
    return rc;
  }
  /* Go's yaml.v2 reads the first document only; refuse the rest rather
   * than ignore part of the file. */
  yaml_document_t extra;
  if (!yaml_parser_load(&parser, &extra)) {
    yaml_problem(&parser, name, err);
    rc = parser.error == YAML_MEMORY_ERROR ? MG_ENOMEM : MG_ECONFIG;
  } else {
    yaml_node_t *second = yaml_document_get_root_node(&extra);
    if (second) {
      set_err(err, name, line_of(second), "only one YAML document is supported (found a second one)");
      rc = MG_ECONFIG;
    }
    yaml_document_delete(&extra);
  }
  yaml_parser_delete(&parser);
  if (rc == 0 && !(L.c = mg_conf_new(name, MG_CONF_PROMYML))) {
    set_err(err, name, 0, "out of memory");
    rc = MG_ENOMEM;
  }
  if (rc == 0) rc = load_root(&L, yaml_document_get_root_node(&L.doc));
  if (rc == 0) {
    mg_conf_at_t at;
    size_t index;
    rc = mg_conf_finish_at(L.c, err, &at, &index);
    if (rc < 0 && err) {
      snprintf(err->file, sizeof(err->file), "%s", name);
      if (at == MG_CONF_AT_JOB && index < L.c->njobs) err->line = L.job_line[index];
      if (at == MG_CONF_AT_DEST && index < L.c->ndests) err->line = L.dest_line[index];
    }
  }
  yaml_document_delete(&L.doc);
  mg_free(L.job_line);
  mg_free(L.dest_line);
  if (rc < 0) {
    mg_conf_free(L.c);
    return rc;
  }
  *out = L.c;
  return 0;
}

int mg_promyml_load(const char *path, mg_conf_t **out, mg_conf_error_t *err) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    set_err(err, path, 0, "cannot open: %s", strerror(errno));
    return MG_EIO;
  }
  /* Read one byte past the cap to tell "exactly at the cap" from "over". */
  char *buf = mg_malloc(MG_PROMYML_MAX_BYTES + 1);
  if (!buf) {
    fclose(f);
    set_err(err, path, 0, "out of memory");
    return MG_ENOMEM;
  }
  size_t n = fread(buf, 1, MG_PROMYML_MAX_BYTES + 1, f);
  int rc = 0;
  if (ferror(f)) {
    set_err(err, path, 0, "cannot read: %s", strerror(errno));
    rc = MG_EIO;
  } else if (n > MG_PROMYML_MAX_BYTES) {
    set_err(err, path, 0, "file larger than %u MiB", MG_PROMYML_MAX_BYTES >> 20);
    rc = MG_ETOOBIG;
  }
  fclose(f);
  if (rc == 0) rc = mg_promyml_load_buf(buf, n, path, out, err);
  /* The file may hold passwords and tokens. */
  mg_mem_wipe(buf, n);
  mg_free(buf);
  return rc;
}
