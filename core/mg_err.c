/* mg_err: names and messages for the error enum, and translation of libuv
 * codes. Owns nothing; pure. */
#include "mg_err.h"

#include <errno.h>

const char *mg_err_name(int err) {
  switch ((mg_err_t)err) {
  case MG_OK: return "OK";
#define MG_ERR_NAME_(name, msg) case MG_E##name: return "E" #name;
    MG_ERR_MAP(MG_ERR_NAME_)
#undef MG_ERR_NAME_
  case MG_ERR_FIRST_:
  case MG_ERR_LAST_:
    break;
  }
  return "EUNKNOWN";
}

const char *mg_err_str(int err) {
  switch ((mg_err_t)err) {
  case MG_OK: return "success";
#define MG_ERR_STR_(name, msg) case MG_E##name: return msg;
    MG_ERR_MAP(MG_ERR_STR_)
#undef MG_ERR_STR_
  case MG_ERR_FIRST_:
  case MG_ERR_LAST_:
    break;
  }
  return "unknown error";
}

/* libuv error codes are negated errno values on Unix (UV_ETIMEDOUT ==
 * -ETIMEDOUT), so this module stays free of uv.h. getaddrinfo errors
 * (UV_EAI_*) live below -3000. */
int mg_err_from_uv(int uverr) {
  if (uverr >= 0) return MG_OK;
  if (uverr <= -3000 && uverr > -3100) return MG_EDNS;
  switch (-uverr) {
  case ENOMEM: return MG_ENOMEM;
  case ETIMEDOUT: return MG_ETIMEDOUT;
  case ECONNREFUSED: return MG_ECONNREFUSED;
  case ECONNRESET: case EPIPE: case ECONNABORTED: return MG_ECONNRESET;
  case ECANCELED: return MG_ECANCELED;
  case ENOENT: return MG_ENOTFOUND;
  case EEXIST: return MG_EEXISTS;
  case EINVAL: return MG_EINVAL;
  case EAGAIN: return MG_EAGAIN;
  case ENOSPC: case EIO: case EACCES: case EPERM: return MG_EIO;
  case EHOSTUNREACH: case ENETUNREACH: case EADDRINUSE: case EADDRNOTAVAIL: return MG_ENET;
  default: return MG_ENET;
  }
}
