/* mg_sd_http: http_sd_configs. One timer polls the URL (one request at a
 * time, the request's deadline is the refresh interval as in Prometheus);
 * the answer is decoded with mg_json into a target list. A failure keeps
 * the previous list, is reported (mg_sd counts it) and logged once until
 * the error changes.
 * The Authorization value is built once at start (credential files are
 * read at start and reload only) and wiped when the provider stops. */
#include "mg_sd_http.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "mg_auth.h"
#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"

#define MOD "sd_http"

/* ---- options ------------------------------------------------------------- */

typedef struct http_opts {
  char *url;
  uint64_t refresh_ms;
  mg_conf_auth_t auth;
  mg_conf_tls_t tls;
} http_opts_t;

static int say(char *why, size_t whylen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int say(char *why, size_t whylen, const char *fmt, ...) {
  if (why && whylen) {
    int n = snprintf(why, whylen, "http_sd_configs: ");
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < whylen) vsnprintf(why + n, whylen - (size_t)n, fmt, ap);
    va_end(ap);
    for (char *m = why; *m; m++) /* one line: names come from the file */
      if ((unsigned char)*m < 0x20 || *m == 0x7f) *m = '?';
  }
  return MG_ECONFIG;
}

static bool has_ctl(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) return true;
  return false;
}

/* The loaders leave YAML nulls out; an empty value means "not set" too,
 * as Prometheus reads an empty string. */
static bool is_null(const mg_conf_val_t *v) {
  return !v || (v->type == MG_CONF_VAL_SCALAR && (!v->s || !*v->s));
}

static int get_str(const mg_conf_val_t *v, const char *field, bool secret, char **slot, char *why, size_t whylen) {
  if (v->type != MG_CONF_VAL_SCALAR) return say(why, whylen, "%s must be a string", field);
  if (has_ctl(v->s ? v->s : "")) return say(why, whylen, "%s contains control characters", field);
  int rc = secret ? mg_conf_set_secret(slot, v->s) : mg_conf_set_str(slot, v->s);
  return rc < 0 ? MG_ENOMEM : 0;
}

static int get_bool(const mg_conf_val_t *v, const char *field, bool *out, char *why, size_t whylen) {
  static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
  static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
  if (v->type == MG_CONF_VAL_SCALAR && v->s)
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
      if (!strcmp(v->s, yes[i])) return *out = true, 0;
      if (!strcmp(v->s, no[i])) return *out = false, 0;
    }
  return say(why, whylen, "%s must be true or false", field);
}

static int get_map(const mg_conf_val_t *v, const char *field, char *why, size_t whylen) {
  return v->type == MG_CONF_VAL_MAP ? 0 : say(why, whylen, "%s must be a mapping", field);
}

static int read_basic_auth(const mg_conf_val_t *m, mg_conf_auth_t *a, char *why, size_t whylen) {
  int rc = get_map(m, "basic_auth", why, whylen);
  for (size_t i = 0; i < m->n && !rc; i++) {
    const char *k = m->keys[i];
    if (is_null(m->v[i])) continue;
    if (!strcmp(k, "username")) rc = get_str(m->v[i], "basic_auth: username", false, &a->basic_username, why, whylen);
    else if (!strcmp(k, "password"))
      rc = get_str(m->v[i], "basic_auth: password", true, &a->basic_password, why, whylen);
    else if (!strcmp(k, "password_file"))
      rc = get_str(m->v[i], "basic_auth: password_file", false, &a->basic_password_file, why, whylen);
    else rc = say(why, whylen, "basic_auth: %.64s is not supported by this moongate version", k);
  }
  /* basic_auth: {} still sends basic auth, with empty fields. */
  if (!rc && !a->basic_username && mg_conf_set_str(&a->basic_username, "") < 0) rc = MG_ENOMEM;
  if (!rc && a->basic_password && a->basic_password_file)
    rc = say(why, whylen, "basic_auth: at most one of password and password_file may be set");
  return rc;
}

/* RFC 9110 token: the authorization scheme. */
static bool valid_token(const char *s) {
  if (!*s) return false;
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch <= 0x20 || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch)) return false;
  }
  return true;
}

static int read_authorization(const mg_conf_val_t *m, mg_conf_auth_t *a, char *why, size_t whylen) {
  int rc = get_map(m, "authorization", why, whylen);
  for (size_t i = 0; i < m->n && !rc; i++) {
    const char *k = m->keys[i];
    if (is_null(m->v[i])) continue;
    if (!strcmp(k, "type")) rc = get_str(m->v[i], "authorization: type", false, &a->auth_type, why, whylen);
    else if (!strcmp(k, "credentials"))
      rc = get_str(m->v[i], "authorization: credentials", true, &a->credentials, why, whylen);
    else if (!strcmp(k, "credentials_file"))
      rc = get_str(m->v[i], "authorization: credentials_file", false, &a->credentials_file, why, whylen);
    else rc = say(why, whylen, "authorization: %.64s is not supported by this moongate version", k);
  }
  if (!rc && !a->auth_type && mg_conf_set_str(&a->auth_type, "Bearer") < 0) rc = MG_ENOMEM;
  if (rc) return rc;
  if (!valid_token(a->auth_type)) return say(why, whylen, "authorization: type must be one word, like Bearer");
  if (!strcasecmp(a->auth_type, "basic"))
    return say(why, whylen, "authorization: type cannot be \"Basic\", use basic_auth instead");
  if (a->credentials && a->credentials_file)
    return say(why, whylen, "authorization: at most one of credentials and credentials_file may be set");
  return 0;
}

static int read_tls(const mg_conf_val_t *m, mg_conf_tls_t *t, char *why, size_t whylen) {
  int rc = get_map(m, "tls_config", why, whylen);
  for (size_t i = 0; i < m->n && !rc; i++) {
    const char *k = m->keys[i];
    if (is_null(m->v[i])) continue;
    if (!strcmp(k, "ca_file")) rc = get_str(m->v[i], "tls_config: ca_file", false, &t->ca_file, why, whylen);
    else if (!strcmp(k, "cert_file"))
      rc = get_str(m->v[i], "tls_config: cert_file", false, &t->cert_file, why, whylen);
    else if (!strcmp(k, "key_file")) rc = get_str(m->v[i], "tls_config: key_file", false, &t->key_file, why, whylen);
    else if (!strcmp(k, "server_name"))
      rc = get_str(m->v[i], "tls_config: server_name", false, &t->server_name, why, whylen);
    else if (!strcmp(k, "insecure_skip_verify"))
      rc = get_bool(m->v[i], "tls_config: insecure_skip_verify", &t->insecure_skip_verify, why, whylen);
    else rc = say(why, whylen, "tls_config: %.64s is not supported by this moongate version", k);
  }
  if (rc) return rc;
  if (!t->cert_file != !t->key_file) return say(why, whylen, "tls_config: cert_file and key_file go together");
  if (t->server_name && !*t->server_name) return say(why, whylen, "tls_config: server_name is empty");
  return 0;
}

/* host[:port] of a URL: letters, digits, '-', '_', '.', or [IPv6]. */
static bool valid_authority(const char *s, size_t n) {
  size_t i = 0;
  if (n && s[0] == '[') {
    while (i < n && s[i] != ']') i++;
    if (i == n || i < 2) return false;
    for (size_t k = 1; k < i; k++)
      if (!strchr("0123456789abcdefABCDEF:.", s[k])) return false;
    i++;
  } else {
    while (i < n && s[i] != ':') {
      if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", s[i])) return false;
      i++;
    }
    if (i == 0) return false;
  }
  if (i == n) return true;
  if (s[i] != ':' || n - i < 2 || n - i > 6) return false;
  unsigned port = 0;
  for (i++; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    port = port * 10 + (unsigned)(s[i] - '0');
  }
  return port >= 1 && port <= 65535;
}

/* Never echoes the URL: its query may hold a token. */
static int check_url(const char *url, char *why, size_t whylen) {
  if (has_ctl(url) || strchr(url, ' ')) return say(why, whylen, "url contains spaces or control characters");
  const char *rest;
  if (!strncmp(url, "http://", 7)) rest = url + 7;
  else if (!strncmp(url, "https://", 8)) rest = url + 8;
  else return say(why, whylen, "url must start with http:// or https://");
  size_t auth = strcspn(rest, "/?#");
  if (memchr(rest, '@', auth)) return say(why, whylen, "url must not contain user:password@ (use basic_auth)");
  if (!valid_authority(rest, auth)) return say(why, whylen, "url has no valid host[:port]");
  return 0;
}

/* The keys of Prometheus's HTTP client config; returns 1 if k is one. */
static int http_key(const char *k, const mg_conf_val_t *v, http_opts_t *o, int *rc, char *why, size_t whylen) {
  if (!strcmp(k, "basic_auth")) *rc = read_basic_auth(v, &o->auth, why, whylen);
  else if (!strcmp(k, "authorization")) *rc = read_authorization(v, &o->auth, why, whylen);
  else if (!strcmp(k, "bearer_token")) *rc = get_str(v, "bearer_token", true, &o->auth.credentials, why, whylen);
  else if (!strcmp(k, "bearer_token_file"))
    *rc = get_str(v, "bearer_token_file", false, &o->auth.credentials_file, why, whylen);
  else if (!strcmp(k, "tls_config")) *rc = read_tls(v, &o->tls, why, whylen);
  else if (!strcmp(k, "enable_http2")) {
    bool b; /* HTTP/1.1 is all moongate speaks; the setting changes nothing */
    *rc = get_bool(v, "enable_http2", &b, why, whylen);
  } else if (!strcmp(k, "follow_redirects")) {
    bool b = false;
    *rc = get_bool(v, "follow_redirects", &b, why, whylen);
    if (!*rc && b) *rc = say(why, whylen, "follow_redirects: moongate does not follow redirects (set false)");
  } else return 0;
  return 1;
}

static void opts_cleanup(http_opts_t *o) {
  mg_free(o->url);
  mg_free(o->auth.basic_username);
  mg_mem_free_secret(o->auth.basic_password);
  mg_free(o->auth.basic_password_file);
  mg_free(o->auth.auth_type);
  mg_mem_free_secret(o->auth.credentials);
  mg_free(o->auth.credentials_file);
  mg_free(o->tls.ca_file);
  mg_free(o->tls.cert_file);
  mg_free(o->tls.key_file);
  mg_free(o->tls.server_name);
  memset(o, 0, sizeof *o);
}

/* Prometheus refuses bearer_token next to another way of authenticating;
 * here they share fields, so look at the keys as written. */
static int check_auth_keys(const mg_conf_val_t *m, char *why, size_t whylen) {
  const mg_conf_val_t *bt = mg_conf_val_get(m, "bearer_token"), *btf = mg_conf_val_get(m, "bearer_token_file");
  const mg_conf_val_t *authz = mg_conf_val_get(m, "authorization"), *basic = mg_conf_val_get(m, "basic_auth");
  bool has_bt = !is_null(bt), has_btf = !is_null(btf), has_authz = !is_null(authz), has_basic = !is_null(basic);
  if (has_bt && has_btf) return say(why, whylen, "at most one of bearer_token and bearer_token_file may be set");
  if ((has_bt || has_btf) && has_authz) return say(why, whylen, "bearer_token cannot be combined with authorization");
  if ((has_bt || has_btf || has_authz) && has_basic)
    return say(why, whylen, "at most one of basic_auth, authorization and bearer_token may be set");
  return 0;
}

static int read_opts(const mg_conf_sd_t *sd, http_opts_t *o, char *why, size_t whylen) {
  memset(o, 0, sizeof *o);
  o->refresh_ms = MG_SD_HTTP_DEFAULT_REFRESH_MS;
  const mg_conf_val_t *m = sd->opts;
  if (!m || m->type != MG_CONF_VAL_MAP) return say(why, whylen, "each entry must be a mapping");
  int rc = check_auth_keys(m, why, whylen);
  for (size_t i = 0; i < m->n && !rc; i++) {
    const char *k = m->keys[i];
    const mg_conf_val_t *v = m->v[i];
    if (is_null(v) || http_key(k, v, o, &rc, why, whylen)) continue;
    if (!strcmp(k, "url")) {
      rc = get_str(v, "url", false, &o->url, why, whylen);
    } else if (!strcmp(k, "refresh_interval")) {
      if (v->type != MG_CONF_VAL_SCALAR || mg_conf_parse_duration(v->s, &o->refresh_ms) != 0 || !o->refresh_ms)
        rc = say(why, whylen, "refresh_interval must be a positive duration like 60s");
    } else {
      rc = say(why, whylen, "%.64s is not supported by this moongate version", k);
    }
  }
  if (!rc && !o->url) rc = say(why, whylen, "url is missing");
  if (!rc) rc = check_url(o->url, why, whylen);
  if (rc && rc != MG_ECONFIG && why && whylen) snprintf(why, whylen, "http_sd_configs: %s", mg_err_str(rc));
  if (rc) opts_cleanup(o);
  return rc;
}

static int http_check(const mg_conf_sd_t *sd, char *why, size_t whylen) {
  http_opts_t o;
  int rc = read_opts(sd, &o, why, whylen);
  opts_cleanup(&o);
  return rc ? MG_ECONFIG : 0;
}

/* ---- decoding ------------------------------------------------------------ */

typedef struct group {
  mg_kvs_t labels;
  mg_str_t targets; /* raw JSON list, empty when absent or null */
} group_t;

typedef struct decode {
  const char *url;
  mg_sd_targets_t *out;
  size_t index; /* of the group being read */
  group_t g;
  char *why;
  size_t whylen;
} decode_t;

static int refuse(decode_t *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int refuse(decode_t *d, const char *fmt, ...) {
  if (d->why && d->whylen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->why, d->whylen, fmt, ap);
    va_end(ap);
    for (char *m = d->why; *m; m++)
      if ((unsigned char)*m < 0x20 || *m == 0x7f) *m = '?';
  }
  return MG_EPARSE;
}

static bool valid_label_name(mg_str_t s) {
  if (!s.n || !((s.p[0] >= 'a' && s.p[0] <= 'z') || (s.p[0] >= 'A' && s.p[0] <= 'Z') || s.p[0] == '_')) return false;
  for (size_t i = 1; i < s.n; i++) {
    char c = s.p[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

/* Printable, bounded copy of a name for a message. */
static const char *shown(mg_str_t s, char *buf, size_t n) {
  size_t k = s.n < n - 1 ? s.n : n - 1;
  for (size_t i = 0; i < k; i++) buf[i] = (unsigned char)s.p[i] < 0x20 || s.p[i] == 0x7f ? '?' : s.p[i];
  buf[k] = '\0';
  return buf;
}

static int on_label(void *ud, mg_str_t key, mg_json_type_t type, mg_str_t value) {
  decode_t *d = ud;
  char name[64];
  if (!valid_label_name(key))
    return refuse(d, "target group %zu: invalid label name \"%s\" (must match [a-zA-Z_][a-zA-Z0-9_]*)", d->index,
                  shown(key, name, sizeof name));
  if (type == MG_JSON_NULL) value = mg_str_n("", 0); /* Go reads null as the empty string */
  else if (type != MG_JSON_STRING)
    return refuse(d, "target group %zu: value of label \"%s\" is not a string", d->index,
                  shown(key, name, sizeof name));
  if (memchr(value.p, '\0', value.n))
    return refuse(d, "target group %zu: value of label \"%s\" holds a NUL byte", d->index,
                  shown(key, name, sizeof name));
  char *k = mg_strndup(key.p, key.n), *v = mg_strndup(value.p, value.n);
  int rc = k && v ? mg_kvs_set(&d->g.labels, k, v) : MG_ENOMEM;
  mg_free(k);
  mg_free(v);
  if (rc < 0) return MG_ENOMEM;
  if (d->g.labels.n > MG_CONF_MAX_LABELS)
    return refuse(d, "target group %zu: more than %d labels", d->index, MG_CONF_MAX_LABELS);
  return 0;
}

/* Members are matched without regard to case, as Go's encoding/json does;
 * anything else is refused (Prometheus disallows unknown fields). */
static int on_group_member(void *ud, mg_str_t key, mg_json_type_t type, mg_str_t value) {
  decode_t *d = ud;
  char name[64];
  if (key.n == 7 && !strncasecmp(key.p, "targets", 7)) {
    if (type != MG_JSON_ARRAY && type != MG_JSON_NULL)
      return refuse(d, "target group %zu: targets must be a list of strings", d->index);
    d->g.targets = type == MG_JSON_ARRAY ? value : mg_str_n("", 0);
    return 0;
  }
  if (key.n == 6 && !strncasecmp(key.p, "labels", 6)) {
    if (type == MG_JSON_NULL) return 0;
    if (type != MG_JSON_OBJECT) return refuse(d, "target group %zu: labels must be a mapping", d->index);
    return mg_json_object(value.p, value.n, on_label, d, NULL);
  }
  return refuse(d, "target group %zu: unknown field \"%s\"", d->index, shown(key, name, sizeof name));
}

static int on_target(void *ud, size_t index, mg_json_type_t type, mg_str_t value) {
  decode_t *d = ud;
  if (type != MG_JSON_STRING)
    return refuse(d, "target group %zu: target %zu is not a string", d->index, index);
  if (memchr(value.p, '\0', value.n))
    return refuse(d, "target group %zu: target %zu holds a NUL byte", d->index, index);
  if (d->out->n >= MG_CONF_MAX_TARGETS) return refuse(d, "more than %d targets", MG_CONF_MAX_TARGETS);
  char *addr = mg_strndup(value.p, value.n);
  mg_conf_target_t *t = addr ? mg_sd_targets_add(d->out, addr) : NULL;
  mg_free(addr);
  if (!t) return MG_ENOMEM;
  /* The target's own address wins over a group label of that name. */
  for (size_t i = 0; i < d->g.labels.n; i++)
    if (strcmp(d->g.labels.v[i].name, "__address__") && strcmp(d->g.labels.v[i].name, "__meta_url") &&
        mg_kvs_add(&t->labels, d->g.labels.v[i].name, d->g.labels.v[i].value) < 0)
      return MG_ENOMEM;
  return mg_kvs_add(&t->labels, "__meta_url", d->url) < 0 ? MG_ENOMEM : 0;
}

static int on_group(void *ud, size_t index, mg_json_type_t type, mg_str_t value) {
  decode_t *d = ud;
  d->index = index;
  if (type == MG_JSON_NULL) return refuse(d, "target group %zu is null", index);
  if (type != MG_JSON_OBJECT) return refuse(d, "target group %zu is not a mapping", index);
  mg_kvs_cleanup(&d->g.labels);
  d->g.targets = mg_str_n("", 0);
  int rc = mg_json_object(value.p, value.n, on_group_member, d, NULL);
  if (rc == MG_ETOOBIG) return refuse(d, "target group %zu is over %d bytes", index, MG_JSON_MAX_INPUT);
  if (rc == 0 && d->g.targets.n) rc = mg_json_array(d->g.targets.p, d->g.targets.n, on_target, d, NULL);
  return rc;
}

static void targets_truncate(mg_sd_targets_t *ts, size_t n) {
  while (ts->n > n) {
    ts->n--;
    mg_free(ts->v[ts->n].address);
    mg_kvs_cleanup(&ts->v[ts->n].labels);
  }
}

int mg_sd_http_decode(const char *body, size_t len, const char *url, mg_sd_targets_t *out, char *why,
                      size_t whylen) {
  if (why && whylen) why[0] = '\0';
  decode_t d = {.url = url ? url : "", .out = out, .why = why, .whylen = whylen};
  size_t before = out->n;
  mg_json_error_t jerr;
  int rc = mg_json_array(body, len, on_group, &d, &jerr);
  mg_kvs_cleanup(&d.g.labels);
  if (rc == 0) return 0;
  targets_truncate(out, before);
  if (rc == MG_ENOMEM) {
    if (why && whylen) snprintf(why, whylen, "out of memory");
    return MG_ENOMEM;
  }
  if (rc == MG_ETOOBIG) return refuse(&d, "answer over %d bytes", MG_SD_HTTP_MAX_BODY);
  if (jerr.msg && (!why || !why[0]))
    return refuse(&d, "not a JSON list of target groups (byte %zu: %s)", jerr.offset, jerr.msg);
  if (!why || !why[0]) return refuse(&d, "malformed answer");
  return MG_EPARSE;
}

/* ---- the provider -------------------------------------------------------- */

typedef struct http_sd {
  mg_http_client_t *http;
  http_opts_t o;
  char *authz; /* Authorization value: secret */
  mg_http_tls_opts_t tls;
  mg_http_header_t hdrs[3];
  size_t nhdrs;
  char interval[32];
  size_t url_shown; /* bytes of the URL that may be logged: up to the query */
  uv_timer_t timer;
  mg_http_req_t *req; /* in flight, or NULL */
  mg_buf_t body;
  mg_sd_update_fn update;
  void *ud;
  char last_err[256]; /* logged once until it changes; "" while healthy */
  bool closing;
  int refs; /* timer handle + request in flight */
} http_sd_t;

static void sd_free(http_sd_t *s) {
  mg_mem_free_secret(s->authz);
  opts_cleanup(&s->o);
  mg_buf_cleanup(&s->body);
  mg_free(s);
}

static void unref(http_sd_t *s) {
  if (--s->refs == 0 && s->closing) sd_free(s);
}

static void failed(http_sd_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void failed(http_sd_t *s, const char *fmt, ...) {
  char msg[sizeof s->last_err];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (strcmp(msg, s->last_err) != 0) {
    char q[300], u[300];
    MG_WARN(MOD, "refresh_failed", "url=%s err=%s hint=\"previous targets kept; retried every %ss\"",
            mg_log_q(u, sizeof u, s->o.url, s->url_shown), mg_log_q(q, sizeof q, msg, strlen(msg)), s->interval);
    snprintf(s->last_err, sizeof s->last_err, "%s", msg);
  }
  s->update(s->ud, false, NULL);
}

/* application/json, optionally with charset utf-8 (quoted or not), any
 * case, surrounding spaces ignored: what Prometheus accepts. */
static bool json_content_type(const char *ct) {
  if (!ct) return false;
  while (*ct == ' ' || *ct == '\t') ct++;
  size_t n = strlen(ct);
  while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t')) n--;
  if (n < 16 || strncasecmp(ct, "application/json", 16)) return false;
  if (n == 16) return true;
  const char *p = ct + 16, *end = ct + n;
  if (*p++ != ';') return false;
  while (p < end && (*p == ' ' || *p == '\t')) p++;
  size_t rest = (size_t)(end - p);
  return (rest == 13 && !strncasecmp(p, "charset=utf-8", 13)) ||
         (rest == 15 && !strncasecmp(p, "charset=\"utf-8\"", 15));
}

static void on_answer(http_sd_t *s, mg_http_response_t *resp) {
  const char *ct = mg_http_response_header(resp, "content-type");
  mg_sd_targets_t ts = {0};
  char why[200];
  if (resp->status != 200) {
    failed(s, "server answered HTTP %d", resp->status);
    return;
  }
  if (!ct) {
    failed(s, "no Content-Type in the answer (want application/json)");
    return;
  }
  if (!json_content_type(ct)) {
    char shown[65];
    size_t k = 0;
    for (; ct[k] && k < sizeof shown - 1; k++) shown[k] = (unsigned char)ct[k] < 0x20 || ct[k] == 0x7f ? '?' : ct[k];
    shown[k] = '\0';
    failed(s, "unsupported content type \"%s\" (want application/json)", shown);
    return;
  }
  if (mg_sd_http_decode(resp->body->data ? resp->body->data : "", resp->body->len, s->o.url, &ts, why, sizeof why)) {
    failed(s, "%s", why);
    return;
  }
  if (s->last_err[0]) {
    char u[300];
    MG_INFO(MOD, "refresh_recovered", "url=%s targets=%zu", mg_log_q(u, sizeof u, s->o.url, s->url_shown), ts.n);
    s->last_err[0] = '\0';
  }
  s->update(s->ud, true, &ts);
  mg_sd_targets_cleanup(&ts);
}

static void on_done(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  http_sd_t *s = ud;
  s->req = NULL;
  if (!s->closing) {
    if (err) failed(s, "%s: %s", mg_err_name(err), detail && *detail ? detail : mg_err_str(err));
    else on_answer(s, resp);
  }
  /* A large answer's buffer is not kept for the next hour. */
  if (s->body.cap > (1u << 20)) mg_buf_cleanup(&s->body);
  mg_buf_reset(&s->body);
  unref(s);
}

static void on_tick(uv_timer_t *t) {
  http_sd_t *s = t->data;
  if (s->req) return; /* the previous refresh is still running: its deadline ends it */
  mg_http_request_t req = {
      .method = "GET",
      .url = s->o.url,
      .headers = s->hdrs,
      .nheaders = s->nhdrs,
      .timeout_ms = s->o.refresh_ms,
      .max_body = MG_SD_HTTP_MAX_BODY,
      .accept_gzip = true,
      .tls = &s->tls,
      .body_out = &s->body,
  };
  int rc = mg_http_client_request(s->http, &req, on_done, s, &s->req);
  if (rc) {
    s->req = NULL;
    failed(s, "%s: request not started", mg_err_name(rc));
    return;
  }
  s->refs++;
}

static void on_timer_closed(uv_handle_t *h) { unref(h->data); }

/* X-Prometheus-Refresh-Interval-Seconds: whole seconds, or with the
 * fraction trimmed of trailing zeros. */
static void format_seconds(uint64_t ms, char *out, size_t n) {
  if (ms % 1000 == 0) {
    snprintf(out, n, "%" PRIu64, ms / 1000);
    return;
  }
  snprintf(out, n, "%" PRIu64 ".%03u", ms / 1000, (unsigned)(ms % 1000));
  size_t k = strlen(out);
  while (k && out[k - 1] == '0') out[--k] = '\0';
}

static int http_start(const mg_sd_env_t *env, const mg_conf_sd_t *sd, mg_sd_update_fn update, void *ud, void **state) {
  *state = NULL;
  http_sd_t *s = mg_calloc(1, sizeof *s);
  if (!s) return MG_ENOMEM;
  char why[300];
  int rc = read_opts(sd, &s->o, why, sizeof why);
  if (rc) {
    MG_ERROR(MOD, "bad_options", "err=\"%s\"", why);
    mg_free(s);
    return rc;
  }
  if ((rc = mg_auth_header(&s->o.auth, &s->authz)) != 0) {
    sd_free(s);
    return rc;
  }
  s->http = env->http;
  s->update = update;
  s->ud = ud;
  s->url_shown = strcspn(s->o.url, "?#");
  mg_buf_init(&s->body, MG_SD_HTTP_MAX_BODY);
  format_seconds(s->o.refresh_ms, s->interval, sizeof s->interval);
  s->hdrs[s->nhdrs++] = (mg_http_header_t){"Accept", "application/json"};
  s->hdrs[s->nhdrs++] = (mg_http_header_t){"X-Prometheus-Refresh-Interval-Seconds", s->interval};
  if (s->authz) s->hdrs[s->nhdrs++] = (mg_http_header_t){"Authorization", s->authz};
  s->tls = (mg_http_tls_opts_t){s->o.tls.ca_file, s->o.tls.cert_file, s->o.tls.key_file, s->o.tls.server_name,
                                s->o.tls.insecure_skip_verify};
  uv_timer_init(env->loop, &s->timer);
  s->timer.data = s;
  s->refs = 1;
  /* Due at once, but run from the loop: never inside start. */
  uv_timer_start(&s->timer, on_tick, 0, s->o.refresh_ms);
  *state = s;
  return 0;
}

static void http_stop(void *state) {
  http_sd_t *s = state;
  if (!s || s->closing) return;
  s->closing = true;
  if (s->req) mg_http_client_cancel(s->req); /* on_done runs later and drops its ref */
  uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}

const mg_sd_ops_t mg_sd_http_ops = {
    .kind = "http",
    .check = http_check,
    .start = http_start,
    .stop = http_stop,
};
