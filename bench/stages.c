/* stages: run one stage of moongate's per-sample path over an exposition
 * page, many times, so callgrind can count instructions per sample for
 * each stage (bench/callgrind.sh divides and subtracts). Stages, each
 * including the ones before:
 *   parse    mg_parse with an empty callback
 *   lookup   + hash of the series bytes and the series-table lookup
 *   ingest   the whole scrape path as in `run`: labels, decisions (cached),
 *            encoding into a staged WriteRequest, staleness sweep
 *   compress + snappy over the encoded WriteRequest bytes */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "mg_buf.h"
#include "mg_conf.h"
#include "mg_parse.h"
#include "mg_scrape.h"
#include "mg_series.h"
#include "mg_wire.h"

static int on_nothing(void *ud, const mg_parse_sample_t *s) {
  (*(size_t *)ud)++;
  (void)s;
  return 0;
}

static mg_series_table_t table;
static int on_lookup(void *ud, const mg_parse_sample_t *s) {
  bool is_new;
  mg_series_entry_t *e = mg_series_upsert(&table, mg_series_hash(s->series.p, s->series.n, 0), s->series, &is_new);
  e->epoch = table.epoch;
  (*(size_t *)ud)++;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: stages parse|lookup|ingest|compress PAGE ITERATIONS\n");
    return 2;
  }
  const char *stage = argv[1];
  int iters = atoi(argv[3]);
  mg_buf_t page;
  mg_buf_init(&page, 0);
  FILE *f = fopen(argv[2], "rb");
  if (!f) return perror(argv[2]), 1;
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) mg_buf_append(&page, chunk, n);
  fclose(f);
  size_t samples = 0;
  mg_series_init(&table);
  if (!strcmp(stage, "parse") || !strcmp(stage, "lookup")) {
    mg_parse_callbacks_t cb = {!strcmp(stage, "parse") ? on_nothing : on_lookup, NULL};
    for (int i = 0; i < iters; i++) {
      mg_series_begin(&table);
      if (mg_parse(page.data, page.len, MG_FMT_PROM_TEXT, &cb, &samples, NULL) != 0) return 1;
    }
  } else {
    /* One target of one job, no destinations (dry run): the ingest path
     * stages everything it would send. */
    uv_loop_t loop;
    uv_loop_init(&loop);
    mg_conf_t *c = mg_conf_new("stages", MG_CONF_PROMYML);
    mg_conf_job_t *j = mg_conf_add_job(c, "bench");
    mg_conf_job_add_target(j, "127.0.0.1:19100");
    mg_conf_set_str(&j->scheme, "http");
    mg_conf_set_str(&j->metrics_path, "/metrics");
    j->honor_timestamps = true;
    j->interval_ms = j->timeout_ms = 5000;
    int err;
    mg_scrape_t *s = mg_scrape_new(&loop, NULL, c, NULL, 1, &err);
    if (!s) return 1;
    mg_buf_t out;
    mg_buf_init(&out, 0);
    for (int i = 0; i < iters; i++) {
      char why[256];
      if (mg_scrape_ingest(s, 0, page.data, page.len, "text/plain", 1700000000000 + i * 5000, why, sizeof why))
        return fprintf(stderr, "%s\n", why), 1;
      if (!strcmp(stage, "compress")) {
        /* The encoded bytes of one scrape are about page.len * 1.1: snappy
         * on the page stands in for it with the same redundancy. */
        mg_buf_reset(&out);
        mg_wire_snappy_compress(page.data, page.len, &out);
      }
    }
    mg_parse_callbacks_t cb = {on_nothing, NULL};
    mg_parse(page.data, page.len, MG_FMT_PROM_TEXT, &cb, &samples, NULL);
    samples *= (size_t)iters;
    mg_buf_cleanup(&out);
    mg_scrape_free(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    mg_conf_free(c);
  }
  printf("%zu samples\n", samples);
  mg_series_cleanup(&table);
  mg_buf_cleanup(&page);
  return 0;
}
