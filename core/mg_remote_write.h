/* mg_remote_write: one destination ("workspace"): sharded batching of
 * encoded series, snappy, bounded in-memory queue of ready requests, HTTP
 * POST per remote write 1.0 with retries (exponential backoff with jitter,
 * Retry-After) on 5xx/429/network errors, and no retry on other 4xx. Local
 * sinks (stdout, file) share the batching and skip the network. Owns its
 * timers, queued batches and metrics; borrows the loop and HTTP client. */
#ifndef MG_REMOTE_WRITE_H
#define MG_REMOTE_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "mg_conf.h"
#include "mg_http_client.h"

typedef struct mg_dest mg_dest_t;

/* Log, for a request AMP refused because of its signature, the canonical
 * request and string to sign moongate used (never the secret; the session
 * token is shown as "<session token>"), to compare with AMP's message.
 * Off by default; costs a copy of the canonical request per send. */
void mg_remote_write_sigv4_debug(bool on);

/* conf is borrowed for the lifetime of the destination. With
 * conf->sigv4.enabled every request is signed (service "aps" unless set;
 * region from the configuration or the AMP URL) with credentials from the
 * provider built for it; while none are available batches stay queued. */
mg_dest_t *mg_dest_new(uv_loop_t *loop, mg_http_client_t *http, const mg_conf_dest_t *conf, int *err);
/* Give a remote-write destination its durable buffer (conf->buffer) in
 * DATA_DIR/wal/<name>/ before anything is appended: batches then wait on
 * disk, not in memory, and what a previous run left undelivered is sent
 * first. A no-op for local sinks and buffer.memory_only. Errors: MG_EEXISTS
 * (another process uses the directory), MG_EIO (cannot create or read it),
 * MG_ENOMEM. wait_if_busy (reload: the previous configuration's
 * destination of the same name still drains into it): instead of
 * MG_EEXISTS, keep batches in memory and take the buffer over as soon as
 * it is free. */
int mg_dest_open_buffer(mg_dest_t *d, const char *data_dir, bool wait_if_busy);
const char *mg_dest_name(const mg_dest_t *d);
/* After a reload: point the destination at the new plan's copy of its
 * settings, which mg_conf_dest_equal found identical (the old plan is
 * about to be freed). Queue and connections stay. */
void mg_dest_rebind(mg_dest_t *d, const mg_conf_dest_t *conf);

/* Hot path: append one encoded WriteRequest `timeseries` entry holding
 * nsamples samples (from mg_wire_append_series) to the shard chosen by
 * series_hash, so each series always travels through the same shard, in
 * order. Seals the batch at max_samples_per_send. Never blocks; when the
 * queue is full the oldest batch is dropped and counted. */
int mg_dest_append(mg_dest_t *d, uint64_t series_hash, const void *entry, size_t len, uint32_t nsamples);

/* Queue a metadata-only WriteRequest body (field 3 entries). */
bool mg_dest_wants_metadata(const mg_dest_t *d);
int mg_dest_send_metadata(mg_dest_t *d, const void *body, size_t len);

/* Seal every open batch now. */
void mg_dest_flush(mg_dest_t *d);
/* Samples accepted and not yet delivered (open batches + queue + in flight). */
uint64_t mg_dest_pending_samples(const mg_dest_t *d);

/* For the status page; strings borrowed until the next call. No secrets:
 * the access key id is masked. */
typedef struct mg_dest_info {
  const char *name, *url;
  uint64_t pending_samples, queued_bytes, sent_samples;
  int64_t last_success_ms; /* 0 = never */
  const char *last_error;  /* "" when the last request succeeded */
  uint32_t shards;
  bool signed_requests;    /* SigV4 */
  bool creds_available;
  char creds_source[520];  /* where credentials came from, or why there are none */
  char creds_key[16];      /* "ASIA****" */
  int64_t creds_expires_ms;
} mg_dest_info_t;
void mg_dest_info(const mg_dest_t *d, mg_dest_info_t *out);

/* Shutdown: seal, keep sending until everything is delivered or
 * deadline_ms passed, then call done (deferred, exactly once). What is left
 * stays in the durable buffer for the next start; what only memory held is
 * counted as dropped with reason "shutdown". */
void mg_dest_drain(mg_dest_t *d, uint64_t deadline_ms, void (*done)(void *ud), void *ud);
/* Stop everything, free in the last close callback. In-flight requests are
 * canceled. */
void mg_dest_free(mg_dest_t *d);

#endif
