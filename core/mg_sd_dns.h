/* mg_sd_dns: the "dns" discovery provider (Prometheus dns_sd_configs).
 * Every refresh_interval it looks up each name (SRV, A, AAAA, MX or NS)
 * with c-ares on the loop and reports one target per record. Owns its
 * resolver channel, socket polls and timers, and the last good targets of
 * each name; borrows the loop. */
#ifndef MG_SD_DNS_H
#define MG_SD_DNS_H

#include "mg_sd.h"

/* Options (as in Prometheus): names (list, required), type (SRV default,
 * A, AAAA, MX, NS), port (required except for SRV), refresh_interval
 * (default 30s); moongate extension: nameservers, a list of "ip[:port]"
 * ("[v6]:port") used instead of the servers of /etc/resolv.conf. The
 * resolver configuration (servers, search list, ndots) is read when the
 * provider starts, i.e. at start-up and on reload.
 *
 * Labels per target: __meta_dns_name (the name as configured), and for
 * SRV __meta_dns_srv_record_target / __meta_dns_srv_record_port, for MX
 * __meta_dns_mx_record_target, for NS __meta_dns_ns_record_target (record
 * targets written as the DNS has them, with the final dot; the address
 * is host:port without it, IPv6 in brackets). A name that does not exist
 * (NXDOMAIN) or has no such records has no targets; a name whose lookup
 * fails keeps its previous targets while the others are updated. */
extern const mg_sd_ops_t mg_sd_dns_ops;

#define MG_SD_DNS_DEFAULT_REFRESH_MS 30000
#define MG_SD_DNS_MAX_NAMES 1024

#endif
