/* mg_fileio: the seam through which mg_creds reads and watches files that
 * this process may not be allowed to open itself (`moongate run --user`:
 * the privileged helper of mg_privsep serves them). Header only: a table
 * of functions and the file signature type; mg_creds falls back to its own
 * uv_fs reads and fs events for every path the table does not serve. */
#ifndef MG_FILEIO_H
#define MG_FILEIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What identifies one version of a file: a rename-replacement changes
 * ino, an in-place rewrite size or mtime/ctime. exists is false for a
 * missing (or unreachable) file, and then the other fields are 0. */
typedef struct mg_fileio_sig {
  bool exists;
  uint64_t dev, ino, size;
  int64_t mtime_ns, ctime_ns;
} mg_fileio_sig_t;

/* A read ended. err is 0, and then data/len is the whole file (borrowed
 * until the callback returns; it may hold secrets: copy it into memory you
 * wipe) and sig describes the file that was read; or a negative mg_err:
 *   MG_ENOTFOUND  the file, or a directory on its path, does not exist
 *   MG_ETOOBIG    larger than the limit
 *   MG_EAGAIN     the file grew while it was read (a writer is at work)
 *   MG_EIO        sys_errno (an errno value) says why: EACCES, EISDIR, ...
 *   MG_ECLOSED    the reader itself is gone (the helper process exited)
 *   MG_ECANCELED  the reader is being freed */
typedef void (*mg_fileio_read_cb)(void *ctx, int err, int sys_errno, const mg_fileio_sig_t *sig, const char *data,
                                  size_t len);

/* The file may have changed: sig is what it is now; named is true when an
 * fs event named the file itself (changed, whatever the signature says). */
typedef void (*mg_fileio_change_cb)(void *ctx, const mg_fileio_sig_t *sig, bool named);

/* Every function runs on the loop of the implementation and never calls a
 * callback from inside the call that registered it. */
typedef struct mg_fileio {
  void *ud;
  /* Whether path (compared as a string, exactly) is served here. */
  bool (*serves)(void *ud, const char *path);
  /* Read the whole of a served path, at most limit bytes. cb runs exactly
   * once, later. 0, or MG_EINVAL (not served) / MG_ENOMEM, and then cb
   * never runs. */
  int (*read)(void *ud, const char *path, size_t limit, mg_fileio_read_cb cb, void *ctx);
  /* Call cb whenever a served path may have changed (checked at least once
   * a second) until unwatch(*token). 0, or MG_EINVAL / MG_ENOMEM. */
  int (*watch)(void *ud, const char *path, mg_fileio_change_cb cb, void *ctx, uint64_t *token);
  /* No callback for token after this returns. Unknown tokens are ignored. */
  void (*unwatch)(void *ud, uint64_t token);
} mg_fileio_t;

#endif
