/* mg_scrape: targets, their timers and series tables, and the per-sample
 * hot path. Encoded series of one scrape are staged in one buffer and
 * handed to the destinations only when the whole body parsed, so a failed
 * scrape leaves nothing half-written. Staging and label scratch are shared
 * by all targets: callbacks run one at a time on the loop. */
#include "mg_scrape.h"

#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_auth.h"
#include "mg_err.h"
#include "mg_log.h"
#include "mg_loop.h"
#include "mg_mem.h"
#include "mg_metrics.h"
#include "mg_parse.h"
#include "mg_relabel.h"
#include "mg_series.h"
#include "mg_wire.h"

/* The Accept header Prometheus 2.42 sends, so targets answer moongate in
 * the same format they answer Prometheus. */
#define ACCEPT_HEADER                                                                                         \
  "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;" \
  "version=0.0.4;q=0.5,*/*;q=0.1"
#define MAX_IDLE_BODIES 2
#define MAX_TARGET_LABELS 64
/* Final label count of one series: parsed + target + external labels. */
#define MAX_SERIES_LABELS (MG_PARSE_MAX_LABELS + 2 * MAX_TARGET_LABELS + 1)

/* What one discovery source of a job contributes. */
typedef struct sd_source {
  struct target **v; /* the targets it reports, each once (others may report them too) */
  size_t n;
  mg_conf_target_t *raw; /* its last report as given, before relabeling (a reload starts from it) */
  size_t nraw;
  bool reported;
} sd_source_t;

typedef struct job_metrics {
  mg_metric_t *ok, *fail, *samples, *up, *down, *discovered, *duplicates;
  mg_relabel_t *metric_relabel; /* NULL: no metric_relabel_configs */
  mg_relabel_t *target_relabel; /* NULL: no relabel_configs; kept for discovered targets */
  char *auth_value;             /* Authorization of the job's targets (secret), NULL: none */
  const mg_conf_job_t *job;     /* valid until mg_scrape_free returns */
  sd_source_t *srcs;            /* one per discovery source of the job */
  size_t nsrcs;
} job_metrics_t;

typedef struct target {
  struct mg_scrape *s;
  const mg_conf_job_t *job;
  job_metrics_t *jm;
  size_t index;
  size_t jobi;     /* index of its job in the plan */
  unsigned claims; /* the static list and the discovery sources reporting it */
  bool is_static;  /* from the job's static list: stays until reload */
  bool gone;       /* discovery dropped it: its callbacks only release */
  uint64_t ident;  /* hash of URL and labels: finds it again in its job */
  char *url;
  char *instance;
  mg_label_t labels[MAX_TARGET_LABELS]; /* sorted; strings owned by `strings` */
  size_t nlabels;
  mg_buf_t strings;
  uint64_t seed; /* mixes into series hashes for shard choice */
  uv_timer_t timer;
  mg_http_req_t *req;
  mg_buf_t *body;
  int64_t start_wall_ms;
  uint64_t interval_ms, timeout_ms; /* after target relabeling */
  uint64_t start_ns; /* uv_hrtime at the start of the scrape */
  unsigned refs;     /* its timer handle + a request in flight */
  mg_series_table_t series;
  mg_buf_t meta, meta_next; /* encoded MetricMetadata entries of the last good scrape */
  int up;                   /* -1 unknown, 0 down, 1 up */
  int64_t last_scrape_ms;   /* wall clock of the last finished scrape */
  double last_duration_s;
  unsigned long long last_fail_log_ms, last_dup_log_ms;
  char last_error[256];
  mg_http_header_t headers[3];
  char timeout_hdr[32];
  const char *auth_value; /* the job's, borrowed */
} target_t;

struct mg_scrape {
  uv_loop_t *loop;
  mg_http_client_t *http;
  const mg_conf_t *conf;
  mg_dest_t **dests;
  size_t ndests;
  target_t **targets; /* grouped by job, in plan order; rebuilt when discovery changes them */
  size_t ntargets;
  job_metrics_t *jms;
  size_t njobs; /* the plan may be gone once mg_scrape_free returned */
  mg_label_t ext[MAX_TARGET_LABELS]; /* external labels, sorted */
  size_t next;
  /* shared per-scrape state */
  mg_buf_t staging;
  struct staged {
    uint32_t off, len;
    uint64_t hash;
    uint64_t dests; /* bit i: destination i */
  } *entries;
  size_t nentries, entries_cap;
  mg_buf_t scratch;
  mg_buf_t stale_line; /* a remembered key turned back into a sample line */
  /* Series first seen by the scrape in progress: their hash, and a hash
   * of their final label set (see on_series_gone). */
  struct fresh {
    uint64_t hash, labels_hash;
  } *fresh;
  size_t nfresh, fresh_cap;
  mg_buf_t *idle_bodies[MAX_IDLE_BODIES];
  size_t nidle;
  uv_timer_t meta_timer;
  int meta_timer_init;
  int started, stopped;
  unsigned refs;
  mg_metric_t *m_active;
  /* decisions */
  uint64_t all_dests;
  uint64_t *route_masks; /* route id ROUTE_FIRST + i -> destination mask */
  size_t nroutes, routes_cap;
  mg_series_decide_fn decide;
  void *decide_ud;
  mg_scrape_trace_fn trace;
  void *trace_ud;
  mg_buf_t extra; /* encoding of rewritten labels */
  mg_label_t decoded[MAX_SERIES_LABELS];
  mg_relabel_t **write_relabel; /* per destination; NULL entries: none */
  mg_labels_t lb;               /* relabel builder, reused for every series */
  mg_labels_t lb_write;
};

/* Extra bytes kept with a rewritten series: blocks of [tag][varint
 * length][label pairs]. Tag STAGE1 holds the labels after metric relabeling
 * and hooks; tag d < 64 holds destination d's final labels after its
 * write_relabel_configs (external labels included). */
#define BLOCK_STAGE1 0xffu

/* Dropped by metric_relabel_configs (not counted in
 * scrape_samples_post_metric_relabeling, unlike drops by hooks or write
 * relabeling). */
#define ROUTE_METRIC_DROP 3
/* Route ids below this are fixed (mg_series.h and the one above). */
#define ROUTE_FIRST 4
/* Route ids fit in the 14 bits mg_series leaves for them. */
#define MAX_ROUTES (0x3fffu - ROUTE_FIRST)

/* Per-scrape parse context. */
typedef struct scrape_ctx {
  target_t *t;
  int64_t ts_ms;
  uint64_t samples;     /* sample lines in the body */
  uint64_t post_relabel; /* samples kept after metric relabeling */
  uint64_t added;
  uint64_t duplicates;
  int stale_mode; /* parsing a remembered key to write its staleness marker */
  const mg_series_entry_t *gone; /* the entry being marked stale */
  mg_parse_format_t fmt;
  int synthetic; /* staging up/scrape_* (not traced) */
  char err[200];
  /* metadata accumulator for the current family */
  mg_str_t meta_family;
  mg_metric_kind_t meta_type;
  mg_str_t meta_help, meta_unit;
  int meta_have;
} scrape_ctx_t;

static void scrape_unref(mg_scrape_t *s);
static void target_unref(struct target *t);

/* ---- label building ---------------------------------------------------- */

static int label_cmp(const void *a, const void *b) {
  return mg_str_cmp(((const mg_label_t *)a)->name, ((const mg_label_t *)b)->name);
}

/* Sort labels by name, stable. Runs for every sample whose page lists its
 * labels out of order, so short sets (all real ones) get an insertion sort:
 * qsort's indirect calls and merge buffer made it 11 % of a scrape's
 * instructions. */
static void sort_labels(mg_label_t *l, size_t n) {
  if (n > 32) {
    qsort(l, n, sizeof *l, label_cmp);
    return;
  }
  for (size_t i = 1; i < n; i++) {
    mg_label_t x = l[i];
    size_t j = i;
    while (j > 0 && mg_str_cmp(l[j - 1].name, x.name) > 0) {
      l[j] = l[j - 1];
      j--;
    }
    l[j] = x;
  }
}

/* Add labels of `add` whose names are not in `out` (sorted), keeping out
 * sorted. Used for external labels, which never override. */
static size_t merge_missing(mg_label_t *out, size_t n, const mg_label_t *add, size_t nadd, size_t cap) {
  size_t orig = n;
  for (size_t i = 0; i < nadd; i++) {
    mg_label_t key = add[i];
    if (bsearch(&key, out, orig, sizeof *out, label_cmp)) continue;
    if (n < cap) out[n++] = add[i];
  }
  if (n != orig) sort_labels(out, n);
  return n;
}

/* Build the sorted label set of a sample as the scrape sees it: parsed
 * labels (unescaped), the target's labels with Prometheus's honor_labels
 * rule, empty values removed. External labels come later (with_external),
 * as in Prometheus, where they belong to remote write. Returns the count,
 * or a negative mg_err with ctx->err set (MG_ETOOBIG for a label limit). */
static int build_labels(scrape_ctx_t *c, const mg_parse_sample_t *ps, mg_label_t *out) {
  target_t *t = c->t;
  mg_scrape_t *s = t->s;
  const mg_conf_job_t *job = t->job;
  mg_label_t parsed[MG_PARSE_MAX_LABELS + 1];
  size_t np = 0;
  parsed[np++] = (mg_label_t){MG_STR_LIT("__name__"), ps->name};
  size_t esc_bytes = 0;
  for (size_t i = 0; i < ps->nlabels; i++)
    if (ps->labels[i].escaped) esc_bytes += ps->labels[i].value.n;
  mg_buf_reset(&s->scratch);
  /* Renamed labels ("exported_" + name) need room too. */
  if (mg_buf_reserve(&s->scratch, esc_bytes + ps->nlabels * 16 + 4096) != 0) {
    snprintf(c->err, sizeof c->err, "out of memory building labels");
    return MG_ENOMEM;
  }
  /* The parser tells whether the page listed the names in order; then only
   * __name__ against the first one is left to check. */
  bool sorted = ps->sorted && (ps->nlabels == 0 || mg_str_cmp(parsed[0].name, ps->labels[0].name) < 0);
  for (size_t i = 0; i < ps->nlabels; i++) {
    const mg_parse_label_t *pl = &ps->labels[i];
    if (job->label_name_length_limit && pl->name.n > job->label_name_length_limit) {
      snprintf(c->err, sizeof c->err, "label name %.*s... longer than label_name_length_limit %llu",
               (int)(pl->name.n > 40 ? 40 : pl->name.n), pl->name.p, (unsigned long long)job->label_name_length_limit);
      return MG_ETOOBIG;
    }
    mg_str_t v = pl->value;
    if (pl->escaped) {
      char *dst = s->scratch.data + s->scratch.len;
      size_t n = mg_parse_unescape(pl->value, dst);
      s->scratch.len += n;
      v = mg_str_n(dst, n);
    }
    if (job->label_value_length_limit && v.n > job->label_value_length_limit) {
      snprintf(c->err, sizeof c->err, "label %.*s value longer than label_value_length_limit %llu",
               (int)(pl->name.n > 40 ? 40 : pl->name.n), pl->name.p, (unsigned long long)job->label_value_length_limit);
      return MG_ETOOBIG;
    }
    /* Empty values stay until the merge: honor_labels asks whether the
     * page has the label at all, as Prometheus does (lset.Has). */
    parsed[np++] = (mg_label_t){pl->name, v};
  }
  if (!sorted) sort_labels(parsed, np);

  /* Merge parsed (P) with target labels (T). On a name in both, with
   * honor_labels the page's label wins (an empty one removes it);
   * otherwise the target's wins and a non-empty page value is kept under
   * exported_<name>, resolved below. */
  size_t n = 0, i = 0, j = 0, nconf = 0;
  mg_label_t conflicts[MAX_TARGET_LABELS];
  const mg_label_t *tl = t->labels;
  size_t nt = t->nlabels;
  while (i < np || j < nt) {
    int cmp = i >= np ? 1 : j >= nt ? -1 : mg_str_cmp(parsed[i].name, tl[j].name);
    if (cmp < 0) {
      if (parsed[i].value.n) out[n++] = parsed[i];
      i++;
    } else if (cmp > 0) {
      out[n++] = tl[j++];
    } else if (job->honor_labels) {
      if (parsed[i].value.n) out[n++] = parsed[i];
      i++, j++;
    } else {
      out[n++] = tl[j++];
      if (parsed[i].value.n) conflicts[nconf++] = parsed[i];
      i++;
    }
  }
  if (nconf) {
    /* Prometheus's order: shortest name first; each takes the first
     * exported_…<name> not used by the page, the target, or an earlier
     * conflict. */
    for (size_t x = 1; x < nconf; x++)
      for (size_t y = x; y > 0 && conflicts[y].name.n < conflicts[y - 1].name.n; y--) {
        mg_label_t tmp = conflicts[y];
        conflicts[y] = conflicts[y - 1];
        conflicts[y - 1] = tmp;
      }
    for (size_t x = 0; x < nconf; x++) {
      mg_str_t name = conflicts[x].name;
      for (;;) {
        size_t need = 9 + name.n;
        if (s->scratch.cap - s->scratch.len < need) {
          snprintf(c->err, sizeof c->err, "label rename space exhausted");
          return MG_ETOOBIG;
        }
        char *dst = s->scratch.data + s->scratch.len;
        memcpy(dst, "exported_", 9);
        memcpy(dst + 9, name.p, name.n);
        s->scratch.len += need;
        name = mg_str_n(dst, need);
        int taken = 0;
        for (size_t k = 0; k < np && !taken; k++) taken = mg_str_eq(parsed[k].name, name);
        for (size_t k = 0; k < nt && !taken; k++) taken = mg_str_eq(tl[k].name, name);
        for (size_t k = 0; k < x && !taken; k++) taken = mg_str_eq(conflicts[k].name, name);
        if (!taken) break;
      }
      conflicts[x].name = name;
      out[n++] = conflicts[x];
    }
    sort_labels(out, n);
  }
  if (job->label_limit && n > job->label_limit) {
    snprintf(c->err, sizeof c->err, "series has %zu labels, over label_limit %llu", n,
             (unsigned long long)job->label_limit);
    return MG_ETOOBIG;
  }
  return (int)n;
}

/* ---- staging ------------------------------------------------------------ */

/* The series' labels with the external labels it does not have itself
 * added: `in` as it is when there are none, else a merged copy in `buf`.
 * *n is the count in and out. */
static const mg_label_t *with_external(const mg_scrape_t *s, const mg_label_t *in, size_t *n, mg_label_t *buf) {
  if (!s->next) return in;
  memcpy(buf, in, *n * sizeof *in);
  *n = merge_missing(buf, *n, s->ext, s->next, MAX_SERIES_LABELS);
  return buf;
}

/* Encode one sample with final labels (external labels already in). */
static int stage_final(scrape_ctx_t *c, uint64_t hash, uint64_t dests, const mg_label_t *labels, size_t n, double v,
                       int64_t ts) {
  mg_scrape_t *s = c->t->s;
  if (s->trace && !c->stale_mode && !c->synthetic) s->trace(s->trace_ud, labels, n, dests, NULL, v);
  size_t off = s->staging.len;
  int rc = mg_wire_append_series(&s->staging, labels, n, v, ts);
  if (rc) {
    snprintf(c->err, sizeof c->err, "scrape too large to stage (%s)", mg_err_str(rc));
    return rc;
  }
  if (s->nentries == s->entries_cap) {
    size_t ncap = s->entries_cap ? s->entries_cap * 2 : 4096;
    void *p = mg_reallocarray(s->entries, ncap, sizeof *s->entries);
    if (!p) {
      snprintf(c->err, sizeof c->err, "out of memory staging samples");
      return MG_ENOMEM;
    }
    s->entries = p;
    s->entries_cap = ncap;
  }
  s->entries[s->nentries++] =
      (struct staged){(uint32_t)off, (uint32_t)(s->staging.len - off), hash ^ c->t->seed, dests};
  return 0;
}

static int stage(scrape_ctx_t *c, uint64_t hash, uint64_t dests, const mg_label_t *stage1, size_t n1, double v,
                 int64_t ts) {
  mg_label_t buf[MAX_SERIES_LABELS];
  const mg_label_t *labels = with_external(c->t->s, stage1, &n1, buf);
  return stage_final(c, hash, dests, labels, n1, v, ts);
}

static uint64_t labels_hash(const mg_label_t *l, size_t n) {
  uint64_t h = 0;
  for (size_t i = 0; i < n; i++) {
    h = mg_hash64(l[i].name.p, l[i].name.n, h);
    h = mg_hash64(l[i].value.p, l[i].value.n, h + 1);
  }
  return h;
}

static int remember_fresh(scrape_ctx_t *c, uint64_t hash, const mg_label_t *l, size_t n) {
  mg_scrape_t *s = c->t->s;
  if (s->nfresh == s->fresh_cap) {
    size_t ncap = s->fresh_cap ? s->fresh_cap * 2 : 1024;
    void *p = mg_reallocarray(s->fresh, ncap, sizeof *s->fresh);
    if (!p) {
      snprintf(c->err, sizeof c->err, "out of memory tracking new series");
      return MG_ENOMEM;
    }
    s->fresh = p;
    s->fresh_cap = ncap;
  }
  s->fresh[s->nfresh++] = (struct fresh){hash, labels_hash(l, n)};
  return 0;
}

static int fresh_cmp(const void *a, const void *b) {
  uint64_t x = ((const struct fresh *)a)->labels_hash, y = ((const struct fresh *)b)->labels_hash;
  return x < y ? -1 : x > y;
}

/* Was a series with these labels first seen in this scrape (under other
 * raw bytes)? s->fresh is sorted by then. */
static bool is_fresh(const mg_scrape_t *s, uint64_t labels_hash) {
  struct fresh key = {0, labels_hash};
  return s->nfresh && bsearch(&key, s->fresh, s->nfresh, sizeof key, fresh_cmp);
}

static void stage_reset(mg_scrape_t *s) {
  mg_buf_reset(&s->staging);
  s->nentries = 0;
}

static void stage_commit(mg_scrape_t *s) {
  for (size_t i = 0; s->dests && i < s->nentries; i++) {
    struct staged *e = &s->entries[i];
    for (size_t d = 0; d < s->ndests; d++)
      if (e->dests >> d & 1) mg_dest_append(s->dests[d], e->hash, s->staging.data + e->off, e->len, 1);
  }
  stage_reset(s);
}

/* ---- decisions ------------------------------------------------------------ */

static uint64_t route_mask(const mg_scrape_t *s, uint16_t route) {
  unsigned id = MG_SERIES_ROUTE_ID(route);
  if (id == MG_SERIES_ROUTE_DROP || id == ROUTE_METRIC_DROP) return 0;
  if (id >= ROUTE_FIRST && id - ROUTE_FIRST < s->nroutes) return s->route_masks[id - ROUTE_FIRST];
  return s->all_dests;
}

static bool route_dropped(uint16_t route) {
  unsigned id = MG_SERIES_ROUTE_ID(route);
  return id == MG_SERIES_ROUTE_DROP || id == ROUTE_METRIC_DROP;
}

/* The route id of a destination set (few distinct sets exist: they are
 * looked up linearly, once per new series). */
static int route_for(mg_scrape_t *s, uint64_t dests, uint16_t *out) {
  if (dests == 0) return *out = MG_SERIES_ROUTE_DROP, 0;
  if (dests == s->all_dests) return *out = MG_SERIES_ROUTE_DEFAULT, 0;
  for (size_t i = 0; i < s->nroutes; i++)
    if (s->route_masks[i] == dests) return *out = (uint16_t)(ROUTE_FIRST + i), 0;
  if (s->nroutes == MAX_ROUTES) return MG_EFULL;
  if (s->nroutes == s->routes_cap) {
    size_t ncap = s->routes_cap ? s->routes_cap * 2 : 16;
    uint64_t *p = mg_reallocarray(s->route_masks, ncap, sizeof *p);
    if (!p) return MG_ENOMEM;
    s->route_masks = p;
    s->routes_cap = ncap;
  }
  s->route_masks[s->nroutes] = dests;
  *out = (uint16_t)(ROUTE_FIRST + s->nroutes++);
  return 0;
}

/* Rewritten labels are kept with the series as (varint length, bytes)
 * name/value pairs; decoding gives views into the key store. */
static int put_varint_buf(mg_buf_t *b, uint64_t len) {
  unsigned char v[10];
  size_t m = 0;
  while (len >= 0x80) v[m++] = (unsigned char)(len | 0x80), len >>= 7;
  v[m++] = (unsigned char)len;
  return mg_buf_append(b, v, m);
}

static int encode_pairs(mg_buf_t *b, const mg_label_t *l, size_t n) {
  for (size_t i = 0; i < n; i++) {
    mg_str_t parts[2] = {l[i].name, l[i].value};
    for (int k = 0; k < 2; k++)
      if (put_varint_buf(b, parts[k].n) || mg_buf_append(b, parts[k].p, parts[k].n)) return MG_ENOMEM;
  }
  return 0;
}

/* Append one block (tag, length, label pairs) to b. */
static int encode_block(mg_buf_t *b, unsigned tag, const mg_label_t *l, size_t n) {
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    mg_str_t parts[2] = {l[i].name, l[i].value};
    for (int k = 0; k < 2; k++) {
      size_t m = parts[k].n, vl = 1;
      while (m >= 0x80) m >>= 7, vl++;
      len += vl + parts[k].n;
    }
  }
  unsigned char t = (unsigned char)tag;
  if (mg_buf_append(b, &t, 1) || put_varint_buf(b, len)) return MG_ENOMEM;
  return encode_pairs(b, l, n);
}

/* Find the block with this tag in a series' extra bytes. */
static bool find_block(mg_str_t extra, unsigned tag, mg_str_t *out) {
  const unsigned char *p = (const unsigned char *)extra.p, *end = p + extra.n;
  while (p < end) {
    unsigned t = *p++;
    size_t len = 0;
    int shift = 0;
    while (*p & 0x80) len |= (size_t)(*p++ & 0x7f) << shift, shift += 7;
    len |= (size_t)*p++ << shift;
    if (t == tag) return *out = mg_str_n((const char *)p, len), true;
    p += len;
  }
  return false;
}

static size_t decode_labels(mg_str_t in, mg_label_t *out, size_t cap) {
  const unsigned char *p = (const unsigned char *)in.p, *end = p + in.n;
  size_t n = 0;
  while (p < end && n < cap) {
    mg_str_t parts[2];
    for (int k = 0; k < 2; k++) {
      size_t len = 0;
      int shift = 0;
      while (*p & 0x80) len |= (size_t)(*p++ & 0x7f) << shift, shift += 7;
      len |= (size_t)*p++ << shift;
      parts[k] = mg_str_n((const char *)p, len);
      p += len;
    }
    out[n++] = (mg_label_t){parts[0], parts[1]};
  }
  return n;
}

static bool labels_equal(const mg_label_t *a, size_t na, const mg_label_t *b, size_t nb) {
  if (na != nb) return false;
  for (size_t i = 0; i < na; i++)
    if (!mg_str_eq(a[i].name, b[i].name) || !mg_str_eq(a[i].value, b[i].value)) return false;
  return true;
}

/* Labels after relabeling must still name a series: __name__ present and
 * every name valid (labelmap can produce invalid ones, as in Prometheus). */
static bool labels_valid(const mg_label_t *l, size_t n) {
  bool named = false;
  for (size_t i = 0; i < n; i++) {
    if (!mg_parse_valid_label_name(l[i].name)) return false;
    if (mg_str_eq_c(l[i].name, "__name__")) named = mg_parse_valid_metric_name(l[i].value);
  }
  return named;
}

/* Run rules on labels through builder lb. Returns 1 kept (result in
 * lb->v), 0 dropped, -1 error. */
static int apply_rules(const mg_relabel_t *r, mg_labels_t *lb, const mg_label_t *l, size_t n) {
  mg_labels_reset(lb);
  for (size_t i = 0; i < n; i++)
    if (mg_labels_set(lb, l[i].name, l[i].value) != 0) return -1;
  bool keep = false;
  if (mg_relabel_apply(r, lb, &keep) != 0) return -1;
  return keep && labels_valid(lb->v, lb->n) ? 1 : 0;
}

/* Decide a series once: metric_relabel_configs, then the hook (if any)
 * picks destinations and may rewrite the labels, then each destination's
 * write_relabel_configs. What differs from the labels the body gives is
 * kept with the series (blocks, see BLOCK_STAGE1), so later scrapes of it
 * run none of this. */
static int decide(scrape_ctx_t *c, mg_series_entry_t *e, const mg_parse_sample_t *ps, bool is_new,
                  const mg_label_t *built, size_t nbuilt, const char **reason) {
  target_t *t = c->t;
  mg_scrape_t *s = t->s;
  const mg_label_t *labels = built;
  size_t n = nbuilt;
  mg_series_decision_t d = {s->all_dests, NULL, 0, NULL};
  bool metric_dropped = false;
  if (t->jm->metric_relabel) {
    int k = apply_rules(t->jm->metric_relabel, &s->lb, labels, n);
    if (k <= 0) {
      metric_dropped = true;
      d.dests = 0;
      d.reason = k < 0 ? "metric_relabel_configs failed (limits)" : "dropped by metric_relabel_configs";
    } else {
      labels = s->lb.v;
      n = s->lb.n;
    }
  }
  if (d.dests && s->decide) {
    mg_series_view_t v = {labels, n, t->labels, t->nlabels, t->job->name, ps->name, MG_MTYPE_UNKNOWN, {NULL, 0}};
    /* The family's metadata, when the sample belongs to the family whose
     * HELP/TYPE lines came last (histogram and summary suffixes included). */
    if (c->meta_have && ps->name.n >= c->meta_family.n &&
        memcmp(ps->name.p, c->meta_family.p, c->meta_family.n) == 0) {
      v.type = c->meta_type;
      v.help = c->meta_help;
    }
    d.dests = s->all_dests;
    s->decide(s->decide_ud, &v, &d);
    if (d.labels) {
      labels = d.labels;
      n = d.nlabels;
    }
  }
  *reason = d.reason;
  mg_buf_reset(&s->extra);
  int rc = 0;
  if (d.dests && !labels_equal(labels, n, built, nbuilt)) rc = encode_block(&s->extra, BLOCK_STAGE1, labels, n);
  for (size_t di = 0; !rc && d.dests && di < s->ndests; di++) {
    if (!(d.dests >> di & 1) || !s->write_relabel[di]) continue;
    mg_label_t buf[MAX_SERIES_LABELS];
    size_t nf = n;
    const mg_label_t *full = with_external(s, labels, &nf, buf);
    int k = apply_rules(s->write_relabel[di], &s->lb_write, full, nf);
    if (k <= 0) d.dests &= ~((uint64_t)1 << di);
    else if (!labels_equal(s->lb_write.v, s->lb_write.n, full, nf))
      rc = encode_block(&s->extra, (unsigned)di, s->lb_write.v, s->lb_write.n);
  }
  if (!d.dests && !*reason) *reason = "dropped by write_relabel_configs";
  uint16_t route;
  if (!rc) rc = route_for(s, d.dests, &route);
  if (!rc && metric_dropped) route = ROUTE_METRIC_DROP;
  if (rc == MG_EFULL) {
    snprintf(c->err, sizeof c->err, "too many distinct destination sets (%u)", MAX_ROUTES);
    return rc;
  }
  if (!rc && s->extra.len) {
    rc = mg_series_set_extra(&t->series, e, s->extra.data, s->extra.len);
    route |= MG_SERIES_ROUTE_REWRITTEN;
  }
  if (rc) {
    snprintf(c->err, sizeof c->err, "out of memory storing a series decision");
    return MG_ENOMEM;
  }
  e->route = (uint16_t)(route | (is_new ? MG_SERIES_ROUTE_PENDING : 0));
  return 0;
}

/* Stage one sample of a known series by its cached decision: destinations
 * with labels of their own (write relabeling) get their own encoding, the
 * rest share one. built/nbuilt: the labels from the body, or NULL when the
 * series is rewritten (they are then not needed). */
static int stage_decided(scrape_ctx_t *c, const mg_series_entry_t *e, uint64_t hash, const mg_label_t *built,
                         size_t nbuilt, double v, int64_t ts) {
  mg_scrape_t *s = c->t->s;
  uint64_t dests = route_mask(s, e->route);
  if (!(e->route & MG_SERIES_ROUTE_REWRITTEN)) return stage(c, hash, dests, built, nbuilt, v, ts);
  mg_str_t extra = mg_series_extra(&c->t->series, e), blk;
  for (size_t di = 0; di < s->ndests; di++) {
    if (!(dests >> di & 1) || !find_block(extra, (unsigned)di, &blk)) continue;
    mg_label_t own[MAX_SERIES_LABELS];
    size_t n = decode_labels(blk, own, MAX_SERIES_LABELS);
    int rc = stage_final(c, hash, (uint64_t)1 << di, own, n, v, ts);
    if (rc) return rc;
    dests &= ~((uint64_t)1 << di);
  }
  if (!dests) return 0;
  if (find_block(extra, BLOCK_STAGE1, &blk)) {
    size_t n = decode_labels(blk, s->decoded, MAX_SERIES_LABELS);
    return stage(c, hash, dests, s->decoded, n, v, ts);
  }
  if (built) return stage(c, hash, dests, built, nbuilt, v, ts);
  return MG_EINVAL; /* the caller builds labels when STAGE1 is absent */
}

/* A synthetic series: name + target labels, to every destination (hooks and
 * metric relabeling do not apply to them, as in Prometheus). */
static int stage_synthetic(scrape_ctx_t *c, const char *name, double v) {
  target_t *t = c->t;
  mg_scrape_t *s = t->s;
  mg_label_t out[MAX_TARGET_LABELS * 2 + 1];
  size_t n = 0;
  out[n++] = (mg_label_t){MG_STR_LIT("__name__"), mg_str(name)};
  /* As Prometheus builds report series: for each target label in order,
   * exported_<name> is set to the (absent) scraped value, i.e. removed,
   * then <name> is set. So a target label exported_X vanishes when X is a
   * later target label (job after exported_job). */
  for (size_t i = 0; i < t->nlabels; i++) {
    mg_str_t nm = t->labels[i].name;
    for (size_t k = 0; k < n; k++)
      if (out[k].name.n == nm.n + 9 && memcmp(out[k].name.p, "exported_", 9) == 0 &&
          memcmp(out[k].name.p + 9, nm.p, nm.n) == 0) {
        out[k] = out[--n];
        break;
      }
    out[n++] = t->labels[i];
  }
  qsort(out, n, sizeof *out, label_cmp);
  uint64_t hash = mg_series_hash(name, strlen(name), 0), shared = s->all_dests;
  int rc = 0;
  c->synthetic = 1;
  /* Write relabeling applies to everything sent, synthetic series too.
   * Five series per scrape: computed each time, not cached. */
  for (size_t d = 0; d < s->ndests && !rc; d++) {
    if (!s->write_relabel[d]) continue;
    shared &= ~((uint64_t)1 << d);
    mg_label_t buf[MAX_SERIES_LABELS];
    size_t nf = n;
    const mg_label_t *full = with_external(s, out, &nf, buf);
    if (apply_rules(s->write_relabel[d], &s->lb_write, full, nf) == 1)
      rc = stage_final(c, hash, (uint64_t)1 << d, s->lb_write.v, s->lb_write.n, v, c->ts_ms);
  }
  if (!rc && shared) rc = stage(c, hash, shared, out, n, v, c->ts_ms);
  c->synthetic = 0;
  return rc;
}

/* ---- parse callbacks ---------------------------------------------------- */

static void meta_flush(scrape_ctx_t *c) {
  if (!c->meta_have) return;
  target_t *t = c->t;
  mg_str_t help = c->meta_help;
  char *tmp = NULL;
  if (help.n && memchr(help.p, '\\', help.n)) {
    tmp = mg_malloc(help.n);
    if (tmp) help = mg_str_n(tmp, mg_parse_unescape_help(c->meta_help, c->fmt, tmp));
  }
  mg_wire_append_metadata(&t->meta_next, c->meta_type, c->meta_family, help, c->meta_unit);
  mg_free(tmp);
  c->meta_have = 0;
  c->meta_help = c->meta_unit = mg_str_n(NULL, 0);
  c->meta_type = MG_MTYPE_UNKNOWN;
}

static int on_meta(void *ud, const mg_parse_meta_t *m) {
  scrape_ctx_t *c = ud;
  if (c->meta_have && !mg_str_eq(c->meta_family, m->family)) meta_flush(c);
  c->meta_family = m->family;
  c->meta_have = 1;
  switch (m->kind) {
  case MG_META_HELP: c->meta_help = m->text; break;
  case MG_META_TYPE: c->meta_type = m->type; break;
  case MG_META_UNIT: c->meta_unit = m->text; break;
  }
  return 0;
}

static int on_sample(void *ud, const mg_parse_sample_t *ps) {
  scrape_ctx_t *c = ud;
  target_t *t = c->t;
  mg_scrape_t *s = t->s;
  const mg_conf_job_t *job = t->job;
  uint64_t h = mg_series_hash(ps->series.p, ps->series.n, 0);
  mg_label_t built[MAX_SERIES_LABELS];
  if (c->stale_mode) {
    int n = build_labels(c, ps, built);
    if (n < 0) return 0; /* a key that no longer builds: nothing to mark */
    if (is_fresh(s, labels_hash(built, (size_t)n))) return 0;
    return stage_decided(c, c->gone, h, built, (size_t)n, mg_wire_stale_nan(), c->ts_ms) ? MG_ENOMEM : 0;
  }
  c->samples++;
  if (job->sample_limit && c->samples > job->sample_limit) {
    snprintf(c->err, sizeof c->err, "sample_limit exceeded (%llu)", (unsigned long long)job->sample_limit);
    return MG_ETOOBIG;
  }
  bool is_new;
  mg_series_entry_t *e = mg_series_upsert(&t->series, h, ps->series, &is_new);
  if (!e) {
    snprintf(c->err, sizeof c->err, "out of memory in series table");
    return MG_ENOMEM;
  }
  if (!is_new && e->epoch == t->series.epoch) {
    /* Same series twice in one body: Prometheus keeps the first. */
    c->duplicates++;
    return 0;
  }
  e->epoch = t->series.epoch;
  const mg_label_t *labels = NULL;
  size_t n = 0;
  const char *reason = NULL;
  if (is_new) c->added++;
  bool undecided = MG_SERIES_ROUTE_ID(e->route) == MG_SERIES_ROUTE_UNDECIDED;
  mg_str_t blk;
  if (!is_new && !undecided && (e->route & MG_SERIES_ROUTE_REWRITTEN) &&
      find_block(mg_series_extra(&t->series, e), BLOCK_STAGE1, &blk)) {
    /* Rewritten labels are cached: the body's labels are not needed. */
  } else if (!route_dropped(e->route) || is_new || undecided) {
    int nb = build_labels(c, ps, built);
    if (nb < 0) return nb;
    labels = built;
    n = (size_t)nb;
  }
  if (is_new || undecided) {
    /* New, or known but its decision was forgotten by a reload. */
    int rc = decide(c, e, ps, is_new, built, n, &reason);
    if (rc) return rc;
    if (is_new && !route_dropped(e->route)) {
      mg_str_t b1;
      const mg_label_t *l1 = built;
      size_t n1 = n;
      if ((e->route & MG_SERIES_ROUTE_REWRITTEN) && find_block(mg_series_extra(&t->series, e), BLOCK_STAGE1, &b1)) {
        n1 = decode_labels(b1, s->decoded, MAX_SERIES_LABELS);
        l1 = s->decoded;
      }
      if (remember_fresh(c, h, l1, n1) != 0) return MG_ENOMEM;
    }
  }
  if (MG_SERIES_ROUTE_ID(e->route) != ROUTE_METRIC_DROP) c->post_relabel++;
  if (route_dropped(e->route)) {
    if (s->trace) {
      mg_label_t buf[MAX_SERIES_LABELS];
      size_t nf = labels ? n : 0;
      const mg_label_t *full = labels ? with_external(s, labels, &nf, buf) : NULL;
      s->trace(s->trace_ud, full, nf, 0, reason ? reason : "dropped (cached decision)", ps->value);
    }
    return 0;
  }
  int64_t ts = (job->honor_timestamps && ps->has_timestamp) ? ps->timestamp_ms : c->ts_ms;
  return stage_decided(c, e, h, labels, n, ps->value, ts);
}

/* A series disappeared: parse its remembered key to get its labels back and
 * stage a staleness marker. */
static void on_series_gone(void *ud, const mg_series_entry_t *e, mg_str_t key) {
  scrape_ctx_t *c = ud;
  /* Dropped series were never written; pending ones were first seen by a
   * scrape that failed, so they were never written either. */
  if (route_dropped(e->route) || (e->route & MG_SERIES_ROUTE_PENDING)) return;
  mg_scrape_t *s = c->t->s;
  mg_str_t blk;
  if ((e->route & MG_SERIES_ROUTE_REWRITTEN) && find_block(mg_series_extra(&c->t->series, e), BLOCK_STAGE1, &blk)) {
    size_t n = decode_labels(blk, s->decoded, MAX_SERIES_LABELS);
    if (!is_fresh(s, labels_hash(s->decoded, n)))
      stage_decided(c, e, e->hash, NULL, 0, mg_wire_stale_nan(), c->ts_ms);
    return;
  }
  c->gone = e;
  mg_buf_t *line = &c->t->s->stale_line;
  mg_buf_reset(line);
  if (mg_buf_append(line, key.p, key.n) != 0 || mg_buf_append(line, " 0\n", 3) != 0) return;
  static const mg_parse_callbacks_t cbs = {on_sample, NULL};
  mg_parse_error_t perr;
  c->stale_mode = 1;
  mg_parse(line->data, line->len, MG_FMT_PROM_TEXT, &cbs, c, &perr);
  c->stale_mode = 0;
}

/* ---- one scrape ----------------------------------------------------------- */

static void set_health(target_t *t, int up, const char *why) {
  if (t->up != up) {
    if (up && t->up == 0) MG_INFO("scrape", "target_up", "job=%s target=%s", t->job->name, t->url);
    if (t->up == 1) mg_metric_add(t->jm->up, -1);
    if (t->up == 0) mg_metric_add(t->jm->down, -1);
    mg_metric_add(up ? t->jm->up : t->jm->down, 1);
    t->up = up;
  }
  snprintf(t->last_error, sizeof t->last_error, "%s", why ? why : "");
}

/* A body listed a series more than once: the first sample was kept and
 * the others dropped, as Prometheus does (it counts them in
 * prometheus_target_scrapes_sample_duplicate_timestamp_total). */
static void report_duplicates(target_t *t, uint64_t n) {
  mg_metric_add(t->jm->duplicates, (double)n);
  unsigned long long now = (unsigned long long)uv_now(t->s->loop);
  if (!mg_log_ratelimit(&t->last_dup_log_ms, now, 60000)) return;
  MG_WARN("scrape", "duplicate_samples",
          "job=%s target=%s dropped=%llu hint=\"the target lists a series twice in one body; the first sample is kept\"",
          t->job->name, t->url, (unsigned long long)n);
}

/* Finish a scrape: body == NULL means it failed with `why`. */
static int process(target_t *t, const char *body, size_t len, const char *ctype, int64_t ts_ms, double duration_s,
                   char *why, size_t whylen) {
  mg_scrape_t *s = t->s;
  scrape_ctx_t c;
  memset(&c, 0, sizeof c);
  c.t = t;
  c.ts_ms = ts_ms;
  stage_reset(s);
  s->nfresh = 0;
  int rc = MG_EIO;
  if (body) {
    mg_series_begin(&t->series);
    mg_buf_reset(&t->meta_next);
    mg_parse_format_t fmt = mg_parse_format_from_content_type(ctype, ctype ? strlen(ctype) : 0);
    c.fmt = fmt;
    static const mg_parse_callbacks_t cbs = {on_sample, on_meta};
    mg_parse_error_t perr = {0, 0, NULL};
    rc = mg_parse(body, len, fmt, &cbs, &c, &perr);
    meta_flush(&c);
    if (rc == MG_EPARSE && perr.msg) {
      snprintf(why, whylen, "%s body: line %u column %u: %s", fmt == MG_FMT_OPENMETRICS ? "openmetrics" : "text",
               perr.line, perr.column, perr.msg);
    } else if (rc && c.err[0]) {
      snprintf(why, whylen, "%s", c.err);
    } else if (rc) {
      snprintf(why, whylen, "%s", mg_err_str(rc));
    }
    if (rc) {
      /* Roll back: the series this body added were never committed. The
       * ones it merely re-saw keep their place and go stale below. */
      stage_reset(s);
      c.samples = c.post_relabel = c.added = 0;
    }
  }
  int ok = rc == 0;
  /* Staleness: series gone from a good scrape, or everything when down. */
  if (ok && s->nfresh) qsort(s->fresh, s->nfresh, sizeof *s->fresh, fresh_cmp);
  mg_series_sweep(&t->series, !ok, on_series_gone, &c);
  mg_series_settle(&t->series);
  if (ok) {
    for (size_t i = 0; i < s->nfresh; i++) {
      mg_series_entry_t *e = mg_series_find(&t->series, s->fresh[i].hash);
      if (e) e->route &= (uint16_t)~MG_SERIES_ROUTE_PENDING;
    }
    mg_buf_t tmp = t->meta;
    t->meta = t->meta_next;
    t->meta_next = tmp;
  }
  stage_synthetic(&c, "up", ok ? 1 : 0);
  stage_synthetic(&c, "scrape_duration_seconds", duration_s);
  stage_synthetic(&c, "scrape_samples_scraped", (double)c.samples);
  stage_synthetic(&c, "scrape_samples_post_metric_relabeling", (double)c.post_relabel);
  stage_synthetic(&c, "scrape_series_added", (double)c.added);
  stage_commit(s);
  mg_metric_add(t->jm->samples, (double)c.samples);
  mg_metric_set(s->m_active, (double)mg_scrape_active_series(s));
  if (ok && c.duplicates) report_duplicates(t, c.duplicates);
  return ok ? 0 : rc;
}

static void release_body(target_t *t) {
  mg_scrape_t *s = t->s;
  if (!t->body) return;
  if (s->nidle < MAX_IDLE_BODIES && !s->stopped) {
    mg_buf_reset(t->body);
    s->idle_bodies[s->nidle++] = t->body;
  } else {
    mg_buf_cleanup(t->body);
    mg_free(t->body);
  }
  t->body = NULL;
}

static void on_scraped(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  target_t *t = ud;
  mg_scrape_t *s = t->s;
  t->req = NULL;
  if (err == MG_ECANCELED || s->stopped || t->gone) {
    release_body(t);
    target_unref(t);
    return;
  }
  double duration = (double)(uv_hrtime() - t->start_ns) / 1e9;
  t->last_scrape_ms = t->start_wall_ms;
  t->last_duration_s = duration;
  char why[320];
  why[0] = '\0';
  int rc;
  if (err) {
    snprintf(why, sizeof why, "%s: %s", mg_err_name(err), detail ? detail : mg_err_str(err));
    rc = process(t, NULL, 0, NULL, t->start_wall_ms, duration, why, sizeof why);
  } else if (resp->status != 200) {
    snprintf(why, sizeof why, "server returned HTTP status %d", resp->status);
    rc = process(t, NULL, 0, NULL, t->start_wall_ms, duration, why, sizeof why);
  } else {
    rc = process(t, resp->body->data, resp->body->len, mg_http_response_header(resp, "content-type"),
                 t->start_wall_ms, duration, why, sizeof why);
  }
  release_body(t);
  if (rc) {
    mg_metric_inc(t->jm->fail);
    unsigned long long now = (unsigned long long)uv_now(s->loop);
    if (t->up != 0 || mg_log_ratelimit(&t->last_fail_log_ms, now, 60000)) {
      char q[400];
      MG_WARN("scrape", "scrape_failed", "job=%s target=%s err=%s reason=%s", t->job->name, t->url,
              mg_err_name(err ? err : rc), mg_log_q(q, sizeof q, why, strlen(why)));
      t->last_fail_log_ms = now;
    }
    set_health(t, 0, why);
  } else {
    mg_metric_inc(t->jm->ok);
    set_health(t, 1, NULL);
  }
  target_unref(t);
}

static void on_tick(uv_timer_t *h) {
  target_t *t = h->data;
  mg_scrape_t *s = t->s;
  if (s->stopped || t->gone) return;
  if (t->req) {
    /* timeout <= interval, so this only happens when the loop lagged. */
    MG_DEBUG("scrape", "scrape_skipped", "job=%s target=%s reason=previous_still_running", t->job->name, t->url);
    return;
  }
  if (s->nidle) {
    t->body = s->idle_bodies[--s->nidle];
  } else {
    t->body = mg_malloc(sizeof *t->body);
    if (!t->body) return;
    mg_buf_init(t->body, 0);
  }
  t->body->limit = t->job->body_size_limit ? t->job->body_size_limit : MG_SCRAPE_DEFAULT_BODY_LIMIT;
  t->start_wall_ms = mg_wall_ms();
  t->start_ns = uv_hrtime();
  mg_http_tls_opts_t tls = {
      .ca_file = t->job->tls.ca_file,
      .cert_file = t->job->tls.cert_file,
      .key_file = t->job->tls.key_file,
      .server_name = t->job->tls.server_name,
      .insecure_skip_verify = t->job->tls.insecure_skip_verify,
  };
  size_t nh = 2 + (t->auth_value ? 1 : 0);
  mg_http_request_t req = {
      .method = "GET",
      .url = t->url,
      .headers = t->headers,
      .nheaders = nh,
      .timeout_ms = t->timeout_ms,
      .max_body = t->body->limit,
      .accept_gzip = t->job->enable_compression,
      .tls = &tls,
      .body_out = t->body,
  };
  t->refs++;
  int rc = mg_http_client_request(s->http, &req, on_scraped, t, &t->req);
  if (rc) {
    t->refs--;
    t->req = NULL;
    release_body(t);
    MG_ERROR("scrape", "request_invalid", "job=%s target=%s err=%s", t->job->name, t->url, mg_err_name(rc));
  }
}

/* ---- set-up --------------------------------------------------------------- */

static int url_append_escaped(mg_buf_t *b, const char *v) {
  static const char hex[] = "0123456789ABCDEF";
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    int rc;
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
        *p == '_' || *p == '.' || *p == '~')
      rc = mg_buf_append_byte(b, *p);
    else {
      char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
      rc = mg_buf_append(b, e, 3);
    }
    if (rc) return rc;
  }
  return 0;
}


/* Free a target's memory: one never scheduled (a duplicate, an unchanged
 * rediscovered target), or one whose last reference went. */
static void target_discard(target_t *t) {
  if (!t) return;
  mg_series_cleanup(&t->series);
  mg_buf_cleanup(&t->strings);
  mg_buf_cleanup(&t->meta);
  mg_buf_cleanup(&t->meta_next);
  mg_free(t->url);
  mg_free(t);
}

/* A target lives until its timer is closed and its last request's callback
 * ran (a canceled scrape still calls back, later). */
static void target_unref(target_t *t) {
  if (--t->refs) return;
  mg_scrape_t *s = t->s;
  target_discard(t);
  scrape_unref(s);
}

/* The target's labels after target relabeling: the ones not starting with
 * "__", plus instance = __address__ when relabeling set no instance. Copied
 * into the target's own storage, sorted (the builder keeps them sorted). */
static int take_target_labels(target_t *t, const mg_labels_t *tl, mg_str_t address) {
  size_t total = address.n + 8;
  for (size_t i = 0; i < tl->n; i++) total += tl->v[i].name.n + tl->v[i].value.n;
  if (mg_buf_reserve(&t->strings, total) != 0) return MG_ENOMEM;
  bool has_instance = false;
  t->nlabels = 0;
  for (size_t i = 0; i < tl->n; i++) {
    mg_label_t l = tl->v[i];
    if (mg_str_has_prefix(l.name, "__")) continue;
    if (t->nlabels == MAX_TARGET_LABELS) return MG_ETOOBIG;
    char *np = t->strings.data + t->strings.len;
    mg_buf_append(&t->strings, l.name.p, l.name.n);
    char *vp = t->strings.data + t->strings.len;
    mg_buf_append(&t->strings, l.value.p, l.value.n);
    t->labels[t->nlabels++] = (mg_label_t){mg_str_n(np, l.name.n), mg_str_n(vp, l.value.n)};
    if (mg_str_eq_c(l.name, "instance")) has_instance = true;
  }
  if (!has_instance) {
    if (t->nlabels == MAX_TARGET_LABELS) return MG_ETOOBIG;
    char *vp = t->strings.data + t->strings.len;
    mg_buf_append(&t->strings, address.p, address.n);
    t->labels[t->nlabels++] = (mg_label_t){MG_STR_LIT("instance"), mg_str_n(vp, address.n)};
    qsort(t->labels, t->nlabels, sizeof *t->labels, label_cmp);
  }
  t->seed = 0;
  for (size_t i = 0; i < t->nlabels; i++) {
    t->seed = mg_hash64(t->labels[i].name.p, t->labels[i].name.n, t->seed);
    t->seed = mg_hash64(t->labels[i].value.p, t->labels[i].value.n, t->seed);
  }
  return 0;
}

/* The scrape URL from the relabeled target: __scheme__, __address__,
 * __metrics_path__, and the job's params where __param_<name> replaces the
 * first value of <name> (or adds it), encoded sorted by name, values in
 * order: exactly how Prometheus builds a target's URL. */
static int target_url(mg_buf_t *u, const mg_conf_job_t *job, const mg_labels_t *tl) {
  mg_str_t scheme = mg_labels_get(tl, MG_STR_LIT("__scheme__"));
  mg_str_t addr = mg_labels_get(tl, MG_STR_LIT("__address__"));
  mg_str_t path = mg_labels_get(tl, MG_STR_LIT("__metrics_path__"));
  int rc = mg_buf_printf(u, "%.*s://%.*s%.*s", (int)scheme.n, scheme.p, (int)addr.n, addr.p, (int)path.n, path.p);
  size_t np = 0, cap = job->params.n + tl->n;
  mg_label_t *pp = mg_mallocarray(cap ? cap : 1, sizeof *pp);
  if (!pp) return MG_ENOMEM;
  for (size_t i = 0; i < job->params.n; i++)
    pp[np++] = (mg_label_t){mg_str(job->params.v[i].name), mg_str(job->params.v[i].value)};
  for (size_t i = 0; i < tl->n; i++) {
    if (!mg_str_has_prefix(tl->v[i].name, "__param_")) continue;
    mg_str_t name = mg_str_n(tl->v[i].name.p + 8, tl->v[i].name.n - 8);
    size_t k = 0;
    while (k < np && !mg_str_eq(pp[k].name, name)) k++;
    if (k < np) pp[k].value = tl->v[i].value;
    else pp[np++] = (mg_label_t){name, tl->v[i].value};
  }
  /* Stable: values of one name keep their order. */
  for (size_t x = 1; x < np; x++)
    for (size_t y = x; y > 0 && mg_str_cmp(pp[y].name, pp[y - 1].name) < 0; y--) {
      mg_label_t tmp = pp[y];
      pp[y] = pp[y - 1];
      pp[y - 1] = tmp;
    }
  char sep = memchr(path.p, '?', path.n) ? '&' : '?';
  for (size_t i = 0; !rc && i < np; i++) {
    char name[300], value[4096];
    snprintf(name, sizeof name, "%.*s", (int)pp[i].name.n, pp[i].name.p);
    snprintf(value, sizeof value, "%.*s", (int)pp[i].value.n, pp[i].value.p);
    rc |= mg_buf_append_byte(u, (unsigned char)sep);
    sep = '&';
    rc |= url_append_escaped(u, name);
    rc |= mg_buf_append_byte(u, '=');
    rc |= url_append_escaped(u, value);
  }
  mg_free(pp);
  return rc ? MG_ETOOBIG : 0;
}

/* Build a target from its relabeled labels: URL, own labels, identity.
 * Not scheduled yet (target_activate does it), so a duplicate costs only
 * its memory. */
static target_t *target_new(mg_scrape_t *s, size_t jobi, const mg_labels_t *tl, uint64_t interval_ms,
                            uint64_t timeout_ms, int *err) {
  target_t *t = mg_calloc(1, sizeof *t);
  if (!t) {
    *err = MG_ENOMEM;
    return NULL;
  }
  t->s = s;
  t->jobi = jobi;
  t->jm = &s->jms[jobi];
  t->job = t->jm->job;
  t->up = -1;
  t->interval_ms = interval_ms;
  t->timeout_ms = timeout_ms;
  mg_buf_init(&t->strings, 0);
  mg_buf_init(&t->meta, 0);
  mg_buf_init(&t->meta_next, 16u << 20);
  mg_series_init(&t->series);
  mg_buf_t u;
  mg_buf_init(&u, 8192);
  int rc = target_url(&u, t->job, tl);
  if (!rc) rc = take_target_labels(t, tl, mg_labels_get(tl, MG_STR_LIT("__address__")));
  if (rc) {
    mg_buf_cleanup(&u);
    target_discard(t);
    *err = rc;
    return NULL;
  }
  t->url = mg_buf_steal(&u, NULL);
  t->ident = mg_hash64(t->url, strlen(t->url), t->seed);
  t->auth_value = t->jm->auth_value;
  snprintf(t->timeout_hdr, sizeof t->timeout_hdr, "%g", (double)timeout_ms / 1000.0);
  t->headers[0] = (mg_http_header_t){"Accept", ACCEPT_HEADER};
  t->headers[1] = (mg_http_header_t){"X-Prometheus-Scrape-Timeout-Seconds", t->timeout_hdr};
  if (t->auth_value) t->headers[2] = (mg_http_header_t){"Authorization", t->auth_value};
  return t;
}

static void target_arm(target_t *t) {
  uint64_t interval = t->interval_ms ? t->interval_ms : 60000;
  /* Stable offset per target spreads scrapes over the interval. */
  uv_timer_start(&t->timer, on_tick, t->seed % interval, interval);
}

/* Schedule a built target: from now on it is freed through its timer's
 * close. Armed at once when the engine runs already. */
static void target_activate(target_t *t) {
  mg_scrape_t *s = t->s;
  uv_timer_init(s->loop, &t->timer);
  t->timer.data = t;
  t->refs = 1;
  s->refs++;
  if (!t->is_static) mg_metric_add(t->jm->discovered, 1);
  if (s->started && !s->stopped) target_arm(t);
}

/* The labels a target starts with, as Prometheus gives them to
 * relabel_configs: __address__, __scheme__, __metrics_path__,
 * __scrape_interval__, __scrape_timeout__, __param_<name> (first value),
 * job, then the static labels. */
static int target_start_labels(mg_labels_t *lb, const mg_conf_job_t *job, const mg_conf_target_t *ct) {
  char iv[32], to[32];
  mg_conf_format_duration(job->interval_ms, iv, sizeof iv);
  mg_conf_format_duration(job->timeout_ms, to, sizeof to);
  mg_labels_reset(lb);
  int rc = mg_labels_set(lb, MG_STR_LIT("__address__"), mg_str(ct->address));
  rc |= mg_labels_set(lb, MG_STR_LIT("__scheme__"), mg_str(job->scheme));
  rc |= mg_labels_set(lb, MG_STR_LIT("__metrics_path__"), mg_str(job->metrics_path));
  rc |= mg_labels_set_copy(lb, MG_STR_LIT("__scrape_interval__"), mg_str(iv));
  rc |= mg_labels_set_copy(lb, MG_STR_LIT("__scrape_timeout__"), mg_str(to));
  for (size_t i = 0; !rc && i < job->params.n; i++) {
    char name[300];
    snprintf(name, sizeof name, "__param_%s", job->params.v[i].name);
    if (!mg_labels_get(lb, mg_str(name)).n)
      rc |= mg_labels_set_copy(lb, mg_str(name), mg_str(job->params.v[i].value));
  }
  rc |= mg_labels_set(lb, MG_STR_LIT("job"), mg_str(job->name));
  for (size_t i = 0; !rc && i < ct->labels.n; i++)
    rc |= mg_labels_set(lb, mg_str(ct->labels.v[i].name), mg_str(ct->labels.v[i].value));
  return rc ? MG_ETOOBIG : 0;
}

static void on_timer_closed(uv_handle_t *h) { target_unref(h->data); }

/* Prometheus's hashmod: MD5 of the value, its last 8 bytes as a big-endian
 * integer, modulo n. Every replica computes the same, so each target lands
 * on exactly one of them. */
static uint32_t shard_of(mg_str_t address, uint32_t n) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(address.p, address.n, md, &len, EVP_md5(), NULL);
  uint64_t v = 0;
  for (int i = 8; i < 16; i++) v = v << 8 | md[i];
  return (uint32_t)(v % n);
}

static void on_meta_timer(uv_timer_t *h);

/* A per-job metric, never NULL (a failed allocation yields the dummy). */
static mg_metric_t *metric(mg_metric_type_t type, const char *name, const char *help, const char *job, const char *k,
                           const char *v) {
  mg_metric_t *m = mg_metrics_get(type, name, help, "job", job, k, v, NULL);
  return m ? m : mg_metrics_dummy();
}

/* One target, static or discovered, through target relabeling, its
 * interval/timeout overrides and the shard choice, then built (not yet
 * scheduled). 0 with *out NULL when it is dropped, belongs to another
 * shard or comes out invalid: logged, as a warning for a static target,
 * at debug level for a discovered one (it comes back every refresh). */
static int prepare_target(mg_scrape_t *s, size_t j, const mg_conf_target_t *ct, bool discovered, target_t **out) {
  const mg_conf_job_t *job = s->jms[j].job;
  *out = NULL;
  bool keep = true;
  int rc = target_start_labels(&s->lb, job, ct);
  if (!rc) rc = mg_relabel_apply(s->jms[j].target_relabel, &s->lb, &keep);
  if (rc && (!discovered || rc == MG_ENOMEM)) {
    MG_ERROR("scrape", "target_setup_failed", "job=%s target=%s err=%s", job->name, ct->address, mg_err_name(rc));
    return rc;
  }
  if (rc) {
    MG_DEBUG("scrape", "target_invalid", "job=%s target=%s err=%s", job->name, ct->address, mg_err_name(rc));
    return 0;
  }
  if (!keep) {
    MG_DEBUG("scrape", "target_dropped", "job=%s target=%s reason=relabel_configs", job->name, ct->address);
    return 0;
  }
  /* Relabeling may move the target: interval and timeout too. */
  uint64_t iv = job->interval_ms, to = job->timeout_ms;
  char d1[64], d2[64];
  mg_str_t x = mg_labels_get(&s->lb, MG_STR_LIT("__scrape_interval__")),
           y = mg_labels_get(&s->lb, MG_STR_LIT("__scrape_timeout__"));
  snprintf(d1, sizeof d1, "%.*s", (int)x.n, x.p);
  snprintf(d2, sizeof d2, "%.*s", (int)y.n, y.p);
  mg_str_t address = mg_labels_get(&s->lb, MG_STR_LIT("__address__"));
  if (!address.n || mg_conf_parse_duration(d1, &iv) != 0 || mg_conf_parse_duration(d2, &to) != 0 || !iv || to > iv) {
    if (discovered)
      MG_DEBUG("scrape", "target_invalid", "job=%s target=%s reason=\"after relabel_configs: empty __address__ or "
               "bad __scrape_interval__/__scrape_timeout__\"", job->name, ct->address);
    else
      MG_WARN("scrape", "target_invalid", "job=%s target=%s reason=\"after relabel_configs: empty __address__ or "
              "bad __scrape_interval__/__scrape_timeout__\"", job->name, ct->address);
    return 0;
  }
  if (s->conf->shard_count > 1 && shard_of(address, s->conf->shard_count) != s->conf->shard_index) {
    MG_DEBUG("scrape", "target_other_shard", "job=%s target=%s", job->name, ct->address);
    return 0;
  }
  rc = 0;
  *out = target_new(s, j, &s->lb, iv, to, &rc);
  if (!*out) MG_ERROR("scrape", "target_setup_failed", "job=%s target=%s err=%s", job->name, ct->address,
                      mg_err_name(rc));
  return *out ? 0 : rc;
}

mg_scrape_t *mg_scrape_new(uv_loop_t *loop, mg_http_client_t *http, const mg_conf_t *conf, mg_dest_t **dests,
                           size_t ndests, int *err) {
  mg_scrape_t *s = mg_calloc(1, sizeof *s);
  if (!s) {
    *err = MG_ENOMEM;
    return NULL;
  }
  s->loop = loop;
  s->http = http;
  s->conf = conf;
  s->dests = dests;
  s->ndests = ndests;
  s->refs = 1;
  mg_buf_init(&s->staging, UINT32_MAX);
  mg_buf_init(&s->scratch, 0);
  mg_buf_init(&s->stale_line, 0);
  mg_buf_init(&s->extra, 0);
  s->all_dests = ndests >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << ndests) - 1);
  s->write_relabel = mg_calloc(ndests ? ndests : 1, sizeof *s->write_relabel);
  if (!s->write_relabel || mg_labels_init(&s->lb, 0, 0) != 0 || mg_labels_init(&s->lb_write, 0, 0) != 0) {
    *err = MG_ENOMEM;
    mg_scrape_free(s);
    return NULL;
  }
  for (size_t d = 0; d < ndests && d < conf->ndests; d++) {
    char why[300];
    if (conf->dests[d]->write_relabel_configs.n &&
        mg_relabel_compile(&conf->dests[d]->write_relabel_configs, &s->write_relabel[d], why, sizeof why) != 0) {
      MG_ERROR("scrape", "relabel_invalid", "destination=%s field=write_relabel_configs error=\"%s\"",
               conf->dests[d]->name, why);
      *err = MG_ECONFIG;
      mg_scrape_free(s);
      return NULL;
    }
  }
  for (size_t i = 0; i < conf->external_labels.n && s->next < MAX_TARGET_LABELS; i++)
    s->ext[s->next++] = (mg_label_t){mg_str(conf->external_labels.v[i].name), mg_str(conf->external_labels.v[i].value)};
  qsort(s->ext, s->next, sizeof *s->ext, label_cmp);
  s->m_active = mg_metrics_gauge("moongate_series_active", "Series seen in the last scrape of each target.", NULL);
  if (!s->m_active) s->m_active = mg_metrics_dummy();
  size_t total = 0;
  for (size_t j = 0; j < conf->njobs; j++) total += conf->jobs[j]->ntargets;
  s->targets = mg_calloc(total ? total : 1, sizeof *s->targets);
  s->jms = mg_calloc(conf->njobs ? conf->njobs : 1, sizeof *s->jms);
  s->njobs = s->jms ? conf->njobs : 0;
  if (!s->targets || !s->jms) {
    *err = MG_ENOMEM;
    mg_scrape_free(s);
    return NULL;
  }
  for (size_t j = 0; j < conf->njobs; j++) {
    const mg_conf_job_t *job = conf->jobs[j];
    job_metrics_t *jm = &s->jms[j];
    const char *jn = job->name;
    jm->ok = metric(MG_METRIC_COUNTER, "moongate_scrapes_total", "Scrapes by result.", jn, "result", "success");
    jm->fail = metric(MG_METRIC_COUNTER, "moongate_scrapes_total", "Scrapes by result.", jn, "result", "failure");
    jm->samples = metric(MG_METRIC_COUNTER, "moongate_scrape_samples_scraped_total",
                         "Sample lines read from targets' bodies.", jn, NULL, NULL);
    jm->duplicates = metric(MG_METRIC_COUNTER, "moongate_scrape_samples_duplicate_total",
                            "Samples dropped because their series came earlier in the same body.", jn, NULL, NULL);
    jm->up = metric(MG_METRIC_GAUGE, "moongate_targets", "Targets by health of their last scrape.", jn, "health", "up");
    jm->down =
        metric(MG_METRIC_GAUGE, "moongate_targets", "Targets by health of their last scrape.", jn, "health", "down");
    jm->job = job;
    char why[300];
    if (job->metric_relabel_configs.n &&
        mg_relabel_compile(&job->metric_relabel_configs, &jm->metric_relabel, why, sizeof why) != 0) {
      MG_ERROR("scrape", "relabel_invalid", "job=%s field=metric_relabel_configs error=\"%s\"", job->name, why);
      *err = MG_ECONFIG;
      mg_scrape_free(s);
      return NULL;
    }
    if (job->relabel_configs.n &&
        mg_relabel_compile(&job->relabel_configs, &jm->target_relabel, why, sizeof why) != 0) {
      MG_ERROR("scrape", "relabel_invalid", "job=%s field=relabel_configs error=\"%s\"", job->name, why);
      *err = MG_ECONFIG;
      mg_scrape_free(s);
      return NULL;
    }
    /* Read once per job (credential files are read at start and reload
     * only): discovered targets share it without touching the disk. */
    int rc = 0;
    if (job->ntargets || job->nsds) rc = mg_auth_header(&job->auth, &jm->auth_value);
    if (!rc && job->nsds) {
      jm->discovered = metric(MG_METRIC_GAUGE, "moongate_sd_discovered_targets",
                              "Targets of a job that come from service discovery (after relabeling).", jn, NULL, NULL);
      if (!(jm->srcs = mg_calloc(job->nsds, sizeof *jm->srcs))) rc = MG_ENOMEM;
      else jm->nsrcs = job->nsds;
    }
    if (!jm->discovered) jm->discovered = mg_metrics_dummy();
    for (size_t i = 0; !rc && i < job->ntargets; i++) {
      target_t *t = NULL;
      rc = prepare_target(s, j, job->targets[i], false, &t);
      if (rc || !t) continue;
      t->is_static = true;
      t->claims = 1;
      target_activate(t);
      t->index = s->ntargets;
      s->targets[s->ntargets++] = t;
    }
    if (rc) {
      MG_ERROR("scrape", "job_setup_failed", "job=%s err=%s", job->name, mg_err_name(rc));
      *err = rc;
      mg_scrape_free(s);
      return NULL;
    }
  }
  uv_timer_init(loop, &s->meta_timer);
  s->meta_timer.data = s;
  s->meta_timer_init = 1;
  s->refs++;
  return s;
}

static const unsigned char *read_varint(const unsigned char *p, const unsigned char *end, uint64_t *v) {
  *v = 0;
  for (int shift = 0; p < end && shift < 64; shift += 7) {
    unsigned char b = *p++;
    *v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return p;
  }
  return NULL;
}

/* Metadata: every destination that wants it gets one WriteRequest with the
 * metadata of every family seen, each family once (first target wins). The
 * targets' buffers hold entries written by mg_wire_append_metadata: tag,
 * length, then type (2 bytes), family-name tag, name length, name. */
static void on_meta_timer(uv_timer_t *h) {
  mg_scrape_t *s = h->data;
  mg_buf_t body;
  mg_buf_init(&body, 64u << 20);
  mg_series_table_t seen; /* family-name hashes already added */
  mg_series_init(&seen);
  for (size_t i = 0; i < s->ntargets; i++) {
    const mg_buf_t *m = &s->targets[i]->meta;
    const unsigned char *p = (const unsigned char *)m->data, *end = p + m->len;
    while (p && p < end) {
      const unsigned char *start = p;
      uint64_t len, flen;
      const unsigned char *msg = read_varint(p + 1, end, &len);
      if (!msg || len > (uint64_t)(end - msg)) break;
      p = msg + len;
      const unsigned char *name = len > 3 ? read_varint(msg + 3, p, &flen) : NULL;
      if (!name || flen > (uint64_t)(p - name)) continue;
      bool is_new;
      mg_series_upsert(&seen, mg_series_hash(name, flen, 0), mg_str_n("", 0), &is_new);
      if (is_new) mg_buf_append(&body, start, (size_t)(p - start));
    }
  }
  mg_series_cleanup(&seen);
  if (body.len)
    for (size_t d = 0; d < s->ndests; d++)
      if (mg_dest_wants_metadata(s->dests[d])) mg_dest_send_metadata(s->dests[d], body.data, body.len);
  mg_buf_cleanup(&body);
}

int mg_scrape_start(mg_scrape_t *s) {
  s->started = 1;
  for (size_t i = 0; i < s->ntargets; i++) target_arm(s->targets[i]);
  uint64_t mi = 0;
  for (size_t d = 0; d < s->ndests; d++) {
    if (!mg_dest_wants_metadata(s->dests[d])) continue;
    /* The plan's destinations carry the interval; use the shortest. */
    for (size_t k = 0; k < s->conf->ndests; k++) {
      uint64_t v = s->conf->dests[k]->metadata_send_interval_ms;
      if (v && (!mi || v < mi)) mi = v;
    }
  }
  if (mi) {
    uv_timer_start(&s->meta_timer, on_meta_timer, mi, mi);
  }
  return 0;
}

void mg_scrape_stop(mg_scrape_t *s) {
  if (s->stopped) return;
  s->stopped = 1;
  for (size_t i = 0; i < s->ntargets; i++) {
    target_t *t = s->targets[i];
    uv_timer_stop(&t->timer);
    if (t->req) mg_http_client_cancel(t->req);
  }
  uv_timer_stop(&s->meta_timer);
}

size_t mg_scrape_ntargets(const mg_scrape_t *s) { return s->ntargets; }

void mg_scrape_target_info(const mg_scrape_t *s, size_t i, mg_scrape_target_info_t *out) {
  const target_t *t = s->targets[i];
  out->job = t->job->name;
  out->url = t->url;
  out->labels = t->labels;
  out->nlabels = t->nlabels;
  out->health = t->up;
  out->last_scrape_ms = t->last_scrape_ms;
  out->last_duration_s = t->last_duration_s;
  out->last_error = t->last_error;
  out->series = t->series.count;
  out->interval_ms = t->interval_ms;
}

uint64_t mg_scrape_active_series(const mg_scrape_t *s) {
  uint64_t n = 0;
  for (size_t i = 0; i < s->ntargets; i++) n += s->targets[i]->series.count;
  return n;
}

void mg_scrape_set_decider(mg_scrape_t *s, mg_series_decide_fn fn, void *ud) {
  s->decide = fn;
  s->decide_ud = ud;
  for (size_t i = 0; i < s->ntargets; i++) mg_series_reset_routes(&s->targets[i]->series);
}

void mg_scrape_set_trace(mg_scrape_t *s, mg_scrape_trace_fn fn, void *ud) {
  s->trace = fn;
  s->trace_ud = ud;
}

static bool same_target(const target_t *a, const target_t *b) {
  if (strcmp(a->job->name, b->job->name) != 0 || strcmp(a->url, b->url) != 0 || a->nlabels != b->nlabels) return false;
  for (size_t i = 0; i < a->nlabels; i++)
    if (!mg_str_eq(a->labels[i].name, b->labels[i].name) || !mg_str_eq(a->labels[i].value, b->labels[i].value))
      return false;
  return true;
}

/* Write staleness markers for every series of a target that goes away,
 * its synthetic series included (Prometheus does the same when a target
 * disappears from service discovery or the configuration). */
static void retire_target(target_t *t) {
  mg_scrape_t *s = t->s;
  scrape_ctx_t c;
  memset(&c, 0, sizeof c);
  c.t = t;
  c.ts_ms = mg_wall_ms();
  stage_reset(s);
  s->nfresh = 0;
  mg_series_sweep(&t->series, true, on_series_gone, &c);
  if (t->up != -1) {
    static const char *const synthetic[] = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                                            "scrape_samples_post_metric_relabeling", "scrape_series_added"};
    for (size_t i = 0; i < sizeof synthetic / sizeof *synthetic; i++)
      stage_synthetic(&c, synthetic[i], mg_wire_stale_nan());
  }
  stage_commit(s);
}

/* ---- discovered targets --------------------------------------------------- */

static void raw_free(mg_conf_target_t *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    mg_free(v[i].address);
    mg_kvs_cleanup(&v[i].labels);
  }
  mg_free(v);
}

/* A copy of a source's report, kept for the next reload. */
static int raw_copy(const mg_conf_target_t *v, size_t n, mg_conf_target_t **out) {
  mg_conf_target_t *c = mg_calloc(n ? n : 1, sizeof *c);
  if (!c) return MG_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    int rc = (c[i].address = mg_strdup(v[i].address ? v[i].address : "")) ? 0 : MG_ENOMEM;
    for (size_t k = 0; !rc && k < v[i].labels.n; k++)
      rc = mg_kvs_add(&c[i].labels, v[i].labels.v[k].name, v[i].labels.v[k].value);
    if (rc) {
      raw_free(c, i + 1);
      return rc;
    }
  }
  *out = c;
  return 0;
}

/* The same report as last time (same targets, labels, order)? Then the
 * same targets would come out: relabeling them all again (some
 * microseconds each) is skipped. */
static bool raw_same(const sd_source_t *src, const mg_conf_target_t *v, size_t n) {
  if (!src->reported || src->nraw != n) return false;
  for (size_t i = 0; i < n; i++) {
    const mg_conf_target_t *a = &src->raw[i], *b = &v[i];
    if (strcmp(a->address, b->address ? b->address : "") != 0 || a->labels.n != b->labels.n) return false;
    for (size_t k = 0; k < a->labels.n; k++)
      if (strcmp(a->labels.v[k].name, b->labels.v[k].name) != 0 ||
          strcmp(a->labels.v[k].value, b->labels.v[k].value) != 0)
        return false;
  }
  return true;
}

/* A discovered target no source reports any more leaves: staleness
 * markers for its series, then its timer closes (its memory goes when a
 * scrape in flight has called back). */
static void drop_target(target_t *t) {
  retire_target(t);
  if (t->up == 1) mg_metric_add(t->jm->up, -1);
  if (t->up == 0) mg_metric_add(t->jm->down, -1);
  t->up = -1;
  mg_metric_add(t->jm->discovered, -1);
  t->gone = true;
  uv_timer_stop(&t->timer);
  if (t->req) mg_http_client_cancel(t->req);
  uv_close((uv_handle_t *)&t->timer, on_timer_closed);
}

static int ident_cmp(const void *a, const void *b) {
  uint64_t x = (*(target_t *const *)a)->ident, y = (*(target_t *const *)b)->ident;
  return x < y ? -1 : x > y;
}

/* In v (sorted by ident), a target equal to t (same URL and labels). */
static target_t *find_same(target_t **v, size_t n, const target_t *t) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (v[mid]->ident < t->ident) lo = mid + 1;
    else hi = mid;
  }
  for (; lo < n && v[lo]->ident == t->ident; lo++)
    if (v[lo] != t && same_target(v[lo], t)) return v[lo];
  return NULL;
}

/* Relabel a report into the targets it means, each once (Prometheus
 * dedupes identical targets within a job), each either a target the job
 * has already (static or from any source) or a new, unscheduled one.
 * *res holds them; on error nothing is left allocated. */
static int resolve_report(mg_scrape_t *s, size_t job, const mg_conf_target_t *v, size_t n, target_t ***res,
                          size_t *nres, size_t *nnew) {
  target_t **cand = mg_calloc(n ? n : 1, sizeof *cand);
  target_t **have = mg_calloc(s->ntargets ? s->ntargets : 1, sizeof *have);
  size_t nc = 0, nh = 0;
  int rc = cand && have ? 0 : MG_ENOMEM;
  for (size_t i = 0; !rc && i < n; i++) {
    target_t *t = NULL;
    rc = prepare_target(s, job, &v[i], true, &t);
    if (t) cand[nc++] = t;
  }
  if (rc) {
    for (size_t i = 0; i < nc; i++) target_discard(cand[i]);
    mg_free(cand);
    mg_free(have);
    return rc;
  }
  for (size_t i = 0; i < s->ntargets; i++)
    if (s->targets[i]->jobi == job) have[nh++] = s->targets[i];
  qsort(have, nh, sizeof *have, ident_cmp);
  qsort(cand, nc, sizeof *cand, ident_cmp);
  size_t nu = 0;
  *nnew = 0;
  for (size_t i = 0; i < nc; i++) {
    target_t *t = cand[i];
    /* Earlier duplicates of this report are already in cand[0..nu). */
    if (find_same(cand, nu, t)) {
      target_discard(t);
      continue;
    }
    target_t *e = find_same(have, nh, t);
    if (e) {
      target_discard(t);
      t = e;
    } else {
      (*nnew)++;
    }
    cand[nu++] = t; /* still sorted by ident: the idents are equal */
  }
  mg_free(have);
  *res = cand;
  *nres = nu;
  return 0;
}

/* The targets array after a change to job `job`: the survivors in their
 * order, the new ones at the end of the job's group (jobs stay grouped, in
 * plan order, for the status page). Indexes renumbered. */
static void rebuild_targets(mg_scrape_t *s, target_t **out, size_t job, target_t **added, size_t nadded) {
  size_t n = 0;
  bool placed = false;
  for (size_t i = 0; i < s->ntargets; i++) {
    target_t *t = s->targets[i];
    if (!placed && t->jobi > job) {
      for (size_t k = 0; k < nadded; k++) out[n++] = added[k];
      placed = true;
    }
    if (!t->gone) out[n++] = t;
  }
  for (size_t k = 0; !placed && k < nadded; k++) out[n++] = added[k];
  for (size_t i = 0; i < n; i++) out[i]->index = i;
  mg_free(s->targets);
  s->targets = out;
  s->ntargets = n;
}

int mg_scrape_set_discovered(mg_scrape_t *s, size_t job, size_t source, const mg_conf_target_t *v, size_t n) {
  if (job >= s->njobs || source >= s->jms[job].nsrcs) return MG_EINVAL;
  if (s->stopped) return MG_ECLOSED;
  job_metrics_t *jm = &s->jms[job];
  sd_source_t *src = &jm->srcs[source];
  if (n > MG_CONF_MAX_TARGETS) {
    MG_WARN("scrape", "discovered_too_many", "job=%s source=%zu targets=%zu max=%d hint=\"previous targets kept\"",
            jm->job->name, source, n, MG_CONF_MAX_TARGETS);
    return MG_ETOOBIG;
  }
  if (raw_same(src, v, n)) return 0;
  mg_conf_target_t *raw = NULL;
  target_t **res = NULL, **added = NULL, **arr = NULL;
  size_t nres = 0, nnew = 0;
  int rc = raw_copy(v, n, &raw);
  if (!rc) rc = resolve_report(s, job, v, n, &res, &nres, &nnew);
  if (!rc) {
    added = mg_calloc(nnew ? nnew : 1, sizeof *added);
    arr = mg_calloc(s->ntargets + nnew + 1, sizeof *arr);
    if (!added || !arr) rc = MG_ENOMEM;
  }
  if (rc) {
    for (size_t i = 0; i < nres; i++)
      if (!res[i]->refs) target_discard(res[i]); /* new, never scheduled */
    mg_free(res);
    mg_free(added);
    mg_free(arr);
    raw_free(raw, raw ? n : 0);
    MG_WARN("scrape", "discovered_update_failed", "job=%s source=%zu err=%s hint=\"previous targets kept\"",
            jm->job->name, source, mg_err_name(rc));
    return rc;
  }
  /* From here nothing fails. Claims first, so a target both lists hold
   * never reaches zero. */
  size_t na = 0, removed = 0;
  for (size_t i = 0; i < nres; i++) {
    target_t *t = res[i];
    if (!t->refs) {
      target_activate(t);
      added[na++] = t;
    }
    t->claims++;
  }
  for (size_t i = 0; i < src->n; i++)
    if (--src->v[i]->claims == 0) {
      drop_target(src->v[i]);
      removed++;
    }
  rebuild_targets(s, arr, job, added, na);
  mg_free(added);
  mg_free(src->v);
  src->v = res;
  src->n = nres;
  raw_free(src->raw, src->nraw);
  src->raw = raw;
  src->nraw = n;
  src->reported = true;
  mg_metric_set(s->m_active, (double)mg_scrape_active_series(s));
  if (na || removed)
    MG_INFO("scrape", "targets_discovered", "job=%s source=%zu kind=%s reported=%zu added=%zu removed=%zu targets=%zu",
            jm->job->name, source, jm->job->sds[source]->kind, n, na, removed, nres);
  return 0;
}

/* Discovery across a reload. The new engine has no discovered targets
 * until its providers report: left so, the pairing below would retire
 * every discovered target of the old engine (staleness markers) and the
 * first report would bring them back with new series tables, a gap in
 * every discovered series. So a source of the new plan whose options
 * equal those of a source of the same job in the old plan (kind and
 * option tree; a Lua function counts as the same source when its options
 * do) starts from that source's last report, relabeled under the new
 * rules, and the pairing moves the series tables over. Its provider's
 * first report then replaces the list like any later report: unchanged
 * targets keep their series, vanished ones get staleness markers. A
 * source whose options changed starts empty: its old targets go stale
 * here and what it discovers starts afresh, as Prometheus does for a
 * changed discovery config. */
static void carry_discovered(mg_scrape_t *s, const mg_scrape_t *old) {
  for (size_t j = 0; j < s->njobs; j++) {
    const mg_conf_job_t *job = s->jms[j].job;
    for (size_t oj = 0; oj < old->njobs && s->jms[j].nsrcs; oj++) {
      const job_metrics_t *om = &old->jms[oj];
      if (strcmp(om->job->name, job->name) != 0) continue;
      bool *used = mg_calloc(om->nsrcs ? om->nsrcs : 1, sizeof *used);
      if (!used) return; /* out of memory: the sources start empty, as if changed */
      for (size_t i = 0; i < job->nsds; i++)
        for (size_t k = 0; k < om->nsrcs; k++) {
          const mg_conf_sd_t *a = job->sds[i], *b = om->job->sds[k];
          if (used[k] || !om->srcs[k].reported || strcmp(a->kind, b->kind) != 0 ||
              !mg_conf_val_equal(a->opts, b->opts))
            continue;
          used[k] = true;
          mg_scrape_set_discovered(s, j, i, om->srcs[k].raw, om->srcs[k].nraw);
          break;
        }
      mg_free(used);
      break;
    }
  }
}

void mg_scrape_adopt(mg_scrape_t *s, mg_scrape_t *old) {
  mg_scrape_stop(old);
  carry_discovered(s, old);
  /* Pair targets by identity: the old ones sorted by a hash of URL and
   * labels, then compared in full (job included). */
  for (size_t i = 0; i < old->ntargets; i++) old->targets[i]->index = SIZE_MAX;
  target_t **byid = mg_mallocarray(old->ntargets ? old->ntargets : 1, sizeof *byid);
  if (byid) {
    memcpy(byid, old->targets, old->ntargets * sizeof *byid);
    qsort(byid, old->ntargets, sizeof *byid, ident_cmp);
  }
  for (size_t i = 0; byid && i < s->ntargets; i++) {
    target_t *t = s->targets[i];
    size_t k = 0, hi = old->ntargets;
    while (k < hi) {
      size_t mid = k + (hi - k) / 2;
      if (byid[mid]->ident < t->ident) k = mid + 1;
      else hi = mid;
    }
    for (; k < old->ntargets && byid[k]->ident == t->ident; k++) {
      target_t *o = byid[k];
      if (o->index != SIZE_MAX || !same_target(t, o)) continue;
      o->index = i; /* adopted */
      mg_series_table_t tmp = t->series;
      t->series = o->series;
      o->series = tmp;
      mg_series_reset_routes(&t->series);
      mg_buf_t m = t->meta;
      t->meta = o->meta;
      o->meta = m;
      t->up = o->up;
      if (t->up == 1) mg_metric_add(t->jm->up, 1);
      if (t->up == 0) mg_metric_add(t->jm->down, 1);
      break;
    }
  }
  /* Out of memory: nothing is paired; the old targets go stale below and
   * the new ones start afresh. */
  mg_free(byid);
  for (size_t k = 0; k < old->ntargets; k++) {
    target_t *o = old->targets[k];
    if (o->up == 1) mg_metric_add(o->jm->up, -1);
    if (o->up == 0) mg_metric_add(o->jm->down, -1);
    if (!o->is_static) mg_metric_add(o->jm->discovered, -1);
    if (o->index == SIZE_MAX) retire_target(o);
    o->up = -1;
  }
}

int mg_scrape_ingest(mg_scrape_t *s, size_t target_index, const char *body, size_t len, const char *content_type,
                     int64_t ts_ms, char *errbuf, size_t errlen) {
  if (target_index >= s->ntargets) return MG_EINVAL;
  char why[320] = "";
  int rc = process(s->targets[target_index], body, len, content_type, ts_ms, 0.0, why, sizeof why);
  if (errbuf && errlen) snprintf(errbuf, errlen, "%s", why);
  return rc;
}

static void scrape_unref(mg_scrape_t *s) {
  if (--s->refs) return;
  for (size_t i = 0; i < s->nidle; i++) {
    mg_buf_cleanup(s->idle_bodies[i]);
    mg_free(s->idle_bodies[i]);
  }
  mg_buf_cleanup(&s->staging);
  mg_buf_cleanup(&s->scratch);
  mg_buf_cleanup(&s->stale_line);
  mg_free(s->entries);
  mg_free(s->fresh);
  mg_free(s->route_masks);
  mg_buf_cleanup(&s->extra);
  for (size_t d = 0; s->write_relabel && d < s->ndests; d++) mg_relabel_free(s->write_relabel[d]);
  mg_free(s->write_relabel);
  for (size_t j = 0; s->jms && j < s->njobs; j++) mg_relabel_free(s->jms[j].metric_relabel);
  mg_labels_cleanup(&s->lb);
  mg_labels_cleanup(&s->lb_write);
  mg_free(s->targets);
  for (size_t j = 0; s->jms && j < s->njobs; j++) {
    job_metrics_t *jm = &s->jms[j];
    mg_relabel_free(jm->target_relabel);
    mg_mem_free_secret(jm->auth_value);
    for (size_t i = 0; i < jm->nsrcs; i++) {
      mg_free(jm->srcs[i].v);
      raw_free(jm->srcs[i].raw, jm->srcs[i].nraw);
    }
    mg_free(jm->srcs);
  }
  mg_free(s->jms);
  mg_free(s);
}

static void on_meta_timer_closed(uv_handle_t *h) { scrape_unref(h->data); }

void mg_scrape_free(mg_scrape_t *s) {
  if (!s) return;
  mg_scrape_stop(s);
  for (size_t i = 0; i < s->ntargets; i++) uv_close((uv_handle_t *)&s->targets[i]->timer, on_timer_closed);
  if (s->meta_timer_init) uv_close((uv_handle_t *)&s->meta_timer, on_meta_timer_closed);
  scrape_unref(s);
}
