/* mg_loop: owns the libuv loop and the process signals (SIGTERM/SIGINT
 * start a graceful shutdown, SIGHUP asks for a reload), and enforces the
 * shutdown order: callers stop their work, then mg_loop_close closes what is
 * left and checks that the loop really drained. */
#ifndef MG_LOOP_H
#define MG_LOOP_H

#include <stdint.h>
#include <uv.h>

/* Free heap goes back to the system 10 s after start, then at doubling
 * intervals up to 10 min: what the first scrapes left behind is returned
 * early, while memory that steady work frees and takes again is not
 * trimmed over and over (each trim of it costs page faults: +15 % CPU
 * with two destinations at a 10 s period). */
#ifndef MG_LOOP_TRIM_MS
#define MG_LOOP_TRIM_MS 10000
#endif
#define MG_LOOP_TRIM_MAX_MS 600000

typedef struct mg_loop mg_loop_t;
typedef void (*mg_loop_signal_fn)(void *ud, int signum);

struct mg_loop {
  uv_loop_t uv;
  uv_signal_t sig_term, sig_int, sig_hup;
  uv_timer_t trim; /* mg_mem_trim while signals are watched */
  uint64_t trim_ms; /* the next interval */
  mg_loop_signal_fn on_stop; /* SIGTERM, SIGINT */
  mg_loop_signal_fn on_reload; /* SIGHUP */
  void *ud;
  int signals_started;
};

int mg_loop_init(mg_loop_t *l);
/* Install signal handlers; a second SIGTERM/SIGINT while stopping exits
 * at once with status 1 (the operator insists). Also starts giving free
 * heap memory back to the system (mg_mem_trim, see MG_LOOP_TRIM_MS), until
 * unwatched. */
int mg_loop_watch_signals(mg_loop_t *l, mg_loop_signal_fn on_stop, mg_loop_signal_fn on_reload, void *ud);
/* Stop watching signals (part of shutdown). */
void mg_loop_unwatch_signals(mg_loop_t *l);
/* Run until no active handles remain. */
int mg_loop_run(mg_loop_t *l);
/* Close every remaining handle, drain, and close the loop. Returns 0, or
 * MG_EIO if handles were still open (they are logged by type). */
int mg_loop_close(mg_loop_t *l);

/* Wall-clock milliseconds since the Unix epoch (sample timestamps). */
int64_t mg_wall_ms(void);

#endif
