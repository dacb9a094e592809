/* mg_privsep: the helper (first half: runs as root, blocking, no libuv;
 * meant to be read in one sitting) and the main process's end of the
 * socket (second half: libuv, never blocks). The wire carries fixed-size
 * frames in host byte order (both ends are the same binary): 20-byte
 * requests that name a file by its index in the list fixed at fork, and
 * 72-byte answers followed by the file's bytes. The helper answers in
 * order and pushes change notices in between. File contents cross the
 * socket once and are wiped on both sides; nothing logs them. */
#include "mg_privsep.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"

#define MOD "privsep"
#define REQ_MAGIC 0x3170676du /* "mgp1" */
#define MSG_MAGIC 0x3270676du /* "mgp2" */
#define OP_READ 1u
#define MSG_REPLY 1u
#define MSG_CHANGED 2u
#define FLAG_EXISTS 1u
#define FLAG_NAMED 2u
#define SWEEP_MS 1000     /* the helper stats every file at least this often: fs events can be missed */
#define HELPER_NOFILE 32  /* stdio, the socket, inotify, one file at a time, slack */
#define REAP_EVERY_MS 20
#define REAP_KILL_AFTER 50 /* polls (1 s) before SIGKILL when the socket closed but the helper lingers */

typedef struct wire_req {
  uint32_t magic, op, id, index, limit;
} wire_req_t;

typedef struct wire_msg {
  uint32_t magic, type, id, index;
  int32_t err;  /* errno of a failed read; 0 */
  uint32_t len; /* bytes that follow (replies only) */
  uint32_t flags;
  uint32_t pad_;
  uint64_t dev, ino, size;
  int64_t mtime_ns, ctime_ns;
} wire_msg_t;

_Static_assert(sizeof(wire_req_t) == 20, "request frames have no padding");
_Static_assert(sizeof(wire_msg_t) == 72, "message headers have no padding");

static void msgf(char *out, size_t outsz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void msgf(char *out, size_t outsz, const char *fmt, ...) {
  if (!out || !outsz) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out, outsz, fmt, ap);
  va_end(ap);
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sig_from_stat(mg_fileio_sig_t *s, const struct stat *st) {
  s->exists = true;
  s->dev = st->st_dev;
  s->ino = st->st_ino;
  s->size = (uint64_t)st->st_size;
  s->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
  s->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

static bool sig_eq(const mg_fileio_sig_t *a, const mg_fileio_sig_t *b) {
  if (a->exists != b->exists) return false;
  return !a->exists || (a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_ns == b->mtime_ns &&
                        a->ctime_ns == b->ctime_ns);
}

/* ================================================================ helper (root) */

typedef struct hfile {
  const char *path, *base;
  size_t dir; /* index into helper_t.dirs */
  mg_fileio_sig_t last; /* as last reported (or found at start) */
  bool named;           /* an fs event named it since the last sweep */
} hfile_t;

typedef struct hdir {
  char path[PATH_MAX];
  int wd; /* -1: not watched (missing, or moved away): retried at each sweep */
} hdir_t;

typedef struct helper {
  int fd, ino;
  hfile_t files[MG_PRIVSEP_MAX_PATHS];
  hdir_t dirs[MG_PRIVSEP_MAX_PATHS];
  size_t nfiles, ndirs;
} helper_t;

static void sig_of(const char *path, mg_fileio_sig_t *s) {
  struct stat st;
  memset(s, 0, sizeof *s);
  if (stat(path, &st) == 0) sig_from_stat(s, &st);
}

static void put_sig(wire_msg_t *m, const mg_fileio_sig_t *s) {
  m->flags |= s->exists ? FLAG_EXISTS : 0;
  m->dev = s->dev;
  m->ino = s->ino;
  m->size = s->size;
  m->mtime_ns = s->mtime_ns;
  m->ctime_ns = s->ctime_ns;
}

/* Header and data in one go; MSG_NOSIGNAL: a closed peer is EPIPE, not a
 * signal. 0, or -1 with errno. */
static int send_msg(int fd, const wire_msg_t *m, const char *data, size_t len) {
  struct iovec iov[2] = {{(void *)m, sizeof *m}, {(void *)data, len}};
  struct msghdr mh = {.msg_iov = iov, .msg_iovlen = len ? 2 : 1};
  while (mh.msg_iovlen) {
    ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    while (n > 0 && mh.msg_iovlen) {
      size_t take = (size_t)n < mh.msg_iov->iov_len ? (size_t)n : mh.msg_iov->iov_len;
      mh.msg_iov->iov_base = (char *)mh.msg_iov->iov_base + take;
      mh.msg_iov->iov_len -= take;
      n -= (ssize_t)take;
      if (!mh.msg_iov->iov_len) {
        mh.msg_iov++;
        mh.msg_iovlen--;
      }
    }
  }
  return 0;
}

/* The whole file, read as mg_creds reads it: a buffer sized from fstat
 * plus slack; a file that grows past it is being written (EAGAIN), one
 * larger than limit is refused (EFBIG). O_NONBLOCK: a FIFO planted at the
 * path cannot hang the helper. 0 or an errno; *out is wiped by the caller. */
static int read_file(const char *path, uint32_t limit, char **out, size_t *len, mg_fileio_sig_t *sig) {
  *out = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return errno;
  struct stat st;
  int err = 0;
  if (fstat(fd, &st) != 0) err = errno;
  else if (!S_ISREG(st.st_mode)) err = EISDIR; /* as mg_creds says of anything but a regular file */
  else if ((uint64_t)st.st_size > limit) err = EFBIG;
  size_t room = 0, got = 0;
  char *buf = NULL;
  if (!err) {
    room = (size_t)st.st_size + 4096;
    if (room > limit) room = limit;
    if (!(buf = mg_malloc(room))) err = ENOMEM;
  }
  while (!err) {
    if (got == room) {
      err = room >= limit ? EFBIG : EAGAIN;
      break;
    }
    ssize_t n = read(fd, buf + got, room - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) err = errno;
    if (n <= 0) break;
    got += (size_t)n;
  }
  close(fd);
  if (err) {
    if (buf) mg_mem_wipe(buf, got);
    mg_free(buf);
    return err;
  }
  sig_from_stat(sig, &st);
  *out = buf;
  *len = got;
  return 0;
}

static int serve_read(helper_t *h, const wire_req_t *q) {
  char *data = NULL;
  size_t len = 0;
  mg_fileio_sig_t sig = {0};
  int err = read_file(h->files[q->index].path, q->limit, &data, &len, &sig);
  wire_msg_t m = {.magic = MSG_MAGIC, .type = MSG_REPLY, .id = q->id, .index = q->index, .err = err, .len = (uint32_t)len};
  put_sig(&m, &sig);
  int rc = send_msg(h->fd, &m, data, len);
  if (data) mg_mem_wipe(data, len);
  mg_free(data);
  return rc;
}

/* Everything the main process may ask. It may be compromised: anything
 * else ends the helper. */
static bool req_ok(const helper_t *h, const wire_req_t *q) {
  return q->magic == REQ_MAGIC && q->op == OP_READ && q->index < h->nfiles && q->limit >= 1 &&
         q->limit <= MG_PRIVSEP_MAX_READ;
}

/* 1: a request in *q; 0: the peer closed; -1: a socket error; -2: a frame
 * cut short. A peer that stalls mid-frame stalls only itself. */
static int recv_req(int fd, wire_req_t *q) {
  size_t got = 0;
  while (got < sizeof *q) {
    ssize_t n = recv(fd, (char *)q + got, sizeof *q - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || (n < 0 && errno == ECONNRESET && !got)) return got ? -2 : 0; /* reset: closed unread */
    if (n < 0) return -1;
    got += (size_t)n;
  }
  return 1;
}

static void watch_dirs(helper_t *h) {
  if (h->ino < 0) return;
  for (size_t i = 0; i < h->ndirs; i++) {
    if (h->dirs[i].wd >= 0) continue;
    h->dirs[i].wd = inotify_add_watch(h->ino, h->dirs[i].path,
                                      IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM |
                                          IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR);
  }
}

static void on_event(helper_t *h, const struct inotify_event *ev) {
  for (size_t i = 0; i < h->nfiles && (ev->mask & IN_Q_OVERFLOW); i++) h->files[i].named = true;
  for (size_t d = 0; d < h->ndirs; d++) {
    if (h->dirs[d].wd != ev->wd) continue;
    if (ev->mask & (IN_IGNORED | IN_MOVE_SELF)) { /* gone or moved: watch the path again later */
      if (ev->mask & IN_MOVE_SELF) inotify_rm_watch(h->ino, ev->wd);
      h->dirs[d].wd = -1;
    }
    for (size_t i = 0; i < h->nfiles; i++)
      if (h->files[i].dir == d && ev->len && strcmp(ev->name, h->files[i].base) == 0) h->files[i].named = true;
  }
}

/* Drain the inotify queue (bounded per wakeup). Whether anything came. */
static bool read_events(helper_t *h) {
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  bool any = false;
  for (int round = 0; round < 64; round++) {
    ssize_t n = read(h->ino, buf, sizeof buf);
    if (n <= 0) break;
    any = true;
    for (char *p = buf; p < buf + n;) {
      const struct inotify_event *ev = (const struct inotify_event *)p;
      on_event(h, ev);
      p += sizeof *ev + ev->len;
    }
  }
  return any;
}

/* Stat every file; report those that changed or that an event named. */
static int sweep(helper_t *h) {
  watch_dirs(h);
  for (size_t i = 0; i < h->nfiles; i++) {
    hfile_t *f = &h->files[i];
    mg_fileio_sig_t s;
    sig_of(f->path, &s);
    if (!f->named && sig_eq(&s, &f->last)) continue;
    wire_msg_t m = {.magic = MSG_MAGIC, .type = MSG_CHANGED, .index = (uint32_t)i, .flags = f->named ? FLAG_NAMED : 0};
    put_sig(&m, &s);
    f->last = s;
    f->named = false;
    if (send_msg(h->fd, &m, NULL, 0) != 0) return -1;
  }
  return 0;
}

static helper_t *helper_new(int fd, const char *const *paths, size_t npaths) {
  if (!paths || npaths == 0 || npaths > MG_PRIVSEP_MAX_PATHS) return NULL;
  helper_t *h = mg_calloc(1, sizeof *h);
  if (!h) return NULL;
  h->fd = fd;
  for (size_t i = 0; i < npaths; i++) {
    hfile_t *f = &h->files[h->nfiles++];
    const char *slash = strrchr(paths[i], '/');
    char dir[PATH_MAX];
    if (!slash) snprintf(dir, sizeof dir, ".");
    else snprintf(dir, sizeof dir, "%.*s", slash == paths[i] ? 1 : (int)(slash - paths[i]), paths[i]);
    f->path = paths[i];
    f->base = slash ? slash + 1 : paths[i];
    size_t d = 0;
    while (d < h->ndirs && strcmp(h->dirs[d].path, dir) != 0) d++;
    if (d == h->ndirs) {
      snprintf(h->dirs[d].path, sizeof h->dirs[d].path, "%s", dir);
      h->dirs[d].wd = -1;
      h->ndirs++;
    }
    f->dir = d;
  }
  /* No inotify (a kernel without it, or the instance limit reached): the
   * sweep every second still finds every change. */
  h->ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  watch_dirs(h);
  for (size_t i = 0; i < h->nfiles; i++) sig_of(h->files[i].path, &h->files[i].last);
  return h;
}

int mg_privsep_serve(int fd, const char *const *paths, size_t npaths) {
  helper_t *h = helper_new(fd, paths, npaths);
  if (!h) return 1;
  int status = 0;
  int64_t next_sweep = mono_ms() + SWEEP_MS;
  for (;;) {
    struct pollfd p[2] = {{fd, POLLIN, 0}, {h->ino, POLLIN, 0}};
    int64_t wait = next_sweep - mono_ms();
    int n = poll(p, h->ino >= 0 ? 2 : 1, wait > 0 ? (int)wait : 0);
    if (n < 0 && errno != EINTR) {
      status = 1;
      break;
    }
    if (n > 0 && p[0].revents) {
      wire_req_t q = {0};
      int r = recv_req(fd, &q);
      if (r == 0) break; /* the main process closed its end: done */
      if (r == -1) {
        MG_ERROR(MOD, "helper_socket_error", "err=%s", strerror(errno));
        status = 1;
        break;
      }
      if (r == -2 || !req_ok(h, &q)) {
        MG_ERROR(MOD, "helper_protocol_error",
                 "frame=%s magic=%#x op=%u index=%u limit=%u hint=\"the main process sent a request the helper "
                 "does not serve; the helper exits\"",
                 r == -2 ? "cut" : "whole", q.magic, q.op, q.index, q.limit);
        status = 2;
        break;
      }
      if (serve_read(h, &q) != 0) {
        status = errno == EPIPE || errno == ECONNRESET ? 0 : 1;
        break;
      }
    }
    bool events = n > 0 && h->ino >= 0 && (p[1].revents & POLLIN) && read_events(h);
    if (events || mono_ms() >= next_sweep) {
      if (sweep(h) != 0) {
        status = errno == EPIPE || errno == ECONNRESET ? 0 : 1;
        break;
      }
      next_sweep = mono_ms() + SWEEP_MS;
    }
  }
  if (h->ino >= 0) close(h->ino);
  mg_free(h);
  return status;
}

/* Keep, of root's powers, only reading what the owner bits would refuse:
 * uid 0 still opens root's own 0600 files without any capability. Best
 * effort: a container may already have taken more away. */
static void drop_capabilities(void) {
  for (unsigned long cap = 0; cap <= CAP_LAST_CAP; cap++)
    if (cap != CAP_DAC_READ_SEARCH) (void)prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];
  memset(d, 0, sizeof d);
  if (syscall(SYS_capget, &hdr, d) != 0) return;
  for (int i = 0; i < _LINUX_CAPABILITY_U32S_3; i++) {
    uint32_t keep = i == (int)CAP_TO_INDEX(CAP_DAC_READ_SEARCH) ? CAP_TO_MASK(CAP_DAC_READ_SEARCH) : 0;
    d[i].effective &= keep;
    d[i].permitted &= keep;
    d[i].inheritable = 0;
  }
  if (syscall(SYS_capset, &hdr, d) != 0)
    MG_WARN(MOD, "helper_capabilities_kept", "err=%s hint=\"the helper still runs as root, with its capabilities\"",
            strerror(errno));
}

/* The child after fork: nothing of the parent but stdio and the socket,
 * which ends up as fd 3 (returned). */
static int helper_harden(int fd) {
  if (fd != 3 && dup2(fd, 3) == 3) fd = 3;
  if (close_range((unsigned)fd + 1, ~0u, 0) != 0) { /* kernels before 5.9 */
    long max = sysconf(_SC_OPEN_MAX);
    for (long i = fd + 1; i < (max > 0 && max < 65536 ? max : 65536); i++) close((int)i);
  }
  for (int i = 3; i < fd; i++) close(i);
  struct sigaction ign;
  memset(&ign, 0, sizeof ign);
  ign.sa_handler = SIG_IGN;
  sigaction(SIGINT, &ign, NULL);
  sigaction(SIGTERM, &ign, NULL);
  sigaction(SIGHUP, &ign, NULL);
  sigaction(SIGPIPE, &ign, NULL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  prctl(PR_SET_NAME, "moongate-creds", 0, 0, 0);
  prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  drop_capabilities();
  struct rlimit nofile = {HELPER_NOFILE, HELPER_NOFILE};
  setrlimit(RLIMIT_NOFILE, &nofile);
  return fd;
}

static int helper_main(int fd, const char *const *paths, size_t npaths) {
  return mg_privsep_serve(helper_harden(fd), paths, npaths);
}

/* ================================================================ main process side */

typedef struct pend {
  struct pend *next;
  uint32_t id, index, limit;
  mg_fileio_read_cb cb;
  void *ctx;
} pend_t;

typedef struct watcher {
  struct watcher *next;
  uint64_t token;
  uint32_t index;
  mg_fileio_change_cb cb; /* NULL: unwatched during a dispatch, unlinked after it */
  void *ctx;
} watcher_t;

typedef struct wreq {
  uv_write_t req;
  wire_req_t frame;
} wreq_t;

struct mg_privsep {
  pid_t pid;
  int fd; /* ours until attach hands it to the pipe */
  char **paths;
  size_t npaths;
  uv_loop_t *loop;
  uv_pipe_t pipe;
  uv_timer_t fail_timer, reap_timer;
  unsigned closes, reap_polls;
  bool attached, gone, closing, reaped;
  int status; /* waitpid's, once reaped */
  pend_t *pending;
  size_t npending;
  watcher_t *watchers;
  bool dispatching;
  uint32_t next_id;
  uint64_t next_token;
  wire_msg_t hdr; /* the message being received */
  size_t hdr_got;
  char *body; /* its data (a file: wiped) */
  size_t body_got;
  bool discard;        /* no memory for the body: skip its bytes, fail the read */
  char scratch[4096];  /* where skipped bytes go */
  mg_fileio_t io;
};

static long find_path(const mg_privsep_t *ps, const char *path) {
  for (size_t i = 0; path && i < ps->npaths; i++)
    if (strcmp(ps->paths[i], path) == 0) return (long)i;
  return -1;
}

static void update_ref(mg_privsep_t *ps) {
  if (!ps->attached || ps->closing) return;
  if (ps->npending && !ps->gone) uv_ref((uv_handle_t *)&ps->pipe);
  else uv_unref((uv_handle_t *)&ps->pipe);
}

static void describe_status(int status, char *out, size_t outsz) {
  if (WIFEXITED(status)) snprintf(out, outsz, "exit %d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status)) snprintf(out, outsz, "killed by signal %d", WTERMSIG(status));
  else snprintf(out, outsz, "unknown");
}

/* One waitpid poll. true once the helper is gone for good. */
static bool reap_poll(mg_privsep_t *ps) {
  if (ps->reaped) return true;
  int st = 0;
  pid_t r = waitpid(ps->pid, &st, WNOHANG);
  if (r == ps->pid || (r < 0 && errno == ECHILD)) {
    ps->reaped = true;
    ps->status = r == ps->pid ? st : -1;
  }
  return ps->reaped;
}

static void on_reap_timer(uv_timer_t *t) {
  mg_privsep_t *ps = t->data;
  if (!reap_poll(ps)) {
    if (++ps->reap_polls == REAP_KILL_AFTER) kill(ps->pid, SIGKILL); /* socket closed but still there */
    return;
  }
  uv_timer_stop(t);
  char st[64];
  describe_status(ps->status, st, sizeof st);
  MG_ERROR(MOD, "helper_exited",
           "pid=%d status=\"%s\" files=%zu hint=\"the credential files the privileged helper read can no longer be "
           "read: credentials from them fail from now on; restart moongate\"",
           (int)ps->pid, ps->status == -1 ? "unknown" : st, ps->npaths);
}

static void fail_all(mg_privsep_t *ps, int err) {
  pend_t *list = ps->pending; /* callbacks may start new reads: those wait for the next round */
  ps->pending = NULL;
  ps->npending = 0;
  mg_fileio_sig_t none = {0};
  while (list) {
    pend_t *p = list;
    list = p->next;
    p->cb(p->ctx, err, 0, &none, NULL, 0);
    mg_free(p);
  }
  update_ref(ps);
}

static void on_fail_timer(uv_timer_t *t) { fail_all(t->data, MG_ECLOSED); }

static void drop_body(mg_privsep_t *ps) {
  if (ps->body) mg_mem_wipe(ps->body, ps->body_got);
  mg_free(ps->body);
  ps->body = NULL;
  ps->hdr_got = ps->body_got = 0;
  ps->discard = false;
}

/* The helper is gone, or broke the protocol: no more reads through it. */
static void helper_lost(mg_privsep_t *ps, const char *why) {
  if (ps->gone) return;
  ps->gone = true;
  uv_read_stop((uv_stream_t *)&ps->pipe);
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&ps->pipe, &fd) == 0) shutdown(fd, SHUT_RDWR); /* a live helper sees EOF */
  drop_body(ps);
  if (why) MG_DEBUG(MOD, "helper_connection_lost", "pid=%d reason=\"%s\"", (int)ps->pid, why);
  uv_timer_start(&ps->fail_timer, on_fail_timer, 0, 0);
  uv_timer_start(&ps->reap_timer, on_reap_timer, 0, REAP_EVERY_MS);
  update_ref(ps);
}

static pend_t *take_pending(mg_privsep_t *ps, uint32_t id) {
  for (pend_t **pp = &ps->pending; *pp; pp = &(*pp)->next) {
    if ((*pp)->id != id) continue;
    pend_t *p = *pp;
    *pp = p->next;
    ps->npending--;
    return p;
  }
  return NULL;
}

static const pend_t *find_pending(const mg_privsep_t *ps, uint32_t id) {
  for (const pend_t *p = ps->pending; p; p = p->next)
    if (p->id == id) return p;
  return NULL;
}

/* What the helper may send: anything else means it is not our helper any
 * more, and nothing more is taken from it. */
static bool header_ok(const mg_privsep_t *ps) {
  const wire_msg_t *m = &ps->hdr;
  if (m->magic != MSG_MAGIC || m->index >= ps->npaths) return false;
  if (m->type == MSG_CHANGED) return m->len == 0 && m->err == 0;
  if (m->type != MSG_REPLY) return false;
  const pend_t *p = find_pending(ps, m->id);
  return p && p->index == m->index && m->len <= p->limit && (m->err == 0 || m->len == 0) && m->err >= 0;
}

static int err_from_errno(int e) {
  switch (e) {
  case 0: return 0;
  case ENOENT:
  case ENOTDIR: return MG_ENOTFOUND;
  case EFBIG: return MG_ETOOBIG;
  case EAGAIN: return MG_EAGAIN;
  case ENOMEM: return MG_ENOMEM;
  default: return MG_EIO;
  }
}

static void sig_from_msg(mg_fileio_sig_t *s, const wire_msg_t *m) {
  memset(s, 0, sizeof *s);
  if (!(m->flags & FLAG_EXISTS)) return;
  s->exists = true;
  s->dev = m->dev;
  s->ino = m->ino;
  s->size = m->size;
  s->mtime_ns = m->mtime_ns;
  s->ctime_ns = m->ctime_ns;
}

static void notify(mg_privsep_t *ps, uint32_t index, const mg_fileio_sig_t *sig, bool named) {
  ps->dispatching = true;
  for (watcher_t *w = ps->watchers; w; w = w->next)
    if (w->cb && w->index == index) w->cb(w->ctx, sig, named);
  ps->dispatching = false;
  for (watcher_t **pp = &ps->watchers; *pp;) {
    watcher_t *w = *pp;
    if (w->cb) {
      pp = &w->next;
      continue;
    }
    *pp = w->next;
    mg_free(w);
  }
}

static void dispatch(mg_privsep_t *ps) {
  wire_msg_t m = ps->hdr;
  char *body = ps->body;
  size_t len = ps->body_got;
  bool skipped = ps->discard;
  ps->body = NULL;
  drop_body(ps);
  mg_fileio_sig_t sig;
  sig_from_msg(&sig, &m);
  if (m.type == MSG_CHANGED) {
    notify(ps, m.index, &sig, (m.flags & FLAG_NAMED) != 0);
  } else {
    pend_t *p = take_pending(ps, m.id); /* header_ok found it; only closing removes others */
    int err = skipped ? MG_ENOMEM : err_from_errno(m.err);
    update_ref(ps);
    if (p) p->cb(p->ctx, err, skipped ? ENOMEM : m.err, &sig, err ? NULL : (body ? body : ""), err ? 0 : len);
    mg_free(p);
  }
  if (body) mg_mem_wipe(body, len);
  mg_free(body);
}

/* Reads are sized to the part being received (header, then body), so a
 * read never spans two messages and a file is never copied twice. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  mg_privsep_t *ps = h->data;
  if (ps->hdr_got < sizeof ps->hdr) {
    *buf = uv_buf_init((char *)&ps->hdr + ps->hdr_got, (unsigned)(sizeof ps->hdr - ps->hdr_got));
  } else if (ps->discard) {
    size_t left = ps->hdr.len - ps->body_got;
    *buf = uv_buf_init(ps->scratch, (unsigned)(left < sizeof ps->scratch ? left : sizeof ps->scratch));
  } else {
    *buf = uv_buf_init(ps->body + ps->body_got, (unsigned)(ps->hdr.len - ps->body_got));
  }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)buf;
  mg_privsep_t *ps = s->data;
  if (n < 0) {
    helper_lost(ps, n == UV_EOF ? "closed" : uv_err_name((int)n));
    return;
  }
  if (n == 0 || ps->gone) return;
  if (ps->hdr_got < sizeof ps->hdr) {
    ps->hdr_got += (size_t)n;
    if (ps->hdr_got < sizeof ps->hdr) return;
    if (!header_ok(ps)) {
      MG_ERROR(MOD, "helper_protocol_error", "pid=%d type=%u len=%u hint=\"the helper's answer is not one it may "
               "send; it is no longer used\"", (int)ps->pid, ps->hdr.type, ps->hdr.len);
      helper_lost(ps, NULL);
      return;
    }
    if (ps->hdr.len) {
      ps->body = mg_malloc(ps->hdr.len);
      ps->discard = !ps->body;
      return;
    }
  } else {
    ps->body_got += (size_t)n;
    if (ps->discard) mg_mem_wipe(ps->scratch, (size_t)n);
    if (ps->body_got < ps->hdr.len) return;
  }
  dispatch(ps);
}

static void on_write(uv_write_t *req, int status) {
  wreq_t *w = req->data;
  mg_privsep_t *ps = w->req.handle->data;
  mg_free(w);
  if (status < 0 && status != UV_ECANCELED && !ps->closing) helper_lost(ps, uv_err_name(status));
}

static bool io_serves(void *ud, const char *path) { return find_path(ud, path) >= 0; }

static int io_read(void *ud, const char *path, size_t limit, mg_fileio_read_cb cb, void *ctx) {
  mg_privsep_t *ps = ud;
  long idx = find_path(ps, path);
  if (idx < 0 || !cb || !limit) return MG_EINVAL;
  if (ps->closing) return MG_ECLOSED;
  pend_t *p = mg_calloc(1, sizeof *p);
  wreq_t *w = ps->gone ? NULL : mg_calloc(1, sizeof *w);
  if (!p || (!ps->gone && !w)) {
    mg_free(p);
    mg_free(w);
    return MG_ENOMEM;
  }
  if (++ps->next_id == 0) ps->next_id = 1;
  p->id = ps->next_id;
  p->index = (uint32_t)idx;
  p->limit = (uint32_t)(limit < MG_PRIVSEP_MAX_READ ? limit : MG_PRIVSEP_MAX_READ);
  p->cb = cb;
  p->ctx = ctx;
  p->next = ps->pending;
  ps->pending = p;
  ps->npending++;
  if (ps->gone) { /* fails later, never from inside this call */
    uv_timer_start(&ps->fail_timer, on_fail_timer, 0, 0);
    return 0;
  }
  w->frame = (wire_req_t){REQ_MAGIC, OP_READ, p->id, p->index, p->limit};
  w->req.data = w;
  uv_buf_t b = uv_buf_init((char *)&w->frame, sizeof w->frame);
  int rc = uv_write(&w->req, (uv_stream_t *)&ps->pipe, &b, 1, on_write);
  if (rc < 0) {
    mg_free(w);
    helper_lost(ps, uv_err_name(rc));
    return 0;
  }
  update_ref(ps);
  return 0;
}

static int io_watch(void *ud, const char *path, mg_fileio_change_cb cb, void *ctx, uint64_t *token) {
  mg_privsep_t *ps = ud;
  long idx = find_path(ps, path);
  if (idx < 0 || !cb || !token || ps->closing) return MG_EINVAL;
  watcher_t *w = mg_calloc(1, sizeof *w);
  if (!w) return MG_ENOMEM;
  w->token = ++ps->next_token;
  w->index = (uint32_t)idx;
  w->cb = cb;
  w->ctx = ctx;
  w->next = ps->watchers;
  ps->watchers = w;
  *token = w->token;
  return 0;
}

static void io_unwatch(void *ud, uint64_t token) {
  mg_privsep_t *ps = ud;
  for (watcher_t **pp = &ps->watchers; *pp; pp = &(*pp)->next) {
    watcher_t *w = *pp;
    if (w->token != token) continue;
    if (ps->dispatching) {
      w->cb = NULL;
    } else {
      *pp = w->next;
      mg_free(w);
    }
    return;
  }
}

/* ================================================================ set-up and teardown */

int mg_privsep_lookup(const char *name, mg_privsep_user_t *out, char *msg, size_t msgsz) {
  memset(out, 0, sizeof *out);
  if (!name || !*name || strlen(name) >= sizeof out->name) {
    msgf(msg, msgsz, "not a user name");
    return MG_EINVAL;
  }
  struct passwd pw, *res = NULL;
  char buf[16384];
  int rc = getpwnam_r(name, &pw, buf, sizeof buf, &res);
  if (rc != 0 || !res) {
    msgf(msg, msgsz, "no such user%s%s", rc ? ": " : " in the user database", rc ? strerror(rc) : "");
    return MG_ENOTFOUND;
  }
  if (pw.pw_uid == 0) {
    msgf(msg, msgsz, "is root (uid 0): name the unprivileged user moongate should run as");
    return MG_EINVAL;
  }
  snprintf(out->name, sizeof out->name, "%s", name);
  out->uid = pw.pw_uid;
  out->gid = pw.pw_gid;
  return 0;
}

int mg_privsep_give_dir(const char *dir, const mg_privsep_user_t *user, char *msg, size_t msgsz) {
  if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
    msgf(msg, msgsz, "cannot create: %s", strerror(errno));
    return MG_EIO;
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    msgf(msg, msgsz, "cannot open: %s", strerror(errno));
    return MG_EIO;
  }
  int rc = fchown(fd, user->uid, user->gid);
  int e = errno;
  close(fd);
  if (rc != 0) {
    msgf(msg, msgsz, "cannot give it to %s: %s", user->name, strerror(e));
    return MG_EIO;
  }
  return 0;
}

int mg_privsep_drop(const mg_privsep_user_t *u, char *msg, size_t msgsz) {
  if (initgroups(u->name, u->gid) != 0) {
    msgf(msg, msgsz, "initgroups(%s): %s", u->name, strerror(errno));
    return MG_EIO;
  }
  if (setresgid(u->gid, u->gid, u->gid) != 0) {
    msgf(msg, msgsz, "setresgid(%u): %s", (unsigned)u->gid, strerror(errno));
    return MG_EIO;
  }
  if (setresuid(u->uid, u->uid, u->uid) != 0) {
    msgf(msg, msgsz, "setresuid(%u): %s", (unsigned)u->uid, strerror(errno));
    return MG_EIO;
  }
  uid_t r, e, s;
  gid_t rg, eg, sg;
  if (getresuid(&r, &e, &s) != 0 || getresgid(&rg, &eg, &sg) != 0 || r != u->uid || e != u->uid || s != u->uid ||
      rg != u->gid || eg != u->gid || sg != u->gid) {
    msgf(msg, msgsz, "the user and group ids did not all change to %u:%u", (unsigned)u->uid, (unsigned)u->gid);
    return MG_EIO;
  }
  if (setuid(0) == 0 || seteuid(0) == 0) {
    msgf(msg, msgsz, "root could be regained after dropping to %s", u->name);
    return MG_EIO;
  }
  return 0;
}

static void privsep_destroy(mg_privsep_t *ps) {
  for (size_t i = 0; i < ps->npaths; i++) mg_free(ps->paths[i]);
  mg_free(ps->paths);
  drop_body(ps);
  mg_free(ps);
}

int mg_privsep_spawn(const char *const *paths, size_t npaths, mg_privsep_t **out, char *msg, size_t msgsz) {
  *out = NULL;
  if (!paths || npaths == 0 || npaths > MG_PRIVSEP_MAX_PATHS) {
    msgf(msg, msgsz, "between 1 and %d files", MG_PRIVSEP_MAX_PATHS);
    return MG_EINVAL;
  }
  for (size_t i = 0; i < npaths; i++) {
    if (!paths[i] || !*paths[i] || strlen(paths[i]) >= PATH_MAX) {
      msgf(msg, msgsz, "file %zu: empty or longer than %d bytes", i, PATH_MAX - 1);
      return MG_EINVAL;
    }
  }
  mg_privsep_t *ps = mg_calloc(1, sizeof *ps);
  if (ps) ps->paths = mg_calloc(npaths, sizeof *ps->paths);
  for (size_t i = 0; ps && ps->paths && i < npaths; i++) {
    if (!(ps->paths[i] = mg_strdup(paths[i]))) break;
    ps->npaths++;
  }
  if (!ps || ps->npaths != npaths) {
    if (ps) privsep_destroy(ps);
    msgf(msg, msgsz, "out of memory");
    return MG_ENOMEM;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    msgf(msg, msgsz, "socketpair: %s", strerror(errno));
    privsep_destroy(ps);
    return MG_EIO;
  }
  fflush(stdout); /* buffered output would be written twice */
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    msgf(msg, msgsz, "fork: %s", strerror(errno));
    close(sv[0]);
    close(sv[1]);
    privsep_destroy(ps);
    return MG_EIO;
  }
  if (pid == 0) {
    close(sv[0]);
    _exit(helper_main(sv[1], (const char *const *)ps->paths, ps->npaths));
  }
  close(sv[1]);
  ps->pid = pid;
  ps->fd = sv[0];
  *out = ps;
  return 0;
}

int mg_privsep_attach(mg_privsep_t *ps, uv_loop_t *loop) {
  if (!ps || !loop || ps->attached || ps->closing) return MG_EINVAL;
  ps->loop = loop;
  uv_pipe_init(loop, &ps->pipe, 0);
  uv_timer_init(loop, &ps->fail_timer);
  uv_timer_init(loop, &ps->reap_timer);
  ps->pipe.data = ps->fail_timer.data = ps->reap_timer.data = ps;
  ps->attached = true;
  uv_unref((uv_handle_t *)&ps->reap_timer); /* reaping alone does not keep the loop up */
  int rc = uv_pipe_open(&ps->pipe, ps->fd);
  if (rc == 0) {
    ps->fd = -1;
    rc = uv_read_start((uv_stream_t *)&ps->pipe, on_alloc, on_read);
  } else {
    close(ps->fd);
    ps->fd = -1;
  }
  ps->io = (mg_fileio_t){ps, io_serves, io_read, io_watch, io_unwatch};
  if (rc) {
    MG_ERROR(MOD, "helper_unreachable", "pid=%d err=%s", (int)ps->pid, uv_err_name(rc));
    helper_lost(ps, NULL);
    return MG_EIO;
  }
  update_ref(ps);
  return 0;
}

const mg_fileio_t *mg_privsep_fileio(mg_privsep_t *ps) { return ps && ps->attached ? &ps->io : NULL; }

pid_t mg_privsep_pid(const mg_privsep_t *ps) { return ps ? ps->pid : -1; }

/* Shutdown only: the helper exits as soon as it sees the socket closed;
 * wait for it a bounded time, then make sure. */
static void reap_now(mg_privsep_t *ps) {
  for (int i = 0; i < 200 && !reap_poll(ps); i++) usleep(5000);
  if (!ps->reaped) {
    kill(ps->pid, SIGKILL);
    int st;
    waitpid(ps->pid, &st, 0);
    ps->reaped = true;
  }
}

static void on_closed(uv_handle_t *h) {
  mg_privsep_t *ps = h->data;
  if (--ps->closes) return;
  reap_now(ps);
  privsep_destroy(ps);
}

void mg_privsep_free(mg_privsep_t *ps) {
  if (!ps || ps->closing) return;
  ps->closing = true;
  while (ps->watchers) {
    watcher_t *w = ps->watchers;
    ps->watchers = w->next;
    mg_free(w);
  }
  fail_all(ps, MG_ECANCELED);
  if (!ps->attached) {
    close(ps->fd);
    reap_now(ps);
    privsep_destroy(ps);
    return;
  }
  ps->closes = 3;
  uv_close((uv_handle_t *)&ps->pipe, on_closed);
  uv_close((uv_handle_t *)&ps->fail_timer, on_closed);
  uv_close((uv_handle_t *)&ps->reap_timer, on_closed);
}
