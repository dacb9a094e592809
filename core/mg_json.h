/* mg_json: a small, strict JSON (RFC 8259) reader for the flat documents
 * AWS credential sources answer with (IMDS, ECS, credential_process). It
 * validates a whole document and reports the members of its top-level
 * object; nested values are validated and skipped. Owns nothing past a
 * call. Pure: no libuv, no I/O. String values may be secrets: the scratch
 * memory that held them is wiped, and errors never quote the input. */
#ifndef MG_JSON_H
#define MG_JSON_H

#include <stddef.h>

#include "mg_str.h"

#define MG_JSON_MAX_INPUT (1024 * 1024) /* bytes */
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

#endif
