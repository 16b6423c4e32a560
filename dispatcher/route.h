/* Routing: which endpoint serves one request. Today the first endpoint in file order
 * that lists the model; health, circuit breakers and least-outstanding choice slot in
 * here later without touching the callers. */
#ifndef GW_DISPATCHER_ROUTE_H
#define GW_DISPATCHER_ROUTE_H

#include "registry.h"

/* Index into reg->eps of the endpoint to use for model, or -1 when none serves it. */
int route_pick(const struct registry *reg, const char *model);

#endif
