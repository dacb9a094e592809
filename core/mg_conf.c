/* mg_conf: builders, defaults, checks and printing of the plan. Owns every
 * string and array hanging off an mg_conf_t; wipes secrets when freeing.
 * Pure: reads no files and opens no sockets (credential files are read by
 * the modules that use them). */
#include "mg_conf.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_str.h"

/* ---- builders ---------------------------------------------------------- */

/* Make room for one more pointer in *arr (capacity doubles from 4), so
 * adding n items costs O(n) copies in total. */
static int grow_ptrs(void ***arr, size_t n, size_t *cap) {
  if (n < *cap) return 0;
  size_t ncap = *cap ? *cap * 2 : 4;
  if (ncap < *cap) return MG_ENOMEM;
  void **p = mg_reallocarray(*arr, ncap, sizeof(void *));
  if (!p) return MG_ENOMEM;
  *arr = p;
  *cap = ncap;
  return 0;
}

int mg_conf_set_str(char **slot, const char *s) {
  char *copy = NULL;
  if (s && !(copy = mg_strdup(s))) return MG_ENOMEM;
  mg_free(*slot);
  *slot = copy;
  return 0;
}

int mg_conf_set_secret(char **slot, const char *s) {
  char *copy = NULL;
  if (s && !(copy = mg_strdup(s))) return MG_ENOMEM;
  mg_mem_free_secret(*slot);
  *slot = copy;
  return 0;
}

int mg_kvs_add(mg_kvs_t *kvs, const char *name, const char *value) {
  if (!name || !value) return MG_EINVAL;
  if (kvs->n == kvs->cap) {
    size_t ncap = kvs->cap ? kvs->cap * 2 : 4;
    mg_kv_t *v = mg_reallocarray(kvs->v, ncap, sizeof(*v));
    if (!v) return MG_ENOMEM;
    kvs->v = v;
    kvs->cap = ncap;
  }
  char *n = mg_strdup(name), *val = mg_strdup(value);
  if (!n || !val) {
    mg_free(n);
    mg_free(val);
    return MG_ENOMEM;
  }
  kvs->v[kvs->n++] = (mg_kv_t){n, val};
  return 0;
}

int mg_kvs_set(mg_kvs_t *kvs, const char *name, const char *value) {
  if (!name || !value) return MG_EINVAL;
  for (size_t i = 0; i < kvs->n; i++)
    if (strcmp(kvs->v[i].name, name) == 0) return mg_conf_set_str(&kvs->v[i].value, value);
  return mg_kvs_add(kvs, name, value);
}

const char *mg_kvs_get(const mg_kvs_t *kvs, const char *name) {
  for (size_t i = 0; i < kvs->n; i++)
    if (strcmp(kvs->v[i].name, name) == 0) return kvs->v[i].value;
  return NULL;
}

void mg_kvs_cleanup(mg_kvs_t *kvs) {
  for (size_t i = 0; i < kvs->n; i++) {
    mg_free(kvs->v[i].name);
    mg_free(kvs->v[i].value);
  }
  mg_free(kvs->v);
  *kvs = (mg_kvs_t){0};
}

/* Header values may carry API keys, so they are wiped like passwords. */
static void kvs_cleanup_secret(mg_kvs_t *kvs) {
  for (size_t i = 0; i < kvs->n; i++) {
    mg_free(kvs->v[i].name);
    mg_mem_free_secret(kvs->v[i].value);
  }
  mg_free(kvs->v);
  *kvs = (mg_kvs_t){0};
}

static void auth_cleanup(mg_conf_auth_t *a) {
  mg_free(a->basic_username);
  mg_mem_free_secret(a->basic_password);
  mg_free(a->basic_password_file);
  mg_free(a->auth_type);
  mg_mem_free_secret(a->credentials);
  mg_free(a->credentials_file);
}

static void tls_cleanup(mg_conf_tls_t *t) {
  mg_free(t->ca_file);
  mg_free(t->cert_file);
  mg_free(t->key_file);
  mg_free(t->server_name);
}

static void relabels_cleanup(mg_conf_relabels_t *rs) {
  for (size_t i = 0; i < rs->n; i++) {
    mg_conf_relabel_t *r = rs->v[i];
    for (size_t k = 0; k < r->nsource_labels; k++) mg_free(r->source_labels[k]);
    mg_free(r->source_labels);
    mg_free(r->separator);
    mg_free(r->regex);
    mg_free(r->target_label);
    mg_free(r->replacement);
    mg_free(r->action);
    mg_free(r);
  }
  mg_free(rs->v);
  memset(rs, 0, sizeof *rs);
}

mg_conf_relabel_t *mg_conf_relabels_add(mg_conf_relabels_t *rs) {
  if (rs->n == rs->cap) {
    size_t ncap = rs->cap ? rs->cap * 2 : 4;
    mg_conf_relabel_t **v = mg_reallocarray(rs->v, ncap, sizeof *v);
    if (!v) return NULL;
    rs->v = v;
    rs->cap = ncap;
  }
  mg_conf_relabel_t *r = mg_calloc(1, sizeof *r);
  if (r) rs->v[rs->n++] = r;
  return r;
}

int mg_conf_relabel_add_source(mg_conf_relabel_t *r, const char *label) {
  char **v = mg_reallocarray(r->source_labels, r->nsource_labels + 1, sizeof *v);
  if (!v) return MG_ENOMEM;
  r->source_labels = v;
  if (!(v[r->nsource_labels] = mg_strdup(label))) return MG_ENOMEM;
  r->nsource_labels++;
  return 0;
}

static void creds_cleanup(mg_conf_creds_t *c) {
  mg_free(c->access_key_id);
  mg_mem_free_secret(c->secret_access_key);
  mg_mem_free_secret(c->session_token);
  mg_free(c->profile);
  mg_free(c->credentials_file);
  mg_free(c->config_file);
  mg_free(c->role_arn);
  mg_free(c->external_id);
  mg_free(c->role_session_name);
  mg_free(c->sts_region);
  mg_free(c->sts_endpoint);
  mg_free(c->web_identity_token_file);
  mg_free(c->process);
  if (c->source) {
    creds_cleanup(c->source);
    mg_free(c->source);
  }
  memset(c, 0, sizeof *c);
}

mg_conf_creds_t *mg_conf_creds_add_source(mg_conf_creds_t *c, mg_creds_kind_t kind) {
  if (c->source) return c->source;
  c->source = mg_calloc(1, sizeof *c->source);
  if (c->source) c->source->kind = kind;
  return c->source;
}

void mg_conf_val_free(mg_conf_val_t *v) {
  if (!v) return;
  if (v->s) mg_mem_wipe(v->s, strlen(v->s)); /* options may hold tokens and secret keys */
  mg_free(v->s);
  for (size_t i = 0; i < v->n; i++) {
    if (v->keys) mg_free(v->keys[i]);
    mg_conf_val_free(v->v[i]);
  }
  mg_free(v->keys);
  mg_free(v->v);
  mg_free(v);
}

mg_conf_val_t *mg_conf_val_new(mg_conf_val_type_t type, const char *s, uint32_t line) {
  mg_conf_val_t *v = mg_calloc(1, sizeof *v);
  if (!v) return NULL;
  v->type = type;
  v->line = line;
  if (type == MG_CONF_VAL_SCALAR && mg_conf_set_str(&v->s, s ? s : "") != 0) {
    mg_free(v);
    return NULL;
  }
  return v;
}

static int val_grow(mg_conf_val_t *v) {
  if (v->n < v->cap) return 0;
  size_t cap = v->cap ? v->cap * 2 : 4;
  mg_conf_val_t **nv = mg_realloc(v->v, cap * sizeof *nv);
  if (!nv) return MG_ENOMEM;
  v->v = nv;
  if (v->type == MG_CONF_VAL_MAP) {
    char **nk = mg_realloc(v->keys, cap * sizeof *nk);
    if (!nk) return MG_ENOMEM;
    v->keys = nk;
  }
  v->cap = cap;
  return 0;
}

int mg_conf_val_push(mg_conf_val_t *list, mg_conf_val_t *item) {
  if (list->type != MG_CONF_VAL_LIST || val_grow(list) != 0) {
    mg_conf_val_free(item);
    return list->type != MG_CONF_VAL_LIST ? MG_EINVAL : MG_ENOMEM;
  }
  list->v[list->n++] = item;
  return 0;
}

int mg_conf_val_put(mg_conf_val_t *map, const char *key, mg_conf_val_t *item) {
  char *k = NULL;
  if (map->type != MG_CONF_VAL_MAP || val_grow(map) != 0 || mg_conf_set_str(&k, key) != 0) {
    mg_conf_val_free(item);
    return map->type != MG_CONF_VAL_MAP ? MG_EINVAL : MG_ENOMEM;
  }
  map->keys[map->n] = k;
  map->v[map->n++] = item;
  return 0;
}

const mg_conf_val_t *mg_conf_val_get(const mg_conf_val_t *map, const char *key) {
  if (!map || map->type != MG_CONF_VAL_MAP) return NULL;
  for (size_t i = map->n; i-- > 0;)
    if (strcmp(map->keys[i], key) == 0) return map->v[i];
  return NULL;
}

const char *mg_conf_val_str(const mg_conf_val_t *map, const char *key) {
  const mg_conf_val_t *v = mg_conf_val_get(map, key);
  return v && v->type == MG_CONF_VAL_SCALAR ? v->s : NULL;
}

bool mg_conf_val_equal(const mg_conf_val_t *a, const mg_conf_val_t *b) {
  if (!a || !b) return a == b;
  if (a->type != b->type || a->n != b->n) return false;
  if (a->type == MG_CONF_VAL_SCALAR) return strcmp(a->s, b->s) == 0;
  for (size_t i = 0; i < a->n; i++) {
    if (a->type == MG_CONF_VAL_MAP && strcmp(a->keys[i], b->keys[i]) != 0) return false;
    if (!mg_conf_val_equal(a->v[i], b->v[i])) return false;
  }
  return true;
}

mg_conf_sd_t *mg_conf_job_add_sd(mg_conf_job_t *j, const char *kind) {
  if (j->nsds == j->sds_cap) {
    size_t cap = j->sds_cap ? j->sds_cap * 2 : 2;
    mg_conf_sd_t **n = mg_realloc(j->sds, cap * sizeof *n);
    if (!n) return NULL;
    j->sds = n;
    j->sds_cap = cap;
  }
  mg_conf_sd_t *sd = mg_calloc(1, sizeof *sd);
  if (!sd) return NULL;
  sd->lua_ref = -1;
  sd->opts = mg_conf_val_new(MG_CONF_VAL_MAP, NULL, 0);
  if (!sd->opts || mg_conf_set_str(&sd->kind, kind) != 0) {
    mg_conf_val_free(sd->opts);
    mg_free(sd);
    return NULL;
  }
  j->sds[j->nsds++] = sd;
  return sd;
}

static void job_free(mg_conf_job_t *j) {
  if (!j) return;
  for (size_t i = 0; i < j->nsds; i++) {
    mg_free(j->sds[i]->kind);
    mg_conf_val_free(j->sds[i]->opts);
    mg_free(j->sds[i]);
  }
  mg_free(j->sds);
  mg_free(j->name);
  mg_free(j->scheme);
  mg_free(j->metrics_path);
  mg_kvs_cleanup(&j->params);
  auth_cleanup(&j->auth);
  tls_cleanup(&j->tls);
  relabels_cleanup(&j->relabel_configs);
  relabels_cleanup(&j->metric_relabel_configs);
  for (size_t i = 0; i < j->ntargets; i++) {
    mg_free(j->targets[i]->address);
    mg_kvs_cleanup(&j->targets[i]->labels);
    mg_free(j->targets[i]);
  }
  mg_free(j->targets);
  mg_free(j);
}

static void dest_free(mg_conf_dest_t *d) {
  if (!d) return;
  mg_free(d->name);
  mg_free(d->url);
  mg_free(d->path);
  kvs_cleanup_secret(&d->headers);
  auth_cleanup(&d->auth);
  tls_cleanup(&d->tls);
  mg_free(d->sigv4.region);
  mg_free(d->sigv4.service);
  creds_cleanup(&d->sigv4.creds);
  relabels_cleanup(&d->write_relabel_configs);
  mg_free(d);
}

mg_conf_t *mg_conf_new(const char *path, mg_conf_source_t source) {
  mg_conf_t *c = mg_calloc(1, sizeof(*c));
  if (!c) return NULL;
  c->source = source;
  if (mg_conf_set_str(&c->path, path) < 0) {
    mg_free(c);
    return NULL;
  }
  return c;
}

void mg_conf_free(mg_conf_t *c) {
  if (!c) return;
  for (size_t i = 0; i < c->njobs; i++) job_free(c->jobs[i]);
  mg_free(c->jobs);
  for (size_t i = 0; i < c->ndests; i++) dest_free(c->dests[i]);
  mg_free(c->dests);
  mg_kvs_cleanup(&c->external_labels);
  mg_free(c->path);
  mg_free(c);
}

mg_conf_job_t *mg_conf_add_job(mg_conf_t *c, const char *name) {
  assert(!c->frozen);
  if (grow_ptrs((void ***)&c->jobs, c->njobs, &c->jobs_cap) < 0) return NULL;
  mg_conf_job_t *j = mg_calloc(1, sizeof(*j));
  if (!j) return NULL;
  /* Booleans whose Prometheus default is true are set here, because a
   * false written by the loader must survive mg_conf_finish. */
  j->honor_timestamps = true;
  j->enable_compression = true;
  if (mg_conf_set_str(&j->name, name) < 0) {
    mg_free(j);
    return NULL;
  }
  c->jobs[c->njobs++] = j;
  return j;
}

mg_conf_target_t *mg_conf_job_add_target(mg_conf_job_t *j, const char *address) {
  if (grow_ptrs((void ***)&j->targets, j->ntargets, &j->targets_cap) < 0) return NULL;
  mg_conf_target_t *t = mg_calloc(1, sizeof(*t));
  if (!t) return NULL;
  if (mg_conf_set_str(&t->address, address) < 0) {
    mg_free(t);
    return NULL;
  }
  j->targets[j->ntargets++] = t;
  return t;
}

mg_conf_dest_t *mg_conf_add_dest(mg_conf_t *c, const char *name, mg_dest_kind_t kind) {
  assert(!c->frozen);
  if (grow_ptrs((void ***)&c->dests, c->ndests, &c->dests_cap) < 0) return NULL;
  mg_conf_dest_t *d = mg_calloc(1, sizeof(*d));
  if (!d) return NULL;
  d->kind = kind;
  d->queue.retry_on_http_429 = true;
  d->send_metadata = true;
  if (mg_conf_set_str(&d->name, name) < 0) {
    mg_free(d);
    return NULL;
  }
  c->dests[c->ndests++] = d;
  return d;
}

/* ---- durations and sizes ----------------------------------------------- */

/* Prometheus durations (common/model.ParseDuration): each unit at most once,
 * in descending order; "0" alone needs no unit. The total must fit Go's
 * time.Duration (int64 nanoseconds), so the same strings fail in both. */
#define MS_MAX ((uint64_t)INT64_MAX / 1000000u)

static const struct {
  const char *unit;
  uint64_t ms;
} dur_units[] = {
    {"y", 365ull * 24 * 3600 * 1000}, {"w", 7ull * 24 * 3600 * 1000}, {"d", 24ull * 3600 * 1000},
    {"h", 3600ull * 1000},            {"m", 60ull * 1000},            {"s", 1000},
    {"ms", 1},
};
#define NDUR (sizeof(dur_units) / sizeof(dur_units[0]))

int mg_conf_parse_duration(const char *s, uint64_t *ms) {
  if (!s || !*s) return MG_EINVAL;
  if (strcmp(s, "0") == 0) {
    *ms = 0;
    return 0;
  }
  uint64_t total = 0;
  size_t next = 0; /* first unit still allowed */
  while (*s) {
    if (*s < '0' || *s > '9') return MG_EINVAL;
    uint64_t n = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
      if (n > (MS_MAX - (uint64_t)(*s - '0')) / 10) return MG_EINVAL;
      n = n * 10 + (uint64_t)(*s - '0');
    }
    size_t u = next;
    for (; u < NDUR; u++) {
      size_t ul = strlen(dur_units[u].unit);
      /* "m" must not swallow the "m" of "ms". */
      if (strncmp(s, dur_units[u].unit, ul) == 0 && !(ul == 1 && s[0] == 'm' && s[1] == 's')) break;
    }
    if (u == NDUR) return MG_EINVAL;
    if (n > MS_MAX / dur_units[u].ms) return MG_EINVAL;
    n *= dur_units[u].ms;
    if (total > MS_MAX - n) return MG_EINVAL;
    total += n;
    s += strlen(dur_units[u].unit);
    next = u + 1;
  }
  *ms = total;
  return 0;
}

char *mg_conf_format_duration(uint64_t ms, char *out, size_t outsz) {
  if (!outsz) return out;
  out[0] = '\0';
  if (ms == 0) {
    snprintf(out, outsz, "0s");
    return out;
  }
  size_t len = 0;
  for (size_t u = 0; u < NDUR && ms; u++) {
    /* Like Prometheus: years and weeks only when exact ("90d", not "12w6d"). */
    if (u < 2 && ms % dur_units[u].ms) continue;
    uint64_t v = ms / dur_units[u].ms;
    if (!v) continue;
    int w = snprintf(out + len, outsz - len, "%" PRIu64 "%s", v, dur_units[u].unit);
    if (w < 0 || (size_t)w >= outsz - len) { /* keep whole terms only */
      out[len] = '\0';
      break;
    }
    len += (size_t)w;
    ms -= v * dur_units[u].ms;
  }
  return out;
}

/* Byte sizes as Prometheus's body_size_limit (alecthomas/units
 * ParseBase2Bytes): "KB" and "KiB" both mean 1024, "MB" and "MiB" 1024^2
 * and so on; lowercase "kB" is refused; terms may be repeated ("1GB512MB")
 * and carry a fraction ("1.5MB"). moongate also accepts a bare integer as a
 * byte count, which Prometheus refuses. */
static const struct {
  const char *unit;
  unsigned shift;
} byte_units[] = {
    {"B", 0},    {"KB", 10},  {"KiB", 10}, {"MB", 20},  {"MiB", 20}, {"GB", 30}, {"GiB", 30},
    {"TB", 40},  {"TiB", 40}, {"PB", 50},  {"PiB", 50}, {"EB", 60},  {"EiB", 60},
};

int mg_conf_parse_bytes(const char *s, uint64_t *bytes) {
  if (!s || !*s) return MG_EINVAL;
  const char *p = s;
  while (*p >= '0' && *p <= '9') p++;
  if (!*p) { /* bare integer */
    uint64_t n = 0;
    for (p = s; *p; p++) {
      if (n > ((uint64_t)INT64_MAX - (uint64_t)(*p - '0')) / 10) return MG_EINVAL;
      n = n * 10 + (uint64_t)(*p - '0');
    }
    *bytes = n;
    return 0;
  }
  double total = 0;
  p = s;
  while (*p) {
    if (!(*p == '.' || (*p >= '0' && *p <= '9'))) return MG_EINVAL;
    double v = 0, scale = 1;
    bool digits = false;
    for (; *p >= '0' && *p <= '9'; p++, digits = true) v = v * 10 + (*p - '0');
    if (*p == '.') {
      for (p++; *p >= '0' && *p <= '9'; p++, digits = true) {
        scale /= 10;
        v += (*p - '0') * scale;
      }
    }
    if (!digits) return MG_EINVAL;
    size_t ul = 0;
    while (p[ul] && p[ul] != '.' && !(p[ul] >= '0' && p[ul] <= '9')) ul++;
    size_t u = 0;
    for (; u < sizeof(byte_units) / sizeof(byte_units[0]); u++)
      if (strlen(byte_units[u].unit) == ul && strncmp(p, byte_units[u].unit, ul) == 0) break;
    if (u == sizeof(byte_units) / sizeof(byte_units[0])) return MG_EINVAL;
    total += v * (double)(1ull << byte_units[u].shift);
    if (total >= 9223372036854775807.0) return MG_EINVAL;
    p += ul;
  }
  *bytes = (uint64_t)total;
  return 0;
}

/* ---- checks ------------------------------------------------------------ */

typedef struct check {
  mg_conf_t *c;
  mg_conf_error_t *err;
  mg_conf_at_t at;
  size_t index;
  char where[MG_CONF_MAX_NAME + 32]; /* `job "node": ` */
} check_t;

__attribute__((format(printf, 2, 3))) static int fail(check_t *k, const char *fmt, ...) {
  if (!k->err) return MG_ECONFIG;
  mg_conf_error_t *e = k->err;
  snprintf(e->file, sizeof(e->file), "%s", k->c->path ? k->c->path : "");
  e->line = 0;
  int n = snprintf(e->msg, sizeof(e->msg), "%s", k->where);
  if (n < 0 || (size_t)n >= sizeof(e->msg)) return MG_ECONFIG;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg + n, sizeof(e->msg) - (size_t)n, fmt, ap);
  va_end(ap);
  /* Quoted addresses and names may hold control bytes; keep one line. */
  for (char *m = e->msg; *m; m++)
    if ((unsigned char)*m < 0x20 || *m == 0x7f) *m = '?';
  return MG_ECONFIG;
}

static bool valid_label_name(const char *s) {
  if (!s || !((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_')) return false;
  for (s++; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_'))
      return false;
  return true;
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF),
 * as Prometheus requires of label values. */
static bool valid_utf8(const char *str) {
  const unsigned char *s = (const unsigned char *)str;
  while (*s) {
    unsigned c = *s, need, min;
    if (c < 0x80) {
      s++;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      need = 1, min = 0x80, c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      need = 2, min = 0x800, c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      need = 3, min = 0x10000, c &= 0x07;
    } else {
      return false;
    }
    s++;
    for (unsigned i = 0; i < need; i++, s++) {
      if ((*s & 0xC0) != 0x80) return false;
      c = (c << 6) | (*s & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return false;
  }
  return true;
}

static bool has_ctl(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) return true;
  return false;
}

/* RFC 9110 token characters (header names, auth scheme). */
static bool valid_token(const char *s) {
  if (!s || !*s) return false;
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch <= 0x20 || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch)) return false;
  }
  return true;
}

static bool valid_port(const char *p, size_t n) {
  if (n == 0 || n > 5) return false;
  unsigned v = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return false;
    v = v * 10 + (unsigned)(p[i] - '0');
  }
  return v >= 1 && v <= 65535;
}

/* host[:port] with IPv6 in brackets. Host names are letters, digits, '-',
 * '_' and '.', so "user@host", paths and stray colons are caught here. */
static const char *check_hostport(const char *s, size_t n, bool port_required) {
  size_t hostend, portstart;
  if (n && s[0] == '[') {
    const char *close = memchr(s, ']', n);
    if (!close || close == s + 1) return "IPv6 address needs a closing ']'";
    for (const char *q = s + 1; q < close; q++)
      if (!((*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'f') || (*q >= 'A' && *q <= 'F') || *q == ':' ||
            *q == '.'))
        return "bad character in IPv6 address";
    hostend = (size_t)(close - s) + 1;
    if (hostend < n && s[hostend] != ':') return "expected ':' after ']'";
  } else {
    hostend = 0;
    while (hostend < n && s[hostend] != ':') hostend++;
    if (hostend == 0) return "missing host";
    for (size_t i = 0; i < hostend; i++) {
      char ch = s[i];
      if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
            ch == '_' || ch == '.'))
        return "bad character in host";
    }
  }
  if (hostend == n) return port_required ? "missing port" : NULL;
  portstart = hostend + 1;
  if (memchr(s + portstart, ':', n - portstart))
    return "too many ':' (write IPv6 addresses in brackets: [::1]:9100)";
  if (!valid_port(s + portstart, n - portstart)) return "port must be a number from 1 to 65535";
  return NULL;
}

/* Open-addressing set of item indices keyed by hash, so finding duplicate
 * job names or targets is O(n) rather than comparing all pairs (a job may
 * have 100k targets). */
typedef struct seen {
  size_t *idx; /* SIZE_MAX = empty */
  uint64_t *hash;
  size_t mask;
} seen_t;

static int seen_init(seen_t *s, size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap *= 2;
  s->idx = mg_mallocarray(cap, sizeof(*s->idx));
  s->hash = mg_mallocarray(cap, sizeof(*s->hash));
  s->mask = cap - 1;
  if (!s->idx || !s->hash) return MG_ENOMEM;
  for (size_t i = 0; i < cap; i++) s->idx[i] = SIZE_MAX;
  return 0;
}

static void seen_cleanup(seen_t *s) {
  mg_free(s->idx);
  mg_free(s->hash);
}

/* Index of an earlier item equal to item i, or SIZE_MAX after recording i.
 * The caller sized the set for every item it adds. */
static size_t seen_add(seen_t *s, uint64_t h, size_t i, bool (*eq)(const void *, size_t, size_t), const void *ctx) {
  size_t pos = (size_t)h & s->mask;
  for (; s->idx[pos] != SIZE_MAX; pos = (pos + 1) & s->mask)
    if (s->hash[pos] == h && eq(ctx, s->idx[pos], i)) return s->idx[pos];
  s->idx[pos] = i;
  s->hash[pos] = h;
  return SIZE_MAX;
}

static uint64_t hash_str(const char *str) { return mg_hash64(str, strlen(str), 0); }

/* Targets are the same when address and label set match (Prometheus merges
 * such repeats; the same address with other labels is another target). */
static uint64_t target_hash(const mg_conf_target_t *t) {
  uint64_t h = hash_str(t->address), sum = 0;
  for (size_t i = 0; i < t->labels.n; i++) /* order-independent */
    sum += mg_hash64(t->labels.v[i].name, strlen(t->labels.v[i].name), hash_str(t->labels.v[i].value));
  return h ^ (sum * 0x9E3779B97F4A7C15ull);
}

static bool target_eq(const void *ctx, size_t a, size_t b) {
  const mg_conf_job_t *j = ctx;
  const mg_conf_target_t *ta = j->targets[a], *tb = j->targets[b];
  if (strcmp(ta->address, tb->address) != 0 || ta->labels.n != tb->labels.n) return false;
  for (size_t i = 0; i < ta->labels.n; i++) {
    const char *v = mg_kvs_get(&tb->labels, ta->labels.v[i].name);
    if (!v || strcmp(v, ta->labels.v[i].value) != 0) return false;
  }
  return true;
}

static bool job_name_eq(const void *ctx, size_t a, size_t b) {
  const mg_conf_t *c = ctx;
  return strcmp(c->jobs[a]->name, c->jobs[b]->name) == 0;
}

static int check_address(check_t *k, const char *a) {
  if (!a || !*a) return fail(k, "target address is empty");
  if (strstr(a, "://"))
    return fail(k, "target \"%.128s\": give host:port without a scheme (set scheme: https instead)", a);
  if (strchr(a, '/'))
    return fail(k, "target \"%.128s\": give host:port without a path (set metrics_path instead)", a);
  const char *why = check_hostport(a, strlen(a), true);
  if (why) return fail(k, "target \"%.128s\": not host:port: %s", a, why);
  return 0;
}

/* http(s)://host[:port][/path][?query]. Userinfo is refused: it would be a
 * credential inside a string that gets printed and logged. The message
 * never echoes the URL for the same reason. */
static int check_url(check_t *k, const char *field, const char *url) {
  if (!url || !*url) return fail(k, "%s is missing", field);
  if (has_ctl(url) || strchr(url, ' ')) return fail(k, "%s contains spaces or control characters", field);
  const char *rest;
  if (strncmp(url, "http://", 7) == 0)
    rest = url + 7;
  else if (strncmp(url, "https://", 8) == 0)
    rest = url + 8;
  else
    return fail(k, "%s must start with http:// or https://", field);
  size_t auth = strcspn(rest, "/?#");
  if (memchr(rest, '@', auth)) return fail(k, "%s must not contain user:password@ (use basic_auth)", field);
  const char *why = check_hostport(rest, auth, false);
  if (why) return fail(k, "%s: bad host: %s", field, why);
  return 0;
}

static int check_labels(check_t *k, const char *what, const mg_kvs_t *kvs) {
  if (kvs->n > MG_CONF_MAX_LABELS)
    return fail(k, "%s: %zu labels, more than the maximum %d", what, kvs->n, MG_CONF_MAX_LABELS);
  for (size_t i = 0; i < kvs->n; i++) {
    if (!valid_label_name(kvs->v[i].name))
      return fail(k, "%s: invalid label name \"%.128s\" (must match [a-zA-Z_][a-zA-Z0-9_]*)", what, kvs->v[i].name);
    if (!valid_utf8(kvs->v[i].value))
      return fail(k, "%s: value of label \"%s\" is not valid UTF-8", what, kvs->v[i].name);
    for (size_t j = 0; j < i; j++)
      if (strcmp(kvs->v[i].name, kvs->v[j].name) == 0)
        return fail(k, "%s: label \"%s\" given twice", what, kvs->v[i].name);
  }
  return 0;
}

static int check_auth(check_t *k, mg_conf_auth_t *a) {
  bool basic = a->basic_username || a->basic_password || a->basic_password_file;
  bool authz = a->auth_type || a->credentials || a->credentials_file;
  if (basic && authz) return fail(k, "at most one of basic_auth and authorization may be set");
  if (a->basic_password && a->basic_password_file)
    return fail(k, "basic_auth: at most one of password and password_file may be set");
  if (a->credentials && a->credentials_file)
    return fail(k, "authorization: at most one of credentials and credentials_file may be set");
  /* A CR or LF would let a value inject headers into every request. */
  if (a->basic_username && has_ctl(a->basic_username))
    return fail(k, "basic_auth: username contains control characters");
  if (a->basic_password && has_ctl(a->basic_password))
    return fail(k, "basic_auth: password contains control characters");
  if (a->credentials && has_ctl(a->credentials))
    return fail(k, "authorization: credentials contain control characters");
  if (authz && !a->auth_type && mg_conf_set_str(&a->auth_type, "Bearer") < 0) return MG_ENOMEM;
  if (a->auth_type) {
    if (!valid_token(a->auth_type)) return fail(k, "authorization: type must be one word, like Bearer");
    if (strcasecmp(a->auth_type, "basic") == 0)
      return fail(k, "authorization: type cannot be \"Basic\", use basic_auth instead");
  }
  return 0;
}

static int check_tls(check_t *k, const mg_conf_tls_t *t) {
  if (t->cert_file && !t->key_file) return fail(k, "tls_config: cert_file given without key_file");
  if (t->key_file && !t->cert_file) return fail(k, "tls_config: key_file given without cert_file");
  if (t->server_name && (has_ctl(t->server_name) || !*t->server_name))
    return fail(k, "tls_config: server_name is empty or has control characters");
  return 0;
}

static int check_job(check_t *k, mg_conf_job_t *j) {
  mg_conf_t *c = k->c;
  char a[32], b[32];
  if (j->ntargets > MG_CONF_MAX_TARGETS)
    return fail(k, "%zu targets, more than the maximum %d", j->ntargets, MG_CONF_MAX_TARGETS);
  /* Prometheus 2.42 order: inherit the interval, compare an explicit
   * timeout with it, then inherit the timeout capped at the interval. */
  if (!j->interval_ms) j->interval_ms = c->scrape_interval_ms;
  if (j->timeout_ms > j->interval_ms)
    return fail(k, "scrape_timeout (%s) greater than scrape_interval (%s)",
                mg_conf_format_duration(j->timeout_ms, a, sizeof(a)),
                mg_conf_format_duration(j->interval_ms, b, sizeof(b)));
  if (!j->timeout_ms)
    j->timeout_ms = c->scrape_timeout_ms > j->interval_ms ? j->interval_ms : c->scrape_timeout_ms;
  if (!j->scheme && mg_conf_set_str(&j->scheme, "http") < 0) return MG_ENOMEM;
  if (strcmp(j->scheme, "http") != 0 && strcmp(j->scheme, "https") != 0)
    return fail(k, "scheme \"%.32s\" is not http or https", j->scheme);
  if (!j->metrics_path && mg_conf_set_str(&j->metrics_path, "/metrics") < 0) return MG_ENOMEM;
  if (j->metrics_path[0] != '/' || has_ctl(j->metrics_path) || strpbrk(j->metrics_path, " ?#"))
    return fail(k, "metrics_path \"%.128s\" must start with '/' and hold no spaces, '?' or '#' (use params)",
                j->metrics_path);
  if (j->params.n > MG_CONF_MAX_LABELS)
    return fail(k, "params: %zu entries, more than the maximum %d", j->params.n, MG_CONF_MAX_LABELS);
  for (size_t i = 0; i < j->params.n; i++)
    if (!*j->params.v[i].name || has_ctl(j->params.v[i].name) || has_ctl(j->params.v[i].value))
      return fail(k, "params: empty name or control characters");
  int rc = check_auth(k, &j->auth);
  if (rc < 0) return rc;
  if ((rc = check_tls(k, &j->tls)) < 0) return rc;
  seen_t seen;
  if (seen_init(&seen, j->ntargets) < 0) {
    seen_cleanup(&seen);
    return MG_ENOMEM;
  }
  for (size_t i = 0; i < j->ntargets && rc == 0; i++) {
    const mg_conf_target_t *t = j->targets[i];
    char what[160];
    snprintf(what, sizeof(what), "target \"%.128s\"", t->address);
    if ((rc = check_address(k, t->address)) < 0 || (rc = check_labels(k, what, &t->labels)) < 0) break;
    if (seen_add(&seen, target_hash(t), i, target_eq, j) != SIZE_MAX)
      rc = fail(k, "target \"%.128s\" listed twice with the same labels", t->address);
  }
  seen_cleanup(&seen);
  return rc;
}

/* Headers a destination may not set: the transport owns them (Prometheus's
 * reserved list, plus the SigV4 ones moongate signs). */
static const char *const reserved_headers[] = {
    "host", "content-encoding", "content-length", "content-type", "user-agent", "connection",
    "keep-alive", "proxy-authenticate", "proxy-authorization", "www-authenticate", "accept-encoding",
    "x-prometheus-remote-write-version", "x-prometheus-remote-read-version", "x-amz-date",
    "x-amz-security-token", "x-amz-content-sha256", "transfer-encoding", "te", "trailer", "upgrade",
};

static int check_dest(check_t *k, mg_conf_dest_t *d) {
  int rc;
  switch (d->kind) {
  case MG_DEST_REMOTE_WRITE:
    if ((rc = check_url(k, "url", d->url)) < 0) return rc;
    break;
  case MG_DEST_FILE:
    if (!d->path || !*d->path) return fail(k, "path is missing");
    break;
  case MG_DEST_STDOUT:
    break;
  }
  if (d->headers.n > MG_CONF_MAX_LABELS)
    return fail(k, "headers: %zu entries, more than the maximum %d", d->headers.n, MG_CONF_MAX_LABELS);
  for (size_t i = 0; i < d->headers.n; i++) {
    const char *h = d->headers.v[i].name;
    if (!valid_token(h)) return fail(k, "headers: invalid header name \"%.64s\"", h);
    if (strcasecmp(h, "authorization") == 0)
      return fail(k, "headers: set Authorization through basic_auth or authorization");
    for (size_t r = 0; r < sizeof(reserved_headers) / sizeof(reserved_headers[0]); r++)
      if (strcasecmp(h, reserved_headers[r]) == 0)
        return fail(k, "headers: %s is a reserved header and must not be changed", h);
    if (has_ctl(d->headers.v[i].value)) return fail(k, "headers: value of %s has control characters", h);
    for (size_t p = 0; p < i; p++)
      if (strcasecmp(d->headers.v[p].name, h) == 0) return fail(k, "headers: %s given twice", h);
  }
  if ((rc = check_auth(k, &d->auth)) < 0) return rc;
  if (d->sigv4.enabled) {
    /* SigV4 writes the Authorization header itself (as in Prometheus). */
    const mg_conf_auth_t *a = &d->auth;
    if (a->basic_username || a->basic_password || a->basic_password_file || a->auth_type || a->credentials ||
        a->credentials_file)
      return fail(k, "at most one of basic_auth, authorization and sigv4 may be set");
    if (!d->sigv4.service && mg_conf_set_str(&d->sigv4.service, "aps") < 0) return MG_ENOMEM;
  }
  if ((rc = check_tls(k, &d->tls)) < 0) return rc;
  if (!d->remote_timeout_ms) d->remote_timeout_ms = 30000;
  mg_conf_queue_t *q = &d->queue;
  /* Prometheus 2.42 defaults, except max_samples_per_send: Prometheus uses
   * 500; moongate sends 2000 per request because fewer, larger requests
   * cost less per sample (and newer Prometheus versions chose 2000 too). */
  if (!q->capacity) q->capacity = 2500;
  if (!q->max_shards) q->max_shards = 50;
  if (!q->min_shards) q->min_shards = 1;
  if (!q->max_samples_per_send) q->max_samples_per_send = 2000;
  if (!q->batch_send_deadline_ms) q->batch_send_deadline_ms = 5000;
  if (!q->min_backoff_ms) q->min_backoff_ms = 30;
  if (!q->max_backoff_ms) q->max_backoff_ms = 5000;
  if (q->max_shards > 1024) return fail(k, "queue_config: max_shards (%" PRIu32 ") over 1024", q->max_shards);
  if (q->min_shards > q->max_shards)
    return fail(k, "queue_config: min_shards (%" PRIu32 ") greater than max_shards (%" PRIu32 ")", q->min_shards,
                q->max_shards);
  if (q->min_backoff_ms > q->max_backoff_ms) {
    char a[32], b[32];
    return fail(k, "queue_config: min_backoff (%s) greater than max_backoff (%s)",
                mg_conf_format_duration(q->min_backoff_ms, a, sizeof(a)),
                mg_conf_format_duration(q->max_backoff_ms, b, sizeof(b)));
  }
  if (!d->metadata_send_interval_ms) d->metadata_send_interval_ms = 60000;
  if (!d->buffer.max_bytes) d->buffer.max_bytes = 1ull << 30;
  if (d->buffer.max_bytes < (1u << 20))
    return fail(k, "buffer: max_size must be at least 1MiB (it holds whole batches)");
  return 0;
}

static const char *dest_kind_name(mg_dest_kind_t kind) {
  switch (kind) {
  case MG_DEST_REMOTE_WRITE: return "remote_write";
  case MG_DEST_STDOUT: return "stdout";
  case MG_DEST_FILE: return "file";
  }
  return "unknown";
}

static bool valid_name(const char *s) { return *s && strlen(s) <= MG_CONF_MAX_NAME && !has_ctl(s) && valid_utf8(s); }

int mg_conf_finish_at(mg_conf_t *c, mg_conf_error_t *err, mg_conf_at_t *at, size_t *index) {
  check_t k = {.c = c, .err = err, .at = MG_CONF_AT_GLOBAL};
  char a[32], b[32];
  int rc = 0;
  if (c->frozen) return 0;
  if (!c->scrape_interval_ms) c->scrape_interval_ms = 60000;
  if (c->scrape_timeout_ms > c->scrape_interval_ms) {
    rc = fail(&k, "global: scrape_timeout (%s) greater than scrape_interval (%s)",
              mg_conf_format_duration(c->scrape_timeout_ms, a, sizeof(a)),
              mg_conf_format_duration(c->scrape_interval_ms, b, sizeof(b)));
    goto out;
  }
  if (!c->scrape_timeout_ms) c->scrape_timeout_ms = c->scrape_interval_ms < 10000 ? c->scrape_interval_ms : 10000;
  if ((rc = check_labels(&k, "global: external_labels", &c->external_labels)) < 0) goto out;
  if (c->njobs > MG_CONF_MAX_JOBS) {
    rc = fail(&k, "%zu scrape jobs, more than the maximum %d", c->njobs, MG_CONF_MAX_JOBS);
    goto out;
  }
  if (c->ndests > MG_CONF_MAX_DESTS) {
    rc = fail(&k, "%zu destinations, more than the maximum %d", c->ndests, MG_CONF_MAX_DESTS);
    goto out;
  }
  seen_t jobs_seen;
  if ((rc = seen_init(&jobs_seen, c->njobs)) == 0) {
    for (size_t i = 0; i < c->njobs && rc == 0; i++) {
      mg_conf_job_t *j = c->jobs[i];
      k.at = MG_CONF_AT_JOB;
      k.index = i;
      if (!j->name || !valid_name(j->name)) {
        snprintf(k.where, sizeof(k.where), "job #%zu: ", i + 1);
        rc = fail(&k, "job_name is missing, too long or not printable UTF-8");
        break;
      }
      snprintf(k.where, sizeof(k.where), "job \"%s\": ", j->name);
      if (seen_add(&jobs_seen, hash_str(j->name), i, job_name_eq, c) != SIZE_MAX)
        rc = fail(&k, "job_name used by more than one scrape job");
      else
        rc = check_job(&k, j);
    }
  }
  seen_cleanup(&jobs_seen);
  if (rc < 0) goto out;
  if (c->ndests == 0) {
    k.at = MG_CONF_AT_GLOBAL;
    k.where[0] = '\0';
    rc = fail(&k, "no destination: add a remote_write entry");
    goto out;
  }
  for (size_t i = 0; i < c->ndests; i++) {
    mg_conf_dest_t *d = c->dests[i];
    k.at = MG_CONF_AT_DEST;
    k.index = i;
    if (!d->name) {
      /* Prometheus names unnamed queues by a config hash; a position is
       * easier to find in logs and metrics. */
      char auto_name[32];
      snprintf(auto_name, sizeof(auto_name), "%s-%zu", d->kind == MG_DEST_REMOTE_WRITE ? "rw" : dest_kind_name(d->kind),
               i);
      if (mg_conf_set_str(&d->name, auto_name) < 0) {
        rc = MG_ENOMEM;
        goto out;
      }
    }
    if (!valid_name(d->name)) {
      snprintf(k.where, sizeof(k.where), "destination #%zu: ", i + 1);
      rc = fail(&k, "name is empty, too long or not printable UTF-8");
      goto out;
    }
    snprintf(k.where, sizeof(k.where), "destination \"%s\": ", d->name);
    for (size_t p = 0; p < i; p++)
      if (strcmp(c->dests[p]->name, d->name) == 0) {
        rc = fail(&k, "name used by more than one destination");
        goto out;
      }
    if ((rc = check_dest(&k, d)) < 0) goto out;
  }
  c->frozen = true;
out:
  if (rc == MG_ENOMEM && err) {
    snprintf(err->file, sizeof(err->file), "%s", c->path ? c->path : "");
    err->line = 0;
    snprintf(err->msg, sizeof(err->msg), "out of memory");
  }
  if (at) *at = k.at;
  if (index) *index = k.index;
  return rc;
}

int mg_conf_finish(mg_conf_t *c, mg_conf_error_t *err) { return mg_conf_finish_at(c, err, NULL, NULL); }

/* ---- printing ---------------------------------------------------------- */

/* Quoted, with control bytes escaped, so odd names cannot forge lines. */
static void pq(FILE *out, const char *s) {
  fputc('"', out);
  for (; s && *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(out, "\\%c", ch);
    else if (ch < 0x20 || ch == 0x7f)
      fprintf(out, "\\x%02x", ch);
    else
      fputc(ch, out);
  }
  fputc('"', out);
}

static void print_labels(FILE *out, const mg_kvs_t *kvs) {
  fputc('{', out);
  for (size_t i = 0; i < kvs->n; i++) {
    fprintf(out, "%s%s=", i ? ", " : "", kvs->v[i].name);
    pq(out, kvs->v[i].value);
  }
  fputc('}', out);
}

static void print_auth(FILE *out, const mg_conf_auth_t *a) {
  if (a->basic_username || a->basic_password || a->basic_password_file) {
    fprintf(out, "    basic_auth: username=");
    pq(out, a->basic_username);
    if (a->basic_password) fprintf(out, " password=<secret>");
    if (a->basic_password_file) {
      fprintf(out, " password_file=");
      pq(out, a->basic_password_file);
    }
    fputc('\n', out);
  }
  if (a->auth_type || a->credentials || a->credentials_file) {
    fprintf(out, "    authorization: type=");
    pq(out, a->auth_type);
    if (a->credentials) fprintf(out, " credentials=<secret>");
    if (a->credentials_file) {
      fprintf(out, " credentials_file=");
      pq(out, a->credentials_file);
    }
    fputc('\n', out);
  }
}

static const char *creds_kind_name(mg_creds_kind_t kind) {
  switch (kind) {
  case MG_CREDS_CHAIN: return "chain";
  case MG_CREDS_STATIC: return "static";
  case MG_CREDS_ENV: return "env";
  case MG_CREDS_PROFILE: return "profile";
  case MG_CREDS_IMDS: return "imds";
  case MG_CREDS_ECS: return "ecs";
  case MG_CREDS_WEB_IDENTITY: return "web_identity";
  case MG_CREDS_PROCESS: return "process";
  case MG_CREDS_ASSUME_ROLE: return "assume_role";
  }
  return "unknown";
}

/* Credential sources: the access key id is masked (mg_log_mask), secret
 * keys and session tokens are never shown. Depth is bounded by the chain
 * of assume_role sources a loader built. */
static void print_creds(FILE *out, const mg_conf_creds_t *cr) {
  char masked[32];
  fprintf(out, " credentials=%s", creds_kind_name(cr->kind));
  if (cr->access_key_id) fprintf(out, " access_key_id=%s", mg_log_mask(masked, sizeof(masked), cr->access_key_id));
  if (cr->secret_access_key) fprintf(out, " secret_access_key=<secret>");
  if (cr->session_token) fprintf(out, " session_token=<secret>");
  const char *names[] = {"profile", "role_arn", "web_identity_token_file", "sts_region"};
  const char *vals[] = {cr->profile, cr->role_arn, cr->web_identity_token_file, cr->sts_region};
  for (size_t i = 0; i < 4; i++)
    if (vals[i]) {
      fprintf(out, " %s=", names[i]);
      pq(out, vals[i]);
    }
  if (cr->source) {
    fprintf(out, " source:");
    print_creds(out, cr->source);
  }
}

static void print_relabels(FILE *out, const char *what, const mg_conf_relabels_t *rs) {
  if (rs->n) fprintf(out, "    %s: %zu rule(s)\n", what, rs->n);
}

static void print_tls(FILE *out, const mg_conf_tls_t *t) {
  if (!t->ca_file && !t->cert_file && !t->key_file && !t->server_name && !t->insecure_skip_verify) return;
  fprintf(out, "    tls:");
  const char *names[] = {"ca_file", "cert_file", "key_file", "server_name"};
  const char *vals[] = {t->ca_file, t->cert_file, t->key_file, t->server_name};
  for (size_t i = 0; i < 4; i++)
    if (vals[i]) {
      fprintf(out, " %s=", names[i]);
      pq(out, vals[i]);
    }
  fprintf(out, " insecure_skip_verify=%s\n", t->insecure_skip_verify ? "true" : "false");
}

/* Option names whose values are secrets: tokens, passwords, secret keys,
 * credentials; "*_file" names hold paths, which are shown. */
static bool secret_key(const char *k) {
  size_t n = strlen(k);
  if (n >= 5 && strcmp(k + n - 5, "_file") == 0) return false;
  return strcasestr(k, "password") || strcasestr(k, "secret") || strcasestr(k, "token") ||
         strcasecmp(k, "credentials") == 0;
}

/* An option tree on one line, {name: value, ...} and [a, b]; values under
 * a secret name (at any depth below it) print as <secret>. */
static void print_val(FILE *out, const mg_conf_val_t *v, bool secret, int depth) {
  if (!v) return;
  if (v->type == MG_CONF_VAL_SCALAR) {
    if (secret) fprintf(out, "<secret>");
    else pq(out, v->s);
    return;
  }
  if (depth > 32) {
    fprintf(out, "...");
    return;
  }
  bool map = v->type == MG_CONF_VAL_MAP;
  fputc(map ? '{' : '[', out);
  for (size_t i = 0; i < v->n; i++) {
    if (i) fprintf(out, ", ");
    if (map && v->keys[i][strspn(v->keys[i], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")])
      pq(out, v->keys[i]), fprintf(out, ": ");
    else if (map)
      fprintf(out, "%s: ", v->keys[i]);
    print_val(out, v->v[i], secret || (map && secret_key(v->keys[i])), depth + 1);
  }
  fputc(map ? '}' : ']', out);
}

void mg_conf_print(const mg_conf_t *c, FILE *out) {
  char a[32], b[32];
  fprintf(out, "config ");
  pq(out, c->path);
  fprintf(out, " (%s)%s\n", c->source == MG_CONF_PROMYML ? "prometheus.yml" : "lua",
          c->frozen ? "" : " [not checked]");
  fprintf(out, "global: scrape_interval=%s scrape_timeout=%s external_labels=",
          mg_conf_format_duration(c->scrape_interval_ms, a, sizeof(a)),
          mg_conf_format_duration(c->scrape_timeout_ms, b, sizeof(b)));
  print_labels(out, &c->external_labels);
  fputc('\n', out);
  fprintf(out, "%zu scrape job(s)\n", c->njobs);
  for (size_t i = 0; i < c->njobs; i++) {
    const mg_conf_job_t *j = c->jobs[i];
    fprintf(out, "  job ");
    pq(out, j->name);
    fprintf(out, ": every %s, timeout %s, %s://<target>%s", mg_conf_format_duration(j->interval_ms, a, sizeof(a)),
            mg_conf_format_duration(j->timeout_ms, b, sizeof(b)), j->scheme ? j->scheme : "http",
            j->metrics_path ? j->metrics_path : "/metrics");
    for (size_t p = 0; p < j->params.n; p++)
      fprintf(out, "%c%s=%s", p ? '&' : '?', j->params.v[p].name, j->params.v[p].value);
    fputc('\n', out);
    fprintf(out, "    honor_labels=%s honor_timestamps=%s enable_compression=%s\n", j->honor_labels ? "true" : "false",
            j->honor_timestamps ? "true" : "false", j->enable_compression ? "true" : "false");
    fprintf(out, "    limits: body_size=");
    if (j->body_size_limit)
      fprintf(out, "%" PRIu64 "B", j->body_size_limit);
    else
      fprintf(out, "default");
    fprintf(out, " samples=%" PRIu64 " labels=%" PRIu64 " label_name_length=%" PRIu64 " label_value_length=%" PRIu64
                 " (0 = unlimited)\n",
            j->sample_limit, j->label_limit, j->label_name_length_limit, j->label_value_length_limit);
    print_auth(out, &j->auth);
    print_tls(out, &j->tls);
    print_relabels(out, "relabel_configs", &j->relabel_configs);
    print_relabels(out, "metric_relabel_configs", &j->metric_relabel_configs);
    fprintf(out, "    %zu target(s)\n", j->ntargets);
    for (size_t t = 0; t < j->ntargets; t++) {
      fprintf(out, "      %s ", j->targets[t]->address);
      print_labels(out, &j->targets[t]->labels);
      fputc('\n', out);
    }
    for (size_t s = 0; s < j->nsds; s++) {
      fprintf(out, "    discovery %s%s: ", j->sds[s]->kind, j->sds[s]->lua_ref >= 0 ? " (function targets)" : "");
      print_val(out, j->sds[s]->opts, false, 0);
      fputc('\n', out);
    }
  }
  fprintf(out, "%zu destination(s)\n", c->ndests);
  for (size_t i = 0; i < c->ndests; i++) {
    const mg_conf_dest_t *d = c->dests[i];
    fprintf(out, "  destination ");
    pq(out, d->name);
    fprintf(out, ": %s", dest_kind_name(d->kind));
    if (d->kind == MG_DEST_REMOTE_WRITE) {
      fprintf(out, " ");
      pq(out, d->url);
      fprintf(out, " remote_timeout=%s", mg_conf_format_duration(d->remote_timeout_ms, a, sizeof(a)));
    } else if (d->kind == MG_DEST_FILE) {
      fprintf(out, " ");
      pq(out, d->path);
    }
    fputc('\n', out);
    /* Header values are often API keys; only names are shown. */
    if (d->headers.n) {
      fprintf(out, "    headers:");
      for (size_t h = 0; h < d->headers.n; h++) fprintf(out, " %s=<secret>", d->headers.v[h].name);
      fputc('\n', out);
    }
    print_auth(out, &d->auth);
    print_tls(out, &d->tls);
    if (d->sigv4.enabled) {
      fprintf(out, "    sigv4: region=");
      pq(out, d->sigv4.region);
      fprintf(out, " service=");
      pq(out, d->sigv4.service);
      print_creds(out, &d->sigv4.creds);
      fputc('\n', out);
    }
    print_relabels(out, "write_relabel_configs", &d->write_relabel_configs);
    const mg_conf_queue_t *q = &d->queue;
    fprintf(out,
            "    queue: capacity=%" PRIu32 " min_shards=%" PRIu32 " max_shards=%" PRIu32
            " max_samples_per_send=%" PRIu32,
            q->capacity, q->min_shards, q->max_shards, q->max_samples_per_send);
    fprintf(out, " batch_send_deadline=%s", mg_conf_format_duration(q->batch_send_deadline_ms, a, sizeof(a)));
    fprintf(out, " backoff=%s..", mg_conf_format_duration(q->min_backoff_ms, a, sizeof(a)));
    fprintf(out, "%s retry_on_http_429=%s\n", mg_conf_format_duration(q->max_backoff_ms, a, sizeof(a)),
            q->retry_on_http_429 ? "true" : "false");
    if (d->kind == MG_DEST_REMOTE_WRITE) {
      if (d->buffer.memory_only) fprintf(out, "    buffer: memory_only=true\n");
      else
        fprintf(out, "    buffer: disk max_size=%" PRIu64 "B max_age=%s\n", d->buffer.max_bytes,
                d->buffer.max_age_ms ? mg_conf_format_duration(d->buffer.max_age_ms, a, sizeof(a)) : "none");
    }
    fprintf(out, "    metadata: send=%s send_interval=%s\n", d->send_metadata ? "true" : "false",
            mg_conf_format_duration(d->metadata_send_interval_ms, a, sizeof(a)));
  }
}

/* ---- equality (reload keeps a destination whose settings did not change) */

static bool str_same(const char *a, const char *b) { return a == b || (a && b && strcmp(a, b) == 0); }

static bool kvs_same(const mg_kvs_t *a, const mg_kvs_t *b) {
  if (a->n != b->n) return false;
  for (size_t i = 0; i < a->n; i++)
    if (!str_same(a->v[i].name, b->v[i].name) || !str_same(a->v[i].value, b->v[i].value)) return false;
  return true;
}

static bool auth_same(const mg_conf_auth_t *a, const mg_conf_auth_t *b) {
  return str_same(a->basic_username, b->basic_username) && str_same(a->basic_password, b->basic_password) &&
         str_same(a->basic_password_file, b->basic_password_file) && str_same(a->auth_type, b->auth_type) &&
         str_same(a->credentials, b->credentials) && str_same(a->credentials_file, b->credentials_file);
}

static bool tls_same(const mg_conf_tls_t *a, const mg_conf_tls_t *b) {
  return str_same(a->ca_file, b->ca_file) && str_same(a->cert_file, b->cert_file) &&
         str_same(a->key_file, b->key_file) && str_same(a->server_name, b->server_name) &&
         a->insecure_skip_verify == b->insecure_skip_verify;
}

static bool creds_same(const mg_conf_creds_t *a, const mg_conf_creds_t *b) {
  if (!a || !b) return a == b;
  return a->kind == b->kind && str_same(a->access_key_id, b->access_key_id) &&
         str_same(a->secret_access_key, b->secret_access_key) && str_same(a->session_token, b->session_token) &&
         str_same(a->profile, b->profile) && str_same(a->credentials_file, b->credentials_file) &&
         str_same(a->config_file, b->config_file) && str_same(a->role_arn, b->role_arn) &&
         str_same(a->external_id, b->external_id) && str_same(a->role_session_name, b->role_session_name) &&
         a->duration_s == b->duration_s && str_same(a->sts_region, b->sts_region) &&
         str_same(a->sts_endpoint, b->sts_endpoint) && str_same(a->web_identity_token_file, b->web_identity_token_file) &&
         str_same(a->process, b->process) && creds_same(a->source, b->source);
}

static bool relabels_same(const mg_conf_relabels_t *a, const mg_conf_relabels_t *b) {
  if (a->n != b->n) return false;
  for (size_t i = 0; i < a->n; i++) {
    const mg_conf_relabel_t *x = a->v[i], *y = b->v[i];
    if (x->nsource_labels != y->nsource_labels || x->modulus != y->modulus || !str_same(x->separator, y->separator) ||
        !str_same(x->regex, y->regex) || !str_same(x->target_label, y->target_label) ||
        !str_same(x->replacement, y->replacement) || !str_same(x->action, y->action))
      return false;
    for (size_t k = 0; k < x->nsource_labels; k++)
      if (!str_same(x->source_labels[k], y->source_labels[k])) return false;
  }
  return true;
}

bool mg_conf_dest_equal(const mg_conf_dest_t *a, const mg_conf_dest_t *b) {
  const mg_conf_queue_t *q = &a->queue, *r = &b->queue;
  return str_same(a->name, b->name) && a->kind == b->kind && str_same(a->url, b->url) && str_same(a->path, b->path) &&
         kvs_same(&a->headers, &b->headers) && auth_same(&a->auth, &b->auth) && tls_same(&a->tls, &b->tls) &&
         a->remote_timeout_ms == b->remote_timeout_ms && q->capacity == r->capacity &&
         q->max_shards == r->max_shards && q->min_shards == r->min_shards &&
         q->max_samples_per_send == r->max_samples_per_send && q->batch_send_deadline_ms == r->batch_send_deadline_ms &&
         q->min_backoff_ms == r->min_backoff_ms && q->max_backoff_ms == r->max_backoff_ms &&
         q->retry_on_http_429 == r->retry_on_http_429 && a->buffer.memory_only == b->buffer.memory_only &&
         a->buffer.max_bytes == b->buffer.max_bytes && a->buffer.max_age_ms == b->buffer.max_age_ms &&
         a->sigv4.enabled == b->sigv4.enabled &&
         str_same(a->sigv4.region, b->sigv4.region) && str_same(a->sigv4.service, b->sigv4.service) &&
         creds_same(&a->sigv4.creds, &b->sigv4.creds) && relabels_same(&a->write_relabel_configs, &b->write_relabel_configs) &&
         a->send_metadata == b->send_metadata && a->metadata_send_interval_ms == b->metadata_send_interval_ms;
}
