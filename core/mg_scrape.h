/* mg_scrape: the scrape engine. Schedules every target of the plan, static
 * or discovered (mg_scrape_set_discovered), on its interval (with a stable
 * per-target offset), fetches the page through the HTTP client, and runs
 * the hot path: parse -> series table -> labels -> encode -> destinations. A scrape either commits whole or not at all (a
 * malformed body or an exceeded limit fails it: up=0). Writes the synthetic
 * series and staleness markers. Owns targets, their series tables and body
 * buffers; borrows the loop, HTTP client, destinations and the plan. */
#ifndef MG_SCRAPE_H
#define MG_SCRAPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "mg_conf.h"
#include "mg_http_client.h"
#include "mg_remote_write.h"
#include "mg_series.h"

typedef struct mg_scrape mg_scrape_t;

/* Default body limit when a job sets none (after decompression). */
#define MG_SCRAPE_DEFAULT_BODY_LIMIT (100u << 20)

/* dests: the plan's destinations, in the plan's order (at most 64); a
 * series goes to all of them unless a decider says otherwise. dests may be
 * NULL (dry run, `moongate test`): decisions are made, nothing is sent.
 * conf, dests and http must outlive the engine. */
mg_scrape_t *mg_scrape_new(uv_loop_t *loop, mg_http_client_t *http, const mg_conf_t *conf, mg_dest_t **dests,
                           size_t ndests, int *err);
/* Arm every target's timer. */
int mg_scrape_start(mg_scrape_t *s);
/* Stop scheduling and cancel scrapes in flight (shutdown). Series already
 * handed to destinations stay there. */
void mg_scrape_stop(mg_scrape_t *s);
/* Free, after stop; memory goes in the last close callback. The plan may
 * be freed as soon as this returns (nothing reads it afterwards). */
void mg_scrape_free(mg_scrape_t *s);

/* Targets being scraped (after target relabeling dropped some). */
size_t mg_scrape_ntargets(const mg_scrape_t *s);

/* One target, for the status page. Strings borrowed until the next call
 * into the engine. */
typedef struct mg_scrape_target_info {
  const char *job, *url;
  const mg_label_t *labels; /* after target relabeling */
  size_t nlabels;
  int health;               /* 1 up, 0 down, -1 not scraped yet */
  int64_t last_scrape_ms;   /* wall clock; 0 = never */
  double last_duration_s;
  const char *last_error;   /* "" when the last scrape succeeded */
  size_t series;
  uint64_t interval_ms;
} mg_scrape_target_info_t;
void mg_scrape_target_info(const mg_scrape_t *s, size_t i, mg_scrape_target_info_t *out);

/* Live numbers for /metrics and status. */
uint64_t mg_scrape_active_series(const mg_scrape_t *s);

/* Reload: stop `old` and take over the series tables of its targets that
 * are also in s (same job, URL and labels), so staleness tracking carries
 * on; their cached decisions are forgotten (decided again under the new
 * rules). Discovery sources of s whose options equal a source of the same
 * job in `old` first get that source's last report (see carry_discovered
 * in mg_scrape.c), so discovered targets carry over too. Targets of `old`
 * that are gone get staleness markers for all their series, sent through
 * old's destinations (which must still be alive). Call before
 * mg_scrape_start(s); old's plan must still be alive. Then free `old`
 * with mg_scrape_free. */
void mg_scrape_adopt(mg_scrape_t *s, mg_scrape_t *old);

/* Service discovery: replace what discovery source `source` (index into
 * conf->jobs[job]->sds) contributes to job `job` by the targets it reports
 * now (its whole list; copied). Each goes through the job's target
 * relabeling, interval overrides and shard choice exactly as a static
 * target; targets equal to one the job has already (static, or from this
 * or another source: same URL and labels) are that target, as Prometheus
 * dedupes targets within a job. New targets are scheduled (at once when
 * the engine runs); unchanged ones keep their series table and schedule;
 * targets no source reports any more get staleness markers for all their
 * series and leave. Target indexes (mg_scrape_target_info) change. Static
 * targets are never removed. Returns 0; MG_EINVAL for an unknown job or
 * source; MG_ETOOBIG beyond MG_CONF_MAX_TARGETS or MG_ENOMEM, both
 * logged, with the previous targets kept; MG_ECLOSED after stop. */
int mg_scrape_set_discovered(mg_scrape_t *s, size_t job, size_t source, const mg_conf_target_t *targets, size_t n);

/* Install the per-series decision hook (NULL: every series to every
 * destination, labels unchanged). Cached decisions are forgotten, so every
 * series is decided again on its next scrape (reload). */
void mg_scrape_set_decider(mg_scrape_t *s, mg_series_decide_fn fn, void *ud);

/* Called for every sample of every scrape with its final labels
 * (external labels included) and destination mask, or with labels NULL /
 * dests 0 and a reason when it is dropped. For `moongate test`; costs a
 * label merge per sample, so not for production. */
typedef void (*mg_scrape_trace_fn)(void *ud, const mg_label_t *labels, size_t n, uint64_t dests, const char *reason,
                                   double value);
void mg_scrape_set_trace(mg_scrape_t *s, mg_scrape_trace_fn fn, void *ud);

/* Process one body as if scraped from the first target of the plan (used
 * by tests and `moongate test`): returns 0 or the error that would fail the
 * scrape, with a message in errbuf. */
int mg_scrape_ingest(mg_scrape_t *s, size_t target_index, const char *body, size_t len, const char *content_type,
                     int64_t ts_ms, char *errbuf, size_t errlen);

#endif
