/* The dispatcher's own admin views (GET /endpoints, GET /circuit-breakers on
 * GW_ADMIN_LISTEN), read by `dispatcher endpoints` and operators. */
#ifndef GW_DISPATCHER_STATUS_H
#define GW_DISPATCHER_STATUS_H

#include "backend.h"
#include "breaker.h"

#include <stdint.h>

/* {"endpoints":[{name,url,cluster,framework,models,live_models,weight,max_concurrent,
 * inflight,queued,health,health_detail,circuit,requests,failures}]}. Caller frees. */
char *status_endpoints_json(struct backend *const *bs, int n, const struct breaker_config *c,
			    int64_t now_us);

/* {"circuit_breakers":[{endpoint,state,since_s,reason,consecutive_failures,
 * window_ok,window_failures,opens,retry_in_ms}],"settings":{...}}. Caller frees. */
char *status_circuits_json(struct backend *const *bs, int n, const struct breaker_config *c,
			   int64_t now_us);

#endif
