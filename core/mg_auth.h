/* mg_auth: the Authorization header value for a target or destination
 * from its basic_auth / authorization settings. Reads password_file and
 * credentials_file (start-up and reload only: blocking reads). The value is
 * a secret: free it with mg_mem_free_secret, never log it. */
#ifndef MG_AUTH_H
#define MG_AUTH_H

#include "mg_conf.h"

/* *out = "Basic <base64(user:pass)>", "<type> <credentials>", or NULL when
 * no authentication is configured. Returns 0, MG_EIO (file unreadable; the
 * file name is logged), or MG_ENOMEM. */
int mg_auth_header(const mg_conf_auth_t *a, char **out);

#endif
