/* mg_promyml: imports an existing prometheus.yml into an mg_conf_t, so a
 * Prometheus (agent) setup moves to moongate unchanged. Every key moongate
 * cannot honour is refused with its path and line; nothing is silently
 * dropped that would change what gets scraped or sent. Startup only: reads
 * one file, never touches the event loop.
 *
 * Supported (Prometheus 2.42 meaning and defaults):
 *   global: scrape_interval, scrape_timeout, external_labels,
 *     evaluation_interval (checked, then ignored: moongate evaluates no rules)
 *   scrape_configs[]: job_name, scrape_interval, scrape_timeout,
 *     metrics_path, scheme, params, honor_labels, honor_timestamps,
 *     enable_compression (from Prometheus 2.49), body_size_limit,
 *     sample_limit, label_limit, label_name_length_limit,
 *     label_value_length_limit, basic_auth, authorization, bearer_token(_file),
 *     tls_config, static_configs[]{targets, labels}
 *   remote_write[]: url, name, remote_timeout, headers, basic_auth,
 *     authorization, bearer_token(_file), tls_config, queue_config,
 *     metadata_config{send, send_interval}
 * Accepted and ignored, because they cannot change what is sent:
 *   - list-valued keys given as null or [] (rule_files, remote_read,
 *     scrape_config_files, relabel_configs, metric_relabel_configs,
 *     write_relabel_configs, *_sd_configs): an empty list does nothing;
 *   - alerting whose alertmanagers list no targets (the file Prometheus
 *     ships has one): with no rules there are no alerts;
 *   - enable_http2: moongate speaks HTTP/1.1, the samples are the same;
 *   - follow_redirects: false, send_exemplars: false,
 *     send_native_histograms: false (what moongate does anyway).
 * YAML anchors, aliases and merge keys (<<) work. A null value means the
 * key is absent. Environment variables are not expanded (Prometheus does
 * not expand them either, except in external_labels: refused when a value
 * holds '$', so the plan never differs silently). */
#ifndef MG_PROMYML_H
#define MG_PROMYML_H

#include <stddef.h>

#include "mg_conf.h"

/* Largest prometheus.yml accepted. */
#define MG_PROMYML_MAX_BYTES (16u << 20)

/* Read path (at most MG_PROMYML_MAX_BYTES) and import it. On success *out
 * is a finished (defaults filled, checked, frozen) conf that the caller
 * frees with mg_conf_free. On failure *out is NULL, *err says where (file,
 * 1-based line when known, message naming the key path) and the result is
 * MG_EIO (unreadable), MG_ETOOBIG, MG_ECONFIG or MG_ENOMEM. */
int mg_promyml_load(const char *path, mg_conf_t **out, mg_conf_error_t *err);

/* Same, from memory; name is used as the conf path and in errors. */
int mg_promyml_load_buf(const char *yaml, size_t len, const char *name, mg_conf_t **out, mg_conf_error_t *err);

#endif
