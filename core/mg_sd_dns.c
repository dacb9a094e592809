/* mg_sd_dns: dns_sd_configs on c-ares. The channel's sockets are watched
 * by uv_poll handles (c-ares tells which through its socket-state
 * callback) and its retransmissions by one uv_timer; a second timer
 * starts a lookup round for every name. A round ends when every name has
 * answered or failed (c-ares bounds each lookup: 2 s then 4 s per server),
 * then the list is reported; a round in which every name failed is a
 * failed refresh (mg_sd counts those), single lookups are counted here.
 * Never blocks the loop after start. */
#include "mg_sd_dns.h"

#include <arpa/inet.h>
#include <ares.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_metrics.h"

#define MOD "sd_dns"

/* DNS types and class (RFC 1035, 2782, 3596). */
enum { T_A = 1, T_NS = 2, T_MX = 15, T_AAAA = 28, T_SRV = 33, C_IN = 1 };

/* Per-try timeout and tries per server: Prometheus gives each server one
 * 2 s exchange; c-ares doubles the timeout on the second try. */
#define DNS_TIMEOUT_MS 2000
#define DNS_TRIES 2
#define DNS_EDNS_SIZE 1232 /* the DNS flag day 2020 UDP size */
#define MAX_NAMESERVERS 16

/* ---- options ------------------------------------------------------------- */

typedef struct dns_opts {
  char **names;
  size_t nnames;
  int qtype;
  unsigned port;
  uint64_t refresh_ms;
  char *servers; /* c-ares csv "ip:port,[v6]:port", or NULL for resolv.conf */
} dns_opts_t;

static int say(char *why, size_t whylen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int say(char *why, size_t whylen, const char *fmt, ...) {
  if (why && whylen) {
    int n = snprintf(why, whylen, "dns_sd_configs: ");
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < whylen) vsnprintf(why + n, whylen - (size_t)n, fmt, ap);
    va_end(ap);
    for (char *m = why; *m; m++)
      if ((unsigned char)*m < 0x20 || *m == 0x7f) *m = '?';
  }
  return MG_ECONFIG;
}

/* The loaders leave YAML nulls out; an empty value means "not set" too,
 * as Prometheus reads an empty string. */
static bool is_null(const mg_conf_val_t *v) {
  return !v || (v->type == MG_CONF_VAL_SCALAR && (!v->s || !*v->s));
}

static const char *scalar(const mg_conf_val_t *v) { return v && v->type == MG_CONF_VAL_SCALAR && v->s ? v->s : NULL; }

static void opts_cleanup(dns_opts_t *o) {
  for (size_t i = 0; i < o->nnames; i++) mg_free(o->names[i]);
  mg_free(o->names);
  mg_free(o->servers);
  memset(o, 0, sizeof *o);
}

/* Printable ASCII without spaces, at most 253 bytes (RFC 1035 limit of a
 * name in text form). c-ares refuses what is not a DNS name. */
static bool valid_name(const char *s) {
  size_t n = strlen(s);
  if (!n || n > 253) return false;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) return false;
  return true;
}

static int read_names(const mg_conf_val_t *v, dns_opts_t *o, char *why, size_t whylen) {
  if (v->type != MG_CONF_VAL_LIST) return say(why, whylen, "names must be a list");
  if (v->n > MG_SD_DNS_MAX_NAMES) return say(why, whylen, "more than %d names", MG_SD_DNS_MAX_NAMES);
  if (v->n && !(o->names = mg_calloc(v->n, sizeof *o->names))) return MG_ENOMEM;
  for (size_t i = 0; i < v->n; i++) {
    const char *s = scalar(v->v[i]);
    if (!s || !valid_name(s))
      return say(why, whylen, "names[%zu] must be a DNS name (printable, no spaces, at most 253 bytes)", i);
    if (!(o->names[o->nnames++] = mg_strdup(s))) return MG_ENOMEM;
  }
  return 0;
}

static int read_type(const char *s, dns_opts_t *o, char *why, size_t whylen) {
  static const struct {
    const char *name;
    int type;
  } types[] = {{"SRV", T_SRV}, {"A", T_A}, {"AAAA", T_AAAA}, {"MX", T_MX}, {"NS", T_NS}};
  for (size_t i = 0; s && i < sizeof types / sizeof types[0]; i++)
    if (!strcasecmp(s, types[i].name)) return o->qtype = types[i].type, 0;
  return say(why, whylen, "type must be SRV, A, AAAA, MX or NS");
}

static bool parse_port(const char *s, size_t n, unsigned *out) {
  if (!n || n > 5) return false;
  unsigned v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  if (v < 1 || v > 65535) return false;
  *out = v;
  return true;
}

/* "ip", "ip:port", "[v6]" or "[v6]:port" -> "ip:port" / "[v6]:port". */
static int nameserver(const char *s, char *out, size_t outsz) {
  char host[INET6_ADDRSTRLEN];
  const char *port = NULL;
  size_t hn;
  bool v6;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (!close) return -1;
    hn = (size_t)(close - s - 1);
    s++;
    if (close[1] == ':') port = close + 2;
    else if (close[1]) return -1;
    v6 = true;
  } else {
    const char *colon = strchr(s, ':');
    v6 = colon && strchr(colon + 1, ':'); /* a bare IPv6 address, no port */
    hn = v6 || !colon ? strlen(s) : (size_t)(colon - s);
    if (!v6 && colon) port = colon + 1;
  }
  if (hn == 0 || hn >= sizeof host) return -1;
  memcpy(host, s, hn);
  host[hn] = '\0';
  unsigned char addr[16];
  unsigned p = 53;
  if (inet_pton(v6 ? AF_INET6 : AF_INET, host, addr) != 1) return -1;
  if (port && !parse_port(port, strlen(port), &p)) return -1;
  int n = snprintf(out, outsz, v6 ? "[%s]:%u" : "%s:%u", host, p);
  return n > 0 && (size_t)n < outsz ? 0 : -1;
}

static int read_nameservers(const mg_conf_val_t *v, dns_opts_t *o, char *why, size_t whylen) {
  if (v->type != MG_CONF_VAL_LIST || !v->n) return say(why, whylen, "nameservers must be a non-empty list");
  if (v->n > MAX_NAMESERVERS) return say(why, whylen, "more than %d nameservers", MAX_NAMESERVERS);
  char csv[MAX_NAMESERVERS * (INET6_ADDRSTRLEN + 10)] = "";
  size_t len = 0;
  for (size_t i = 0; i < v->n; i++) {
    char one[INET6_ADDRSTRLEN + 10];
    const char *s = scalar(v->v[i]);
    if (!s || nameserver(s, one, sizeof one) != 0)
      return say(why, whylen, "nameservers[%zu] must be an IP address with an optional port: 10.0.0.2:53, [::1]:53",
                 i);
    len += (size_t)snprintf(csv + len, sizeof csv - len, "%s%s", i ? "," : "", one);
  }
  return (o->servers = mg_strdup(csv)) ? 0 : MG_ENOMEM;
}

static int read_opt(const char *k, const mg_conf_val_t *v, dns_opts_t *o, char *why, size_t whylen) {
  if (!strcmp(k, "names")) return read_names(v, o, why, whylen);
  if (!strcmp(k, "type")) return read_type(scalar(v), o, why, whylen);
  if (!strcmp(k, "port")) {
    const char *s = scalar(v);
    if (!s || !parse_port(s, strlen(s), &o->port)) return say(why, whylen, "port must be a number from 1 to 65535");
    return 0;
  }
  if (!strcmp(k, "refresh_interval")) {
    const char *s = scalar(v);
    if (!s || mg_conf_parse_duration(s, &o->refresh_ms) != 0 || !o->refresh_ms)
      return say(why, whylen, "refresh_interval must be a positive duration like 30s");
    return 0;
  }
  if (!strcmp(k, "nameservers")) return read_nameservers(v, o, why, whylen);
  return say(why, whylen, "%.64s is not supported by this moongate version", k);
}

static int read_opts(const mg_conf_sd_t *sd, dns_opts_t *o, char *why, size_t whylen) {
  memset(o, 0, sizeof *o);
  o->qtype = T_SRV;
  o->refresh_ms = MG_SD_DNS_DEFAULT_REFRESH_MS;
  const mg_conf_val_t *m = sd->opts;
  int rc = m && m->type == MG_CONF_VAL_MAP ? 0 : say(why, whylen, "each entry must be a mapping");
  for (size_t i = 0; !rc && i < m->n; i++)
    if (!is_null(m->v[i])) rc = read_opt(m->keys[i], m->v[i], o, why, whylen);
  if (!rc && !o->nnames) rc = say(why, whylen, "names must list at least one name");
  if (!rc && o->qtype != T_SRV && !o->port)
    rc = say(why, whylen, "port is required for every record type except SRV");
  if (rc == MG_ENOMEM && why && whylen) snprintf(why, whylen, "dns_sd_configs: out of memory");
  if (rc) opts_cleanup(o);
  return rc;
}

static int dns_check(const mg_conf_sd_t *sd, char *why, size_t whylen) {
  dns_opts_t o;
  int rc = read_opts(sd, &o, why, whylen);
  opts_cleanup(&o);
  return rc ? MG_ECONFIG : 0;
}

/* ---- the provider -------------------------------------------------------- */

struct dns_sd;

typedef struct dns_name {
  struct dns_sd *s;
  const char *name;
  mg_sd_targets_t cur; /* last good answer */
  bool ok;             /* in this round */
  char last_err[160];  /* logged once until it changes; "" while healthy */
} dns_name_t;

typedef struct dns_poll {
  uv_poll_t h; /* data: this struct */
  ares_socket_t fd;
  struct dns_sd *s;
  struct dns_poll *next;
} dns_poll_t;

typedef struct dns_sd {
  dns_opts_t o;
  dns_name_t *names;
  ares_channel ch;
  bool ares_lib; /* ares_library_init succeeded */
  dns_poll_t *polls;
  uv_loop_t *loop;
  uv_timer_t refresh, retrans; /* data: this struct */
  int pending;                 /* lookups of the running round, plus one while it starts */
  mg_sd_update_fn update;
  void *ud;
  mg_metric_t *lookups, *lookup_failures;
  bool closing;
  int refs; /* open handles */
} dns_sd_t;

static void sd_free(dns_sd_t *s) {
  if (s->ch) ares_destroy(s->ch);
  if (s->ares_lib) ares_library_cleanup();
  if (s->names)
    for (size_t i = 0; i < s->o.nnames; i++) mg_sd_targets_cleanup(&s->names[i].cur);
  mg_free(s->names);
  opts_cleanup(&s->o);
  mg_free(s);
}

static void unref(dns_sd_t *s) {
  if (--s->refs == 0 && s->closing) sd_free(s);
}

static void on_timer_closed(uv_handle_t *h) { unref(h->data); }

static void on_poll_closed(uv_handle_t *h) {
  dns_poll_t *p = h->data;
  dns_sd_t *s = p->s;
  mg_free(p);
  unref(s);
}

/* Stop watching a socket now (uv_close stops the watcher at once, before
 * c-ares closes the descriptor) and forget it. */
static void poll_close(dns_sd_t *s, dns_poll_t *p) {
  for (dns_poll_t **pp = &s->polls; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  uv_close((uv_handle_t *)&p->h, on_poll_closed);
}

static void on_retrans(uv_timer_t *t);

/* c-ares's next deadline (a retransmission or a timeout) on the timer. */
static void arm_retrans(dns_sd_t *s) {
  struct timeval tv;
  if (s->closing) return;
  if (!ares_timeout(s->ch, NULL, &tv)) {
    uv_timer_stop(&s->retrans);
    return;
  }
  uint64_t ms = (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
  uv_timer_start(&s->retrans, on_retrans, ms, 0);
}

static void on_retrans(uv_timer_t *t) {
  dns_sd_t *s = t->data;
  ares_process_fd(s->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  arm_retrans(s);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  dns_poll_t *p = h->data;
  dns_sd_t *s = p->s;
  if (s->closing) return;
  /* On a poll error let c-ares read and write: it sees the socket error. */
  ares_socket_t rd = status < 0 || (events & UV_READABLE) ? p->fd : ARES_SOCKET_BAD;
  ares_socket_t wr = status < 0 || (events & UV_WRITABLE) ? p->fd : ARES_SOCKET_BAD;
  ares_process_fd(s->ch, rd, wr);
  arm_retrans(s);
}

/* c-ares opens, watches and closes sockets itself and says what it waits
 * for; (0, 0) comes right before it closes one. */
static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable) {
  dns_sd_t *s = data;
  dns_poll_t *p = s->polls;
  while (p && p->fd != fd) p = p->next;
  if (!readable && !writable) {
    if (p) poll_close(s, p);
    return;
  }
  if (s->closing) return;
  if (!p) {
    if (!(p = mg_calloc(1, sizeof *p))) {
      MG_ERROR(MOD, "poll_failed", "err=ENOMEM hint=\"the lookup times out and is retried next refresh\"");
      return;
    }
    int rc = uv_poll_init_socket(s->loop, &p->h, fd);
    if (rc) {
      MG_ERROR(MOD, "poll_failed", "err=%s hint=\"the lookup times out and is retried next refresh\"",
               uv_err_name(rc));
      mg_free(p);
      return;
    }
    p->h.data = p;
    p->fd = fd;
    p->s = s;
    p->next = s->polls;
    s->polls = p;
    s->refs++;
  }
  uv_poll_start(&p->h, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), on_poll);
}

/* ---- answers --------------------------------------------------------------- */

/* host:port as Go's net.JoinHostPort writes it (brackets around IPv6). */
static mg_conf_target_t *add_target(mg_sd_targets_t *ts, const char *host, unsigned port, const char *name) {
  char addr[300];
  snprintf(addr, sizeof addr, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
  mg_conf_target_t *t = mg_sd_targets_add(ts, addr);
  if (!t || mg_kvs_add(&t->labels, "__meta_dns_name", name) < 0) return NULL;
  return t;
}

/* A record target (SRV, MX, NS): the address without the final dot, the
 * label with it, as the DNS (and Prometheus) writes it. c-ares gives
 * names without the dot. The root name (".": "no such service", RFC
 * 2782) is no target. */
static int add_named(mg_sd_targets_t *ts, const char *host, unsigned port, const char *name, const char *label,
                     const char *port_label) {
  size_t n = strlen(host);
  while (n && host[n - 1] == '.') n--;
  if (!n) return 0;
  char bare[256], dotted[258];
  if (n >= sizeof bare) return 0; /* c-ares never expands a name past 255 bytes */
  memcpy(bare, host, n);
  bare[n] = '\0';
  snprintf(dotted, sizeof dotted, "%s.", bare);
  mg_conf_target_t *t = add_target(ts, bare, port, name);
  if (!t || mg_kvs_add(&t->labels, label, dotted) < 0) return MG_ENOMEM;
  if (port_label) {
    char p[8];
    snprintf(p, sizeof p, "%u", port);
    if (mg_kvs_add(&t->labels, port_label, p) < 0) return MG_ENOMEM;
  }
  return 0;
}

static int parse_srv(const unsigned char *abuf, int alen, const char *name, mg_sd_targets_t *ts) {
  struct ares_srv_reply *srv = NULL;
  int rc = ares_parse_srv_reply(abuf, alen, &srv);
  for (struct ares_srv_reply *r = srv; rc == ARES_SUCCESS && r; r = r->next)
    if (add_named(ts, r->host, r->port, name, "__meta_dns_srv_record_target", "__meta_dns_srv_record_port") != 0)
      rc = ARES_ENOMEM;
  ares_free_data(srv);
  return rc;
}

static int parse_mx(const unsigned char *abuf, int alen, const char *name, unsigned port, mg_sd_targets_t *ts) {
  struct ares_mx_reply *mx = NULL;
  int rc = ares_parse_mx_reply(abuf, alen, &mx);
  for (struct ares_mx_reply *r = mx; rc == ARES_SUCCESS && r; r = r->next)
    if (add_named(ts, r->host, port, name, "__meta_dns_mx_record_target", NULL) != 0) rc = ARES_ENOMEM;
  ares_free_data(mx);
  return rc;
}

static int parse_ns(const unsigned char *abuf, int alen, const char *name, unsigned port, mg_sd_targets_t *ts) {
  struct hostent *h = NULL;
  int rc = ares_parse_ns_reply(abuf, alen, &h);
  for (size_t i = 0; rc == ARES_SUCCESS && h->h_aliases && h->h_aliases[i]; i++)
    if (add_named(ts, h->h_aliases[i], port, name, "__meta_dns_ns_record_target", NULL) != 0) rc = ARES_ENOMEM;
  if (h) ares_free_hostent(h);
  return rc;
}

static int parse_addr(const unsigned char *abuf, int alen, int qtype, const char *name, unsigned port,
                      mg_sd_targets_t *ts) {
  struct hostent *h = NULL;
  int af = qtype == T_A ? AF_INET : AF_INET6;
  int rc = af == AF_INET ? ares_parse_a_reply(abuf, alen, &h, NULL, NULL)
                         : ares_parse_aaaa_reply(abuf, alen, &h, NULL, NULL);
  for (size_t i = 0; rc == ARES_SUCCESS && h->h_addr_list[i]; i++) {
    char ip[INET6_ADDRSTRLEN];
    if (!inet_ntop(af, h->h_addr_list[i], ip, sizeof ip) || !add_target(ts, ip, port, name)) rc = ARES_ENOMEM;
  }
  if (h) ares_free_hostent(h);
  return rc;
}

/* ARES_SUCCESS with the records in *ts, or a c-ares status. A answers
 * that hold only a CNAME say ENODATA, which is an empty list too. */
static int parse_answer(const dns_sd_t *s, const dns_name_t *n, const unsigned char *abuf, int alen,
                        mg_sd_targets_t *ts) {
  int rc;
  switch (s->o.qtype) {
  case T_SRV: rc = parse_srv(abuf, alen, n->name, ts); break;
  case T_MX: rc = parse_mx(abuf, alen, n->name, s->o.port, ts); break;
  case T_NS: rc = parse_ns(abuf, alen, n->name, s->o.port, ts); break;
  default: rc = parse_addr(abuf, alen, s->o.qtype, n->name, s->o.port, ts); break;
  }
  return rc == ARES_ENODATA ? ARES_SUCCESS : rc;
}

/* ---- rounds ---------------------------------------------------------------- */

static int copy_target(mg_sd_targets_t *out, const mg_conf_target_t *t) {
  mg_conf_target_t *c = mg_sd_targets_add(out, t->address);
  if (!c) return MG_ENOMEM;
  for (size_t i = 0; i < t->labels.n; i++)
    if (mg_kvs_add(&c->labels, t->labels.v[i].name, t->labels.v[i].value) < 0) return MG_ENOMEM;
  return 0;
}

/* Report every name's current list: the new answer where the lookup
 * worked, the previous one where it failed. */
static void finish_round(dns_sd_t *s) {
  bool any = false;
  mg_sd_targets_t all = {0};
  int rc = 0;
  for (size_t i = 0; i < s->o.nnames; i++) {
    any |= s->names[i].ok;
    for (size_t k = 0; !rc && k < s->names[i].cur.n; k++) rc = copy_target(&all, &s->names[i].cur.v[k]);
  }
  if (rc) MG_ERROR(MOD, "refresh_failed", "err=ENOMEM hint=\"previous targets kept\"");
  if (!any || rc) s->update(s->ud, false, NULL);
  else s->update(s->ud, true, &all);
  mg_sd_targets_cleanup(&all);
}

static void name_failed(dns_sd_t *s, dns_name_t *n, const char *err) {
  char q[300], e[200];
  n->ok = false;
  mg_metric_inc(s->lookup_failures);
  if (strcmp(err, n->last_err) == 0) return;
  MG_WARN(MOD, "lookup_failed", "name=%s err=%s hint=\"previous targets of this name kept; retried every refresh\"",
          mg_log_q(q, sizeof q, n->name, strlen(n->name)), mg_log_q(e, sizeof e, err, strlen(err)));
  snprintf(n->last_err, sizeof n->last_err, "%s", err);
}

static void name_answered(dns_sd_t *s, dns_name_t *n, mg_sd_targets_t *ts) {
  mg_sd_targets_cleanup(&n->cur);
  n->cur = *ts;
  memset(ts, 0, sizeof *ts);
  n->ok = true;
  if (n->last_err[0]) {
    char q[300];
    MG_INFO(MOD, "lookup_recovered", "name=%s targets=%zu", mg_log_q(q, sizeof q, n->name, strlen(n->name)), n->cur.n);
    n->last_err[0] = '\0';
  }
}

static void on_lookup(void *arg, int status, int timeouts, unsigned char *abuf, int alen) {
  dns_name_t *n = arg;
  dns_sd_t *s = n->s;
  (void)timeouts;
  if (s->closing) return; /* ARES_EDESTRUCTION from ares_destroy, or a late answer */
  mg_sd_targets_t ts = {0};
  mg_metric_inc(s->lookups);
  if (status == ARES_SUCCESS) status = parse_answer(s, n, abuf, alen, &ts);
  /* "No such name" and "no such records" are answers: no targets. */
  if (status == ARES_SUCCESS || status == ARES_ENOTFOUND || status == ARES_ENODATA) name_answered(s, n, &ts);
  else name_failed(s, n, ares_strerror(status));
  mg_sd_targets_cleanup(&ts);
  if (--s->pending == 0) finish_round(s);
}

static void on_refresh(uv_timer_t *t) {
  dns_sd_t *s = t->data;
  if (s->pending) return; /* the last round is still waiting for c-ares's timeouts */
  /* The extra count keeps a lookup that ends inside ares_search (c-ares
   * may call back at once) from finishing the round early. */
  s->pending = (int)s->o.nnames + 1;
  for (size_t i = 0; i < s->o.nnames && !s->closing; i++) {
    s->names[i].ok = false;
    ares_search(s->ch, s->names[i].name, C_IN, s->o.qtype, on_lookup, &s->names[i]);
  }
  if (s->closing) return;
  if (--s->pending == 0) finish_round(s);
  arm_retrans(s);
}

/* ---- start and stop -------------------------------------------------------- */

static int channel_new(dns_sd_t *s) {
  int rc = ares_library_init(ARES_LIB_INIT_ALL);
  if (rc != ARES_SUCCESS) return rc;
  s->ares_lib = true;
  struct ares_options opt = {
      .flags = ARES_FLAG_EDNS,
      .timeout = DNS_TIMEOUT_MS,
      .tries = DNS_TRIES,
      .sock_state_cb = on_sock_state,
      .sock_state_cb_data = s,
      .ednspsz = DNS_EDNS_SIZE,
  };
  int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB | ARES_OPT_EDNSPSZ;
  if ((rc = ares_init_options(&s->ch, &opt, mask)) != ARES_SUCCESS) {
    s->ch = NULL;
    return rc;
  }
  if (s->o.servers && (rc = ares_set_servers_ports_csv(s->ch, s->o.servers)) != ARES_SUCCESS) return rc;
  return ARES_SUCCESS;
}

static int dns_start(const mg_sd_env_t *env, const mg_conf_sd_t *sd, mg_sd_update_fn update, void *ud, void **state) {
  *state = NULL;
  dns_sd_t *s = mg_calloc(1, sizeof *s);
  if (!s) return MG_ENOMEM;
  char why[300];
  int rc = read_opts(sd, &s->o, why, sizeof why);
  if (rc) {
    MG_ERROR(MOD, "bad_options", "err=\"%s\"", why);
    mg_free(s);
    return rc == MG_ENOMEM ? rc : MG_ECONFIG;
  }
  if (!(s->names = mg_calloc(s->o.nnames, sizeof *s->names))) {
    sd_free(s);
    return MG_ENOMEM;
  }
  for (size_t i = 0; i < s->o.nnames; i++) s->names[i] = (dns_name_t){.s = s, .name = s->o.names[i]};
  s->loop = env->loop;
  s->update = update;
  s->ud = ud;
  int ares_rc = channel_new(s);
  if (ares_rc != ARES_SUCCESS) {
    MG_ERROR(MOD, "resolver_failed", "err=\"%s\" hint=\"check /etc/resolv.conf\"", ares_strerror(ares_rc));
    sd_free(s);
    return ares_rc == ARES_ENOMEM ? MG_ENOMEM : MG_EDNS;
  }
  s->lookups = mg_metrics_counter("moongate_sd_dns_lookups_total", "DNS discovery lookups (one per name and refresh).",
                                  NULL);
  s->lookup_failures = mg_metrics_counter("moongate_sd_dns_lookup_failures_total",
                                          "DNS discovery lookups that failed (the name keeps its previous targets).",
                                          NULL);
  if (!s->lookups) s->lookups = mg_metrics_dummy();
  if (!s->lookup_failures) s->lookup_failures = mg_metrics_dummy();
  uv_timer_init(env->loop, &s->refresh);
  uv_timer_init(env->loop, &s->retrans);
  s->refresh.data = s->retrans.data = s;
  s->refs = 2;
  /* Due at once, but run from the loop: never inside start. */
  uv_timer_start(&s->refresh, on_refresh, 0, s->o.refresh_ms);
  *state = s;
  return 0;
}

static void dns_stop(void *state) {
  dns_sd_t *s = state;
  if (!s || s->closing) return;
  s->closing = true;
  /* Polls first, so no watcher outlives its descriptor; the channel is
   * destroyed (closing its sockets, cancelling lookups: their callbacks
   * see closing) once the last handle has closed. */
  while (s->polls) poll_close(s, s->polls);
  uv_close((uv_handle_t *)&s->refresh, on_timer_closed);
  uv_close((uv_handle_t *)&s->retrans, on_timer_closed);
}

const mg_sd_ops_t mg_sd_dns_ops = {
    .kind = "dns",
    .check = dns_check,
    .start = dns_start,
    .stop = dns_stop,
};
