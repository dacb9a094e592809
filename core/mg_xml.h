/* mg_xml: a small, strict XML 1.0 reader for AWS query-protocol answers
 * (STS AssumeRole / AssumeRoleWithWebIdentity results, EC2 Describe*
 * pages and ErrorResponse documents). It checks well-formedness of the subset AWS uses and reports
 * the text of every leaf element with its path; no DTDs (refused, so no
 * entity expansion), no external anything. Owns nothing past a call. Pure:
 * no libuv, no I/O. Text may be secret: scratch memory is wiped, and errors
 * never quote the input. */
#ifndef MG_XML_H
#define MG_XML_H

#include <stddef.h>
#include <stdint.h>

#include "mg_str.h"

#define MG_XML_MAX_INPUT (1024 * 1024) /* bytes */
#define MG_XML_MAX_DEPTH 32            /* element nesting */

/* A leaf element (one without child elements): path[0] is the root
 * element's name, path[depth-1] the leaf's, names as written (a prefix
 * such as "ns:" is kept). text is the decoded character data (entities
 * and CDATA resolved, not trimmed). Views are borrowed until the callback
 * returns; a non-zero return stops the parse and is returned as is. Leaves
 * are reported in document order, possibly before a later syntax error:
 * callers keep what they saw until mg_xml_parse returns 0. */
typedef int (*mg_xml_leaf_cb)(void *ud, const mg_str_t *path, size_t depth, mg_str_t text);

typedef struct mg_xml_error {
  uint32_t line; /* 1-based */
  const char *msg; /* static; never input bytes */
} mg_xml_error_t;

/* Parse doc[0..len): an optional XML declaration, comments and processing
 * instructions, exactly one root element, nothing but those after it.
 * Checked: tag names, matching end tags, attribute syntax (quoted values,
 * no repeated names; values and namespaces are otherwise ignored), the
 * five predefined entities plus &#N; / &#xN; (valid XML characters only),
 * CDATA sections, UTF-8 (no overlongs or surrogates), no '<' or '&' loose
 * in text, no "]]>" in text, depth <= MG_XML_MAX_DEPTH. A DOCTYPE is
 * refused. Returns 0; MG_EPARSE with *err (may be NULL); MG_ETOOBIG past
 * MG_XML_MAX_INPUT; MG_ENOMEM; or the callback's value. */
int mg_xml_parse(const char *doc, size_t len, mg_xml_leaf_cb cb, void *ud, mg_xml_error_t *err);

/* Element ends, for answers whose lists repeat the same leaf names (EC2's
 * <item>s): called after an element's end tag (after its leaf callback
 * when it is a leaf), path[depth-1] being that element. Views are
 * borrowed until the callback returns; a non-zero return stops the parse
 * and is returned as is. */
typedef int (*mg_xml_end_cb)(void *ud, const mg_str_t *path, size_t depth);

typedef struct mg_xml_handlers {
  mg_xml_leaf_cb leaf; /* required */
  mg_xml_end_cb end;   /* may be NULL */
  size_t max_input;    /* 0: MG_XML_MAX_INPUT; large paged answers (EC2) may allow more */
} mg_xml_handlers_t;

/* mg_xml_parse with element ends and an input limit of the caller's
 * choosing; same rules and errors (MG_ETOOBIG past h->max_input). The
 * scratch block is as large as the input. */
int mg_xml_parse_ex(const char *doc, size_t len, const mg_xml_handlers_t *h, void *ud, mg_xml_error_t *err);

#endif
