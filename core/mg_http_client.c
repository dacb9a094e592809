/* mg_http_client: requests, connections and keep-alive pools on libuv.
 * Owns every connection (TCP + timer handles, parser, TLS session, 64 KiB
 * read buffer), the pools and the cached TLS contexts; frees itself in the
 * last close callback. Never calls a user callback from inside a public call. */
#include "mg_http_client.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "mg_err.h"
#include "mg_http.h"
#include "mg_mem.h"
#include "mg_tls.h"

/* One read buffer for all connections of a client: libuv hands a stream
 * the buffer, reads and calls back before it serves the next, and every
 * callback consumes what it was given, so idle keep-alive connections
 * (one per target) hold none. Large enough that a multi-MB body is read in
 * few system calls. */
#define READ_BUF_SIZE (256 * 1024)
#define DEFAULT_TIMEOUT_MS 30000
#define DEFAULT_MAX_BODY ((size_t)64 << 20)
#define DEFAULT_MAX_IDLE 4
#define DEFAULT_IDLE_TIMEOUT_MS 90000
#define MAX_REQUEST_HEAD (64 * 1024) /* request line + headers we send */
#define MAX_HOST 253
#define MAX_ADDRS 8 /* DNS answers tried in order */
#define MAX_KEY 2048 /* pool / TLS context keys (host + file paths) */

/* Intrusive circular list, as in libuv's queue.h. */
typedef struct link {
  struct link *prev, *next;
} link_t;
#define FROM_LINK(l, type, member) ((type *)(void *)((char *)(l) - offsetof(type, member)))
static void link_init(link_t *l) { l->prev = l->next = l; }
static bool link_empty(const link_t *h) { return h->next == h; }
static void link_remove(link_t *l) {
  l->prev->next = l->next;
  l->next->prev = l->prev;
  link_init(l);
}
static void link_insert_after(link_t *at, link_t *l) {
  l->next = at->next;
  l->prev = at;
  at->next->prev = l;
  at->next = l;
}
static void link_push(link_t *h, link_t *l) { link_insert_after(h->prev, l); }
static link_t *link_pop(link_t *h) {
  link_t *l = h->next;
  link_remove(l);
  return l;
}
/* Move every element of from onto to (empty), leaving from empty. */
static void link_take(link_t *from, link_t *to) {
  link_init(to);
  if (link_empty(from)) return;
  to->next = from->next;
  to->prev = from->prev;
  to->next->prev = to;
  to->prev->next = to;
  link_init(from);
}

typedef struct tls_entry {
  struct tls_entry *next;
  char *key;
  mg_tls_ctx_t *ctx;
} tls_entry_t;

/* Connections that may serve each other's requests: same scheme, host,
 * port and TLS settings. Lives while a connection or request refers to it. */
typedef struct pool {
  link_t link;
  uint64_t hash;
  char *key, *host, *server_name;
  char port[6];
  int port_num;
  bool tls;
  mg_tls_ctx_t *tls_ctx; /* borrowed from the client's cache */
  link_t idle;           /* most recently used first */
  size_t nidle, refs;
} pool_t;

typedef enum { C_DNS, C_CONNECT, C_HANDSHAKE, C_READY } cstate_t;

typedef struct conn {
  link_t link, idle_link;
  mg_http_client_t *cli;
  pool_t *pool;
  uv_tcp_t tcp;
  uv_timer_t timer; /* the one deadline: connect, request, or idle */
  uv_getaddrinfo_t gai;
  uv_connect_t creq;
  uv_write_t wreq;
  struct sockaddr_storage addrs[MAX_ADDRS];
  size_t naddr, addr_i;
  char addr[64]; /* "1.2.3.4:80" for messages */
  cstate_t state;
  int open_handles;
  int writes; /* in flight; the connection is reused only when none are */
  bool dns_pending, reconnecting, closing, idle;
  bool release_on_write; /* reusable once its last write callback has run */
  mg_tls_t *tls;
  mg_http_parser_t *parser;
  mg_http_req_t *req;
} conn_t;

typedef enum { R_PENDING, R_ACTIVE, R_DONE, R_CALLBACK } rstate_t;

struct mg_http_req {
  link_t link; /* client's pending or done list */
  mg_http_client_t *cli;
  pool_t *pool;
  conn_t *conn;
  rstate_t state;
  mg_http_done_cb cb;
  mg_http_body_cb on_body;
  void *ud;
  mg_buf_t head; /* request line and headers, built once */
  const char *body;
  size_t body_len;
  uint64_t connect_deadline, deadline, connect_timeout_ms, timeout_ms;
  size_t max_body, max_header_bytes;
  unsigned parse_flags;
  mg_buf_t *body_out, own_body;
  bool reused, retried, got_bytes;
  bool truncate_2xx, truncated; /* truncate_2xx_body; the body was cut at max_body */
  int err;
  char detail[256];
};

struct mg_http_client {
  uv_loop_t *loop;
  uv_idle_t idle; /* runs deferred starts and completions */
  size_t max_idle;
  uint64_t idle_timeout_ms;
  char *user_agent;
  char *rbuf; /* READ_BUF_SIZE, shared by all connections */
  link_t pools, conns, pending, done;
  tls_entry_t *tls_ctxs;
  mg_http_client_stats_t stats;
  bool closing, idle_closed;
};

static void conn_close(conn_t *conn);
static void on_timer(uv_timer_t *t);
static void conn_fail(conn_t *conn, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void req_start(mg_http_req_t *r, bool allow_idle);

/* ---- client lifetime ---- */

static void client_maybe_free(mg_http_client_t *c) {
  if (!c->closing || !c->idle_closed || !link_empty(&c->conns)) return;
  for (tls_entry_t *e = c->tls_ctxs, *next; e; e = next) {
    next = e->next;
    mg_tls_ctx_free(e->ctx);
    mg_free(e->key);
    mg_free(e);
  }
  mg_free(c->user_agent);
  mg_free(c->rbuf);
  mg_free(c);
}

static void on_idle(uv_idle_t *h);
static void schedule(mg_http_client_t *c) {
  if (!uv_is_closing((uv_handle_t *)&c->idle)) uv_idle_start(&c->idle, on_idle);
}

static void pool_unref(pool_t *p) {
  if (--p->refs) return;
  link_remove(&p->link);
  mg_free(p->key);
  mg_free(p->host);
  mg_free(p->server_name);
  mg_free(p);
}

static void set_detail(mg_http_req_t *r, const char *fmt, va_list ap) {
  vsnprintf(r->detail, sizeof r->detail, fmt, ap);
}

static void req_free(mg_http_req_t *r) {
  mg_buf_cleanup_secret(&r->head); /* holds Authorization and X-Amz-Security-Token */
  mg_buf_cleanup(&r->own_body);
  if (r->pool) pool_unref(r->pool); /* NULL when its TLS context failed to load */
  mg_free(r);
}

/* Runs the user callback and frees the request. parser is the connection's
 * when a response arrived, so header lookups work during the callback. */
static void req_complete(mg_http_req_t *r, int err, mg_http_parser_t *parser) {
  mg_http_response_t resp = {0};
  if (err == 0) {
    resp.status = mg_http_parser_status(parser);
    resp.body = r->body_out ? r->body_out : &r->own_body;
    resp.body_truncated = r->truncated;
    resp.priv_ = parser;
  }
  r->state = R_CALLBACK;
  r->cb(r->ud, err, err ? r->detail : "", err ? NULL : &resp);
  req_free(r);
}

/* Queue a completion for the idle callback (cancel, free, early errors). */
static void req_defer(mg_http_req_t *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void req_defer(mg_http_req_t *r, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  set_detail(r, fmt, ap);
  va_end(ap);
  r->err = err;
  r->state = R_DONE;
  link_remove(&r->link);
  link_push(&r->cli->done, &r->link);
  schedule(r->cli);
}

static void on_idle_close(uv_handle_t *h) {
  mg_http_client_t *c = h->data;
  c->idle_closed = true;
  client_maybe_free(c);
}

/* Work present on entry only: callbacks that queue more run next turn. */
static void on_idle(uv_idle_t *h) {
  mg_http_client_t *c = h->data;
  link_t starts, dones;
  link_take(&c->pending, &starts);
  link_take(&c->done, &dones);
  while (!link_empty(&starts)) {
    mg_http_req_t *r = FROM_LINK(link_pop(&starts), mg_http_req_t, link);
    if (c->closing) {
      snprintf(r->detail, sizeof r->detail, "client closed");
      req_complete(r, MG_ECANCELED, NULL);
    } else {
      req_start(r, true);
    }
  }
  while (!link_empty(&dones)) {
    mg_http_req_t *r = FROM_LINK(link_pop(&dones), mg_http_req_t, link);
    req_complete(r, r->err, NULL);
  }
  if (!link_empty(&c->pending) || !link_empty(&c->done)) return;
  uv_idle_stop(h);
  if (c->closing && !uv_is_closing((uv_handle_t *)h)) uv_close((uv_handle_t *)h, on_idle_close);
}

/* ---- connections ---- */

static void conn_maybe_free(conn_t *conn) {
  if (conn->open_handles > 0 || conn->dns_pending) return;
  mg_http_client_t *c = conn->cli;
  link_remove(&conn->link);
  pool_unref(conn->pool);
  mg_http_parser_free(conn->parser);
  mg_tls_free(conn->tls);
  mg_free(conn);
  client_maybe_free(c);
}

static void on_conn_close(uv_handle_t *h) {
  conn_t *conn = h->data;
  conn->open_handles--;
  conn_maybe_free(conn);
}

static void conn_close(conn_t *conn) {
  if (conn->closing) return;
  conn->closing = true;
  if (conn->idle) {
    link_remove(&conn->idle_link);
    conn->pool->nidle--;
    conn->idle = false;
  }
  if (conn->dns_pending) uv_cancel((uv_req_t *)&conn->gai);
  uv_close((uv_handle_t *)&conn->timer, on_conn_close);
  /* While reconnecting the TCP handle is already closing (on_reclosed). */
  if (!conn->reconnecting) uv_close((uv_handle_t *)&conn->tcp, on_conn_close);
}

static void conn_arm(conn_t *conn, uint64_t deadline) {
  uint64_t now = uv_now(conn->cli->loop);
  uv_timer_start(&conn->timer, on_timer, deadline > now ? deadline - now : 0, 0);
}

static mg_http_req_t *conn_detach(conn_t *conn) {
  mg_http_req_t *r = conn->req;
  if (r) r->conn = NULL;
  conn->req = NULL;
  return r;
}

/* Fails the connection's request (or retries it once on a fresh connection
 * when a reused one turned out to be closed before any response byte). */
static void conn_fail(conn_t *conn, int err, const char *fmt, ...) {
  mg_http_req_t *r = conn_detach(conn);
  conn_close(conn);
  if (!r) return;
  if (err == MG_ECONNRESET && r->reused && !r->got_bytes && !r->retried && !r->cli->closing) {
    r->retried = true;
    req_start(r, false);
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  set_detail(r, fmt, ap);
  va_end(ap);
  req_complete(r, err, NULL);
}

/* Keep a connection whose response ended cleanly, unless the pool is full. */
static void conn_release(conn_t *conn) {
  mg_http_client_t *c = conn->cli;
  if (conn->closing) return;
  if (c->closing || conn->pool->nidle >= c->max_idle) {
    conn_close(conn);
    return;
  }
  conn->idle = true;
  link_insert_after(&conn->pool->idle, &conn->idle_link);
  conn->pool->nidle++;
  uv_timer_start(&conn->timer, on_timer, c->idle_timeout_ms, 0);
}

static void conn_done(conn_t *conn, bool reusable) {
  mg_http_req_t *r = conn_detach(conn);
  /* A server may answer before the request body is out (an early 413):
   * the rest of that body must not precede the next request. Bytes still
   * queued in libuv mean that; a write whose bytes all reached the socket
   * but whose callback libuv has not run yet (the answer came in the same
   * loop iteration, common on loopback) does not, and then the connection
   * waits for that callback before it is reused (its write request is). */
  reusable = reusable && conn->tcp.write_queue_size == 0;
  if (!reusable) conn_close(conn);
  req_complete(r, 0, conn->parser);
  if (!reusable || conn->closing) return;
  if (conn->writes == 0) conn_release(conn);
  else conn->release_on_write = true;
}

typedef struct tls_write {
  uv_write_t req;
  char data[];
} tls_write_t;

static void on_write(uv_write_t *w, int status) {
  conn_t *conn = w->data;
  conn->writes--;
  if (w != &conn->wreq) mg_free(FROM_LINK(w, tls_write_t, req));
  if (status < 0 && !conn->closing)
    conn_fail(conn, mg_err_from_uv(status), "send to %s: %s", conn->addr, uv_strerror(status));
  else if (conn->writes == 0 && conn->release_on_write) {
    conn->release_on_write = false;
    conn_release(conn);
  }
}

/* Hand the ciphertext produced so far to libuv, in one write. */
static int conn_flush(conn_t *conn) {
  size_t n = mg_tls_pending(conn->tls);
  if (n == 0) return 0;
  tls_write_t *w = mg_malloc(sizeof *w + n);
  if (!w) return MG_ENOMEM;
  uv_buf_t b = {.base = w->data, .len = mg_tls_take(conn->tls, w->data, n)};
  w->req.data = conn;
  int rc = uv_write(&w->req, (uv_stream_t *)&conn->tcp, &b, 1, on_write);
  if (rc < 0) {
    mg_free(w);
    return mg_err_from_uv(rc);
  }
  conn->writes++;
  return 0;
}

static void conn_send(conn_t *conn) {
  mg_http_req_t *r = conn->req;
  mg_http_parser_reset(conn->parser, r->body_out ? r->body_out : &r->own_body, r->max_body, r->max_header_bytes,
                       r->parse_flags);
  int rc;
  if (conn->tls) {
    rc = mg_tls_write(conn->tls, r->head.data, r->head.len);
    if (rc == 0) rc = mg_tls_write(conn->tls, r->body, r->body_len);
    if (rc == 0) rc = conn_flush(conn);
    if (rc == MG_ETLS) {
      conn_fail(conn, rc, "TLS %s: %s", conn->addr, mg_tls_error(conn->tls));
      return;
    }
  } else {
    /* The body goes out from the caller's memory: no copy. */
    uv_buf_t bufs[2] = {{.base = r->head.data, .len = r->head.len},
                        {.base = (char *)(uintptr_t)r->body, .len = r->body_len}};
    conn->wreq.data = conn;
    rc = uv_write(&conn->wreq, (uv_stream_t *)&conn->tcp, bufs, r->body_len ? 2 : 1, on_write);
    if (rc < 0) rc = mg_err_from_uv(rc);
    else conn->writes++;
  }
  if (rc < 0) conn_fail(conn, rc, "send to %s: %s", conn->addr, mg_err_str(rc));
}

/* A streaming request gets the decoded bytes of a 2xx body as they come,
 * and the buffer is emptied, so a response that never ends stays bounded. */
static int stream_body(conn_t *conn) {
  mg_http_req_t *r = conn->req;
  if (!r->on_body || !mg_http_parser_headers_done(conn->parser)) return 0;
  int status = mg_http_parser_status(conn->parser);
  mg_buf_t *b = r->body_out ? r->body_out : &r->own_body;
  if (status < 200 || status > 299 || b->len == 0) return 0;
  int rc = r->on_body(r->ud, b->data, b->len);
  mg_buf_reset(b);
  return rc;
}

/* A body over its limit that the caller allowed to cut: a 2xx whose
 * headers all arrived (so the limit hit is the body's, not the headers'). */
static bool body_may_be_cut(conn_t *conn) {
  int status = mg_http_parser_status(conn->parser);
  return conn->req->truncate_2xx && mg_http_parser_headers_done(conn->parser) && status >= 200 && status <= 299;
}

/* Plaintext response bytes. */
static void conn_input(conn_t *conn, const char *data, size_t n) {
  if (!conn->req) {
    conn_close(conn); /* bytes on an idle connection: it cannot be reused */
    return;
  }
  conn->req->got_bytes = true;
  size_t used = 0;
  int rc = mg_http_parser_feed(conn->parser, data, n, &used);
  int src = rc >= 0 ? stream_body(conn) : 0;
  if (src < 0) {
    uv_read_stop((uv_stream_t *)&conn->tcp);
    conn_fail(conn, src, "response body refused by the caller: %s", mg_err_str(src));
    return;
  }
  if (rc == MG_HTTP_MORE) return;
  if (rc < 0) {
    /* Stop reading at once: an over-limit body is not drained. */
    uv_read_stop((uv_stream_t *)&conn->tcp);
    if (rc == MG_ETOOBIG && body_may_be_cut(conn)) {
      conn->req->truncated = true;
      conn_done(conn, false);
      return;
    }
    conn_fail(conn, rc, "%s", mg_http_parser_error(conn->parser));
    return;
  }
  conn_done(conn, used == n && mg_http_parser_keep_alive(conn->parser));
}

static void conn_eof(conn_t *conn, int status) {
  mg_http_req_t *r = conn->req;
  if (!r) {
    conn_close(conn);
    return;
  }
  if (conn->state == C_HANDSHAKE) {
    conn_fail(conn, MG_ETLS, "TLS %s: connection closed during the handshake", conn->addr);
  } else if (r->got_bytes && status == UV_EOF) {
    int rc = mg_http_parser_finish(conn->parser);
    if (rc == MG_HTTP_COMPLETE) conn_done(conn, false);
    else conn_fail(conn, rc, "%s: %s", conn->addr, mg_http_parser_error(conn->parser));
  } else if (status == UV_EOF) {
    conn_fail(conn, MG_ECONNRESET, "%s closed the connection without responding", conn->addr);
  } else {
    conn_fail(conn, mg_err_from_uv(status), "read from %s: %s", conn->addr, uv_strerror(status));
  }
}

/* Ciphertext: drive the handshake, then decrypt into the read buffer (free
 * again once the BIO holds a copy) and parse. */
static void conn_tls_input(conn_t *conn, const char *data, size_t n) {
  if (mg_tls_feed(conn->tls, data, n) != 0) {
    conn_fail(conn, MG_ENOMEM, "TLS %s: out of memory", conn->addr);
    return;
  }
  if (conn->state == C_HANDSHAKE) {
    int rc = mg_tls_handshake(conn->tls);
    int frc = conn_flush(conn);
    if (rc == MG_EAGAIN && frc == 0) return;
    if (rc != 0 && rc != MG_EAGAIN) {
      conn_fail(conn, MG_ETLS, "TLS %s: %s", conn->addr, mg_tls_error(conn->tls));
      return;
    }
    if (frc != 0) {
      conn_fail(conn, frc, "send to %s: %s", conn->addr, mg_err_str(frc));
      return;
    }
    conn->state = C_READY;
    conn_arm(conn, conn->req->deadline);
    conn_send(conn);
  }
  while (!conn->closing) {
    size_t got = 0;
    int rc = mg_tls_read(conn->tls, conn->cli->rbuf, READ_BUF_SIZE, &got);
    if (rc == 0) {
      conn_input(conn, conn->cli->rbuf, got);
      continue;
    }
    if (rc == MG_EAGAIN) break;
    if (rc == MG_ECLOSED) conn_eof(conn, UV_EOF);
    else conn_fail(conn, MG_ETLS, "TLS %s: %s", conn->addr, mg_tls_error(conn->tls));
    return;
  }
  /* Post-handshake messages (key updates) may need an answer. */
  int frc = conn->closing ? 0 : conn_flush(conn);
  if (frc != 0) conn_fail(conn, frc, "send to %s: %s", conn->addr, mg_err_str(frc));
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  conn_t *conn = h->data;
  *buf = uv_buf_init(conn->cli->rbuf, READ_BUF_SIZE);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn_t *conn = s->data;
  if (conn->closing || nread == 0) return;
  if (nread < 0) conn_eof(conn, (int)nread);
  else if (conn->tls) conn_tls_input(conn, buf->base, (size_t)nread);
  else conn_input(conn, buf->base, (size_t)nread);
}

static void on_timer(uv_timer_t *t) {
  conn_t *conn = t->data;
  mg_http_req_t *r = conn->req;
  if (!r) {
    conn_close(conn); /* idle timeout */
    return;
  }
  pool_t *p = conn->pool;
  unsigned long long ms = (unsigned long long)r->timeout_ms;
  if (uv_now(conn->cli->loop) < r->deadline) ms = (unsigned long long)r->connect_timeout_ms;
  switch (conn->state) {
  case C_DNS:
    conn_fail(conn, MG_ETIMEDOUT, "resolve %s: timed out after %llu ms", p->host, ms);
    break;
  case C_CONNECT:
    conn_fail(conn, MG_ETIMEDOUT, "connect %s: timed out after %llu ms", conn->addr, ms);
    break;
  case C_HANDSHAKE:
    conn_fail(conn, MG_ETIMEDOUT, "TLS handshake with %s: timed out after %llu ms", conn->addr, ms);
    break;
  case C_READY:
    conn_fail(conn, MG_ETIMEDOUT, "request to %s timed out after %llu ms", conn->addr, ms);
    break;
  }
}

static void format_addr(const struct sockaddr *sa, char *out, size_t n) {
  char ip[48] = "?";
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    uv_ip6_name(a, ip, sizeof ip);
    snprintf(out, n, "[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
  } else {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    uv_ip4_name(a, ip, sizeof ip);
    snprintf(out, n, "%s:%u", ip, (unsigned)ntohs(a->sin_port));
  }
}

static void on_connect(uv_connect_t *creq, int status);

static void try_connect(conn_t *conn) {
  const struct sockaddr *sa = (const struct sockaddr *)&conn->addrs[conn->addr_i];
  conn->state = C_CONNECT;
  format_addr(sa, conn->addr, sizeof conn->addr);
  conn->creq.data = conn;
  int rc = uv_tcp_connect(&conn->creq, &conn->tcp, sa, on_connect);
  if (rc < 0) on_connect(&conn->creq, rc);
}

/* The next address needs a fresh socket (possibly of another family). */
static void on_reclosed(uv_handle_t *h) {
  conn_t *conn = h->data;
  conn->reconnecting = false;
  if (conn->closing) {
    on_conn_close(h);
    return;
  }
  uv_tcp_init(conn->cli->loop, &conn->tcp);
  conn->tcp.data = conn;
  try_connect(conn);
}

static void on_connect(uv_connect_t *creq, int status) {
  conn_t *conn = creq->data;
  if (conn->closing) return;
  if (status < 0) {
    if (conn->addr_i + 1 < conn->naddr) {
      conn->addr_i++;
      conn->reconnecting = true;
      uv_close((uv_handle_t *)&conn->tcp, on_reclosed);
    } else {
      conn_fail(conn, mg_err_from_uv(status), "connect %s: %s", conn->addr, uv_strerror(status));
    }
    return;
  }
  conn->cli->stats.connections_opened++;
  uv_tcp_nodelay(&conn->tcp, 1);
  int rc = uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
  if (rc < 0) {
    conn_fail(conn, mg_err_from_uv(rc), "read from %s: %s", conn->addr, uv_strerror(rc));
    return;
  }
  if (!conn->pool->tls) {
    conn->state = C_READY;
    conn_arm(conn, conn->req->deadline);
    conn_send(conn);
    return;
  }
  conn->state = C_HANDSHAKE;
  conn->tls = mg_tls_new(conn->pool->tls_ctx, conn->pool->server_name);
  if (!conn->tls) {
    conn_fail(conn, MG_ENOMEM, "TLS %s: out of memory", conn->addr);
    return;
  }
  rc = mg_tls_handshake(conn->tls); /* ClientHello */
  if (rc == MG_EAGAIN) rc = conn_flush(conn);
  if (rc == MG_ETLS) conn_fail(conn, rc, "TLS %s: %s", conn->addr, mg_tls_error(conn->tls));
  else if (rc != 0) conn_fail(conn, rc, "send to %s: %s", conn->addr, mg_err_str(rc));
}

static void on_dns(uv_getaddrinfo_t *g, int status, struct addrinfo *res) {
  conn_t *conn = g->data;
  conn->dns_pending = false;
  if (conn->closing) {
    uv_freeaddrinfo(res);
    conn_maybe_free(conn);
    return;
  }
  if (status < 0) {
    conn_fail(conn, MG_EDNS, "resolve %s: %s", conn->pool->host, uv_strerror(status));
    return;
  }
  for (struct addrinfo *ai = res; ai && conn->naddr < MAX_ADDRS; ai = ai->ai_next)
    if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) && ai->ai_addrlen <= sizeof conn->addrs[0])
      memcpy(&conn->addrs[conn->naddr++], ai->ai_addr, ai->ai_addrlen);
  uv_freeaddrinfo(res);
  if (conn->naddr == 0) conn_fail(conn, MG_EDNS, "resolve %s: no IPv4 or IPv6 address", conn->pool->host);
  else try_connect(conn);
}

static conn_t *conn_new(mg_http_client_t *c, pool_t *p) {
  conn_t *conn = mg_calloc(1, sizeof *conn);
  if (!conn) return NULL;
  conn->parser = mg_http_parser_new(MG_HTTP_RESPONSE);
  if (!conn->parser) {
    mg_free(conn);
    return NULL;
  }
  conn->cli = c;
  conn->pool = p;
  p->refs++;
  link_init(&conn->idle_link);
  link_push(&c->conns, &conn->link);
  uv_tcp_init(c->loop, &conn->tcp);
  uv_timer_init(c->loop, &conn->timer);
  conn->tcp.data = conn->timer.data = conn->gai.data = conn;
  conn->open_handles = 2;
  snprintf(conn->addr, sizeof conn->addr, "%s:%s", p->host, p->port);
  return conn;
}

/* ---- requests ---- */

static void attach(conn_t *conn, mg_http_req_t *r) {
  conn->req = r;
  r->conn = conn;
  r->state = R_ACTIVE;
}

static void req_start(mg_http_req_t *r, bool allow_idle) {
  mg_http_client_t *c = r->cli;
  pool_t *p = r->pool;
  link_init(&r->link);
  r->reused = false;
  if (allow_idle && !link_empty(&p->idle)) {
    conn_t *conn = FROM_LINK(link_pop(&p->idle), conn_t, idle_link);
    p->nidle--;
    conn->idle = false;
    c->stats.connections_reused++;
    r->reused = true;
    attach(conn, r);
    conn_arm(conn, r->deadline);
    conn_send(conn);
    return;
  }
  conn_t *conn = conn_new(c, p);
  if (!conn) {
    snprintf(r->detail, sizeof r->detail, "out of memory");
    req_complete(r, MG_ENOMEM, NULL);
    return;
  }
  attach(conn, r);
  conn_arm(conn, r->connect_deadline < r->deadline ? r->connect_deadline : r->deadline);
  if (uv_ip4_addr(p->host, p->port_num, (struct sockaddr_in *)&conn->addrs[0]) == 0 ||
      uv_ip6_addr(p->host, p->port_num, (struct sockaddr_in6 *)&conn->addrs[0]) == 0) {
    conn->naddr = 1; /* a literal address needs no trip through the resolver's thread pool */
    try_connect(conn);
    return;
  }
  conn->state = C_DNS;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  int rc = uv_getaddrinfo(c->loop, &conn->gai, on_dns, p->host, p->port, &hints);
  if (rc < 0) conn_fail(conn, MG_EDNS, "resolve %s: %s", p->host, uv_strerror(rc));
  else conn->dns_pending = true;
}

typedef struct url {
  bool tls;
  mg_str_t host;      /* without IPv6 brackets */
  mg_str_t authority; /* as written, for the Host header */
  mg_str_t target;    /* path and query, fragment dropped; may be empty */
  int port;
} url_t;

static int url_parse(const char *s, url_t *u) {
  /* Spaces and control bytes would let a URL smuggle header lines. */
  for (const char *q = s; *q; q++)
    if ((unsigned char)*q <= 0x20 || *q == 0x7f) return MG_EINVAL;
  const char *p;
  if (strncasecmp(s, "http://", 7) == 0) {
    u->tls = false;
    p = s + 7;
  } else if (strncasecmp(s, "https://", 8) == 0) {
    u->tls = true;
    p = s + 8;
  } else {
    return MG_EINVAL;
  }
  size_t alen = strcspn(p, "/?#");
  const char *end = p + alen, *port = NULL;
  if (alen == 0 || memchr(p, '@', alen)) return MG_EINVAL; /* userinfo is not accepted */
  u->authority = mg_str_n(p, alen);
  if (*p == '[') {
    const char *close = memchr(p, ']', alen);
    if (!close || (close + 1 < end && close[1] != ':')) return MG_EINVAL;
    u->host = mg_str_n(p + 1, (size_t)(close - p - 1));
    if (close + 1 < end) port = close + 2;
  } else {
    const char *colon = memchr(p, ':', alen);
    u->host = mg_str_n(p, colon ? (size_t)(colon - p) : alen);
    if (colon) port = colon + 1;
  }
  if (u->host.n == 0 || u->host.n > MAX_HOST) return MG_EINVAL;
  u->port = u->tls ? 443 : 80;
  if (port) {
    if (port == end || end - port > 5) return MG_EINVAL;
    int v = 0;
    for (const char *q = port; q < end; q++) {
      if (*q < '0' || *q > '9') return MG_EINVAL;
      v = v * 10 + (*q - '0');
    }
    if (v < 1 || v > 65535) return MG_EINVAL;
    u->port = v;
  }
  u->target = mg_str_n(end, strcspn(end, "#"));
  return 0;
}

/* Headers that frame the message are the client's to write. */
static bool is_managed(const char *name) {
  return strcasecmp(name, "host") == 0 || strcasecmp(name, "content-length") == 0 ||
         strcasecmp(name, "transfer-encoding") == 0 || strcasecmp(name, "connection") == 0;
}

static int tls_ctx_get(mg_http_client_t *c, const mg_http_tls_opts_t *o, mg_tls_ctx_t **out, char *detail,
                       size_t detail_sz) {
  mg_tls_ctx_opts_t to = {0};
  if (o) to = (mg_tls_ctx_opts_t){o->ca_file, o->cert_file, o->key_file, o->insecure_skip_verify};
  char key[MAX_KEY];
  int n = snprintf(key, sizeof key, "%s|%s|%s|%d", to.ca_file ? to.ca_file : "", to.cert_file ? to.cert_file : "",
                   to.key_file ? to.key_file : "", (int)to.insecure_skip_verify);
  if (n < 0 || (size_t)n >= sizeof key) return MG_EINVAL;
  for (tls_entry_t *e = c->tls_ctxs; e; e = e->next) {
    if (strcmp(e->key, key) == 0) {
      *out = e->ctx;
      return 0;
    }
  }
  mg_tls_ctx_t *ctx;
  int rc = mg_tls_ctx_new(false, &to, &ctx, detail, detail_sz);
  if (rc) return rc;
  tls_entry_t *e = mg_calloc(1, sizeof *e);
  if (e) e->key = mg_strdup(key);
  if (!e || !e->key) {
    mg_free(e);
    mg_tls_ctx_free(ctx);
    return MG_ENOMEM;
  }
  e->ctx = ctx;
  e->next = c->tls_ctxs;
  c->tls_ctxs = e;
  *out = ctx;
  return 0;
}

/* Find or create the pool for a URL; the caller holds one reference. A
 * linear scan with a hash check: pools number in the hundreds at most. */
static int pool_get(mg_http_client_t *c, const url_t *u, const mg_http_tls_opts_t *o, pool_t **out, char *detail,
                    size_t detail_sz) {
  char host[MAX_HOST + 1], key[MAX_KEY];
  memcpy(host, u->host.p, u->host.n);
  host[u->host.n] = '\0';
  const char *sni = o && o->server_name ? o->server_name : host;
  int n = u->tls ? snprintf(key, sizeof key, "https|%s|%d|%s|%s|%s|%s|%d", host, u->port, sni,
                            o && o->ca_file ? o->ca_file : "", o && o->cert_file ? o->cert_file : "",
                            o && o->key_file ? o->key_file : "", o ? (int)o->insecure_skip_verify : 0)
                 : snprintf(key, sizeof key, "http|%s|%d", host, u->port);
  if (n < 0 || (size_t)n >= sizeof key) return MG_EINVAL;
  uint64_t hash = mg_hash64(key, (size_t)n, 0);
  for (link_t *l = c->pools.next; l != &c->pools; l = l->next) {
    pool_t *p = FROM_LINK(l, pool_t, link);
    if (p->hash == hash && strcmp(p->key, key) == 0) {
      p->refs++;
      *out = p;
      return 0;
    }
  }
  mg_tls_ctx_t *ctx = NULL;
  if (u->tls) {
    int rc = tls_ctx_get(c, o, &ctx, detail, detail_sz);
    if (rc) return rc;
  }
  pool_t *p = mg_calloc(1, sizeof *p);
  if (!p) return MG_ENOMEM;
  p->key = mg_strdup(key);
  p->host = mg_strdup(host);
  p->server_name = mg_strdup(sni);
  if (!p->key || !p->host || !p->server_name) {
    mg_free(p->key);
    mg_free(p->host);
    mg_free(p->server_name);
    mg_free(p);
    return MG_ENOMEM;
  }
  p->hash = hash;
  p->tls = u->tls;
  p->tls_ctx = ctx;
  p->port_num = u->port;
  snprintf(p->port, sizeof p->port, "%d", u->port);
  link_init(&p->idle);
  link_push(&c->pools, &p->link);
  p->refs = 1;
  *out = p;
  return 0;
}

static int build_head(mg_http_client_t *c, mg_buf_t *b, const char *method, const url_t *u,
                      const mg_http_request_t *req) {
  bool has_ua = false, has_ae = false;
  int rc = mg_buf_reserve(b, 512);
  if (rc == 0)
    rc = mg_buf_printf(b, "%s %s%.*s HTTP/1.1\r\nHost: %.*s\r\n", method,
                       u->target.n == 0 || u->target.p[0] == '?' ? "/" : "", (int)u->target.n, u->target.p,
                       (int)u->authority.n, u->authority.p);
  for (size_t i = 0; i < req->nheaders && rc == 0; i++) {
    const mg_http_header_t *h = &req->headers[i];
    has_ua = has_ua || strcasecmp(h->name, "user-agent") == 0;
    has_ae = has_ae || strcasecmp(h->name, "accept-encoding") == 0;
    rc = mg_buf_printf(b, "%s: %s\r\n", h->name, h->value);
  }
  if (rc == 0 && !has_ua) rc = mg_buf_printf(b, "User-Agent: %s\r\n", c->user_agent);
  if (rc == 0 && req->accept_gzip && !has_ae) rc = mg_buf_append_str(b, "Accept-Encoding: gzip\r\n");
  if (rc == 0) rc = mg_buf_append_str(b, "Connection: keep-alive\r\n");
  /* RFC 9110 8.6: methods that define a body get a length even when empty. */
  bool wants_body = strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;
  if (rc == 0 && (req->body_len || wants_body)) rc = mg_buf_printf(b, "Content-Length: %zu\r\n", req->body_len);
  if (rc == 0) rc = mg_buf_append_str(b, "\r\n");
  return rc;
}

int mg_http_client_request(mg_http_client_t *c, const mg_http_request_t *req, mg_http_done_cb cb, void *ud,
                           mg_http_req_t **handle) {
  if (handle) *handle = NULL;
  if (!c || !req || !req->url || !cb || (req->body_len && !req->body)) return MG_EINVAL;
  if (c->closing) return MG_ECLOSED;
  const char *method = req->method ? req->method : "GET";
  url_t u;
  if (url_parse(req->url, &u) != 0 || !mg_http_is_token(method)) return MG_EINVAL;
  for (size_t i = 0; i < req->nheaders; i++) {
    const mg_http_header_t *h = &req->headers[i];
    if (!mg_http_is_token(h->name) || !mg_http_is_value(h->value) || is_managed(h->name)) return MG_EINVAL;
  }
  mg_http_req_t *r = mg_calloc(1, sizeof *r);
  if (!r) return MG_ENOMEM;
  mg_buf_init(&r->head, MAX_REQUEST_HEAD);
  mg_buf_init(&r->own_body, 0);
  int rc = build_head(c, &r->head, method, &u, req);
  char detail[sizeof r->detail] = "";
  if (rc == 0) rc = pool_get(c, &u, req->tls, &r->pool, detail, sizeof detail);
  if (rc != 0 && rc != MG_ETLS) {
    mg_buf_cleanup_secret(&r->head); /* holds Authorization and X-Amz-Security-Token */
    mg_free(r);
    return rc == MG_ETOOBIG ? MG_EINVAL : rc;
  }
  r->cli = c;
  r->cb = cb;
  r->on_body = req->on_body;
  r->truncate_2xx = req->truncate_2xx_body;
  r->ud = ud;
  r->body = req->body;
  r->body_len = req->body_len;
  r->body_out = req->body_out;
  r->timeout_ms = req->timeout_ms ? req->timeout_ms : DEFAULT_TIMEOUT_MS;
  r->connect_timeout_ms = req->connect_timeout_ms ? req->connect_timeout_ms : r->timeout_ms;
  uint64_t now = uv_now(c->loop);
  r->deadline = now + r->timeout_ms;
  r->connect_deadline = now + r->connect_timeout_ms;
  r->max_body = req->max_body ? req->max_body : DEFAULT_MAX_BODY;
  r->max_header_bytes = req->max_header_bytes;
  r->parse_flags = (req->accept_gzip ? MG_HTTP_GUNZIP : 0) | (strcmp(method, "HEAD") == 0 ? MG_HTTP_HEAD_RESPONSE : 0);
  link_init(&r->link);
  c->stats.requests++;
  if (rc == MG_ETLS) {
    req_defer(r, MG_ETLS, "%s", detail); /* unreadable CA or client certificate */
  } else {
    r->state = R_PENDING;
    link_push(&c->pending, &r->link);
    schedule(c);
  }
  if (handle) *handle = r;
  return 0;
}

void mg_http_client_cancel(mg_http_req_t *r) {
  if (!r) return;
  switch (r->state) {
  case R_PENDING:
    req_defer(r, MG_ECANCELED, "canceled");
    break;
  case R_ACTIVE: {
    conn_t *conn = r->conn;
    conn_detach(conn);
    conn_close(conn); /* a half-read response cannot be resumed */
    req_defer(r, MG_ECANCELED, "canceled");
    break;
  }
  case R_DONE:
    r->err = MG_ECANCELED;
    snprintf(r->detail, sizeof r->detail, "canceled");
    break;
  case R_CALLBACK:
    break;
  }
}

mg_http_client_t *mg_http_client_new(uv_loop_t *loop, const mg_http_client_opts_t *opts) {
  mg_http_client_t *c = mg_calloc(1, sizeof *c);
  if (!c) return NULL;
  const char *ua = opts && opts->user_agent ? opts->user_agent : "moongate/" MG_VERSION;
  c->user_agent = mg_http_is_value(ua) ? mg_strdup(ua) : NULL;
  c->rbuf = mg_malloc(READ_BUF_SIZE);
  if (!c->user_agent || !c->rbuf) {
    mg_free(c->user_agent);
    mg_free(c->rbuf);
    mg_free(c);
    return NULL;
  }
  c->loop = loop;
  c->max_idle = opts && opts->max_idle_per_host ? opts->max_idle_per_host : DEFAULT_MAX_IDLE;
  c->idle_timeout_ms = opts && opts->idle_timeout_ms ? opts->idle_timeout_ms : DEFAULT_IDLE_TIMEOUT_MS;
  link_init(&c->pools);
  link_init(&c->conns);
  link_init(&c->pending);
  link_init(&c->done);
  uv_idle_init(loop, &c->idle);
  c->idle.data = c;
  return c;
}

void mg_http_client_free(mg_http_client_t *c) {
  if (!c || c->closing) return;
  c->closing = true;
  while (!link_empty(&c->pending))
    req_defer(FROM_LINK(c->pending.next, mg_http_req_t, link), MG_ECANCELED, "client closed");
  for (link_t *l = c->conns.next; l != &c->conns; l = l->next) {
    conn_t *conn = FROM_LINK(l, conn_t, link);
    mg_http_req_t *r = conn_detach(conn);
    conn_close(conn);
    if (r) req_defer(r, MG_ECANCELED, "client closed");
  }
  schedule(c); /* runs the callbacks, then closes the idle handle */
}

void mg_http_client_get_stats(const mg_http_client_t *c, mg_http_client_stats_t *out) { *out = c->stats; }

const char *mg_http_response_header(const mg_http_response_t *r, const char *name) {
  return r && r->priv_ ? mg_http_parser_header(r->priv_, name) : NULL;
}
