/* mg_metrics: a small registry of families kept sorted by name; each family
 * holds a list of labelled series. Lookups are linear per family: series are
 * created at set-up time (per target, per workspace), not per sample. */
#include "mg_metrics.h"

#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "mg_mem.h"

typedef struct mg_metric_family {
  struct mg_metric_family *next;
  char *name, *help;
  mg_metric_type_t type;
  mg_metric_t *series;
} mg_metric_family_t;

typedef struct collector {
  struct collector *next;
  mg_metrics_collect_fn fn;
  void *ud;
} collector_t;

static mg_metric_family_t *families;
static collector_t *collectors;
static mg_metric_t dummy;

mg_metric_t *mg_metrics_dummy(void) { return &dummy; }

static int append_escaped(mg_buf_t *b, const char *v) {
  for (; *v; v++) {
    int rc;
    if (*v == '\\') rc = mg_buf_append(b, "\\\\", 2);
    else if (*v == '"') rc = mg_buf_append(b, "\\\"", 2);
    else if (*v == '\n') rc = mg_buf_append(b, "\\n", 2);
    else rc = mg_buf_append_byte(b, (unsigned char)*v);
    if (rc) return rc;
  }
  return 0;
}

static mg_metric_family_t *family(mg_metric_type_t type, const char *name, const char *help) {
  mg_metric_family_t **pp = &families;
  for (; *pp; pp = &(*pp)->next) {
    int c = strcmp((*pp)->name, name);
    if (c == 0) return *pp;
    if (c > 0) break;
  }
  mg_metric_family_t *f = mg_calloc(1, sizeof *f);
  if (!f) return NULL;
  f->name = mg_strdup(name);
  f->help = mg_strdup(help ? help : "");
  if (!f->name || !f->help) {
    mg_free(f->name);
    mg_free(f->help);
    mg_free(f);
    return NULL;
  }
  f->type = type;
  f->next = *pp;
  *pp = f;
  return f;
}

mg_metric_t *mg_metrics_get(mg_metric_type_t type, const char *name, const char *help, ...) {
  mg_metric_family_t *f = family(type, name, help);
  if (!f) return NULL;
  mg_buf_t lb;
  mg_buf_init(&lb, 0);
  va_list ap;
  va_start(ap, help);
  int first = 1, rc = 0;
  for (;;) {
    const char *k = va_arg(ap, const char *);
    if (!k) break;
    const char *v = va_arg(ap, const char *);
    rc |= mg_buf_append_str(&lb, first ? "{" : ",");
    rc |= mg_buf_append_str(&lb, k);
    rc |= mg_buf_append_str(&lb, "=\"");
    rc |= append_escaped(&lb, v ? v : "");
    rc |= mg_buf_append_str(&lb, "\"");
    first = 0;
  }
  va_end(ap);
  if (!first) rc |= mg_buf_append_str(&lb, "}");
  else rc |= mg_buf_append_str(&lb, "");
  if (rc) {
    mg_buf_cleanup(&lb);
    return NULL;
  }
  mg_metric_t **pp = &f->series;
  for (; *pp; pp = &(*pp)->next) {
    if (strcmp((*pp)->labels, lb.data) == 0) {
      mg_buf_cleanup(&lb);
      return *pp;
    }
  }
  mg_metric_t *m = mg_calloc(1, sizeof *m);
  if (!m) {
    mg_buf_cleanup(&lb);
    return NULL;
  }
  m->labels = mg_buf_steal(&lb, NULL);
  m->fam = f;
  *pp = m;
  return m;
}

void mg_metrics_remove(mg_metric_t *m) {
  if (!m || m == &dummy) return;
  mg_metric_family_t *f = m->fam;
  for (mg_metric_t **pp = &f->series; *pp; pp = &(*pp)->next) {
    if (*pp == m) {
      *pp = m->next;
      mg_free(m->labels);
      mg_free(m);
      return;
    }
  }
}

int mg_metrics_on_collect(mg_metrics_collect_fn fn, void *ud) {
  collector_t *c = mg_calloc(1, sizeof *c);
  if (!c) return -1;
  c->fn = fn;
  c->ud = ud;
  c->next = collectors;
  collectors = c;
  return 0;
}

void mg_metrics_off_collect(mg_metrics_collect_fn fn, void *ud) {
  for (collector_t **pp = &collectors; *pp; pp = &(*pp)->next) {
    if ((*pp)->fn == fn && (*pp)->ud == ud) {
      collector_t *c = *pp;
      *pp = c->next;
      mg_free(c);
      return;
    }
  }
}


int mg_metrics_render(mg_buf_t *out) {
  for (collector_t *c = collectors; c; c = c->next) c->fn(c->ud);
  int rc = 0;
  for (mg_metric_family_t *f = families; f && !rc; f = f->next) {
    if (!f->series) continue;
    rc |= mg_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                        f->type == MG_METRIC_COUNTER ? "counter" : "gauge");
    for (mg_metric_t *m = f->series; m && !rc; m = m->next) {
      rc |= mg_buf_append_str(out, f->name);
      rc |= mg_buf_append_str(out, m->labels);
      rc |= mg_buf_append_byte(out, ' ');
      rc |= mg_buf_append_double(out, m->v);
      rc |= mg_buf_append_byte(out, '\n');
    }
  }
  return rc ? -1 : 0;
}

void mg_metrics_reset(void) {
  while (families) {
    mg_metric_family_t *f = families;
    families = f->next;
    while (f->series) {
      mg_metric_t *m = f->series;
      f->series = m->next;
      mg_free(m->labels);
      mg_free(m);
    }
    mg_free(f->name);
    mg_free(f->help);
    mg_free(f);
  }
  while (collectors) {
    collector_t *c = collectors;
    collectors = c->next;
    mg_free(c);
  }
}
