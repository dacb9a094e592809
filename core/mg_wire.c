/* mg_wire: protobuf encoding of remote write messages without building
 * intermediate structs: sizes are computed first (one pass over the label
 * views), then bytes are written once. Snappy through its C binding. */
#include "mg_wire.h"

#include <snappy-c.h>
#include <stdbool.h>
#include <string.h>

#include "mg_err.h"

/* Field tags: (field << 3) | wire type; 2 = length-delimited, 1 = 64-bit, 0 = varint. */
#define TAG_WR_TIMESERIES 0x0a /* WriteRequest.timeseries = 1 */
#define TAG_WR_METADATA 0x1a   /* WriteRequest.metadata = 3 */
#define TAG_TS_LABEL 0x0a      /* TimeSeries.labels = 1 */
#define TAG_TS_SAMPLE 0x12     /* TimeSeries.samples = 2 */
#define TAG_LABEL_NAME 0x0a
#define TAG_LABEL_VALUE 0x12
#define TAG_SAMPLE_VALUE 0x09  /* double, fixed64 */
#define TAG_SAMPLE_TS 0x10     /* int64, varint */
#define TAG_MD_TYPE 0x08
#define TAG_MD_FAMILY 0x12
#define TAG_MD_HELP 0x22
#define TAG_MD_UNIT 0x2a

double mg_wire_stale_nan(void) {
  uint64_t bits = MG_STALE_NAN_BITS;
  double d;
  memcpy(&d, &bits, sizeof d);
  return d;
}

int mg_wire_is_stale_nan(double v) {
  uint64_t bits;
  memcpy(&bits, &v, sizeof bits);
  return bits == MG_STALE_NAN_BITS;
}

static inline size_t varint_len(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static inline uint8_t *put_varint(uint8_t *p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  *p++ = (uint8_t)v;
  return p;
}

/* Label names and most values are short: copy them with a few fixed-size
 * moves (two that may overlap) instead of a call into libc. Writes exactly
 * n bytes. */
static inline void copy_bytes(uint8_t *d, const char *s, size_t n) {
  if (n > 16) {
    memcpy(d, s, n);
  } else if (n >= 8) {
    uint64_t a, b;
    memcpy(&a, s, 8);
    memcpy(&b, s + n - 8, 8);
    memcpy(d, &a, 8);
    memcpy(d + n - 8, &b, 8);
  } else if (n >= 4) {
    uint32_t a, b;
    memcpy(&a, s, 4);
    memcpy(&b, s + n - 4, 4);
    memcpy(d, &a, 4);
    memcpy(d + n - 4, &b, 4);
  } else if (n >= 2) {
    uint16_t a, b;
    memcpy(&a, s, 2);
    memcpy(&b, s + n - 2, 2);
    memcpy(d, &a, 2);
    memcpy(d + n - 2, &b, 2);
  } else if (n) {
    *d = (uint8_t)*s;
  }
}

static inline uint8_t *put_bytes(uint8_t *p, uint8_t tag, mg_str_t s) {
  *p++ = tag;
  p = put_varint(p, s.n);
  copy_bytes(p, s.p, s.n);
  return p + s.n;
}

static inline size_t label_body_len(const mg_label_t *l) {
  return 2 + varint_len(l->name.n) + l->name.n + varint_len(l->value.n) + l->value.n;
}

int mg_wire_append_series(mg_buf_t *b, const mg_label_t *labels, size_t n, double value, int64_t ts_ms) {
  size_t body = 0;
  /* Nearly every label has a name and value under 128 bytes and fits a
   * Label message under 128 bytes: then every length is one varint byte. */
  bool short_labels = true;
  for (size_t i = 0; i < n; i++) {
    size_t nn = labels[i].name.n, vn = labels[i].value.n;
    if (nn + vn < 124) {
      body += 6 + nn + vn; /* tag, len, name tag, name len, value tag, value len */
    } else {
      short_labels = false;
      size_t lb = label_body_len(&labels[i]);
      body += 1 + varint_len(lb) + lb;
    }
  }
  /* int64 varints encode negative values as 10 bytes (two's complement). */
  size_t sample_len = 1 + 8 + 1 + varint_len((uint64_t)ts_ms);
  body += 1 + varint_len(sample_len) + sample_len;
  size_t total = 1 + varint_len(body) + body;
  int rc = mg_buf_reserve(b, total);
  if (rc) return rc;
  uint8_t *p = (uint8_t *)b->data + b->len;
  *p++ = TAG_WR_TIMESERIES;
  p = put_varint(p, body);
  if (short_labels) {
    for (size_t i = 0; i < n; i++) {
      size_t nn = labels[i].name.n, vn = labels[i].value.n;
      p[0] = TAG_TS_LABEL;
      p[1] = (uint8_t)(4 + nn + vn);
      p[2] = TAG_LABEL_NAME;
      p[3] = (uint8_t)nn;
      copy_bytes(p + 4, labels[i].name.p, nn);
      p += 4 + nn;
      p[0] = TAG_LABEL_VALUE;
      p[1] = (uint8_t)vn;
      copy_bytes(p + 2, labels[i].value.p, vn);
      p += 2 + vn;
    }
  } else {
    for (size_t i = 0; i < n; i++) {
      *p++ = TAG_TS_LABEL;
      p = put_varint(p, label_body_len(&labels[i]));
      p = put_bytes(p, TAG_LABEL_NAME, labels[i].name);
      p = put_bytes(p, TAG_LABEL_VALUE, labels[i].value);
    }
  }
  *p++ = TAG_TS_SAMPLE;
  p = put_varint(p, sample_len);
  *p++ = TAG_SAMPLE_VALUE;
  memcpy(p, &value, 8); /* little-endian hosts only; checked in the unit test */
  p += 8;
  *p++ = TAG_SAMPLE_TS;
  p = put_varint(p, (uint64_t)ts_ms);
  b->len = (size_t)((char *)p - b->data);
  b->data[b->len] = '\0';
  return 0;
}

int mg_wire_append_metadata(mg_buf_t *b, mg_metric_kind_t type, mg_str_t family, mg_str_t help, mg_str_t unit) {
  size_t body = 2; /* type tag + one-byte enum value */
  body += 1 + varint_len(family.n) + family.n;
  if (help.n) body += 1 + varint_len(help.n) + help.n;
  if (unit.n) body += 1 + varint_len(unit.n) + unit.n;
  int rc = mg_buf_reserve(b, 1 + varint_len(body) + body);
  if (rc) return rc;
  uint8_t *p = (uint8_t *)b->data + b->len;
  *p++ = TAG_WR_METADATA;
  p = put_varint(p, body);
  *p++ = TAG_MD_TYPE;
  /* MetricMetadata.MetricType numbering equals mg_metric_kind_t's. */
  *p++ = (uint8_t)type;
  p = put_bytes(p, TAG_MD_FAMILY, family);
  if (help.n) p = put_bytes(p, TAG_MD_HELP, help);
  if (unit.n) p = put_bytes(p, TAG_MD_UNIT, unit);
  b->len = (size_t)((char *)p - b->data);
  b->data[b->len] = '\0';
  return 0;
}

int mg_wire_snappy_compress(const void *in, size_t n, mg_buf_t *out) {
  size_t max = snappy_max_compressed_length(n);
  int rc = mg_buf_reserve(out, max);
  if (rc) return rc;
  size_t outlen = max;
  if (snappy_compress(in, n, out->data + out->len, &outlen) != SNAPPY_OK) return MG_EINVAL;
  out->len += outlen;
  out->data[out->len] = '\0';
  return 0;
}

int mg_wire_snappy_uncompress(const void *in, size_t n, mg_buf_t *out) {
  size_t len;
  if (snappy_uncompressed_length(in, n, &len) != SNAPPY_OK) return MG_EPARSE;
  int rc = mg_buf_reserve(out, len);
  if (rc) return rc;
  size_t outlen = len;
  if (snappy_uncompress(in, n, out->data + out->len, &outlen) != SNAPPY_OK) return MG_EPARSE;
  out->len += outlen;
  out->data[out->len] = '\0';
  return 0;
}

bool mg_wire_snappy_valid(const void *in, size_t n) {
  return snappy_validate_compressed_buffer(in, n) == SNAPPY_OK;
}

/* The uncompressed-length preamble of a snappy block: a varint of at most
 * 32 bits. Returns the bytes it takes, or 0 when it is malformed. */
static size_t snappy_preamble(const unsigned char *p, size_t n, uint64_t *len) {
  uint64_t v = 0;
  for (size_t i = 0; i < n && i < 5; i++) {
    v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
    if (!(p[i] & 0x80)) {
      if (v > UINT32_MAX) return 0;
      *len = v;
      return i + 1;
    }
  }
  return 0;
}

int mg_wire_snappy_join(const mg_str_t *blocks, size_t n, mg_buf_t *out) {
  uint64_t total = 0;
  size_t body = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t len;
    size_t h = snappy_preamble((const unsigned char *)blocks[i].p, blocks[i].n, &len);
    if (!h) return MG_EPARSE;
    total += len;
    body += blocks[i].n - h;
  }
  if (total > UINT32_MAX) return MG_ETOOBIG;
  int rc = mg_buf_reserve(out, 5 + body);
  if (rc) return rc;
  uint8_t *p = put_varint((uint8_t *)out->data + out->len, total);
  for (size_t i = 0; i < n; i++) {
    uint64_t len;
    size_t h = snappy_preamble((const unsigned char *)blocks[i].p, blocks[i].n, &len);
    memcpy(p, blocks[i].p + h, blocks[i].n - h);
    p += blocks[i].n - h;
  }
  out->len = (size_t)((char *)p - out->data);
  out->data[out->len] = '\0';
  return 0;
}
