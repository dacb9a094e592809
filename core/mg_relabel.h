/* mg_relabel: Prometheus relabel_config rules, checked and compiled once
 * (RE2-syntax regexes translated to PCRE2, JIT-compiled), then applied to
 * label sets with Prometheus's semantics, action by action. Also the label
 * set builder the rules work on. Pure: no libuv, no clock, no I/O.
 * Semantics, and the few documented limits, are in docs/relabeling.md. */
#ifndef MG_RELABEL_H
#define MG_RELABEL_H

#include <stdbool.h>
#include <stddef.h>

#include "mg_conf.h"
#include "mg_str.h"

/* ---- Label set builder ---------------------------------------------------
 * A set of labels kept sorted by name (byte order, the order remote write
 * needs), names unique, values never empty: setting "" deletes, as in
 * Prometheus's labels.Builder. Labels are views: mg_labels_set borrows the
 * caller's bytes, mg_labels_set_copy and the rules put new strings in the
 * builder's own memory, and replacements that are plain text point into
 * the mg_relabel_t. Every view stays valid until mg_labels_reset or
 * cleanup (and while the borrowed bytes and the mg_relabel_t live).
 * Memory is kept across resets, so a builder reused for every series
 * does not allocate once it has grown to the largest series.
 * One builder per thread; it also holds the regex match scratch. */
typedef struct mg_labels_priv mg_labels_priv_t;
typedef struct mg_labels {
  mg_label_t *v; /* read-only for callers: n labels, sorted, unique names */
  size_t n;
  mg_labels_priv_t *priv;
} mg_labels_t;

/* Bounds when mg_labels_init is given 0. */
#define MG_LABELS_DEFAULT_MAX_LABELS 4096
#define MG_LABELS_DEFAULT_MAX_BYTES (16u << 20) /* strings made per reset */

/* max_labels bounds the set's size; max_bytes bounds the bytes of new
 * strings (copies, joined source values, expansions) between resets.
 * Past either bound operations fail with MG_ETOOBIG. 0 or MG_ENOMEM. */
int mg_labels_init(mg_labels_t *ls, size_t max_labels, size_t max_bytes);
void mg_labels_cleanup(mg_labels_t *ls);
/* Empty the set; keeps memory for reuse. */
void mg_labels_reset(mg_labels_t *ls);
/* Set name to value (borrowed views); an empty value deletes the label.
 * The name is not checked: callers validate what they load. 0,
 * MG_ETOOBIG, MG_ENOMEM. */
int mg_labels_set(mg_labels_t *ls, mg_str_t name, mg_str_t value);
/* Same, copying name and value into the builder first. */
int mg_labels_set_copy(mg_labels_t *ls, mg_str_t name, mg_str_t value);
/* The value, or an empty view ({"", 0}) when the label is absent. */
mg_str_t mg_labels_get(const mg_labels_t *ls, mg_str_t name);
void mg_labels_del(mg_labels_t *ls, mg_str_t name);

/* ---- Rules ---------------------------------------------------------------
 * Immutable once compiled: one mg_relabel_t may be applied from several
 * threads at once, each with its own builder. */
typedef struct mg_relabel mg_relabel_t;

/* Check and compile rules (each as written; NULL fields take Prometheus's
 * defaults) exactly as Prometheus's config loader would accept them, with
 * label names checked by the legacy scheme [a-zA-Z_][a-zA-Z0-9_]*. rules
 * may be NULL or empty (applying then keeps every set unchanged).
 * On success *out is owned by the caller (mg_relabel_free). On failure
 * returns MG_ECONFIG (or MG_ENOMEM) and writes one line to err naming the
 * 1-based rule, its action, its line when known and the field, e.g.
 *   rule 3 (hashmod) at line 12: modulus: must be set and non-zero
 * err may be NULL; it is always NUL-terminated when errlen > 0. */
int mg_relabel_compile(const mg_conf_relabels_t *rules, mg_relabel_t **out, char *err, size_t errlen);
void mg_relabel_free(mg_relabel_t *r);

/* Apply the rules in order to ls. *keep is false when a keep/drop/
 * keepequal/dropequal rule dropped the set (then ls is left as it was at
 * that rule). r may be NULL (no rules). Labels present when this is called
 * are visited by labelmap in name order, labels created by earlier rules
 * after them in creation order (Prometheus's relabel.Process).
 * labelmap may create names that are not valid label names, exactly as
 * Prometheus does; the caller checks names afterwards (Prometheus fails
 * such a scrape or target). Allocates only while the builder grows.
 * Returns 0; or MG_ETOOBIG when a builder bound or PCRE2's backtracking
 * limit was hit, MG_ENOMEM: then *keep is false and ls is unspecified
 * (callers drop the set and count it). */
int mg_relabel_apply(const mg_relabel_t *r, mg_labels_t *ls, bool *keep);

#endif
