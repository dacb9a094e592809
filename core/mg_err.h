/* mg_err: the one error enum of moongate, generated from a single X-macro
 * table together with names and messages. Errors are negative; 0 is success.
 * Pure: no libuv, no I/O. */
#ifndef MG_ERR_H
#define MG_ERR_H

#define MG_ERR_MAP(X)                                                        \
  X(NOMEM, "out of memory")                                                  \
  X(INVAL, "invalid argument")                                               \
  X(TOOBIG, "size limit exceeded")                                           \
  X(PARSE, "malformed input")                                                \
  X(NOTFOUND, "not found")                                                   \
  X(EXISTS, "already exists")                                                \
  X(IO, "input/output error")                                                \
  X(TIMEDOUT, "timed out")                                                   \
  X(CONNREFUSED, "connection refused")                                       \
  X(CONNRESET, "connection reset")                                           \
  X(DNS, "name resolution failed")                                           \
  X(TLS, "TLS failure")                                                      \
  X(HTTP, "HTTP protocol error")                                             \
  X(STATUS, "unexpected HTTP status")                                        \
  X(CANCELED, "operation canceled")                                          \
  X(CLOSED, "closed")                                                        \
  X(AGAIN, "try again")                                                      \
  X(FULL, "queue full")                                                      \
  X(LUA, "script error")                                                     \
  X(CONFIG, "invalid configuration")                                         \
  X(UNSUPPORTED, "not supported")                                            \
  X(CREDS, "credentials unavailable")                                        \
  X(GZIP, "bad gzip stream")                                                 \
  X(NET, "network error")

typedef enum mg_err {
  MG_OK = 0,
#define MG_ERR_ENUM_(name, msg) MG_E##name,
  MG_ERR_FIRST_ = -1000,
  MG_ERR_MAP(MG_ERR_ENUM_)
#undef MG_ERR_ENUM_
  MG_ERR_LAST_
} mg_err_t;

/* Short symbolic name ("ETIMEDOUT"); "EUNKNOWN" for values outside the enum. */
const char *mg_err_name(int err);
/* Human message ("timed out"). */
const char *mg_err_str(int err);
/* Map a libuv error code (negative errno) to an mg_err. */
int mg_err_from_uv(int uverr);

#endif
