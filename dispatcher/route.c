/* Routing: first endpoint in file order that lists the model. */
#include "route.h"

int route_pick(const struct registry *reg, const char *model)
{
	for (int i = 0; i < reg->n; i++)
		if (registry_endpoint_serves(&reg->eps[i], model))
			return i;
	return -1;
}
