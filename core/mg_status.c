/* mg_status: renders the status page. Every value from the outside world
 * (URLs, labels, error text) is HTML-escaped. */
#include "mg_status.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "mg_err.h"

static int esc(mg_buf_t *b, const char *s, size_t n) {
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    switch (s[i]) {
    case '<': rc = mg_buf_append_str(b, "&lt;"); break;
    case '>': rc = mg_buf_append_str(b, "&gt;"); break;
    case '&': rc = mg_buf_append_str(b, "&amp;"); break;
    case '"': rc = mg_buf_append_str(b, "&quot;"); break;
    case '\'': rc = mg_buf_append_str(b, "&#39;"); break;
    default: rc = mg_buf_append_byte(b, (unsigned char)s[i]);
    }
  }
  return rc;
}

static int esc_c(mg_buf_t *b, const char *s) { return esc(b, s ? s : "", s ? strlen(s) : 0); }

static int when(mg_buf_t *b, int64_t ms, int64_t now_ms) {
  if (!ms) return mg_buf_append_str(b, "never");
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char tb[32];
  strftime(tb, sizeof tb, "%Y-%m-%d %H:%M:%S UTC", &tm);
  double ago = (double)(now_ms - ms) / 1000.0;
  return ago >= 0 ? mg_buf_printf(b, "%s (%.1f s ago)", tb, ago) : mg_buf_printf(b, "%s (in %.0f s)", tb, -ago);
}

static const char style[] =
    "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top;font-size:.9em}"
    "th{background:#f0f0f0}.up{color:#070;font-weight:bold}.down{color:#b00;font-weight:bold}"
    ".unknown{color:#777}code{font-size:.9em}";

int mg_status_render(mg_buf_t *b, const mg_status_input_t *in) {
  int rc = 0;
  rc |= mg_buf_printf(b, "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>moongate status</title>"
                         "<style>%s</style></head><body><h1>moongate</h1><p>version ",
                      style);
  rc |= esc_c(b, in->version);
  rc |= mg_buf_append_str(b, ", started ");
  rc |= when(b, in->started_ms, in->now_ms);
  rc |= mg_buf_append_str(b, "</p><h2>Configuration</h2><table id=\"config\"><tr><th>file</th><td><code>");
  rc |= esc_c(b, in->config_path);
  rc |= mg_buf_append_str(b, "</code></td></tr><tr><th>last successful load</th><td>");
  rc |= when(b, in->last_reload_ms, in->now_ms);
  rc |= mg_buf_append_str(b, "</td></tr><tr><th>last reload</th><td>");
  if (in->reload_error && in->reload_error[0]) {
    rc |= mg_buf_append_str(b, "<span class=\"down\">failed</span>: ");
    rc |= esc_c(b, in->reload_error);
  } else {
    rc |= mg_buf_append_str(b, "<span class=\"up\">ok</span>");
  }
  rc |= mg_buf_append_str(b, "</td></tr></table>");

  size_t n = in->scrape ? mg_scrape_ntargets(in->scrape) : 0;
  rc |= mg_buf_printf(b, "<h2>Targets (%zu)</h2><table id=\"targets\"><tr><th>job</th><th>endpoint</th>"
                         "<th>health</th><th>labels</th><th>last scrape</th><th>duration</th><th>series</th>"
                         "<th>error</th></tr>",
                      n);
  for (size_t i = 0; i < n && !rc; i++) {
    mg_scrape_target_info_t t;
    mg_scrape_target_info(in->scrape, i, &t);
    const char *h = t.health == 1 ? "up" : t.health == 0 ? "down" : "unknown";
    rc |= mg_buf_append_str(b, "<tr><td>");
    rc |= esc_c(b, t.job);
    rc |= mg_buf_append_str(b, "</td><td><code>");
    rc |= esc_c(b, t.url);
    rc |= mg_buf_printf(b, "</code></td><td class=\"%s\">%s</td><td>", h, h);
    for (size_t k = 0; k < t.nlabels; k++) {
      rc |= esc(b, t.labels[k].name.p, t.labels[k].name.n);
      rc |= mg_buf_append_str(b, "=&quot;");
      rc |= esc(b, t.labels[k].value.p, t.labels[k].value.n);
      rc |= mg_buf_append_str(b, k + 1 < t.nlabels ? "&quot;, " : "&quot;");
    }
    rc |= mg_buf_append_str(b, "</td><td>");
    rc |= when(b, t.last_scrape_ms, in->now_ms);
    rc |= mg_buf_printf(b, "</td><td>%.3f s</td><td>%zu</td><td>", t.last_duration_s, t.series);
    rc |= esc_c(b, t.last_error);
    rc |= mg_buf_append_str(b, "</td></tr>");
  }
  rc |= mg_buf_printf(b, "</table><h2>Destinations (%zu)</h2><table id=\"destinations\"><tr><th>name</th>"
                         "<th>endpoint</th><th>pending samples</th><th>queued bytes</th><th>sent samples</th>"
                         "<th>last success</th><th>last error</th><th>credentials</th></tr>",
                      in->ndests);
  for (size_t i = 0; i < in->ndests && !rc; i++) {
    mg_dest_info_t d;
    mg_dest_info(in->dests[i], &d);
    rc |= mg_buf_append_str(b, "<tr><td>");
    rc |= esc_c(b, d.name);
    rc |= mg_buf_append_str(b, "</td><td><code>");
    rc |= esc_c(b, d.url);
    rc |= mg_buf_printf(b, "</code></td><td>%llu</td><td>%llu</td><td>%llu</td><td>",
                        (unsigned long long)d.pending_samples, (unsigned long long)d.queued_bytes,
                        (unsigned long long)d.sent_samples);
    rc |= when(b, d.last_success_ms, in->now_ms);
    rc |= mg_buf_append_str(b, "</td><td>");
    rc |= esc_c(b, d.last_error);
    rc |= mg_buf_append_str(b, "</td><td>");
    if (!d.signed_requests) {
      rc |= mg_buf_append_str(b, "unsigned");
    } else {
      rc |= mg_buf_append_str(b, d.creds_available ? "SigV4, " : "<span class=\"down\">none</span>: ");
      rc |= esc_c(b, d.creds_source);
      if (d.creds_available) {
        rc |= mg_buf_append_str(b, ", key ");
        rc |= esc_c(b, d.creds_key);
        rc |= mg_buf_append_str(b, ", expires ");
        if (d.creds_expires_ms) rc |= when(b, d.creds_expires_ms, in->now_ms);
        else rc |= mg_buf_append_str(b, "never");
      }
    }
    rc |= mg_buf_append_str(b, "</td></tr>");
  }
  rc |= mg_buf_append_str(b, "</table><p><a href=\"/metrics\">/metrics</a></p></body></html>\n");
  return rc ? MG_ENOMEM : 0;
}
