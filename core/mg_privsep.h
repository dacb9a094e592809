/* mg_privsep: privilege separation for `moongate run --user NAME`. The
 * process started as root forks, before it reads a script or opens a
 * socket, a small helper that keeps root for one job: read and watch a
 * fixed list of files (the AWS credential files known at start) and answer
 * the main process over a socketpair. The main process then drops to NAME
 * and reaches those files only through mg_privsep_fileio. Owns the helper
 * process, the main side of the socket, pending reads and watches. The
 * helper opens no network socket, runs no script, serves no other path
 * and never logs what a file contains. */
#ifndef MG_PRIVSEP_H
#define MG_PRIVSEP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "mg_fileio.h"

#define MG_PRIVSEP_MAX_PATHS 16
#define MG_PRIVSEP_MAX_READ (1024 * 1024) /* the largest file the helper sends */

typedef struct mg_privsep mg_privsep_t;

typedef struct mg_privsep_user {
  char name[64];
  uid_t uid;
  gid_t gid; /* primary group; supplementary groups come from initgroups */
} mg_privsep_user_t;

/* Look a user up by name (start-up only: may read /etc/passwd). 0, or
 * MG_ENOTFOUND (no such user), MG_EINVAL (the user is root: there would be
 * nothing to drop), with the reason in msg. */
int mg_privsep_lookup(const char *name, mg_privsep_user_t *out, char *msg, size_t msgsz);

/* Fork the helper serving paths (copied; 1..MG_PRIVSEP_MAX_PATHS absolute
 * or relative paths, compared later as strings). Call it before the loop,
 * threads, scripts or sockets exist: the child starts from a copy of this
 * process. In the child: every descriptor but stdio and the socket is
 * closed, SIGINT/SIGTERM/SIGHUP are ignored (it ends when the main process
 * closes the socket, so a shutdown can still read files while it drains),
 * no_new_privs is set, capabilities are reduced to CAP_DAC_READ_SEARCH
 * (best effort: a warning if the kernel refuses) and it may hold at most
 * 32 descriptors. Returns 0 in the parent only, or MG_EINVAL /
 * MG_ENOMEM / MG_EIO with the reason in msg. */
int mg_privsep_spawn(const char *const *paths, size_t npaths, mg_privsep_t **out, char *msg, size_t msgsz);

/* Give dir (created 0750 if missing) to user: its owner and group become
 * the user's, so the main process can still write there after dropping.
 * Only the directory itself: files left inside by an earlier root run keep
 * their owner. 0 or MG_EIO with the reason in msg. */
int mg_privsep_give_dir(const char *dir, const mg_privsep_user_t *user, char *msg, size_t msgsz);

/* Drop this process to user: supplementary groups (initgroups), gid, uid
 * (real, effective and saved), then verify that they all changed and that
 * setuid(0) now fails. 0, or MG_EIO with the reason in msg: the caller
 * must then exit, never go on as root. */
int mg_privsep_drop(const mg_privsep_user_t *user, char *msg, size_t msgsz);

/* Start talking to the helper on loop. The socket keeps the loop alive
 * only while reads are in flight. If the helper exits, an error is logged
 * (with its exit status) and every read of its paths fails with
 * MG_ECLOSED from then on. 0 or MG_EINVAL (already attached) / MG_EIO. */
int mg_privsep_attach(mg_privsep_t *ps, uv_loop_t *loop);

/* The file reader for mg_creds (mg_creds_use_fileio); borrowed until
 * mg_privsep_free. Only after mg_privsep_attach. */
const mg_fileio_t *mg_privsep_fileio(mg_privsep_t *ps);

/* The helper's process id (for logs and tests). */
pid_t mg_privsep_pid(const mg_privsep_t *ps);

/* Fail pending reads with MG_ECANCELED, drop watches, close the socket
 * (the helper exits when it sees that) and reap the helper: memory goes
 * in the last close callback (run the loop), or at once when never
 * attached. Waits at most a second for the helper before SIGKILL: meant
 * for shutdown. NULL is fine. */
void mg_privsep_free(mg_privsep_t *ps);

/* The helper's loop, exposed for tests: serve requests for paths on the
 * socket fd (blocking) until the peer closes it. Returns the exit status:
 * 0 after a clean close, 2 after a request that breaks the protocol (the
 * helper trusts nothing the main process sends: it may be compromised),
 * 1 on other errors. */
int mg_privsep_serve(int fd, const char *const *paths, size_t npaths);

#endif
