/* mg_sd_file: file_sd_configs. Expands the patterns, reads and parses each
 * file (YAML through libyaml's document API, JSON through mg_json), keeps
 * the last good groups of every file, and reports the merged list when it
 * changed. Owns its watchers, timers and the per-file groups; frees itself
 * in the last close callback. Never calls back from start or after stop. */
#include "mg_sd_file.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <glob.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "mg_err.h"
#include "mg_json.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_str.h"

#define DEFAULT_REFRESH_MS (5 * 60 * 1000)
/* Events come in bursts (a write, a rename, an editor's backup file): one
 * read shortly after the last of them. */
#define DEBOUNCE_MS 100
/* Nodes visited while reading one YAML file: aliases share nodes, so a
 * small file could otherwise describe billions of targets. */
#define YAML_WORK_BUDGET (4u << 20)

/* ---- options ------------------------------------------------------------ */

static bool has_glob(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] == '*' || s[i] == '?' || s[i] == '[') return true;
  return false;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

static bool is_json(const char *path) { return ends_with(path, ".json"); }

static int check_pattern(const char *p, size_t i, char *why, size_t whylen) {
  const char *slash = strrchr(p, '/');
  size_t dirlen = slash ? (size_t)(slash - p) : 0;
  if (!*p) return snprintf(why, whylen, "file_sd: files[%zu] is empty", i), MG_ECONFIG;
  for (const char *c = p; *c; c++)
    if ((unsigned char)*c < 0x20)
      return snprintf(why, whylen, "file_sd: files[%zu] has control characters", i), MG_ECONFIG;
  if (has_glob(p, dirlen))
    return snprintf(why, whylen, "file_sd: files[%zu] \"%.200s\": only the last path element may hold * ? or [", i, p),
           MG_ECONFIG;
  if (!is_json(p) && !ends_with(p, ".yml") && !ends_with(p, ".yaml"))
    return snprintf(why, whylen, "file_sd: files[%zu] \"%.200s\" must end in .json, .yml or .yaml", i, p), MG_ECONFIG;
  return 0;
}

static int read_opts(const mg_conf_sd_t *sd, uint64_t *refresh_ms, char *why, size_t whylen) {
  const mg_conf_val_t *o = sd->opts;
  for (size_t i = 0; i < o->n; i++)
    if (strcmp(o->keys[i], "files") != 0 && strcmp(o->keys[i], "refresh_interval") != 0)
      return snprintf(why, whylen, "file_sd: unknown field \"%.64s\" (use files, refresh_interval)", o->keys[i]),
             MG_ECONFIG;
  const mg_conf_val_t *files = mg_conf_val_get(o, "files");
  if (!files || files->type != MG_CONF_VAL_LIST || !files->n)
    return snprintf(why, whylen, "file_sd: files must be a non-empty list of paths"), MG_ECONFIG;
  for (size_t i = 0; i < files->n; i++) {
    if (files->v[i]->type != MG_CONF_VAL_SCALAR)
      return snprintf(why, whylen, "file_sd: files[%zu] must be a path", i), MG_ECONFIG;
    int rc = check_pattern(files->v[i]->s, i, why, whylen);
    if (rc) return rc;
  }
  *refresh_ms = DEFAULT_REFRESH_MS;
  const mg_conf_val_t *ri = mg_conf_val_get(o, "refresh_interval");
  if (ri && (ri->type != MG_CONF_VAL_SCALAR || mg_conf_parse_duration(ri->s, refresh_ms) != 0 || !*refresh_ms))
    return snprintf(why, whylen, "file_sd: refresh_interval must be a duration above 0 (e.g. 30s, 5m)"), MG_ECONFIG;
  return 0;
}

static int file_check(const mg_conf_sd_t *sd, char *why, size_t whylen) {
  uint64_t ms;
  return read_opts(sd, &ms, why, whylen);
}

/* ---- target groups ---------------------------------------------------------- */

static bool valid_label_name(const char *s, size_t n) {
  if (!n || !((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_')) return false;
  for (size_t i = 1; i < n; i++)
    if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
      return false;
  return true;
}

/* One group being read: its labels, then its targets added with them. */
typedef struct group {
  mg_kvs_t labels;
  const char *path;
  mg_sd_targets_t *out;
  size_t index;
  char *why;
  size_t whylen;
} group_t;

static int group_label(group_t *g, const char *name, size_t nlen, const char *value) {
  if (!valid_label_name(name, nlen))
    return snprintf(g->why, g->whylen, "group %zu: invalid label name \"%.*s\"", g->index, (int)(nlen > 64 ? 64 : nlen),
                    name),
           MG_EPARSE;
  char key[256];
  if (nlen >= sizeof key) return snprintf(g->why, g->whylen, "group %zu: label name too long", g->index), MG_EPARSE;
  memcpy(key, name, nlen);
  key[nlen] = '\0';
  /* A target's own __address__ wins over a group label of that name. */
  if (strcmp(key, "__address__") == 0) return 0;
  return mg_kvs_set(&g->labels, key, value) ? MG_ENOMEM : 0;
}

static int group_target(group_t *g, const char *address) {
  if (g->out->n >= MG_CONF_MAX_TARGETS)
    return snprintf(g->why, g->whylen, "more than %d targets", MG_CONF_MAX_TARGETS), MG_ETOOBIG;
  mg_conf_target_t *t = mg_sd_targets_add(g->out, address);
  if (!t) return MG_ENOMEM;
  for (size_t i = 0; i < g->labels.n; i++)
    if (mg_kvs_add(&t->labels, g->labels.v[i].name, g->labels.v[i].value) != 0) return MG_ENOMEM;
  return mg_kvs_set(&t->labels, "__meta_filepath", g->path) ? MG_ENOMEM : 0;
}

/* ---- YAML ----------------------------------------------------------------- */

typedef struct yparse {
  yaml_document_t doc;
  uint64_t work;
  group_t *g;
} yparse_t;

static yaml_node_t *ynode(yparse_t *P, yaml_node_item_t id) { return yaml_document_get_node(&P->doc, id); }

static bool ynull(const yaml_node_t *n) {
  if (!n) return true;
  if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
  const char *s = (const char *)n->data.scalar.value;
  return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

static int yspend(yparse_t *P, size_t units) {
  P->work += units;
  if (P->work <= YAML_WORK_BUDGET) return 0;
  snprintf(P->g->why, P->g->whylen, "document too complex (aliases expand to too many nodes)");
  return MG_ETOOBIG;
}

static int ylabels(yparse_t *P, const yaml_node_t *n) {
  group_t *g = P->g;
  if (ynull(n)) return 0;
  if (n->type != YAML_MAPPING_NODE)
    return snprintf(g->why, g->whylen, "group %zu: labels must be a mapping", g->index), MG_EPARSE;
  for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    const yaml_node_t *k = ynode(P, p->key), *v = ynode(P, p->value);
    int rc = yspend(P, 1);
    if (rc) return rc;
    if (!k || k->type != YAML_SCALAR_NODE || !v || v->type != YAML_SCALAR_NODE)
      return snprintf(g->why, g->whylen, "group %zu: labels must map names to values", g->index), MG_EPARSE;
    rc = group_label(g, (const char *)k->data.scalar.value, k->data.scalar.length,
                     ynull(v) ? "" : (const char *)v->data.scalar.value);
    if (rc) return rc;
  }
  return 0;
}

static int ytargets(yparse_t *P, const yaml_node_t *n) {
  group_t *g = P->g;
  if (ynull(n)) return 0;
  if (n->type != YAML_SEQUENCE_NODE)
    return snprintf(g->why, g->whylen, "group %zu: targets must be a list", g->index), MG_EPARSE;
  for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
    const yaml_node_t *t = ynode(P, *it);
    int rc = yspend(P, 1 + g->labels.n);
    if (rc) return rc;
    if (!t || t->type != YAML_SCALAR_NODE)
      return snprintf(g->why, g->whylen, "group %zu: each target must be host:port text", g->index), MG_EPARSE;
    if ((rc = group_target(g, (const char *)t->data.scalar.value)) != 0) return rc;
  }
  return 0;
}

static int ygroup(yparse_t *P, const yaml_node_t *n) {
  group_t *g = P->g;
  if (!n || n->type != YAML_MAPPING_NODE)
    return snprintf(g->why, g->whylen, "group %zu: not a mapping with targets and labels", g->index), MG_EPARSE;
  const yaml_node_t *targets = NULL, *labels = NULL;
  for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    const yaml_node_t *k = ynode(P, p->key);
    const char *key = k && k->type == YAML_SCALAR_NODE ? (const char *)k->data.scalar.value : "";
    if (!strcmp(key, "targets"))
      targets = ynode(P, p->value);
    else if (!strcmp(key, "labels"))
      labels = ynode(P, p->value);
    else
      return snprintf(g->why, g->whylen, "group %zu: unknown field \"%.64s\"", g->index, key), MG_EPARSE;
  }
  int rc = ylabels(P, labels);
  return rc ? rc : ytargets(P, targets);
}

static int parse_yaml(const char *data, size_t len, group_t *g, size_t *line) {
  yparse_t P = {.g = g};
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) return MG_ENOMEM;
  yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
  if (!yaml_parser_load(&parser, &P.doc)) {
    *line = parser.problem_mark.line + 1;
    snprintf(g->why, g->whylen, "%s", parser.problem ? parser.problem : "malformed YAML");
    yaml_parser_delete(&parser);
    return MG_EPARSE;
  }
  yaml_parser_delete(&parser);
  int rc = 0;
  const yaml_node_t *root = yaml_document_get_root_node(&P.doc);
  if (root && !ynull(root) && root->type != YAML_SEQUENCE_NODE) {
    snprintf(g->why, g->whylen, "the file must hold a list of target groups");
    rc = MG_EPARSE;
  } else if (root && !ynull(root)) {
    for (yaml_node_item_t *it = root->data.sequence.items.start; !rc && it < root->data.sequence.items.top; it++) {
      *line = ynode(&P, *it) ? ynode(&P, *it)->start_mark.line + 1 : 0;
      rc = yspend(&P, 1);
      if (!rc) rc = ygroup(&P, ynode(&P, *it));
      mg_kvs_cleanup(&g->labels);
      g->index++;
    }
  }
  if (!rc) *line = 0;
  yaml_document_delete(&P.doc);
  return rc;
}

/* ---- JSON ------------------------------------------------------------------ */

/* libyaml reads most JSON but not all of it (it refuses surrogate-pair
 * escapes and accepts trailing commas), so .json files go through mg_json,
 * which is strict. A group object is read with mg_json_object, whose 1 MiB
 * bound applies per group (some 40000 targets). */

static int on_json_label(void *ud, mg_str_t key, mg_json_type_t type, mg_str_t value) {
  group_t *g = ud;
  if (type == MG_JSON_NULL)
    value = mg_str_n("", 0);
  else if (type != MG_JSON_STRING)
    return snprintf(g->why, g->whylen, "group %zu: label values must be strings", g->index), MG_EPARSE;
  if (memchr(value.p, '\0', value.n))
    return snprintf(g->why, g->whylen, "group %zu: a label value holds a NUL byte", g->index), MG_EPARSE;
  char *v = mg_strndup(value.p, value.n);
  if (!v) return MG_ENOMEM;
  int rc = group_label(g, key.p, key.n, v);
  mg_free(v);
  return rc;
}

static int on_json_target(void *ud, size_t index, mg_json_type_t type, mg_str_t value) {
  group_t *g = ud;
  if (type != MG_JSON_STRING || memchr(value.p, '\0', value.n))
    return snprintf(g->why, g->whylen, "group %zu: targets[%zu] must be host:port text", g->index, index), MG_EPARSE;
  char *a = mg_strndup(value.p, value.n);
  if (!a) return MG_ENOMEM;
  int rc = group_target(g, a);
  mg_free(a);
  return rc;
}

typedef struct jgroup {
  group_t *g;
  mg_str_t targets; /* raw text of the targets array, read after the labels */
  bool have_targets;
} jgroup_t;

static int on_json_member(void *ud, mg_str_t key, mg_json_type_t type, mg_str_t value) {
  jgroup_t *j = ud;
  group_t *g = j->g;
  if (mg_str_eq_c(key, "labels")) {
    if (type == MG_JSON_NULL) return 0;
    if (type != MG_JSON_OBJECT)
      return snprintf(g->why, g->whylen, "group %zu: labels must be an object", g->index), MG_EPARSE;
    mg_kvs_cleanup(&g->labels);
    return mg_json_object(value.p, value.n, on_json_label, g, NULL);
  }
  if (mg_str_eq_c(key, "targets")) {
    if (type == MG_JSON_NULL) return 0;
    if (type != MG_JSON_ARRAY)
      return snprintf(g->why, g->whylen, "group %zu: targets must be a list", g->index), MG_EPARSE;
    j->targets = value;
    j->have_targets = true;
    return 0;
  }
  return snprintf(g->why, g->whylen, "group %zu: unknown field \"%.*s\"", g->index, (int)(key.n > 64 ? 64 : key.n),
                  key.p),
         MG_EPARSE;
}

static int on_json_group(void *ud, size_t index, mg_json_type_t type, mg_str_t value) {
  group_t *g = ud;
  g->index = index;
  mg_kvs_cleanup(&g->labels);
  if (type != MG_JSON_OBJECT)
    return snprintf(g->why, g->whylen, "group %zu: not an object with targets and labels", index), MG_EPARSE;
  jgroup_t j = {g, mg_str_n("", 0), false};
  int rc = mg_json_object(value.p, value.n, on_json_member, &j, NULL);
  if (rc == MG_ETOOBIG) snprintf(g->why, g->whylen, "group %zu: larger than %d bytes", index, MG_JSON_MAX_INPUT);
  if (!rc && j.have_targets) rc = mg_json_array(j.targets.p, j.targets.n, on_json_target, g, NULL);
  return rc;
}

static int parse_json(const char *data, size_t len, group_t *g, size_t *offset) {
  mg_json_error_t jerr = {0, NULL};
  int rc = mg_json_array(data, len, on_json_group, g, &jerr);
  mg_kvs_cleanup(&g->labels);
  if (rc == MG_EPARSE && jerr.msg) {
    *offset = jerr.offset;
    snprintf(g->why, g->whylen, "%s at byte %zu", jerr.msg, jerr.offset);
  }
  return rc;
}

/* ---- reading a file ---------------------------------------------------------- */

/* Read a whole file of at most MG_SD_FILE_MAX_BYTES. 0; MG_ENOTFOUND when
 * it does not exist (any more); MG_ETOOBIG; MG_EIO with why. */
static int slurp(const char *path, char **data, size_t *len, char *why, size_t whylen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return MG_ENOTFOUND;
    snprintf(why, whylen, "cannot open: %s", strerror(errno));
    return MG_EIO;
  }
  struct stat st;
  int rc = 0;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    snprintf(why, whylen, "not a regular file");
    rc = MG_EIO;
  } else if ((uint64_t)st.st_size > MG_SD_FILE_MAX_BYTES) {
    snprintf(why, whylen, "larger than %u MiB", MG_SD_FILE_MAX_BYTES >> 20);
    rc = MG_ETOOBIG;
  }
  /* One byte more than the limit: a file growing while read is caught. */
  char *buf = rc ? NULL : mg_malloc((size_t)st.st_size + 1);
  if (!rc && !buf) rc = MG_ENOMEM;
  size_t n = 0, cap = rc ? 0 : (size_t)st.st_size + 1;
  while (!rc && n < cap) {
    ssize_t r = read(fd, buf + n, cap - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      snprintf(why, whylen, "cannot read: %s", strerror(errno));
      rc = MG_EIO;
    }
    if (r <= 0) break;
    n += (size_t)r;
  }
  close(fd);
  if (!rc && n == cap) {
    snprintf(why, whylen, "changed while read");
    rc = MG_EAGAIN;
  }
  if (rc) {
    mg_free(buf);
    return rc;
  }
  *data = buf;
  *len = n;
  return 0;
}

/* Read and parse one file into *out (fresh; left empty on error). */
static int load_file(const char *path, mg_sd_targets_t *out, char *why, size_t whylen) {
  char *data = NULL;
  size_t len = 0;
  int rc = slurp(path, &data, &len, why, whylen);
  if (rc) return rc;
  group_t g = {.path = path, .out = out, .why = why, .whylen = whylen};
  size_t where = 0;
  why[0] = '\0';
  if (is_json(path)) {
    rc = parse_json(data, len, &g, &where);
  } else {
    rc = parse_yaml(data, len, &g, &where);
    if (rc && where) {
      char tmp[300];
      snprintf(tmp, sizeof tmp, "line %zu: %s", where, why);
      size_t n = strlen(tmp) < whylen ? strlen(tmp) : whylen - 1; /* whylen > 0: why[0] was written above */
      memcpy(why, tmp, n);
      why[n] = '\0';
    }
  }
  mg_kvs_cleanup(&g.labels);
  mg_free(data);
  if (rc && !why[0]) snprintf(why, whylen, "%s", mg_err_str(rc));
  if (rc) mg_sd_targets_cleanup(out);
  return rc;
}

/* ---- the provider ------------------------------------------------------------ */

typedef struct known {
  char *path;
  mg_sd_targets_t ts; /* its last good groups */
  char err[256];      /* the error last logged for it; "" after a good read */
  bool seen;          /* matched by the refresh in progress */
} known_t;

struct sd_file;

typedef struct watch {
  uv_fs_event_t h;
  struct sd_file *f;
  char *dir;
  bool active;
} watch_t;

typedef struct sd_file {
  const mg_sd_env_t *env;
  mg_sd_update_fn update;
  void *ud;
  char **patterns;       /* relative ones resolved against the plan file's directory */
  size_t *pattern_watch; /* index into watches of each pattern's directory */
  size_t npatterns;
  uint64_t refresh_ms;
  uv_timer_t tick, soon;
  watch_t *watches; /* one per directory; never reallocated (handles live inside) */
  size_t nwatches;
  known_t *files;
  size_t nfiles, files_cap;
  uint64_t sent_hash;
  bool sent;
  bool closing;
  unsigned open_handles;
  char glob_err[256];
} sd_file_t;

static void log_file_error(sd_file_t *f, known_t *k, int rc, const char *why) {
  if (strcmp(k->err, why) == 0) return; /* once per distinct error */
  snprintf(k->err, sizeof k->err, "%s", why);
  char q[400];
  MG_WARN("sd", "file_sd_read_failed", "job=%s file=%s err=%s reason=%s hint=\"its previous targets are kept\"",
          f->env->job->name, k->path, mg_err_name(rc), mg_log_q(q, sizeof q, why, strlen(why)));
}

static known_t *known_for(sd_file_t *f, const char *path) {
  for (size_t i = 0; i < f->nfiles; i++)
    if (strcmp(f->files[i].path, path) == 0) return &f->files[i];
  if (f->nfiles == f->files_cap) {
    size_t cap = f->files_cap ? f->files_cap * 2 : 8;
    known_t *v = mg_reallocarray(f->files, cap, sizeof *v);
    if (!v) return NULL;
    f->files = v;
    f->files_cap = cap;
  }
  known_t *k = &f->files[f->nfiles];
  memset(k, 0, sizeof *k);
  if (!(k->path = mg_strdup(path))) return NULL;
  f->nfiles++;
  return k;
}

/* Read one matched file; false when it failed (previous groups kept). */
static bool refresh_file(sd_file_t *f, const char *path) {
  known_t *k = known_for(f, path);
  if (!k) {
    MG_ERROR("sd", "file_sd_read_failed", "job=%s file=%s err=ENOMEM", f->env->job->name, path);
    return false;
  }
  if (k->seen) return true; /* matched by two patterns: read once */
  k->seen = true;
  mg_sd_targets_t ts = {0};
  char why[256];
  why[0] = '\0';
  int rc = load_file(path, &ts, why, sizeof why);
  if (rc == MG_ENOTFOUND) {
    k->seen = false; /* removed between the glob and the read: gone */
    return true;
  }
  if (rc) {
    log_file_error(f, k, rc, why);
    return false;
  }
  if (k->err[0]) MG_INFO("sd", "file_sd_read_ok", "job=%s file=%s targets=%zu", f->env->job->name, k->path, ts.n);
  k->err[0] = '\0';
  mg_sd_targets_cleanup(&k->ts);
  k->ts = ts;
  return true;
}

/* Expand every pattern and read what matches; false when a file or a
 * pattern failed. */
static bool refresh_files(sd_file_t *f) {
  bool ok = true;
  size_t matched = 0;
  for (size_t i = 0; i < f->nfiles; i++) f->files[i].seen = false;
  for (size_t p = 0; p < f->npatterns; p++) {
    glob_t g;
    memset(&g, 0, sizeof g);
    int grc = glob(f->patterns[p], 0, NULL, &g);
    if (grc != 0 && grc != GLOB_NOMATCH) {
      char why[256];
      snprintf(why, sizeof why, "%s", grc == GLOB_NOSPACE ? "out of memory" : "cannot read the directory");
      if (strcmp(f->glob_err, why) != 0)
        MG_WARN("sd", "file_sd_glob_failed", "job=%s pattern=%s reason=\"%s\"", f->env->job->name, f->patterns[p], why);
      snprintf(f->glob_err, sizeof f->glob_err, "%s", why);
      ok = false;
    }
    for (size_t i = 0; grc == 0 && i < g.gl_pathc; i++) {
      if (++matched > MG_SD_FILE_MAX_FILES) {
        MG_WARN("sd", "file_sd_too_many_files", "job=%s max=%d hint=\"the files past it are not read\"",
                f->env->job->name, MG_SD_FILE_MAX_FILES);
        ok = false;
        break;
      }
      ok &= refresh_file(f, g.gl_pathv[i]);
    }
    globfree(&g);
  }
  /* Files no longer there (or no longer matched) take their targets away;
   * the ones that failed were marked seen and keep theirs. */
  size_t n = 0;
  for (size_t i = 0; i < f->nfiles; i++) {
    if (f->files[i].seen) {
      f->files[n++] = f->files[i];
      continue;
    }
    mg_free(f->files[i].path);
    mg_sd_targets_cleanup(&f->files[i].ts);
  }
  f->nfiles = n;
  return ok;
}

static uint64_t hash_str(const char *s, uint64_t h) { return mg_hash64(s, strlen(s) + 1, h); }

/* Report the merged list when it differs from the last one sent. The
 * list handed over borrows the files' strings (the sink copies). */
static void report(sd_file_t *f, bool ok) {
  if (!ok) f->update(f->ud, false, NULL);
  size_t total = 0;
  uint64_t h = 0x5d;
  for (size_t i = 0; i < f->nfiles; i++) {
    total += f->files[i].ts.n;
    for (size_t t = 0; t < f->files[i].ts.n; t++) {
      const mg_conf_target_t *x = &f->files[i].ts.v[t];
      h = hash_str(x->address, h);
      for (size_t l = 0; l < x->labels.n; l++) h = hash_str(x->labels.v[l].value, hash_str(x->labels.v[l].name, h));
      h = mg_hash64("\n", 1, h);
    }
  }
  if (f->sent && h == f->sent_hash) return;
  mg_sd_targets_t all = {mg_calloc(total ? total : 1, sizeof(mg_conf_target_t)), 0, total};
  if (!all.v) {
    MG_ERROR("sd", "file_sd_report_failed", "job=%s err=ENOMEM", f->env->job->name);
    return;
  }
  for (size_t i = 0; i < f->nfiles; i++) {
    if (!f->files[i].ts.n) continue; /* an empty file: no array to copy from */
    memcpy(all.v + all.n, f->files[i].ts.v, f->files[i].ts.n * sizeof *all.v);
    all.n += f->files[i].ts.n;
  }
  f->sent = true;
  f->sent_hash = h;
  f->update(f->ud, true, &all);
  mg_free(all.v);
}

static void arm_watches(sd_file_t *f);

static void refresh(sd_file_t *f) {
  if (f->closing) return;
  bool ok = refresh_files(f);
  report(f, ok);
}

static void on_tick(uv_timer_t *h) {
  sd_file_t *f = h->data;
  arm_watches(f); /* a directory created or replaced since is watched from now on */
  refresh(f);
}

static void on_soon(uv_timer_t *h) { refresh(h->data); }

/* Does a name changed in w's directory match one of the patterns there?
 * (Editors' swap and backup files do not.) */
static bool wanted(const watch_t *w, const char *name) {
  const sd_file_t *f = w->f;
  for (size_t p = 0; p < f->npatterns; p++) {
    if (&f->watches[f->pattern_watch[p]] != w) continue;
    const char *slash = strrchr(f->patterns[p], '/');
    if (fnmatch(slash ? slash + 1 : f->patterns[p], name, FNM_PERIOD) == 0) return true;
  }
  return false;
}

static void on_fs_event(uv_fs_event_t *h, const char *name, int events, int status) {
  watch_t *w = h->data;
  sd_file_t *f = w->f;
  if (f->closing) return;
  if (status < 0) {
    MG_DEBUG("sd", "file_sd_watch_error", "job=%s dir=%s err=%s", f->env->job->name, w->dir, uv_err_name(status));
    w->active = false;
    uv_fs_event_stop(h);
  }
  if (status < 0 || !name || wanted(w, name)) uv_timer_start(&f->soon, on_soon, DEBOUNCE_MS, 0);
}

/* (Re)start every directory watch. A directory that does not exist yet is
 * tried again at the next refresh; meanwhile the refresh interval alone
 * finds its files. */
static void arm_watches(sd_file_t *f) {
  for (size_t i = 0; i < f->nwatches; i++) {
    watch_t *w = &f->watches[i];
    uv_fs_event_stop(&w->h);
    int rc = uv_fs_event_start(&w->h, on_fs_event, w->dir, 0);
    if (rc && w->active)
      MG_WARN("sd", "file_sd_watch_failed", "job=%s dir=%s err=%s hint=\"read every refresh_interval only\"",
              f->env->job->name, w->dir, uv_err_name(rc));
    w->active = rc == 0;
  }
}

static void on_closed(uv_handle_t *h) {
  sd_file_t *f = h->data;
  if (h->type == UV_FS_EVENT) f = ((watch_t *)h->data)->f;
  if (--f->open_handles) return;
  for (size_t i = 0; i < f->nwatches; i++) mg_free(f->watches[i].dir);
  mg_free(f->watches);
  for (size_t i = 0; i < f->nfiles; i++) {
    mg_free(f->files[i].path);
    mg_sd_targets_cleanup(&f->files[i].ts);
  }
  mg_free(f->files);
  for (size_t i = 0; i < f->npatterns; i++) mg_free(f->patterns[i]);
  mg_free(f->patterns);
  mg_free(f->pattern_watch);
  mg_free(f);
}

static void file_stop(void *state) {
  sd_file_t *f = state;
  if (!f || f->closing) return;
  f->closing = true;
  uv_close((uv_handle_t *)&f->tick, on_closed);
  uv_close((uv_handle_t *)&f->soon, on_closed);
  for (size_t i = 0; i < f->nwatches; i++) uv_close((uv_handle_t *)&f->watches[i].h, on_closed);
}

static char *dir_of(const char *pattern) {
  const char *slash = strrchr(pattern, '/');
  if (!slash) return mg_strdup(".");
  if (slash == pattern) return mg_strdup("/");
  return mg_strndup(pattern, (size_t)(slash - pattern));
}

/* A relative path is taken from the directory of the plan's file, as
 * Prometheus does, so the result does not depend on the working
 * directory. */
static char *resolve(const char *pattern, const char *conf_path) {
  const char *slash = conf_path ? strrchr(conf_path, '/') : NULL;
  if (pattern[0] == '/' || !slash) return mg_strdup(pattern);
  size_t dl = (size_t)(slash - conf_path) + 1, pl = strlen(pattern);
  char *out = mg_malloc(dl + pl + 1);
  if (!out) return NULL;
  memcpy(out, conf_path, dl);
  memcpy(out + dl, pattern, pl + 1);
  return out;
}

/* Options copied; one watch per distinct directory. */
static int file_setup(sd_file_t *f, const mg_conf_sd_t *sd) {
  const mg_conf_val_t *files = mg_conf_val_get(sd->opts, "files");
  if (!(f->patterns = mg_calloc(files->n, sizeof *f->patterns))) return MG_ENOMEM;
  if (!(f->pattern_watch = mg_calloc(files->n, sizeof *f->pattern_watch))) return MG_ENOMEM;
  if (!(f->watches = mg_calloc(files->n, sizeof *f->watches))) return MG_ENOMEM;
  for (size_t i = 0; i < files->n; i++) {
    if (!(f->patterns[f->npatterns] = resolve(files->v[i]->s, f->env->conf->path))) return MG_ENOMEM;
    char *dir = dir_of(f->patterns[f->npatterns++]);
    if (!dir) return MG_ENOMEM;
    size_t k = 0;
    while (k < f->nwatches && strcmp(f->watches[k].dir, dir) != 0) k++;
    f->pattern_watch[i] = k;
    if (k < f->nwatches) {
      mg_free(dir);
      continue;
    }
    f->watches[f->nwatches].dir = dir;
    f->watches[f->nwatches].f = f;
    f->watches[f->nwatches].active = true; /* so a first failure is logged */
    f->nwatches++;
  }
  return 0;
}

static int file_start(const mg_sd_env_t *env, const mg_conf_sd_t *sd, mg_sd_update_fn update, void *ud, void **state) {
  char why[300];
  uint64_t refresh_ms;
  if (read_opts(sd, &refresh_ms, why, sizeof why) != 0) return MG_ECONFIG;
  sd_file_t *f = mg_calloc(1, sizeof *f);
  if (!f) return MG_ENOMEM;
  f->env = env;
  f->update = update;
  f->ud = ud;
  f->refresh_ms = refresh_ms;
  if (file_setup(f, sd) != 0) {
    for (size_t i = 0; i < f->nwatches; i++) mg_free(f->watches[i].dir);
    for (size_t i = 0; i < f->npatterns; i++) mg_free(f->patterns[i]);
    mg_free(f->watches);
    mg_free(f->patterns);
    mg_free(f->pattern_watch);
    mg_free(f);
    return MG_ENOMEM;
  }
  uv_timer_init(env->loop, &f->tick);
  uv_timer_init(env->loop, &f->soon);
  f->tick.data = f->soon.data = f;
  f->open_handles = 2;
  for (size_t i = 0; i < f->nwatches; i++) {
    uv_fs_event_init(env->loop, &f->watches[i].h);
    f->watches[i].h.data = &f->watches[i];
    f->open_handles++;
  }
  arm_watches(f);
  /* The first read runs from the loop, never from inside start. */
  uv_timer_start(&f->soon, on_soon, 0, 0);
  uv_timer_start(&f->tick, on_tick, refresh_ms, refresh_ms);
  *state = f;
  return 0;
}

const mg_sd_ops_t mg_sd_file_ops = {"file", file_check, file_start, file_stop};
