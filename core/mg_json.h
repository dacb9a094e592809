/* mg_json: a small, strict JSON (RFC 8259) reader for the flat documents
 * AWS credential sources answer with (IMDS, ECS, credential_process) and
 * the target lists of HTTP discovery. It validates a whole document and
 * reports the members of its top-level object or the elements of its
 * top-level array; nested values are validated and handed over as raw
 * text (to be read with another call). Owns nothing past a call. Pure: no libuv, no I/O. String values may be secrets: the scratch
 * memory that held them is wiped, and errors never quote the input. */
#ifndef MG_JSON_H
#define MG_JSON_H

#include <stddef.h>

#include "mg_str.h"

#define MG_JSON_MAX_INPUT (1024 * 1024) /* bytes, mg_json_object */
#define MG_JSON_MAX_ARRAY_INPUT (16 * 1024 * 1024) /* bytes, mg_json_array: target lists */
#define MG_JSON_MAX_DEPTH 32            /* nesting of objects and arrays */

typedef enum {
  MG_JSON_NULL = 0,
  MG_JSON_FALSE,
  MG_JSON_TRUE,
  MG_JSON_NUMBER, /* value: the number as written ("-1.5e3") */
  MG_JSON_STRING, /* value: the unescaped UTF-8 bytes (may contain NUL from \u0000) */
  MG_JSON_OBJECT, /* value: the raw text of the nested object */
  MG_JSON_ARRAY,  /* value: the raw text of the nested array */
} mg_json_type_t;

/* One member of the top-level object. key is unescaped. Views are
 * borrowed until the callback returns. A non-zero return stops the parse
 * and is returned as is. Members are reported in document order (repeated
 * keys are reported each time), possibly before a later syntax error is
 * found: callers keep what they saw until mg_json_object returns 0. */
typedef int (*mg_json_member_cb)(void *ud, mg_str_t key, mg_json_type_t type, mg_str_t value);

/* Where a syntax error is: byte offset and a static message (never input
 * bytes). */
typedef struct mg_json_error {
  size_t offset;
  const char *msg;
} mg_json_error_t;

/* Parse doc[0..len), which must be exactly one object (surrounded by
 * optional whitespace; a UTF-8 byte order mark is refused). Strict: UTF-8
 * checked (no overlongs or surrogates), no control bytes in strings, only
 * the escapes of RFC 8259 (\uXXXX surrogate pairs must be paired), number
 * grammar as in the RFC, no trailing commas, depth <= MG_JSON_MAX_DEPTH.
 * Returns 0; MG_EPARSE with *err (may be NULL); MG_ETOOBIG past
 * MG_JSON_MAX_INPUT; MG_ENOMEM; or the callback's value. */
int mg_json_object(const char *doc, size_t len, mg_json_member_cb cb, void *ud, mg_json_error_t *err);

/* One element of the top-level array; index counts from 0. value as for
 * members: STRING unescaped, anything else as written (an OBJECT element
 * can be read with mg_json_object). Borrowed until the callback returns;
 * a non-zero return stops the parse and is returned as is. Elements may be
 * reported before a later syntax error is found, as members are. */
typedef int (*mg_json_element_cb)(void *ud, size_t index, mg_json_type_t type, mg_str_t value);

/* Parse doc[0..len), which must be exactly one array, with the rules of
 * mg_json_object, up to MG_JSON_MAX_ARRAY_INPUT bytes. Returns 0; MG_EPARSE
 * with *err (may be NULL); MG_ETOOBIG; MG_ENOMEM; or the callback's value. */
int mg_json_array(const char *doc, size_t len, mg_json_element_cb cb, void *ud, mg_json_error_t *err);

#endif
