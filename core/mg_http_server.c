/* mg_http_server: listener, connections and the route table. Owns each
 * connection (TCP + timer handles, parser, body buffer, optional TLS
 * session) and frees it in its last close callback. Requests are parsed in
 * place in a per-connection buffer; handlers run synchronously. */
#include "mg_http_server.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mg_err.h"
#include "mg_http.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_tls.h"

#define READ_BUF_SIZE (16 * 1024)
#define DEFAULT_MAX_HEADER_BYTES (16 * 1024)
#define DEFAULT_MAX_BODY ((size_t)1 << 20)
#define DEFAULT_IDLE_MS 60000
#define DEFAULT_REQUEST_MS 30000
#define DEFAULT_MAX_CONNECTIONS 256
#define MAX_ROUTES 64
#define MAX_RESPONSE_HEADERS (16 * 1024)
/* Pipelined requests are parsed only while less than this is waiting to
 * be sent, so a client that never reads cannot make us buffer responses. */
#define WRITE_HIGH_WATER ((size_t)1 << 20)

typedef struct route {
  char *method, *path;
  mg_http_handler_fn fn;
  void *ud;
} route_t;

typedef struct sconn sconn_t;

struct mg_http_server {
  uv_loop_t *loop;
  uv_tcp_t listener;
  mg_http_server_opts_t opts;
  route_t routes[MAX_ROUTES];
  size_t nroutes;
  sconn_t *conns;
  size_t nconns;
  mg_tls_ctx_t *tls;
  int port;
  bool closing, listener_closed;
  unsigned long long reject_log_ms;
};

struct sconn {
  sconn_t *prev, *next;
  mg_http_server_t *srv;
  uv_tcp_t tcp;
  uv_timer_t timer; /* request deadline while a request arrives, idle deadline between */
  uv_shutdown_t sreq;
  int open_handles;
  bool closing, shutting_down, reading, paused, keep_alive, sent_continue;
  mg_tls_t *tls;
  bool handshaken;
  mg_http_parser_t *parser;
  mg_buf_t body;
  size_t off, len; /* plaintext in rbuf not parsed yet */
  char rbuf[READ_BUF_SIZE];
};

typedef struct out {
  uv_write_t req;
  char *body; /* owned, sent after data */
  size_t body_len, len;
  char data[];
} out_t;

static void server_maybe_free(mg_http_server_t *s) {
  if (!s->closing || !s->listener_closed || s->conns) return;
  for (size_t i = 0; i < s->nroutes; i++) {
    mg_free(s->routes[i].method);
    mg_free(s->routes[i].path);
  }
  mg_tls_ctx_free(s->tls);
  mg_free(s);
}

static void on_conn_close(uv_handle_t *h) {
  sconn_t *conn = h->data;
  if (--conn->open_handles > 0) return;
  mg_http_server_t *s = conn->srv;
  if (conn->prev) conn->prev->next = conn->next;
  else s->conns = conn->next;
  if (conn->next) conn->next->prev = conn->prev;
  s->nconns--;
  mg_http_parser_free(conn->parser);
  mg_tls_free(conn->tls);
  mg_buf_cleanup(&conn->body);
  mg_free(conn);
  server_maybe_free(s);
}

static void conn_close(sconn_t *conn) {
  if (conn->closing) return;
  conn->closing = true;
  uv_close((uv_handle_t *)&conn->tcp, on_conn_close);
  uv_close((uv_handle_t *)&conn->timer, on_conn_close);
}

static void on_timer(uv_timer_t *t) {
  sconn_t *conn = t->data;
  MG_DEBUG("http_server", "conn_timeout", "started=%d", (int)mg_http_parser_started(conn->parser));
  conn_close(conn);
}

static void arm(sconn_t *conn, uint64_t ms) { uv_timer_start(&conn->timer, on_timer, ms, 0); }

static void conn_pump(sconn_t *conn);

static void on_write(uv_write_t *w, int status) {
  out_t *o = (out_t *)w;
  sconn_t *conn = w->data;
  mg_free(o->body);
  mg_free(o);
  if (conn->closing) return;
  if (status < 0) {
    conn_close(conn);
    return;
  }
  if (conn->paused && conn->tcp.write_queue_size < WRITE_HIGH_WATER) {
    conn->paused = false;
    conn_pump(conn);
  }
}

/* One write: head bytes plus an owned body (plain), or the ciphertext of
 * both (TLS). Takes body in every case. */
static int conn_write(sconn_t *conn, const char *head, size_t hlen, char *body, size_t blen) {
  int rc = 0;
  if (conn->tls) {
    rc = mg_tls_write(conn->tls, head, hlen);
    if (rc == 0) rc = mg_tls_write(conn->tls, body, blen);
    mg_free(body);
    body = NULL;
    blen = 0;
    hlen = mg_tls_pending(conn->tls);
    if (rc || hlen == 0) return rc;
  }
  out_t *o = mg_malloc(sizeof *o + hlen);
  if (!o) {
    mg_free(body);
    return MG_ENOMEM;
  }
  o->body = body;
  o->body_len = blen;
  o->len = conn->tls ? mg_tls_take(conn->tls, o->data, hlen) : hlen;
  if (!conn->tls) memcpy(o->data, head, hlen);
  uv_buf_t bufs[2] = {{.base = o->data, .len = o->len}, {.base = body, .len = blen}};
  o->req.data = conn;
  rc = uv_write(&o->req, (uv_stream_t *)&conn->tcp, bufs, blen ? 2 : 1, on_write);
  if (rc < 0) {
    mg_free(o->body);
    mg_free(o);
    return mg_err_from_uv(rc);
  }
  return 0;
}

/* Pending TLS output (handshake records, alerts, close_notify). */
static int conn_flush(sconn_t *conn) { return conn->tls ? conn_write(conn, NULL, 0, NULL, 0) : 0; }

static void on_shutdown(uv_shutdown_t *req, int status) { conn_close(req->data); }

/* Close after the queued responses are sent; the timer still bounds it. */
static void conn_shutdown(sconn_t *conn) {
  if (conn->closing || conn->shutting_down) return;
  conn->shutting_down = true;
  conn->reading = false;
  uv_read_stop((uv_stream_t *)&conn->tcp);
  arm(conn, conn->srv->opts.idle_timeout_ms); /* time to drain the last response */
  if (conn->tls && conn->handshaken) {
    mg_tls_shutdown(conn->tls);
    conn_flush(conn);
  }
  conn->sreq.data = conn;
  if (uv_shutdown(&conn->sreq, (uv_stream_t *)&conn->tcp, on_shutdown) != 0) conn_close(conn);
}

static const char *reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 304: return "Not Modified";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 413: return "Content Too Large";
  case 415: return "Unsupported Media Type";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 503: return "Service Unavailable";
  default: return ""; /* RFC 9112 4: the reason phrase may be empty */
  }
}

/* Send a response; takes the body's memory. 1xx/204/304 carry no body (RFC 9110 8.6). */
static void respond(sconn_t *conn, int status, const mg_buf_t *hdrs, mg_buf_t *body, bool head_only) {
  bool bodiless = status < 200 || status == 204 || status == 304;
  mg_buf_t head;
  mg_buf_init(&head, 0);
  int rc = mg_buf_printf(&head, "HTTP/1.1 %d %s\r\n", status, reason(status));
  if (rc == 0 && !bodiless) rc = mg_buf_printf(&head, "Content-Length: %zu\r\n", body->len);
  if (rc == 0 && !conn->keep_alive) rc = mg_buf_append_str(&head, "Connection: close\r\n");
  if (rc == 0 && hdrs && hdrs->len) rc = mg_buf_append(&head, hdrs->data, hdrs->len);
  if (rc == 0) rc = mg_buf_append_str(&head, "\r\n");
  size_t blen = body->len;
  char *b = mg_buf_steal(body, NULL);
  if (head_only || bodiless) {
    mg_free(b);
    b = NULL;
    blen = 0;
  }
  if (rc == 0) rc = conn_write(conn, head.data, head.len, b, blen);
  else mg_free(b);
  mg_buf_cleanup(&head);
  if (rc != 0) conn_close(conn);
}

static void respond_error(sconn_t *conn, int status, const char *msg) {
  mg_buf_t body, hdrs;
  mg_buf_init(&body, 0);
  mg_buf_init(&hdrs, 0);
  conn->keep_alive = false;
  int rc = mg_buf_printf(&body, "%s\n", msg);
  if (rc == 0) rc = mg_buf_append_str(&hdrs, "Content-Type: text/plain; charset=utf-8\r\n");
  if (rc == 0) respond(conn, status, &hdrs, &body, false);
  else conn_close(conn);
  mg_buf_cleanup(&body);
  mg_buf_cleanup(&hdrs);
  conn_shutdown(conn);
}

static route_t *find_route(mg_http_server_t *s, mg_str_t path) {
  for (size_t i = 0; i < s->nroutes; i++)
    if (mg_str_eq_c(path, s->routes[i].path)) return &s->routes[i];
  return NULL;
}

/* A complete request is in the parser: route it, run the handler, queue
 * the response. */
static void handle(sconn_t *conn) {
  mg_http_server_t *s = conn->srv;
  const char *method = mg_http_parser_method(conn->parser);
  mg_str_t url = mg_http_parser_url(conn->parser);
  const char *q = memchr(url.p, '?', url.n);
  mg_http_sreq_t req = {
      .method = method,
      .path = q ? mg_str_n(url.p, (size_t)(q - url.p)) : url,
      .query = q ? mg_str_n(q + 1, url.n - (size_t)(q + 1 - url.p)) : mg_str_n("", 0),
      .body = mg_str_n(conn->body.data ? conn->body.data : "", conn->body.len),
      .priv_ = conn,
  };
  bool head = strcmp(method, "HEAD") == 0;
  mg_buf_t hdrs;
  mg_buf_init(&hdrs, MAX_RESPONSE_HEADERS);
  mg_http_sresp_t resp = {.status = 200, .priv_ = &hdrs};
  mg_buf_init(&resp.body, 0);
  conn->keep_alive = mg_http_parser_keep_alive(conn->parser);
  route_t *rt = find_route(s, req.path);
  if (!rt) {
    resp.status = 404;
    mg_buf_append_str(&resp.body, "404 page not found\n");
  } else if (rt->method && strcmp(rt->method, method) != 0 && !(head && strcmp(rt->method, "GET") == 0)) {
    resp.status = 405;
    mg_buf_printf(&hdrs, "Allow: %s%s\r\n", rt->method, strcmp(rt->method, "GET") == 0 ? ", HEAD" : "");
    mg_buf_append_str(&resp.body, "405 method not allowed\n");
  } else {
    rt->fn(rt->ud, &req, &resp);
    if (resp.status < 100 || resp.status > 999) resp.status = 500;
  }
  respond(conn, resp.status, &hdrs, &resp.body, head);
  mg_buf_cleanup(&resp.body);
  mg_buf_cleanup(&hdrs);
}

static void reject(sconn_t *conn, int err) {
  MG_DEBUG("http_server", "bad_request", "err=%s", mg_err_name(err));
  if (err == MG_ETOOBIG && mg_http_parser_headers_done(conn->parser))
    respond_error(conn, 413, "request body too large");
  else if (err == MG_ETOOBIG)
    respond_error(conn, 431, "request headers too large");
  else if (err == MG_EHTTP)
    respond_error(conn, 400, "bad request");
  else
    respond_error(conn, 500, "internal error");
}

static void next_request(sconn_t *conn) {
  mg_http_server_t *s = conn->srv;
  conn->sent_continue = false;
  /* Idle keep-alive connections should not each pin a max_body buffer. */
  if (conn->body.cap > 64 * 1024) mg_buf_cleanup(&conn->body);
  mg_http_parser_reset(conn->parser, &conn->body, s->opts.max_body, s->opts.max_header_bytes, 0);
  arm(conn, s->opts.idle_timeout_ms);
}

/* Parse buffered plaintext, handling each complete request. Stops early
 * (keeping the rest in rbuf) while too much output is queued. */
static void conn_process(sconn_t *conn) {
  mg_http_server_t *s = conn->srv;
  while (conn->len > 0 && !conn->closing && !conn->shutting_down) {
    if (conn->tcp.write_queue_size >= WRITE_HIGH_WATER) {
      conn->paused = true;
      conn->reading = false;
      uv_read_stop((uv_stream_t *)&conn->tcp);
      return;
    }
    bool started = mg_http_parser_started(conn->parser);
    size_t used = 0;
    int rc = mg_http_parser_feed(conn->parser, conn->rbuf + conn->off, conn->len, &used);
    conn->off += used;
    conn->len -= used;
    /* Slowloris: the whole request must arrive within request_timeout_ms
     * of its first byte. */
    if (!started && mg_http_parser_started(conn->parser)) arm(conn, s->opts.request_timeout_ms);
    if (rc < 0) {
      reject(conn, rc);
      return;
    }
    if (rc == MG_HTTP_MORE) {
      const char *expect = mg_http_parser_headers_done(conn->parser)
                               ? mg_http_parser_header(conn->parser, "expect") : NULL;
      if (expect && !conn->sent_continue && strcasecmp(expect, "100-continue") == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        conn->sent_continue = true;
        if (conn_write(conn, cont, sizeof cont - 1, NULL, 0) != 0) conn_close(conn);
      }
      return;
    }
    handle(conn);
    if (conn->closing) return;
    if (!conn->keep_alive) conn_shutdown(conn);
    else next_request(conn);
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  sconn_t *conn = h->data;
  *buf = uv_buf_init(conn->rbuf, sizeof conn->rbuf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* Parse what is buffered (decrypting more TLS records as room frees up),
 * then read again unless paused or closing. */
static void conn_pump(sconn_t *conn) {
  for (;;) {
    conn_process(conn);
    if (conn->len || conn->paused || conn->closing || conn->shutting_down || !conn->tls || !conn->handshaken) break;
    size_t got = 0;
    int rc = mg_tls_read(conn->tls, conn->rbuf, sizeof conn->rbuf, &got);
    if (rc == MG_EAGAIN) break;
    if (rc != 0) {
      if (rc == MG_ETLS) MG_DEBUG("http_server", "tls_error", "detail=\"%s\"", mg_tls_error(conn->tls));
      conn_shutdown(conn);
      return;
    }
    conn->off = 0;
    conn->len = got;
  }
  if (conn->closing) return;
  if (conn_flush(conn) != 0) {
    conn_close(conn);
  } else if (!conn->paused && !conn->shutting_down && !conn->reading) {
    conn->reading = uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) == 0;
    if (!conn->reading) conn_close(conn);
  }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  sconn_t *conn = st->data;
  if (conn->closing || nread == 0) return;
  if (nread < 0) {
    /* The peer half-closed or failed: deliver what is queued, then close. */
    if (nread == UV_EOF) conn_shutdown(conn);
    else conn_close(conn);
    return;
  }
  conn->off = 0;
  conn->len = (size_t)nread;
  if (conn->tls) {
    conn->len = 0;
    if (mg_tls_feed(conn->tls, buf->base, (size_t)nread) != 0) {
      conn_close(conn);
      return;
    }
    if (!conn->handshaken) {
      int rc = mg_tls_handshake(conn->tls);
      if (rc != 0 && rc != MG_EAGAIN) {
        MG_DEBUG("http_server", "tls_handshake_failed", "detail=\"%s\"", mg_tls_error(conn->tls));
        if (conn_flush(conn) == 0) conn_shutdown(conn); /* the alert goes out first */
        else conn_close(conn);
        return;
      }
      if (rc == MG_EAGAIN) {
        if (conn_flush(conn) != 0) conn_close(conn);
        return;
      }
      conn->handshaken = true;
    }
  }
  conn_pump(conn);
}

static void on_connection(uv_stream_t *ls, int status) {
  mg_http_server_t *s = ls->data;
  if (status < 0) {
    MG_WARN("http_server", "accept_failed", "err=%s", uv_err_name(status));
    return;
  }
  if (s->closing) return;
  sconn_t *conn = mg_calloc(1, sizeof *conn);
  if (!conn) return;
  conn->parser = mg_http_parser_new(MG_HTTP_REQUEST);
  if (!conn->parser) {
    mg_free(conn);
    return;
  }
  conn->srv = s;
  mg_buf_init(&conn->body, s->opts.max_body);
  uv_tcp_init(s->loop, &conn->tcp);
  uv_timer_init(s->loop, &conn->timer);
  conn->tcp.data = conn->timer.data = conn;
  conn->open_handles = 2;
  conn->next = s->conns;
  if (s->conns) s->conns->prev = conn;
  s->conns = conn;
  s->nconns++;
  if (uv_accept(ls, (uv_stream_t *)&conn->tcp) != 0) {
    conn_close(conn);
    return;
  }
  if (s->nconns > s->opts.max_connections) {
    unsigned long long now = uv_now(s->loop);
    if (mg_log_ratelimit(&s->reject_log_ms, now, 10000))
      MG_WARN("http_server", "too_many_connections", "max=%zu hint=\"raise max_connections\"", s->opts.max_connections);
    conn_close(conn);
    return;
  }
  if (s->tls && !(conn->tls = mg_tls_new(s->tls, NULL))) {
    conn_close(conn);
    return;
  }
  uv_tcp_nodelay(&conn->tcp, 1);
  next_request(conn);
  /* A TLS handshake is part of the first request's deadline. */
  if (conn->tls) arm(conn, s->opts.request_timeout_ms);
  conn_pump(conn);
}

/* "host:port", "[v6]:port", ":port" (all interfaces); hosts are literal
 * addresses or "localhost", so startup never waits on DNS. */
static int parse_listen(const char *addr, struct sockaddr_storage *ss) {
  const char *colon = strrchr(addr, ':');
  if (!colon || !colon[1] || strlen(colon + 1) > 5) return MG_EINVAL;
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535) return MG_EINVAL;
  char host[64];
  size_t n = (size_t)(colon - addr);
  bool v6 = n >= 2 && addr[0] == '[' && addr[n - 1] == ']';
  if (v6) {
    addr++;
    n -= 2;
  }
  if (n >= sizeof host) return MG_EINVAL;
  memcpy(host, addr, n);
  host[n] = '\0';
  if (v6) return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0 ? 0 : MG_EINVAL;
  if (n == 0) snprintf(host, sizeof host, "0.0.0.0");
  else if (strcmp(host, "localhost") == 0) snprintf(host, sizeof host, "127.0.0.1");
  return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0 ? 0 : MG_EINVAL;
}

static void on_listener_close(uv_handle_t *h) {
  mg_http_server_t *s = h->data;
  s->listener_closed = true;
  server_maybe_free(s);
}

mg_http_server_t *mg_http_server_new(uv_loop_t *loop, const char *listen_addr, const mg_http_server_opts_t *opts,
                                     int *err) {
  struct sockaddr_storage ss;
  *err = listen_addr ? parse_listen(listen_addr, &ss) : MG_EINVAL;
  if (*err) return NULL;
  mg_http_server_t *s = mg_calloc(1, sizeof *s);
  if (!s) {
    *err = MG_ENOMEM;
    return NULL;
  }
  s->loop = loop;
  if (opts) s->opts = *opts;
  if (!s->opts.max_header_bytes) s->opts.max_header_bytes = DEFAULT_MAX_HEADER_BYTES;
  if (!s->opts.max_body) s->opts.max_body = DEFAULT_MAX_BODY;
  if (!s->opts.idle_timeout_ms) s->opts.idle_timeout_ms = DEFAULT_IDLE_MS;
  if (!s->opts.request_timeout_ms) s->opts.request_timeout_ms = DEFAULT_REQUEST_MS;
  if (!s->opts.max_connections) s->opts.max_connections = DEFAULT_MAX_CONNECTIONS;
  uv_tcp_init(loop, &s->listener);
  s->listener.data = s;
  int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&s->listener, 128, on_connection);
  struct sockaddr_storage bound;
  int len = sizeof bound;
  if (rc == 0) rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len);
  if (rc != 0) {
    MG_ERROR("http_server", "listen_failed", "addr=%s err=%s", listen_addr, uv_err_name(rc));
    *err = mg_err_from_uv(rc);
    s->closing = true; /* freed by the listener's close callback */
    uv_close((uv_handle_t *)&s->listener, on_listener_close);
    return NULL;
  }
  s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                              : ((struct sockaddr_in *)&bound)->sin_port);
  return s;
}

void mg_http_server_free(mg_http_server_t *s) {
  if (!s || s->closing) return;
  s->closing = true;
  uv_close((uv_handle_t *)&s->listener, on_listener_close);
  for (sconn_t *c = s->conns; c; c = c->next) conn_close(c);
}

int mg_http_server_port(const mg_http_server_t *s) { return s->port; }

int mg_http_server_route(mg_http_server_t *s, const char *method, const char *path, mg_http_handler_fn fn, void *ud) {
  if (!s || !path || path[0] != '/' || !fn) return MG_EINVAL;
  route_t *rt = find_route(s, mg_str(path));
  if (!rt && s->nroutes == MAX_ROUTES) return MG_ETOOBIG;
  char *m = method ? mg_strdup(method) : NULL;
  char *p = rt ? NULL : mg_strdup(path);
  if ((method && !m) || (!rt && !p)) {
    mg_free(m);
    mg_free(p);
    return MG_ENOMEM;
  }
  if (!rt) {
    rt = &s->routes[s->nroutes++];
    rt->path = p;
  } else {
    mg_free(rt->method);
  }
  rt->method = m;
  rt->fn = fn;
  rt->ud = ud;
  return 0;
}

int mg_http_server_tls(mg_http_server_t *s, const char *cert_file, const char *key_file, const char *client_ca_file) {
  mg_tls_ctx_opts_t o = {.ca_file = client_ca_file, .cert_file = cert_file, .key_file = key_file};
  mg_tls_ctx_t *ctx;
  char detail[200];
  int rc = mg_tls_ctx_new(true, &o, &ctx, detail, sizeof detail);
  if (rc) {
    MG_ERROR("http_server", "tls_config_failed", "detail=\"%s\"", detail);
    return rc;
  }
  mg_tls_ctx_free(s->tls); /* live sessions keep their own reference */
  s->tls = ctx;
  return 0;
}

const char *mg_http_sreq_header(const mg_http_sreq_t *r, const char *name) {
  const sconn_t *conn = r->priv_;
  return mg_http_parser_header(conn->parser, name);
}

const char *mg_http_sreq_server_name(const mg_http_sreq_t *r) {
  const sconn_t *conn = r->priv_;
  return conn->tls ? mg_tls_server_name(conn->tls) : NULL;
}

int mg_http_sresp_header(mg_http_sresp_t *r, const char *name, const char *value) {
  if (!mg_http_is_token(name) || !mg_http_is_value(value) || strcasecmp(name, "content-length") == 0 ||
      strcasecmp(name, "transfer-encoding") == 0 || strcasecmp(name, "connection") == 0)
    return MG_EINVAL;
  return mg_buf_printf(r->priv_, "%s: %s\r\n", name, value);
}
