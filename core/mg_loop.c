/* mg_loop: the event loop's lifecycle and signal handling. */
#include "mg_loop.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mg_err.h"
#include "mg_log.h"
#include "mg_mem.h"

int mg_loop_init(mg_loop_t *l) {
  memset(l, 0, sizeof *l);
  /* libuv writes with write(2): a peer that closes first would deliver
   * SIGPIPE and kill the process. The write then fails with EPIPE, which
   * the HTTP layer handles like any reset. */
  signal(SIGPIPE, SIG_IGN);
  int rc = uv_loop_init(&l->uv);
  return rc ? mg_err_from_uv(rc) : 0;
}

static void on_signal(uv_signal_t *h, int signum) {
  mg_loop_t *l = h->data;
  if (signum == SIGHUP) {
    if (l->on_reload) l->on_reload(l->ud, signum);
    return;
  }
  static int stopping;
  if (stopping++) {
    MG_WARN("loop", "forced_exit", "signal=%d hint=\"second stop signal while draining\"", signum);
    _Exit(1);
  }
  if (l->on_stop) l->on_stop(l->ud, signum);
}

static void on_trim(uv_timer_t *t) {
  mg_loop_t *l = t->data;
  mg_mem_trim();
  l->trim_ms = l->trim_ms * 2 < MG_LOOP_TRIM_MAX_MS ? l->trim_ms * 2 : MG_LOOP_TRIM_MAX_MS;
  uv_timer_start(t, on_trim, l->trim_ms, 0);
}

int mg_loop_watch_signals(mg_loop_t *l, mg_loop_signal_fn on_stop, mg_loop_signal_fn on_reload, void *ud) {
  l->on_stop = on_stop;
  l->on_reload = on_reload;
  l->ud = ud;
  uv_signal_t *hs[] = {&l->sig_term, &l->sig_int, &l->sig_hup};
  int sigs[] = {SIGTERM, SIGINT, SIGHUP};
  for (int i = 0; i < 3; i++) {
    uv_signal_init(&l->uv, hs[i]);
    hs[i]->data = l;
    int rc = uv_signal_start(hs[i], on_signal, sigs[i]);
    if (rc) return mg_err_from_uv(rc);
  }
  uv_timer_init(&l->uv, &l->trim);
  l->trim.data = l;
  l->trim_ms = MG_LOOP_TRIM_MS;
  uv_timer_start(&l->trim, on_trim, l->trim_ms, 0);
  uv_unref((uv_handle_t *)&l->trim);
  l->signals_started = 1;
  return 0;
}

void mg_loop_unwatch_signals(mg_loop_t *l) {
  if (!l->signals_started) return;
  l->signals_started = 0;
  uv_close((uv_handle_t *)&l->sig_term, NULL);
  uv_close((uv_handle_t *)&l->sig_int, NULL);
  uv_close((uv_handle_t *)&l->sig_hup, NULL);
  uv_close((uv_handle_t *)&l->trim, NULL);
}

int mg_loop_run(mg_loop_t *l) { return uv_run(&l->uv, UV_RUN_DEFAULT); }

static void log_open_handle(uv_handle_t *h, void *arg) {
  int *n = arg;
  if (uv_is_closing(h)) return;
  (*n)++;
  MG_ERROR("loop", "handle_leak", "type=%s", uv_handle_type_name(uv_handle_get_type(h)));
  uv_close(h, NULL);
}

int mg_loop_close(mg_loop_t *l) {
  mg_loop_unwatch_signals(l);
  uv_run(&l->uv, UV_RUN_DEFAULT);
  int open = 0;
  uv_walk(&l->uv, log_open_handle, &open);
  uv_run(&l->uv, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&l->uv);
  return (open || rc) ? MG_EIO : 0;
}

int64_t mg_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
