/* mg_sd_ec2: discovery of EC2 instances, Prometheus's ec2_sd_configs
 * (kind "ec2"). Polls DescribeInstances (Query API, SigV4 service "ec2")
 * every refresh_interval with the project's credential providers and
 * reports one target per instance that has a private IP, labelled as
 * Prometheus labels it. Owns its credentials object, timer and requests;
 * borrows the loop, HTTP client and plan from mg_sd. Never logs secrets. */
#ifndef MG_SD_EC2_H
#define MG_SD_EC2_H

#include "mg_sd.h"
#include "mg_xml.h"

/* Options (a MAP, as in prometheus.yml):
 *   region            signing region and default endpoint; else AWS_REGION,
 *                     AWS_DEFAULT_REGION, else the instance's own region
 *                     from IMDSv2 (refused by check when none can be found)
 *   endpoint          http(s) URL overriding https://ec2.<region>.amazonaws.com/
 *                     (else AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL)
 *   access_key, secret_key (secret)   static keys (both or neither)
 *   profile           a shared-file profile
 *   role_arn          STS AssumeRole on top of the above (default chain if none)
 *   refresh_interval  default 60s
 *   port              default 80: __address__ is <private ip>:<port>
 *   filters           [{name, values: [..]}], sent as DescribeInstances filters
 *   tls_config        ca_file, cert_file, key_file, server_name, insecure_skip_verify
 *   follow_redirects, enable_http2   accepted and ignored (EC2 needs neither)
 * A refresh that fails (network, an AWS error, throttling) is logged once
 * per distinct error with AWS's code and message and reported with
 * ok = false, so the previous targets stay; the next attempt is one
 * refresh_interval later. A refusal of the credentials themselves
 * (AuthFailure, RequestExpired, UnauthorizedOperation, ExpiredToken, ...)
 * forces one credential refresh (mg_creds_invalidate) and one retry first. */
extern const mg_sd_ops_t mg_sd_ec2_ops;

/* ---- the answers' parsers, exposed for tests and fuzzing (pure) ---- */

typedef struct mg_sd_ec2_page_opts {
  const char *region;     /* __meta_ec2_region */
  unsigned port;          /* of __address__ */
  const mg_kvs_t *zones;  /* zone name -> zone id; NULL: no zone ids */
  size_t max_targets;     /* in ts, this page's included; 0: MG_CONF_MAX_TARGETS */
} mg_sd_ec2_page_opts_t;

/* One DescribeInstances answer (a DescribeInstancesResponse document):
 * appends to ts a target per instance whose private IP is an address
 * literal (IPv4, or IPv6 bracketed in __address__), with
 * Prometheus's __meta_ec2_* labels, and sets *next_token (owned; NULL on
 * the last page). Returns 0; MG_EPARSE (another document, or not XML:
 * *err says where when it is the XML); MG_ETOOBIG (past max_targets, or
 * the answer over 16 MiB); MG_ENOMEM. On error ts may hold some of this
 * answer's targets: the caller drops the refresh. */
int mg_sd_ec2_parse_instances(const char *xml, size_t len, const mg_sd_ec2_page_opts_t *o, mg_sd_targets_t *ts,
                              char **next_token, mg_xml_error_t *err);

/* One DescribeAvailabilityZones answer: zone name -> zone id into zones
 * (at most 1000). 0, MG_EPARSE, MG_ETOOBIG or MG_ENOMEM. */
int mg_sd_ec2_parse_zones(const char *xml, size_t len, mg_kvs_t *zones);

#endif
