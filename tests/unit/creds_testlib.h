/* creds_testlib: helpers shared by the mg_creds unit tests (header-only,
 * every function static and marked unused): a clean AWS environment in a
 * temporary HOME, running the loop until a condition holds, captured logs
 * checked for secrets, file writes the way credential writers do them, and
 * the Python fakes (tests/integration/awsfakes.py serve) as a child process
 * driven through its JSON control API with blocking loopback HTTP. */
#ifndef CREDS_TESTLIB_H
#define CREDS_TESTLIB_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "mg_buf.h"
#include "mg_creds.h"
#include "mg_err.h"
#include "mg_http_client.h"
#include "mg_json.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "mg_metrics.h"
#include "mg_test.h"

#define TL_UNUSED __attribute__((unused))

/* ------------------------------------------------------------ environment */

static const char *tl_aws_vars[] = {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "AWS_EC2_METADATA_DISABLED", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"};

static char tl_home[256];

/* A fresh temporary HOME, no AWS_* variables, IMDS disabled (so the
 * default chain never reaches for 169.254.169.254 from a test). */
TL_UNUSED static const char *tl_clean_env(void) {
  for (size_t i = 0; i < sizeof tl_aws_vars / sizeof tl_aws_vars[0]; i++) unsetenv(tl_aws_vars[i]);
  snprintf(tl_home, sizeof tl_home, "/tmp/mg-creds-test-XXXXXX");
  if (!mkdtemp(tl_home)) {
    perror("mkdtemp");
    abort();
  }
  setenv("HOME", tl_home, 1);
  setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
  return tl_home;
}

TL_UNUSED static void tl_rm_rf(const char *dir) {
  char cmd[600];
  if (strncmp(dir, "/tmp/mg-creds-test-", 19) != 0) return; /* never anything else */
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cleanup of %s failed\n", dir);
}

TL_UNUSED static void tl_path(char *out, size_t n, const char *rel) { snprintf(out, n, "%s/%s", tl_home, rel); }

/* Write a file the way an in-place writer does: truncate, then write. */
TL_UNUSED static void tl_write_in_place(const char *path, const char *text, size_t len) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || write(fd, text, len) != (ssize_t)len) {
    perror(path);
    abort();
  }
  close(fd);
}

/* Write a temporary file and rename it over path (atomic replacement). */
TL_UNUSED static void tl_write_rename(const char *path, const char *text) {
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
  tl_write_in_place(tmp, text, strlen(text));
  if (rename(tmp, path) != 0) {
    perror("rename");
    abort();
  }
}

TL_UNUSED static void tl_mkdir(const char *path) {
  if (mkdir(path, 0700) != 0 && errno != EEXIST) {
    perror(path);
    abort();
  }
}

TL_UNUSED static uint64_t tl_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* "2024-05-01T16:00:00Z" for now + secs. */
TL_UNUSED static void tl_iso_in(int secs, char *out, size_t n) {
  time_t t = time(NULL) + secs;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ------------------------------------------------------------ logs and secrets */

static FILE *tl_log;
static char *tl_secrets[512];
static size_t tl_nsecrets;

TL_UNUSED static void tl_capture_logs(void) {
  tl_log = tmpfile();
  if (!tl_log) abort();
  mg_log_set_stream(tl_log);
  mg_log_set_level(MG_LOG_DEBUG); /* even debug lines must be clean */
}

/* Remember a string that must never be logged (secret key, token). */
TL_UNUSED static void tl_secret(const char *s) {
  if (!s || strlen(s) < 8 || tl_nsecrets == sizeof tl_secrets / sizeof tl_secrets[0]) return;
  for (size_t i = 0; i < tl_nsecrets; i++)
    if (strcmp(tl_secrets[i], s) == 0) return;
  tl_secrets[tl_nsecrets++] = strdup(s);
}

TL_UNUSED static void tl_secret_value(const mg_creds_value_t *v) {
  if (!v) return;
  tl_secret(v->secret_access_key);
  tl_secret(v->session_token);
}

/* The whole captured log (caller frees). */
TL_UNUSED static char *tl_log_text(void) {
  fflush(tl_log);
  long n = ftell(tl_log);
  char *s = malloc((size_t)n + 1);
  if (!s) abort();
  rewind(tl_log);
  size_t got = fread(s, 1, (size_t)n, tl_log);
  s[got] = '\0';
  fseek(tl_log, 0, SEEK_END);
  return s;
}

TL_UNUSED static int tl_log_count(const char *needle) {
  char *s = tl_log_text();
  int n = 0;
  for (const char *p = s; (p = strstr(p, needle)) != NULL; p++) n++;
  free(s);
  return n;
}

/* No remembered secret (nor a 16-byte prefix of one) in the logs, in
 * /metrics or in the given text. */
TL_UNUSED static void tl_check_no_secrets(const char *extra) {
  char *s = tl_log_text();
  mg_buf_t m;
  mg_buf_init(&m, 0);
  mg_metrics_render(&m);
  for (size_t i = 0; i < tl_nsecrets; i++) {
    char prefix[17];
    snprintf(prefix, sizeof prefix, "%s", tl_secrets[i]);
    if (strstr(s, prefix)) MG_FAIL_("secret #%zu (len %zu) appears in the log", i, strlen(tl_secrets[i]));
    if (m.data && strstr(m.data, prefix)) MG_FAIL_("secret #%zu appears in /metrics", i);
    if (extra && strstr(extra, prefix)) MG_FAIL_("secret #%zu appears in an error message", i);
  }
  mg_buf_cleanup(&m);
  free(s);
}

/* ------------------------------------------------------------ the loop */

typedef bool (*tl_cond_fn)(void *ud);

typedef struct tl_wait {
  tl_cond_fn cond;
  void *ud;
  uint64_t deadline;
  bool met;
} tl_wait_t;

static void tl_on_poll(uv_timer_t *t) {
  tl_wait_t *w = t->data;
  if (w->cond(w->ud)) {
    w->met = true;
    uv_stop(t->loop);
  } else if (uv_now(t->loop) >= w->deadline) {
    uv_stop(t->loop);
  }
}

static void tl_close_noop(uv_handle_t *h) { (void)h; }

/* Run the loop until cond(ud) holds (checked every `every_ms`) or timeout. */
TL_UNUSED static bool tl_run_until(uv_loop_t *loop, tl_cond_fn cond, void *ud, uint64_t timeout_ms, uint64_t every_ms) {
  uv_timer_t t;
  uv_update_time(loop);
  tl_wait_t w = {cond, ud, uv_now(loop) + timeout_ms, false};
  if (cond(ud)) return true;
  uv_timer_init(loop, &t);
  t.data = &w;
  uv_timer_start(&t, tl_on_poll, every_ms, every_ms);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, tl_close_noop);
  uv_run(loop, UV_RUN_NOWAIT);
  return w.met;
}

static bool tl_never(void *ud) {
  (void)ud;
  return false;
}

/* Let the loop run for ms. */
TL_UNUSED static void tl_run_for(uv_loop_t *loop, uint64_t ms) { tl_run_until(loop, tl_never, NULL, ms, ms); }

static void tl_show_handle(uv_handle_t *h, void *arg) {
  (void)arg;
  fprintf(stderr, "  open handle: %s%s\n", uv_handle_type_name(h->type), uv_is_closing(h) ? " (closing)" : "");
}

/* Free the creds object and the client, drain (bounded), and check the
 * loop closes: every handle and request was released. */
TL_UNUSED static void tl_teardown(uv_loop_t *loop, mg_creds_t *c, mg_http_client_t *http) {
  mg_creds_free(c);
  mg_http_client_free(http);
  for (int i = 0; i < 400 && uv_run(loop, UV_RUN_NOWAIT); i++) usleep(5000);
  int rc = uv_loop_close(loop);
  if (rc != 0) {
    MG_FAIL_("uv_loop_close: %s (handles left open)", uv_err_name(rc));
    uv_walk(loop, tl_show_handle, NULL);
  }
}

/* Waiter that records its result. */
typedef struct tl_waited {
  int calls;
  int err;
} tl_waited_t;

static void tl_on_wait(void *ud, int err) {
  tl_waited_t *w = ud;
  w->calls++;
  w->err = err;
}

static bool tl_waited_once(void *ud) { return ((tl_waited_t *)ud)->calls > 0; }

/* Wait for the next refresh of c; returns its err (or 1 on timeout). */
TL_UNUSED static int tl_wait_refresh(uv_loop_t *loop, mg_creds_t *c, uint64_t timeout_ms) {
  mg_creds_waiter_t w = {0};
  tl_waited_t r = {0, 0};
  if (mg_creds_wait(c, &w, tl_on_wait, &r) != 0) return 2;
  if (r.calls) MG_FAIL_("waiter called synchronously");
  bool ok = tl_run_until(loop, tl_waited_once, &r, timeout_ms, 2);
  mg_creds_cancel_wait(&w);
  return ok ? r.err : 1;
}

/* Current credentials after waiting for them (NULL on timeout). */
typedef struct tl_cur {
  mg_creds_t *c;
  mg_creds_value_t *v;
} tl_cur_t;

static bool tl_have_current(void *ud) {
  tl_cur_t *x = ud;
  if (!x->v) x->v = mg_creds_current(x->c);
  return x->v != NULL;
}

TL_UNUSED static mg_creds_value_t *tl_get(uv_loop_t *loop, mg_creds_t *c, uint64_t timeout_ms) {
  tl_cur_t x = {c, NULL};
  tl_run_until(loop, tl_have_current, &x, timeout_ms, 2);
  tl_secret_value(x.v);
  return x.v;
}

/* ------------------------------------------------------------ the Python fakes */

typedef struct tl_fakes {
  pid_t pid;
  int in_fd; /* the child's stdin: closing it stops the fakes */
  char sts[128], imds[128], ecs[128], ecs_path[128], amp[256], control[128], region[32];
  int control_port;
  bool up;
} tl_fakes_t;

static tl_fakes_t tl_fk;

/* A top-level string member of a JSON object (into out), 0 or -1. */
typedef struct tl_jget {
  const char *key;
  char *out;
  size_t outsz;
  bool found;
} tl_jget_t;

static int tl_jget_cb(void *ud, mg_str_t key, mg_json_type_t type, mg_str_t value) {
  tl_jget_t *g = ud;
  if (!mg_str_eq_c(key, g->key)) return 0;
  if (type == MG_JSON_NULL) value = mg_str_n("", 0);
  snprintf(g->out, g->outsz, "%.*s", (int)value.n, value.p);
  g->found = true;
  return 0;
}

TL_UNUSED static int tl_json_get(const char *doc, const char *key, char *out, size_t outsz) {
  tl_jget_t g = {key, out, outsz, false};
  out[0] = '\0';
  if (!doc || mg_json_object(doc, strlen(doc), tl_jget_cb, &g, NULL) != 0 || !g.found) return -1;
  return 0;
}

/* Blocking HTTP/1.0 to the control server. Returns the status; body in out. */
TL_UNUSED static int tl_ctl(const char *method, const char *path, const char *json, mg_buf_t *out) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)tl_fk.control_port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  char head[512];
  size_t blen = json ? strlen(json) : 0;
  int hn = snprintf(head, sizeof head, "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                       "Content-Length: %zu\r\n\r\n", method, path, blen);
  if (write(fd, head, (size_t)hn) != hn || (blen && write(fd, json, blen) != (ssize_t)blen)) {
    close(fd);
    return -1;
  }
  mg_buf_t resp;
  mg_buf_init(&resp, 0);
  char buf[8192];
  struct pollfd p = {fd, POLLIN, 0};
  for (;;) {
    if (poll(&p, 1, 10000) <= 0) break;
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    mg_buf_append(&resp, buf, (size_t)n);
  }
  close(fd);
  int status = -1;
  if (resp.data && sscanf(resp.data, "HTTP/1.%*d %d", &status) != 1) status = -1;
  const char *body = resp.data ? strstr(resp.data, "\r\n\r\n") : NULL;
  if (out) {
    mg_buf_reset(out);
    mg_buf_append_str(out, body ? body + 4 : "");
  }
  mg_buf_cleanup(&resp);
  return status;
}

TL_UNUSED static void tl_ctl_ok(const char *path, const char *json, mg_buf_t *out) {
  int st = tl_ctl("POST", path, json, out);
  if (st != 200) {
    fprintf(stderr, "control %s -> %d\n", path, st);
    abort();
  }
}

/* A counter from /control/state ("sts_issued"...), 0 when absent. */
TL_UNUSED static long tl_counter(const char *name) {
  mg_buf_t b, c;
  mg_buf_init(&b, 0);
  mg_buf_init(&c, 0);
  long v = 0;
  char raw[65536];
  if (tl_ctl("GET", "/control/state", NULL, &b) == 200 && tl_json_get(b.data, "counters", raw, sizeof raw) == 0) {
    char num[32];
    if (tl_json_get(raw, name, num, sizeof num) == 0) v = atol(num);
  }
  mg_buf_cleanup(&b);
  mg_buf_cleanup(&c);
  return v;
}

TL_UNUSED static void tl_fakes_stop(void) {
  if (!tl_fk.up) return;
  close(tl_fk.in_fd);
  int st;
  for (int i = 0; i < 100; i++) {
    if (waitpid(tl_fk.pid, &st, WNOHANG) == tl_fk.pid) {
      tl_fk.up = false;
      return;
    }
    usleep(50000);
  }
  kill(tl_fk.pid, SIGKILL);
  waitpid(tl_fk.pid, &st, 0);
  tl_fk.up = false;
}

__attribute__((destructor)) static void tl_fakes_atexit(void) { tl_fakes_stop(); }

/* Start `python3 awsfakes.py serve` once; false if it cannot run. */
TL_UNUSED static bool tl_fakes_start(void) {
  if (tl_fk.up) return true;
  const char *src = getenv("MG_SOURCE_DIR");
  char script[600];
  snprintf(script, sizeof script, "%s/tests/integration/awsfakes.py", src ? src : ".");
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) return false;
  pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    execlp("python3", "python3", script, "serve", (char *)NULL);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  tl_fk.pid = pid;
  tl_fk.in_fd = in[1];
  tl_fk.up = true;
  char line[4096];
  size_t n = 0;
  struct pollfd p = {out[0], POLLIN, 0};
  while (n < sizeof line - 1) {
    if (poll(&p, 1, 30000) <= 0) break;
    ssize_t r = read(out[0], line + n, 1);
    if (r <= 0 || line[n] == '\n') break;
    n++;
  }
  line[n] = '\0';
  close(out[0]);
  if (strncmp(line, "READY ", 6) != 0) {
    fprintf(stderr, "awsfakes did not start: %s\n", line);
    tl_fakes_stop();
    return false;
  }
  const char *doc = line + 6;
  tl_json_get(doc, "sts", tl_fk.sts, sizeof tl_fk.sts);
  tl_json_get(doc, "imds", tl_fk.imds, sizeof tl_fk.imds);
  tl_json_get(doc, "ecs", tl_fk.ecs, sizeof tl_fk.ecs);
  tl_json_get(doc, "ecs_path", tl_fk.ecs_path, sizeof tl_fk.ecs_path);
  tl_json_get(doc, "amp", tl_fk.amp, sizeof tl_fk.amp);
  tl_json_get(doc, "control", tl_fk.control, sizeof tl_fk.control);
  tl_json_get(doc, "region", tl_fk.region, sizeof tl_fk.region);
  const char *colon = strrchr(tl_fk.control, ':');
  tl_fk.control_port = colon ? atoi(colon + 1) : 0;
  return tl_fk.control_port > 0;
}

/* A long-term user (AKIA...) of the fakes; secrets are remembered. */
TL_UNUSED static void tl_user(const char *account, char *akid, size_t an, char *secret, size_t sn) {
  char body[200];
  mg_buf_t b;
  mg_buf_init(&b, 0);
  snprintf(body, sizeof body, "{\"account\": \"%s\", \"name\": \"moongate\"}", account);
  tl_ctl_ok("/control/user", body, &b);
  tl_json_get(b.data, "access_key_id", akid, an);
  tl_json_get(b.data, "secret_access_key", secret, sn);
  tl_secret(secret);
  mg_buf_cleanup(&b);
}

/* Temporary credentials of a role, minted by the fakes (for files). */
TL_UNUSED static void tl_issue(const char *role, int duration, char *akid, char *secret, char *token, size_t tn) {
  char body[300];
  mg_buf_t b;
  mg_buf_init(&b, 0);
  snprintf(body, sizeof body, "{\"role\": \"%s\", \"duration\": %d}", role, duration);
  tl_ctl_ok("/control/issue", body, &b);
  tl_json_get(b.data, "access_key_id", akid, 64);
  tl_json_get(b.data, "secret_access_key", secret, 128);
  tl_json_get(b.data, "session_token", token, tn);
  tl_secret(secret);
  tl_secret(token);
  mg_buf_cleanup(&b);
}

/* What /control/key says a key belongs to: "role" or "principal". */
TL_UNUSED static void tl_key_info(const char *akid, const char *field, char *out, size_t n) {
  char path[200];
  mg_buf_t b;
  mg_buf_init(&b, 0);
  snprintf(path, sizeof path, "/control/key/%s", akid);
  out[0] = '\0';
  if (tl_ctl("GET", path, NULL, &b) == 200) tl_json_get(b.data, field, out, n);
  mg_buf_cleanup(&b);
}

#endif
