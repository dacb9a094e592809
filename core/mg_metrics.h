/* mg_metrics: moongate's own metrics (counters and gauges with label sets),
 * rendered in Prometheus text format 0.0.4 for /metrics. Single-threaded:
 * owners update values directly through the returned handle. Metric names
 * are a contract with operators: see docs/metrics.md. */
#ifndef MG_METRICS_H
#define MG_METRICS_H

#include <stddef.h>

#include "mg_buf.h"

typedef enum { MG_METRIC_COUNTER, MG_METRIC_GAUGE } mg_metric_type_t;

typedef struct mg_metric {
  double v;
  /* private */
  struct mg_metric *next;
  struct mg_metric_family *fam;
  char *labels; /* rendered `{k="v",...}` or "" */
} mg_metric_t;

/* Find or create the series `name{labels}`. Variadic args are label
 * name/value pairs (const char *), terminated by NULL. The family's help
 * and type are taken from the first call. Returns a handle that stays
 * valid until mg_metrics_remove or mg_metrics_reset; NULL on OOM (callers
 * may then use a dummy, see mg_metrics_dummy). */
mg_metric_t *mg_metrics_get(mg_metric_type_t type, const char *name, const char *help, ...);
#define mg_metrics_counter(name, help, ...) mg_metrics_get(MG_METRIC_COUNTER, name, help, __VA_ARGS__)
#define mg_metrics_gauge(name, help, ...) mg_metrics_get(MG_METRIC_GAUGE, name, help, __VA_ARGS__)
/* A scratch metric for when allocation failed: writes go nowhere visible. */
mg_metric_t *mg_metrics_dummy(void);

static inline void mg_metric_inc(mg_metric_t *m) { m->v += 1; }
static inline void mg_metric_add(mg_metric_t *m, double d) { m->v += d; }
static inline void mg_metric_set(mg_metric_t *m, double d) { m->v = d; }

/* Remove one series (e.g. a target that went away). NULL is fine. */
void mg_metrics_remove(mg_metric_t *m);

/* Hooks run before each render, to refresh gauges that are sampled
 * (process memory, queue depth). */
typedef void (*mg_metrics_collect_fn)(void *ud);
int mg_metrics_on_collect(mg_metrics_collect_fn fn, void *ud);
void mg_metrics_off_collect(mg_metrics_collect_fn fn, void *ud);

/* Render everything, families sorted by name. */
int mg_metrics_render(mg_buf_t *out);
/* Free the whole registry (end of process, tests). */
void mg_metrics_reset(void);

#endif
