/* Tests for mg_privsep without needing root (the drop itself is checked
 * in a child when the tests do run as root): the helper serves only its
 * listed files, reads them whole with mg_creds' outcomes (missing, too
 * big, not a regular file), reports in-place and rename rewrites within a
 * second, refuses any request outside the protocol, and its death turns
 * into a logged error and failed reads, never a hang. Then mg_creds reads
 * and watches a shared credentials file through the helper (counted by a
 * shim around the reader) across rotations, and says clearly when the
 * helper is gone. Every test closes its loop and checks the logs for
 * secrets. */
#include <grp.h>
#include <pwd.h>

#include "creds_testlib.h"
#include "mg_privsep.h"

__attribute__((constructor)) static void setup(void) {
  signal(SIGPIPE, SIG_IGN);
  tl_capture_logs();
}

/* ------------------------------------------------------------ helpers */

typedef struct ctx {
  uv_loop_t loop;
  mg_privsep_t *ps;
  const mg_fileio_t *io;
} ctx_t;

static bool ctx_start(ctx_t *x, const char *const *paths, size_t n) {
  char msg[256] = "";
  uv_loop_init(&x->loop);
  int rc = mg_privsep_spawn(paths, n, &x->ps, msg, sizeof msg);
  if (rc) {
    MG_FAIL_("spawn: %s: %s", mg_err_name(rc), msg);
    return false;
  }
  if (mg_privsep_attach(x->ps, &x->loop) != 0) return false;
  x->io = mg_privsep_fileio(x->ps);
  return x->io != NULL;
}

static void ctx_stop(ctx_t *x) {
  pid_t pid = mg_privsep_pid(x->ps);
  mg_privsep_free(x->ps);
  for (int i = 0; i < 400 && uv_run(&x->loop, UV_RUN_NOWAIT); i++) usleep(5000);
  CHECK_INT(uv_loop_close(&x->loop), 0);
  /* Reaped by mg_privsep_free: no such child any more. */
  CHECK(waitpid(pid, NULL, WNOHANG) == -1 && errno == ECHILD);
}

typedef struct got {
  int calls;
  int err, sys_errno;
  mg_fileio_sig_t sig;
  char data[8192];
  size_t len;
} got_t;

static void on_got(void *ctx, int err, int sys_errno, const mg_fileio_sig_t *sig, const char *data, size_t len) {
  got_t *g = ctx;
  g->calls++;
  g->err = err;
  g->sys_errno = sys_errno;
  g->sig = *sig;
  g->len = len < sizeof g->data ? len : sizeof g->data;
  if (data) memcpy(g->data, data, g->len);
}

static bool got_one(void *ud) { return ((got_t *)ud)->calls > 0; }

/* Read path through the helper; the callback must come later, once. */
static void read_via(ctx_t *x, const char *path, size_t limit, got_t *g) {
  memset(g, 0, sizeof *g);
  int rc = x->io->read(x->io->ud, path, limit, on_got, g);
  CHECK_INT(rc, 0);
  CHECK_INT(g->calls, 0); /* never from inside the call */
  CHECK(tl_run_until(&x->loop, got_one, g, 3000, 2));
  CHECK_INT(g->calls, 1);
}

/* ------------------------------------------------------------ reads */

MG_TEST(reads_only_listed_files_whole) {
  tl_clean_env();
  char a[300], big[300], missing[300], dir[300], other[300];
  tl_path(a, sizeof a, "a.txt");
  tl_path(big, sizeof big, "big.txt");
  tl_path(missing, sizeof missing, "nope/missing.txt");
  tl_path(dir, sizeof dir, "adir");
  tl_path(other, sizeof other, "other.txt");
  tl_write_in_place(a, "hello\nworld\n", 12);
  char text[3000];
  memset(text, 'x', sizeof text);
  tl_write_in_place(big, text, sizeof text);
  tl_write_in_place(other, "not served\n", 11);
  tl_mkdir(dir);
  const char *paths[] = {a, big, missing, dir};
  ctx_t x;
  REQUIRE(ctx_start(&x, paths, 4));
  CHECK(x.io->serves(x.io->ud, a));
  CHECK(!x.io->serves(x.io->ud, other));
  CHECK(!x.io->serves(x.io->ud, "a.txt")); /* compared as strings, exactly */
  got_t g;
  CHECK_INT(x.io->read(x.io->ud, other, 100, on_got, &g), MG_EINVAL);

  read_via(&x, a, 4096, &g);
  CHECK_INT(g.err, 0);
  CHECK_MEM(g.data, g.len, "hello\nworld\n", 12);
  struct stat st;
  REQUIRE(stat(a, &st) == 0);
  CHECK(g.sig.exists);
  CHECK_U64(g.sig.ino, st.st_ino);
  CHECK_U64(g.sig.size, 12);

  read_via(&x, big, 1000, &g);
  CHECK_INT(g.err, MG_ETOOBIG);
  CHECK_INT(g.len, 0);
  read_via(&x, big, 8192, &g);
  CHECK_INT(g.err, 0);
  CHECK_INT(g.len, sizeof text);
  read_via(&x, missing, 100, &g);
  CHECK_INT(g.err, MG_ENOTFOUND);
  CHECK_INT(g.sys_errno, ENOENT);
  read_via(&x, dir, 100, &g);
  CHECK_INT(g.err, MG_EIO);
  CHECK_INT(g.sys_errno, EISDIR);
  /* A limit above the protocol's is capped, not refused. */
  read_via(&x, a, (size_t)MG_PRIVSEP_MAX_READ * 4, &g);
  CHECK_INT(g.err, 0);

  /* Several reads in flight at once, answered each to its own caller. */
  got_t many[8];
  memset(many, 0, sizeof many);
  for (int i = 0; i < 8; i++) CHECK_INT(x.io->read(x.io->ud, i % 2 ? a : big, 8192, on_got, &many[i]), 0);
  tl_run_until(&x.loop, got_one, &many[7], 3000, 2);
  tl_run_for(&x.loop, 20);
  for (int i = 0; i < 8; i++) {
    CHECK_INT(many[i].calls, 1);
    CHECK_INT(many[i].len, i % 2 ? 12 : sizeof text);
  }
  ctx_stop(&x);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ change notices */

typedef struct seen {
  int calls, named;
  mg_fileio_sig_t last;
} seen_t;

static void on_change(void *ctx, const mg_fileio_sig_t *sig, bool named) {
  seen_t *s = ctx;
  s->calls++;
  s->named += named;
  s->last = *sig;
}

typedef struct want_ino {
  seen_t *s;
  uint64_t ino;
} want_ino_t;

static bool seen_ino(void *ud) {
  want_ino_t *w = ud;
  return w->s->calls && w->s->last.exists && w->s->last.ino == w->ino;
}

static bool seen_any(void *ud) { return ((seen_t *)ud)->calls > 0; }
static bool seen_gone(void *ud) { return ((seen_t *)ud)->calls > 0 && !((seen_t *)ud)->last.exists; }

MG_TEST(changes_reported_within_a_second) {
  tl_clean_env();
  char f[300], later_dir[300], later[300];
  tl_path(f, sizeof f, "creds");
  tl_path(later_dir, sizeof later_dir, "later");
  tl_path(later, sizeof later, "later/creds");
  tl_write_in_place(f, "one\n", 4);
  const char *paths[] = {f, later};
  ctx_t x;
  REQUIRE(ctx_start(&x, paths, 2));
  seen_t s = {0}, s2 = {0};
  uint64_t tok, tok2;
  CHECK_INT(x.io->watch(x.io->ud, f, on_change, &s, &tok), 0);
  CHECK_INT(x.io->watch(x.io->ud, later, on_change, &s2, &tok2), 0);
  CHECK_INT(x.io->watch(x.io->ud, "/elsewhere", on_change, &s, &tok), MG_EINVAL);
  tl_run_for(&x.loop, 1300); /* a sweep with nothing changed reports nothing */
  CHECK_INT(s.calls, 0);

  /* In place: the event names the file, at once. */
  uint64_t t0 = tl_now_ms();
  tl_write_in_place(f, "two, longer\n", 12);
  CHECK(tl_run_until(&x.loop, seen_any, &s, 2000, 2));
  CHECK(tl_now_ms() - t0 < 1000);
  CHECK(s.named > 0);
  CHECK_U64(s.last.size, 12);

  /* By rename: a new inode. */
  s = (seen_t){0};
  t0 = tl_now_ms();
  tl_write_rename(f, "three\n");
  struct stat st;
  REQUIRE(stat(f, &st) == 0);
  want_ino_t wi = {&s, st.st_ino};
  CHECK(tl_run_until(&x.loop, seen_ino, &wi, 2000, 2));
  CHECK(tl_now_ms() - t0 < 1000);

  /* A directory that did not exist when the helper started: found by the
   * once-a-second sweep, which then watches it. */
  t0 = tl_now_ms();
  tl_mkdir(later_dir);
  tl_write_in_place(later, "x\n", 2);
  CHECK(tl_run_until(&x.loop, seen_any, &s2, 3000, 2));
  CHECK(tl_now_ms() - t0 < 1500);
  CHECK(s2.last.exists);
  s2 = (seen_t){0};
  unlink(later);
  CHECK(tl_run_until(&x.loop, seen_gone, &s2, 3000, 2));

  /* Unwatched: no more callbacks. */
  x.io->unwatch(x.io->ud, tok);
  s = (seen_t){0};
  tl_write_in_place(f, "four\n", 5);
  tl_run_for(&x.loop, 1300);
  CHECK_INT(s.calls, 0);
  ctx_stop(&x);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ the protocol */

/* The request frame as the helper expects it: any other frame ends it. */
typedef struct frame {
  uint32_t magic, op, id, index, limit;
} frame_t;

static int serve_and_send(const char *path, const void *bytes, size_t n, bool read_answer) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    const char *paths[] = {path};
    _exit(mg_privsep_serve(sv[1], paths, 1));
  }
  close(sv[1]);
  if (n && write(sv[0], bytes, n) != (ssize_t)n) MG_FAIL_("write to the helper failed");
  if (read_answer) {
    char hdr[72];
    size_t got = 0;
    while (got < sizeof hdr) {
      ssize_t r = read(sv[0], hdr + got, sizeof hdr - got);
      if (r <= 0) break;
      got += (size_t)r;
    }
    CHECK_INT(got, sizeof hdr);
  }
  close(sv[0]);
  int st = 0;
  for (int i = 0; i < 400 && waitpid(pid, &st, WNOHANG) == 0; i++) usleep(5000);
  if (waitpid(pid, &st, WNOHANG) == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

MG_TEST(protocol_violations_end_the_helper) {
  tl_clean_env();
  char f[300];
  tl_path(f, sizeof f, "f");
  tl_write_in_place(f, "data\n", 5);
  const uint32_t magic = 0x3170676du;
  frame_t good = {magic, 1, 7, 0, 4096};
  CHECK_INT(serve_and_send(f, NULL, 0, false), 0);                /* a clean close */
  CHECK_INT(serve_and_send(f, &good, sizeof good, true), 0);      /* one read, answered, then closed */
  frame_t bad_index = {magic, 1, 7, 1, 4096}, bad_op = {magic, 2, 7, 0, 4096}, bad_magic = {1, 1, 7, 0, 4096};
  frame_t too_big = {magic, 1, 7, 0, MG_PRIVSEP_MAX_READ + 1}, zero = {magic, 1, 7, 0, 0};
  CHECK_INT(serve_and_send(f, &bad_index, sizeof bad_index, false), 2);
  CHECK_INT(serve_and_send(f, &bad_op, sizeof bad_op, false), 2);
  CHECK_INT(serve_and_send(f, &bad_magic, sizeof bad_magic, false), 2);
  CHECK_INT(serve_and_send(f, &too_big, sizeof too_big, false), 2);
  CHECK_INT(serve_and_send(f, &zero, sizeof zero, false), 2);
  CHECK_INT(serve_and_send(f, &good, 10, false), 2); /* a frame cut short */
  const char *none[] = {NULL};
  CHECK_INT(mg_privsep_serve(-1, none, 0), 1);
  char msg[200];
  mg_privsep_t *ps = NULL;
  CHECK_INT(mg_privsep_spawn(none, 0, &ps, msg, sizeof msg), MG_EINVAL);
  const char *empty[] = {""};
  CHECK_INT(mg_privsep_spawn(empty, 1, &ps, msg, sizeof msg), MG_EINVAL);
  CHECK(ps == NULL);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ helper death */

static bool logged_exit(void *ud) {
  (void)ud;
  return tl_log_count("event=helper_exited") > 0;
}

MG_TEST(helper_death_is_logged_and_reads_fail) {
  tl_clean_env();
  char f[300];
  tl_path(f, sizeof f, "f");
  tl_write_in_place(f, "data\n", 5);
  const char *paths[] = {f};
  ctx_t x;
  REQUIRE(ctx_start(&x, paths, 1));
  got_t g;
  read_via(&x, f, 100, &g);
  CHECK_INT(g.err, 0);
  int before = tl_log_count("event=helper_exited");
  kill(mg_privsep_pid(x.ps), SIGKILL);
  CHECK(tl_run_until(&x.loop, logged_exit, NULL, 3000, 5));
  CHECK_INT(tl_log_count("event=helper_exited") - before, 1);
  char *log = tl_log_text();
  const char *line = strstr(log, "event=helper_exited");
  CHECK(line && strstr(line, "killed by signal 9") && strstr(line, "restart moongate"));
  CHECK(strstr(log, "level=error mod=privsep event=helper_exited") != NULL);
  free(log);
  /* Reads fail, later, with MG_ECLOSED: they do not hang. */
  read_via(&x, f, 100, &g);
  CHECK_INT(g.err, MG_ECLOSED);
  ctx_stop(&x);
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ mg_creds through the helper */

/* A shim around the helper's reader that counts what mg_creds asks. */
typedef struct shim {
  const mg_fileio_t *inner;
  mg_fileio_t io;
  int reads, watches, unwatches;
} shim_t;

static bool sh_serves(void *ud, const char *p) {
  shim_t *s = ud;
  return s->inner->serves(s->inner->ud, p);
}
static int sh_read(void *ud, const char *p, size_t limit, mg_fileio_read_cb cb, void *ctx) {
  shim_t *s = ud;
  s->reads++;
  return s->inner->read(s->inner->ud, p, limit, cb, ctx);
}
static int sh_watch(void *ud, const char *p, mg_fileio_change_cb cb, void *ctx, uint64_t *tok) {
  shim_t *s = ud;
  s->watches++;
  return s->inner->watch(s->inner->ud, p, cb, ctx, tok);
}
static void sh_unwatch(void *ud, uint64_t tok) {
  shim_t *s = ud;
  s->unwatches++;
  s->inner->unwatch(s->inner->ud, tok);
}

typedef struct rot {
  mg_creds_t *c;
  const char *want;
  bool gap;
} rot_t;

static bool rot_seen(void *ud) {
  rot_t *r = ud;
  mg_creds_value_t *v = mg_creds_current(r->c);
  if (!v) {
    r->gap = true;
    return false;
  }
  bool same = strcmp(v->access_key_id, r->want) == 0;
  tl_secret_value(v);
  mg_creds_value_unref(v);
  return same;
}

static void creds_text(char *out, size_t n, const char *akid, int i) {
  snprintf(out, n, "[default]\naws_access_key_id = %s\naws_secret_access_key = psecret%026d\n"
                   "aws_session_token = ptoken%050d\n", akid, i, i);
  char s[64], t[80];
  snprintf(s, sizeof s, "psecret%026d", i);
  snprintf(t, sizeof t, "ptoken%050d", i);
  tl_secret(s);
  tl_secret(t);
}

MG_TEST(creds_rotate_through_the_helper) {
  tl_clean_env();
  char dir[300], cred[300], text[400];
  tl_path(dir, sizeof dir, ".aws");
  tl_path(cred, sizeof cred, ".aws/credentials");
  tl_mkdir(dir);
  creds_text(text, sizeof text, "ASIAPRIVSEP000001", 1);
  tl_write_in_place(cred, text, strlen(text));
  /* The files mg_creds would read here: what `run --user` hands the helper. */
  char files[MG_CREDS_ENV_FILES_MAX][MG_CREDS_PATH_MAX];
  size_t n = mg_creds_env_files(files, MG_CREDS_ENV_FILES_MAX);
  CHECK_INT(n, 2);
  CHECK_STR(files[0], cred);
  const char *paths[MG_CREDS_ENV_FILES_MAX];
  for (size_t i = 0; i < n; i++) paths[i] = files[i];
  ctx_t x;
  REQUIRE(ctx_start(&x, paths, n));
  shim_t sh = {.inner = x.io};
  sh.io = (mg_fileio_t){&sh, sh_serves, sh_read, sh_watch, sh_unwatch};
  mg_creds_use_fileio(&sh.io);
  mg_http_client_t *http = mg_http_client_new(&x.loop, NULL);
  mg_conf_creds_t conf = {.kind = MG_CREDS_PROFILE};
  mg_creds_opts_t o = {.retry_min_ms = 30000, .retry_max_ms = 60000}; /* no help from retries */
  int err;
  mg_creds_t *c = mg_creds_new(&x.loop, http, &conf, "us-east-1", "privsep-test", &o, &err);
  mg_creds_use_fileio(NULL); /* objects keep the reader they were made with */
  REQUIRE(c);
  CHECK_INT(sh.watches, 2); /* credentials and config file */
  mg_creds_value_t *v = tl_get(&x.loop, c, 3000);
  REQUIRE(v);
  CHECK_STR(v->access_key_id, "ASIAPRIVSEP000001");
  mg_creds_value_unref(v);
  CHECK(sh.reads >= 2);
  for (int i = 2; i <= 5; i++) {
    char akid[32];
    snprintf(akid, sizeof akid, "ASIAPRIVSEP%06d", i);
    creds_text(text, sizeof text, akid, i);
    uint64_t t0 = tl_now_ms();
    if (i % 2) tl_write_rename(cred, text);
    else tl_write_in_place(cred, text, strlen(text));
    rot_t r = {c, akid, false};
    CHECK(tl_run_until(&x.loop, rot_seen, &r, 3000, 5));
    uint64_t took = tl_now_ms() - t0;
    if (took >= 1000) MG_FAIL_("rotation %d (%s) noticed after %llu ms", i, i % 2 ? "rename" : "in place",
                               (unsigned long long)took);
    CHECK(!r.gap);
  }
  CHECK_INT(tl_log_count("event=credentials_rotated creds=privsep-test"), 4);
  int reads = sh.reads;

  /* The helper dies: logged; the credentials already read stay in use;
   * a refresh that must read the file fails and says why. */
  kill(mg_privsep_pid(x.ps), SIGKILL);
  CHECK(tl_run_until(&x.loop, logged_exit, NULL, 3000, 5));
  v = mg_creds_current(c);
  REQUIRE(v);
  CHECK_STR(v->access_key_id, "ASIAPRIVSEP000005");
  mg_creds_invalidate(c, v); /* as remote_write does on 403 ExpiredToken */
  mg_creds_value_unref(v);
  CHECK(tl_wait_refresh(&x.loop, c, 3000) != 0);
  CHECK(sh.reads > reads);
  mg_creds_info_t info;
  mg_creds_describe(c, &info);
  char want[400];
  snprintf(want, sizeof want, "cannot read %s: the privileged helper that reads it (moongate run --user) has exited",
           cred);
  if (!strstr(info.last_error, want)) MG_FAIL_("last error \"%s\" lacks \"%s\"", info.last_error, want);

  mg_creds_free(c);
  mg_http_client_free(http);
  for (int i = 0; i < 50 && uv_run(&x.loop, UV_RUN_NOWAIT); i++) usleep(2000);
  CHECK_INT(sh.unwatches, 2);
  ctx_stop(&x);
  tl_check_no_secrets(NULL);
  tl_rm_rf(tl_home);
}

/* What `run --user` hands the helper: the files mg_creds would read. */
MG_TEST(env_files_as_mg_creds_names_them) {
  tl_clean_env();
  char files[MG_CREDS_ENV_FILES_MAX][MG_CREDS_PATH_MAX], want[400];
  size_t n = mg_creds_env_files(files, MG_CREDS_ENV_FILES_MAX);
  REQUIRE(n == 2);
  snprintf(want, sizeof want, "%s/.aws/credentials", tl_home);
  CHECK_STR(files[0], want);
  snprintf(want, sizeof want, "%s/.aws/config", tl_home);
  CHECK_STR(files[1], want);
  setenv("AWS_SHARED_CREDENTIALS_FILE", "/etc/aws/creds", 1);
  setenv("AWS_CONFIG_FILE", "/etc/aws/creds", 1); /* the same file once */
  setenv("AWS_WEB_IDENTITY_TOKEN_FILE", "~/token", 1);
  setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/run/ecs-token", 1);
  n = mg_creds_env_files(files, MG_CREDS_ENV_FILES_MAX);
  REQUIRE(n == 3);
  CHECK_STR(files[0], "/etc/aws/creds");
  snprintf(want, sizeof want, "%s/token", tl_home);
  CHECK_STR(files[1], want);
  CHECK_STR(files[2], "/run/ecs-token");
  CHECK_INT(mg_creds_env_files(files, 1), 1);
  tl_clean_env();
  tl_rm_rf(tl_home);
}

/* ------------------------------------------------------------ users and the drop */

MG_TEST(user_lookup) {
  mg_privsep_user_t u;
  char msg[200];
  CHECK_INT(mg_privsep_lookup("no-such-user-moongate-test", &u, msg, sizeof msg), MG_ENOTFOUND);
  CHECK(strstr(msg, "no such user") != NULL);
  CHECK_INT(mg_privsep_lookup("root", &u, msg, sizeof msg), MG_EINVAL);
  CHECK(strstr(msg, "root") != NULL);
  CHECK_INT(mg_privsep_lookup("", &u, msg, sizeof msg), MG_EINVAL);
  struct passwd *pw = getpwnam("nobody");
  if (pw) {
    CHECK_INT(mg_privsep_lookup("nobody", &u, msg, sizeof msg), 0);
    CHECK_INT(u.uid, pw->pw_uid);
    CHECK_INT(u.gid, pw->pw_gid);
    CHECK_STR(u.name, "nobody");
  }
}

/* As root only (CI runs as root): in a child, give a directory to nobody,
 * drop, and check every id, the groups, that root cannot come back and
 * that a root-only file is out of reach. */
MG_TEST(drop_to_nobody_when_root) {
  if (geteuid() != 0 || !getpwnam("nobody")) {
    printf("  skipped: needs root and the user nobody\n");
    return;
  }
  tl_clean_env();
  chmod(tl_home, 0755);
  char dir[300], secret[300];
  tl_path(dir, sizeof dir, "data");
  tl_path(secret, sizeof secret, "secret");
  tl_write_in_place(secret, "x\n", 2); /* 0600, root's */
  pid_t pid = fork();
  if (pid == 0) {
    mg_privsep_user_t u;
    char msg[300];
    if (mg_privsep_lookup("nobody", &u, msg, sizeof msg) != 0) _exit(10);
    if (mg_privsep_give_dir(dir, &u, msg, sizeof msg) != 0) _exit(11);
    if (mg_privsep_drop(&u, msg, sizeof msg) != 0) _exit(12);
    if (getuid() != u.uid || geteuid() != u.uid || getgid() != u.gid || getegid() != u.gid) _exit(13);
    if (setuid(0) == 0 || setgid(0) == 0) _exit(14);
    gid_t groups[64];
    int ng = getgroups(64, groups);
    for (int i = 0; i < ng; i++)
      if (groups[i] == 0) _exit(15); /* root's supplementary groups are gone */
    if (open(secret, O_RDONLY) >= 0 || errno != EACCES) _exit(16);
    char probe[320];
    snprintf(probe, sizeof probe, "%s/probe", dir); /* the given directory is writable */
    int fd = open(probe, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) _exit(17);
    close(fd);
    _exit(0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st));
  CHECK_INT(WEXITSTATUS(st), 0);
  struct stat sb;
  CHECK(stat(dir, &sb) == 0 && sb.st_uid == getpwnam("nobody")->pw_uid);
  tl_rm_rf(tl_home);
}

MG_TEST_MAIN()
