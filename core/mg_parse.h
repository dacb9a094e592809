/* mg_parse: Prometheus exposition parser for text format 0.0.4 and
 * OpenMetrics 1.0. Zero-copy: every string handed out points into the body.
 * One callback per sample line and one per HELP/TYPE/UNIT line. Pure: no
 * allocation, no libuv, no clock. This is the first code that touches
 * untrusted bytes, and it is fuzzed (tests/fuzz/fuzz_parse.c). */
#ifndef MG_PARSE_H
#define MG_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mg_str.h"

typedef enum { MG_FMT_PROM_TEXT = 0, MG_FMT_OPENMETRICS = 1 } mg_parse_format_t;

/* Choose the format from a Content-Type header value (may be NULL):
 * "application/openmetrics-text" gives OpenMetrics, anything else the
 * Prometheus text format (as Prometheus does). */
mg_parse_format_t mg_parse_format_from_content_type(const char *ct, size_t n);

typedef enum {
  MG_MTYPE_UNKNOWN = 0, /* also "untyped" in text 0.0.4 */
  MG_MTYPE_COUNTER,
  MG_MTYPE_GAUGE,
  MG_MTYPE_HISTOGRAM,
  MG_MTYPE_GAUGEHISTOGRAM,
  MG_MTYPE_SUMMARY,
  MG_MTYPE_INFO,
  MG_MTYPE_STATESET,
} mg_metric_kind_t;

/* Largest number of labels one series may carry in the body; more fails
 * the scrape with a parse error. */
#define MG_PARSE_MAX_LABELS 256

typedef struct mg_parse_label {
  mg_str_t name;
  mg_str_t value;  /* raw bytes between the quotes, escapes NOT resolved */
  bool escaped;    /* value contains a backslash escape: use mg_parse_unescape */
} mg_parse_label_t;

typedef struct mg_parse_sample {
  /* The series identity exactly as written: from the first byte of the
   * metric name to the closing '}' (or the end of the name when there are
   * no labels). The per-target cache is keyed by a hash of these bytes. */
  mg_str_t series;
  mg_str_t name;
  const mg_parse_label_t *labels; /* body order, valid during the callback */
  size_t nlabels;
  bool sorted; /* label names strictly rising in body order (so none repeats) */
  double value;
  bool has_timestamp;
  int64_t timestamp_ms; /* text: integer ms; OpenMetrics: seconds converted to ms */
  uint32_t line;        /* 1-based */
} mg_parse_sample_t;

typedef enum { MG_META_HELP, MG_META_TYPE, MG_META_UNIT } mg_meta_kind_t;

typedef struct mg_parse_meta {
  mg_meta_kind_t kind;
  mg_str_t family;        /* metric family name */
  mg_str_t text;          /* HELP text (raw, escapes unresolved) or UNIT; empty for TYPE */
  mg_metric_kind_t type;  /* for MG_META_TYPE */
  uint32_t line;
} mg_parse_meta_t;

/* Callbacks return 0 to continue or a negative mg_err to stop the parse
 * (mg_parse then returns that value). on_meta may be NULL. */
typedef struct mg_parse_callbacks {
  int (*on_sample)(void *ud, const mg_parse_sample_t *s);
  int (*on_meta)(void *ud, const mg_parse_meta_t *m);
} mg_parse_callbacks_t;

typedef struct mg_parse_error {
  uint32_t line;   /* 1-based line of the error, 0 if not line-specific */
  uint32_t column; /* 1-based byte column */
  const char *msg; /* static string, e.g. "expected '=' after label name" */
} mg_parse_error_t;

/* Parse a whole body. Returns 0, MG_EPARSE with *err filled, or the
 * negative value a callback returned. Strictness follows Prometheus:
 * anything Prometheus's own parsers reject is rejected here (invalid metric
 * or label names, invalid UTF-8 in label values, bad floats, duplicate
 * label names in one series, OpenMetrics without "# EOF" or with data after
 * it). Exemplars (OpenMetrics " # {...} value [ts]") are validated and
 * skipped. Comment lines that are not HELP/TYPE/UNIT are ignored in the
 * text format. */
int mg_parse(const char *body, size_t len, mg_parse_format_t fmt, const mg_parse_callbacks_t *cb, void *ud,
             mg_parse_error_t *err);

/* Resolve the escapes of a label value (\\ \" \n) or HELP text (\\ \n) into
 * out, which must have room for raw.n bytes. Returns the length written. */
size_t mg_parse_unescape(mg_str_t raw, char *out);

/* Resolve the escapes of HELP text exactly as Prometheus does for the given
 * format: text 0.0.4 knows \\ and \n only (a \" stays as written), OpenMetrics
 * uses the label value rules. out needs room for raw.n bytes and may be
 * raw.p itself. Returns the length written. */
size_t mg_parse_unescape_help(mg_str_t raw, mg_parse_format_t fmt, char *out);

/* Parse one whole sample value token the way Prometheus does (Go's
 * strconv.ParseFloat without hex floats or '_'): [+-] digits with optional
 * '.', optional [eE][+-]digits; or Inf / Infinity (signed) / NaN in any case.
 * Correctly rounded: bit-identical to strtod. A finite number that overflows
 * is an error (Go's ErrRange); underflow gives 0 or a subnormal. Every NaN
 * comes out as Prometheus' normal NaN (bits 0x7ff8000000000001), never as the
 * staleness marker. Returns 0 or MG_EPARSE. mg_parse uses it for sample values
 * and (for OpenMetrics) timestamps. */
int mg_parse_float(const char *s, size_t n, double *out);

/* Name checks shared with relabeling and config validation. */
bool mg_parse_valid_metric_name(mg_str_t s); /* [a-zA-Z_:][a-zA-Z0-9_:]* */
bool mg_parse_valid_label_name(mg_str_t s);  /* [a-zA-Z_][a-zA-Z0-9_]* */

#endif
