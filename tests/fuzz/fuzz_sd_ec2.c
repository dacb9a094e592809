/* libFuzzer driver for the EC2 discovery answers (mg_sd_ec2_parse_instances
 * and _zones): any input is accepted or refused the same way twice; every
 * target has <host>:9100 as address (IPv6 bracketed), only __meta_ec2_*
 * label names made of [A-Za-z0-9_], once each, non-empty UTF-8 values, the
 * ","-joined lists framed by commas, and no more targets than allowed. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_err.h"
#include "mg_mem.h"
#include "mg_sd_ec2.h"

#define ENSURE(c)                                                                   \
  do {                                                                              \
    if (!(c)) {                                                                     \
      fprintf(stderr, "fuzz_sd_ec2: invariant failed: %s (line %d)\n", #c, __LINE__); \
      abort();                                                                      \
    }                                                                               \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool utf8_ok(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t n = strlen(s);
  for (size_t i = 0; i < n;) {
    if (p[i] < 0x80) {
      i++;
      continue;
    }
    size_t k = mg_utf8_seq(p + i, n - i);
    if (!k) return false;
    i += k;
  }
  return true;
}

static bool name_ok(const char *s) {
  if (strncmp(s, "__meta_ec2_", 11) != 0) return false;
  for (const char *c = s; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_'))
      return false;
  return true;
}

static bool is_list(const char *name) {
  return strcmp(name, "__meta_ec2_subnet_id") == 0 || strcmp(name, "__meta_ec2_ipv6_addresses") == 0 ||
         strcmp(name, "__meta_ec2_primary_ipv6_addresses") == 0;
}

static uint64_t check_targets(const mg_sd_targets_t *ts) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < ts->n; i++) {
    const mg_conf_target_t *t = &ts->v[i];
    size_t al = strlen(t->address);
    ENSURE(al > 5 && strcmp(t->address + al - 5, ":9100") == 0 && utf8_ok(t->address));
    ENSURE(t->address[0] != '[' || t->address[al - 6] == ']');
    ENSURE(mg_kvs_get(&t->labels, "__meta_ec2_private_ip") && mg_kvs_get(&t->labels, "__meta_ec2_region"));
    for (size_t k = 0; k < t->labels.n; k++) {
      const mg_kv_t *kv = &t->labels.v[k];
      ENSURE(name_ok(kv->name));
      ENSURE(kv->value[0] && utf8_ok(kv->value));
      size_t vl = strlen(kv->value);
      if (is_list(kv->name)) ENSURE(vl >= 2 && kv->value[0] == ',' && kv->value[vl - 1] == ',');
      for (size_t j = 0; j < k; j++) ENSURE(strcmp(t->labels.v[j].name, kv->name) != 0);
      for (const char *c = kv->name; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
      for (const char *c = kv->value; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
    }
  }
  return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 1 << 16) return 0;
  const char *in = (const char *)data;
  mg_kvs_t zones = {0};
  int rz = mg_sd_ec2_parse_zones(in, size, &zones);
  ENSURE(rz == 0 || rz == MG_EPARSE);
  ENSURE(zones.n <= 1000);
  mg_sd_ec2_page_opts_t o = {.region = "eu-west-3", .port = 9100, .zones = &zones, .max_targets = 64};
  mg_sd_targets_t a = {0}, b = {0};
  char *ta = NULL, *tb = NULL;
  mg_xml_error_t ea, eb;
  int ra = mg_sd_ec2_parse_instances(in, size, &o, &a, &ta, &ea);
  int rb = mg_sd_ec2_parse_instances(in, size, &o, &b, &tb, &eb);
  ENSURE(ra == rb && a.n == b.n && check_targets(&a) == check_targets(&b));
  ENSURE(ra == 0 || ra == MG_EPARSE || ra == MG_ETOOBIG);
  ENSURE(a.n <= 64);
  ENSURE(ra == 0 || ta == NULL);
  ENSURE(!ta == !tb && (!ta || (ta[0] && strcmp(ta, tb) == 0)));
  mg_free(ta);
  mg_free(tb);
  mg_sd_targets_cleanup(&a);
  mg_sd_targets_cleanup(&b);
  mg_kvs_cleanup(&zones);
  return 0;
}
