/* mg_sd_ec2: discovery of EC2 instances, Prometheus's ec2_sd_configs
 * (kind "ec2"). Polls DescribeInstances (Query API, SigV4 service "ec2")
 * every refresh_interval with the project's credential providers and
 * reports one target per instance that has a private IP, labelled as
 * Prometheus labels it. Owns its credentials object, timer and requests;
 * borrows the loop, HTTP client and plan from mg_sd. Never logs secrets. */
#ifndef MG_SD_EC2_H
#define MG_SD_EC2_H

#include "mg_sd.h"

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

#endif
