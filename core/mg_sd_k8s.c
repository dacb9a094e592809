/* mg_sd_k8s: Kubernetes discovery. For each watched (resource, namespace)
 * an informer lists, then watches from the list's resourceVersion; answers
 * stream through a splitter that hands out one object at a time, reduced to
 * the fields the labels need and cached. After changes the role's whole
 * target list is rebuilt from the cache (at most once a second) and
 * reported when it differs from the last report. Owns the cache, requests,
 * timers and file reads; never blocks the loop after start. */
#include "mg_sd_k8s.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mg_auth.h"
#include "mg_err.h"
#include "mg_http.h"
#include "mg_json.h"
#include "mg_log.h"
#include "mg_mem.h"

#define MOD "sd_k8s"
#define SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount"
#define SA_DIR_ENV "MOONGATE_K8S_SERVICEACCOUNT_DIR"
#define META "__meta_kubernetes_"
#define FILE_REREAD_MS 60000       /* token and password files: bound tokens rotate */
#define FLUSH_INTERVAL_MS 1000     /* at most one report a second */
#define RESYNC_MS (30 * 60 * 1000) /* relist even when watches stay healthy */
#define WATCH_TIMEOUT_S 300        /* asked of the server, plus jitter up to as much again */
#define SHORT_WATCH_MS 1000        /* an empty watch that ended sooner waits before the next */
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 60000
#define LIST_TIMEOUT_MS 120000
#define CONNECT_TIMEOUT_MS 10000
#define MAX_OBJECTS 200000 /* cached objects of one source */
#define MAX_SECRET_FILE 16384
#define MAX_KEY 256 /* member names of a list or watch event */

typedef enum { RES_POD, RES_SERVICE, RES_ENDPOINTS, RES_SLICE, RES_NODE, RES_COUNT } res_t;

static const struct resource {
  const char *role; /* role and selector name */
  const char *api;  /* path prefix */
  const char *plural;
  bool namespaced;
} resources[RES_COUNT] = {
    {"pod", "/api/v1", "pods", true},
    {"service", "/api/v1", "services", true},
    {"endpoints", "/api/v1", "endpoints", true},
    {"endpointslice", "/apis/discovery.k8s.io/v1", "endpointslices", true},
    {"node", "/api/v1", "nodes", false},
};

/* ---- small helpers -------------------------------------------------------- */

static int bad(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *why, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, n, fmt, ap);
  va_end(ap);
  return MG_ECONFIG;
}

static bool in_list(const char *s, const char *const *list) {
  for (size_t i = 0; list[i]; i++)
    if (strcmp(s, list[i]) == 0) return true;
  return false;
}

/* Prometheus's label name sanitizing: every character (UTF-8 sequence)
 * outside [a-zA-Z0-9_] becomes one '_'. out has room for strlen(s) + 1. */
static void sanitize(char *out, const char *s) {
  while (*s) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_') {
      *out++ = (char)c;
      s++;
      continue;
    }
    size_t k = c < 0x80 ? 1 : mg_utf8_seq((const unsigned char *)s, strlen(s));
    s += k ? k : 1;
    *out++ = '_';
  }
  *out = '\0';
}

static char *adup(mg_arena_t *a, mg_str_t s) { return mg_arena_strndup(a, s.p, s.n); }

/* "name_prefix" + sanitized suffix, in the arena. */
static char *aname(mg_arena_t *a, const char *prefix, const char *suffix) {
  size_t pl = strlen(prefix), sl = strlen(suffix);
  char *out = mg_arena_alloc(a, pl + sl + 1);
  if (!out) return NULL;
  memcpy(out, prefix, pl);
  sanitize(out + pl, suffix);
  return out;
}

/* host:port as Go's net.JoinHostPort writes it (IPv6 in brackets). */
static char *join_host_port(mg_arena_t *a, const char *host, const char *port) {
  bool v6 = strchr(host, ':') != NULL;
  size_t n = strlen(host) + strlen(port) + 4;
  char *out = mg_arena_alloc(a, n);
  if (out) snprintf(out, n, v6 ? "[%s]:%s" : "%s:%s", host, port);
  return out;
}

static bool is_ipv4(const char *s) {
  unsigned char b[16];
  return inet_pton(AF_INET, s, b) == 1;
}
static bool is_ipv6(const char *s) {
  unsigned char b[16];
  return inet_pton(AF_INET6, s, b) == 1;
}

typedef int (*elem_fn)(void *ud, mg_json_type_t t, mg_str_t raw);

/* Elements of an array mg_json_object already validated (raw text as it
 * handed it over): only brackets and strings need tracking. */
static int json_array_each(mg_str_t raw, elem_fn fn, void *ud) {
  size_t i = 1, n = raw.n ? raw.n - 1 : 0; /* inside the brackets */
  while (i < n) {
    while (i < n && (raw.p[i] == ' ' || raw.p[i] == '\t' || raw.p[i] == '\n' || raw.p[i] == '\r' || raw.p[i] == ','))
      i++;
    if (i >= n) break;
    size_t start = i;
    int depth = 0;
    bool str = false, esc = false;
    for (; i < n; i++) {
      char c = raw.p[i];
      if (str) {
        if (esc) esc = false;
        else if (c == '\\') esc = true;
        else if (c == '"') str = false;
        continue;
      }
      if (c == '"') str = true;
      else if (c == '{' || c == '[') depth++;
      else if (c == '}' || c == ']') depth--;
      else if (depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r')) break;
    }
    char c0 = raw.p[start];
    mg_json_type_t t = c0 == '{' ? MG_JSON_OBJECT : c0 == '[' ? MG_JSON_ARRAY : c0 == '"' ? MG_JSON_STRING
                       : c0 == 't' ? MG_JSON_TRUE : c0 == 'f' ? MG_JSON_FALSE : c0 == 'n' ? MG_JSON_NULL
                                                                                : MG_JSON_NUMBER;
    int rc = fn(ud, t, mg_str_n(raw.p + start, i - start));
    if (rc) return rc;
  }
  return 0;
}

/* A string element as written ("a\u00e9") unescaped into the arena, through
 * mg_json_object on a one-member wrapper. */
typedef struct unq {
  mg_arena_t *a;
  char *out;
} unq_t;
static int unq_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  unq_t *u = ud;
  if (t == MG_JSON_STRING) u->out = adup(u->a, v);
  return u->out ? 0 : MG_ENOMEM;
}
static char *json_unquote(mg_arena_t *a, mg_str_t raw) {
  char *doc = mg_malloc(raw.n + 8);
  if (!doc) return NULL;
  memcpy(doc, "{\"v\":", 5);
  memcpy(doc + 5, raw.p, raw.n);
  doc[5 + raw.n] = '}';
  unq_t u = {a, NULL};
  int rc = mg_json_object(doc, raw.n + 6, unq_cb, &u, NULL);
  mg_free(doc);
  return rc == 0 ? u.out : NULL;
}

/* A port number as decimal text ("8080"), or NULL when not a whole number
 * in 0..65535. */
static char *port_text(mg_arena_t *a, mg_str_t v) {
  if (v.n == 0 || v.n > 5) return NULL;
  unsigned long n = 0;
  for (size_t i = 0; i < v.n; i++) {
    if (v.p[i] < '0' || v.p[i] > '9') return NULL;
    n = n * 10 + (unsigned long)(v.p[i] - '0');
  }
  if (n > 65535) return NULL;
  char buf[8];
  snprintf(buf, sizeof buf, "%lu", n);
  return mg_arena_strndup(a, buf, strlen(buf));
}

/* ---- configuration ------------------------------------------------------- */

typedef struct selector {
  char *label, *field;
} selector_t;

typedef struct kconf {
  res_t role;
  char *api_server; /* without a trailing '/'; NULL: in-cluster */
  char **names;
  size_t nnames;
  bool own_namespace, attach_node;
  selector_t sel[RES_COUNT];
  mg_conf_auth_t auth;
  mg_conf_tls_t tls;
} kconf_t;

static void kconf_free(kconf_t *c) {
  mg_free(c->api_server);
  for (size_t i = 0; i < c->nnames; i++) mg_free(c->names[i]);
  mg_free(c->names);
  for (int r = 0; r < RES_COUNT; r++) {
    mg_free(c->sel[r].label);
    mg_free(c->sel[r].field);
  }
  mg_free(c->auth.basic_username);
  mg_mem_free_secret(c->auth.basic_password);
  mg_free(c->auth.basic_password_file);
  mg_free(c->auth.auth_type);
  mg_mem_free_secret(c->auth.credentials);
  mg_free(c->auth.credentials_file);
  mg_free(c->tls.ca_file);
  mg_free(c->tls.cert_file);
  mg_free(c->tls.key_file);
  mg_free(c->tls.server_name);
  memset(c, 0, sizeof *c);
}

static int parse_bool(const mg_conf_val_t *v, const char *field, bool *out, char *why, size_t n) {
  if (!v) return 0;
  if (v->type == MG_CONF_VAL_SCALAR && strcasecmp(v->s, "true") == 0) *out = true;
  else if (v->type == MG_CONF_VAL_SCALAR && strcasecmp(v->s, "false") == 0) *out = false;
  else return bad(why, n, "kubernetes_sd_configs: %s must be true or false", field);
  return 0;
}

/* A string member into *slot (copied; secret ones through set_secret). */
static int take_str(const mg_conf_val_t *map, const char *key, const char *field, char **slot, bool secret, char *why,
                    size_t n) {
  const mg_conf_val_t *v = mg_conf_val_get(map, key);
  if (!v) return 0;
  if (v->type != MG_CONF_VAL_SCALAR) return bad(why, n, "kubernetes_sd_configs: %s must be a string", field);
  int rc = secret ? mg_conf_set_secret(slot, v->s) : mg_conf_set_str(slot, v->s);
  return rc ? bad(why, n, "kubernetes_sd_configs: out of memory") : 0;
}

/* Members of a map must be among allowed; refused ones get their reason. */
static int check_keys(const mg_conf_val_t *map, const char *where, const char *const *allowed,
                      const char *const *refused, char *why, size_t n) {
  if (map->type != MG_CONF_VAL_MAP) return bad(why, n, "kubernetes_sd_configs: %s must be a mapping", where);
  for (size_t i = 0; i < map->n; i++) {
    const char *k = map->keys[i];
    if (refused && in_list(k, refused))
      return bad(why, n, "kubernetes_sd_configs: %s%s%.64s is not supported by moongate", where[0] ? where : "",
                 where[0] ? "." : "", k);
    if (!in_list(k, allowed))
      return bad(why, n, "kubernetes_sd_configs: unknown field %s%s%.64s", where[0] ? where : "", where[0] ? "." : "",
                 k);
  }
  return 0;
}

static int parse_role(const char *s, res_t *out, char *why, size_t n) {
  for (int r = 0; r < RES_COUNT; r++)
    if (strcmp(s, resources[r].role) == 0) {
      *out = (res_t)r;
      return 0;
    }
  if (strcmp(s, "ingress") == 0)
    return bad(why, n, "kubernetes_sd_configs: role ingress is not supported by moongate (pod, service, endpoints, "
                       "endpointslice, node are)");
  return bad(why, n, "kubernetes_sd_configs: unknown role \"%.64s\" (one of pod, service, endpoints, endpointslice, "
                     "node)", s);
}

static int parse_api_server(const char *s, kconf_t *c, char *why, size_t n) {
  const char *rest = strncasecmp(s, "https://", 8) == 0 ? s + 8 : strncasecmp(s, "http://", 7) == 0 ? s + 7 : NULL;
  if (!rest || !rest[0] || rest[0] == '/')
    return bad(why, n, "kubernetes_sd_configs: api_server must be an http:// or https:// URL");
  if (memchr(rest, '@', strcspn(rest, "/?#")) || strpbrk(s, "?# \t\r\n"))
    return bad(why, n, "kubernetes_sd_configs: api_server must be a plain URL (no user, query or fragment; use "
                       "basic_auth for credentials)");
  if (mg_conf_set_str(&c->api_server, s)) return bad(why, n, "kubernetes_sd_configs: out of memory");
  size_t len = strlen(c->api_server);
  while (len > 0 && c->api_server[len - 1] == '/') c->api_server[--len] = '\0';
  return 0;
}

static int parse_namespaces(const mg_conf_val_t *v, kconf_t *c, char *why, size_t n) {
  static const char *const keys[] = {"names", "own_namespace", NULL};
  int rc = check_keys(v, "namespaces", keys, NULL, why, n);
  if (rc) return rc;
  if ((rc = parse_bool(mg_conf_val_get(v, "own_namespace"), "namespaces.own_namespace", &c->own_namespace, why, n)))
    return rc;
  const mg_conf_val_t *names = mg_conf_val_get(v, "names");
  if (!names) return 0;
  if (names->type != MG_CONF_VAL_LIST) return bad(why, n, "kubernetes_sd_configs: namespaces.names must be a list");
  c->names = mg_calloc(names->n ? names->n : 1, sizeof *c->names);
  if (!c->names) return bad(why, n, "kubernetes_sd_configs: out of memory");
  for (size_t i = 0; i < names->n; i++) {
    const mg_conf_val_t *e = names->v[i];
    if (e->type != MG_CONF_VAL_SCALAR || !e->s[0] || strpbrk(e->s, "/?#%& \t\r\n"))
      return bad(why, n, "kubernetes_sd_configs: namespaces.names[%zu] must be a namespace name", i);
    bool dup = false;
    for (size_t j = 0; j < c->nnames; j++) dup = dup || strcmp(c->names[j], e->s) == 0;
    if (dup) continue;
    if (!(c->names[c->nnames] = mg_strdup(e->s))) return bad(why, n, "kubernetes_sd_configs: out of memory");
    c->nnames++;
  }
  return 0;
}

/* Which selector roles a discovery role may use, as in Prometheus. */
static bool selector_allowed(res_t role, res_t sel, bool attach_node) {
  if (sel == role) return true;
  if (role == RES_ENDPOINTS || role == RES_SLICE)
    return sel == RES_POD || sel == RES_SERVICE || (sel == RES_NODE && attach_node);
  if (role == RES_POD) return sel == RES_NODE && attach_node;
  return false;
}

static bool selector_text_ok(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) return false;
  return true;
}

static int parse_selectors(const mg_conf_val_t *v, kconf_t *c, char *why, size_t n) {
  static const char *const keys[] = {"role", "label", "field", NULL};
  if (v->type != MG_CONF_VAL_LIST) return bad(why, n, "kubernetes_sd_configs: selectors must be a list");
  bool seen[RES_COUNT] = {false};
  for (size_t i = 0; i < v->n; i++) {
    const mg_conf_val_t *s = v->v[i];
    char where[32];
    snprintf(where, sizeof where, "selectors[%zu]", i);
    int rc = check_keys(s, where, keys, NULL, why, n);
    if (rc) return rc;
    const char *role = mg_conf_val_str(s, "role");
    res_t r;
    if (!role) return bad(why, n, "kubernetes_sd_configs: %s.role is required", where);
    if ((rc = parse_role(role, &r, why, n))) return rc;
    if (seen[r]) return bad(why, n, "kubernetes_sd_configs: duplicated selector role %s", role);
    seen[r] = true;
    if (!selector_allowed(c->role, r, c->attach_node))
      return bad(why, n, "kubernetes_sd_configs: role %s does not take %s selectors%s", resources[c->role].role, role,
                 r == RES_NODE ? " (node selectors need attach_metadata.node)" : "");
    if ((rc = take_str(s, "label", "selectors.label", &c->sel[r].label, false, why, n)) ||
        (rc = take_str(s, "field", "selectors.field", &c->sel[r].field, false, why, n)))
      return rc;
    if ((c->sel[r].label && !selector_text_ok(c->sel[r].label)) ||
        (c->sel[r].field && !selector_text_ok(c->sel[r].field)))
      return bad(why, n, "kubernetes_sd_configs: %s holds a control character", where);
  }
  return 0;
}

static int parse_auth(const mg_conf_val_t *o, kconf_t *c, char *why, size_t n) {
  static const char *const akeys[] = {"type", "credentials", "credentials_file", NULL};
  static const char *const bkeys[] = {"username", "password", "password_file", "username_file", NULL};
  const mg_conf_val_t *authz = mg_conf_val_get(o, "authorization"), *basic = mg_conf_val_get(o, "basic_auth");
  int set = (mg_conf_val_get(o, "bearer_token") != NULL) + (mg_conf_val_get(o, "bearer_token_file") != NULL) +
            (authz != NULL) + (basic != NULL);
  if (set > 1)
    return bad(why, n, "kubernetes_sd_configs: at most one of bearer_token, bearer_token_file, authorization and "
                       "basic_auth may be set");
  int rc;
  if ((rc = take_str(o, "bearer_token", "bearer_token", &c->auth.credentials, true, why, n)) ||
      (rc = take_str(o, "bearer_token_file", "bearer_token_file", &c->auth.credentials_file, false, why, n)))
    return rc;
  if (authz) {
    if ((rc = check_keys(authz, "authorization", akeys, NULL, why, n)) ||
        (rc = take_str(authz, "type", "authorization.type", &c->auth.auth_type, false, why, n)) ||
        (rc = take_str(authz, "credentials", "authorization.credentials", &c->auth.credentials, true, why, n)) ||
        (rc = take_str(authz, "credentials_file", "authorization.credentials_file", &c->auth.credentials_file, false,
                       why, n)))
      return rc;
    if (c->auth.credentials && c->auth.credentials_file)
      return bad(why, n, "kubernetes_sd_configs: authorization takes credentials or credentials_file, not both");
    if (c->auth.auth_type && (strcasecmp(c->auth.auth_type, "basic") == 0 || !mg_http_is_token(c->auth.auth_type)))
      return bad(why, n, "kubernetes_sd_configs: authorization.type must be a scheme name other than Basic (use "
                         "basic_auth)");
  }
  if (basic) {
    if ((rc = check_keys(basic, "basic_auth", bkeys, NULL, why, n))) return rc;
    if (mg_conf_val_get(basic, "username_file"))
      return bad(why, n, "kubernetes_sd_configs: basic_auth.username_file is not supported by moongate");
    if ((rc = take_str(basic, "username", "basic_auth.username", &c->auth.basic_username, false, why, n)) ||
        (rc = take_str(basic, "password", "basic_auth.password", &c->auth.basic_password, true, why, n)) ||
        (rc = take_str(basic, "password_file", "basic_auth.password_file", &c->auth.basic_password_file, false, why,
                       n)))
      return rc;
    if (!c->auth.basic_username) return bad(why, n, "kubernetes_sd_configs: basic_auth.username is required");
    if (c->auth.basic_password && c->auth.basic_password_file)
      return bad(why, n, "kubernetes_sd_configs: basic_auth takes password or password_file, not both");
  }
  if ((c->auth.credentials || c->auth.credentials_file) && !c->auth.auth_type &&
      mg_conf_set_str(&c->auth.auth_type, "Bearer"))
    return bad(why, n, "kubernetes_sd_configs: out of memory");
  return 0;
}

static int parse_tls(const mg_conf_val_t *v, kconf_t *c, char *why, size_t n) {
  static const char *const keys[] = {"ca_file", "cert_file", "key_file", "server_name", "insecure_skip_verify", NULL};
  static const char *const refused[] = {"ca", "cert", "key", "min_version", "max_version", NULL};
  int rc = check_keys(v, "tls_config", keys, refused, why, n);
  if (rc || (rc = take_str(v, "ca_file", "tls_config.ca_file", &c->tls.ca_file, false, why, n)) ||
      (rc = take_str(v, "cert_file", "tls_config.cert_file", &c->tls.cert_file, false, why, n)) ||
      (rc = take_str(v, "key_file", "tls_config.key_file", &c->tls.key_file, false, why, n)) ||
      (rc = take_str(v, "server_name", "tls_config.server_name", &c->tls.server_name, false, why, n)) ||
      (rc = parse_bool(mg_conf_val_get(v, "insecure_skip_verify"), "tls_config.insecure_skip_verify",
                       &c->tls.insecure_skip_verify, why, n)))
    return rc;
  if (!c->tls.cert_file != !c->tls.key_file)
    return bad(why, n, "kubernetes_sd_configs: tls_config needs both cert_file and key_file");
  return 0;
}

static int parse_attach(const mg_conf_val_t *v, kconf_t *c, char *why, size_t n) {
  static const char *const keys[] = {"node", "namespace", NULL};
  bool ns = false;
  int rc = check_keys(v, "attach_metadata", keys, NULL, why, n);
  if (rc || (rc = parse_bool(mg_conf_val_get(v, "node"), "attach_metadata.node", &c->attach_node, why, n)) ||
      (rc = parse_bool(mg_conf_val_get(v, "namespace"), "attach_metadata.namespace", &ns, why, n)))
    return rc;
  if (ns) return bad(why, n, "kubernetes_sd_configs: attach_metadata.namespace is not supported by moongate");
  /* As in Prometheus, node metadata only applies to these roles. */
  if (c->role != RES_POD && c->role != RES_ENDPOINTS && c->role != RES_SLICE) c->attach_node = false;
  return 0;
}

static int kconf_parse(const mg_conf_val_t *o, kconf_t *c, char *why, size_t n) {
  static const char *const keys[] = {"role", "api_server", "kubeconfig_file", "namespaces", "selectors",
                                     "attach_metadata", "bearer_token", "bearer_token_file", "authorization",
                                     "basic_auth", "tls_config", "follow_redirects", "enable_http2", NULL};
  static const char *const refused[] = {"oauth2", "proxy_url", "no_proxy", "proxy_from_environment",
                                        "proxy_connect_header", "http_headers", NULL};
  memset(c, 0, sizeof *c);
  if (!o) return bad(why, n, "kubernetes_sd_configs: no options");
  int rc = check_keys(o, "", keys, refused, why, n);
  if (rc) return rc;
  if (mg_conf_val_get(o, "kubeconfig_file"))
    return bad(why, n, "kubernetes_sd_configs: kubeconfig_file is not supported by moongate; set api_server (with "
                       "bearer_token_file and tls_config), or leave both out inside the cluster");
  const char *role = mg_conf_val_str(o, "role");
  if (!role)
    return bad(why, n, "kubernetes_sd_configs: role is required (pod, service, endpoints, endpointslice, node)");
  if ((rc = parse_role(role, &c->role, why, n))) return rc;
  const mg_conf_val_t *v;
  bool ignored = false;
  if ((rc = parse_bool(mg_conf_val_get(o, "follow_redirects"), "follow_redirects", &ignored, why, n)) ||
      (rc = parse_bool(mg_conf_val_get(o, "enable_http2"), "enable_http2", &ignored, why, n)))
    return rc;
  if ((v = mg_conf_val_get(o, "api_server"))) {
    if (v->type != MG_CONF_VAL_SCALAR) return bad(why, n, "kubernetes_sd_configs: api_server must be a URL");
    if ((rc = parse_api_server(v->s, c, why, n))) return rc;
  }
  if ((v = mg_conf_val_get(o, "namespaces")) && (rc = parse_namespaces(v, c, why, n))) return rc;
  if ((v = mg_conf_val_get(o, "attach_metadata")) && (rc = parse_attach(v, c, why, n))) return rc;
  if ((v = mg_conf_val_get(o, "selectors")) && (rc = parse_selectors(v, c, why, n))) return rc;
  if ((rc = parse_auth(o, c, why, n))) return rc;
  if ((v = mg_conf_val_get(o, "tls_config")) && (rc = parse_tls(v, c, why, n))) return rc;
  bool custom_http = c->auth.auth_type || c->auth.basic_username || mg_conf_val_get(o, "tls_config");
  if (!c->api_server && custom_http)
    return bad(why, n, "kubernetes_sd_configs: authentication and tls_config need api_server (in the cluster the "
                       "service account is used)");
  if (c->api_server && c->own_namespace)
    return bad(why, n, "kubernetes_sd_configs: namespaces.own_namespace works in the cluster only, not with "
                       "api_server");
  return 0;
}

static int k8s_check(const mg_conf_sd_t *sd, char *why, size_t whylen) {
  kconf_t c;
  int rc = kconf_parse(sd->opts, &c, why, whylen);
  kconf_free(&c);
  return rc;
}

/* ---- objects ------------------------------------------------------------- */

/* The fields of an API object the labels need, copied into the object's own
 * arena (freed at once when the object is replaced or deleted). Lists keep
 * the API's order. NULL strings are absent fields. */
typedef struct lbl {
  const char *name, *value;
} lbl_t;

typedef struct port {
  struct port *next;
  const char *name, *protocol, *app_protocol, *number; /* number as decimal text */
} port_t;

typedef struct container {
  struct container *next;
  const char *name, *image, *id;
  bool init;
  port_t *ports;
} container_t;

typedef struct ref {
  const char *kind, *name, *ns;
  bool present;
} ref_t;

typedef struct strl {
  struct strl *next;
  const char *s;
} strl_t;

/* An Endpoints address (ip), or an EndpointSlice endpoint (ips). */
typedef struct epaddr {
  struct epaddr *next;
  const char *ip;
  strl_t *ips, **ips_tail;
  const char *hostname, *node_name, *zone;
  ref_t ref;
  const char *ready, *serving, *terminating; /* slices: "true"/"false"; NULL when not given */
  lbl_t *topo;
  size_t ntopo;
} epaddr_t;

typedef struct subset {
  struct subset *next;
  epaddr_t *ready, *not_ready;
  port_t *ports;
} subset_t;

typedef struct informer informer_t;

typedef struct obj {
  struct obj *next; /* hash chain */
  informer_t *owner;
  unsigned gen;
  const char *ns, *name; /* ns "" for nodes */
  mg_arena_t arena;
  lbl_t *labels; /* the role-independent labels, names final */
  size_t nlabels;
  union {
    struct {
      const char *ip;
      const char *node_name;
      container_t *containers; /* regular ones, then init containers */
    } pod;
    struct {
      const char *type, *cluster_ip, *external_name, *lb_ip;
      port_t *ports;
    } svc;
    struct {
      subset_t *subsets;
    } eps;
    struct {
      const char *service; /* the kubernetes.io/service-name label */
      epaddr_t *eps;
      port_t *ports;
    } slice;
    struct {
      const char *provider_id, *addr, *kubelet_port;
      lbl_t *addrs; /* node_address_<type> labels, first address of each type */
      size_t naddrs;
    } node;
  } u;
} obj_t;

static void obj_free(obj_t *o) {
  if (!o) return;
  mg_arena_cleanup(&o->arena);
  mg_free(o);
}

typedef struct kvn {
  struct kvn *next;
  const char *k, *v;
} kvn_t;

typedef struct kvlist {
  kvn_t *head, **tail;
  size_t n;
} kvlist_t;

/* Everything read from one object before its labels are computed. */
typedef struct pctx {
  obj_t *o;
  mg_arena_t *a;
  const char *name, *ns, *uid, *rv;
  kvlist_t labels, annots;
  const char *ctrl_kind, *ctrl_name;
  bool ctrl_seen;
  /* pod */
  container_t **ctail, *inits, **itail;
  kvlist_t cstatus, istatus; /* container name -> containerID */
  const char *phase, *host_ip, *ready, *ipv4, *ipv6;
  /* endpoints and slices */
  subset_t **stail;
  epaddr_t **etail;
  const char *address_type;
  /* node */
  kvlist_t node_addrs;
} pctx_t;

static void kvlist_init(kvlist_t *l) {
  l->head = NULL;
  l->tail = &l->head;
  l->n = 0;
}

static int kvlist_add(mg_arena_t *a, kvlist_t *l, mg_str_t k, mg_str_t v) {
  kvn_t *e = mg_arena_alloc(a, sizeof *e);
  if (!e || !(e->k = adup(a, k)) || !(e->v = adup(a, v))) return MG_ENOMEM;
  e->next = NULL;
  *l->tail = e;
  l->tail = &e->next;
  l->n++;
  return 0;
}

static const char *kvlist_get(const kvlist_t *l, const char *k) {
  for (const kvn_t *e = l->head; e; e = e->next)
    if (strcmp(e->k, k) == 0) return e->v;
  return NULL;
}

typedef struct kvctx {
  mg_arena_t *a;
  kvlist_t *l;
} kvctx_t;

static int kv_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  kvctx_t *c = ud;
  return t == MG_JSON_STRING ? kvlist_add(c->a, c->l, key, v) : 0;
}

static int parse_kv(mg_arena_t *a, mg_str_t raw, kvlist_t *l) {
  kvctx_t c = {a, l};
  return mg_json_object(raw.p, raw.n, kv_cb, &c, NULL);
}

/* A string member into *slot when key matches. 1: taken, 0: not this key. */
static int str_field(mg_arena_t *a, mg_str_t key, mg_json_type_t t, mg_str_t v, const char *want, const char **slot) {
  if (t != MG_JSON_STRING || !mg_str_eq_c(key, want)) return 0;
  *slot = adup(a, v);
  return *slot ? 1 : MG_ENOMEM;
}

#define STR_FIELD(key, t, v, want, slot)                                     \
  do {                                                                       \
    int r_ = str_field(p->a, key, t, v, want, slot);                         \
    if (r_) return r_ < 0 ? r_ : 0;                                          \
  } while (0)

typedef struct owner {
  pctx_t *p;
  const char *kind, *name;
  bool controller;
} owner_t;

static int owner_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  owner_t *o = ud;
  pctx_t *p = o->p;
  if (t == MG_JSON_TRUE && mg_str_eq_c(key, "controller")) o->controller = true;
  STR_FIELD(key, t, v, "kind", &o->kind);
  STR_FIELD(key, t, v, "name", &o->name);
  return 0;
}

/* The first owner reference marked controller, as GetControllerOf. */
static int owner_elem(void *ud, mg_json_type_t t, mg_str_t raw) {
  pctx_t *p = ud;
  if (t != MG_JSON_OBJECT || p->ctrl_seen) return 0;
  owner_t o = {p, NULL, NULL, false};
  int rc = mg_json_object(raw.p, raw.n, owner_cb, &o, NULL);
  if (rc || !o.controller) return rc;
  p->ctrl_seen = true;
  p->ctrl_kind = o.kind;
  p->ctrl_name = o.name;
  return 0;
}

static int meta_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  pctx_t *p = ud;
  STR_FIELD(key, t, v, "name", &p->name);
  STR_FIELD(key, t, v, "namespace", &p->ns);
  STR_FIELD(key, t, v, "uid", &p->uid);
  STR_FIELD(key, t, v, "resourceVersion", &p->rv);
  if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "labels")) return parse_kv(p->a, v, &p->labels);
  if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "annotations")) return parse_kv(p->a, v, &p->annots);
  if (t == MG_JSON_ARRAY && mg_str_eq_c(key, "ownerReferences")) return json_array_each(v, owner_elem, p);
  return 0;
}

/* Ports: containerPort (pods) or port (services, endpoints, slices). */
typedef struct portctx {
  pctx_t *p;
  port_t *pt;
} portctx_t;

static int port_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  portctx_t *c = ud;
  pctx_t *p = c->p;
  STR_FIELD(key, t, v, "name", &c->pt->name);
  STR_FIELD(key, t, v, "protocol", &c->pt->protocol);
  STR_FIELD(key, t, v, "appProtocol", &c->pt->app_protocol);
  if (t == MG_JSON_NUMBER && (mg_str_eq_c(key, "containerPort") || mg_str_eq_c(key, "port")))
    c->pt->number = port_text(p->a, v);
  return 0;
}

typedef struct portlist {
  pctx_t *p;
  port_t **tail;
  bool need_number;
} portlist_t;

static int port_elem(void *ud, mg_json_type_t t, mg_str_t raw) {
  portlist_t *l = ud;
  if (t != MG_JSON_OBJECT) return 0;
  port_t *pt = mg_arena_alloc(l->p->a, sizeof *pt);
  if (!pt) return MG_ENOMEM;
  memset(pt, 0, sizeof *pt);
  portctx_t c = {l->p, pt};
  int rc = mg_json_object(raw.p, raw.n, port_cb, &c, NULL);
  if (rc || (l->need_number && !pt->number)) return rc; /* a port without a number is no target */
  *l->tail = pt;
  l->tail = &pt->next;
  return 0;
}

static int parse_ports(pctx_t *p, mg_str_t raw, port_t **head, bool need_number) {
  portlist_t l = {p, head, need_number};
  while (*l.tail) l.tail = &(*l.tail)->next;
  return json_array_each(raw, port_elem, &l);
}

/* ---- pods ---- */

typedef struct cctx {
  pctx_t *p;
  container_t *c;
} cctx_t;

static int container_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  cctx_t *c = ud;
  pctx_t *p = c->p;
  STR_FIELD(key, t, v, "name", &c->c->name);
  STR_FIELD(key, t, v, "image", &c->c->image);
  if (t == MG_JSON_ARRAY && mg_str_eq_c(key, "ports")) return parse_ports(p, v, &c->c->ports, true);
  return 0;
}

static int container_elem(pctx_t *p, mg_json_type_t t, mg_str_t raw, bool init) {
  if (t != MG_JSON_OBJECT) return 0;
  container_t *c = mg_arena_alloc(p->a, sizeof *c);
  if (!c) return MG_ENOMEM;
  memset(c, 0, sizeof *c);
  c->init = init;
  cctx_t cc = {p, c};
  int rc = mg_json_object(raw.p, raw.n, container_cb, &cc, NULL);
  if (rc) return rc;
  container_t ***tail = init ? &p->itail : &p->ctail;
  **tail = c;
  *tail = &c->next;
  return 0;
}
static int container_main(void *ud, mg_json_type_t t, mg_str_t raw) { return container_elem(ud, t, raw, false); }
static int container_init(void *ud, mg_json_type_t t, mg_str_t raw) { return container_elem(ud, t, raw, true); }

static int pod_spec_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  pctx_t *p = ud;
  STR_FIELD(key, t, v, "nodeName", &p->o->u.pod.node_name);
  if (t == MG_JSON_ARRAY && mg_str_eq_c(key, "containers")) return json_array_each(v, container_main, p);
  if (t == MG_JSON_ARRAY && mg_str_eq_c(key, "initContainers")) return json_array_each(v, container_init, p);
  return 0;
}

typedef struct pair {
  pctx_t *p;
  const char *a, *b; /* the two fields asked for */
  const char *av, *bv;
} pair_t;

static int pair_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  pair_t *c = ud;
  pctx_t *p = c->p;
  STR_FIELD(key, t, v, c->a, &c->av);
  if (c->b) STR_FIELD(key, t, v, c->b, &c->bv);
  return 0;
}

static int read_pair(pctx_t *p, mg_str_t raw, const char *a, const char *b, pair_t *out) {
  *out = (pair_t){p, a, b, NULL, NULL};
  return mg_json_object(raw.p, raw.n, pair_cb, out, NULL);
}

static int cond_elem(void *ud, mg_json_type_t t, mg_str_t raw) {
  pctx_t *p = ud;
  pair_t c;
  if (t != MG_JSON_OBJECT || p->ready) return 0;
  int rc = read_pair(p, raw, "type", "status", &c);
  if (rc || !c.av || strcmp(c.av, "Ready") != 0) return rc;
  char *lower = mg_arena_strndup(p->a, c.bv ? c.bv : "", c.bv ? strlen(c.bv) : 0);
  if (!lower) return MG_ENOMEM;
  for (char *q = lower; *q; q++)
    if (*q >= 'A' && *q <= 'Z') *q = (char)(*q - 'A' + 'a');
  p->ready = lower;
  return 0;
}

static int podip_elem(void *ud, mg_json_type_t t, mg_str_t raw) {
  pctx_t *p = ud;
  pair_t c;
  if (t != MG_JSON_OBJECT) return 0;
  int rc = read_pair(p, raw, "ip", NULL, &c);
  if (rc || !c.av || !c.av[0]) return rc;
  if (!p->ipv4 && is_ipv4(c.av)) p->ipv4 = c.av;
  else if (!p->ipv6 && is_ipv6(c.av)) p->ipv6 = c.av;
  return 0;
}

static int cstatus_add(pctx_t *p, mg_str_t raw, kvlist_t *l) {
  pair_t c;
  int rc = read_pair(p, raw, "name", "containerID", &c);
  if (rc || !c.av) return rc;
  return kvlist_add(p->a, l, mg_str(c.av), mg_str(c.bv ? c.bv : ""));
}
static int cstatus_elem(void *ud, mg_json_type_t t, mg_str_t raw) {
  pctx_t *p = ud;
  return t == MG_JSON_OBJECT ? cstatus_add(p, raw, &p->cstatus) : 0;
}
static int istatus_elem(void *ud, mg_json_type_t t, mg_str_t raw) {
  pctx_t *p = ud;
  return t == MG_JSON_OBJECT ? cstatus_add(p, raw, &p->istatus) : 0;
}

static int pod_status_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  pctx_t *p = ud;
  STR_FIELD(key, t, v, "phase", &p->phase);
  STR_FIELD(key, t, v, "podIP", &p->o->u.pod.ip);
  STR_FIELD(key, t, v, "hostIP", &p->host_ip);
  if (t != MG_JSON_ARRAY) return 0;
  if (mg_str_eq_c(key, "podIPs")) return json_array_each(v, podip_elem, p);
  if (mg_str_eq_c(key, "conditions")) return json_array_each(v, cond_elem, p);
  if (mg_str_eq_c(key, "containerStatuses")) return json_array_each(v, cstatus_elem, p);
  if (mg_str_eq_c(key, "initContainerStatuses")) return json_array_each(v, istatus_elem, p);
  return 0;
}

/* ---- services ---- */

static int svc_spec_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  pctx_t *p = ud;
  STR_FIELD(key, t, v, "type", &p->o->u.svc.type);
  STR_FIELD(key, t, v, "clusterIP", &p->o->u.svc.cluster_ip);
  STR_FIELD(key, t, v, "externalName", &p->o->u.svc.external_name);
  STR_FIELD(key, t, v, "loadBalancerIP", &p->o->u.svc.lb_ip);
  if (t == MG_JSON_ARRAY && mg_str_eq_c(key, "ports")) return parse_ports(p, v, &p->o->u.svc.ports, true);
  return 0;
}

/* ---- endpoints and endpoint slices ---- */

typedef struct actx {
  pctx_t *p;
  epaddr_t *e;
} actx_t;

static int ref_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  actx_t *c = ud;
  pctx_t *p = c->p;
  STR_FIELD(key, t, v, "kind", &c->e->ref.kind);
  STR_FIELD(key, t, v, "name", &c->e->ref.name);
  STR_FIELD(key, t, v, "namespace", &c->e->ref.ns);
  return 0;
}

static int slice_ip_elem(void *ud, mg_json_type_t t, mg_str_t raw) {
  actx_t *c = ud;
  if (t != MG_JSON_STRING) return 0;
  strl_t *s = mg_arena_alloc(c->p->a, sizeof *s);
  if (!s || !(s->s = json_unquote(c->p->a, raw))) return MG_ENOMEM;
  s->next = NULL;
  *c->e->ips_tail = s;
  c->e->ips_tail = &s->next;
  return 0;
}

static int cond3_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  epaddr_t *e = ud;
  if (t != MG_JSON_TRUE && t != MG_JSON_FALSE) return 0;
  const char *val = t == MG_JSON_TRUE ? "true" : "false";
  if (mg_str_eq_c(key, "ready")) e->ready = val;
  else if (mg_str_eq_c(key, "serving")) e->serving = val;
  else if (mg_str_eq_c(key, "terminating")) e->terminating = val;
  return 0;
}

static int topology(actx_t *c, mg_str_t raw) {
  pctx_t *p = c->p;
  kvlist_t l;
  kvlist_init(&l);
  int rc = parse_kv(p->a, raw, &l);
  if (rc || !l.n) return rc;
  c->e->topo = mg_arena_alloc(p->a, 2 * l.n * sizeof *c->e->topo);
  if (!c->e->topo) return MG_ENOMEM;
  for (kvn_t *e = l.head; e; e = e->next) {
    lbl_t *t = &c->e->topo[c->e->ntopo];
    t[0] = (lbl_t){aname(p->a, META "endpointslice_endpoint_topology_", e->k), e->v};
    t[1] = (lbl_t){aname(p->a, META "endpointslice_endpoint_topology_present_", e->k), "true"};
    if (!t[0].name || !t[1].name) return MG_ENOMEM;
    c->e->ntopo += 2;
  }
  return 0;
}

static int addr_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  actx_t *c = ud;
  pctx_t *p = c->p;
  STR_FIELD(key, t, v, "ip", &c->e->ip);
  STR_FIELD(key, t, v, "hostname", &c->e->hostname);
  STR_FIELD(key, t, v, "nodeName", &c->e->node_name);
  STR_FIELD(key, t, v, "zone", &c->e->zone);
  if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "targetRef")) {
    c->e->ref.present = true;
    return mg_json_object(v.p, v.n, ref_cb, c, NULL);
  }
  if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "conditions")) return mg_json_object(v.p, v.n, cond3_cb, c->e, NULL);
  if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "deprecatedTopology")) return topology(c, v);
  if (t == MG_JSON_ARRAY && mg_str_eq_c(key, "addresses")) return json_array_each(v, slice_ip_elem, c);
  return 0;
}

/* Appends to *p->etail (set by the caller to the list being filled). */
static int addr_elem(void *ud, mg_json_type_t t, mg_str_t raw) {
  pctx_t *p = ud;
  if (t != MG_JSON_OBJECT) return 0;
  epaddr_t *e = mg_arena_alloc(p->a, sizeof *e);
  if (!e) return MG_ENOMEM;
  memset(e, 0, sizeof *e);
  e->ips_tail = &e->ips;
  actx_t c = {p, e};
  int rc = mg_json_object(raw.p, raw.n, addr_cb, &c, NULL);
  if (rc) return rc;
  *p->etail = e;
  p->etail = &e->next;
  return 0;
}

static int addr_list(pctx_t *p, mg_str_t raw, epaddr_t **head) {
  p->etail = head;
  while (*p->etail) p->etail = &(*p->etail)->next;
  return json_array_each(raw, addr_elem, p);
}

typedef struct sctx {
  pctx_t *p;
  subset_t *s;
} sctx_t;

static int subset_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  sctx_t *c = ud;
  if (t != MG_JSON_ARRAY) return 0;
  if (mg_str_eq_c(key, "addresses")) return addr_list(c->p, v, &c->s->ready);
  if (mg_str_eq_c(key, "notReadyAddresses")) return addr_list(c->p, v, &c->s->not_ready);
  if (mg_str_eq_c(key, "ports")) return parse_ports(c->p, v, &c->s->ports, true);
  return 0;
}

static int subset_elem(void *ud, mg_json_type_t t, mg_str_t raw) {
  pctx_t *p = ud;
  if (t != MG_JSON_OBJECT) return 0;
  subset_t *s = mg_arena_alloc(p->a, sizeof *s);
  if (!s) return MG_ENOMEM;
  memset(s, 0, sizeof *s);
  sctx_t c = {p, s};
  int rc = mg_json_object(raw.p, raw.n, subset_cb, &c, NULL);
  if (rc) return rc;
  *p->stail = s;
  p->stail = &s->next;
  return 0;
}

/* ---- nodes ---- */

static int node_spec_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  pctx_t *p = ud;
  STR_FIELD(key, t, v, "providerID", &p->o->u.node.provider_id);
  return 0;
}

static int kubelet_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  pctx_t *p = ud;
  if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "kubeletEndpoint")) return mg_json_object(v.p, v.n, kubelet_cb, p, NULL);
  if (t == MG_JSON_NUMBER && mg_str_eq_c(key, "Port")) p->o->u.node.kubelet_port = port_text(p->a, v);
  return 0;
}

static int node_addr_elem(void *ud, mg_json_type_t t, mg_str_t raw) {
  pctx_t *p = ud;
  pair_t c;
  if (t != MG_JSON_OBJECT) return 0;
  int rc = read_pair(p, raw, "type", "address", &c);
  if (rc || !c.av || !c.bv) return rc;
  return kvlist_add(p->a, &p->node_addrs, mg_str(c.av), mg_str(c.bv));
}

static int node_status_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  pctx_t *p = ud;
  if (t == MG_JSON_ARRAY && mg_str_eq_c(key, "addresses")) return json_array_each(v, node_addr_elem, p);
  if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "daemonEndpoints")) return mg_json_object(v.p, v.n, kubelet_cb, p, NULL);
  return 0;
}

/* ---- one object of any kind ---- */

typedef struct topctx {
  pctx_t *p;
  res_t res;
} topctx_t;

static int sub(mg_str_t v, mg_json_member_cb cb, pctx_t *p) { return mg_json_object(v.p, v.n, cb, p, NULL); }

static int top_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  topctx_t *c = ud;
  pctx_t *p = c->p;
  if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "metadata")) return sub(v, meta_cb, p);
  switch (c->res) {
  case RES_POD:
    if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "spec")) return sub(v, pod_spec_cb, p);
    if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "status")) return sub(v, pod_status_cb, p);
    break;
  case RES_SERVICE:
    if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "spec")) return sub(v, svc_spec_cb, p);
    break;
  case RES_ENDPOINTS:
    if (t == MG_JSON_ARRAY && mg_str_eq_c(key, "subsets")) return json_array_each(v, subset_elem, p);
    break;
  case RES_SLICE:
    STR_FIELD(key, t, v, "addressType", &p->address_type);
    if (t == MG_JSON_ARRAY && mg_str_eq_c(key, "endpoints")) return addr_list(p, v, &p->o->u.slice.eps);
    if (t == MG_JSON_ARRAY && mg_str_eq_c(key, "ports")) return parse_ports(p, v, &p->o->u.slice.ports, false);
    break;
  case RES_NODE:
    if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "spec")) return sub(v, node_spec_cb, p);
    if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "status")) return sub(v, node_status_cb, p);
    break;
  case RES_COUNT:
    break;
  }
  return 0;
}

/* Room for labels computed once per object. */
typedef struct lb {
  mg_arena_t *a;
  lbl_t *v;
  size_t n, cap;
} lb_t;

static int lb_add(lb_t *b, const char *name, const char *value) {
  if (!name || !value) return MG_ENOMEM;
  if (b->n == b->cap) return MG_EINVAL; /* sized by the caller: a bug */
  b->v[b->n++] = (lbl_t){name, value};
  return 0;
}

/* What Prometheus's addObjectMetaLabels gives: <role>_name, and per label
 * and annotation the value and a "present" flag, names sanitized. */
static int meta_labels(lb_t *b, pctx_t *p, const char *role) {
  char prefix[80];
  snprintf(prefix, sizeof prefix, META "%s_name", role);
  int rc = lb_add(b, mg_arena_strndup(p->a, prefix, strlen(prefix)), p->name ? p->name : "");
  static const char *const kinds[2][2] = {{"_label_", "_labelpresent_"}, {"_annotation_", "_annotationpresent_"}};
  for (int k = 0; k < 2 && rc == 0; k++) {
    char vp[96], pp[96];
    snprintf(vp, sizeof vp, META "%s%s", role, kinds[k][0]);
    snprintf(pp, sizeof pp, META "%s%s", role, kinds[k][1]);
    for (kvn_t *e = (k ? p->annots : p->labels).head; e && rc == 0; e = e->next)
      if ((rc = lb_add(b, aname(p->a, vp, e->k), e->v)) == 0) rc = lb_add(b, aname(p->a, pp, e->k), "true");
  }
  return rc;
}

static int pod_labels(lb_t *b, pctx_t *p) {
  obj_t *o = p->o;
  const char *v[][2] = {{META "pod_ip", o->u.pod.ip},         {META "pod_ready", p->ready ? p->ready : "unknown"},
                        {META "pod_phase", p->phase},         {META "pod_node_name", o->u.pod.node_name},
                        {META "pod_host_ip", p->host_ip},     {META "pod_uid", p->uid},
                        {META "pod_ipv4", p->ipv4},           {META "pod_ipv6", p->ipv6},
                        {META "pod_controller_kind", p->ctrl_kind}, {META "pod_controller_name", p->ctrl_name}};
  int rc = 0;
  for (size_t i = 0; i < sizeof v / sizeof v[0] && rc == 0; i++) {
    bool optional = i >= 6; /* ipv4/ipv6 when known; controller fields when set and not empty */
    if (optional && (!v[i][1] || !v[i][1][0])) continue;
    rc = lb_add(b, v[i][0], v[i][1] ? v[i][1] : "");
  }
  return rc ? rc : meta_labels(b, p, "pod");
}

/* Container IDs come from the statuses, matched by name. */
static void pod_link_statuses(pctx_t *p) {
  *p->ctail = p->inits; /* init containers follow the regular ones */
  for (container_t *c = p->o->u.pod.containers; c; c = c->next) {
    const char *id = c->name ? kvlist_get(c->init ? &p->istatus : &p->cstatus, c->name) : NULL;
    c->id = id ? id : "";
  }
}

/* Node address by Kubernetes's priority; node_address_<type> for the first
 * address of each type. */
static int node_addresses(pctx_t *p) {
  static const char *const prio[] = {"InternalIP", "InternalDNS", "ExternalIP", "ExternalDNS", "LegacyHostIP",
                                     "Hostname", NULL};
  obj_t *o = p->o;
  for (size_t i = 0; prio[i] && !o->u.node.addr; i++) o->u.node.addr = kvlist_get(&p->node_addrs, prio[i]);
  o->u.node.addrs = mg_arena_alloc(p->a, (p->node_addrs.n ? p->node_addrs.n : 1) * sizeof *o->u.node.addrs);
  if (!o->u.node.addrs) return MG_ENOMEM;
  for (kvn_t *e = p->node_addrs.head; e; e = e->next) {
    if (kvlist_get(&p->node_addrs, e->k) != e->v) continue; /* not the first of its type */
    char *name = aname(p->a, META "node_address_", e->k);
    if (!name) return MG_ENOMEM;
    o->u.node.addrs[o->u.node.naddrs++] = (lbl_t){name, e->v};
  }
  return 0;
}

static int finish_labels(pctx_t *p, res_t res) {
  obj_t *o = p->o;
  lb_t b = {p->a, NULL, 0, 16 + 2 * (p->labels.n + p->annots.n)};
  b.v = mg_arena_alloc(p->a, b.cap * sizeof *b.v);
  if (!b.v) return MG_ENOMEM;
  int rc = 0;
  switch (res) {
  case RES_POD:
    pod_link_statuses(p);
    rc = pod_labels(&b, p);
    break;
  case RES_SERVICE:
    if ((rc = lb_add(&b, META "namespace", o->ns)) == 0) rc = meta_labels(&b, p, "service");
    break;
  case RES_ENDPOINTS:
    rc = meta_labels(&b, p, "endpoints");
    break;
  case RES_SLICE:
    o->u.slice.service = kvlist_get(&p->labels, "kubernetes.io/service-name");
    if ((rc = lb_add(&b, META "endpointslice_address_type", p->address_type ? p->address_type : "")) == 0)
      rc = meta_labels(&b, p, "endpointslice");
    break;
  case RES_NODE:
    if ((rc = node_addresses(p)) == 0) rc = meta_labels(&b, p, "node");
    break;
  case RES_COUNT:
    rc = MG_EINVAL;
    break;
  }
  o->labels = b.v;
  o->nlabels = b.n;
  return rc;
}

/* Reduce one API object; *rv (may be NULL) gets its resourceVersion,
 * borrowed from the object. MG_EPARSE for an object without a name (or a
 * namespace, when namespaced). */
static int obj_parse(res_t res, mg_str_t raw, obj_t **out, const char **rv) {
  *out = NULL;
  obj_t *o = mg_calloc(1, sizeof *o);
  if (!o) return MG_ENOMEM;
  mg_arena_init(&o->arena, 1024, 0);
  pctx_t p;
  memset(&p, 0, sizeof p);
  p.o = o;
  p.a = &o->arena;
  kvlist_init(&p.labels);
  kvlist_init(&p.annots);
  kvlist_init(&p.cstatus);
  kvlist_init(&p.istatus);
  kvlist_init(&p.node_addrs);
  p.ctail = &o->u.pod.containers;
  p.itail = &p.inits;
  p.stail = &o->u.eps.subsets;
  topctx_t c = {&p, res};
  int rc = mg_json_object(raw.p, raw.n, top_cb, &c, NULL);
  if (rc == 0 && (!p.name || !p.name[0] || (resources[res].namespaced && (!p.ns || !p.ns[0])))) rc = MG_EPARSE;
  if (rc == 0) {
    o->name = p.name;
    o->ns = resources[res].namespaced ? p.ns : "";
    rc = finish_labels(&p, res);
  }
  if (rc) {
    obj_free(o);
    return rc;
  }
  if (rv) *rv = p.rv;
  *out = o;
  return 0;
}

/* ---- the cache ----------------------------------------------------------- */

/* Objects of one resource by namespace/name: chained hash, doubled when
 * the load passes 1. */
typedef struct store {
  obj_t **b;
  size_t nb, n;
} store_t;

static size_t store_slot(size_t nb, const char *ns, const char *name) {
  uint64_t h = mg_hash64(ns, strlen(ns), 0x6b38);
  return (size_t)(mg_hash64(name, strlen(name), h) & (nb - 1));
}

static obj_t *store_get(const store_t *s, const char *ns, const char *name) {
  if (!s->nb || !name) return NULL;
  for (obj_t *o = s->b[store_slot(s->nb, ns, name)]; o; o = o->next)
    if (strcmp(o->name, name) == 0 && strcmp(o->ns, ns) == 0) return o;
  return NULL;
}

static obj_t *store_take(store_t *s, const char *ns, const char *name) {
  if (!s->nb) return NULL;
  for (obj_t **pp = &s->b[store_slot(s->nb, ns, name)]; *pp; pp = &(*pp)->next) {
    obj_t *o = *pp;
    if (strcmp(o->name, name) == 0 && strcmp(o->ns, ns) == 0) {
      *pp = o->next;
      s->n--;
      return o;
    }
  }
  return NULL;
}

static int store_put(store_t *s, obj_t *o) {
  if (s->n >= s->nb) {
    size_t nb = s->nb ? s->nb * 2 : 64;
    obj_t **b = mg_calloc(nb, sizeof *b);
    if (!b) return MG_ENOMEM;
    for (size_t i = 0; i < s->nb; i++)
      for (obj_t *e = s->b[i], *next; e; e = next) {
        next = e->next;
        size_t j = store_slot(nb, e->ns, e->name);
        e->next = b[j];
        b[j] = e;
      }
    mg_free(s->b);
    s->b = b;
    s->nb = nb;
  }
  size_t j = store_slot(s->nb, o->ns, o->name);
  o->next = s->b[j];
  s->b[j] = o;
  s->n++;
  return 0;
}

static void store_cleanup(store_t *s) {
  for (size_t i = 0; i < s->nb; i++)
    for (obj_t *e = s->b[i], *next; e; e = next) {
      next = e->next;
      obj_free(e);
    }
  mg_free(s->b);
  memset(s, 0, sizeof *s);
}

static int obj_cmp(const void *x, const void *y) {
  const obj_t *a = *(obj_t *const *)x, *b = *(obj_t *const *)y;
  int c = strcmp(a->ns, b->ns);
  return c ? c : strcmp(a->name, b->name);
}

/* The objects in namespace/name order, so reports are stable. */
static obj_t **store_sorted(const store_t *s) {
  obj_t **v = mg_mallocarray(s->n ? s->n : 1, sizeof *v);
  if (!v) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < s->nb; i++)
    for (obj_t *e = s->b[i]; e; e = e->next) v[k++] = e;
  qsort(v, k, sizeof *v, obj_cmp);
  return v;
}

/* ---- the provider -------------------------------------------------------- */

typedef int (*jsplit_member_fn)(void *ud, mg_str_t key, mg_str_t raw);
typedef int (*jsplit_item_fn)(void *ud, mg_str_t raw);
typedef int (*jsplit_end_fn)(void *ud);

/* Splits a stream of top-level JSON objects (one list, or watch events
 * one per line) into the raw text of their members, and of the elements of
 * a member named "items" one at a time, so no answer is held whole. Only
 * the structure is checked here; each piece is then read by mg_json, which
 * checks it strictly and bounds it (MG_JSON_MAX_INPUT). */
typedef enum { J_KEY, J_INKEY, J_COLON, J_VALUE, J_AFTER, J_ITEMS } jphase_t;

typedef struct jsplit {
  int depth;
  jphase_t phase;
  bool in_str, esc, capturing, cap_scalar;
  int cap_base; /* depth the captured value closes back to */
  mg_buf_t key, val;
  size_t docs;
  const char *why; /* static reason of a structural error */
  jsplit_member_fn member;
  jsplit_item_fn item;
  jsplit_end_fn end;
  void *ud;
} jsplit_t;

static void jsplit_reset(jsplit_t *s, jsplit_member_fn member, jsplit_item_fn item, jsplit_end_fn end, void *ud) {
  mg_buf_reset(&s->key);
  mg_buf_reset(&s->val);
  s->depth = 0;
  s->phase = J_KEY;
  s->in_str = s->esc = s->capturing = s->cap_scalar = false;
  s->docs = 0;
  s->why = NULL;
  s->member = member;
  s->item = item;
  s->end = end;
  s->ud = ud;
}

static int jfail(jsplit_t *s, int rc, const char *why) {
  s->why = why;
  return rc;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static int cap_end(jsplit_t *s) {
  s->capturing = false;
  mg_str_t raw = mg_str_n(s->val.data, s->val.len);
  int rc = s->cap_base == 2 ? s->item(s->ud, raw) : s->member(s->ud, mg_str_n(s->key.data, s->key.len), raw);
  mg_buf_reset(&s->val);
  s->phase = s->cap_base == 2 ? J_ITEMS : J_AFTER;
  return rc;
}

static int cap_start(jsplit_t *s, char c, int base) {
  s->capturing = true;
  s->cap_base = base;
  s->cap_scalar = c != '{' && c != '[';
  s->in_str = c == '"';
  s->esc = false;
  if (!s->cap_scalar) s->depth++;
  return mg_buf_append_byte(&s->val, (unsigned char)c) ? jfail(s, MG_ETOOBIG, "an object over 1 MiB") : 0;
}

static int cap_byte(jsplit_t *s, char c) {
  if (mg_buf_append_byte(&s->val, (unsigned char)c)) return jfail(s, MG_ETOOBIG, "an object over 1 MiB");
  if (s->in_str) {
    if (s->esc) s->esc = false;
    else if (c == '\\') s->esc = true;
    else if (c == '"') s->in_str = false;
    return 0;
  }
  if (c == '"') s->in_str = true;
  else if (c == '{' || c == '[') s->depth++;
  else if ((c == '}' || c == ']') && --s->depth == s->cap_base && !s->cap_scalar) return cap_end(s);
  return 0;
}

static int doc_end(jsplit_t *s) {
  s->depth = 0;
  s->phase = J_KEY;
  s->docs++;
  return s->end(s->ud);
}

static int jsplit_byte(jsplit_t *s, char c) {
  if (s->capturing) {
    if (!(s->cap_scalar && !s->in_str && (c == ',' || c == '}' || c == ']' || is_ws(c)))) return cap_byte(s, c);
    int rc = cap_end(s); /* a scalar ends at the next structural byte, handled below */
    if (rc) return rc;
  }
  if (s->phase == J_INKEY) {
    if (s->esc) s->esc = false;
    else if (c == '\\') s->esc = true;
    else if (c == '"') {
      s->phase = J_COLON;
      return 0;
    }
    return mg_buf_append_byte(&s->key, (unsigned char)c) ? jfail(s, MG_ETOOBIG, "a member name too long") : 0;
  }
  if (is_ws(c)) return 0;
  if (s->depth == 0) {
    if (c != '{') return jfail(s, MG_EPARSE, "expected an object");
    s->depth = 1;
    s->phase = J_KEY;
    return 0;
  }
  switch (s->phase) {
  case J_KEY:
    if (c == '}') return doc_end(s);
    if (c != '"') return jfail(s, MG_EPARSE, "expected a member name");
    mg_buf_reset(&s->key);
    s->esc = false;
    s->phase = J_INKEY;
    return 0;
  case J_COLON:
    if (c != ':') return jfail(s, MG_EPARSE, "expected ':'");
    s->phase = J_VALUE;
    return 0;
  case J_VALUE:
    if (c == ',' || c == '}' || c == ']' || c == ':') return jfail(s, MG_EPARSE, "expected a value");
    if (c == '[' && s->item && s->key.len == 5 && memcmp(s->key.data, "items", 5) == 0) {
      s->depth = 2;
      s->phase = J_ITEMS;
      return 0;
    }
    return cap_start(s, c, 1);
  case J_AFTER:
    if (c == ',') s->phase = J_KEY;
    else if (c == '}') return doc_end(s);
    else return jfail(s, MG_EPARSE, "expected ',' or '}'");
    return 0;
  case J_ITEMS:
    if (c == ',') return 0;
    if (c == ']') {
      s->depth = 1;
      s->phase = J_AFTER;
      return 0;
    }
    if (c != '{') return jfail(s, MG_EPARSE, "items must be objects");
    return cap_start(s, c, 2);
  case J_INKEY:
    break;
  }
  return 0;
}

static int jsplit_feed(jsplit_t *s, const char *data, size_t len) {
  for (size_t i = 0; i < len; i++) {
    int rc = jsplit_byte(s, data[i]);
    if (rc) return rc;
  }
  return 0;
}

typedef enum { I_IDLE, I_LIST, I_WATCH, I_WAIT } istate_t;

typedef struct k8s k8s_t;

/* List and watch of one resource in one namespace (NULL: all of them, or
 * a cluster-scoped resource). */
struct informer {
  k8s_t *k;
  res_t res;
  const char *ns; /* borrowed from the configuration */
  istate_t state;
  mg_http_req_t *req;
  uv_timer_t timer; /* backoff, short-watch pause */
  jsplit_t split;
  char *rv;         /* resourceVersion the next watch starts from */
  unsigned gen;     /* list generation: what a list did not see is deleted */
  unsigned failures;
  bool synced, watch_relist, next_watch, have_event_obj;
  uint64_t listed_at, watch_at;
  unsigned events;
  char ev_type[16];
  mg_buf_t ev_obj;
  char why[256];      /* what went wrong reading the body */
  char last_err[300]; /* last failure logged, so each distinct one is logged once at warn */
};

struct k8s {
  const mg_sd_env_t *env; /* used in start only: it may go before our last callback */
  uv_loop_t *loop;
  mg_http_client_t *http;
  char *job;
  mg_sd_update_fn update;
  void *ud;
  kconf_t conf;
  char *base; /* API server URL, no trailing '/' */
  char *ca_file;
  mg_http_tls_opts_t tls;
  mg_conf_auth_t auth_spec; /* where the Authorization value comes from */
  char *secret_file;        /* re-read every minute (token or password) */
  char *auth;               /* current Authorization value; secret */
  char last_file_err[128];
  informer_t *inf;
  size_t ninf;
  store_t stores[RES_COUNT];
  size_t nobjects;
  uv_timer_t flush_timer, file_timer;
  uint64_t last_flush, last_hash;
  size_t last_n;
  bool reported, flush_armed, started, reading;
  int handles, pending; /* open timers; requests and file reads in flight */
  bool closing;
  mg_arena_t scratch; /* target building */
};

static const char *job_name(const k8s_t *k) { return k->job ? k->job : ""; }

static void maybe_free(k8s_t *k) {
  if (!k->closing || k->handles > 0 || k->pending > 0) return;
  for (size_t i = 0; i < k->ninf; i++) {
    mg_free(k->inf[i].rv);
    mg_buf_cleanup(&k->inf[i].split.key);
    mg_buf_cleanup(&k->inf[i].split.val);
    mg_buf_cleanup(&k->inf[i].ev_obj);
  }
  mg_free(k->inf);
  for (int r = 0; r < RES_COUNT; r++) store_cleanup(&k->stores[r]);
  mg_arena_cleanup(&k->scratch);
  mg_mem_free_secret(k->auth);
  mg_free(k->base);
  mg_free(k->ca_file);
  mg_free(k->secret_file);
  mg_free(k->job);
  kconf_free(&k->conf);
  mg_free(k);
}

static void on_handle_closed(uv_handle_t *h) {
  k8s_t *k = h->data;
  k->handles--;
  maybe_free(k);
}

static void on_inf_timer_closed(uv_handle_t *h) {
  informer_t *in = h->data;
  in->k->handles--;
  maybe_free(in->k);
}

/* ---- reports ---- */

typedef struct lab {
  const char *name, *value;
  uint32_t seq; /* later additions win over earlier ones of the same name */
} lab_t;

typedef struct tb {
  k8s_t *k;
  lab_t *v;
  size_t n, cap;
  uint32_t seq;
  mg_sd_targets_t ts;
  uint64_t hash;
  int err;
} tb_t;

static void tb_add(tb_t *b, const char *name, const char *value) {
  if (b->err) return;
  if (!name || !value) {
    b->err = MG_ENOMEM;
    return;
  }
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    lab_t *v = mg_reallocarray(b->v, cap, sizeof *v);
    if (!v) {
      b->err = MG_ENOMEM;
      return;
    }
    b->v = v;
    b->cap = cap;
  }
  b->v[b->n++] = (lab_t){name, value, b->seq++};
}

static void tb_add_lbls(tb_t *b, const lbl_t *l, size_t n) {
  for (size_t i = 0; i < n; i++) tb_add(b, l[i].name, l[i].value);
}

static int lab_cmp(const void *x, const void *y) {
  const lab_t *a = x, *b = y;
  int c = strcmp(a->name, b->name);
  return c ? c : (a->seq > b->seq) - (a->seq < b->seq);
}

/* One target with the labels added since the last one (the last of a
 * repeated name wins, as a later map assignment does in Prometheus). */
static void tb_emit(tb_t *b, const char *address) {
  if (!b->err && !address) b->err = MG_ENOMEM;
  if (!b->err && b->ts.n >= MG_CONF_MAX_TARGETS) b->err = MG_ETOOBIG;
  mg_conf_target_t *t = b->err ? NULL : mg_sd_targets_add(&b->ts, address);
  if (!b->err && !t) b->err = MG_ENOMEM;
  if (b->err) {
    b->n = 0;
    return;
  }
  qsort(b->v, b->n, sizeof *b->v, lab_cmp);
  b->hash = mg_hash64(address, strlen(address) + 1, b->hash);
  for (size_t i = 0; i < b->n && !b->err; i++) {
    if (i + 1 < b->n && strcmp(b->v[i].name, b->v[i + 1].name) == 0) continue;
    b->hash = mg_hash64(b->v[i].name, strlen(b->v[i].name) + 1, b->hash);
    b->hash = mg_hash64(b->v[i].value, strlen(b->v[i].value) + 1, b->hash);
    if (mg_kvs_add(&t->labels, b->v[i].name, b->v[i].value)) b->err = MG_ENOMEM;
  }
  b->n = 0;
}

static const char *or_empty(const char *s) { return s ? s : ""; }

static char *scratch_join(tb_t *b, const char *host, const char *port) {
  return join_host_port(&b->k->scratch, host, port);
}

static void add_node_labels(tb_t *b, const char *node_name) {
  const obj_t *n = node_name ? store_get(&b->k->stores[RES_NODE], "", node_name) : NULL;
  if (n) tb_add_lbls(b, n->labels, n->nlabels);
}

static void build_pod(tb_t *b, const obj_t *o) {
  const char *ip = o->u.pod.ip;
  if (!ip || !ip[0]) return; /* starting or evicted: no address yet */
  for (const container_t *c = o->u.pod.containers; c; c = c->next) {
    const port_t *pt = c->ports;
    do {
      tb_add_lbls(b, o->labels, o->nlabels);
      tb_add(b, META "namespace", o->ns);
      if (b->k->conf.attach_node) add_node_labels(b, o->u.pod.node_name);
      tb_add(b, META "pod_container_name", or_empty(c->name));
      tb_add(b, META "pod_container_id", or_empty(c->id));
      tb_add(b, META "pod_container_image", or_empty(c->image));
      tb_add(b, META "pod_container_init", c->init ? "true" : "false");
      if (!pt) {
        /* No port: the address is the pod IP alone, for relabeling to complete. */
        size_t n = strlen(ip) + 3;
        char *addr = mg_arena_alloc(&b->k->scratch, n);
        if (addr) snprintf(addr, n, strchr(ip, ':') ? "[%s]" : "%s", ip);
        tb_emit(b, addr);
        break;
      }
      tb_add(b, META "pod_container_port_number", pt->number);
      tb_add(b, META "pod_container_port_name", or_empty(pt->name));
      tb_add(b, META "pod_container_port_protocol", or_empty(pt->protocol));
      tb_emit(b, scratch_join(b, ip, pt->number));
      pt = pt->next;
    } while (pt);
  }
}

static void build_service(tb_t *b, const obj_t *o) {
  size_t n = strlen(o->name) + strlen(o->ns) + 6;
  char *host = mg_arena_alloc(&b->k->scratch, n);
  if (host) snprintf(host, n, "%s.%s.svc", o->name, o->ns);
  const char *type = or_empty(o->u.svc.type);
  for (const port_t *pt = o->u.svc.ports; pt; pt = pt->next) {
    tb_add_lbls(b, o->labels, o->nlabels);
    tb_add(b, META "service_port_name", or_empty(pt->name));
    tb_add(b, META "service_port_number", pt->number);
    tb_add(b, META "service_port_protocol", or_empty(pt->protocol));
    tb_add(b, META "service_type", type);
    if (strcmp(type, "ExternalName") == 0) tb_add(b, META "service_external_name", or_empty(o->u.svc.external_name));
    else tb_add(b, META "service_cluster_ip", or_empty(o->u.svc.cluster_ip));
    if (strcmp(type, "LoadBalancer") == 0) tb_add(b, META "service_loadbalancer_ip", or_empty(o->u.svc.lb_ip));
    tb_emit(b, host ? scratch_join(b, host, pt->number) : NULL);
  }
}

static void build_node(tb_t *b, const obj_t *o) {
  if (!o->u.node.addr) {
    MG_DEBUG(MOD, "node_without_address", "job=%s node=%s", job_name(b->k), o->name);
    return;
  }
  tb_add_lbls(b, o->labels, o->nlabels);
  tb_add(b, META "node_provider_id", or_empty(o->u.node.provider_id));
  tb_add(b, "instance", o->name);
  tb_add_lbls(b, o->u.node.addrs, o->u.node.naddrs);
  tb_emit(b, scratch_join(b, o->u.node.addr, o->u.node.kubelet_port ? o->u.node.kubelet_port : "0"));
}

/* Pods an endpoints object points at, and the ports it named for them, so
 * their other container ports become targets too. */
typedef struct seen {
  const obj_t **pods;
  size_t npods;
  struct seen_port {
    const obj_t *pod;
    const char *number;
  } *ports;
  size_t nports;
  int err;
} seen_t;

static void seen_add(seen_t *s, const obj_t *pod, const char *number) {
  bool known = false;
  for (size_t i = 0; i < s->npods && !known; i++) known = s->pods[i] == pod;
  const obj_t **pods = known ? s->pods : mg_reallocarray(s->pods, s->npods + 1, sizeof *pods);
  struct seen_port *ports = mg_reallocarray(s->ports, s->nports + 1, sizeof *ports);
  if (pods) s->pods = pods;
  if (ports) s->ports = ports;
  if (!pods || !ports) {
    s->err = MG_ENOMEM;
    return;
  }
  if (!known) s->pods[s->npods++] = pod;
  s->ports[s->nports++] = (struct seen_port){pod, number};
}

static bool seen_port(const seen_t *s, const obj_t *pod, const char *number) {
  for (size_t i = 0; i < s->nports; i++)
    if (s->ports[i].pod == pod && s->ports[i].number && strcmp(s->ports[i].number, number) == 0) return true;
  return false;
}

/* Group labels of an endpoints object or slice: its own, its namespace and
 * those of the service of the same name. */
static void ep_group(tb_t *b, const obj_t *o, const char *service) {
  tb_add(b, META "namespace", o->ns);
  const obj_t *svc = service ? store_get(&b->k->stores[RES_SERVICE], o->ns, service) : NULL;
  if (svc) tb_add_lbls(b, svc->labels, svc->nlabels);
  tb_add_lbls(b, o->labels, o->nlabels);
}

static const obj_t *ref_pod(tb_t *b, const obj_t *o, const ref_t *r) {
  if (!r->present || !r->kind || strcmp(r->kind, "Pod") != 0 || !r->name) return NULL;
  return store_get(&b->k->stores[RES_POD], r->ns ? r->ns : o->ns, r->name);
}

/* The pod's labels, and those of the container port the endpoint port
 * names (protocol from the endpoint's port for endpoints, from the
 * container's for slices, as Prometheus does). */
static void ep_pod_labels(tb_t *b, const obj_t *pod, const port_t *port, bool slice) {
  tb_add_lbls(b, pod->labels, pod->nlabels);
  if (!port->number) return;
  for (const container_t *c = pod->u.pod.containers; c; c = c->next)
    for (const port_t *cp = c->ports; cp; cp = cp->next) {
      if (strcmp(cp->number, port->number) != 0) continue;
      tb_add(b, META "pod_container_name", or_empty(c->name));
      tb_add(b, META "pod_container_image", or_empty(c->image));
      tb_add(b, META "pod_container_port_name", or_empty(cp->name));
      tb_add(b, META "pod_container_port_number", cp->number);
      tb_add(b, META "pod_container_port_protocol", or_empty(slice ? cp->protocol : port->protocol));
      tb_add(b, META "pod_container_init", c->init ? "true" : "false");
      break;
    }
}

/* Container ports of the pods seen that no endpoint port named. */
static void ep_unseen_ports(tb_t *b, const obj_t *o, const char *service, const seen_t *s) {
  for (size_t i = 0; i < s->npods; i++) {
    const obj_t *pod = s->pods[i];
    if (!pod->u.pod.ip || !pod->u.pod.ip[0]) continue;
    for (const container_t *c = pod->u.pod.containers; c; c = c->next)
      for (const port_t *cp = c->ports; cp; cp = cp->next) {
        if (seen_port(s, pod, cp->number)) continue;
        ep_group(b, o, service);
        tb_add(b, META "pod_container_name", or_empty(c->name));
        tb_add(b, META "pod_container_image", or_empty(c->image));
        tb_add(b, META "pod_container_port_name", or_empty(cp->name));
        tb_add(b, META "pod_container_port_number", cp->number);
        tb_add(b, META "pod_container_port_protocol", or_empty(cp->protocol));
        tb_add(b, META "pod_container_init", c->init ? "true" : "false");
        tb_add_lbls(b, pod->labels, pod->nlabels);
        tb_emit(b, scratch_join(b, pod->u.pod.ip, cp->number));
      }
  }
}

static void endpoints_target(tb_t *b, const obj_t *o, const epaddr_t *a, const port_t *port, const char *ready,
                             seen_t *s) {
  if (!a->ip || !a->ip[0]) return; /* no address, no target */
  ep_group(b, o, o->name);
  tb_add(b, META "endpoint_port_name", or_empty(port->name));
  tb_add(b, META "endpoint_port_protocol", or_empty(port->protocol));
  tb_add(b, META "endpoint_ready", ready);
  if (a->ref.present) {
    tb_add(b, META "endpoint_address_target_kind", or_empty(a->ref.kind));
    tb_add(b, META "endpoint_address_target_name", or_empty(a->ref.name));
  }
  if (a->node_name) tb_add(b, META "endpoint_node_name", a->node_name);
  if (a->hostname && a->hostname[0]) tb_add(b, META "endpoint_hostname", a->hostname);
  if (b->k->conf.attach_node) {
    if (a->node_name) add_node_labels(b, a->node_name);
    else if (a->ref.present && a->ref.kind && strcmp(a->ref.kind, "Node") == 0) add_node_labels(b, a->ref.name);
  }
  const obj_t *pod = ref_pod(b, o, &a->ref);
  if (pod) {
    seen_add(s, pod, port->number);
    ep_pod_labels(b, pod, port, false);
  }
  tb_emit(b, scratch_join(b, a->ip, port->number));
}

static void build_endpoints(tb_t *b, const obj_t *o) {
  seen_t s = {0};
  for (const subset_t *ss = o->u.eps.subsets; ss; ss = ss->next)
    for (const port_t *pt = ss->ports; pt; pt = pt->next) {
      for (const epaddr_t *a = ss->ready; a; a = a->next) endpoints_target(b, o, a, pt, "true", &s);
      for (const epaddr_t *a = ss->not_ready; a; a = a->next) endpoints_target(b, o, a, pt, "false", &s);
    }
  if (s.err && !b->err) b->err = s.err;
  ep_unseen_ports(b, o, o->name, &s);
  mg_free(s.pods);
  mg_free(s.ports);
}

static void slice_target(tb_t *b, const obj_t *o, const epaddr_t *e, const char *ip, const port_t *port, seen_t *s) {
  ep_group(b, o, o->u.slice.service);
  if (port->name) tb_add(b, META "endpointslice_port_name", port->name);
  if (port->protocol) tb_add(b, META "endpointslice_port_protocol", port->protocol);
  if (port->number) tb_add(b, META "endpointslice_port", port->number);
  if (port->app_protocol) tb_add(b, META "endpointslice_port_app_protocol", port->app_protocol);
  if (e->ready) tb_add(b, META "endpointslice_endpoint_conditions_ready", e->ready);
  if (e->serving) tb_add(b, META "endpointslice_endpoint_conditions_serving", e->serving);
  if (e->terminating) tb_add(b, META "endpointslice_endpoint_conditions_terminating", e->terminating);
  if (e->hostname) tb_add(b, META "endpointslice_endpoint_hostname", e->hostname);
  if (e->ref.present) {
    tb_add(b, META "endpointslice_address_target_kind", or_empty(e->ref.kind));
    tb_add(b, META "endpointslice_address_target_name", or_empty(e->ref.name));
  }
  if (e->node_name) tb_add(b, META "endpointslice_endpoint_node_name", e->node_name);
  if (e->zone) tb_add(b, META "endpointslice_endpoint_zone", e->zone);
  tb_add_lbls(b, e->topo, e->ntopo);
  if (b->k->conf.attach_node) {
    bool node_ref = e->ref.present && e->ref.kind && strcmp(e->ref.kind, "Node") == 0;
    add_node_labels(b, node_ref ? e->ref.name : e->node_name);
  }
  const obj_t *pod = ref_pod(b, o, &e->ref);
  if (pod) {
    seen_add(s, pod, port->number);
    ep_pod_labels(b, pod, port, true);
  }
  tb_emit(b, port->number ? scratch_join(b, ip, port->number) : mg_arena_strndup(&b->k->scratch, ip, strlen(ip)));
}

static void build_slice(tb_t *b, const obj_t *o) {
  seen_t s = {0};
  for (const epaddr_t *e = o->u.slice.eps; e; e = e->next)
    for (const port_t *pt = o->u.slice.ports; pt; pt = pt->next)
      for (const strl_t *ip = e->ips; ip; ip = ip->next) slice_target(b, o, e, ip->s, pt, &s);
  if (s.err && !b->err) b->err = s.err;
  ep_unseen_ports(b, o, o->u.slice.service, &s);
  mg_free(s.pods);
  mg_free(s.ports);
}

static bool all_synced(const k8s_t *k) {
  for (size_t i = 0; i < k->ninf; i++)
    if (!k->inf[i].synced || k->inf[i].state == I_LIST) return false;
  return true;
}

/* Rebuild the role's targets from the cache and report them when they
 * differ from the last report. */
static void flush(k8s_t *k) {
  if (k->closing || !all_synced(k)) return; /* a finished list schedules the next flush */
  res_t role = k->conf.role;
  obj_t **objs = store_sorted(&k->stores[role]);
  tb_t b = {.k = k, .hash = 0x8b5};
  if (!objs) b.err = MG_ENOMEM;
  for (size_t i = 0; objs && i < k->stores[role].n && !b.err; i++) {
    switch (role) {
    case RES_POD: build_pod(&b, objs[i]); break;
    case RES_SERVICE: build_service(&b, objs[i]); break;
    case RES_ENDPOINTS: build_endpoints(&b, objs[i]); break;
    case RES_SLICE: build_slice(&b, objs[i]); break;
    case RES_NODE: build_node(&b, objs[i]); break;
    case RES_COUNT: break;
    }
  }
  mg_free(objs);
  mg_free(b.v);
  mg_arena_reset(&k->scratch);
  k->last_flush = uv_now(k->loop);
  if (b.err) {
    MG_ERROR(MOD, "targets_failed", "job=%s role=%s err=%s hint=\"%s\"", job_name(k), resources[role].role,
             mg_err_name(b.err),
             b.err == MG_ETOOBIG ? "more than 100000 targets: narrow with namespaces or selectors" : "out of memory");
    k->reported = false;
    k->update(k->ud, false, NULL);
  } else if (!k->reported || b.hash != k->last_hash || b.ts.n != k->last_n) {
    k->reported = true;
    k->last_hash = b.hash;
    k->last_n = b.ts.n;
    MG_DEBUG(MOD, "targets", "job=%s role=%s targets=%zu", job_name(k), resources[role].role, b.ts.n);
    k->update(k->ud, true, &b.ts);
  }
  mg_sd_targets_cleanup(&b.ts);
}

static void on_flush_timer(uv_timer_t *t) {
  k8s_t *k = t->data;
  k->flush_armed = false;
  flush(k);
}

/* Changes are reported at most once a second; a burst of events becomes
 * one report. */
static void schedule_flush(k8s_t *k) {
  if (k->closing || k->flush_armed) return;
  uint64_t now = uv_now(k->loop), next = k->last_flush + FLUSH_INTERVAL_MS;
  k->flush_armed = true;
  uv_timer_start(&k->flush_timer, on_flush_timer, k->reported && next > now ? next - now : 0, 0);
}

/* A failed refresh: the runner keeps the previous targets. Reported again
 * after the next success even when the list did not change. */
static void report_failure(k8s_t *k) {
  k->reported = false;
  k->update(k->ud, false, NULL);
}

/* ---- list and watch ---- */

static void informer_list(informer_t *in);
static void informer_watch(informer_t *in);
static void informer_wait(informer_t *in, uint64_t ms, bool then_watch);
static void on_file_timer(uv_timer_t *t);

static uint64_t jitter(uint64_t range, const void *salt) {
  uint64_t t = uv_hrtime();
  return range ? mg_hash64(&t, sizeof t, (uint64_t)(uintptr_t)salt) % range : 0;
}

/* 1 s doubling to 60 s, each wait between half and all of it. */
static uint64_t backoff_ms(const informer_t *in) {
  uint64_t ms = BACKOFF_MIN_MS;
  for (unsigned i = 1; i < in->failures && ms < BACKOFF_MAX_MS; i++) ms *= 2;
  if (ms > BACKOFF_MAX_MS) ms = BACKOFF_MAX_MS;
  return ms / 2 + jitter(ms / 2 + 1, in);
}

static bool unreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

static int append_query(mg_buf_t *u, char *sep, const char *name, const char *value) {
  int rc = mg_buf_printf(u, "%c%s=", *sep, name);
  *sep = '&';
  for (const unsigned char *p = (const unsigned char *)value; *p && rc == 0; p++)
    rc = unreserved(*p) ? mg_buf_append_byte(u, *p) : mg_buf_printf(u, "%%%02X", *p);
  return rc;
}

static int build_url(const informer_t *in, unsigned watch_s, mg_buf_t *u) {
  const k8s_t *k = in->k;
  const struct resource *r = &resources[in->res];
  const selector_t *sel = &k->conf.sel[in->res];
  char sep = '?', num[16];
  int rc = mg_buf_printf(u, "%s%s", k->base, r->api);
  if (rc == 0 && in->ns) rc = mg_buf_printf(u, "/namespaces/%s", in->ns);
  if (rc == 0) rc = mg_buf_printf(u, "/%s", r->plural);
  if (rc == 0 && sel->label) rc = append_query(u, &sep, "labelSelector", sel->label);
  if (rc == 0 && sel->field) rc = append_query(u, &sep, "fieldSelector", sel->field);
  if (rc == 0 && watch_s) {
    snprintf(num, sizeof num, "%u", watch_s);
    rc = append_query(u, &sep, "watch", "1");
    if (rc == 0) rc = append_query(u, &sep, "allowWatchBookmarks", "true");
    if (rc == 0) rc = append_query(u, &sep, "resourceVersion", in->rv ? in->rv : "");
    if (rc == 0) rc = append_query(u, &sep, "timeoutSeconds", num);
  }
  return rc;
}

static int list_body(void *ud, const char *data, size_t len);
static int watch_body(void *ud, const char *data, size_t len);
static void on_list_done(void *ud, int err, const char *detail, mg_http_response_t *resp);
static void on_watch_done(void *ud, int err, const char *detail, mg_http_response_t *resp);

static int informer_request(informer_t *in, bool watch) {
  k8s_t *k = in->k;
  unsigned watch_s = watch ? WATCH_TIMEOUT_S + (unsigned)jitter(WATCH_TIMEOUT_S, in) : 0;
  mg_buf_t url;
  mg_buf_init(&url, 16384);
  int rc = build_url(in, watch_s, &url);
  mg_http_header_t h[2] = {{"Accept", "application/json"}, {"Authorization", k->auth}};
  mg_http_request_t req = {.method = "GET",
                           .url = url.data,
                           .headers = h,
                           .nheaders = k->auth ? 2 : 1,
                           .connect_timeout_ms = CONNECT_TIMEOUT_MS,
                           .timeout_ms = watch ? (uint64_t)(watch_s + 60) * 1000 : LIST_TIMEOUT_MS,
                           .accept_gzip = !watch,
                           .tls = &k->tls,
                           .on_body = watch ? watch_body : list_body};
  in->why[0] = '\0';
  if (rc == 0)
    rc = mg_http_client_request(k->http, &req, watch ? on_watch_done : on_list_done, in, &in->req);
  mg_buf_cleanup(&url);
  if (rc == 0) k->pending++;
  return rc;
}

static int read_rv_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  char **rv = ud;
  if (t == MG_JSON_OBJECT && mg_str_eq_c(key, "metadata")) return mg_json_object(v.p, v.n, read_rv_cb, ud, NULL);
  if (t != MG_JSON_STRING || !mg_str_eq_c(key, "resourceVersion")) return 0;
  mg_free(*rv);
  *rv = mg_strndup(v.p, v.n);
  return *rv ? 0 : MG_ENOMEM;
}

static int set_rv(informer_t *in, const char *rv) {
  if (!rv) return 0;
  char *copy = mg_strdup(rv);
  if (!copy) return MG_ENOMEM;
  mg_free(in->rv);
  in->rv = copy;
  return 0;
}

static int upsert(informer_t *in, obj_t *o) {
  k8s_t *k = in->k;
  store_t *s = &k->stores[in->res];
  obj_t *old = store_take(s, o->ns, o->name);
  if (old) {
    obj_free(old);
    k->nobjects--;
  }
  if (k->nobjects >= MAX_OBJECTS) {
    obj_free(o);
    snprintf(in->why, sizeof in->why, "more than %d objects: narrow with namespaces or selectors", MAX_OBJECTS);
    return MG_ETOOBIG;
  }
  o->owner = in;
  o->gen = in->gen;
  int rc = store_put(s, o);
  if (rc) obj_free(o);
  else k->nobjects++;
  return rc;
}

static void remove_obj(informer_t *in, const char *ns, const char *name) {
  obj_t *o = store_take(&in->k->stores[in->res], ns, name);
  if (!o) return;
  obj_free(o);
  in->k->nobjects--;
}

/* After a list: what this informer holds and the list did not name is gone. */
static void sweep(informer_t *in) {
  store_t *s = &in->k->stores[in->res];
  for (size_t i = 0; i < s->nb; i++)
    for (obj_t **pp = &s->b[i]; *pp;) {
      obj_t *o = *pp;
      if (o->owner != in || o->gen == in->gen) {
        pp = &o->next;
        continue;
      }
      *pp = o->next;
      s->n--;
      in->k->nobjects--;
      obj_free(o);
    }
}

static int list_member(void *ud, mg_str_t key, mg_str_t raw) {
  informer_t *in = ud;
  if (!mg_str_eq_c(key, "metadata")) return 0;
  int rc = mg_json_object(raw.p, raw.n, read_rv_cb, &in->rv, NULL);
  if (rc) snprintf(in->why, sizeof in->why, "list metadata: %s", mg_err_str(rc));
  return rc;
}

static int list_item(void *ud, mg_str_t raw) {
  informer_t *in = ud;
  obj_t *o;
  int rc = obj_parse(in->res, raw, &o, NULL);
  if (rc) {
    snprintf(in->why, sizeof in->why, "a %s in the list: %s", resources[in->res].role,
             rc == MG_EPARSE ? "malformed or without name/namespace" : mg_err_str(rc));
    return rc;
  }
  return upsert(in, o);
}

static int no_end(void *ud) { return 0; }

static int list_body(void *ud, const char *data, size_t len) {
  informer_t *in = ud;
  int rc = jsplit_feed(&in->split, data, len);
  if (rc && !in->why[0]) snprintf(in->why, sizeof in->why, "list: %s", in->split.why ? in->split.why : mg_err_str(rc));
  return rc;
}

static void informer_list(informer_t *in) {
  k8s_t *k = in->k;
  in->state = I_LIST;
  in->gen++;
  mg_free(in->rv);
  in->rv = NULL;
  jsplit_reset(&in->split, list_member, list_item, no_end, in);
  int rc = informer_request(in, false);
  if (rc == 0) return;
  in->state = I_WAIT;
  in->failures++;
  MG_ERROR(MOD, "request_failed", "job=%s resource=%s err=%s", job_name(k), resources[in->res].plural,
           mg_err_name(rc));
  if (k->started) report_failure(k); /* never from inside start */
  informer_wait(in, backoff_ms(in), false);
}

static void on_inf_timer(uv_timer_t *t) {
  informer_t *in = t->data;
  if (in->k->closing) return;
  if (in->next_watch) informer_watch(in);
  else informer_list(in);
}

/* Wait, then list (or watch again). */
static void informer_wait(informer_t *in, uint64_t ms, bool then_watch) {
  in->state = I_WAIT;
  in->next_watch = then_watch;
  uv_timer_start(&in->timer, on_inf_timer, ms, 0);
}

/* The Status object of an error answer: message (and reason) for the log. */
typedef struct status {
  char msg[200];
  long code;
} status_t;

static int status_cb(void *ud, mg_str_t key, mg_json_type_t t, mg_str_t v) {
  status_t *s = ud;
  if (t == MG_JSON_STRING && mg_str_eq_c(key, "message"))
    snprintf(s->msg, sizeof s->msg, "%.*s", (int)(v.n < 199 ? v.n : 199), v.p);
  if (t == MG_JSON_NUMBER && mg_str_eq_c(key, "code")) s->code = strtol(v.p, NULL, 10);
  return 0;
}

static void read_status(mg_str_t raw, status_t *s) {
  memset(s, 0, sizeof *s);
  if (raw.n && mg_json_object(raw.p, raw.n, status_cb, s, NULL) != 0) s->msg[0] = '\0';
}

static const char *status_hint(int status) {
  switch (status) {
  case 401: return "the API server refused the credentials: check the token (bearer_token_file, service account)";
  case 403: return "grant get, list and watch on this resource (ClusterRole, see docs/kubernetes.md)";
  case 404: return "check api_server (EndpointSlices need Kubernetes 1.21 or later)";
  default: return "";
  }
}

static void log_failure(informer_t *in, const char *what, int err, const char *detail, int status,
                        const mg_http_response_t *resp) {
  k8s_t *k = in->k;
  char msg[300], q[320];
  if (in->why[0]) {
    snprintf(msg, sizeof msg, "%s", in->why);
  } else if (err) {
    snprintf(msg, sizeof msg, "%s: %s", mg_err_name(err), detail ? detail : "");
  } else {
    status_t st;
    read_status(resp && resp->body ? mg_str_n(resp->body->data, resp->body->len) : mg_str_n(NULL, 0), &st);
    snprintf(msg, sizeof msg, "HTTP %d%s%s", status, st.msg[0] ? ": " : "", st.msg);
  }
  bool repeat = strcmp(msg, in->last_err) == 0;
  snprintf(in->last_err, sizeof in->last_err, "%s", msg);
  mg_log_q(q, sizeof q, msg, strlen(msg));
  mg_log_level_t lvl = repeat ? MG_LOG_DEBUG : MG_LOG_WARN;
  MG_LOG(lvl, MOD, what, "job=%s resource=%s namespace=%s failures=%u why=%s hint=\"%s\"", job_name(k),
         resources[in->res].plural, in->ns ? in->ns : "(all)", in->failures, q,
         err ? "retrying with backoff" : status_hint(status));
}

static void on_list_done(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  informer_t *in = ud;
  k8s_t *k = in->k;
  in->req = NULL;
  k->pending--;
  if (k->closing) {
    maybe_free(k);
    return;
  }
  int status = resp ? resp->status : 0;
  if (err == 0 && status == 200 && in->split.docs == 1 && in->split.depth == 0 && in->rv) {
    sweep(in);
    if (in->failures || !in->synced)
      MG_INFO(MOD, "synced", "job=%s resource=%s namespace=%s objects=%zu", job_name(k), resources[in->res].plural,
              in->ns ? in->ns : "(all)", k->stores[in->res].n);
    in->synced = true;
    in->failures = 0;
    in->last_err[0] = '\0';
    in->listed_at = uv_now(k->loop);
    schedule_flush(k);
    informer_watch(in);
    return;
  }
  if (err == 0 && status == 200 && !in->why[0])
    snprintf(in->why, sizeof in->why, "list answer incomplete (no resourceVersion or not one object)");
  in->failures++;
  log_failure(in, "list_failed", err, detail, status, resp);
  if (status == 401) on_file_timer(&k->file_timer); /* a rotated token: read it now, not in a minute */
  report_failure(k);
  informer_wait(in, backoff_ms(in), false);
}

/* ---- watch events ---- */

static int watch_member(void *ud, mg_str_t key, mg_str_t raw) {
  informer_t *in = ud;
  if (mg_str_eq_c(key, "type")) {
    size_t n = raw.n >= 2 && raw.p[0] == '"' ? raw.n - 2 : 0; /* event types are plain words */
    snprintf(in->ev_type, sizeof in->ev_type, "%.*s", (int)(n < sizeof in->ev_type ? n : 0), raw.p + 1);
  } else if (mg_str_eq_c(key, "object")) {
    mg_buf_reset(&in->ev_obj);
    if (mg_buf_append(&in->ev_obj, raw.p, raw.n)) return MG_ENOMEM;
    in->have_event_obj = true;
  }
  return 0;
}

static int watch_error(informer_t *in, mg_str_t raw) {
  status_t st;
  read_status(raw, &st);
  if (st.code == 410) {
    in->watch_relist = true; /* the resourceVersion is too old: list again at once */
    snprintf(in->why, sizeof in->why, "watch expired (410 Gone)");
    return MG_EAGAIN;
  }
  snprintf(in->why, sizeof in->why, "watch error %ld: %s", st.code, st.msg);
  return MG_ESTATUS;
}

static int watch_object(informer_t *in, mg_str_t raw, bool deleted) {
  obj_t *o;
  const char *rv = NULL;
  int rc = obj_parse(in->res, raw, &o, &rv);
  if (rc) {
    snprintf(in->why, sizeof in->why, "a %s event: %s", in->ev_type,
             rc == MG_EPARSE ? "malformed object or without name/namespace" : mg_err_str(rc));
    return rc;
  }
  if ((rc = set_rv(in, rv)) != 0) {
    obj_free(o);
    return rc;
  }
  if (deleted) {
    remove_obj(in, o->ns, o->name);
    obj_free(o);
  } else if ((rc = upsert(in, o)) != 0) {
    return rc;
  }
  schedule_flush(in->k);
  return 0;
}

static int watch_end(void *ud) {
  informer_t *in = ud;
  mg_str_t raw = mg_str_n(in->ev_obj.data, in->ev_obj.len);
  bool have = in->have_event_obj;
  in->have_event_obj = false;
  in->events++;
  if (!have) {
    snprintf(in->why, sizeof in->why, "a watch event without object");
    return MG_EPARSE;
  }
  const char *t = in->ev_type;
  if (strcmp(t, "ADDED") == 0 || strcmp(t, "MODIFIED") == 0) return watch_object(in, raw, false);
  if (strcmp(t, "DELETED") == 0) return watch_object(in, raw, true);
  if (strcmp(t, "ERROR") == 0) return watch_error(in, raw);
  if (strcmp(t, "BOOKMARK") == 0) {
    char *rv = NULL;
    int rc = mg_json_object(raw.p, raw.n, read_rv_cb, &rv, NULL);
    if (rc == 0) rc = set_rv(in, rv);
    mg_free(rv);
    return rc;
  }
  MG_DEBUG(MOD, "watch_event_ignored", "job=%s type=%s", job_name(in->k), t);
  return 0;
}

static int watch_body(void *ud, const char *data, size_t len) {
  informer_t *in = ud;
  int rc = jsplit_feed(&in->split, data, len);
  if (rc && !in->why[0]) snprintf(in->why, sizeof in->why, "watch: %s", in->split.why ? in->split.why : mg_err_str(rc));
  return rc;
}

static void informer_watch(informer_t *in) {
  k8s_t *k = in->k;
  in->state = I_WATCH;
  in->events = 0;
  in->watch_relist = false;
  in->have_event_obj = false;
  in->ev_type[0] = '\0';
  in->watch_at = uv_now(k->loop);
  jsplit_reset(&in->split, watch_member, NULL, watch_end, in);
  int rc = informer_request(in, true);
  if (rc == 0) return;
  in->failures++;
  MG_ERROR(MOD, "request_failed", "job=%s resource=%s err=%s", job_name(k), resources[in->res].plural,
           mg_err_name(rc));
  informer_wait(in, backoff_ms(in), false);
}

static void on_watch_done(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  informer_t *in = ud;
  k8s_t *k = in->k;
  in->req = NULL;
  k->pending--;
  if (k->closing) {
    maybe_free(k);
    return;
  }
  int status = resp ? resp->status : 0;
  uint64_t now = uv_now(k->loop);
  if (in->watch_relist || (err == 0 && status == 410)) {
    MG_INFO(MOD, "watch_expired", "job=%s resource=%s namespace=%s action=relist", job_name(k),
            resources[in->res].plural, in->ns ? in->ns : "(all)");
    informer_list(in);
  } else if (err == 0 && status == 200 && in->split.depth == 0 && !in->split.capturing) {
    /* The server ended the watch (timeoutSeconds): go on, relisting now
     * and then; an empty watch that ended at once waits a little. */
    if (now - in->listed_at >= RESYNC_MS) informer_list(in);
    else if (in->events == 0 && now - in->watch_at < SHORT_WATCH_MS) informer_wait(in, SHORT_WATCH_MS, true);
    else informer_watch(in);
  } else {
    if (err == 0 && status == 200 && !in->why[0]) snprintf(in->why, sizeof in->why, "watch ended inside an event");
    in->failures++;
    log_failure(in, "watch_failed", err, detail, status, resp);
    if (status == 401) on_file_timer(&k->file_timer);
    informer_wait(in, backoff_ms(in), false);
  }
}

/* ---- credentials files, read again every minute without blocking ---- */

typedef struct fread_op {
  uv_fs_t req;
  k8s_t *k;
  uv_file fd;
  int err;
  size_t len;
  char buf[MAX_SECRET_FILE + 1];
} fread_op_t;

/* The new Authorization value from a fresh read of the secret file; on any
 * problem the previous value stays (logged once per distinct problem). */
static void apply_secret(k8s_t *k, fread_op_t *op) {
  char problem[96] = "";
  size_t n = op->len;
  while (n && (op->buf[n - 1] == '\n' || op->buf[n - 1] == '\r' || op->buf[n - 1] == ' ' || op->buf[n - 1] == '\t'))
    n--;
  op->buf[n] = '\0';
  if (op->err) snprintf(problem, sizeof problem, "%s", mg_err_str(op->err));
  else if (op->len > MAX_SECRET_FILE) snprintf(problem, sizeof problem, "larger than %d bytes", MAX_SECRET_FILE);
  else if (memchr(op->buf, '\0', n) || strpbrk(op->buf, "\r\n"))
    snprintf(problem, sizeof problem, "holds a line break or NUL");
  char *hdr = NULL;
  if (!problem[0]) {
    mg_conf_auth_t a = k->auth_spec;
    a.credentials_file = a.basic_password_file = NULL;
    if (a.basic_username) a.basic_password = op->buf;
    else a.credentials = op->buf;
    if (mg_auth_header(&a, &hdr) != 0 || !hdr) snprintf(problem, sizeof problem, "out of memory");
  }
  if (problem[0]) {
    if (strcmp(problem, k->last_file_err) != 0)
      MG_WARN(MOD, "secret_file_unreadable", "job=%s path=%s why=\"%s\" hint=\"the previous credentials stay\"",
              job_name(k), k->secret_file, problem);
    snprintf(k->last_file_err, sizeof k->last_file_err, "%s", problem);
  } else {
    k->last_file_err[0] = '\0';
    if (!k->auth || strcmp(hdr, k->auth) != 0)
      MG_INFO(MOD, "credentials_reloaded", "job=%s path=%s", job_name(k), k->secret_file);
    mg_mem_free_secret(k->auth);
    k->auth = hdr;
    hdr = NULL;
  }
  mg_mem_free_secret(hdr);
  mg_mem_wipe(op->buf, sizeof op->buf);
}

static void fread_done(fread_op_t *op) {
  k8s_t *k = op->k;
  k->reading = false;
  if (!k->closing) apply_secret(k, op);
  mg_mem_wipe(op->buf, sizeof op->buf);
  mg_free(op);
  k->pending--;
  maybe_free(k);
}

static void fread_on_close(uv_fs_t *req) {
  fread_op_t *op = req->data;
  uv_fs_req_cleanup(req);
  fread_done(op);
}

static void fread_close(fread_op_t *op) {
  if (uv_fs_close(op->k->loop, &op->req, op->fd, fread_on_close) != 0) fread_done(op);
}

static void fread_on_read(uv_fs_t *req) {
  fread_op_t *op = req->data;
  ssize_t r = req->result;
  uv_fs_req_cleanup(req);
  if (r < 0) op->err = mg_err_from_uv((int)r);
  if (r > 0) op->len += (size_t)r;
  if (r > 0 && op->len <= MAX_SECRET_FILE) {
    uv_buf_t b = uv_buf_init(op->buf + op->len, (unsigned)(sizeof op->buf - op->len));
    if (uv_fs_read(op->k->loop, &op->req, op->fd, &b, 1, (int64_t)op->len, fread_on_read) == 0) return;
    op->err = MG_EIO;
  }
  fread_close(op);
}

static void fread_on_open(uv_fs_t *req) {
  fread_op_t *op = req->data;
  ssize_t r = req->result;
  uv_fs_req_cleanup(req);
  if (r < 0) {
    op->err = mg_err_from_uv((int)r);
    fread_done(op);
    return;
  }
  op->fd = (uv_file)r;
  uv_buf_t b = uv_buf_init(op->buf, (unsigned)sizeof op->buf);
  if (uv_fs_read(op->k->loop, &op->req, op->fd, &b, 1, 0, fread_on_read) != 0) {
    op->err = MG_EIO;
    fread_close(op);
  }
}

static void on_file_timer(uv_timer_t *t) {
  k8s_t *k = t->data;
  if (k->closing || !k->secret_file || k->reading) return;
  fread_op_t *op = mg_calloc(1, sizeof *op);
  if (!op) return;
  op->k = k;
  op->req.data = op;
  k->pending++;
  k->reading = true;
  if (uv_fs_open(k->loop, &op->req, k->secret_file, O_RDONLY | O_CLOEXEC, 0, fread_on_open) != 0) {
    op->err = MG_EIO;
    fread_done(op);
  }
}

/* ---- start and stop ---- */

/* A relative path is taken from the configuration file's folder. */
static int resolve_path(const k8s_t *k, char **slot) {
  const char *cfg = k->env->conf ? k->env->conf->path : NULL;
  const char *slash = cfg ? strrchr(cfg, '/') : NULL;
  if (!*slot || (*slot)[0] == '/' || !slash) return 0;
  size_t dl = (size_t)(slash - cfg) + 1, pl = strlen(*slot);
  char *full = mg_malloc(dl + pl + 1);
  if (!full) return MG_ENOMEM;
  memcpy(full, cfg, dl);
  memcpy(full + dl, *slot, pl + 1);
  mg_free(*slot);
  *slot = full;
  return 0;
}

static char *path_join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = mg_malloc(n);
  if (p) snprintf(p, n, "%s/%s", dir, name);
  return p;
}

/* The pod's own namespace, read once at start (a blocking read is fine
 * there). */
static int own_namespace(k8s_t *k, const char *dir) {
  char *path = path_join(dir, "namespace"), buf[256];
  FILE *f = path ? fopen(path, "re") : NULL;
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  if (f) fclose(f);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) n--;
  buf[n] = '\0';
  if (!f || !n || strpbrk(buf, "/?#%& \t\r\n")) {
    MG_ERROR(MOD, "own_namespace_unknown", "job=%s path=%s hint=\"namespaces.own_namespace needs the service "
             "account's namespace file\"", job_name(k), path ? path : dir);
    mg_free(path);
    return MG_EIO;
  }
  mg_free(path);
  kconf_t *c = &k->conf;
  for (size_t i = 0; i < c->nnames; i++)
    if (strcmp(c->names[i], buf) == 0) return 0;
  char **names = mg_reallocarray(c->names, c->nnames + 1, sizeof *names);
  if (!names) return MG_ENOMEM;
  c->names = names;
  if (!(c->names[c->nnames] = mg_strdup(buf))) return MG_ENOMEM;
  c->nnames++;
  return 0;
}

static int in_cluster(k8s_t *k) {
  const char *host = getenv("KUBERNETES_SERVICE_HOST"), *port = getenv("KUBERNETES_SERVICE_PORT");
  const char *dir = getenv(SA_DIR_ENV);
  if (!dir || !dir[0]) dir = SA_DIR;
  if (!host || !host[0] || !port || !port[0]) {
    MG_ERROR(MOD, "not_in_cluster", "job=%s hint=\"KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set: run "
             "in a pod or set api_server\"", job_name(k));
    return MG_ECONFIG;
  }
  size_t n = strlen(host) + strlen(port) + 16;
  if (!(k->base = mg_malloc(n))) return MG_ENOMEM;
  snprintf(k->base, n, strchr(host, ':') ? "https://[%s]:%s" : "https://%s:%s", host, port);
  k->ca_file = path_join(dir, "ca.crt");
  k->conf.auth.credentials_file = path_join(dir, "token");
  if (!k->ca_file || !k->conf.auth.credentials_file || mg_conf_set_str(&k->conf.auth.auth_type, "Bearer"))
    return MG_ENOMEM;
  k->tls.ca_file = k->ca_file;
  return k->conf.own_namespace ? own_namespace(k, dir) : 0;
}

static int setup_connection(k8s_t *k) {
  kconf_t *c = &k->conf;
  int rc;
  if (c->api_server) {
    if (!(k->base = mg_strdup(c->api_server))) return MG_ENOMEM;
    char **paths[] = {&c->tls.ca_file, &c->tls.cert_file, &c->tls.key_file, &c->auth.credentials_file,
                      &c->auth.basic_password_file};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
      if ((rc = resolve_path(k, paths[i])) != 0) return rc;
    k->tls = (mg_http_tls_opts_t){c->tls.ca_file, c->tls.cert_file, c->tls.key_file, c->tls.server_name,
                                  c->tls.insecure_skip_verify};
  } else if ((rc = in_cluster(k)) != 0) {
    return rc;
  }
  k->auth_spec = c->auth;
  const char *file = c->auth.basic_username ? c->auth.basic_password_file : c->auth.credentials_file;
  if (file && !(k->secret_file = mg_strdup(file))) return MG_ENOMEM;
  /* At start a blocking read is fine; later reads go through uv_fs. */
  if ((rc = mg_auth_header(&c->auth, &k->auth)) != 0) return rc;
  if (k->auth && !mg_http_is_value(k->auth)) {
    MG_ERROR(MOD, "bad_credentials", "job=%s path=%s why=\"holds a line break\"", job_name(k), file ? file : "-");
    return MG_ECONFIG;
  }
  return 0;
}

static int add_informer(k8s_t *k, res_t res, const char *ns) {
  informer_t *in = &k->inf[k->ninf++];
  memset(in, 0, sizeof *in);
  in->k = k;
  in->res = res;
  in->ns = ns;
  mg_buf_init(&in->split.key, MAX_KEY);
  mg_buf_init(&in->split.val, MG_JSON_MAX_INPUT);
  mg_buf_init(&in->ev_obj, MG_JSON_MAX_INPUT);
  uv_timer_init(k->loop, &in->timer);
  in->timer.data = in;
  k->handles++;
  return 0;
}

/* The role's own resource, plus services and pods for endpoints and
 * slices (their labels join the targets), plus nodes for attach_metadata;
 * namespaced ones once per namespace. */
static int setup_informers(k8s_t *k) {
  const kconf_t *c = &k->conf;
  bool need[RES_COUNT] = {false};
  need[c->role] = true;
  if (c->role == RES_ENDPOINTS || c->role == RES_SLICE) need[RES_POD] = need[RES_SERVICE] = true;
  if (c->attach_node) need[RES_NODE] = true;
  size_t nns = c->nnames ? c->nnames : 1, max = 0;
  for (int r = 0; r < RES_COUNT; r++)
    if (need[r]) max += resources[r].namespaced ? nns : 1;
  if (!(k->inf = mg_calloc(max, sizeof *k->inf))) return MG_ENOMEM;
  for (int r = 0; r < RES_COUNT; r++) {
    if (!need[r]) continue;
    if (!resources[r].namespaced || !c->nnames) add_informer(k, (res_t)r, NULL);
    else
      for (size_t i = 0; i < c->nnames; i++) add_informer(k, (res_t)r, c->names[i]);
  }
  return 0;
}

static void k8s_stop(void *state) {
  k8s_t *k = state;
  if (!k || k->closing) return;
  k->closing = true;
  for (size_t i = 0; i < k->ninf; i++) {
    informer_t *in = &k->inf[i];
    if (in->req) mg_http_client_cancel(in->req); /* its callback still runs, deferred */
    uv_close((uv_handle_t *)&in->timer, on_inf_timer_closed);
  }
  uv_close((uv_handle_t *)&k->flush_timer, on_handle_closed);
  uv_close((uv_handle_t *)&k->file_timer, on_handle_closed);
  maybe_free(k);
}

static int k8s_start(const mg_sd_env_t *env, const mg_conf_sd_t *sd, mg_sd_update_fn update, void *ud,
                     void **state) {
  *state = NULL;
  k8s_t *k = mg_calloc(1, sizeof *k);
  if (!k) return MG_ENOMEM;
  k->env = env;
  k->loop = env->loop;
  k->http = env->http;
  k->job = mg_strdup(env->job && env->job->name ? env->job->name : "");
  k->update = update;
  k->ud = ud;
  mg_arena_init(&k->scratch, 64 * 1024, 0);
  uv_timer_init(env->loop, &k->flush_timer);
  uv_timer_init(env->loop, &k->file_timer);
  k->flush_timer.data = k->file_timer.data = k;
  k->handles = 2;
  char why[400];
  int rc = kconf_parse(sd->opts, &k->conf, why, sizeof why);
  if (rc) MG_ERROR(MOD, "bad_config", "job=%s why=\"%s\"", job_name(k), why);
  if (rc == 0) rc = setup_connection(k);
  if (rc == 0) rc = setup_informers(k);
  for (size_t i = 0; rc == 0 && i < k->ninf; i++) {
    informer_list(&k->inf[i]);
    if (k->inf[i].state != I_LIST) rc = MG_EINVAL; /* the URL was refused: a configuration error */
  }
  if (rc) {
    k8s_stop(k);
    return rc;
  }
  if (k->secret_file) uv_timer_start(&k->file_timer, on_file_timer, FILE_REREAD_MS, FILE_REREAD_MS);
  MG_INFO(MOD, "started", "job=%s role=%s api_server=%s namespaces=%zu informers=%zu", job_name(k),
          resources[k->conf.role].role, k->base, k->conf.nnames, k->ninf);
  k->started = true;
  *state = k;
  return 0;
}

const mg_sd_ops_t mg_sd_kubernetes_ops = {"kubernetes", k8s_check, k8s_start, k8s_stop};
