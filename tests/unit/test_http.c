/* Tests for mg_http (parser), mg_tls, mg_http_client and mg_http_server on
 * loopback: each network test runs its own loop and ends with uv_loop_close
 * returning 0. Hostile peers are raw libuv servers and clients below; TLS
 * certificates are made at run time in a temporary directory. */
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>
#include <zlib.h>

#include "mg_err.h"
#include "mg_http.h"
#include "mg_http_client.h"
#include "mg_http_server.h"
#include "mg_mem.h"
#include "mg_test.h"

/* ---------------------------------------------------------------- helpers */

/* libuv writes with plain write(2): a peer that closed first would raise
 * SIGPIPE. The daemon ignores it at startup; so must the tests. */
__attribute__((constructor)) static void ignore_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }

static size_t gzip_into(const void *src, size_t n, mg_buf_t *out) {
  z_stream z = {0};
  if (deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) return 0;
  size_t start = out->len;
  if (mg_buf_reserve(out, deflateBound(&z, (uLong)n)) != 0) return 0;
  z.next_in = (Bytef *)(uintptr_t)src;
  z.avail_in = (uInt)n;
  z.next_out = (Bytef *)out->data + out->len;
  z.avail_out = (uInt)(out->cap - out->len);
  int rc = deflate(&z, Z_FINISH);
  out->len += z.total_out;
  deflateEnd(&z);
  return rc == Z_STREAM_END ? out->len - start : 0;
}

/* Feed a message in pieces of `step` bytes; returns the final feed result. */
static int feed_steps(mg_http_parser_t *p, const char *s, size_t n, size_t step, size_t *consumed) {
  size_t off = 0;
  int rc = MG_HTTP_MORE;
  while (off < n) {
    size_t len = n - off < step ? n - off : step, used = 0;
    rc = mg_http_parser_feed(p, s + off, len, &used);
    off += used;
    if (rc != MG_HTTP_MORE) break;
  }
  if (consumed) *consumed = off;
  return rc;
}

/* ------------------------------------------------------------ parser tests */

MG_TEST(parser_response_byte_by_byte) {
  static const char msg[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain \r\nX-Empty:\r\n"
                            "Content-Length: 11\r\n\r\nhello world";
  mg_http_parser_t *p = mg_http_parser_new(MG_HTTP_RESPONSE);
  mg_buf_t body;
  mg_buf_init(&body, 0);
  REQUIRE(p);
  mg_http_parser_reset(p, &body, 0, 0, 0);
  CHECK(!mg_http_parser_started(p));
  CHECK_INT(feed_steps(p, msg, sizeof msg - 1, 1, NULL), MG_HTTP_COMPLETE);
  CHECK_INT(mg_http_parser_status(p), 200);
  CHECK_STR(mg_http_parser_header(p, "content-type"), "text/plain");
  CHECK_STR(mg_http_parser_header(p, "X-EMPTY"), "");
  CHECK(mg_http_parser_header(p, "missing") == NULL);
  CHECK_MEM(body.data, body.len, "hello world", 11);
  CHECK(mg_http_parser_keep_alive(p));
  mg_buf_cleanup(&body);
  mg_http_parser_free(p);
}

MG_TEST(parser_chunked_trailers_and_interim) {
  static const char msg[] = "HTTP/1.1 100 Continue\r\n\r\n"
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
  mg_http_parser_t *p = mg_http_parser_new(MG_HTTP_RESPONSE);
  mg_buf_t body;
  mg_buf_init(&body, 0);
  mg_http_parser_reset(p, &body, 0, 0, 0);
  size_t used = 0;
  CHECK_INT(feed_steps(p, msg, sizeof msg - 1, 7, &used), MG_HTTP_COMPLETE);
  CHECK_INT(used, sizeof msg - 1);
  CHECK_INT(mg_http_parser_status(p), 200);
  CHECK_MEM(body.data, body.len, "hello world", 11);
  CHECK_STR(mg_http_parser_header(p, "x-trailer"), "t");
  mg_buf_cleanup(&body);
  mg_http_parser_free(p);
}

MG_TEST(parser_gzip_members_and_limits) {
  char plain[5000];
  for (size_t i = 0; i < sizeof plain; i++) plain[i] = (char)('a' + i % 23);
  mg_buf_t msg, body;
  mg_buf_init(&msg, 0);
  mg_buf_init(&body, 0);
  mg_buf_append_str(&msg, "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n");
  size_t head = msg.len;
  REQUIRE(gzip_into(plain, sizeof plain, &msg) > 0);
  REQUIRE(gzip_into("tail", 4, &msg) > 0); /* a second gzip member */
  mg_http_parser_t *p = mg_http_parser_new(MG_HTTP_RESPONSE);

  mg_http_parser_reset(p, &body, 0, 0, MG_HTTP_GUNZIP);
  CHECK_INT(feed_steps(p, msg.data, msg.len, 333, NULL), MG_HTTP_MORE);
  CHECK_INT(mg_http_parser_finish(p), MG_HTTP_COMPLETE); /* delimited by the close */
  CHECK_INT(body.len, sizeof plain + 4);
  CHECK(body.len == sizeof plain + 4 && memcmp(body.data, plain, sizeof plain) == 0);
  CHECK_MEM(body.data + sizeof plain, 4, "tail", 4);

  /* The limit applies to the inflated size. */
  mg_http_parser_reset(p, &body, 4096, 0, MG_HTTP_GUNZIP);
  CHECK_INT(feed_steps(p, msg.data, msg.len, 4096, NULL), MG_ETOOBIG);
  CHECK(strstr(mg_http_parser_error(p), "over limit (4096 bytes)") != NULL);
  CHECK(body.len <= 4096);

  /* Exactly at the limit is fine. */
  mg_http_parser_reset(p, &body, sizeof plain + 4, 0, MG_HTTP_GUNZIP);
  CHECK_INT(feed_steps(p, msg.data, msg.len, msg.len, NULL), MG_HTTP_MORE);
  CHECK_INT(mg_http_parser_finish(p), MG_HTTP_COMPLETE);

  /* Without MG_HTTP_GUNZIP the bytes pass through. */
  mg_http_parser_reset(p, &body, 0, 0, 0);
  feed_steps(p, msg.data, msg.len, msg.len, NULL);
  CHECK_INT(mg_http_parser_finish(p), MG_HTTP_COMPLETE);
  CHECK_INT(body.len, msg.len - head);

  /* Corrupt and truncated streams. */
  msg.data[head + 12] ^= 0x55;
  mg_http_parser_reset(p, &body, 0, 0, MG_HTTP_GUNZIP);
  int rc = feed_steps(p, msg.data, msg.len, msg.len, NULL);
  if (rc == MG_HTTP_MORE) rc = mg_http_parser_finish(p);
  CHECK_INT(rc, MG_EGZIP);
  msg.data[head + 12] ^= 0x55;
  mg_http_parser_reset(p, &body, 0, 0, MG_HTTP_GUNZIP);
  CHECK_INT(feed_steps(p, msg.data, head + 40, 1000, NULL), MG_HTTP_MORE);
  CHECK_INT(mg_http_parser_finish(p), MG_EGZIP);

  mg_http_parser_free(p);
  mg_buf_cleanup(&msg);
  mg_buf_cleanup(&body);
}

MG_TEST(parser_limits_and_errors) {
  mg_http_parser_t *p = mg_http_parser_new(MG_HTTP_RESPONSE);
  mg_buf_t body;
  mg_buf_init(&body, 0);
  /* A Content-Length over the limit fails before any body byte. */
  static const char big[] = "HTTP/1.1 200 OK\r\nContent-Length: 52428800\r\n\r\nxx";
  mg_http_parser_reset(p, &body, 10 << 20, 0, 0);
  CHECK_INT(feed_steps(p, big, sizeof big - 1, 64, NULL), MG_ETOOBIG);
  CHECK_STR(mg_http_parser_error(p), "response body over limit (10485760 bytes)");
  CHECK(body.cap < 4096);

  char hdrs[600];
  int n = snprintf(hdrs, sizeof hdrs, "HTTP/1.1 200 OK\r\nX-Long: %0400d\r\n\r\n", 7);
  mg_http_parser_reset(p, &body, 0, 256, 0);
  CHECK_INT(feed_steps(p, hdrs, (size_t)n, 100, NULL), MG_ETOOBIG);
  CHECK_STR(mg_http_parser_error(p), "response headers over limit (256 bytes)");

  /* Header count limit. */
  mg_buf_t many;
  mg_buf_init(&many, 0);
  mg_buf_append_str(&many, "HTTP/1.1 200 OK\r\n");
  for (int i = 0; i <= MG_HTTP_MAX_HEADERS; i++) mg_buf_printf(&many, "X-%d: v\r\n", i);
  mg_buf_append_str(&many, "\r\n");
  mg_http_parser_reset(p, &body, 0, 0, 0);
  CHECK_INT(feed_steps(p, many.data, many.len, many.len, NULL), MG_ETOOBIG);
  mg_buf_cleanup(&many);

  /* Whitespace padding counts too, even though no callback sees it. */
  mg_buf_t pad;
  mg_buf_init(&pad, 0);
  mg_buf_append_str(&pad, "HTTP/1.1 200 OK\r\nX-A: a");
  for (int i = 0; i < 4000; i++) mg_buf_append_str(&pad, " ");
  mg_http_parser_reset(p, &body, 0, 512, 0);
  CHECK_INT(feed_steps(p, pad.data, pad.len, 100, NULL), MG_ETOOBIG);
  mg_buf_cleanup(&pad);

  static const char garbage[] = "garbage\r\n\r\n";
  mg_http_parser_reset(p, &body, 0, 0, 0);
  CHECK_INT(feed_steps(p, garbage, sizeof garbage - 1, 100, NULL), MG_EHTTP);
  CHECK(strstr(mg_http_parser_error(p), "malformed response") != NULL);

  static const char cut[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
  mg_http_parser_reset(p, &body, 0, 0, 0);
  CHECK_INT(feed_steps(p, cut, sizeof cut - 1, 100, NULL), MG_HTTP_MORE);
  CHECK_INT(mg_http_parser_finish(p), MG_EHTTP);
  CHECK_STR(mg_http_parser_error(p), "connection closed before the response was complete");

  /* HEAD and 204 responses have no body whatever the headers say. */
  static const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
  mg_http_parser_reset(p, &body, 0, 0, MG_HTTP_HEAD_RESPONSE);
  size_t used;
  CHECK_INT(mg_http_parser_feed(p, head, sizeof head - 1, &used), MG_HTTP_COMPLETE);
  CHECK_INT(used, sizeof head - 1);
  static const char nc[] = "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1";
  mg_http_parser_reset(p, &body, 0, 0, 0);
  CHECK_INT(mg_http_parser_feed(p, nc, sizeof nc - 1, &used), MG_HTTP_COMPLETE);
  CHECK_INT(used, sizeof nc - 1 - 8);
  /* Nor do 304 and 1xx: a Content-Length there describes the resource
   * (RFC 9110 8.6), the next bytes are the next response. */
  static const char nm[] = "HTTP/1.1 304 Not Modified\r\nContent-Length: 15\r\n\r\nHTTP/1.1";
  mg_http_parser_reset(p, &body, 0, 0, 0);
  CHECK_INT(mg_http_parser_feed(p, nm, sizeof nm - 1, &used), MG_HTTP_COMPLETE);
  CHECK_INT(used, sizeof nm - 1 - 8);
  CHECK_INT(mg_http_parser_status(p), 304);
  CHECK_INT(body.len, 0);
  static const char nc2[] = "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nHTTP/1.1";
  mg_http_parser_reset(p, &body, 0, 0, 0);
  CHECK_INT(mg_http_parser_feed(p, nc2, sizeof nc2 - 1, &used), MG_HTTP_COMPLETE);
  CHECK_INT(used, sizeof nc2 - 1 - 8);
  CHECK_INT(body.len, 0);
  mg_buf_cleanup(&body);
  mg_http_parser_free(p);
}

MG_TEST(parser_pipelined_requests) {
  static const char two[] = "POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                            "GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
  mg_http_parser_t *p = mg_http_parser_new(MG_HTTP_REQUEST);
  mg_buf_t body;
  mg_buf_init(&body, 100);
  mg_http_parser_reset(p, &body, 0, 0, 0);
  size_t used = 0;
  CHECK_INT(mg_http_parser_feed(p, two, sizeof two - 1, &used), MG_HTTP_COMPLETE);
  CHECK_STR(mg_http_parser_method(p), "POST");
  mg_str_t url = mg_http_parser_url(p);
  CHECK_MEM(url.p, url.n, "/a?x=1", 6);
  CHECK_MEM(body.data, body.len, "abc", 3);
  CHECK(mg_http_parser_keep_alive(p));
  mg_http_parser_reset(p, &body, 0, 0, 0);
  size_t used2 = 0;
  CHECK_INT(mg_http_parser_feed(p, two + used, sizeof two - 1 - used, &used2), MG_HTTP_COMPLETE);
  CHECK_INT(used + used2, sizeof two - 1);
  CHECK_STR(mg_http_parser_method(p), "GET");
  CHECK_STR(mg_http_parser_header(p, "host"), "h");
  CHECK(!mg_http_parser_keep_alive(p));
  CHECK_INT(body.len, 0);
  mg_buf_cleanup(&body);
  mg_http_parser_free(p);
}

MG_TEST(token_and_value_checks) {
  CHECK(mg_http_is_token("X-Scope-OrgID"));
  CHECK(!mg_http_is_token(""));
  CHECK(!mg_http_is_token("Bad Name"));
  CHECK(!mg_http_is_token("a:b"));
  CHECK(mg_http_is_value("Bearer abc"));
  CHECK(!mg_http_is_value("x\r\nInjected: 1"));
}

/* ------------------------------------------------------------ loop harness */

static void tick(uv_timer_t *t) { (void)t; }

/* Run the loop until *counter reaches target or max_ms pass; a ticking
 * timer keeps UV_RUN_ONCE from blocking forever. */
static void run_until(uv_loop_t *loop, const int *counter, int target, uint64_t max_ms) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, tick, 20, 20);
  uv_update_time(loop);
  uint64_t start = uv_now(loop);
  while (*counter < target && uv_now(loop) - start < max_ms) uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

/* Let everything close, then the loop must close cleanly. */
static void finish_loop(uv_loop_t *loop) {
  uv_run(loop, UV_RUN_DEFAULT);
  CHECK_INT(uv_loop_close(loop), 0);
}

typedef struct result {
  int done, err, status, sync_guard;
  bool truncated;
  char detail[256];
  char hdr[128];
  const char *hdr_name;
  mg_buf_t body;
  uint64_t at_ms;
} result_t;

static uv_loop_t *cur_loop;

static void on_done(void *ud, int err, const char *detail, mg_http_response_t *resp) {
  result_t *r = ud;
  CHECK_INT(r->sync_guard, 0); /* never called from inside mg_http_client_request */
  r->done++;
  r->err = err;
  r->at_ms = uv_now(cur_loop);
  snprintf(r->detail, sizeof r->detail, "%s", detail ? detail : "(null)");
  r->status = resp ? resp->status : 0;
  r->truncated = resp && resp->body_truncated;
  r->hdr[0] = '\0';
  mg_buf_reset(&r->body);
  if (resp) {
    const char *h = r->hdr_name ? mg_http_response_header(resp, r->hdr_name) : NULL;
    snprintf(r->hdr, sizeof r->hdr, "%s", h ? h : "");
    mg_buf_append(&r->body, resp->body->data ? resp->body->data : "", resp->body->len);
  }
}

static void result_init(result_t *r) {
  memset(r, 0, sizeof *r);
  mg_buf_init(&r->body, 0);
}

/* Start a request and wait for its callback. */
static void do_request(uv_loop_t *loop, mg_http_client_t *c, const mg_http_request_t *req, result_t *r) {
  int before = r->done;
  r->sync_guard = 1;
  int rc = mg_http_client_request(c, req, on_done, r, NULL);
  r->sync_guard = 0;
  CHECK_INT(rc, 0);
  if (rc == 0) run_until(loop, &r->done, before + 1, 8000);
  CHECK_INT(r->done, before + 1);
}

static void url_for(char *out, size_t n, const char *scheme, const char *host, int port, const char *path) {
  snprintf(out, n, "%s://%s:%d%s", scheme, host, port, path);
}

/* ------------------------------------------------------- test HTTP server */

static void h_hello(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  mg_http_sresp_header(resp, "X-Test", "yes");
  mg_buf_append_str(&resp->body, "hello world");
}

static void h_echo(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  const char *in = mg_http_sreq_header(req, "x-in");
  mg_http_sresp_header(resp, "X-Out", in ? in : "-");
  mg_buf_append(&resp->body, req->body.p, req->body.n);
}

static void h_method(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  mg_buf_printf(&resp->body, "%s %.*s", req->method, (int)req->query.n, req->query.p);
  resp->status = 201;
}

/* A handler that writes a body into a 304: the server must not send it. */
static void h_not_modified(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  resp->status = 304;
  mg_buf_append_str(&resp->body, "never sent");
}

static void h_gzip(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  const mg_buf_t *payload = ud;
  mg_http_sresp_header(resp, "Content-Encoding", "gzip");
  gzip_into(payload->data, payload->len, &resp->body);
}

static void h_big(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  size_t n = *(const size_t *)ud;
  if (mg_buf_reserve(&resp->body, n) == 0) {
    memset(resp->body.data, 'x', n);
    resp->body.len = n;
  }
}

static void h_sni(void *ud, const mg_http_sreq_t *req, mg_http_sresp_t *resp) {
  const char *sni = mg_http_sreq_server_name(req);
  mg_buf_append_str(&resp->body, sni ? sni : "-");
}

static mg_http_server_t *test_server(uv_loop_t *loop, const char *addr, const mg_http_server_opts_t *o) {
  int err = 0;
  mg_http_server_t *s = mg_http_server_new(loop, addr, o, &err);
  CHECK_INT(err, 0);
  if (!s) return NULL;
  CHECK_INT(mg_http_server_route(s, "GET", "/hello", h_hello, NULL), 0);
  CHECK_INT(mg_http_server_route(s, "POST", "/echo", h_echo, NULL), 0);
  CHECK_INT(mg_http_server_route(s, NULL, "/any", h_method, NULL), 0);
  CHECK_INT(mg_http_server_route(s, "GET", "/sni", h_sni, NULL), 0);
  CHECK_INT(mg_http_server_route(s, "GET", "/not-modified", h_not_modified, NULL), 0);
  return s;
}

/* ------------------------------------------------------ client + server */

MG_TEST(server_routes_and_client_basics) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  cur_loop = &loop;
  mg_http_server_t *s = test_server(&loop, "127.0.0.1:0", NULL);
  REQUIRE(s);
  int port = mg_http_server_port(s);
  CHECK(port > 0);
  mg_http_client_t *c = mg_http_client_new(&loop, NULL);
  result_t r;
  result_init(&r);
  char url[128];

  r.hdr_name = "x-test";
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/hello");
  do_request(&loop, c, &(mg_http_request_t){.url = url}, &r);
  CHECK_INT(r.err, 0);
  CHECK_INT(r.status, 200);
  CHECK_MEM(r.body.data, r.body.len, "hello world", 11);
  CHECK_STR(r.hdr, "yes");

  url_for(url, sizeof url, "http", "127.0.0.1", port, "/nope");
  do_request(&loop, c, &(mg_http_request_t){.url = url}, &r);
  CHECK_INT(r.status, 404);

  r.hdr_name = "allow";
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/hello");
  do_request(&loop, c, &(mg_http_request_t){.method = "DELETE", .url = url}, &r);
  CHECK_INT(r.status, 405);
  CHECK_STR(r.hdr, "GET, HEAD");

  r.hdr_name = "content-length";
  do_request(&loop, c, &(mg_http_request_t){.method = "HEAD", .url = url}, &r);
  CHECK_INT(r.status, 200);
  CHECK_STR(r.hdr, "11");
  CHECK_INT(r.body.len, 0);

  url_for(url, sizeof url, "http", "127.0.0.1", port, "/any?q=1#frag");
  do_request(&loop, c, &(mg_http_request_t){.method = "PUT", .url = url}, &r);
  CHECK_INT(r.status, 201);
  CHECK_MEM(r.body.data, r.body.len, "PUT q=1", 7);

  /* POST a body bigger than one read; the echo comes back whole. */
  mg_buf_t big;
  mg_buf_init(&big, 0);
  for (int i = 0; i < 40000; i++) mg_buf_printf(&big, "%05d,", i);
  mg_http_header_t hdrs[] = {{"X-In", "v1"}, {"Content-Type", "text/plain"}};
  mg_buf_t out;
  mg_buf_init(&out, 0);
  r.hdr_name = "x-out";
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/echo");
  do_request(&loop, c,
             &(mg_http_request_t){.method = "POST", .url = url, .headers = hdrs, .nheaders = 2, .body = big.data,
                                  .body_len = big.len, .body_out = &out},
             &r);
  CHECK_INT(r.status, 200);
  CHECK_STR(r.hdr, "v1");
  CHECK(out.len == big.len && memcmp(out.data, big.data, big.len) == 0);

  /* Every request went over the first connection. */
  mg_http_client_stats_t st;
  mg_http_client_get_stats(c, &st);
  CHECK_U64(st.requests, 6);
  CHECK_U64(st.connections_opened, 1);
  CHECK_U64(st.connections_reused, 5);

  /* A 304 goes out without a body (RFC 9110 8.6) and is read as bodiless:
   * the next request on the same connection gets its own answer. */
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/not-modified");
  do_request(&loop, c, &(mg_http_request_t){.url = url}, &r);
  CHECK_INT(r.err, 0);
  CHECK_INT(r.status, 304);
  CHECK_INT(r.body.len, 0);
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/hello");
  do_request(&loop, c, &(mg_http_request_t){.url = url}, &r);
  CHECK_INT(r.status, 200);
  CHECK_MEM(r.body.data, r.body.len, "hello world", 11);
  mg_http_client_get_stats(c, &st);
  CHECK_U64(st.connections_opened, 1);

  /* Only 2xx bodies may be cut: an error's body keeps its limit. */
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/nope");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .max_body = 5, .truncate_2xx_body = true}, &r);
  CHECK_INT(r.err, MG_ETOOBIG);

  mg_buf_cleanup(&big);
  mg_buf_cleanup(&out);
  mg_buf_cleanup(&r.body);
  mg_http_client_free(c);
  mg_http_server_free(s);
  finish_loop(&loop);
}

MG_TEST(client_rejects_bad_requests_without_callback) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  mg_http_client_t *c = mg_http_client_new(&loop, NULL);
  result_t r;
  result_init(&r);
  const char *bad[] = {"ftp://h/", "http://", "http://user:pw@h/", "http://h:0/", "http://h:99999/",
                       "http://[::1/", "http://h/a b", "http://h/\r\nX: y", "http://:80/"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECK_INT(mg_http_client_request(c, &(mg_http_request_t){.url = bad[i]}, on_done, &r, NULL), MG_EINVAL);
  mg_http_header_t inj[] = {{"X-A", "1\r\nX-B: 2"}};
  CHECK_INT(mg_http_client_request(c, &(mg_http_request_t){.url = "http://h/", .headers = inj, .nheaders = 1},
                                   on_done, &r, NULL),
            MG_EINVAL);
  mg_http_header_t framing[] = {{"Content-Length", "5"}};
  CHECK_INT(mg_http_client_request(c, &(mg_http_request_t){.url = "http://h/", .headers = framing, .nheaders = 1},
                                   on_done, &r, NULL),
            MG_EINVAL);
  CHECK_INT(mg_http_client_request(c, &(mg_http_request_t){.method = "G T", .url = "http://h/"}, on_done, &r, NULL),
            MG_EINVAL);
  mg_http_client_free(c);
  finish_loop(&loop);
  CHECK_INT(r.done, 0);
  mg_buf_cleanup(&r.body);
}

MG_TEST(ipv6_and_dns) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  cur_loop = &loop;
  mg_http_server_t *s6 = test_server(&loop, "[::1]:0", NULL);
  mg_http_server_t *s4 = test_server(&loop, "127.0.0.1:0", NULL);
  REQUIRE(s6 && s4);
  mg_http_client_t *c = mg_http_client_new(&loop, NULL);
  result_t r;
  result_init(&r);
  char url[128];
  url_for(url, sizeof url, "http", "[::1]", mg_http_server_port(s6), "/hello");
  do_request(&loop, c, &(mg_http_request_t){.url = url}, &r);
  CHECK_INT(r.err, 0);
  CHECK_INT(r.status, 200);
  /* "localhost" goes through the resolver; if it answers ::1 first, the
   * client must move on to 127.0.0.1. */
  url_for(url, sizeof url, "http", "localhost", mg_http_server_port(s4), "/hello");
  do_request(&loop, c, &(mg_http_request_t){.url = url}, &r);
  CHECK_INT(r.err, 0);
  CHECK_INT(r.status, 200);
  do_request(&loop, c, &(mg_http_request_t){.url = "http://nonexistent.invalid/", .timeout_ms = 5000}, &r);
  CHECK_INT(r.err, MG_EDNS);
  CHECK(strncmp(r.detail, "resolve nonexistent.invalid: ", 29) == 0);
  mg_buf_cleanup(&r.body);
  mg_http_client_free(c);
  mg_http_server_free(s6);
  mg_http_server_free(s4);
  finish_loop(&loop);
}

MG_TEST(gzip_response_and_body_limits) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  cur_loop = &loop;
  mg_buf_t payload;
  mg_buf_init(&payload, 0);
  for (int i = 0; i < 20000; i++) mg_buf_printf(&payload, "metric_%d{a=\"b\"} %d\n", i % 100, i);
  size_t big_n = 50u << 20;
  mg_buf_t zeros;
  mg_buf_init(&zeros, 0);
  mg_buf_reserve(&zeros, big_n);
  memset(zeros.data, 0, big_n);
  zeros.len = big_n;

  mg_http_server_t *s = test_server(&loop, "127.0.0.1:0", &(mg_http_server_opts_t){0});
  REQUIRE(s);
  mg_http_server_route(s, "GET", "/gzip", h_gzip, &payload);
  mg_http_server_route(s, "GET", "/bomb", h_gzip, &zeros);
  mg_http_server_route(s, "GET", "/big", h_big, &big_n);
  mg_http_client_t *c = mg_http_client_new(&loop, NULL);
  int port = mg_http_server_port(s);
  result_t r;
  result_init(&r);
  char url[128];
  mg_buf_t out;
  mg_buf_init(&out, 0);

  r.hdr_name = "content-encoding";
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/gzip");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .accept_gzip = true, .body_out = &out}, &r);
  CHECK_INT(r.err, 0);
  CHECK_STR(r.hdr, "gzip");
  CHECK(out.len == payload.len && memcmp(out.data, payload.data, payload.len) == 0);

  /* 50 MB announced with Content-Length, 10 MB allowed: fails at the headers. */
  uint64_t t0 = uv_now(&loop);
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/big");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .max_body = 10u << 20, .body_out = &out}, &r);
  CHECK_INT(r.err, MG_ETOOBIG);
  CHECK_STR(r.detail, "response body over limit (10485760 bytes)");
  CHECK(out.cap <= (10u << 20));

  /* A gzip bomb: ~50 KB on the wire, 50 MB inflated. */
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/bomb");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .accept_gzip = true, .max_body = 10u << 20, .body_out = &out},
             &r);
  CHECK_INT(r.err, MG_ETOOBIG);
  CHECK(out.cap < (20u << 20)); /* the buffer doubles, but never towards 50 MB */
  CHECK(r.at_ms - t0 < 5000);

  /* A connection that failed is not reused. */
  mg_http_client_stats_t st;
  mg_http_client_get_stats(c, &st);
  CHECK_U64(st.connections_opened, 2);
  CHECK_U64(st.connections_reused, 1);

  mg_buf_cleanup(&out);
  mg_buf_cleanup(&r.body);
  mg_http_client_free(c);
  mg_http_server_free(s);
  finish_loop(&loop);
  mg_buf_cleanup(&payload);
  mg_buf_cleanup(&zeros);
}

MG_TEST(server_limits_and_cancel) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  cur_loop = &loop;
  mg_http_server_t *s =
      test_server(&loop, "127.0.0.1:0", &(mg_http_server_opts_t){.max_header_bytes = 1024, .max_body = 1000});
  REQUIRE(s);
  mg_http_client_t *c = mg_http_client_new(&loop, NULL);
  int port = mg_http_server_port(s);
  result_t r;
  result_init(&r);
  char url[128], value[2048];
  memset(value, 'v', sizeof value - 1);
  value[sizeof value - 1] = '\0';
  mg_http_header_t hdrs[] = {{"X-Big", value}};
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/hello");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .headers = hdrs, .nheaders = 1}, &r);
  CHECK_INT(r.err, 0);
  CHECK_INT(r.status, 431);
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/echo");
  do_request(&loop, c, &(mg_http_request_t){.method = "POST", .url = url, .body = value, .body_len = 1001}, &r);
  CHECK_INT(r.status, 413);
  do_request(&loop, c, &(mg_http_request_t){.method = "POST", .url = url, .body = value, .body_len = 1000}, &r);
  CHECK_INT(r.status, 200);
  CHECK_INT(r.body.len, 1000);

  /* Cancel: the callback still runs once, deferred, with MG_ECANCELED. */
  mg_http_req_t *h = NULL;
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/hello");
  CHECK_INT(mg_http_client_request(c, &(mg_http_request_t){.url = url}, on_done, &r, &h), 0);
  int before = r.done;
  mg_http_client_cancel(h);
  CHECK_INT(r.done, before);
  run_until(&loop, &r.done, before + 1, 2000);
  CHECK_INT(r.done, before + 1);
  CHECK_INT(r.err, MG_ECANCELED);

  mg_buf_cleanup(&r.body);
  mg_http_client_free(c);
  mg_http_server_free(s);
  finish_loop(&loop);
}

static void wait_ms(uv_loop_t *loop, uint64_t ms) {
  int never = 0;
  run_until(loop, &never, 1, ms);
}

MG_TEST(client_pool_idle_limits_and_timeouts) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  cur_loop = &loop;
  mg_http_server_t *s = test_server(&loop, "127.0.0.1:0", &(mg_http_server_opts_t){.idle_timeout_ms = 250});
  REQUIRE(s);
  char url[128];
  url_for(url, sizeof url, "http", "127.0.0.1", mg_http_server_port(s), "/hello");
  mg_http_request_t req = {.url = url};
  mg_http_client_stats_t st;
  result_t r[3];
  for (int i = 0; i < 3; i++) result_init(&r[i]);

  /* Three at once need three connections; only two stay idle. */
  mg_http_client_t *c = mg_http_client_new(&loop, &(mg_http_client_opts_t){.max_idle_per_host = 2});
  for (int round = 0; round < 2; round++) {
    int total = 0;
    for (int i = 0; i < 3; i++) CHECK_INT(mg_http_client_request(c, &req, on_done, &r[i], NULL), 0);
    for (int i = 0; i < 3; i++) {
      run_until(&loop, &r[i].done, round + 1, 3000);
      total += r[i].done;
      CHECK_INT(r[i].status, 200);
    }
    CHECK_INT(total, 3 * (round + 1));
  }
  mg_http_client_get_stats(c, &st);
  CHECK_U64(st.connections_opened, 4);
  CHECK_U64(st.connections_reused, 2);

  /* The server closes idle connections after 250 ms: the client notices
   * while they sit in the pool, so the next request needs no retry. */
  wait_ms(&loop, 450);
  do_request(&loop, c, &req, &r[0]);
  CHECK_INT(r[0].status, 200);
  mg_http_client_get_stats(c, &st);
  CHECK_U64(st.connections_opened, 5);
  CHECK_U64(st.connections_reused, 2);
  mg_http_client_free(c);

  /* The client's own idle timeout. */
  c = mg_http_client_new(&loop, &(mg_http_client_opts_t){.idle_timeout_ms = 50});
  do_request(&loop, c, &req, &r[0]);
  do_request(&loop, c, &req, &r[0]);
  wait_ms(&loop, 150);
  do_request(&loop, c, &req, &r[0]);
  CHECK_INT(r[0].status, 200);
  mg_http_client_get_stats(c, &st);
  CHECK_U64(st.connections_opened, 2);
  CHECK_U64(st.connections_reused, 1);
  mg_http_client_free(c);

  for (int i = 0; i < 3; i++) mg_buf_cleanup(&r[i].body);
  mg_http_server_free(s);
  finish_loop(&loop);
}

/* ------------------------------------------------------ raw hostile server */

typedef enum {
  RAW_HANG,
  RAW_GARBAGE,
  RAW_CUT_BODY,
  RAW_CLOSE_MID_HEADERS,
  RAW_CHUNKED,
  RAW_UNTIL_CLOSE,
  RAW_STALE_SECOND,
  RAW_STREAM,
  RAW_EARLY, /* answers at the request headers, then discards the body */
} raw_mode_t;

#define RAW_MAX_CONNS 8
typedef struct raw_server raw_server_t;
typedef struct raw_conn {
  uv_tcp_t tcp;
  raw_server_t *srv;
  char buf[8192];
  size_t len;
  int requests;
  size_t streamed;
  bool used, closing;
} raw_conn_t;

struct raw_server {
  uv_tcp_t tcp;
  raw_mode_t mode;
  int port, accepted;
  raw_conn_t conns[RAW_MAX_CONNS];
};

typedef struct raw_write {
  uv_write_t req;
  bool close_after;
  char data[];
} raw_write_t;

static void raw_conn_closed(uv_handle_t *h) { ((raw_conn_t *)h->data)->used = false; }

static void raw_close(raw_conn_t *rc) {
  if (rc->closing) return;
  rc->closing = true;
  uv_close((uv_handle_t *)&rc->tcp, raw_conn_closed);
}

static void raw_send(raw_conn_t *rc, const char *data, size_t n, bool close_after);

static void raw_stream_more(raw_conn_t *rc) {
  static char chunk[65536 + 16];
  static size_t chunk_len;
  if (!chunk_len) {
    int h = snprintf(chunk, sizeof chunk, "10000\r\n");
    memset(chunk + h, 'z', 65536);
    memcpy(chunk + h + 65536, "\r\n", 2);
    chunk_len = (size_t)h + 65536 + 2;
  }
  if (rc->streamed >= (50u << 20)) {
    raw_send(rc, "0\r\n\r\n", 5, true);
    return;
  }
  rc->streamed += 65536;
  raw_send(rc, chunk, chunk_len, false);
}

static void raw_written(uv_write_t *w, int status) {
  raw_write_t *rw = (raw_write_t *)w;
  raw_conn_t *rc = w->data;
  bool close_after = rw->close_after;
  free(rw);
  if (rc->closing) return;
  if (status < 0 || close_after) raw_close(rc);
  else if (rc->srv->mode == RAW_STREAM && rc->streamed) raw_stream_more(rc);
}

static void raw_send(raw_conn_t *rc, const char *data, size_t n, bool close_after) {
  raw_write_t *w = malloc(sizeof *w + n);
  memcpy(w->data, data, n);
  w->close_after = close_after;
  w->req.data = rc;
  uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
  if (uv_write(&w->req, (uv_stream_t *)&rc->tcp, &b, 1, raw_written) != 0) {
    free(w);
    raw_close(rc);
  }
}

static void raw_on_request(raw_conn_t *rc) {
  static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  rc->requests++;
  switch (rc->srv->mode) {
  case RAW_HANG:
    break;
  case RAW_GARBAGE:
    raw_send(rc, "garbage\r\n\r\n", 11, false);
    break;
  case RAW_CUT_BODY:
    raw_send(rc, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", 50, true);
    break;
  case RAW_CLOSE_MID_HEADERS:
    raw_send(rc, "HTTP/1.1 200 OK\r\nContent-Le", 27, true);
    break;
  case RAW_CHUNKED: {
    static const char msg[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    raw_send(rc, msg, sizeof msg - 1, false);
    break;
  }
  case RAW_UNTIL_CLOSE: {
    static const char msg[] = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close";
    raw_send(rc, msg, sizeof msg - 1, true);
    break;
  }
  case RAW_STALE_SECOND:
    /* Pretend the idle connection was closed just as the request went out. */
    if (rc->requests == 1) raw_send(rc, ok, sizeof ok - 1, false);
    else raw_close(rc);
    break;
  case RAW_EARLY:
    raw_send(rc, ok, sizeof ok - 1, false);
    break;
  case RAW_STREAM: {
    static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    raw_send(rc, head, sizeof head - 1, false);
    raw_stream_more(rc);
    break;
  }
  }
}

static void raw_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  raw_conn_t *rc = h->data;
  *buf = uv_buf_init(rc->buf + rc->len, (unsigned)(sizeof rc->buf - rc->len));
}

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  raw_conn_t *rc = s->data;
  if (n < 0) {
    raw_close(rc);
    return;
  }
  rc->len += (size_t)n;
  if (rc->srv->mode == RAW_EARLY && rc->requests) {
    rc->len = 0;
    return;
  }
  char *end;
  while ((end = memmem(rc->buf, rc->len, "\r\n\r\n", 4)) != NULL) {
    size_t used = (size_t)(end + 4 - rc->buf);
    memmove(rc->buf, rc->buf + used, rc->len - used);
    rc->len -= used;
    raw_on_request(rc);
    if (rc->closing) return;
  }
  if (rc->len == sizeof rc->buf) raw_close(rc);
}

static void raw_accept(uv_stream_t *ls, int status) {
  raw_server_t *srv = ls->data;
  raw_conn_t *rc = NULL;
  for (int i = 0; i < RAW_MAX_CONNS && !rc; i++)
    if (!srv->conns[i].used) rc = &srv->conns[i];
  if (status < 0 || !rc) return;
  memset(rc, 0, sizeof *rc);
  rc->used = true;
  rc->srv = srv;
  uv_tcp_init(ls->loop, &rc->tcp);
  rc->tcp.data = rc;
  srv->accepted++;
  if (uv_accept(ls, (uv_stream_t *)&rc->tcp) == 0) uv_read_start((uv_stream_t *)&rc->tcp, raw_alloc, raw_read);
  else raw_close(rc);
}

static int raw_server_start(uv_loop_t *loop, raw_server_t *srv, raw_mode_t mode) {
  memset(srv, 0, sizeof *srv);
  srv->mode = mode;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(loop, &srv->tcp);
  srv->tcp.data = srv;
  uv_tcp_bind(&srv->tcp, (struct sockaddr *)&a, 0);
  if (uv_listen((uv_stream_t *)&srv->tcp, 16, raw_accept) != 0) return -1;
  struct sockaddr_in b;
  int len = sizeof b;
  uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)&b, &len);
  srv->port = ntohs(b.sin_port);
  return 0;
}

static void raw_server_stop(raw_server_t *srv) {
  uv_close((uv_handle_t *)&srv->tcp, NULL);
  for (int i = 0; i < RAW_MAX_CONNS; i++)
    if (srv->conns[i].used) raw_close(&srv->conns[i]);
}

/* One request against a raw server in the given mode. */
static void raw_case(raw_mode_t mode, mg_http_request_t req, result_t *r, mg_http_client_stats_t *st) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  cur_loop = &loop;
  raw_server_t srv;
  if (raw_server_start(&loop, &srv, mode) != 0) {
    CHECK(!"raw server failed to listen");
    return;
  }
  mg_http_client_t *c = mg_http_client_new(&loop, NULL);
  char url[128];
  url_for(url, sizeof url, "http", "127.0.0.1", srv.port, "/x");
  req.url = url;
  do_request(&loop, c, &req, r);
  if (st) {
    do_request(&loop, c, &req, r); /* a second request, for keep-alive cases */
    mg_http_client_get_stats(c, st);
  }
  mg_http_client_free(c);
  raw_server_stop(&srv);
  finish_loop(&loop);
}

MG_TEST(client_hostile_servers) {
  result_t r;
  result_init(&r);
  mg_http_header_t auth[] = {{"Authorization", "Bearer sekrit-token"}};

  raw_case(RAW_CHUNKED, (mg_http_request_t){0}, &r, NULL);
  CHECK_INT(r.err, 0);
  CHECK_MEM(r.body.data, r.body.len, "hello world", 11);

  raw_case(RAW_UNTIL_CLOSE, (mg_http_request_t){0}, &r, NULL);
  CHECK_INT(r.err, 0);
  CHECK_MEM(r.body.data, r.body.len, "until close", 11);

  raw_case(RAW_GARBAGE, (mg_http_request_t){.headers = auth, .nheaders = 1}, &r, NULL);
  CHECK_INT(r.err, MG_EHTTP);
  CHECK(strstr(r.detail, "malformed response") != NULL);
  CHECK(strstr(r.detail, "sekrit") == NULL);

  raw_case(RAW_CUT_BODY, (mg_http_request_t){0}, &r, NULL);
  CHECK_INT(r.err, MG_EHTTP);
  CHECK(strstr(r.detail, "connection closed before the response was complete") != NULL);

  raw_case(RAW_CLOSE_MID_HEADERS, (mg_http_request_t){0}, &r, NULL);
  CHECK_INT(r.err, MG_EHTTP);

  uv_loop_t *l0 = cur_loop;
  (void)l0;
  raw_case(RAW_HANG, (mg_http_request_t){.timeout_ms = 300}, &r, NULL);
  CHECK_INT(r.err, MG_ETIMEDOUT);
  CHECK(strstr(r.detail, "timed out after 300 ms") != NULL);

  /* Streaming chunked body past the limit: reading stops at the limit. */
  mg_buf_t out;
  mg_buf_init(&out, 0);
  raw_case(RAW_STREAM, (mg_http_request_t){.max_body = 10u << 20, .body_out = &out}, &r, NULL);
  CHECK_INT(r.err, MG_ETOOBIG);
  CHECK_STR(r.detail, "response body over limit (10485760 bytes)");
  CHECK(out.cap < (20u << 20));
  mg_buf_cleanup(&out);

  /* truncate_2xx_body: a 2xx body over the limit completes the request
   * (remote write needs only the status), cut at the limit; a body announced
   * over the limit is not read at all; headers over their limit still fail. */
  raw_case(RAW_STREAM, (mg_http_request_t){.max_body = 1u << 20, .truncate_2xx_body = true}, &r, NULL);
  CHECK_INT(r.err, 0);
  CHECK_INT(r.status, 200);
  CHECK(r.truncated);
  CHECK(r.body.len <= (1u << 20));
  raw_case(RAW_CUT_BODY, (mg_http_request_t){.max_body = 10, .truncate_2xx_body = true}, &r, NULL);
  CHECK_INT(r.err, 0);
  CHECK(r.truncated);
  CHECK_INT(r.body.len, 0);
  raw_case(RAW_CUT_BODY, (mg_http_request_t){.max_body = 10}, &r, NULL);
  CHECK_INT(r.err, MG_ETOOBIG);
  raw_case(RAW_CUT_BODY, (mg_http_request_t){.max_header_bytes = 16, .truncate_2xx_body = true}, &r, NULL);
  CHECK_INT(r.err, MG_ETOOBIG);
  raw_case(RAW_CHUNKED, (mg_http_request_t){.truncate_2xx_body = true}, &r, NULL);
  CHECK_INT(r.err, 0);
  CHECK(!r.truncated);
  CHECK_MEM(r.body.data, r.body.len, "hello world", 11);

  /* The server drops the kept-alive connection on the second request: the
   * client retries once on a new connection. */
  mg_http_client_stats_t st;
  raw_case(RAW_STALE_SECOND, (mg_http_request_t){0}, &r, &st);
  CHECK_INT(r.err, 0);
  CHECK_MEM(r.body.data, r.body.len, "ok", 2);
  CHECK_U64(st.connections_reused, 1);
  CHECK_U64(st.connections_opened, 2);

  /* A response that arrives while the request body is still being sent:
   * the connection is not reused (the rest of the body would follow). */
  size_t n = 20u << 20;
  char *body = calloc(1, n);
  raw_case(RAW_EARLY, (mg_http_request_t){.method = "POST", .body = body, .body_len = n}, &r, &st);
  CHECK_INT(r.err, 0);
  CHECK_U64(st.connections_reused, 0);
  CHECK_U64(st.connections_opened, 2);
  free(body);
  mg_buf_cleanup(&r.body);
}

/* Streamed bodies (on_body): what the callback saw, across pieces. */
typedef struct streamed {
  result_t r; /* first: the request's ud is both callbacks' */
  mg_buf_t small; /* the first bytes, for comparisons */
  size_t total;
  int pieces;
  size_t stop_after; /* refuse once this many bytes arrived; 0 = never */
} streamed_t;

static int on_piece(void *ud, const char *data, size_t len) {
  streamed_t *s = ud;
  s->pieces++;
  s->total += len;
  if (s->small.len < 64) mg_buf_append(&s->small, data, len < 64 ? len : 64);
  return s->stop_after && s->total >= s->stop_after ? MG_ETOOBIG : 0;
}

static void stream_case(raw_mode_t mode, mg_http_request_t req, streamed_t *s) {
  memset(s, 0, sizeof *s);
  result_init(&s->r);
  mg_buf_init(&s->small, 0);
  req.on_body = on_piece;
  raw_case(mode, req, &s->r, NULL);
}

MG_TEST(client_streams_bodies_to_a_callback) {
  streamed_t s;
  /* 50 MiB of chunks through a 1 MiB limit: each read is handed over and
   * dropped, so the limit bounds a piece, not the stream. */
  stream_case(RAW_STREAM, (mg_http_request_t){.max_body = 1u << 20, .timeout_ms = 60000}, &s);
  CHECK_INT(s.r.err, 0);
  CHECK_INT(s.r.status, 200);
  CHECK_U64(s.total, 50u << 20);
  CHECK(s.pieces > 50);
  CHECK_INT(s.r.body.len, 0); /* nothing kept for the completion */
  mg_buf_cleanup(&s.r.body);
  mg_buf_cleanup(&s.small);

  stream_case(RAW_CHUNKED, (mg_http_request_t){0}, &s);
  CHECK_INT(s.r.err, 0);
  CHECK_MEM(s.small.data, s.small.len, "hello world", 11);
  mg_buf_cleanup(&s.r.body);
  mg_buf_cleanup(&s.small);

  /* The callback's error ends the request with that error. */
  memset(&s, 0, sizeof s);
  result_init(&s.r);
  mg_buf_init(&s.small, 0);
  s.stop_after = 3u << 20;
  raw_case(RAW_STREAM, (mg_http_request_t){.on_body = on_piece, .timeout_ms = 60000}, &s.r, NULL);
  CHECK_INT(s.r.err, MG_ETOOBIG);
  CHECK(strstr(s.r.detail, "refused by the caller") != NULL);
  CHECK(s.total < (10u << 20));
  mg_buf_cleanup(&s.r.body);
  mg_buf_cleanup(&s.small);

  /* Other statuses are collected whole, so their message is there. */
  uv_loop_t loop;
  uv_loop_init(&loop);
  cur_loop = &loop;
  mg_http_server_t *srv = test_server(&loop, "127.0.0.1:0", NULL);
  REQUIRE(srv);
  mg_http_client_t *c = mg_http_client_new(&loop, NULL);
  memset(&s, 0, sizeof s);
  result_init(&s.r);
  mg_buf_init(&s.small, 0);
  char url[128];
  url_for(url, sizeof url, "http", "127.0.0.1", mg_http_server_port(srv), "/nope");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .on_body = on_piece}, &s.r);
  CHECK_INT(s.r.status, 404);
  CHECK(s.r.body.len > 0);
  CHECK_INT(s.pieces, 0);
  url_for(url, sizeof url, "http", "127.0.0.1", mg_http_server_port(srv), "/hello");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .on_body = on_piece}, &s.r);
  CHECK_INT(s.r.status, 200);
  CHECK_MEM(s.small.data, s.small.len, "hello world", 11);
  CHECK_INT(s.r.body.len, 0);
  mg_http_client_free(c);
  mg_http_server_free(srv);
  finish_loop(&loop);
  mg_buf_cleanup(&s.r.body);
  mg_buf_cleanup(&s.small);
}

MG_TEST(client_connect_refused_and_free_in_flight) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  cur_loop = &loop;
  /* A port that was just free: bind, read it back, close. */
  uv_tcp_t t;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(&loop, &t);
  uv_tcp_bind(&t, (struct sockaddr *)&a, 0);
  int len = sizeof a;
  uv_tcp_getsockname(&t, (struct sockaddr *)&a, &len);
  int port = ntohs(a.sin_port);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);

  mg_http_client_t *c = mg_http_client_new(&loop, NULL);
  result_t r;
  result_init(&r);
  char url[128], want[128];
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/");
  do_request(&loop, c, &(mg_http_request_t){.url = url}, &r);
  CHECK_INT(r.err, MG_ECONNREFUSED);
  snprintf(want, sizeof want, "connect 127.0.0.1:%d: connection refused", port);
  CHECK_STR(r.detail, want);

  /* An unreadable CA file fails through the (deferred) callback. */
  mg_http_tls_opts_t tls = {.ca_file = "/nonexistent/ca.pem"};
  do_request(&loop, c, &(mg_http_request_t){.url = "https://127.0.0.1:1/", .tls = &tls}, &r);
  CHECK_INT(r.err, MG_ETLS);
  CHECK(strstr(r.detail, "/nonexistent/ca.pem") != NULL);

  /* Freeing the client with requests in flight completes them all. */
  raw_server_t srv;
  REQUIRE(raw_server_start(&loop, &srv, RAW_HANG) == 0);
  url_for(url, sizeof url, "http", "127.0.0.1", srv.port, "/");
  result_t inflight[3];
  for (int i = 0; i < 3; i++) {
    result_init(&inflight[i]);
    CHECK_INT(mg_http_client_request(c, &(mg_http_request_t){.url = url}, on_done, &inflight[i], NULL), 0);
  }
  run_until(&loop, &srv.accepted, 3, 2000); /* all three are connected and waiting */
  result_t late;
  result_init(&late);
  CHECK_INT(mg_http_client_request(c, &(mg_http_request_t){.url = url}, on_done, &late, NULL), 0); /* not started */
  mg_http_client_free(c);
  raw_server_stop(&srv);
  finish_loop(&loop);
  for (int i = 0; i < 3; i++) {
    CHECK_INT(inflight[i].done, 1);
    CHECK_INT(inflight[i].err, MG_ECANCELED);
    mg_buf_cleanup(&inflight[i].body);
  }
  CHECK_INT(late.done, 1);
  CHECK_INT(late.err, MG_ECANCELED);
  mg_buf_cleanup(&late.body);
  mg_buf_cleanup(&r.body);
}

/* ------------------------------------------------------------ raw client */

typedef struct raw_client {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_timer_t timer;
  const char *script;
  size_t pos, step; /* bytes written per tick */
  mg_buf_t got;
  int closed;
  uint64_t connected_at, closed_at;
} raw_client_t;

static void rc_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  static char tmp[65536];
  *buf = uv_buf_init(tmp, sizeof tmp);
}

static void rc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  raw_client_t *c = s->data;
  if (n > 0) {
    mg_buf_append(&c->got, buf->base, (size_t)n);
    return;
  }
  if (n == 0) return;
  c->closed = 1;
  c->closed_at = uv_now(s->loop);
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->tcp, NULL);
  uv_close((uv_handle_t *)&c->timer, NULL);
}

static void rc_written(uv_write_t *w, int status) { free(w); }

static void rc_tick(uv_timer_t *t) {
  raw_client_t *c = t->data;
  size_t left = strlen(c->script) - c->pos;
  size_t n = left < c->step ? left : c->step;
  if (n == 0) return;
  uv_write_t *w = malloc(sizeof *w);
  uv_buf_t b = uv_buf_init((char *)(uintptr_t)c->script + c->pos, (unsigned)n);
  c->pos += n;
  if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, rc_written) != 0) free(w);
}

static void rc_connected(uv_connect_t *req, int status) {
  raw_client_t *c = req->data;
  if (status < 0) return;
  c->connected_at = uv_now(req->handle->loop);
  uv_read_start((uv_stream_t *)&c->tcp, rc_alloc, rc_read);
  uv_timer_start(&c->timer, rc_tick, 0, 40);
}

static void raw_client_start(uv_loop_t *loop, raw_client_t *c, int port, const char *script, size_t step) {
  memset(c, 0, sizeof *c);
  c->script = script;
  c->step = step;
  mg_buf_init(&c->got, 0);
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  uv_tcp_init(loop, &c->tcp);
  uv_timer_init(loop, &c->timer);
  c->tcp.data = c->timer.data = c->creq.data = c;
  uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&a, rc_connected);
}

MG_TEST(server_slowloris_idle_pipelining_and_max_connections) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  cur_loop = &loop;
  mg_http_server_t *s = test_server(
      &loop, "127.0.0.1:0",
      &(mg_http_server_opts_t){.request_timeout_ms = 300, .idle_timeout_ms = 400, .max_connections = 4});
  REQUIRE(s);
  int port = mg_http_server_port(s);
  static const char slow[] = "GET /hello HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
  static const char piped[] = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                              "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nping"
                              "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  raw_client_t slowc, idle, pipe, extra[4];
  raw_client_start(&loop, &slowc, port, slow, 1); /* one byte per 40 ms: needs > 3 s */
  raw_client_start(&loop, &idle, port, "", 1);
  raw_client_start(&loop, &pipe, port, piped, sizeof piped);
  int all = 0;
  run_until(&loop, &pipe.closed, 1, 3000);
  CHECK_INT(pipe.closed, 1);
  /* Three responses in order on one connection, the last one closing it. */
  const char *g = pipe.got.data ? pipe.got.data : "";
  const char *r1 = strstr(g, "hello world");
  const char *r2 = r1 ? strstr(r1, "ping") : NULL;
  const char *r3 = r2 ? strstr(r2, "Connection: close") : NULL;
  CHECK(r1 && r2 && r3);
  CHECK(r1 && strstr(g, "HTTP/1.1 100 Continue") < r2);

  for (int i = 0; i < 4; i++) raw_client_start(&loop, &extra[i], port, "", 1);
  run_until(&loop, &extra[3].closed, 1, 1000);
  all = extra[0].closed + extra[1].closed + extra[2].closed + extra[3].closed;
  CHECK(all >= 2); /* slowc and idle still hold two of the four slots */

  run_until(&loop, &slowc.closed, 1, 3000);
  CHECK_INT(slowc.closed, 1);
  CHECK(slowc.closed_at - slowc.connected_at >= 250);
  CHECK(slowc.closed_at - slowc.connected_at < 1500);
  CHECK_INT(slowc.got.len, 0);
  run_until(&loop, &idle.closed, 1, 3000);
  CHECK_INT(idle.closed, 1);
  CHECK(idle.closed_at - idle.connected_at >= 350);

  mg_http_server_free(s);
  finish_loop(&loop);
  mg_buf_cleanup(&slowc.got);
  mg_buf_cleanup(&idle.got);
  mg_buf_cleanup(&pipe.got);
  for (int i = 0; i < 4; i++) mg_buf_cleanup(&extra[i].got);
}

/* ---------------------------------------------------------------- TLS */

typedef struct pki {
  char dir[64];
  char ca[96], cert[96], key[96], client_cert[96], client_key[96];
} pki_t;

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value) {
  X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
  if (!e) return -1;
  int ok = X509_add_ext(x, e, -1);
  X509_EXTENSION_free(e);
  return ok ? 0 : -1;
}

/* A certificate for key, signed by ca_key (self-signed when ca is NULL). */
static X509 *make_cert(EVP_PKEY *key, X509 *ca, EVP_PKEY *ca_key, const char *cn, const char *san, long serial) {
  X509 *x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, key);
  X509_NAME *name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
  X509_set_issuer_name(x, ca ? X509_get_subject_name(ca) : name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, ca ? ca : x, x, NULL, NULL, 0);
  int rc = add_ext(x, &ctx, NID_subject_key_identifier, "hash");
  if (!ca) {
    rc |= add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE");
    rc |= add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    rc |= add_ext(x, &ctx, NID_basic_constraints, "CA:FALSE");
    rc |= add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always");
    if (san) rc |= add_ext(x, &ctx, NID_subject_alt_name, san);
  }
  if (rc != 0 || X509_sign(x, ca_key ? ca_key : key, EVP_sha256()) == 0) {
    X509_free(x);
    return NULL;
  }
  return x;
}

static int write_pem(const char *path, X509 *x, EVP_PKEY *k) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  int ok = x ? PEM_write_X509(f, x) : PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
  fclose(f);
  return ok ? 0 : -1;
}

static int pki_make(pki_t *p) {
  snprintf(p->dir, sizeof p->dir, "/tmp/mg_http_test_XXXXXX");
  if (!mkdtemp(p->dir)) return -1;
  snprintf(p->ca, sizeof p->ca, "%s/ca.pem", p->dir);
  snprintf(p->cert, sizeof p->cert, "%s/server.pem", p->dir);
  snprintf(p->key, sizeof p->key, "%s/server.key", p->dir);
  snprintf(p->client_cert, sizeof p->client_cert, "%s/client.pem", p->dir);
  snprintf(p->client_key, sizeof p->client_key, "%s/client.key", p->dir);
  EVP_PKEY *cak = EVP_EC_gen("P-256"), *sk = EVP_EC_gen("P-256"), *ck = EVP_EC_gen("P-256");
  X509 *ca = cak ? make_cert(cak, NULL, NULL, "moongate test CA", NULL, 1) : NULL;
  X509 *srv = ca && sk ? make_cert(sk, ca, cak, "localhost", "DNS:localhost,IP:127.0.0.1,IP:::1", 2) : NULL;
  X509 *cli = ca && ck ? make_cert(ck, ca, cak, "client", "DNS:client", 3) : NULL;
  int rc = ca && srv && cli ? 0 : -1;
  if (rc == 0)
    rc = write_pem(p->ca, ca, NULL) | write_pem(p->cert, srv, NULL) | write_pem(p->key, NULL, sk) |
         write_pem(p->client_cert, cli, NULL) | write_pem(p->client_key, NULL, ck);
  X509_free(ca);
  X509_free(srv);
  X509_free(cli);
  EVP_PKEY_free(cak);
  EVP_PKEY_free(sk);
  EVP_PKEY_free(ck);
  return rc;
}

static void pki_remove(pki_t *p) {
  unlink(p->ca);
  unlink(p->cert);
  unlink(p->key);
  unlink(p->client_cert);
  unlink(p->client_key);
  rmdir(p->dir);
}

MG_TEST(tls_verification_sni_and_mtls) {
  pki_t pki;
  REQUIRE(pki_make(&pki) == 0);
  uv_loop_t loop;
  uv_loop_init(&loop);
  cur_loop = &loop;
  mg_http_server_t *s = test_server(&loop, "127.0.0.1:0", NULL);
  mg_http_server_t *ms = test_server(&loop, "127.0.0.1:0", NULL);
  REQUIRE(s && ms);
  CHECK_INT(mg_http_server_tls(s, pki.cert, pki.key, NULL), 0);
  CHECK_INT(mg_http_server_tls(ms, pki.cert, pki.key, pki.ca), 0);
  CHECK_INT(mg_http_server_tls(s, pki.cert, "/nonexistent.key", NULL), MG_ETLS);
  mg_http_client_t *c = mg_http_client_new(&loop, NULL);
  result_t r;
  result_init(&r);
  char url[128];
  int port = mg_http_server_port(s);

  /* Verified by IP SAN; no SNI is sent for an IP address. */
  mg_http_tls_opts_t with_ca = {.ca_file = pki.ca};
  url_for(url, sizeof url, "https", "127.0.0.1", port, "/sni");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .tls = &with_ca}, &r);
  CHECK_INT(r.err, 0);
  CHECK_MEM(r.body.data, r.body.len, "-", 1);

  /* A second request reuses the TLS connection. */
  do_request(&loop, c, &(mg_http_request_t){.url = url, .tls = &with_ca}, &r);
  CHECK_INT(r.err, 0);
  mg_http_client_stats_t st;
  mg_http_client_get_stats(c, &st);
  CHECK_U64(st.connections_reused, 1);

  /* By host name: SNI reaches the server. */
  url_for(url, sizeof url, "https", "localhost", port, "/sni");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .tls = &with_ca}, &r);
  CHECK_INT(r.err, 0);
  CHECK_MEM(r.body.data, r.body.len, "localhost", 9);

  /* server_name overrides the URL host for SNI and verification. */
  mg_http_tls_opts_t named = {.ca_file = pki.ca, .server_name = "localhost"};
  url_for(url, sizeof url, "https", "127.0.0.1", port, "/sni");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .tls = &named}, &r);
  CHECK_INT(r.err, 0);
  CHECK_MEM(r.body.data, r.body.len, "localhost", 9);

  mg_http_tls_opts_t wrong = {.ca_file = pki.ca, .server_name = "wrong.example"};
  do_request(&loop, c, &(mg_http_request_t){.url = url, .tls = &wrong}, &r);
  CHECK_INT(r.err, MG_ETLS);
  CHECK(strstr(r.detail, "certificate verify failed: hostname mismatch") != NULL);

  /* The system store does not know our CA. */
  do_request(&loop, c, &(mg_http_request_t){.url = url}, &r);
  CHECK_INT(r.err, MG_ETLS);
  CHECK(strstr(r.detail, "certificate verify failed") != NULL);

  mg_http_tls_opts_t insecure = {.insecure_skip_verify = true};
  do_request(&loop, c, &(mg_http_request_t){.url = url, .tls = &insecure}, &r);
  CHECK_INT(r.err, 0);
  CHECK_INT(r.status, 200);

  /* mTLS: the server wants a certificate from our CA. */
  url_for(url, sizeof url, "https", "127.0.0.1", mg_http_server_port(ms), "/hello");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .tls = &with_ca}, &r);
  CHECK_INT(r.err, MG_ETLS);
  mg_http_tls_opts_t client = {.ca_file = pki.ca, .cert_file = pki.client_cert, .key_file = pki.client_key};
  do_request(&loop, c, &(mg_http_request_t){.url = url, .tls = &client}, &r);
  CHECK_INT(r.err, 0);
  CHECK_MEM(r.body.data, r.body.len, "hello world", 11);

  /* A body of many TLS records, twice over one connection. */
  size_t big_n = 3u << 20;
  mg_http_server_route(s, "GET", "/big", h_big, &big_n);
  mg_buf_t out;
  mg_buf_init(&out, 0);
  url_for(url, sizeof url, "https", "127.0.0.1", port, "/big");
  for (int i = 0; i < 2; i++) {
    do_request(&loop, c, &(mg_http_request_t){.url = url, .tls = &with_ca, .body_out = &out}, &r);
    CHECK_INT(r.err, 0);
    CHECK_INT(out.len, big_n);
    CHECK(out.len == big_n && out.data[0] == 'x' && out.data[big_n - 1] == 'x');
  }
  mg_buf_cleanup(&out);

  /* Plain HTTP to a TLS port is answered with garbage, not a hang. */
  url_for(url, sizeof url, "http", "127.0.0.1", port, "/hello");
  do_request(&loop, c, &(mg_http_request_t){.url = url, .timeout_ms = 2000}, &r);
  CHECK(r.err != 0);

  mg_buf_cleanup(&r.body);
  mg_http_client_free(c);
  mg_http_server_free(s);
  mg_http_server_free(ms);
  finish_loop(&loop);
  pki_remove(&pki);
}

MG_TEST_MAIN()
