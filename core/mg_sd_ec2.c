/* mg_sd_ec2: one refresh is a chain of requests on the loop — the region
 * from IMDSv2 when none is configured, DescribeAvailabilityZones until it
 * once succeeds, then DescribeInstances page by page — with at most one
 * request in flight per source. Targets accumulate across pages and are
 * reported when the last page arrived. Must not block, log secrets, or
 * call the update callback after stop. */
#include "mg_sd_ec2.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mg_creds.h"
#include "mg_err.h"
#include "mg_log.h"
#include "mg_loop.h"
#include "mg_mem.h"
#include "mg_sigv4.h"
#include "mg_xml.h"

#define DEFAULT_REFRESH_MS 60000
#define DEFAULT_PORT 80
/* Instances per DescribeInstances page (AWS allows 5-1000). An instance is
 * 3-8 KiB of XML, so a page stays well inside MAX_PAGE_BYTES. */
#define PAGE_SIZE "500"
#define MAX_PAGE_BYTES (16u << 20)
/* 1000 pages of 500 exceed MG_CONF_MAX_TARGETS: the target limit ends a
 * runaway listing first; this bounds a service that repeats itself. */
#define MAX_PAGES 1000
#define MAX_FILTERS 50
#define MAX_FILTER_VALUES 200
#define MAX_DEVICE_INDEX 64 /* network cards * interfaces of the largest instances */
#define MAX_ZONES 1000
/* Per instance: AWS allows far fewer interfaces and addresses; these only
 * bound what a broken answer can make us hold (and strv_has's cost). */
#define MAX_SUBNETS 256
#define MAX_IPV6 1024
#define REQUEST_TIMEOUT_MS 30000
#define IMDS_TIMEOUT_MS 1000
#define API_VERSION "2016-11-15"
#define FORM_TYPE "application/x-www-form-urlencoded; charset=utf-8"
#define MOD "sd_ec2"

/* ------------------------------------------------------------ options */

typedef struct filter {
  char *name;
  char **values;
  size_t nvalues;
} filter_t;

typedef struct opts {
  char *region, *endpoint, *access_key, *secret_key, *profile, *role_arn;
  uint64_t refresh_ms;
  unsigned port;
  filter_t *filters;
  size_t nfilters;
  mg_conf_tls_t tls;
} opts_t;

static void opts_free(opts_t *o) {
  mg_free(o->region);
  mg_free(o->endpoint);
  mg_free(o->access_key);
  mg_mem_free_secret(o->secret_key);
  mg_free(o->profile);
  mg_free(o->role_arn);
  for (size_t i = 0; i < o->nfilters; i++) {
    for (size_t k = 0; k < o->filters[i].nvalues; k++) mg_free(o->filters[i].values[k]);
    mg_free(o->filters[i].values);
    mg_free(o->filters[i].name);
  }
  mg_free(o->filters);
  mg_free(o->tls.ca_file);
  mg_free(o->tls.cert_file);
  mg_free(o->tls.key_file);
  mg_free(o->tls.server_name);
  memset(o, 0, sizeof *o);
}

static int bad(char *why, size_t wn, const char *fmt, const char *arg) {
  char msg[300];
  snprintf(msg, sizeof msg, fmt, arg);
  snprintf(why, wn, "ec2_sd_configs: %s", msg);
  return MG_ECONFIG;
}

/* A scalar member copied into *slot (absent: left NULL). */
static int opt_str(const mg_conf_val_t *m, const char *key, char **slot, char *why, size_t wn) {
  const mg_conf_val_t *v = mg_conf_val_get(m, key);
  if (!v) return 0;
  if (v->type != MG_CONF_VAL_SCALAR) return bad(why, wn, "%s must be a string", key);
  if (!v->s[0]) return 0; /* an empty string means "not set", as in Prometheus */
  return (*slot = mg_strdup(v->s)) ? 0 : MG_ENOMEM;
}

static int opt_bool(const mg_conf_val_t *m, const char *key, bool *out, char *why, size_t wn) {
  const mg_conf_val_t *v = mg_conf_val_get(m, key);
  if (!v) return 0;
  if (v->type == MG_CONF_VAL_SCALAR && strcmp(v->s, "true") == 0) *out = true;
  else if (v->type == MG_CONF_VAL_SCALAR && strcmp(v->s, "false") == 0) *out = false;
  else return bad(why, wn, "%s must be true or false", key);
  return 0;
}

static bool region_ok(const char *r) {
  size_t n = strlen(r);
  if (!n || n > 63) return false;
  for (size_t i = 0; i < n; i++)
    if (!((r[i] >= 'a' && r[i] <= 'z') || (r[i] >= '0' && r[i] <= '9') || r[i] == '-')) return false;
  return true;
}

/* An http(s) URL with a host and no userinfo (EC2 takes SigV4 only; a
 * password there would also end up in logs). */
static bool endpoint_ok(const char *u) {
  if (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0) return false;
  const char *a = strstr(u, "://") + 3;
  size_t n = strcspn(a, "/?#");
  return n > 0 && !memchr(a, '@', n);
}

static int parse_filter(const mg_conf_val_t *f, filter_t *out, char *why, size_t wn) {
  if (f->type != MG_CONF_VAL_MAP) return bad(why, wn, "%s", "each filter must be a mapping {name, values}");
  for (size_t i = 0; i < f->n; i++)
    if (strcmp(f->keys[i], "name") != 0 && strcmp(f->keys[i], "values") != 0)
      return bad(why, wn, "unknown filter field \"%.64s\" (a filter has name and values)", f->keys[i]);
  const char *name = mg_conf_val_str(f, "name");
  if (!name || !name[0]) return bad(why, wn, "%s", "a filter needs a name (e.g. tag:Environment)");
  const mg_conf_val_t *vals = mg_conf_val_get(f, "values");
  if (!vals || vals->type != MG_CONF_VAL_LIST || vals->n == 0)
    return bad(why, wn, "filter \"%.64s\": values cannot be empty", name);
  if (vals->n > MAX_FILTER_VALUES) return bad(why, wn, "filter \"%.64s\": more than 200 values", name);
  if (!(out->name = mg_strdup(name)) || !(out->values = mg_calloc(vals->n, sizeof *out->values))) return MG_ENOMEM;
  for (size_t k = 0; k < vals->n; k++) {
    if (vals->v[k]->type != MG_CONF_VAL_SCALAR)
      return bad(why, wn, "filter \"%.64s\": values must be strings", name);
    if (!(out->values[k] = mg_strdup(vals->v[k]->s))) return MG_ENOMEM;
    out->nvalues++;
  }
  return 0;
}

static int parse_filters(const mg_conf_val_t *m, opts_t *o, char *why, size_t wn) {
  const mg_conf_val_t *fs = mg_conf_val_get(m, "filters");
  if (!fs) return 0;
  if (fs->type != MG_CONF_VAL_LIST) return bad(why, wn, "%s", "filters must be a list of {name, values}");
  if (fs->n > MAX_FILTERS) return bad(why, wn, "%s", "more than 50 filters (AWS refuses them)");
  if (fs->n && !(o->filters = mg_calloc(fs->n, sizeof *o->filters))) return MG_ENOMEM;
  for (size_t i = 0; i < fs->n; i++) {
    int rc = parse_filter(fs->v[i], &o->filters[i], why, wn);
    o->nfilters++;
    if (rc) return rc;
  }
  return 0;
}

static int parse_tls(const mg_conf_val_t *m, opts_t *o, char *why, size_t wn) {
  const mg_conf_val_t *t = mg_conf_val_get(m, "tls_config");
  if (!t) return 0;
  if (t->type != MG_CONF_VAL_MAP) return bad(why, wn, "%s", "tls_config must be a mapping");
  static const char *const known[] = {"ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify"};
  for (size_t i = 0; i < t->n; i++) {
    bool ok = false;
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) ok = ok || strcmp(t->keys[i], known[k]) == 0;
    if (!ok) return bad(why, wn, "tls_config: unsupported field \"%.64s\"", t->keys[i]);
  }
  int rc = opt_str(t, "ca_file", &o->tls.ca_file, why, wn);
  if (!rc) rc = opt_str(t, "cert_file", &o->tls.cert_file, why, wn);
  if (!rc) rc = opt_str(t, "key_file", &o->tls.key_file, why, wn);
  if (!rc) rc = opt_str(t, "server_name", &o->tls.server_name, why, wn);
  if (!rc) rc = opt_bool(t, "insecure_skip_verify", &o->tls.insecure_skip_verify, why, wn);
  if (!rc && !o->tls.cert_file != !o->tls.key_file)
    rc = bad(why, wn, "%s", "tls_config: cert_file and key_file go together");
  return rc;
}

static int check_keys(const mg_conf_val_t *m, char *why, size_t wn) {
  static const char *const known[] = {"region",           "endpoint", "access_key", "secret_key", "profile",
                                      "role_arn",         "refresh_interval", "port", "filters", "tls_config",
                                      "follow_redirects", "enable_http2"};
  for (size_t i = 0; i < m->n; i++) {
    bool ok = false;
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) ok = ok || strcmp(m->keys[i], known[k]) == 0;
    if (!ok)
      return bad(why, wn, "unsupported field \"%.64s\" (supported: region, endpoint, access_key, secret_key, profile, "
                          "role_arn, refresh_interval, port, filters, tls_config)", m->keys[i]);
  }
  bool ignored;
  int rc = opt_bool(m, "follow_redirects", &ignored, why, wn);
  return rc ? rc : opt_bool(m, "enable_http2", &ignored, why, wn);
}

static int parse_numbers(const mg_conf_val_t *m, opts_t *o, char *why, size_t wn) {
  o->refresh_ms = DEFAULT_REFRESH_MS;
  o->port = DEFAULT_PORT;
  const mg_conf_val_t *ri = mg_conf_val_get(m, "refresh_interval");
  if (ri && (ri->type != MG_CONF_VAL_SCALAR || mg_conf_parse_duration(ri->s, &o->refresh_ms) != 0 || !o->refresh_ms))
    return bad(why, wn, "%s", "refresh_interval must be a positive duration such as 60s");
  const mg_conf_val_t *p = mg_conf_val_get(m, "port");
  if (p) {
    char *end = NULL;
    unsigned long v = p->type == MG_CONF_VAL_SCALAR && p->s[0] >= '0' && p->s[0] <= '9' ? strtoul(p->s, &end, 10) : 0;
    if (!end || *end || v < 1 || v > 65535) return bad(why, wn, "%s", "port must be a number from 1 to 65535");
    o->port = (unsigned)v;
  }
  return 0;
}

/* Read and check the options; 0, MG_ECONFIG (why says which field) or
 * MG_ENOMEM. *o is filled either way: free it with opts_free. */
static int opts_parse(const mg_conf_val_t *m, opts_t *o, char *why, size_t wn) {
  memset(o, 0, sizeof *o);
  if (!m || m->type != MG_CONF_VAL_MAP) return bad(why, wn, "%s", "each entry must be a mapping");
  int rc = check_keys(m, why, wn);
  if (!rc) rc = opt_str(m, "region", &o->region, why, wn);
  if (!rc) rc = opt_str(m, "endpoint", &o->endpoint, why, wn);
  if (!rc) rc = opt_str(m, "access_key", &o->access_key, why, wn);
  if (!rc) rc = opt_str(m, "secret_key", &o->secret_key, why, wn);
  if (!rc) rc = opt_str(m, "profile", &o->profile, why, wn);
  if (!rc) rc = opt_str(m, "role_arn", &o->role_arn, why, wn);
  if (!rc) rc = parse_numbers(m, o, why, wn);
  if (!rc) rc = parse_filters(m, o, why, wn);
  if (!rc) rc = parse_tls(m, o, why, wn);
  if (rc) return rc;
  if (o->region && !region_ok(o->region)) return bad(why, wn, "region \"%.64s\" is not a region name", o->region);
  if (o->endpoint && !endpoint_ok(o->endpoint))
    return bad(why, wn, "%s", "endpoint must be an http:// or https:// URL with a host and without user:password@");
  if (!o->access_key != !o->secret_key)
    return bad(why, wn, "%s", "access_key and secret_key go together (or leave both out for the default chain)");
  if (o->role_arn && strncmp(o->role_arn, "arn:", 4) != 0)
    return bad(why, wn, "role_arn \"%.200s\" is not an ARN (arn:aws:iam::<account>:role/<name>)", o->role_arn);
  return 0;
}

/* ------------------------------------------------------------ environment */

static const char *env_nonempty(const char *name) {
  const char *v = getenv(name);
  return v && v[0] ? v : NULL;
}

static const char *env_region(void) {
  const char *r = env_nonempty("AWS_REGION");
  return r ? r : env_nonempty("AWS_DEFAULT_REGION");
}

static bool imds_disabled(void) {
  const char *v = env_nonempty("AWS_EC2_METADATA_DISABLED");
  return v && strcasecmp(v, "true") == 0;
}

static int ec2_check(const mg_conf_sd_t *sd, char *why, size_t wn) {
  opts_t o;
  int rc = opts_parse(sd->opts, &o, why, wn);
  const char *er = env_region();
  if (!rc && !o.region && er && !region_ok(er))
    rc = bad(why, wn, "AWS_REGION/AWS_DEFAULT_REGION \"%.64s\" is not a region name", er);
  if (!rc && !o.region && !er && imds_disabled())
    rc = bad(why, wn, "%s", "no region: set region (or AWS_REGION); the instance metadata service that would "
                            "tell it is disabled (AWS_EC2_METADATA_DISABLED)");
  opts_free(&o);
  return rc;
}

/* ------------------------------------------------------------ state */

typedef enum { STEP_NONE = 0, STEP_IMDS_TOKEN, STEP_IMDS_REGION, STEP_ZONES, STEP_INSTANCES } step_t;

typedef struct ec2 {
  uv_loop_t *loop;
  mg_http_client_t *http;
  opts_t o;
  char *name;      /* "ec2_sd/<job>": the credentials' name in logs and metrics */
  char *job;    /* the job's name, for our own logs */
  char *region; /* resolved: options, environment or IMDS */
  char *env_endpoint, *imds_base;
  char *url, *host, *path, *query; /* the endpoint, split as it goes on the wire */
  char *imds_token;                /* secret-ish: wiped */
  mg_creds_t *creds;
  mg_creds_waiter_t waiter;
  bool waiting;
  mg_sigv4_key_cache_t keys;
  uv_timer_t timer;
  mg_http_req_t *req;
  mg_creds_value_t *signed_with;
  step_t step;
  mg_buf_t form;
  mg_kvs_t zones; /* availability zone name -> zone id */
  bool zones_loaded, zones_tried;
  mg_sd_targets_t acc;
  char *next_token;
  unsigned pages;
  bool auth_retried;
  char last_error[200]; /* what the last logged failure was about; "" after a success */
  mg_sd_update_fn update;
  void *ud;
  bool stopped;
  unsigned refs; /* the timer handle + the request in flight */
} ec2_t;

static void send_aws(ec2_t *e);
static void refresh_step(ec2_t *e);

static void ec2_unref(ec2_t *e) {
  if (--e->refs) return;
  opts_free(&e->o);
  mg_free(e->name);
  mg_free(e->job);
  mg_free(e->region);
  mg_free(e->env_endpoint);
  mg_free(e->imds_base);
  mg_free(e->url);
  mg_free(e->host);
  mg_free(e->path);
  mg_free(e->query);
  mg_mem_free_secret(e->imds_token);
  mg_sigv4_key_cache_cleanup(&e->keys);
  mg_buf_cleanup(&e->form);
  mg_kvs_cleanup(&e->zones);
  mg_sd_targets_cleanup(&e->acc);
  mg_free(e->next_token);
  mg_free(e);
}

static void on_timer_closed(uv_handle_t *h) { ec2_unref(h->data); }

static void on_tick(uv_timer_t *t);

/* End a refresh: report, forget the partial list, and come back later. */
static void finish(ec2_t *e, bool ok) {
  e->step = STEP_NONE;
  mg_free(e->next_token);
  e->next_token = NULL;
  if (ok) {
    if (e->last_error[0])
      MG_INFO(MOD, "refresh_recovered", "job=%s region=%s targets=%zu", e->job, e->region, e->acc.n);
    e->last_error[0] = '\0';
    MG_DEBUG(MOD, "refreshed", "job=%s region=%s targets=%zu pages=%u", e->job, e->region, e->acc.n, e->pages);
  }
  e->refs++; /* the update callback may stop us */
  if (!e->stopped) e->update(e->ud, ok, ok ? &e->acc : NULL);
  mg_sd_targets_cleanup(&e->acc);
  if (!e->stopped) uv_timer_start(&e->timer, on_tick, e->o.refresh_ms, 0);
  ec2_unref(e);
}

/* A failed refresh, logged only when `key` differs from the last failure
 * logged (so a lasting outage is one line, and a change of cause is
 * another). level and the formatted text describe it. */
static void fail(ec2_t *e, const char *key, mg_log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void fail(ec2_t *e, const char *key, mg_log_level_t level, const char *event, const char *fmt, ...) {
  if (strcmp(key, e->last_error) != 0) {
    snprintf(e->last_error, sizeof e->last_error, "%s", key);
    if (level >= mg_log_level_) {
      char line[1600];
      va_list ap;
      va_start(ap, fmt);
      vsnprintf(line, sizeof line, fmt, ap);
      va_end(ap);
      mg_log_write(level, MOD, event, "job=%s region=%s %s", e->job, e->region ? e->region : "unknown", line);
    }
  }
  finish(e, false);
}

/* ------------------------------------------------------------ setup */

/* Split url the way the HTTP client sends it: Host is the authority as
 * written, path and query as written (SigV4 signs exactly those). */
static int split_endpoint(ec2_t *e, const char *url) {
  const char *p = strstr(url, "://") + 3;
  size_t alen = strcspn(p, "/?#");
  const char *rest = p + alen;
  size_t plen = strcspn(rest, "?#");
  e->host = mg_strndup(p, alen);
  e->path = plen ? mg_strndup(rest, plen) : mg_strdup("/");
  e->query = rest[plen] == '?' ? mg_strndup(rest + plen + 1, strcspn(rest + plen + 1, "#")) : mg_strdup("");
  /* The client sends an empty path as "/": so does the URL we give it. */
  size_t n = strlen(url) + 2;
  if ((e->url = mg_malloc(n)) != NULL)
    snprintf(e->url, n, "%.*s%s%s", (int)(rest - url), url, plen ? "" : "/", rest);
  return e->host && e->path && e->query && e->url ? 0 : MG_ENOMEM;
}

/* The endpoint (options, AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL as the
 * SDKs read them, else the regional one) and the credentials, once the
 * region is known. */
static int setup_region(ec2_t *e, char *why, size_t wn) {
  char def[128];
  const char *url = e->o.endpoint ? e->o.endpoint : e->env_endpoint;
  if (!url) {
    bool cn = strncmp(e->region, "cn-", 3) == 0;
    snprintf(def, sizeof def, "https://ec2.%s.amazonaws.com%s/", e->region, cn ? ".cn" : "");
    url = def;
  }
  mg_free(e->url);
  mg_free(e->host);
  mg_free(e->path);
  mg_free(e->query);
  e->url = e->host = e->path = e->query = NULL;
  int rc = split_endpoint(e, url);
  if (rc) return rc;
  mg_conf_creds_t base = {.kind = MG_CREDS_CHAIN}, top;
  if (e->o.access_key)
    base = (mg_conf_creds_t){
        .kind = MG_CREDS_STATIC, .access_key_id = e->o.access_key, .secret_access_key = e->o.secret_key};
  else if (e->o.profile) base = (mg_conf_creds_t){.kind = MG_CREDS_PROFILE, .profile = e->o.profile};
  top = base;
  if (e->o.role_arn)
    top = (mg_conf_creds_t){.kind = MG_CREDS_ASSUME_ROLE,
                            .role_arn = e->o.role_arn,
                            .source = base.kind == MG_CREDS_CHAIN ? NULL : &base};
  e->creds = mg_creds_new(e->loop, e->http, &top, e->region, e->name, NULL, &rc);
  if (!e->creds) snprintf(why, wn, "credentials: %s (see the log line above)", mg_err_str(rc));
  return e->creds ? 0 : rc;
}

/* What the environment says (region, endpoint, IMDS), read once at start
 * as the SDKs read it. */
static int read_env(ec2_t *e, const char *job, unsigned nth, char *why, size_t wn) {
  char name[300];
  snprintf(name, sizeof name, nth > 1 ? "ec2_sd/%s#%u" : "ec2_sd/%s", job, nth);
  const char *r = e->o.region ? e->o.region : env_region();
  const char *ep = env_nonempty("AWS_ENDPOINT_URL_EC2");
  if (!ep) ep = env_nonempty("AWS_ENDPOINT_URL");
  const char *imds = env_nonempty("AWS_EC2_METADATA_SERVICE_ENDPOINT");
  const char *mode = env_nonempty("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE");
  if (!imds) imds = mode && strcasecmp(mode, "IPv6") == 0 ? "http://[fd00:ec2::254]" : "http://169.254.169.254";
  if (!(e->name = mg_strdup(name)) || !(e->imds_base = mg_strndup(imds, strcspn(imds, "?#"))) ||
      (r && !(e->region = mg_strdup(r))) || (ep && !(e->env_endpoint = mg_strdup(ep))))
    return MG_ENOMEM;
  if (!(e->job = mg_strdup(job))) return MG_ENOMEM;
  if (ep && !endpoint_ok(ep))
    return bad(why, wn, "%s", "AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL must be an http(s) URL with a host");
  if (e->region && !region_ok(e->region)) return bad(why, wn, "region \"%.64s\" is not a region name", e->region);
  if (!e->region && imds_disabled())
    return bad(why, wn, "%s", "no region: set region (or AWS_REGION); AWS_EC2_METADATA_DISABLED is true");
  return 0;
}

static int ec2_start(const mg_sd_env_t *env, const mg_conf_sd_t *sd, mg_sd_update_fn update, void *ud,
                     void **state) {
  char why[400] = "";
  const char *job = env->job && env->job->name ? env->job->name : "";
  ec2_t *e = mg_calloc(1, sizeof *e);
  if (!e) return MG_ENOMEM;
  e->loop = env->loop;
  e->http = env->http;
  e->update = update;
  e->ud = ud;
  e->refs = 1;
  mg_sigv4_key_cache_init(&e->keys);
  mg_buf_init(&e->form, 1u << 20);
  /* The job's first ec2 source is "ec2_sd/<job>", a second "ec2_sd/<job>#2"... */
  unsigned nth = 0;
  for (size_t i = 0; env->job && i < env->job->nsds; i++) {
    nth += strcmp(env->job->sds[i]->kind, "ec2") == 0;
    if (env->job->sds[i] == sd) break;
  }
  int rc = opts_parse(sd->opts, &e->o, why, sizeof why);
  if (!rc) rc = read_env(e, job, nth ? nth : 1, why, sizeof why);
  if (!rc && e->region) rc = setup_region(e, why, sizeof why);
  if (rc) {
    char q[500];
    const char *reason = why[0] ? why : mg_err_str(rc);
    MG_ERROR(MOD, "start_failed", "job=%s err=%s reason=%s", job, mg_err_name(rc),
             mg_log_q(q, sizeof q, reason, strlen(reason)));
    mg_creds_free(e->creds);
    ec2_unref(e);
    return rc;
  }
  uv_timer_init(e->loop, &e->timer);
  e->timer.data = e;
  uv_timer_start(&e->timer, on_tick, 0, 0); /* the first report comes from the loop, never from here */
  *state = e;
  return 0;
}

static void ec2_stop(void *state) {
  ec2_t *e = state;
  if (!e) return;
  e->stopped = true;
  if (e->waiting) mg_creds_cancel_wait(&e->waiter);
  e->waiting = false;
  if (e->req) mg_http_client_cancel(e->req);
  mg_creds_free(e->creds);
  e->creds = NULL;
  uv_close((uv_handle_t *)&e->timer, on_timer_closed);
}

/* ------------------------------------------------------------ requests */

static void on_response(void *ud, int err, const char *detail, mg_http_response_t *resp);

static int send_request(ec2_t *e, const char *method, const char *url, const mg_http_header_t *h, size_t nh,
                        bool aws, uint64_t timeout_ms) {
  mg_http_tls_opts_t tls = {.ca_file = e->o.tls.ca_file,
                            .cert_file = e->o.tls.cert_file,
                            .key_file = e->o.tls.key_file,
                            .server_name = e->o.tls.server_name,
                            .insecure_skip_verify = e->o.tls.insecure_skip_verify};
  mg_http_request_t req = {.method = method,
                           .url = url,
                           .headers = h,
                           .nheaders = nh,
                           .body = aws ? e->form.data : NULL,
                           .body_len = aws ? e->form.len : 0,
                           .timeout_ms = timeout_ms,
                           .max_body = aws ? MAX_PAGE_BYTES : 4096,
                           .tls = aws ? &tls : NULL};
  e->refs++;
  int rc = mg_http_client_request(e->http, &req, on_response, e, &e->req);
  if (rc) {
    e->refs--;
    e->req = NULL;
  }
  return rc;
}

/* Form values percent-encoded as SigV4 canonicalises them. */
static int form_add(mg_buf_t *b, const char *name, const char *value) {
  int rc = mg_buf_printf(b, "&%s=", name);
  for (const unsigned char *p = (const unsigned char *)value; *p && !rc; p++) {
    bool keep = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                *p == '_' || *p == '.' || *p == '~';
    rc = keep ? mg_buf_append_byte(b, *p) : mg_buf_printf(b, "%%%02X", *p);
  }
  return rc;
}

static int build_form(ec2_t *e) {
  mg_buf_t *b = &e->form;
  mg_buf_reset(b);
  if (e->step == STEP_ZONES) return mg_buf_printf(b, "Action=DescribeAvailabilityZones&Version=%s", API_VERSION);
  int rc = mg_buf_printf(b, "Action=DescribeInstances&Version=%s&MaxResults=%s", API_VERSION, PAGE_SIZE);
  char name[64];
  for (size_t i = 0; i < e->o.nfilters && !rc; i++) {
    snprintf(name, sizeof name, "Filter.%zu.Name", i + 1);
    rc = form_add(b, name, e->o.filters[i].name);
    for (size_t k = 0; k < e->o.filters[i].nvalues && !rc; k++) {
      snprintf(name, sizeof name, "Filter.%zu.Value.%zu", i + 1, k + 1);
      rc = form_add(b, name, e->o.filters[i].values[k]);
    }
  }
  if (!rc && e->next_token) rc = form_add(b, "NextToken", e->next_token);
  return rc;
}

static void on_creds_ready(void *ud, int err) {
  ec2_t *e = ud;
  e->waiting = false;
  if (e->stopped) return;
  if (err) {
    mg_creds_info_t info;
    mg_creds_describe(e->creds, &info);
    char key[64], msg[600];
    snprintf(key, sizeof key, "creds:%s", mg_err_name(err));
    fail(e, key, MG_LOG_ERROR, "credentials_unavailable", "err=%s reason=%s hint=\"see docs/credentials.md\"",
         mg_err_name(err), mg_log_q(msg, sizeof msg, info.last_error, strlen(info.last_error)));
    return;
  }
  send_aws(e);
}

/* Sign the current step's form with the current credentials and send it;
 * without credentials yet, wait for them (the step stays). */
static void send_aws(ec2_t *e) {
  mg_creds_value_t *v = mg_creds_current(e->creds);
  if (!v) {
    int rc = e->waiting ? 0 : mg_creds_wait(e->creds, &e->waiter, on_creds_ready, e);
    if (rc == 0) e->waiting = true;
    else fail(e, "creds:wait", MG_LOG_ERROR, "credentials_unavailable", "err=%s", mg_err_name(rc));
    return;
  }
  int rc = build_form(e);
  mg_sigv4_header_t sh[2] = {{"host", e->host}, {"content-type", FORM_TYPE}};
  mg_sigv4_request_t sr = {.method = "POST",
                           .url_path = e->path,
                           .query = e->query,
                           .headers = sh,
                           .nheaders = 2,
                           .payload = e->form.data,
                           .payload_len = e->form.len,
                           .region = e->region,
                           .service = "ec2",
                           .unix_time = mg_wall_ms() / 1000};
  mg_sigv4_creds_t sc = {v->access_key_id, v->secret_access_key, v->session_token};
  mg_sigv4_result_t sig;
  if (!rc) rc = mg_sigv4_sign(&e->keys, &sr, &sc, 0, &sig, NULL);
  mg_http_header_t h[1 + 4];
  size_t nh = 0;
  h[nh++] = (mg_http_header_t){"Content-Type", FORM_TYPE};
  for (size_t i = 0; !rc && i < sig.nadd; i++) h[nh++] = (mg_http_header_t){sig.add[i].name, sig.add[i].value};
  if (!rc) rc = send_request(e, "POST", e->url, h, nh, true, REQUEST_TIMEOUT_MS);
  if (rc) {
    char mask[32];
    mg_log_mask(mask, sizeof mask, v->access_key_id);
    mg_creds_value_unref(v);
    fail(e, "request", MG_LOG_ERROR, "request_failed", "err=%s access_key_id=%s hint=\"check endpoint and region\"",
         mg_err_name(rc), mask);
    return;
  }
  e->signed_with = v;
}

static void ask_imds_token(ec2_t *e) {
  char url[600];
  snprintf(url, sizeof url, "%s/latest/api/token", e->imds_base);
  mg_http_header_t h[] = {{"X-aws-ec2-metadata-token-ttl-seconds", "21600"}};
  e->step = STEP_IMDS_TOKEN;
  int rc = send_request(e, "PUT", url, h, 1, false, IMDS_TIMEOUT_MS);
  if (rc) fail(e, "imds:request", MG_LOG_ERROR, "region_unknown", "err=%s", mg_err_name(rc));
}

static void ask_imds_region(ec2_t *e) {
  char url[600];
  snprintf(url, sizeof url, "%s/latest/meta-data/placement/region", e->imds_base);
  mg_http_header_t h[] = {{"X-aws-ec2-metadata-token", e->imds_token}};
  e->step = STEP_IMDS_REGION;
  int rc = send_request(e, "GET", url, h, 1, false, IMDS_TIMEOUT_MS);
  if (rc) fail(e, "imds:request", MG_LOG_ERROR, "region_unknown", "err=%s", mg_err_name(rc));
}

/* The next request of a refresh: the region first, then the zones (until
 * once known), then the instances. */
static void refresh_step(ec2_t *e) {
  if (!e->region) {
    ask_imds_token(e);
    return;
  }
  if (!e->creds) {
    char why[400] = "";
    int rc = setup_region(e, why, sizeof why);
    if (rc) {
      char q[500];
      fail(e, "setup", MG_LOG_ERROR, "setup_failed", "err=%s reason=%s", mg_err_name(rc),
           mg_log_q(q, sizeof q, why, strlen(why)));
      return;
    }
  }
  e->step = !e->zones_loaded && !e->zones_tried ? STEP_ZONES : STEP_INSTANCES;
  send_aws(e);
}

static void on_tick(uv_timer_t *t) {
  ec2_t *e = t->data;
  if (e->stopped) return;
  mg_sd_targets_cleanup(&e->acc);
  mg_free(e->next_token);
  e->next_token = NULL;
  e->pages = 0;
  e->auth_retried = false;
  e->zones_tried = false;
  refresh_step(e);
}

/* ------------------------------------------------------------ answers */

/* path[from..depth) spelled "a/b/c". */
static bool path_is(const mg_str_t *path, size_t depth, size_t from, const char *spec) {
  size_t i = from;
  for (const char *s = spec; *s;) {
    size_t n = strcspn(s, "/");
    if (i >= depth || !mg_str_eq(path[i], mg_str_n(s, n))) return false;
    i++;
    s += n + (s[n] == '/');
  }
  return i == depth;
}

static int set_text(char **slot, mg_str_t text) {
  char *s = mg_strndup(text.p ? text.p : "", text.n);
  if (!s) return MG_ENOMEM;
  mg_free(*slot);
  *slot = s;
  return 0;
}

/* An AWS error document: <Response><Errors><Error><Code>, EC2's form, or
 * <ErrorResponse><Error><Code> as other query services write it. */
typedef struct aws_error {
  char code[96];
  char message[600];
} aws_error_t;

static int on_error_leaf(void *ud, const mg_str_t *path, size_t depth, mg_str_t text) {
  aws_error_t *ae = ud;
  if (depth < 2 || !mg_str_eq_c(path[depth - 2], "Error")) return 0;
  if (mg_str_eq_c(path[depth - 1], "Code") && !ae->code[0]) {
    /* A code is a word (AuthFailure, InvalidParameterValue, ...); anything
     * else in it is masked, as it goes into log lines unquoted. */
    size_t n = text.n < sizeof ae->code - 1 ? text.n : sizeof ae->code - 1;
    for (size_t i = 0; i < n; i++) {
      char c = text.p[i];
      bool word = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                  c == '-' || c == ':';
      ae->code[i] = word ? c : '?';
    }
    ae->code[n] = '\0';
  }
  else if (mg_str_eq_c(path[depth - 1], "Message") && !ae->message[0])
    snprintf(ae->message, sizeof ae->message, "%.*s", (int)text.n, text.p);
  return 0;
}

static bool code_is_auth(const char *code) {
  /* EC2's words for refused credentials (RequestExpired is also how it
   * answers an expired session token); UnauthorizedOperation can end with
   * a role change, and Prometheus renews its client on it too. */
  static const char *const codes[] = {"AuthFailure", "RequestExpired", "UnauthorizedOperation"};
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
    if (strcmp(code, codes[i]) == 0) return true;
  return false;
}

static const char *hint_for(const char *code, int status) {
  if (strcmp(code, "AuthFailure") == 0) return "the access key is unknown or its token invalid: check the credentials";
  if (strcmp(code, "RequestExpired") == 0) return "expired credentials or a clock off by minutes: check both";
  if (strcmp(code, "UnauthorizedOperation") == 0)
    return "grant ec2:DescribeInstances and ec2:DescribeAvailabilityZones (docs/ec2.md)";
  if (strcmp(code, "SignatureDoesNotMatch") == 0) return "wrong secret key, or a proxy changed the request";
  if (strcmp(code, "RequestLimitExceeded") == 0 || status == 429 || status == 503)
    return "throttled or unavailable: targets kept; raise refresh_interval if it lasts";
  if (strncmp(code, "InvalidParameter", 16) == 0 || strcmp(code, "InvalidFilter") == 0)
    return "check filters (names as in the DescribeInstances API)";
  return status >= 500 ? "AWS-side error: targets kept, retried" : "see the message";
}

static const char *step_action(step_t s) {
  return s == STEP_ZONES ? "DescribeAvailabilityZones" : "DescribeInstances";
}

static void on_aws_error(ec2_t *e, mg_creds_value_t *sw, mg_http_response_t *resp) {
  aws_error_t ae = {"", ""};
  const char *body = resp->body ? resp->body->data : NULL;
  size_t blen = resp->body ? resp->body->len : 0;
  mg_xml_handlers_t h = {.leaf = on_error_leaf, .max_input = MAX_PAGE_BYTES};
  if (!body || mg_xml_parse_ex(body, blen, &h, &ae, NULL) != 0 || !ae.code[0]) snprintf(ae.code, sizeof ae.code, "-");
  const char *etype = mg_http_response_header(resp, "x-amzn-errortype");
  bool auth = sw && (code_is_auth(ae.code) || mg_creds_is_rejection(resp->status, etype, body, blen));
  if (auth) mg_creds_invalidate(e->creds, sw);
  if (auth && !e->auth_retried) {
    /* Credentials refused: one forced refresh, then the same request again. */
    e->auth_retried = true;
    MG_DEBUG(MOD, "auth_retry", "job=%s status=%d code=%s", e->job, resp->status, ae.code);
    send_aws(e);
    return;
  }
  if (e->step == STEP_ZONES) {
    /* Zone ids are a nicety: Prometheus lists instances without them. */
    MG_DEBUG(MOD, "zones_unavailable", "job=%s status=%d code=%s", e->job, resp->status, ae.code);
    e->zones_tried = true;
    e->step = STEP_INSTANCES;
    send_aws(e);
    return;
  }
  char key[160], msg[700], mask[32];
  snprintf(key, sizeof key, "aws:%d:%s", resp->status, ae.code);
  mg_log_q(msg, sizeof msg, ae.message, strlen(ae.message));
  fail(e, key, resp->status >= 500 || resp->status == 429 ? MG_LOG_WARN : MG_LOG_ERROR, "refresh_failed",
       "action=%s status=%d code=%s message=%s access_key_id=%s source=\"%s\" hint=\"%s; previous targets kept\"",
       step_action(e->step), resp->status, ae.code, msg, mg_log_mask(mask, sizeof mask, sw ? sw->access_key_id : ""),
       sw ? sw->source : "", hint_for(ae.code, resp->status));
}

/* ---- DescribeAvailabilityZones */

typedef struct zones_parse {
  mg_kvs_t *zones;
  char *name, *id;
} zones_parse_t;

static int on_zone_leaf(void *ud, const mg_str_t *path, size_t depth, mg_str_t text) {
  zones_parse_t *z = ud;
  if (path_is(path, depth, 1, "availabilityZoneInfo/item/zoneName")) return set_text(&z->name, text);
  if (path_is(path, depth, 1, "availabilityZoneInfo/item/zoneId")) return set_text(&z->id, text);
  return 0;
}

static int on_zone_end(void *ud, const mg_str_t *path, size_t depth) {
  zones_parse_t *z = ud;
  if (!path_is(path, depth, 1, "availabilityZoneInfo/item")) return 0;
  int rc = z->name && z->id && z->zones->n < MAX_ZONES ? mg_kvs_set(z->zones, z->name, z->id) : 0;
  mg_free(z->name);
  mg_free(z->id);
  z->name = z->id = NULL;
  return rc;
}

int mg_sd_ec2_parse_zones(const char *xml, size_t len, mg_kvs_t *zones) {
  zones_parse_t z = {zones, NULL, NULL};
  mg_xml_handlers_t h = {.leaf = on_zone_leaf, .end = on_zone_end, .max_input = MAX_PAGE_BYTES};
  int rc = mg_xml_parse_ex(xml ? xml : "", xml ? len : 0, &h, &z, NULL);
  mg_free(z.name);
  mg_free(z.id);
  return rc;
}

static void on_zones(ec2_t *e, mg_http_response_t *resp) {
  mg_kvs_cleanup(&e->zones);
  int rc = mg_sd_ec2_parse_zones(resp->body ? resp->body->data : NULL, resp->body ? resp->body->len : 0, &e->zones);
  if (rc) {
    mg_kvs_cleanup(&e->zones);
    MG_DEBUG(MOD, "zones_unreadable", "job=%s err=%s", e->job, mg_err_name(rc));
  }
  e->zones_loaded = rc == 0;
  e->zones_tried = true;
  e->step = STEP_INSTANCES;
  send_aws(e);
}

/* ---- DescribeInstances */

enum {
  F_ID = 0, F_AMI, F_STATE, F_PRIVATE_DNS, F_PUBLIC_DNS, F_TYPE, F_AZ, F_PLATFORM, F_SUBNET, F_VPC,
  F_PRIVATE_IP, F_PUBLIC_IP, F_ARCH, F_LIFECYCLE, NFIELDS
};

/* Where each field is, below reservationSet/item/instancesSet/item. */
static const struct {
  const char *rel;
  int field;
} instance_fields[] = {
    {"instanceId", F_ID},          {"imageId", F_AMI},
    {"instanceState/name", F_STATE}, {"privateDnsName", F_PRIVATE_DNS},
    {"dnsName", F_PUBLIC_DNS},     {"instanceType", F_TYPE},
    {"placement/availabilityZone", F_AZ}, {"platform", F_PLATFORM},
    {"subnetId", F_SUBNET},        {"vpcId", F_VPC},
    {"privateIpAddress", F_PRIVATE_IP}, {"ipAddress", F_PUBLIC_IP},
    {"architecture", F_ARCH},      {"instanceLifecycle", F_LIFECYCLE},
};

#define INSTANCE_PATH "reservationSet/item/instancesSet/item"
#define INSTANCE_DEPTH 5

typedef struct strv {
  char **v;
  size_t n, cap;
} strv_t;

static int strv_push(strv_t *s, const char *p) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 4;
    char **v = mg_reallocarray(s->v, cap, sizeof *v);
    if (!v) return MG_ENOMEM;
    s->v = v;
    s->cap = cap;
  }
  return (s->v[s->n] = mg_strdup(p)) != NULL ? (s->n++, 0) : MG_ENOMEM;
}

static bool strv_has(const strv_t *s, const char *p) {
  for (size_t i = 0; i < s->n; i++)
    if (strcmp(s->v[i], p) == 0) return true;
  return false;
}

static void strv_clear(strv_t *s) {
  for (size_t i = 0; i < s->n; i++) mg_free(s->v[i]);
  mg_free(s->v);
  memset(s, 0, sizeof *s);
}

/* One instance while its element is open, and the network interface and
 * IPv6 address items inside it. */
typedef struct inst {
  char *f[NFIELDS];
  mg_kvs_t tags;
  char *tag_key, *tag_value;
  strv_t subnets, ipv6, primary_ipv6; /* primary_ipv6[device index], "" in the gaps */
  char *eni_subnet, *eni_device, *eni_primary;
  strv_t eni_ipv6;
  char *v6_addr, *v6_primary;
} inst_t;

static void inst_clear(inst_t *in) {
  for (int i = 0; i < NFIELDS; i++) mg_free(in->f[i]);
  mg_kvs_cleanup(&in->tags);
  mg_free(in->tag_key);
  mg_free(in->tag_value);
  strv_clear(&in->subnets);
  strv_clear(&in->ipv6);
  strv_clear(&in->primary_ipv6);
  mg_free(in->eni_subnet);
  mg_free(in->eni_device);
  mg_free(in->eni_primary);
  strv_clear(&in->eni_ipv6);
  mg_free(in->v6_addr);
  mg_free(in->v6_primary);
  memset(in, 0, sizeof *in);
}

typedef struct page {
  const mg_sd_ec2_page_opts_t *o;
  mg_sd_targets_t *ts;
  inst_t in;
  char *owner;      /* of the reservation being read */
  size_t res_start; /* its first target in ts */
  char *next_token;
  bool root_ok;
} page_t;

/* Prometheus's label-name sanitizing: every character (code point) other
 * than [a-zA-Z0-9_] becomes one '_'. */
static int tag_label(const char *key, char **out) {
  size_t n = strlen(key);
  static const char pre[] = "__meta_ec2_tag_";
  char *s = mg_malloc(sizeof pre + n);
  if (!s) return MG_ENOMEM;
  memcpy(s, pre, sizeof pre - 1);
  size_t o = sizeof pre - 1;
  for (size_t i = 0; i < n;) {
    unsigned char c = (unsigned char)key[i];
    bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    size_t k = c < 0x80 ? 1 : mg_utf8_seq((const unsigned char *)key + i, n - i);
    s[o++] = keep ? (char)c : '_';
    i += k ? k : 1;
  }
  s[o] = '\0';
  *out = s;
  return 0;
}

static int add_label(mg_kvs_t *l, const char *name, const char *value) {
  return value && value[0] ? mg_kvs_add(l, name, value) : 0;
}

/* ",a,b," as Prometheus joins subnet ids and IPv6 addresses (",," when
 * there are none). */
static int add_list_label(mg_kvs_t *l, const char *name, const strv_t *s) {
  mg_buf_t b;
  mg_buf_init(&b, 0);
  int rc = mg_buf_append_str(&b, s->n ? "," : ",,");
  for (size_t i = 0; i < s->n && !rc; i++) {
    rc = mg_buf_append_str(&b, s->v[i]);
    if (!rc) rc = mg_buf_append_byte(&b, ',');
  }
  if (!rc) rc = mg_kvs_add(l, name, b.data);
  mg_buf_cleanup(&b);
  return rc;
}

static int instance_labels(const mg_sd_ec2_page_opts_t *o, const inst_t *in, mg_kvs_t *l) {
  char *const *f = in->f;
  int rc = add_label(l, "__meta_ec2_instance_id", f[F_ID]);
  if (!rc) rc = add_label(l, "__meta_ec2_region", o->region);
  if (!rc) rc = add_label(l, "__meta_ec2_private_ip", f[F_PRIVATE_IP]);
  if (!rc) rc = add_label(l, "__meta_ec2_private_dns_name", f[F_PRIVATE_DNS]);
  if (!rc) rc = add_label(l, "__meta_ec2_platform", f[F_PLATFORM]);
  if (!rc && f[F_PUBLIC_IP]) rc = add_label(l, "__meta_ec2_public_ip", f[F_PUBLIC_IP]);
  if (!rc && f[F_PUBLIC_IP]) rc = add_label(l, "__meta_ec2_public_dns_name", f[F_PUBLIC_DNS]);
  if (!rc) rc = add_label(l, "__meta_ec2_ami", f[F_AMI]);
  if (!rc) rc = add_label(l, "__meta_ec2_availability_zone", f[F_AZ]);
  if (!rc && f[F_AZ] && o->zones) rc = add_label(l, "__meta_ec2_availability_zone_id", mg_kvs_get(o->zones, f[F_AZ]));
  if (!rc) rc = add_label(l, "__meta_ec2_instance_state", f[F_STATE]);
  if (!rc) rc = add_label(l, "__meta_ec2_instance_type", f[F_TYPE]);
  if (!rc) rc = add_label(l, "__meta_ec2_instance_lifecycle", f[F_LIFECYCLE]);
  if (!rc) rc = add_label(l, "__meta_ec2_architecture", f[F_ARCH]);
  if (!rc && f[F_VPC]) {
    /* Network details only for instances in a VPC, as Prometheus does. */
    rc = add_label(l, "__meta_ec2_vpc_id", f[F_VPC]);
    if (!rc) rc = add_label(l, "__meta_ec2_primary_subnet_id", f[F_SUBNET]);
    if (!rc) rc = add_list_label(l, "__meta_ec2_subnet_id", &in->subnets);
    if (!rc && in->ipv6.n) rc = add_list_label(l, "__meta_ec2_ipv6_addresses", &in->ipv6);
    if (!rc && in->primary_ipv6.n) rc = add_list_label(l, "__meta_ec2_primary_ipv6_addresses", &in->primary_ipv6);
  }
  for (size_t i = 0; i < in->tags.n && !rc; i++) {
    char *name = NULL;
    rc = tag_label(in->tags.v[i].name, &name);
    if (!rc && in->tags.v[i].value[0]) rc = mg_kvs_set(l, name, in->tags.v[i].value);
    mg_free(name);
  }
  return rc;
}

static bool ip_literal(const char *s) {
  unsigned char b[16];
  return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

/* An instance element ended: a target if it has a private IP. */
static int emit_instance(page_t *pg) {
  const char *ip = pg->in.f[F_PRIVATE_IP];
  if (!ip || !ip[0]) return 0; /* stopped or terminated: nothing to scrape */
  if (!ip_literal(ip)) return 0; /* not an address ("[0.0.0.4"): it would make a broken __address__ */
  if (pg->ts->n >= (pg->o->max_targets ? pg->o->max_targets : MG_CONF_MAX_TARGETS)) return MG_ETOOBIG;
  char addr[320];
  snprintf(addr, sizeof addr, strchr(ip, ':') ? "[%.256s]:%u" : "%.256s:%u", ip, pg->o->port);
  mg_conf_target_t *t = mg_sd_targets_add(pg->ts, addr);
  return t ? instance_labels(pg->o, &pg->in, &t->labels) : MG_ENOMEM;
}

/* A network interface item ended: its subnet (once) and IPv6 addresses
 * join the instance's; interfaces without a subnet are skipped whole. */
static int end_interface(inst_t *in) {
  int rc = 0;
  if (in->eni_subnet) {
    if (in->subnets.n < MAX_SUBNETS && !strv_has(&in->subnets, in->eni_subnet))
      rc = strv_push(&in->subnets, in->eni_subnet);
    for (size_t i = 0; i < in->eni_ipv6.n && in->ipv6.n < MAX_IPV6 && !rc; i++)
      rc = strv_push(&in->ipv6, in->eni_ipv6.v[i]);
    char *end = NULL;
    unsigned long idx = in->eni_device && in->eni_device[0] ? strtoul(in->eni_device, &end, 10) : MAX_DEVICE_INDEX;
    if (!rc && in->eni_primary && end && !*end && idx < MAX_DEVICE_INDEX) {
      while (!rc && in->primary_ipv6.n <= idx) rc = strv_push(&in->primary_ipv6, "");
      if (!rc) rc = set_text(&in->primary_ipv6.v[idx], mg_str(in->eni_primary));
    }
  }
  mg_free(in->eni_subnet);
  mg_free(in->eni_device);
  mg_free(in->eni_primary);
  in->eni_subnet = in->eni_device = in->eni_primary = NULL;
  strv_clear(&in->eni_ipv6);
  return rc;
}

static int end_ipv6_item(inst_t *in) {
  int rc = 0;
  if (in->v6_addr && in->v6_addr[0] && in->eni_ipv6.n < MAX_IPV6) {
    rc = strv_push(&in->eni_ipv6, in->v6_addr);
    if (!rc && in->v6_primary && strcmp(in->v6_primary, "true") == 0)
      rc = set_text(&in->eni_primary, mg_str(in->v6_addr));
  }
  mg_free(in->v6_addr);
  mg_free(in->v6_primary);
  in->v6_addr = in->v6_primary = NULL;
  return rc;
}

static int end_tag_item(inst_t *in) {
  int rc = in->tag_key && in->tag_value && in->tags.n < MG_CONF_MAX_LABELS
               ? mg_kvs_add(&in->tags, in->tag_key, in->tag_value) : 0;
  mg_free(in->tag_key);
  mg_free(in->tag_value);
  in->tag_key = in->tag_value = NULL;
  return rc;
}

static int on_instance_leaf(inst_t *in, const mg_str_t *path, size_t depth, mg_str_t text) {
  const size_t b = INSTANCE_DEPTH;
  for (size_t i = 0; i < sizeof instance_fields / sizeof instance_fields[0]; i++)
    if (path_is(path, depth, b, instance_fields[i].rel)) return set_text(&in->f[instance_fields[i].field], text);
  if (path_is(path, depth, b, "tagSet/item/key")) return set_text(&in->tag_key, text);
  if (path_is(path, depth, b, "tagSet/item/value")) return set_text(&in->tag_value, text);
  if (path_is(path, depth, b, "networkInterfaceSet/item/subnetId")) return set_text(&in->eni_subnet, text);
  if (path_is(path, depth, b, "networkInterfaceSet/item/attachment/deviceIndex"))
    return set_text(&in->eni_device, text);
  if (path_is(path, depth, b, "networkInterfaceSet/item/ipv6AddressesSet/item/ipv6Address"))
    return set_text(&in->v6_addr, text);
  if (path_is(path, depth, b, "networkInterfaceSet/item/ipv6AddressesSet/item/isPrimaryIpv6"))
    return set_text(&in->v6_primary, text);
  return 0;
}

static int on_page_leaf(void *ud, const mg_str_t *path, size_t depth, mg_str_t text) {
  page_t *pg = ud;
  /* The first leaf comes before any end: check the root there. */
  if (!pg->root_ok && !mg_str_eq_c(path[0], "DescribeInstancesResponse")) return MG_EPARSE;
  pg->root_ok = true;
  if (depth > INSTANCE_DEPTH && path_is(path, INSTANCE_DEPTH, 1, INSTANCE_PATH))
    return on_instance_leaf(&pg->in, path, depth, text);
  if (path_is(path, depth, 1, "reservationSet/item/ownerId")) return set_text(&pg->owner, text);
  if (path_is(path, depth, 1, "nextToken")) return set_text(&pg->next_token, text);
  return 0;
}

static int on_page_end(void *ud, const mg_str_t *path, size_t depth) {
  page_t *pg = ud;
  if (depth > INSTANCE_DEPTH && path_is(path, INSTANCE_DEPTH, 1, INSTANCE_PATH)) {
    if (path_is(path, depth, INSTANCE_DEPTH, "tagSet/item")) return end_tag_item(&pg->in);
    if (path_is(path, depth, INSTANCE_DEPTH, "networkInterfaceSet/item")) return end_interface(&pg->in);
    if (path_is(path, depth, INSTANCE_DEPTH, "networkInterfaceSet/item/ipv6AddressesSet/item"))
      return end_ipv6_item(&pg->in);
    return 0;
  }
  if (path_is(path, depth, 1, INSTANCE_PATH)) {
    int rc = emit_instance(pg);
    inst_clear(&pg->in);
    return rc;
  }
  if (path_is(path, depth, 1, "reservationSet/item")) {
    /* The owner is the reservation's: label its instances now that it ended. */
    int rc = 0;
    for (size_t i = pg->res_start; i < pg->ts->n && !rc; i++)
      rc = add_label(&pg->ts->v[i].labels, "__meta_ec2_owner_id", pg->owner);
    pg->res_start = pg->ts->n;
    mg_free(pg->owner);
    pg->owner = NULL;
    return rc;
  }
  return 0;
}

int mg_sd_ec2_parse_instances(const char *xml, size_t len, const mg_sd_ec2_page_opts_t *o, mg_sd_targets_t *ts,
                              char **next_token, mg_xml_error_t *err) {
  page_t pg = {.o = o, .ts = ts, .res_start = ts->n};
  mg_xml_handlers_t h = {.leaf = on_page_leaf, .end = on_page_end, .max_input = MAX_PAGE_BYTES};
  if (err) *err = (mg_xml_error_t){0, NULL};
  *next_token = NULL;
  int rc = mg_xml_parse_ex(xml ? xml : "", xml ? len : 0, &h, &pg, err);
  inst_clear(&pg.in);
  mg_free(pg.owner);
  if (rc || (pg.next_token && !pg.next_token[0])) {
    mg_free(pg.next_token);
    pg.next_token = NULL;
  }
  *next_token = pg.next_token;
  return rc;
}

static void on_instances(ec2_t *e, mg_http_response_t *resp) {
  mg_sd_ec2_page_opts_t po = {.region = e->region, .port = e->o.port, .zones = &e->zones};
  mg_xml_error_t xe;
  char *token = NULL;
  int rc = mg_sd_ec2_parse_instances(resp->body ? resp->body->data : NULL, resp->body ? resp->body->len : 0, &po,
                                     &e->acc, &token, &xe);
  e->pages++;
  if (rc) {
    char key[64];
    snprintf(key, sizeof key, "answer:%s", mg_err_name(rc));
    if (rc == MG_ETOOBIG)
      fail(e, key, MG_LOG_ERROR, "refresh_failed", "err=ETOOBIG targets=%zu hint=\"more than %d instances match: "
           "add filters or split the job\"", e->acc.n, MG_CONF_MAX_TARGETS);
    else
      fail(e, key, MG_LOG_ERROR, "refresh_failed",
           "err=%s detail=\"unreadable DescribeInstances answer (line %u: %s)\"", mg_err_name(rc), (unsigned)xe.line,
           xe.msg ? xe.msg : rc == MG_EPARSE ? "not a DescribeInstancesResponse" : mg_err_str(rc));
    return;
  }
  if (!token) {
    finish(e, true);
    return;
  }
  bool repeated = e->next_token && strcmp(e->next_token, token) == 0;
  mg_free(e->next_token);
  e->next_token = token;
  if (repeated || e->pages >= MAX_PAGES) {
    fail(e, "answer:pages", MG_LOG_ERROR, "refresh_failed", "pages=%u detail=\"%s\"", e->pages,
         repeated ? "the same NextToken twice" : "too many pages");
    return;
  }
  e->auth_retried = false;
  send_aws(e);
}

/* ---- IMDS */

static void on_imds(ec2_t *e, int err, const char *detail, mg_http_response_t *resp) {
  bool ok = !err && resp->status == 200 && resp->body && resp->body->len > 0;
  if (ok && e->step == STEP_IMDS_TOKEN) {
    mg_mem_free_secret(e->imds_token);
    if (!(e->imds_token = mg_strndup(resp->body->data, resp->body->len))) {
      fail(e, "imds:nomem", MG_LOG_ERROR, "region_unknown", "err=ENOMEM");
      return;
    }
    ask_imds_region(e);
    return;
  }
  char region[72] = "";
  if (ok) snprintf(region, sizeof region, "%.*s", (int)strcspn(resp->body->data, " \r\n"), resp->body->data);
  mg_mem_free_secret(e->imds_token);
  e->imds_token = NULL;
  if (ok && region_ok(region)) {
    if (!(e->region = mg_strdup(region))) {
      fail(e, "imds:nomem", MG_LOG_ERROR, "region_unknown", "err=ENOMEM");
      return;
    }
    MG_INFO(MOD, "region_from_imds", "job=%s region=%s", e->job, e->region);
    refresh_step(e);
    return;
  }
  char what[200];
  if (err) snprintf(what, sizeof what, "%s: %s", mg_err_name(err), detail ? detail : mg_err_str(err));
  else snprintf(what, sizeof what, "HTTP %d%s", resp->status, ok ? " (not a region name)" : "");
  fail(e, "imds", MG_LOG_ERROR, "region_unknown", "imds=%s detail=\"%s\" hint=\"set region in ec2_sd_configs or "
       "AWS_REGION; off EC2 there is no instance metadata to ask\"", e->imds_base, what);
}

static void on_response(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  ec2_t *e = ud;
  e->req = NULL;
  mg_creds_value_t *sw = e->signed_with;
  e->signed_with = NULL;
  if (!e->stopped && err != MG_ECANCELED) {
    if (e->step == STEP_IMDS_TOKEN || e->step == STEP_IMDS_REGION) {
      on_imds(e, err, detail, resp);
    } else if (err) {
      char key[64];
      snprintf(key, sizeof key, "net:%s", mg_err_name(err));
      fail(e, key, MG_LOG_WARN, "refresh_failed", "action=%s url=%s err=%s detail=\"%s\" hint=\"previous targets "
           "kept; retried in refresh_interval\"", step_action(e->step), e->url, mg_err_name(err),
           detail ? detail : mg_err_str(err));
    } else if (resp->status < 200 || resp->status > 299) {
      on_aws_error(e, sw, resp);
    } else if (e->step == STEP_ZONES) {
      on_zones(e, resp);
    } else {
      on_instances(e, resp);
    }
  }
  mg_creds_value_unref(sw);
  ec2_unref(e);
}

const mg_sd_ops_t mg_sd_ec2_ops = {
    .kind = "ec2",
    .check = ec2_check,
    .start = ec2_start,
    .stop = ec2_stop,
};
