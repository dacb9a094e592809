/* mg_remote_write: per-destination shards. Each shard has an open batch
 * (a WriteRequest body under construction) and at most one sealed,
 * snappy-compressed request being sent (`cur`), so the samples of one
 * series are delivered in order.
 *
 * Where sealed batches wait: with a durable buffer (mg_dest_open_buffer)
 * in the destination's WAL, read back one at a time when the shard is
 * free, so memory stays bounded however long the receiver is down; a
 * batch the WAL could not take (disk full) waits in the shard's memory
 * FIFO, remembering the WAL id it must follow. Without one, in the memory
 * FIFO only. The FIFOs of all shards are bounded by MAX_QUEUED_BYTES; past
 * it the oldest batch is dropped. */
#include "mg_remote_write.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mg_auth.h"
#include "mg_creds.h"
#include "mg_err.h"
#include "mg_log.h"
#include "mg_loop.h"
#include "mg_mem.h"
#include "mg_metrics.h"
#include "mg_sigv4.h"
#include "mg_sink.h"
#include "mg_wal.h"
#include "mg_wire.h"

/* In-memory budget of compressed requests per destination. At ~48 bytes
 * per sample on the wire this holds ~5.5 M samples (minutes of a large
 * fleet's data) before the oldest batch is dropped. */
#define MAX_QUEUED_BYTES (256u << 20)
/* A Retry-After beyond this is treated as this (a misconfigured receiver
 * must not park a destination for hours). */
#define MAX_RETRY_AFTER_MS (5u * 60u * 1000u)
#define MAX_ERROR_BODY_LOG 512

/* How often the durable buffer is fsynced and its figures published, and
 * how often its acknowledgements are checkpointed (after a crash, what was
 * delivered since the last checkpoint is sent again). */
#define BUFFER_SYNC_MS 1000u
#define BUFFER_CHECKPOINT_MS 10000u
/* Resharding: how often the shard count is reconsidered (10 s, as
 * Prometheus), the busy fraction it aims at, and how far below the count
 * the need must fall before shards are given back. */
#define RESHARD_MS 10000u
#define RESHARD_AIM 0.6
#define RESHARD_HIGH 0.8
#define RESHARD_DOWN 0.7

typedef struct record {
  struct record *next;
  uint32_t nsamples;
  size_t len;
  char *data;
  uint64_t wal_id;   /* its WAL record (ack it when finished); 0: memory only */
  uint64_t *merged;  /* further WAL records sent in the same request (coalesced) */
  uint32_t nmerged;
  uint64_t order_id; /* memory only: WAL records below this id go first */
  uint64_t epoch;    /* memory only: the shard layout it was sealed under */
} record_t;

typedef struct shard {
  mg_dest_t *d;
  uint32_t idx;
  mg_buf_t open;
  uint32_t open_samples;
  uv_timer_t batch_timer; /* batch_send_deadline */
  uv_timer_t retry_timer; /* backoff */
  record_t *cur;        /* being sent or waiting to be retried */
  record_t *head, *tail; /* memory FIFO (see the top of the file) */
  mg_http_req_t *req;    /* non-NULL while cur is in flight */
  mg_creds_value_t *signed_with; /* credentials of the request in flight */
  mg_buf_t sig_debug;            /* canonical request + string to sign (debug) */
  uint32_t attempts;
  int backing_off;
  uint64_t sent_ms; /* uv_now() when cur went out */
} shard_t;

struct mg_dest {
  uv_loop_t *loop;
  mg_http_client_t *http;
  const mg_conf_dest_t *conf;
  mg_sink_t *sink; /* MG_DEST_STDOUT / MG_DEST_FILE */
  mg_buf_t zbuf;   /* snappy output of the batch being sealed (reused) */
  shard_t *shards;
  uint32_t nshards; /* active: appends go to shards[0..nshards) */
  uint32_t nalloc;  /* allocated (max_shards): inactive ones finish what they hold */
  mg_http_header_t *headers;
  size_t nheaders;
  char *auth_value; /* secret: "Basic …" or "<type> <credentials>" */
  /* SigV4 (AMP): credentials, the derived-key cache, and the URL split the
   * way the request goes on the wire (the Host header is signed). */
  mg_creds_t *creds;
  mg_creds_waiter_t creds_waiter;
  bool creds_waiting;
  mg_sigv4_key_cache_t keys;
  char *sig_host, *sig_path, *sig_query, *sig_region, *sig_service;
  /* Durable buffer (NULL: memory only). Syncs run on the thread pool, one
   * at a time; the work request holds a reference. */
  mg_wal_t *wal;
  char *wal_dir;
  mg_wal_opts_t wal_opts;
  uv_timer_t sync_timer;
  uv_work_t sync_work;
  uv_check_t seal_check; /* seals what this loop iteration appended */
  bool sync_running, sync_timer_init, seal_armed;
  mg_wal_stats_t wal_seen; /* counters already turned into metrics */
  /* Resharding. A series' batches leave in order through one shard; when
   * the count changes a series may move to another shard, so batches
   * sealed under the previous layout go first: in the WAL by its run
   * barrier, in memory by epoch (records of an earlier epoch still pending
   * hold the newer ones back). */
  uv_timer_t reshard_timer;
  uint64_t epoch, old_pending;
  uint64_t iv_in, iv_out, iv_reqs, iv_busy_ms, iv_failures; /* during the current interval */
  uint64_t tick_ms, pending_at_tick;
  char last_error[300];     /* for the status page; "" after a success */
  int64_t last_success_ms;
  size_t queued_bytes;
  uint64_t pending_samples;
  /* lifecycle */
  int closing, draining;
  unsigned refs; /* open handles + requests in flight + 1 while not freed */
  uv_timer_t drain_timer;
  int drain_timer_active;
  uint64_t drain_deadline;
  void (*drain_done)(void *ud);
  void *drain_ud;
  /* One rate limit per kind of trouble, so a burst of one kind does not
   * hide the first message of another. */
  unsigned long long last_full_log_ms, last_retry_log_ms, last_reject_log_ms;
  /* metrics */
  mg_metric_t *m_sent, *m_bytes, *m_retries, *m_pending, *m_drop_full, *m_drop_4xx, *m_drop_shutdown,
      *m_drop_sink, *m_last_success, *m_shards, *m_shards_desired, *m_queued_bytes, *m_in;
  mg_metric_t *m_buf_bytes, *m_buf_records, *m_buf_degraded, *m_buf_recovered, *m_buf_write_errors,
      *m_buf_sync_errors, *m_drop_buffer_full, *m_drop_too_old, *m_drop_corrupt;
};

static void dest_unref(mg_dest_t *d);
static void kick(shard_t *s);
static void check_drained(mg_dest_t *d);

static mg_metric_t *metric_or_dummy(mg_metric_t *m) { return m ? m : mg_metrics_dummy(); }

static mg_metric_t *dropped_metric(const char *dest, const char *reason) {
  return metric_or_dummy(mg_metrics_counter("moongate_remote_write_samples_dropped_total",
                                            "Samples dropped and never delivered, by reason.", "destination", dest,
                                            "reason", reason, NULL));
}

static void on_handle_closed(uv_handle_t *h) { dest_unref(h->data); }

static bool sigv4_debug;
void mg_remote_write_sigv4_debug(bool on) { sigv4_debug = on; }

/* Split the URL the way the HTTP client sends it: Host is the authority as
 * written, the path and query as written (SigV4 signs exactly those). */
static int sig_split_url(mg_dest_t *d, const char *url) {
  const char *p = strstr(url, "://");
  if (!p) return MG_EINVAL;
  p += 3;
  size_t alen = strcspn(p, "/?#");
  const char *rest = p + alen;
  size_t plen = strcspn(rest, "?#");
  d->sig_host = mg_strndup(p, alen);
  d->sig_path = plen ? mg_strndup(rest, plen) : mg_strdup("/");
  d->sig_query = rest[plen] == '?' ? mg_strndup(rest + plen + 1, strcspn(rest + plen + 1, "#")) : mg_strdup("");
  return d->sig_host && d->sig_path && d->sig_query ? 0 : MG_ENOMEM;
}

/* The region of an AMP endpoint, aps-workspaces.<region>.amazonaws.com,
 * when the configuration names none. */
static char *region_from_host(const char *host) {
  const char *pre = "aps-workspaces.";
  if (strncmp(host, pre, strlen(pre)) != 0) return NULL;
  const char *r = host + strlen(pre), *dot = strchr(r, '.');
  return dot && dot > r ? mg_strndup(r, (size_t)(dot - r)) : NULL;
}

static void on_creds_ready(void *ud, int err);
static void on_reshard_tick(uv_timer_t *t);

mg_dest_t *mg_dest_new(uv_loop_t *loop, mg_http_client_t *http, const mg_conf_dest_t *conf, int *err) {
  mg_dest_t *d = mg_calloc(1, sizeof *d);
  if (!d) {
    *err = MG_ENOMEM;
    return NULL;
  }
  d->loop = loop;
  d->http = http;
  d->conf = conf;
  d->refs = 1;
  int rc = 0;
  if (conf->kind == MG_DEST_STDOUT || conf->kind == MG_DEST_FILE) {
    d->sink = mg_sink_new(loop, conf->kind == MG_DEST_FILE ? conf->path : NULL, &rc);
    if (!d->sink) goto fail;
  } else {
    rc = mg_auth_header(&conf->auth, &d->auth_value);
    if (rc) {
      MG_ERROR("remote_write", "auth_setup_failed", "destination=%s err=%s hint=\"check password_file/credentials_file\"",
               conf->name, mg_err_name(rc));
      goto fail;
    }
    size_t nh = 3 + conf->headers.n + (d->auth_value ? 1 : 0);
    d->headers = mg_calloc(nh, sizeof *d->headers);
    if (!d->headers) {
      rc = MG_ENOMEM;
      goto fail;
    }
    /* The headers remote write 1.0 requires. */
    d->headers[d->nheaders++] = (mg_http_header_t){"Content-Encoding", "snappy"};
    d->headers[d->nheaders++] = (mg_http_header_t){"Content-Type", "application/x-protobuf"};
    d->headers[d->nheaders++] = (mg_http_header_t){"X-Prometheus-Remote-Write-Version", "0.1.0"};
    for (size_t i = 0; i < conf->headers.n; i++)
      d->headers[d->nheaders++] = (mg_http_header_t){conf->headers.v[i].name, conf->headers.v[i].value};
    if (d->auth_value) d->headers[d->nheaders++] = (mg_http_header_t){"Authorization", d->auth_value};
    if (conf->sigv4.enabled) {
      rc = sig_split_url(d, conf->url);
      if (!rc) {
        d->sig_region = conf->sigv4.region ? mg_strdup(conf->sigv4.region) : region_from_host(d->sig_host);
        d->sig_service = mg_strdup(conf->sigv4.service ? conf->sigv4.service : "aps");
        if (!d->sig_region) {
          MG_ERROR("remote_write", "sigv4_no_region", "destination=%s hint=\"set region: the URL is not an AMP "
                   "endpoint it could be read from\"", conf->name);
          rc = MG_ECONFIG;
        }
      }
      mg_sigv4_key_cache_init(&d->keys);
      if (!rc) d->creds = mg_creds_new(loop, http, &conf->sigv4.creds, d->sig_region, conf->name, NULL, &rc);
      if (rc) goto fail;
    }
  }
  /* Start with min_shards; resharding moves between min and max. */
  d->nshards = d->sink ? 1 : (conf->queue.min_shards ? conf->queue.min_shards : 1);
  d->nalloc = d->sink ? 1 : (conf->queue.max_shards > d->nshards ? conf->queue.max_shards : d->nshards);
  if (d->nalloc > MG_WAL_MAX_SHARDS) d->nalloc = MG_WAL_MAX_SHARDS;
  if (d->nshards > d->nalloc) d->nshards = d->nalloc;
  d->shards = mg_calloc(d->nalloc, sizeof *d->shards);
  if (!d->shards) {
    rc = MG_ENOMEM;
    goto fail;
  }
  size_t batch_limit = 64u << 20;
  for (uint32_t i = 0; i < d->nalloc; i++) {
    shard_t *s = &d->shards[i];
    s->d = d;
    s->idx = i;
    mg_buf_init(&s->open, batch_limit);
    uv_timer_init(loop, &s->batch_timer);
    uv_timer_init(loop, &s->retry_timer);
    s->batch_timer.data = s->retry_timer.data = d;
    d->refs += 2;
  }
  uv_timer_init(loop, &d->drain_timer);
  d->drain_timer.data = d;
  d->refs++;
  uv_timer_init(loop, &d->reshard_timer);
  d->reshard_timer.data = d;
  d->refs++;
  d->tick_ms = uv_now(loop);
  if (!d->sink && d->nalloc > 1) uv_timer_start(&d->reshard_timer, on_reshard_tick, RESHARD_MS, RESHARD_MS);
  const char *n = conf->name;
  d->m_sent = metric_or_dummy(mg_metrics_counter("moongate_remote_write_samples_sent_total",
                                                 "Samples delivered (2xx from the receiver, or written by a local sink).",
                                                 "destination", n, NULL));
  d->m_bytes = metric_or_dummy(mg_metrics_counter("moongate_remote_write_bytes_sent_total",
                                                  "Request body bytes delivered (compressed).", "destination", n, NULL));
  d->m_retries = metric_or_dummy(mg_metrics_counter("moongate_remote_write_retries_total",
                                                    "Requests retried after a 5xx, 429 or network error.", "destination",
                                                    n, NULL));
  d->m_pending = metric_or_dummy(mg_metrics_gauge("moongate_remote_write_samples_pending",
                                                  "Samples accepted and not yet delivered.", "destination", n, NULL));
  d->m_in = metric_or_dummy(mg_metrics_counter("moongate_remote_write_samples_in_total",
                                               "Samples handed to the destination (after routing and write "
                                               "relabeling).",
                                               "destination", n, NULL));
  d->m_queued_bytes = metric_or_dummy(mg_metrics_gauge("moongate_remote_write_memory_bytes",
                                                      "Compressed batches held in memory (being sent, or waiting "
                                                      "without a durable buffer).",
                                                      "destination", n, NULL));
  d->m_last_success = metric_or_dummy(mg_metrics_gauge("moongate_remote_write_last_success_timestamp_seconds",
                                                       "Time of the last delivered request.", "destination", n, NULL));
  d->m_drop_full = dropped_metric(n, "queue_full");
  d->m_drop_4xx = dropped_metric(n, "http_4xx");
  d->m_drop_shutdown = dropped_metric(n, "shutdown");
  d->m_drop_sink = dropped_metric(n, "sink_error");
  d->m_shards = metric_or_dummy(mg_metrics_gauge("moongate_remote_write_shards",
                                                 "Shards sending in parallel (one request in flight each).",
                                                 "destination", n, NULL));
  mg_metric_set(d->m_shards, d->nshards);
  d->m_shards_desired = metric_or_dummy(mg_metrics_gauge("moongate_remote_write_shards_desired",
                                                         "Shards the last reshard computation asked for.",
                                                         "destination", n, NULL));
  mg_metric_set(d->m_shards_desired, d->nshards);
  for (uint32_t i = 0; i < d->nalloc; i++) mg_buf_init(&d->shards[i].sig_debug, 64u << 10);
  mg_buf_init(&d->zbuf, 0);
  return d;
fail:
  mg_creds_free(d->creds);
  mg_free(d->sig_host);
  mg_free(d->sig_path);
  mg_free(d->sig_query);
  mg_free(d->sig_region);
  mg_free(d->sig_service);
  mg_sink_free(d->sink);
  mg_mem_free_secret(d->auth_value);
  mg_free(d->headers);
  mg_free(d);
  *err = rc;
  return NULL;
}

const char *mg_dest_name(const mg_dest_t *d) { return d->conf->name; }

void mg_dest_rebind(mg_dest_t *d, const mg_conf_dest_t *conf) { d->conf = conf; }

/* Bytes of sealed batches held in memory (the memory FIFOs and the
 * batches being sent). */
static void queued_add(mg_dest_t *d, int64_t delta) {
  d->queued_bytes = (size_t)((int64_t)d->queued_bytes + delta);
  mg_metric_set(d->m_queued_bytes, (double)d->queued_bytes);
}

static void set_pending(mg_dest_t *d, int64_t delta) {
  d->pending_samples = (uint64_t)((int64_t)d->pending_samples + delta);
  mg_metric_set(d->m_pending, (double)d->pending_samples);
}

static void free_record(record_t *r) {
  if (!r) return;
  mg_free(r->merged);
  mg_free(r->data);
  mg_free(r);
}

static void kick_all(mg_dest_t *d);

/* A memory record sealed before the last reshard is finished or dropped:
 * when it was the last one, the newer ones may go. */
static void release_record(mg_dest_t *d, record_t *r) {
  if (!r->wal_id && r->epoch != d->epoch && d->old_pending && --d->old_pending == 0 && !d->closing) kick_all(d);
  free_record(r);
}

/* Drop the oldest batches of s's memory FIFO (never the one being sent)
 * until `need` more bytes fit. */
static int make_room(shard_t *s, size_t need) {
  mg_dest_t *d = s->d;
  while (d->queued_bytes + need > MAX_QUEUED_BYTES) {
    record_t *victim = s->head;
    if (!victim) return -1;
    s->head = victim->next;
    if (!s->head) s->tail = NULL;
    queued_add(d, -(int64_t)victim->len);
    mg_metric_add(d->m_drop_full, victim->nsamples);
    set_pending(d, -(int64_t)victim->nsamples);
    if (mg_log_ratelimit(&d->last_full_log_ms, (unsigned long long)uv_now(d->loop), 10000))
      MG_WARN("remote_write", "queue_full", "destination=%s dropped_samples=%u hint=\"receiver too slow or down\"",
              d->conf->name, victim->nsamples);
    release_record(d, victim);
  }
  return 0;
}

/* ---- durable buffer ---- */

/* Turn the WAL's counters into metrics: what its caps dropped or recovery
 * found damaged leaves the pending count. */
static void publish_buffer(mg_dest_t *d) {
  mg_wal_stats_t st, *o = &d->wal_seen;
  mg_wal_stats(d->wal, &st);
  uint64_t full = st.dropped_full_samples - o->dropped_full_samples,
           old = st.dropped_old_samples - o->dropped_old_samples, bad = st.corrupt_samples - o->corrupt_samples;
  mg_metric_add(d->m_drop_buffer_full, (double)full);
  mg_metric_add(d->m_drop_too_old, (double)old);
  mg_metric_add(d->m_drop_corrupt, (double)bad);
  if (full + old + bad) set_pending(d, -(int64_t)(full + old + bad));
  mg_metric_add(d->m_buf_write_errors, (double)(st.write_errors - o->write_errors));
  mg_metric_add(d->m_buf_sync_errors, (double)(st.sync_errors - o->sync_errors));
  mg_metric_set(d->m_buf_bytes, (double)st.bytes);
  mg_metric_set(d->m_buf_records, (double)st.pending_records);
  mg_metric_set(d->m_buf_degraded, st.degraded ? 1 : 0);
  *o = st;
}

static void on_sync_work(uv_work_t *w) {
  mg_dest_t *d = w->data;
  (void)mg_wal_sync(d->wal); /* failures are logged and counted by mg_wal */
}

static void start_sync(mg_dest_t *d);

static void on_sync_done(uv_work_t *w, int status) {
  mg_dest_t *d = w->data;
  (void)status;
  d->sync_running = false;
  if (!d->closing) {
    publish_buffer(d);
    if (mg_wal_sync_wanted(d->wal)) start_sync(d);
  }
  dest_unref(d);
}

/* One sync at a time on the thread pool; it holds a reference, so the WAL
 * is closed only after it finished (mg_wal_close must not overlap it). */
static void start_sync(mg_dest_t *d) {
  if (!d->wal || d->sync_running || d->closing) return;
  d->sync_work.data = d;
  if (uv_queue_work(d->loop, &d->sync_work, on_sync_work, on_sync_done) != 0) return;
  d->sync_running = true;
  d->refs++;
}

/* Every second: sync, and wake every shard (a safety net: shards idle
 * because nothing was appended to them still get the WAL's records). */
static void on_sync_tick(uv_timer_t *t) {
  start_sync(t->data);
  kick_all(t->data);
}

static void kick_all(mg_dest_t *d) {
  for (uint32_t i = 0; i < d->nalloc; i++) kick(&d->shards[i]);
}

static void enqueue(shard_t *s, char *data, size_t len, uint32_t nsamples);
static void seal(shard_t *s);

/* DATA_DIR/wal/<name>, with anything but [A-Za-z0-9._-] in the name as
 * '_' and then a hash of the real name, so two names never share one. */
static char *buffer_dir(const char *data_dir, const char *name) {
  mg_buf_t b;
  mg_buf_init(&b, 0);
  int rc = mg_buf_printf(&b, "%s/wal/", data_dir);
  bool changed = !strcmp(name, ".") || !strcmp(name, "..");
  for (const char *p = name; !rc && *p; p++) {
    char c = *p;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-';
    changed |= !ok;
    rc = mg_buf_append(&b, ok ? &c : "_", 1);
  }
  if (!rc && changed) rc = mg_buf_printf(&b, "-%08x", (unsigned)mg_hash64(name, strlen(name), 0));
  if (!rc) rc = mg_buf_append(&b, "", 1);
  size_t len;
  char *out = rc ? NULL : mg_buf_steal(&b, &len);
  mg_buf_cleanup(&b);
  return out;
}

static void register_buffer_metrics(mg_dest_t *d) {
  const char *n = d->conf->name;
  d->m_buf_bytes = metric_or_dummy(mg_metrics_gauge("moongate_remote_write_buffer_bytes",
                                                    "Size of the durable buffer's files.", "destination", n, NULL));
  d->m_buf_records = metric_or_dummy(mg_metrics_gauge("moongate_remote_write_buffer_batches",
                                                      "Batches in the durable buffer not yet delivered.",
                                                      "destination", n, NULL));
  d->m_buf_degraded = metric_or_dummy(mg_metrics_gauge(
      "moongate_remote_write_buffer_degraded",
      "1 while the durable buffer cannot be written (disk full, read-only): batches wait in memory.", "destination", n,
      NULL));
  d->m_buf_recovered = metric_or_dummy(mg_metrics_counter("moongate_remote_write_buffer_recovered_samples_total",
                                                          "Samples found undelivered in the durable buffer at start.",
                                                          "destination", n, NULL));
  d->m_buf_write_errors = metric_or_dummy(mg_metrics_counter("moongate_remote_write_buffer_write_errors_total",
                                                             "Failed writes to the durable buffer.", "destination", n,
                                                             NULL));
  d->m_buf_sync_errors = metric_or_dummy(mg_metrics_counter("moongate_remote_write_buffer_sync_errors_total",
                                                            "Failed fsyncs or checkpoints of the durable buffer.",
                                                            "destination", n, NULL));
  d->m_drop_buffer_full = dropped_metric(n, "buffer_full");
  d->m_drop_too_old = dropped_metric(n, "too_old");
  d->m_drop_corrupt = dropped_metric(n, "corrupt");
}

static int try_open_buffer(mg_dest_t *d) {
  mg_wal_t *w;
  int rc = mg_wal_open(d->wal_dir, &d->wal_opts, &w);
  if (rc) return rc;
  d->wal = w;
  if (!d->m_buf_bytes) register_buffer_metrics(d);
  mg_wal_stats(w, &d->wal_seen);
  const mg_wal_stats_t *st = &d->wal_seen;
  /* What open found: undelivered batches join the pending count; what it
   * had to drop never was in it. */
  set_pending(d, (int64_t)st->recovered_samples);
  mg_metric_add(d->m_buf_recovered, (double)st->recovered_samples);
  mg_metric_add(d->m_drop_corrupt, (double)st->corrupt_samples);
  mg_metric_add(d->m_drop_too_old, (double)st->dropped_old_samples);
  mg_metric_set(d->m_buf_bytes, (double)st->bytes);
  mg_metric_set(d->m_buf_records, (double)st->pending_records);
  MG_INFO("remote_write", "buffer_open", "destination=%s dir=\"%s\" bytes=%llu recovered_samples=%llu "
          "corrupt_samples=%llu", d->conf->name, d->wal_dir, (unsigned long long)st->bytes,
          (unsigned long long)st->recovered_samples, (unsigned long long)st->corrupt_samples);
  /* Batches that waited in memory for the buffer (a reload's predecessor
   * held it) go in after its backlog, in order. */
  for (uint32_t i = 0; i < d->nalloc; i++) {
    shard_t *s = &d->shards[i];
    record_t *r = s->head;
    s->head = s->tail = NULL;
    while (r) {
      record_t *next = r->next;
      queued_add(d, -(int64_t)r->len);
      enqueue(s, r->data, r->len, r->nsamples);
      mg_free(r);
      r = next;
    }
  }
  uv_timer_start(&d->sync_timer, on_sync_tick, BUFFER_SYNC_MS, BUFFER_SYNC_MS);
  kick_all(d);
  return 0;
}

/* With a durable buffer every scrape's samples reach it before the loop
 * waits again (so kill -9 loses nothing scraped): what the iteration's
 * callbacks appended is sealed here, after them. Scrapes that finish in
 * the same iteration share batches. */
static void on_seal_check(uv_check_t *h) {
  mg_dest_t *d = h->data;
  uv_check_stop(h);
  d->seal_armed = false;
  for (uint32_t i = 0; i < d->nalloc; i++)
    if (d->shards[i].open.len) seal(&d->shards[i]);
}

static void on_reopen_tick(uv_timer_t *t) {
  mg_dest_t *d = t->data;
  int rc = try_open_buffer(d);
  if (rc == 0 || rc == MG_EEXISTS) return;
  uv_timer_stop(t);
  MG_ERROR("remote_write", "buffer_unavailable", "destination=%s dir=\"%s\" err=%s hint=\"batches wait in memory "
           "only\"", d->conf->name, d->wal_dir, mg_err_name(rc));
}

int mg_dest_open_buffer(mg_dest_t *d, const char *data_dir, bool wait_if_busy) {
  if (d->sink || d->conf->buffer.memory_only || !data_dir || d->wal_dir) return 0;
  if (!(d->wal_dir = buffer_dir(data_dir, d->conf->name))) return MG_ENOMEM;
  d->wal_opts = (mg_wal_opts_t){
      .max_bytes = d->conf->buffer.max_bytes,
      .max_age_ms = d->conf->buffer.max_age_ms,
      .nshards = d->nshards,
      .name = d->conf->name,
      .checkpoint_ms = BUFFER_CHECKPOINT_MS,
  };
  uv_timer_init(d->loop, &d->sync_timer);
  d->sync_timer.data = d;
  uv_check_init(d->loop, &d->seal_check);
  d->seal_check.data = d;
  d->sync_timer_init = true;
  d->refs += 2;
  int rc = try_open_buffer(d);
  if (rc == MG_EEXISTS && wait_if_busy) {
    MG_INFO("remote_write", "buffer_busy", "destination=%s dir=\"%s\" hint=\"the previous configuration's "
            "destination is draining; batches wait in memory until it is done\"", d->conf->name, d->wal_dir);
    uv_timer_start(&d->sync_timer, on_reopen_tick, BUFFER_SYNC_MS, BUFFER_SYNC_MS);
    return 0;
  }
  return rc;
}

/* A sealed batch: into the WAL when there is one and it takes it, else
 * into the memory FIFO. */
static void enqueue(shard_t *s, char *data, size_t len, uint32_t nsamples) {
  mg_dest_t *d = s->d;
  uint64_t order_id = 0;
  if (d->wal) {
    /* An idle shard sends the batch it just appended (the WAL hands it out
     * at once when that keeps the order), without reading it back. */
    record_t *mine = !s->cur && !s->head && s->idx < d->nshards ? mg_malloc(sizeof *mine) : NULL;
    bool taken = false;
    uint64_t id = 0;
    int rc = mine ? mg_wal_append_take(d->wal, s->idx, data, len, nsamples, &id, &taken)
                  : mg_wal_append(d->wal, s->idx, data, len, nsamples, NULL);
    if (rc == 0) {
      if (taken) {
        *mine = (record_t){.nsamples = nsamples, .len = len, .data = data, .wal_id = id, .epoch = d->epoch};
        s->cur = mine;
        queued_add(d, (int64_t)len);
      } else {
        mg_free(mine);
        mg_free(data);
      }
      mg_metric_set(d->m_buf_degraded, 0);
      if (mg_wal_sync_wanted(d->wal)) start_sync(d);
      kick(s);
      return;
    }
    mg_free(mine);
    /* Disk full, read-only, quota (logged by mg_wal): keep it in memory,
     * after every WAL record appended so far. */
    mg_wal_stats_t st;
    mg_wal_stats(d->wal, &st);
    order_id = st.next_id;
    mg_metric_set(d->m_buf_degraded, 1);
  }
  record_t *r = mg_malloc(sizeof *r);
  if (!r || make_room(s, len) != 0) {
    mg_free(r);
    mg_free(data);
    mg_metric_add(d->m_drop_full, nsamples);
    set_pending(d, -(int64_t)nsamples);
    return;
  }
  *r = (record_t){.nsamples = nsamples, .len = len, .data = data, .order_id = order_id, .epoch = d->epoch};
  if (s->tail) s->tail->next = r;
  else s->head = r;
  s->tail = r;
  queued_add(d, (int64_t)len);
  kick(s);
}

/* A batch snappy-compressed into an allocation of its own exact size
 * (NULL: no memory). Compressing needs room for the worst case, about
 * 1.17 times the input (a megabyte for a full batch) against the tenth of
 * that a batch takes; that room is the destination's reused zbuf, so
 * queued batches hold only their bytes and sealing does not grow and
 * shrink the heap by a megabyte each time. */
static char *compress(mg_dest_t *d, const void *body, size_t len, size_t *clen) {
  mg_buf_reset(&d->zbuf);
  if (mg_wire_snappy_compress(body, len, &d->zbuf) != 0) return NULL;
  char *data = mg_malloc(d->zbuf.len);
  if (!data) return NULL;
  memcpy(data, d->zbuf.data, d->zbuf.len);
  *clen = d->zbuf.len;
  return data;
}

/* Close the open batch: hand it to the sink, or compress and queue it. */
static void seal(shard_t *s) {
  mg_dest_t *d = s->d;
  uv_timer_stop(&s->batch_timer);
  if (!s->open.len) return;
  uint32_t n = s->open_samples;
  if (d->sink) {
    int rc = mg_sink_write(d->sink, s->open.data, s->open.len);
    if (rc < 0) mg_metric_add(d->m_drop_sink, n);
    else {
      mg_metric_add(d->m_sent, n);
      mg_metric_add(d->m_bytes, (double)s->open.len);
    }
    set_pending(d, -(int64_t)n);
  } else {
    size_t len;
    char *data = compress(d, s->open.data, s->open.len, &len);
    if (!data) {
      mg_metric_add(d->m_drop_full, n);
      set_pending(d, -(int64_t)n);
    } else {
      enqueue(s, data, len, n);
    }
  }
  mg_buf_reset(&s->open);
  s->open_samples = 0;
}

static void on_batch_deadline(uv_timer_t *t) {
  mg_dest_t *d = t->data;
  shard_t *s = (shard_t *)((char *)t - offsetof(shard_t, batch_timer));
  (void)d;
  seal(s);
}

int mg_dest_append(mg_dest_t *d, uint64_t series_hash, const void *entry, size_t len, uint32_t nsamples) {
  if (d->closing) return MG_ECLOSED;
  shard_t *s = &d->shards[d->nshards == 1 ? 0 : (series_hash >> 32) % d->nshards];
  if (s->open.len == 0) {
    uv_timer_start(&s->batch_timer, on_batch_deadline, d->conf->queue.batch_send_deadline_ms, 0);
  }
  mg_metric_add(d->m_in, nsamples);
  int rc = mg_buf_append(&s->open, entry, len);
  if (rc) {
    mg_metric_add(d->m_drop_full, nsamples);
    return rc;
  }
  s->open_samples += nsamples;
  d->iv_in += nsamples;
  set_pending(d, nsamples);
  if (d->wal && !d->seal_armed) {
    uv_check_start(&d->seal_check, on_seal_check);
    d->seal_armed = true;
  }
  if (s->open_samples >= d->conf->queue.max_samples_per_send) seal(s);
  return 0;
}

bool mg_dest_wants_metadata(const mg_dest_t *d) { return d->conf->send_metadata && !d->closing; }

int mg_dest_send_metadata(mg_dest_t *d, const void *body, size_t len) {
  if (d->closing) return MG_ECLOSED;
  if (d->sink) return mg_sink_write(d->sink, body, len) < 0 ? MG_EIO : 0;
  size_t clen;
  char *data = compress(d, body, len, &clen);
  if (!data) return MG_ENOMEM;
  enqueue(&d->shards[0], data, clen, 0);
  return 0;
}

void mg_dest_flush(mg_dest_t *d) {
  for (uint32_t i = 0; i < d->nalloc; i++) seal(&d->shards[i]);
}

uint64_t mg_dest_pending_samples(const mg_dest_t *d) { return d->pending_samples; }

void mg_dest_info(const mg_dest_t *d, mg_dest_info_t *out) {
  memset(out, 0, sizeof *out);
  out->name = d->conf->name;
  out->url = d->sink ? (d->conf->path ? d->conf->path : "stdout") : d->conf->url;
  out->pending_samples = d->pending_samples;
  out->queued_bytes = d->queued_bytes;
  out->sent_samples = (uint64_t)d->m_sent->v;
  out->last_success_ms = d->last_success_ms;
  out->last_error = d->last_error;
  out->shards = d->nshards;
  if (d->creds) {
    mg_creds_info_t ci;
    mg_creds_describe(d->creds, &ci);
    snprintf(out->creds_source, sizeof out->creds_source, "%s", ci.available ? ci.source : ci.last_error);
    snprintf(out->creds_key, sizeof out->creds_key, "%s", ci.access_key_id);
    out->creds_expires_ms = ci.expires_ms;
    out->creds_available = ci.available;
    out->signed_requests = true;
  }
}

/* Retry-After: delay-seconds or an HTTP-date (RFC 9110). Returns ms, or 0. */
static uint64_t parse_retry_after(const char *v) {
  if (!v) return 0;
  while (*v == ' ') v++;
  if (*v >= '0' && *v <= '9') {
    char *end;
    unsigned long long secs = strtoull(v, &end, 10);
    if (secs > MAX_RETRY_AFTER_MS / 1000) return MAX_RETRY_AFTER_MS;
    return secs * 1000;
  }
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  if (!strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm)) return 0;
  time_t when = timegm(&tm);
  int64_t delta = (int64_t)when * 1000 - mg_wall_ms();
  if (delta <= 0) return 0;
  return (uint64_t)delta > MAX_RETRY_AFTER_MS ? MAX_RETRY_AFTER_MS : (uint64_t)delta;
}

static void on_retry_timer(uv_timer_t *t) {
  shard_t *s = (shard_t *)((char *)t - offsetof(shard_t, retry_timer));
  s->backing_off = 0;
  kick(s);
}

static void schedule_retry(shard_t *s, uint64_t retry_after_ms) {
  mg_dest_t *d = s->d;
  const mg_conf_queue_t *q = &d->conf->queue;
  uint64_t delay = q->min_backoff_ms ? q->min_backoff_ms : 1;
  for (uint32_t i = 0; i < s->attempts && delay < q->max_backoff_ms; i++) delay *= 2;
  if (delay > q->max_backoff_ms) delay = q->max_backoff_ms;
  /* Jitter in [delay/2, delay] so shards and replicas do not retry in step. */
  delay = delay / 2 + (uint64_t)(rand() % (int)(delay / 2 + 1));
  if (retry_after_ms > delay) delay = retry_after_ms;
  s->attempts++;
  s->backing_off = 1;
  mg_metric_inc(d->m_retries);
  uv_timer_start(&s->retry_timer, on_retry_timer, delay, 0);
}

/* The batch being sent is finished: delivered, or refused for good. */
static void finish_cur(shard_t *s) {
  record_t *r = s->cur;
  s->cur = NULL;
  /* MG_ENOTFOUND: a cap dropped it meanwhile. */
  if (r->wal_id) (void)mg_wal_ack(s->d->wal, r->wal_id);
  for (uint32_t i = 0; i < r->nmerged; i++) (void)mg_wal_ack(s->d->wal, r->merged[i]);
  queued_add(s->d, -(int64_t)r->len);
  release_record(s->d, r);
}

/* Most WAL records one request carries. */
#define MAX_MERGE 64

/* Batches wait in the WAL as they were sealed: every loop iteration's
 * appends (for kill -9 safety), so they are small when scrapes are small
 * or shards many. When a shard has several waiting, send them as one
 * request of up to about max_samples_per_send samples: concatenated
 * WriteRequest bodies are one WriteRequest (repeated fields append), and
 * snappy blocks join without decompressing (mg_wire_snappy_join), so this
 * costs a validation pass over each and a copy. Fewer, larger requests
 * drain a backlog faster and let resharding see the real need. */
static void coalesce(shard_t *s, record_t *r, uint64_t before_id) {
  mg_dest_t *d = s->d;
  uint32_t max = d->conf->queue.max_samples_per_send;
  if (r->nsamples >= max || !mg_wire_snappy_valid(r->data, r->len)) return;
  mg_str_t parts[MAX_MERGE + 1];
  char *taken[MAX_MERGE];
  size_t np = 0, ntaken = 0;
  uint32_t first_samples = r->nsamples;
  parts[np++] = mg_str_n(r->data, r->len);
  while (r->nsamples < max && r->nmerged < MAX_MERGE) {
    mg_wal_record_t rec;
    if (!r->merged && !(r->merged = mg_calloc(MAX_MERGE, sizeof *r->merged))) break;
    if (mg_wal_next(d->wal, s->idx, before_id, &rec) != 0) break;
    if (!mg_wire_snappy_valid(rec.data, rec.len)) {
      /* Handed out and cannot be given back. Passed its CRC yet does not
       * decode: finished as damaged, counted. */
      MG_ERROR("remote_write", "record_undecodable", "destination=%s id=%llu samples=%u", d->conf->name,
               (unsigned long long)rec.id, rec.nsamples);
      mg_metric_add(d->m_drop_corrupt, rec.nsamples);
      set_pending(d, -(int64_t)rec.nsamples);
      (void)mg_wal_ack(d->wal, rec.id);
      mg_free(rec.data);
      break;
    }
    taken[ntaken++] = rec.data;
    parts[np++] = mg_str_n(rec.data, rec.len);
    r->merged[r->nmerged++] = rec.id;
    r->nsamples += rec.nsamples;
  }
  mg_buf_t c;
  mg_buf_init(&c, 0);
  if (r->nmerged && mg_wire_snappy_join(parts, np, &c) == 0) {
    mg_free(r->data);
    r->data = mg_buf_steal(&c, &r->len);
  } else if (r->nmerged) {
    /* No memory for the joined request: the records taken cannot be given
     * back to the WAL, and must not be acked with r unsent. Finished as
     * dropped (buffer_full), counted and logged; r goes alone. */
    uint32_t lost = r->nsamples - first_samples;
    MG_ERROR("remote_write", "merge_failed", "destination=%s records=%u samples=%u err=ENOMEM", d->conf->name,
             r->nmerged, lost);
    for (uint32_t i = 0; i < r->nmerged; i++) (void)mg_wal_ack(d->wal, r->merged[i]);
    mg_metric_add(d->m_drop_full, lost);
    set_pending(d, -(int64_t)lost);
    r->nsamples = first_samples;
    r->nmerged = 0;
  }
  mg_buf_cleanup(&c);
  for (size_t i = 0; i < ntaken; i++) mg_free(taken[i]);
}

/* The shard's next batch in order: WAL records older than the memory
 * FIFO's head first, then the head. NULL when there is none (or no memory
 * now: a later seal or response kicks again). */
static record_t *take_next(shard_t *s) {
  mg_dest_t *d = s->d;
  record_t *h = s->head;
  if (d->wal && s->idx < d->nshards && !(h && !h->order_id)) {
    record_t *r = mg_malloc(sizeof *r);
    if (!r) return NULL;
    mg_wal_record_t rec;
    int rc = mg_wal_next(d->wal, s->idx, h ? h->order_id : 0, &rec);
    if (rc == 0) {
      *r = (record_t){.nsamples = rec.nsamples, .len = rec.len, .data = rec.data, .wal_id = rec.id};
      coalesce(s, r, h ? h->order_id : 0);
      queued_add(d, (int64_t)r->len);
      return r;
    }
    mg_free(r);
    if (rc != MG_EAGAIN) return NULL;
  }
  if (!h || (h->epoch == d->epoch && d->old_pending)) return NULL;
  s->head = h->next;
  if (!s->head) s->tail = NULL;
  h->next = NULL;
  return h;
}

static void on_response(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  shard_t *s = ud;
  mg_dest_t *d = s->d;
  s->req = NULL;
  record_t *r = s->cur;
  uint64_t now_ms = uv_now(d->loop);
  d->iv_busy_ms += now_ms - (s->sent_ms > d->tick_ms ? s->sent_ms : d->tick_ms);
  mg_creds_value_t *signed_with = s->signed_with;
  s->signed_with = NULL;
  if (err == MG_ECANCELED || d->closing) {
    mg_creds_value_unref(signed_with);
    dest_unref(d);
    return;
  }
  char code[16];
  snprintf(code, sizeof code, "%d", err ? 0 : resp->status);
  if (!err) {
    mg_metric_t *m = mg_metrics_counter("moongate_remote_write_requests_total",
                                        "Remote write requests by HTTP status (0: no response).", "destination",
                                        d->conf->name, "code", code, NULL);
    if (m) mg_metric_inc(m);
  }
  unsigned long long now = (unsigned long long)uv_now(d->loop);
  if (!err && resp->status >= 200 && resp->status < 300) {
    mg_metric_add(d->m_sent, r->nsamples);
    mg_metric_add(d->m_bytes, (double)r->len);
    d->last_success_ms = mg_wall_ms();
    mg_metric_set(d->m_last_success, (double)d->last_success_ms / 1000.0);
    d->last_error[0] = '\0';
    set_pending(d, -(int64_t)r->nsamples);
    d->iv_out += r->nsamples;
    d->iv_reqs++;
    s->attempts = 0;
    finish_cur(s);
  } else if (err || resp->status >= 500 || (resp->status == 429 && d->conf->queue.retry_on_http_429)) {
    uint64_t ra = err ? 0 : parse_retry_after(mg_http_response_header(resp, "retry-after"));
    d->iv_failures++;
    if (err) snprintf(d->last_error, sizeof d->last_error, "%s: %s", mg_err_name(err), detail ? detail : "");
    else snprintf(d->last_error, sizeof d->last_error, "HTTP %d (retrying)", resp->status);
    if (mg_log_ratelimit(&d->last_retry_log_ms, now, 10000)) {
      if (err)
        MG_WARN("remote_write", "send_failed", "destination=%s err=%s detail=\"%s\" attempt=%u", d->conf->name,
                mg_err_name(err), detail ? detail : "", s->attempts + 1);
      else
        MG_WARN("remote_write", "send_retry", "destination=%s status=%d attempt=%u retry_after_ms=%llu", d->conf->name,
                resp->status, s->attempts + 1, (unsigned long long)ra);
    }
    schedule_retry(s, ra);
  } else if (signed_with &&
             mg_creds_is_rejection(resp->status, mg_http_response_header(resp, "x-amzn-errortype"),
                                   resp->body ? resp->body->data : NULL, resp->body ? resp->body->len : 0)) {
    /* The credentials or the signature were refused (expired token after a
     * rotation, a revoked key): never drop the batch for that. Force one
     * refresh and retry; until credentials work the batch stays queued. */
    /* Counted by AMP's error type (ExpiredTokenException, ...). */
    const char *et = mg_http_response_header(resp, "x-amzn-errortype");
    char type[64];
    snprintf(type, sizeof type, "%.*s", et ? (int)strcspn(et, ":") : 7, et ? et : "unknown");
    mg_metric_t *am = mg_metrics_counter("moongate_remote_write_auth_rejections_total",
                                         "Requests refused because of their credentials or signature, by the "
                                         "receiver's error type (kept queued and retried).",
                                         "destination", d->conf->name, "type", type, NULL);
    mg_metric_inc(am ? am : mg_metrics_dummy());
    snprintf(d->last_error, sizeof d->last_error, "HTTP %d: credentials or signature refused (retrying)", resp->status);
    mg_creds_invalidate(d->creds, signed_with);
    char msg[MAX_ERROR_BODY_LOG + 16], mask[32];
    size_t n = resp->body ? resp->body->len : 0;
    if (n > MAX_ERROR_BODY_LOG) n = MAX_ERROR_BODY_LOG;
    mg_log_q(msg, sizeof msg, resp->body ? resp->body->data : "", n);
    if (mg_log_ratelimit(&d->last_reject_log_ms, now, 10000)) {
      MG_ERROR("remote_write", "auth_rejected", "destination=%s status=%d message=%s access_key_id=%s source=\"%s\" "
               "hint=\"kept queued; refreshing credentials\"",
               d->conf->name, resp->status, msg, mg_log_mask(mask, sizeof mask, signed_with->access_key_id),
               signed_with->source);
      if (sigv4_debug && s->sig_debug.len) {
        char q[8192];
        MG_ERROR("remote_write", "sigv4_debug", "destination=%s canonical_request_and_string_to_sign=%s",
                 d->conf->name, mg_log_q(q, sizeof q, s->sig_debug.data, s->sig_debug.len));
      }
    }
    /* The first retry follows the forced refresh at once; repeated
     * refusals back off like any other failure. */
    schedule_retry(s, 0);
  } else {
    /* Other 4xx: the receiver refuses this batch for good; resending it
     * would fail the same way and block the shard. */
    char msg[MAX_ERROR_BODY_LOG + 16];
    size_t n = resp->body ? resp->body->len : 0;
    if (n > MAX_ERROR_BODY_LOG) n = MAX_ERROR_BODY_LOG;
    mg_log_q(msg, sizeof msg, resp->body ? resp->body->data : "", n);
    if (mg_log_ratelimit(&d->last_reject_log_ms, now, 10000))
      MG_ERROR("remote_write", "batch_rejected", "destination=%s status=%d samples=%u message=%s", d->conf->name,
               resp->status, r->nsamples, msg);
    mg_metric_add(d->m_drop_4xx, r->nsamples);
    snprintf(d->last_error, sizeof d->last_error, "HTTP %d: batch rejected and dropped", resp->status);
    set_pending(d, -(int64_t)r->nsamples);
    s->attempts = 0;
    finish_cur(s);
  }
  mg_creds_value_unref(signed_with);
  dest_unref(d);
  /* An ack may lift the WAL's reshard barrier for every shard. */
  if (d->wal && !s->cur) kick_all(d);
  else kick(s);
  check_drained(d);
}

static void kick_send(shard_t *s, record_t *r, const mg_http_header_t *hdrs, size_t nh) {
  mg_dest_t *d = s->d;
  mg_http_request_t req = {
      .method = "POST",
      .url = d->conf->url,
      .headers = hdrs,
      .nheaders = nh,
      .body = r->data,
      .body_len = r->len,
      .timeout_ms = d->conf->remote_timeout_ms,
      .max_body = 1u << 20,
      .truncate_2xx_body = true, /* a 2xx is delivered whatever its body says (remote write 1.0 ignores it) */
  };
  mg_http_tls_opts_t tls = {
      .ca_file = d->conf->tls.ca_file,
      .cert_file = d->conf->tls.cert_file,
      .key_file = d->conf->tls.key_file,
      .server_name = d->conf->tls.server_name,
      .insecure_skip_verify = d->conf->tls.insecure_skip_verify,
  };
  req.tls = &tls;
  s->sent_ms = uv_now(d->loop);
  d->refs++;
  int rc = mg_http_client_request(d->http, &req, on_response, s, &s->req);
  if (rc) {
    d->refs--;
    s->req = NULL;
    mg_creds_value_unref(s->signed_with);
    s->signed_with = NULL;
    MG_ERROR("remote_write", "request_invalid", "destination=%s err=%s", d->conf->name, mg_err_name(rc));
    schedule_retry(s, 0);
  }
}

static void on_creds_ready(void *ud, int err) {
  mg_dest_t *d = ud;
  d->creds_waiting = false;
  (void)err; /* a failed refresh is logged by mg_creds; kick waits again */
  for (uint32_t i = 0; i < d->nalloc; i++) kick(&d->shards[i]);
}

/* Sign a request for AMP. Returns 0 with *out and s->signed_with set, or
 * MG_EAGAIN when no credentials are available yet (the shard waits for
 * them, its batches stay queued), or another error (logged). */
static int sign_request(shard_t *s, const record_t *r, mg_sigv4_result_t *out) {
  mg_dest_t *d = s->d;
  mg_creds_value_t *v = mg_creds_current(d->creds);
  if (!v) {
    if (!d->creds_waiting && mg_creds_wait(d->creds, &d->creds_waiter, on_creds_ready, d) == 0)
      d->creds_waiting = true;
    return MG_EAGAIN;
  }
  mg_sigv4_header_t h[3 + 64 + 1];
  size_t nh = 0;
  h[nh++] = (mg_sigv4_header_t){"host", d->sig_host};
  for (size_t i = 0; i < d->nheaders && nh < sizeof h / sizeof *h; i++)
    h[nh++] = (mg_sigv4_header_t){d->headers[i].name, d->headers[i].value};
  mg_sigv4_request_t req = {
      .method = "POST",
      .url_path = d->sig_path,
      .query = d->sig_query,
      .headers = h,
      .nheaders = nh,
      .payload = r->data,
      .payload_len = r->len,
      .region = d->sig_region,
      .service = d->sig_service,
      .unix_time = mg_wall_ms() / 1000,
  };
  mg_sigv4_creds_t c = {v->access_key_id, v->secret_access_key, v->session_token};
  mg_buf_reset(&s->sig_debug);
  int rc = mg_sigv4_sign(&d->keys, &req, &c, MG_SIGV4_ADD_CONTENT_SHA256, out, sigv4_debug ? &s->sig_debug : NULL);
  if (rc) {
    char mask[32];
    MG_ERROR("remote_write", "sigv4_failed", "destination=%s err=%s access_key_id=%s source=\"%s\"", d->conf->name,
             mg_err_name(rc), mg_log_mask(mask, sizeof mask, v->access_key_id), v->source);
    mg_creds_value_unref(v);
    return rc;
  }
  s->signed_with = v;
  return 0;
}

static void kick(shard_t *s) {
  mg_dest_t *d = s->d;
  if (d->closing || s->req || s->backing_off) return;
  if (!s->cur && !(s->cur = take_next(s))) return;
  record_t *r = s->cur;
  mg_http_header_t hdrs[64 + 8];
  size_t nh = 0;
  for (size_t i = 0; i < d->nheaders && nh < 64; i++) hdrs[nh++] = d->headers[i];
  if (d->creds) {
    mg_sigv4_result_t sig;
    int rc = sign_request(s, r, &sig);
    if (rc == MG_EAGAIN) return;
    if (rc) {
      schedule_retry(s, 0);
      return;
    }
    /* Sign last: these go on the wire exactly as signed. */
    for (size_t i = 0; i < sig.nadd; i++) hdrs[nh++] = (mg_http_header_t){sig.add[i].name, sig.add[i].value};
    kick_send(s, r, hdrs, nh);
    return;
  }
  kick_send(s, r, hdrs, nh);
}
/* ---- resharding ---- */

static bool memory_records(const mg_dest_t *d) {
  for (uint32_t i = 0; i < d->nalloc; i++)
    if (d->shards[i].head || (d->shards[i].cur && !d->shards[i].cur->wal_id)) return true;
  return false;
}

/* Batches of every shard are sealed under the current layout; from now on
 * appends use n shards. Shards past n finish what they hold and go idle. */
static void reshard(mg_dest_t *d, uint32_t n, double busy) {
  uint32_t from = d->nshards;
  mg_dest_flush(d);
  if (d->wal && mg_wal_set_nshards(d->wal, n) != 0) return;
  uint64_t old = 0;
  for (uint32_t i = 0; i < d->nalloc; i++) {
    const shard_t *s = &d->shards[i];
    if (s->cur && !s->cur->wal_id) old++;
    for (const record_t *r = s->head; r; r = r->next) old++;
  }
  d->epoch++;
  d->old_pending = old;
  d->nshards = n;
  mg_metric_set(d->m_shards, n);
  MG_INFO("remote_write", "reshard", "destination=%s from=%u to=%u busy=%.2f pending_samples=%llu", d->conf->name,
          from, n, busy, (unsigned long long)d->pending_samples);
  kick_all(d);
}

/* Every RESHARD_MS. Up: while data waits (the backlog grew past what
 * arrived in the interval) or the shards are busy more than RESHARD_HIGH
 * of the time with full requests, to keep them RESHARD_AIM busy, at least
 * doubling under a backlog. Down: to the shards the interval's traffic
 * needs when requests are full (samples per second / max_samples_per_send
 * x request latency, at RESHARD_AIM), once that is under RESHARD_DOWN of
 * the count. Busy time alone would mislead downwards: many shards make
 * small requests that keep them busy. While the receiver fails no shard is
 * added: more requests would not help it recover. */
static void on_reshard_tick(uv_timer_t *t) {
  mg_dest_t *d = t->data;
  const mg_conf_queue_t *q = &d->conf->queue;
  uint64_t now = uv_now(d->loop), span = now > d->tick_ms ? now - d->tick_ms : 1;
  /* Busy time of the requests still in flight counts up to now. */
  for (uint32_t i = 0; i < d->nalloc; i++) {
    shard_t *s = &d->shards[i];
    if (s->req) d->iv_busy_ms += now - (s->sent_ms > d->tick_ms ? s->sent_ms : d->tick_ms);
  }
  double busy = (double)d->iv_busy_ms / ((double)span * d->nshards);
  double spr = d->iv_reqs ? (double)d->iv_out / (double)d->iv_reqs : 0;
  double latency_s = d->iv_reqs ? (double)d->iv_busy_ms / 1000.0 / (double)d->iv_reqs : 0;
  double rate = (double)(d->iv_in > d->iv_out ? d->iv_in : d->iv_out) * 1000.0 / (double)span;
  double need = rate / (q->max_samples_per_send ? q->max_samples_per_send : 1) * latency_s / RESHARD_AIM;
  bool backlog = d->pending_samples > d->pending_at_tick && d->pending_samples > d->iv_in;
  uint64_t failures = d->iv_failures, reqs = d->iv_reqs;
  d->iv_in = d->iv_out = d->iv_reqs = d->iv_busy_ms = d->iv_failures = 0;
  d->tick_ms = now;
  d->pending_at_tick = d->pending_samples;
  if (d->draining) return;
  double want = d->nshards;
  if (backlog) want = fmax(2.0 * d->nshards, ceil(d->nshards * busy / RESHARD_AIM));
  else if (busy > RESHARD_HIGH && spr >= q->max_samples_per_send / 2.0) want = ceil(d->nshards * busy / RESHARD_AIM);
  else if (reqs == 0 || need < RESHARD_DOWN * d->nshards) want = ceil(need);
  uint32_t lo = q->min_shards ? q->min_shards : 1;
  uint32_t n = want > d->nalloc ? d->nalloc : want < lo ? lo : (uint32_t)want;
  mg_metric_set(d->m_shards_desired, n);
  if (n == d->nshards || (failures && n > d->nshards)) return;
  /* One change at a time; in memory-backed destinations the previous
   * layout must be gone, with a WAL its barrier orders disk records but
   * batches waiting in memory (a full disk) keep the layout. */
  if (d->old_pending || (d->wal && memory_records(d))) return;
  reshard(d, n, busy);
}

static void finish_drain(mg_dest_t *d) {
  if (!d->draining) return;
  d->draining = 0;
  if (d->drain_timer_active) {
    uv_timer_stop(&d->drain_timer);
    d->drain_timer_active = 0;
  }
  void (*done)(void *) = d->drain_done;
  d->drain_done = NULL;
  if (done) done(d->drain_ud);
}

static void check_drained(mg_dest_t *d) {
  if (!d->draining) return;
  for (uint32_t i = 0; i < d->nalloc; i++)
    if (d->shards[i].head || d->shards[i].cur || d->shards[i].open.len) return;
  if (d->sink && mg_sink_pending(d->sink)) return;
  if (d->wal) {
    mg_wal_stats_t st;
    mg_wal_stats(d->wal, &st);
    if (st.pending_records) return;
  }
  finish_drain(d);
}

/* Samples only in memory: what a shutdown loses. */
static uint64_t memory_only_samples(const mg_dest_t *d) {
  uint64_t n = 0;
  for (uint32_t i = 0; i < d->nalloc; i++) {
    const shard_t *s = &d->shards[i];
    n += s->open_samples;
    if (s->cur && !s->cur->wal_id) n += s->cur->nsamples;
    for (const record_t *r = s->head; r; r = r->next) n += r->nsamples;
  }
  return n;
}

/* One timer polls the drain: responses finish it early through
 * check_drained, local sinks finish their writes without telling us, and
 * the deadline bounds everything. */
static void on_drain_tick(uv_timer_t *t) {
  mg_dest_t *d = t->data;
  d->drain_timer_active = 0;
  check_drained(d);
  if (!d->draining) return;
  if (uv_now(d->loop) < d->drain_deadline) {
    d->drain_timer_active = 1;
    uv_timer_start(t, on_drain_tick, 20, 0);
    return;
  }
  uint64_t lost = d->wal ? memory_only_samples(d) : d->pending_samples;
  if (d->pending_samples > lost)
    MG_INFO("remote_write", "drain_persisted", "destination=%s buffered_samples=%llu dir=\"%s\" "
            "hint=\"sent after the next start\"", d->conf->name, (unsigned long long)(d->pending_samples - lost),
            d->wal_dir);
  if (lost) {
    MG_WARN("remote_write", "drain_incomplete", "destination=%s undelivered_samples=%llu", d->conf->name,
            (unsigned long long)lost);
    mg_metric_add(d->m_drop_shutdown, (double)lost);
  }
  finish_drain(d);
}

void mg_dest_drain(mg_dest_t *d, uint64_t deadline_ms, void (*done)(void *ud), void *ud) {
  d->draining = 1;
  d->drain_done = done;
  d->drain_ud = ud;
  d->drain_deadline = uv_now(d->loop) + deadline_ms;
  mg_dest_flush(d);
  /* Stop waiting out backoffs: try now, the deadline bounds the rest. */
  for (uint32_t i = 0; i < d->nalloc; i++) {
    shard_t *s = &d->shards[i];
    if (s->backing_off) {
      uv_timer_stop(&s->retry_timer);
      s->backing_off = 0;
    }
    kick(s);
  }
  d->drain_timer_active = 1;
  uv_timer_start(&d->drain_timer, on_drain_tick, 0, 0);
}

static void dest_unref(mg_dest_t *d) {
  if (--d->refs) return;
  for (uint32_t i = 0; i < d->nalloc; i++) {
    shard_t *s = &d->shards[i];
    free_record(s->cur); /* a WAL record not acked is sent again after the next start */
    while (s->head) {
      record_t *r = s->head;
      s->head = r->next;
      free_record(r);
    }
    mg_buf_cleanup(&s->open);
    mg_buf_cleanup(&s->sig_debug);
    mg_creds_value_unref(s->signed_with);
  }
  mg_buf_cleanup(&d->zbuf);
  mg_wal_close(d->wal); /* a last sync; no sync work is running (it holds a reference) */
  mg_free(d->wal_dir);
  mg_sigv4_key_cache_cleanup(&d->keys);
  mg_free(d->sig_host);
  mg_free(d->sig_path);
  mg_free(d->sig_query);
  mg_free(d->sig_region);
  mg_free(d->sig_service);
  mg_free(d->shards);
  mg_free(d->headers);
  mg_mem_free_secret(d->auth_value);
  mg_free(d);
}

void mg_dest_free(mg_dest_t *d) {
  if (!d) return;
  d->closing = 1;
  d->draining = 0;
  if (d->creds_waiting) mg_creds_cancel_wait(&d->creds_waiter);
  mg_creds_free(d->creds);
  d->creds = NULL;
  mg_sink_free(d->sink);
  d->sink = NULL;
  for (uint32_t i = 0; i < d->nalloc; i++) {
    shard_t *s = &d->shards[i];
    if (s->req) mg_http_client_cancel(s->req);
    uv_close((uv_handle_t *)&s->batch_timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->retry_timer, on_handle_closed);
  }
  uv_close((uv_handle_t *)&d->drain_timer, on_handle_closed);
  uv_close((uv_handle_t *)&d->reshard_timer, on_handle_closed);
  if (d->sync_timer_init) {
    uv_close((uv_handle_t *)&d->sync_timer, on_handle_closed);
    uv_close((uv_handle_t *)&d->seal_check, on_handle_closed);
  }
  dest_unref(d);
}
