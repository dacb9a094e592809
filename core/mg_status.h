/* mg_status: the status page served at GET / — plain HTML, no external
 * assets, no scripts: targets (health, last scrape, duration, error),
 * destinations (queue, deliveries, last error, credential source and
 * expiry) and the configuration with its last reload result. Reads the
 * engine through its info functions; owns nothing. No secrets. */
#ifndef MG_STATUS_H
#define MG_STATUS_H

#include <stddef.h>
#include <stdint.h>

#include "mg_buf.h"
#include "mg_remote_write.h"
#include "mg_scrape.h"

typedef struct mg_status_input {
  const char *version;
  const char *config_path;
  int64_t started_ms;
  int64_t last_reload_ms;    /* last successful (re)load */
  const char *reload_error;  /* "" when the last reload succeeded */
  const mg_scrape_t *scrape; /* may be NULL (shutting down) */
  mg_dest_t *const *dests;
  size_t ndests;
  int64_t now_ms;
} mg_status_input_t;

/* Append the page to out. Returns 0 or MG_ENOMEM/MG_ETOOBIG. */
int mg_status_render(mg_buf_t *out, const mg_status_input_t *in);

#endif
