/* mg_auth: builds Authorization values. Secrets pass through stack and heap
 * buffers that are wiped before they are released. */
#include "mg_auth.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"

/* Secret files hold one token or password; a trailing newline is not part
 * of it. Larger files are refused rather than truncated. */
#define MAX_SECRET_FILE 16384

static int read_secret_file(const char *path, char **out) {
  FILE *f = fopen(path, "re");
  if (!f) {
    MG_ERROR("auth", "secret_file_unreadable", "path=%s err=\"%s\"", path, strerror(errno));
    return MG_EIO;
  }
  char buf[MAX_SECRET_FILE + 1];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  int rc = 0;
  if (n > MAX_SECRET_FILE) {
    MG_ERROR("auth", "secret_file_too_large", "path=%s limit=%d", path, MAX_SECRET_FILE);
    rc = MG_ETOOBIG;
  } else {
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
    *out = mg_strndup(buf, n);
    if (!*out) rc = MG_ENOMEM;
  }
  mg_mem_wipe(buf, sizeof buf);
  return rc;
}

int mg_auth_header(const mg_conf_auth_t *a, char **out) {
  *out = NULL;
  char *secret = NULL;
  int rc = 0;
  if (a->basic_username) {
    if (a->basic_password_file && (rc = read_secret_file(a->basic_password_file, &secret)) != 0) return rc;
    const char *pass = secret ? secret : (a->basic_password ? a->basic_password : "");
    size_t ulen = strlen(a->basic_username), plen = strlen(pass), rawlen = ulen + 1 + plen;
    unsigned char *raw = mg_malloc(rawlen);
    char *val = mg_malloc(6 + 4 * ((rawlen + 2) / 3) + 1);
    if (raw && val) {
      memcpy(raw, a->basic_username, ulen);
      raw[ulen] = ':';
      memcpy(raw + ulen + 1, pass, plen);
      memcpy(val, "Basic ", 6);
      EVP_EncodeBlock((unsigned char *)val + 6, raw, (int)rawlen);
      *out = val;
    } else {
      mg_free(val);
      rc = MG_ENOMEM;
    }
    if (raw) mg_mem_wipe(raw, rawlen);
    mg_free(raw);
  } else if (a->credentials || a->credentials_file) {
    if (a->credentials_file && (rc = read_secret_file(a->credentials_file, &secret)) != 0) return rc;
    const char *cred = secret ? secret : a->credentials;
    const char *type = a->auth_type ? a->auth_type : "Bearer";
    size_t n = strlen(type) + 1 + strlen(cred) + 1;
    char *val = mg_malloc(n);
    if (val) {
      snprintf(val, n, "%s %s", type, cred);
      *out = val;
    } else {
      rc = MG_ENOMEM;
    }
  }
  mg_mem_free_secret(secret);
  return rc;
}
