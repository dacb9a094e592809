/* mg_ini: parser for the INI dialect of the AWS shared config and
 * credentials files (~/.aws/config, ~/.aws/credentials), following the AWS
 * SDKs' profile-file rules. Owns nothing past a call; reports items through
 * a callback. Pure: no libuv, no I/O. Values may be secrets: the scratch
 * memory that held them is wiped before returning, and errors never quote
 * the input. */
#ifndef MG_INI_H
#define MG_INI_H

#include <stddef.h>
#include <stdint.h>

#include "mg_str.h"

/* Largest input accepted (bytes): real files are a few KiB. */
#define MG_INI_MAX_INPUT (1024 * 1024)

typedef enum {
  MG_INI_SECTION = 0, /* "[name]": section is the trimmed name, key/value empty */
  MG_INI_PROPERTY,    /* "key = value" in a section */
  MG_INI_SUBPROPERTY, /* indented "key = value" under a property with an empty value */
} mg_ini_kind_t;

typedef struct mg_ini_item {
  mg_ini_kind_t kind;
  mg_str_t section; /* the enclosing section's name, trimmed ("profile dev") */
  mg_str_t parent;  /* MG_INI_SUBPROPERTY: the property it belongs to; else empty */
  mg_str_t key;     /* trimmed; never empty for properties */
  mg_str_t value;   /* trimmed, trailing comment removed; continuation lines
                       are joined with '\n'; may be empty */
  uint32_t line;    /* 1-based line of the section header / property name */
} mg_ini_item_t;

/* Called once per item, in file order; a property is reported after its
 * continuation lines were read. Views are borrowed until the callback
 * returns; an empty view points at "" (never NULL). A non-zero return stops the parse and is returned as is. */
typedef int (*mg_ini_cb)(void *ud, const mg_ini_item_t *item);

/* Where a syntax error is: line (1-based) and a static message that never
 * contains input bytes. */
typedef struct mg_ini_error {
  uint32_t line;
  const char *msg;
} mg_ini_error_t;

/* Parse data[0..len). Syntax, as in the SDKs' profile-file format:
 * - lines end with "\n" or "\r\n"; blank lines are skipped;
 * - a line whose first non-blank byte is '#' or ';' is a comment;
 * - "[name]" opens a section (no leading blanks); after ']' only blanks or
 *   a comment may follow; the name is trimmed and may be empty (callers
 *   decide which names they accept);
 * - "key = value" (no leading blanks) is a property of the current section;
 *   in the value, '#' or ';' after a blank starts a comment; a property
 *   before any section is an error;
 * - a line starting with a blank continues the last property: its trimmed
 *   text is appended to the value after '\n', or, when the property's own
 *   value is empty, it must be "key = value" and is reported as a
 *   sub-property (e.g. "s3 =\n  max_concurrent_requests = 10").
 * Returns 0; MG_EPARSE with *err filled (err may be NULL); MG_ETOOBIG for
 * input over MG_INI_MAX_INPUT; MG_ENOMEM; or the callback's non-zero value. */
int mg_ini_parse(const char *data, size_t len, mg_ini_cb cb, void *ud, mg_ini_error_t *err);

#endif
