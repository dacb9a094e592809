/* mg_sink: decodes our own WriteRequest bodies with the protobuf-c code
 * generated from remote.proto and writes exposition text. Holds a FIFO of
 * formatted chunks; one uv_fs_write in flight. Not on the hot path of real
 * deployments: it exists to show and debug what moongate sends. */
#include "mg_sink.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"
#include "remote.pb-c.h"

#define MAX_PENDING (64u << 20)

typedef struct chunk {
  struct chunk *next;
  size_t len;
  char data[];
} chunk_t;

struct mg_sink {
  uv_loop_t *loop;
  uv_file fd;
  int owns_fd;
  uv_fs_t req;
  int writing;
  int closing;
  chunk_t *head, *tail;
  size_t pending;
};

mg_sink_t *mg_sink_new(uv_loop_t *loop, const char *path, int *err) {
  mg_sink_t *s = mg_calloc(1, sizeof *s);
  if (!s) {
    *err = MG_ENOMEM;
    return NULL;
  }
  s->loop = loop;
  s->fd = STDOUT_FILENO;
  if (path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
      MG_ERROR("sink", "open_failed", "path=%s err=%s", path, strerror(errno));
      mg_free(s);
      *err = MG_EIO;
      return NULL;
    }
    s->fd = fd;
    s->owns_fd = 1;
  }
  return s;
}


static int append_escaped(mg_buf_t *b, const char *v) {
  for (; *v; v++) {
    int rc = 0;
    if (*v == '\\') rc = mg_buf_append(b, "\\\\", 2);
    else if (*v == '"') rc = mg_buf_append(b, "\\\"", 2);
    else if (*v == '\n') rc = mg_buf_append(b, "\\n", 2);
    else rc = mg_buf_append_byte(b, (unsigned char)*v);
    if (rc) return rc;
  }
  return 0;
}

int mg_sink_format(const void *body, size_t len, mg_buf_t *out, size_t *nsamples) {
  Prometheus__WriteRequest *wr = prometheus__write_request__unpack(NULL, len, body);
  if (!wr) return MG_EPARSE;
  int rc = 0;
  size_t n = 0;
  for (size_t i = 0; i < wr->n_timeseries && !rc; i++) {
    Prometheus__TimeSeries *ts = wr->timeseries[i];
    const char *name = "";
    for (size_t j = 0; j < ts->n_labels; j++)
      if (strcmp(ts->labels[j]->name, "__name__") == 0) name = ts->labels[j]->value;
    for (size_t k = 0; k < ts->n_samples && !rc; k++) {
      rc |= mg_buf_append_str(out, name);
      int first = 1;
      for (size_t j = 0; j < ts->n_labels; j++) {
        if (strcmp(ts->labels[j]->name, "__name__") == 0) continue;
        rc |= mg_buf_append_str(out, first ? "{" : ",");
        rc |= mg_buf_append_str(out, ts->labels[j]->name);
        rc |= mg_buf_append_str(out, "=\"");
        rc |= append_escaped(out, ts->labels[j]->value);
        rc |= mg_buf_append_str(out, "\"");
        first = 0;
      }
      if (!first) rc |= mg_buf_append_str(out, "}");
      rc |= mg_buf_append_byte(out, ' ');
      rc |= mg_buf_append_double(out, ts->samples[k]->value);
      rc |= mg_buf_printf(out, " %lld\n", (long long)ts->samples[k]->timestamp);
      n++;
    }
  }
  for (size_t i = 0; i < wr->n_metadata && !rc; i++) {
    Prometheus__MetricMetadata *m = wr->metadata[i];
    rc |= mg_buf_printf(out, "# metadata %s type=%d", m->metric_family_name, (int)m->type);
    if (m->unit && m->unit[0]) rc |= mg_buf_printf(out, " unit=%s", m->unit);
    rc |= mg_buf_append_byte(out, '\n');
  }
  prometheus__write_request__free_unpacked(wr, NULL);
  if (nsamples) *nsamples = n;
  return rc ? MG_ENOMEM : 0;
}

static void start_write(mg_sink_t *s);

static void on_written(uv_fs_t *req) {
  mg_sink_t *s = req->data;
  chunk_t *c = s->head;
  if (req->result < 0) {
    MG_WARN("sink", "write_failed", "err=%s", uv_err_name((int)req->result));
  } else if ((size_t)req->result < c->len) {
    /* Short write (pipe): keep the rest at the head. */
    memmove(c->data, c->data + req->result, c->len - (size_t)req->result);
    c->len -= (size_t)req->result;
    s->pending -= (size_t)req->result;
    uv_fs_req_cleanup(req);
    s->writing = 0;
    start_write(s);
    return;
  }
  uv_fs_req_cleanup(req);
  s->head = c->next;
  if (!s->head) s->tail = NULL;
  s->pending -= c->len;
  mg_free(c);
  s->writing = 0;
  start_write(s);
}

static void finish_close(mg_sink_t *s) {
  if (s->owns_fd) close(s->fd);
  mg_free(s);
}

static void start_write(mg_sink_t *s) {
  if (s->writing) return;
  if (!s->head) {
    if (s->closing) finish_close(s);
    return;
  }
  uv_buf_t b = uv_buf_init(s->head->data, (unsigned)s->head->len);
  s->req.data = s;
  s->writing = 1;
  if (uv_fs_write(s->loop, &s->req, s->fd, &b, 1, -1, on_written) != 0) {
    /* Could not even queue the write: drop everything rather than spin. */
    s->writing = 0;
    while (s->head) {
      chunk_t *c = s->head;
      s->head = c->next;
      mg_free(c);
    }
    s->tail = NULL;
    s->pending = 0;
    if (s->closing) finish_close(s);
  }
}

int mg_sink_write(mg_sink_t *s, const void *body, size_t len) {
  mg_buf_t text;
  mg_buf_init(&text, MAX_PENDING);
  size_t n = 0;
  int rc = mg_sink_format(body, len, &text, &n);
  if (rc) {
    mg_buf_cleanup(&text);
    return rc;
  }
  if (s->pending + text.len > MAX_PENDING) {
    mg_buf_cleanup(&text);
    return MG_EFULL;
  }
  chunk_t *c = mg_malloc(sizeof *c + text.len);
  if (!c) {
    mg_buf_cleanup(&text);
    return MG_ENOMEM;
  }
  c->next = NULL;
  c->len = text.len;
  memcpy(c->data, text.data, text.len);
  mg_buf_cleanup(&text);
  if (s->tail) s->tail->next = c;
  else s->head = c;
  s->tail = c;
  s->pending += c->len;
  start_write(s);
  return (int)n;
}

size_t mg_sink_pending(const mg_sink_t *s) { return s->pending; }

void mg_sink_free(mg_sink_t *s) {
  if (!s) return;
  s->closing = 1;
  if (!s->writing) start_write(s);
}
