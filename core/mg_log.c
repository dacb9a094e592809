/* mg_log: logfmt line writer. One line per call, written with a single
 * fwrite so concurrent writers (child processes) do not interleave. */
#include "mg_log.h"

#include <string.h>
#include <strings.h>
#include <time.h>

#include "mg_err.h"

mg_log_level_t mg_log_level_ = MG_LOG_INFO;
static FILE *log_stream;

static const char *level_names[] = {"debug", "info", "warn", "error", "off"};

int mg_log_set_level_name(const char *name) {
  for (int i = 0; i <= MG_LOG_OFF; i++) {
    if (strcasecmp(name, level_names[i]) == 0) {
      mg_log_level_ = (mg_log_level_t)i;
      return 0;
    }
  }
  return MG_EINVAL;
}

void mg_log_set_level(mg_log_level_t lvl) { mg_log_level_ = lvl; }
void mg_log_set_stream(FILE *f) { log_stream = f; }

void mg_log_vwrite(mg_log_level_t lvl, const char *mod, const char *event, const char *fmt, va_list ap) {
  char line[4096];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s mod=%s event=%s",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   ts.tv_nsec / 1000000, level_names[lvl], mod, event);
  if (n < 0) return;
  if ((size_t)n < sizeof line - 2 && fmt && fmt[0]) {
    line[n++] = ' ';
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    if (m > 0) n += m;
  }
  if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  FILE *out = log_stream ? log_stream : stderr;
  fwrite(line, 1, (size_t)n, out);
  fflush(out);
}

void mg_log_write(mg_log_level_t lvl, const char *mod, const char *event, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  mg_log_vwrite(lvl, mod, event, fmt, ap);
  va_end(ap);
}

char *mg_log_q(char *out, size_t outsz, const char *s, size_t n) {
  if (outsz == 0) return out;
  int need_quote = (n == 0);
  for (size_t i = 0; i < n && !need_quote; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f) need_quote = 1;
  }
  size_t o = 0;
  /* Reserve room for the closing quote, the ellipsis and the NUL. */
  size_t lim = outsz > 8 ? outsz - 6 : 0;
  if (need_quote && o < lim) out[o++] = '"';
  size_t i = 0;
  for (; i < n && o + 4 < lim; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '"' || c == '\\') {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else if (c == '\n') {
      out[o++] = '\\';
      out[o++] = 'n';
    } else if (c < ' ' || c == 0x7f) {
      o += (size_t)snprintf(out + o, 5, "\\x%02x", c);
    } else {
      out[o++] = (char)c;
    }
  }
  if (i < n && o + 3 < outsz) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  if (need_quote && o + 1 < outsz) out[o++] = '"';
  out[o < outsz ? o : outsz - 1] = '\0';
  return out;
}

char *mg_log_mask(char *out, size_t outsz, const char *s) {
  if (outsz == 0) return out;
  size_t n = s ? strlen(s) : 0;
  if (n > 4) n = 4;
  snprintf(out, outsz, "%.*s****", (int)n, s ? s : "");
  return out;
}

int mg_log_ratelimit(unsigned long long *last_ms, unsigned long long now_ms, unsigned long long interval_ms) {
  if (*last_ms != 0 && now_ms - *last_ms < interval_ms) return 0;
  *last_ms = now_ms ? now_ms : 1;
  return 1;
}
