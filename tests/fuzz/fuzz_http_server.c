/* libFuzzer driver for mg_http_server, the request side of moongate's own
 * endpoints: each input is written as raw bytes into a fresh loopback
 * connection to a real server on a libuv loop, then half-closed; the
 * server's whole answer is read back until it closes.
 *
 * The input is also parsed here with mg_http's request parser under the
 * server's limits, which predicts what the server must answer: one response
 * per complete request, in order, until a request without keep-alive; after
 * a malformed or oversized request exactly one 400/413/431 and the end; a
 * request cut by the half-close gets nothing. The answer is parsed back
 * with the response parser (HEAD answers without a body) and must match:
 * the status a route gives (404 unknown path, 405 wrong method, the
 * handlers' own), /echo returns the request body byte for byte, nothing
 * follows the last response. Aborts on the first broken invariant. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "mg_buf.h"
#include "mg_err.h"
#include "mg_http.h"
#include "mg_http_server.h"
#include "mg_log.h"

#define ENSURE(c)                                                                                                      \
  do {                                                                                                                 \
    if (!(c)) {                                                                                                        \
      fprintf(stderr, "fuzz_http_server: invariant failed: %s (line %d)\n", #c, __LINE__);                             \
      abort();                                                                                                         \
    }                                                                                                                  \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Small limits so 413 and 431 are reachable. */
#define MAX_HEADER_BYTES 1024
#define MAX_BODY 2048
#define MAX_IN_BYTES (32 * 1024)
#define MAX_REQUESTS 64
#define MAX_ANSWER (4 * 1024 * 1024)
#define MAX_LOOP_TURNS 100000

static uv_loop_t loop;
static mg_http_server_t *server;
static int port;

/* ---- routes ---- */

/* Any method: the body back, the method and User-Agent as headers. */
static void h_echo(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  (void)ud;
  mg_buf_append(&resp->body, req->body.p, req->body.n);
  mg_http_sresp_header(resp, "X-Method", req->method);
  const char *ua = mg_http_sreq_header(req, "user-agent");
  if (ua) mg_http_sresp_header(resp, "X-Agent", ua);
}

/* GET: the query back; a query "code=NNN" (200..599) picks the status. */
static void h_status(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  (void)ud;
  if (req->query.n == 8 && memcmp(req->query.p, "code=", 5) == 0) {
    int code = atoi(req->query.p + 5);
    if (code >= 200 && code <= 599) resp->status = code;
  }
  mg_buf_printf(&resp->body, "query=%.*s\n", (int)req->query.n, req->query.p);
}

/* POST: 401 unless "Authorization: Bearer t0ken", like /-/reload. */
static void h_reload(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  (void)ud;
  const char *auth = mg_http_sreq_header(req, "authorization");
  if (!auth || strcmp(auth, "Bearer t0ken") != 0) {
    resp->status = 401;
    mg_http_sresp_header(resp, "WWW-Authenticate", "Bearer");
  }
  mg_buf_append_str(&resp->body, resp->status == 200 ? "reloaded\n" : "unauthorized\n");
}

static int init(void) {
  mg_log_set_level(getenv("FUZZ_HTTP_SERVER_LOG") ? MG_LOG_DEBUG : MG_LOG_OFF);
  ENSURE(uv_loop_init(&loop) == 0);
  mg_http_server_opts_t o = {.max_header_bytes = MAX_HEADER_BYTES, .max_body = MAX_BODY};
  int err = 0;
  server = mg_http_server_new(&loop, "127.0.0.1:0", &o, &err);
  ENSURE(server && err == 0);
  ENSURE(mg_http_server_route(server, NULL, "/echo", h_echo, NULL) == 0);
  ENSURE(mg_http_server_route(server, "GET", "/status", h_status, NULL) == 0);
  ENSURE(mg_http_server_route(server, "POST", "/-/reload", h_reload, NULL) == 0);
  port = mg_http_server_port(server);
  return 0;
}

/* ---- what the server must answer, from our own parse of the input ---- */

typedef struct expect {
  int status;
  bool head;
  bool echo;
  char body[MAX_BODY + 1]; /* the request body, for /echo */
  size_t body_len;
} expect_t;

typedef struct plan {
  expect_t req[MAX_REQUESTS];
  size_t n;
} plan_t;

/* The status the server's routing and the handlers above give a complete
 * request; *echo: its body comes back. */
static int route_status(const mg_http_parser_t *rp, bool *echo) {
  const char *method = mg_http_parser_method(rp);
  mg_str_t url = mg_http_parser_url(rp);
  const char *q = memchr(url.p, '?', url.n);
  mg_str_t path = q ? mg_str_n(url.p, (size_t)(q - url.p)) : url;
  mg_str_t query = q ? mg_str_n(q + 1, url.n - (size_t)(q + 1 - url.p)) : mg_str_n("", 0);
  bool head = strcmp(method, "HEAD") == 0;
  *echo = false;
  if (mg_str_eq_c(path, "/echo")) {
    *echo = !head;
    return 200;
  }
  if (mg_str_eq_c(path, "/status")) {
    if (strcmp(method, "GET") != 0 && !head) return 405;
    if (query.n == 8 && memcmp(query.p, "code=", 5) == 0) {
      int code = atoi(query.p + 5);
      if (code >= 200 && code <= 599) return code;
    }
    return 200;
  }
  if (mg_str_eq_c(path, "/-/reload")) {
    if (strcmp(method, "POST") != 0) return 405;
    const char *auth = mg_http_parser_header(rp, "authorization");
    return auth && strcmp(auth, "Bearer t0ken") == 0 ? 200 : 401;
  }
  return 404;
}

/* Parse the input as the server will, into the responses it must send
 * (the last may be an error status). */
static void predict(const char *in, size_t n, plan_t *p) {
  mg_http_parser_t *rp = mg_http_parser_new(MG_HTTP_REQUEST);
  ENSURE(rp);
  mg_buf_t body;
  mg_buf_init(&body, MAX_BODY);
  p->n = 0;
  size_t off = 0;
  while (off < n && p->n < MAX_REQUESTS) {
    mg_http_parser_reset(rp, &body, MAX_BODY, MAX_HEADER_BYTES, 0);
    size_t used = 0;
    int rc = mg_http_parser_feed(rp, in + off, n - off, &used);
    off += used;
    expect_t *e = &p->req[p->n];
    memset(e, 0, offsetof(expect_t, body));
    e->body_len = 0;
    if (rc < 0) {
      ENSURE(rc == MG_EHTTP || rc == MG_ETOOBIG);
      e->status = rc == MG_EHTTP ? 400 : mg_http_parser_headers_done(rp) ? 413 : 431;
      p->n++;
      break;
    }
    if (rc == MG_HTTP_MORE) break; /* cut by the half-close: no answer */
    e->head = strcmp(mg_http_parser_method(rp), "HEAD") == 0;
    e->status = route_status(rp, &e->echo);
    if (e->echo) {
      ENSURE(body.len <= MAX_BODY);
      if (body.len) memcpy(e->body, body.data, body.len);
      e->body_len = body.len;
    }
    p->n++;
    if (!mg_http_parser_keep_alive(rp)) break;
  }
  mg_buf_cleanup(&body);
  mg_http_parser_free(rp);
}

/* ---- the connection ---- */

typedef struct client {
  int fd;
  uv_poll_t poll;
  mg_buf_t answer;
  bool eof, closed;
} client_t;

static void on_client_readable(uv_poll_t *h, int status, int events) {
  client_t *c = h->data;
  (void)events;
  if (status < 0) {
    c->eof = true;
    return;
  }
  for (;;) {
    char buf[16384];
    ssize_t r = recv(c->fd, buf, sizeof buf, 0);
    if (r > 0) {
      ENSURE(c->answer.len + (size_t)r <= MAX_ANSWER);
      ENSURE(mg_buf_append(&c->answer, buf, (size_t)r) == 0);
      continue;
    }
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (r < 0 && errno == EINTR) continue;
    c->eof = true; /* 0: closed; ECONNRESET: closed after a reject */
    return;
  }
}

static void on_poll_close(uv_handle_t *h) {
  client_t *c = h->data;
  c->closed = true;
}

static void talk(const char *in, size_t n, mg_buf_t *answer) {
  client_t c = {.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0)};
  ENSURE(c.fd >= 0);
  mg_buf_init(&c.answer, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int rc = connect(c.fd, (struct sockaddr *)&sa, sizeof sa);
  if (rc != 0 && errno == EADDRNOTAVAIL) {
    fprintf(stderr, "fuzz_http_server: out of loopback ports "
                    "(net.ipv4.tcp_tw_reuse must allow reuse)\n");
    abort();
  }
  ENSURE(rc == 0 || errno == EINPROGRESS);
  /* Loopback connects complete at once; the socket buffers hold the whole
   * input (at most 32 KiB), so one blocking-free send suffices. */
  size_t sent = 0;
  for (int tries = 0; sent < n && tries < 1000; tries++) {
    ssize_t w = send(c.fd, in + sent, n - sent, MSG_NOSIGNAL);
    if (w > 0) sent += (size_t)w;
    else if (w < 0 && errno != EAGAIN && errno != EINTR && errno != ENOTCONN) break;
    if (sent < n) uv_run(&loop, UV_RUN_NOWAIT);
  }
  shutdown(c.fd, SHUT_WR);
  ENSURE(uv_poll_init(&loop, &c.poll, c.fd) == 0);
  c.poll.data = &c;
  ENSURE(uv_poll_start(&c.poll, UV_READABLE | UV_DISCONNECT, on_client_readable) == 0);
  for (int turns = 0; !c.eof; turns++) {
    ENSURE(turns < MAX_LOOP_TURNS); /* the server must close after the half-close */
    uv_run(&loop, UV_RUN_ONCE);
  }
  uv_close((uv_handle_t *)&c.poll, on_poll_close);
  while (!c.closed) uv_run(&loop, UV_RUN_ONCE);
  close(c.fd);
  *answer = c.answer;
}

/* ---- the check ---- */

static void check_answer(const plan_t *p, const mg_buf_t *answer, bool all_sent) {
  mg_http_parser_t *rp = mg_http_parser_new(MG_HTTP_RESPONSE);
  ENSURE(rp);
  mg_buf_t body;
  mg_buf_init(&body, 0);
  const char *a = answer->data ? answer->data : "";
  size_t off = 0;
  for (size_t i = 0; i < p->n; i++) {
    const expect_t *e = &p->req[i];
    mg_http_parser_reset(rp, &body, 0, 0, e->head ? MG_HTTP_HEAD_RESPONSE : 0);
    size_t used = 0;
    int rc = mg_http_parser_feed(rp, a + off, answer->len - off, &used);
    if (rc != MG_HTTP_COMPLETE) {
      fprintf(stderr, "response %zu of %zu: rc=%d (%s) at byte %zu of %zu\n", i + 1, p->n, rc,
              rc < 0 ? mg_http_parser_error(rp) : "incomplete", off, answer->len);
    }
    ENSURE(rc == MG_HTTP_COMPLETE);
    off += used;
    int st = mg_http_parser_status(rp);
    ENSURE(st == e->status);
    if (e->echo) ENSURE(body.len == e->body_len && (e->body_len == 0 || memcmp(body.data, e->body, e->body_len) == 0));
    if (e->head) ENSURE(body.len == 0);
    /* Only the last expected response may close the connection. */
    if (i + 1 < p->n) ENSURE(mg_http_parser_keep_alive(rp));
  }
  /* Nothing after the last response: a request cut short gets nothing, or
   * only the interim answer to its "Expect: 100-continue". */
  static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
  if (all_sent)
    ENSURE(off == answer->len || (answer->len - off == sizeof cont - 1 && memcmp(a + off, cont, sizeof cont - 1) == 0));
  mg_buf_cleanup(&body);
  mg_http_parser_free(rp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready = -1;
  if (ready < 0) ready = init();
  if (size > MAX_IN_BYTES) return 0;
  static plan_t plan;
  predict((const char *)data, size, &plan);
  mg_buf_t answer;
  talk((const char *)data, size, &answer);
  if (getenv("FUZZ_HTTP_SERVER_LOG"))
    fprintf(stderr, "expected %zu responses; answer (%zu bytes):\n%.*s\n", plan.n, answer.len, (int)answer.len,
            answer.data ? answer.data : "");
  check_answer(&plan, &answer, plan.n < MAX_REQUESTS);
  mg_buf_cleanup(&answer);
  return 0;
}
