/* libFuzzer driver for mg_promyml (and mg_conf_finish behind it): any input
 * either yields a frozen plan whose invariants hold, or an error with a
 * message and a line inside the input. One input in eight also fails an
 * allocation, chosen from the input's hash, to walk the cleanup paths.
 * Aborts on the first broken invariant; ASan reports leaks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_conf.h"
#include "mg_err.h"
#include "mg_mem.h"
#include "mg_promyml.h"
#include "mg_str.h"

#define ENSURE(c)                                                                  \
  do {                                                                             \
    if (!(c)) {                                                                    \
      fprintf(stderr, "fuzz_promyml: invariant failed: %s (line %d)\n", #c, __LINE__); \
      abort();                                                                     \
    }                                                                              \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FILE *devnull;

static void check_duration(uint64_t ms) {
  char buf[32];
  uint64_t back = ~0ull;
  ENSURE(mg_conf_parse_duration(mg_conf_format_duration(ms, buf, sizeof(buf)), &back) == 0);
  ENSURE(back == ms);
}

static void check_plan(const mg_conf_t *c) {
  ENSURE(c->frozen);
  ENSURE(c->source == MG_CONF_PROMYML);
  ENSURE(c->scrape_interval_ms > 0 && c->scrape_timeout_ms <= c->scrape_interval_ms);
  ENSURE(c->ndests >= 1 && c->ndests <= MG_CONF_MAX_DESTS);
  ENSURE(c->njobs <= MG_CONF_MAX_JOBS);
  check_duration(c->scrape_interval_ms);
  for (size_t i = 0; i < c->njobs; i++) {
    const mg_conf_job_t *j = c->jobs[i];
    ENSURE(j->name && *j->name);
    ENSURE(j->interval_ms > 0 && j->timeout_ms > 0 && j->timeout_ms <= j->interval_ms);
    ENSURE(!strcmp(j->scheme, "http") || !strcmp(j->scheme, "https"));
    ENSURE(j->metrics_path[0] == '/');
    ENSURE(j->ntargets <= MG_CONF_MAX_TARGETS);
    check_duration(j->timeout_ms);
    for (size_t t = 0; t < j->ntargets; t++) ENSURE(j->targets[t]->address && strchr(j->targets[t]->address, ':'));
    for (size_t p = 0; p < i; p++) ENSURE(strcmp(c->jobs[p]->name, j->name) != 0);
  }
  for (size_t i = 0; i < c->ndests; i++) {
    const mg_conf_dest_t *d = c->dests[i];
    ENSURE(d->name && *d->name);
    ENSURE(d->kind == MG_DEST_REMOTE_WRITE);
    ENSURE(!strncmp(d->url, "http://", 7) || !strncmp(d->url, "https://", 8));
    ENSURE(d->remote_timeout_ms > 0 && d->metadata_send_interval_ms > 0);
    ENSURE(d->queue.capacity && d->queue.max_shards && d->queue.min_shards <= d->queue.max_shards);
    ENSURE(d->queue.max_samples_per_send && d->queue.min_backoff_ms <= d->queue.max_backoff_ms);
    bool basic = d->auth.basic_username || d->auth.basic_password || d->auth.basic_password_file;
    ENSURE(!(basic && d->auth.auth_type));
    for (size_t p = 0; p < i; p++) ENSURE(strcmp(c->dests[p]->name, d->name) != 0);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!devnull) devnull = fopen("/dev/null", "w");
  uint64_t h = mg_hash64(data, size, 0);
  bool inject = (h & 7) == 0;
  if (inject) mg_mem_fail_at(1 + (h >> 3) % 256);

  mg_conf_t *c = (mg_conf_t *)&h; /* must be overwritten */
  mg_conf_error_t err;
  memset(&err, 0, sizeof(err));
  int rc = mg_promyml_load_buf((const char *)data, size, "fuzz.yml", &c, &err);
  mg_mem_fail_at(0);

  if (rc == 0) {
    ENSURE(c != NULL);
    check_plan(c);
    if (devnull) mg_conf_print(c, devnull);
    mg_conf_free(c);
    return 0;
  }
  ENSURE(c == NULL);
  ENSURE(rc == MG_ECONFIG || rc == MG_ENOMEM || rc == MG_ETOOBIG);
  ENSURE(inject || rc != MG_ENOMEM);
  ENSURE(err.msg[0] != '\0');
  for (const char *m = err.msg; *m; m++) ENSURE((unsigned char)*m >= 0x20 && *m != 0x7f);
  ENSURE(!strcmp(err.file, "fuzz.yml"));
  size_t lines = 1;
  /* An upper bound of libyaml's line count: \r\n counts twice here, and
   * NEL, LS and PS (UTF-8 C2 85, E2 80 A8, E2 80 A9) break lines too. */
  for (size_t i = 0; i < size; i++)
    lines += data[i] == '\n' || data[i] == '\r' || (data[i] == 0x85 && i && data[i - 1] == 0xC2) ||
             ((data[i] == 0xA8 || data[i] == 0xA9) && i > 1 && data[i - 1] == 0x80 && data[i - 2] == 0xE2);
  ENSURE(err.line <= lines + 1);
  return 0;
}
