/* mg_credscli: one credential provider, one signed GetCallerIdentity, on a
 * private loop; output is human text on stdout, errors on stderr. */
#include "mg_credscli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "mg_creds.h"
#include "mg_err.h"
#include "mg_http_client.h"
#include "mg_log.h"
#include "mg_loop.h"
#include "mg_sigv4.h"
#include "mg_xml.h"

typedef struct cli {
  uv_loop_t loop;
  uv_timer_t timer;
  mg_http_client_t *http;
  mg_creds_t *creds;
  mg_creds_waiter_t waiter;
  const char *region;
  char url[512];
  char host[256];
  int exit_code;
  int done;
  char arn[512], account[64], user_id[256];
} cli_t;

static const char body[] = "Action=GetCallerIdentity&Version=2011-06-15";

static void finish(cli_t *c, int code) {
  if (c->done) return;
  c->done = 1;
  c->exit_code = code;
  uv_timer_stop(&c->timer);
  mg_creds_cancel_wait(&c->waiter);
  mg_creds_free(c->creds);
  c->creds = NULL;
  mg_http_client_free(c->http);
  c->http = NULL;
  uv_close((uv_handle_t *)&c->timer, NULL);
}

static int on_leaf(void *ud, const mg_str_t *path, size_t depth, mg_str_t text) {
  cli_t *c = ud;
  mg_str_t leaf = path[depth - 1];
  char *slot = mg_str_eq_c(leaf, "Arn") ? c->arn : mg_str_eq_c(leaf, "Account") ? c->account
               : mg_str_eq_c(leaf, "UserId") ? c->user_id : NULL;
  size_t cap = slot == c->arn ? sizeof c->arn : slot == c->account ? sizeof c->account : sizeof c->user_id;
  if (slot) snprintf(slot, cap, "%.*s", (int)text.n, text.p);
  return 0;
}

static void on_identity(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  cli_t *c = ud;
  if (err) {
    fprintf(stderr, "sts: %s: %s\n", mg_err_name(err), detail ? detail : mg_err_str(err));
    finish(c, 1);
    return;
  }
  if (resp->status != 200) {
    fprintf(stderr, "sts: HTTP %d: %.*s\n", resp->status, (int)(resp->body->len > 400 ? 400 : resp->body->len),
            resp->body->data);
    finish(c, 1);
    return;
  }
  mg_xml_error_t xe;
  if (mg_xml_parse(resp->body->data, resp->body->len, on_leaf, c, &xe) != 0 || !c->arn[0]) {
    fprintf(stderr, "sts: unreadable GetCallerIdentity answer\n");
    finish(c, 1);
    return;
  }
  printf("caller:      %s\naccount:     %s\nuser id:     %s\n", c->arn, c->account, c->user_id);
  finish(c, 0);
}

static void ask_identity(cli_t *c, mg_creds_value_t *v) {
  mg_sigv4_header_t sh[2] = {{"host", c->host}, {"content-type", "application/x-www-form-urlencoded"}};
  const char *path = strchr(strstr(c->url, "://") + 3, '/');
  mg_sigv4_request_t sr = {.method = "POST",
                           .url_path = path ? path : "/",
                           .headers = sh,
                           .nheaders = 2,
                           .payload = body,
                           .payload_len = sizeof body - 1,
                           .region = c->region,
                           .service = "sts",
                           .unix_time = mg_wall_ms() / 1000};
  mg_sigv4_creds_t sc = {v->access_key_id, v->secret_access_key, v->session_token};
  mg_sigv4_result_t res;
  int rc = mg_sigv4_sign(NULL, &sr, &sc, 0, &res, NULL);
  mg_creds_value_unref(v);
  if (rc) {
    fprintf(stderr, "signing GetCallerIdentity: %s\n", mg_err_str(rc));
    finish(c, 1);
    return;
  }
  mg_http_header_t h[6];
  size_t nh = 0;
  h[nh++] = (mg_http_header_t){"Content-Type", "application/x-www-form-urlencoded"};
  for (size_t i = 0; i < res.nadd; i++) h[nh++] = (mg_http_header_t){res.add[i].name, res.add[i].value};
  mg_http_request_t req = {.method = "POST", .url = c->url, .headers = h, .nheaders = nh, .body = body,
                           .body_len = sizeof body - 1, .timeout_ms = 10000};
  if ((rc = mg_http_client_request(c->http, &req, on_identity, c, NULL)) != 0) {
    fprintf(stderr, "sts request: %s\n", mg_err_str(rc));
    finish(c, 1);
  }
}

static void on_creds(void *ud, int err) {
  cli_t *c = ud;
  mg_creds_info_t info;
  mg_creds_describe(c->creds, &info);
  if (err || !info.available) {
    fprintf(stderr, "no credentials: %s\n", info.last_error[0] ? info.last_error : mg_err_str(err));
    finish(c, 1);
    return;
  }
  printf("source:      %s\nprovider:    %s\naccess key:  %s\n", info.source, info.kind, info.access_key_id);
  if (info.expires_ms) {
    time_t t = (time_t)(info.expires_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char tb[32];
    strftime(tb, sizeof tb, "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("expires:     %s (in %lld s)\n", tb, (long long)((info.expires_ms - mg_wall_ms()) / 1000));
  } else {
    printf("expires:     never (long-term keys)\n");
  }
  mg_creds_value_t *v = mg_creds_current(c->creds);
  if (!v) {
    fprintf(stderr, "credentials vanished before use\n");
    finish(c, 1);
    return;
  }
  ask_identity(c, v);
}

static void on_timeout(uv_timer_t *t) {
  cli_t *c = t->data;
  fprintf(stderr, "timed out\n");
  finish(c, 1);
}

int mg_credscli_run(const mg_conf_creds_t *creds, const char *region, uint64_t timeout_ms) {
  cli_t c;
  memset(&c, 0, sizeof c);
  c.exit_code = 1;
  c.region = region && region[0] ? region : "us-east-1";
  /* The same endpoint choice as the SDKs: the STS-specific override, the
   * general one, else the regional endpoint. */
  const char *ep = getenv("AWS_ENDPOINT_URL_STS");
  if (!ep || !ep[0]) ep = getenv("AWS_ENDPOINT_URL");
  if (ep && ep[0]) snprintf(c.url, sizeof c.url, "%s%s", ep, ep[strlen(ep) - 1] == '/' ? "" : "/");
  else snprintf(c.url, sizeof c.url, "https://sts.%s.amazonaws.com/", c.region);
  const char *h = strstr(c.url, "://") + 3;
  snprintf(c.host, sizeof c.host, "%.*s", (int)strcspn(h, "/?#"), h);
  uv_loop_init(&c.loop);
  uv_timer_init(&c.loop, &c.timer);
  c.timer.data = &c;
  uv_timer_start(&c.timer, on_timeout, timeout_ms, 0);
  int err = 0;
  c.http = mg_http_client_new(&c.loop, NULL);
  c.creds = c.http ? mg_creds_new(&c.loop, c.http, creds, region, "cli", NULL, &err) : NULL;
  if (!c.creds || mg_creds_wait(c.creds, &c.waiter, on_creds, &c) != 0) {
    fprintf(stderr, "credential source: %s\n", mg_err_str(err ? err : MG_ENOMEM));
    finish(&c, 1);
  }
  uv_run(&c.loop, UV_RUN_DEFAULT);
  uv_loop_close(&c.loop);
  return c.exit_code;
}
