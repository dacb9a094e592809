/* mg_sd_http: the "http" discovery provider (Prometheus http_sd_configs).
 * Polls a URL every refresh_interval with the shared HTTP client and
 * reports the target groups of its JSON answer. Owns its timer, request,
 * copies of its options and the Authorization value; borrows the loop and
 * the client. */
#ifndef MG_SD_HTTP_H
#define MG_SD_HTTP_H

#include <stddef.h>

#include "mg_json.h"
#include "mg_sd.h"

/* Options (as in Prometheus): url (http/https, required), refresh_interval
 * (default 60s), basic_auth, authorization, bearer_token[_file],
 * tls_config, follow_redirects (false only), enable_http2 (ignored). */
extern const mg_sd_ops_t mg_sd_http_ops;

#define MG_SD_HTTP_DEFAULT_REFRESH_MS 60000
#define MG_SD_HTTP_MAX_BODY MG_JSON_MAX_ARRAY_INPUT /* 16 MiB, after gzip */

/* Decode an answer body: a JSON list of {"targets": [...], "labels":
 * {...}} (null members are empty; other members refused, as Prometheus
 * does). Every target gets its group's labels and __meta_url = url. Pure.
 * Returns 0 with the targets appended to *out; or MG_EPARSE (also for bad
 * label names, a group over MG_JSON_MAX_INPUT, more than
 * MG_CONF_MAX_TARGETS targets) or MG_ENOMEM with a one-line reason in why
 * and *out as it was. */
int mg_sd_http_decode(const char *body, size_t len, const char *url, mg_sd_targets_t *out, char *why,
                      size_t whylen);

#endif
