/* mg_credscli: `moongate creds`, the operator's check of AWS credentials:
 * resolves a credential source as moongate would (the default chain, a
 * profile, an assumed role, or a destination of a configuration), prints
 * which source won, the access key id (masked) and the expiry, then asks
 * STS GetCallerIdentity who that is. Never prints a secret or token. */
#ifndef MG_CREDSCLI_H
#define MG_CREDSCLI_H

#include "mg_conf.h"

/* Runs its own event loop until done (at most timeout_ms). region: for STS
 * and the chain; may be NULL. Returns the process exit code: 0 when
 * credentials resolved and STS accepted them, 1 otherwise. */
int mg_credscli_run(const mg_conf_creds_t *creds, const char *region, uint64_t timeout_ms);

#endif
