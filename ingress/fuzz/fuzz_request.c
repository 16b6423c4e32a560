/* libFuzzer target: the request checks ingress runs on every client request. The
 * input is "PATH\nBODY": the path goes through the route table, the body through the
 * body check (depth scan, JSON, model, stream). Invariants are asserted. */
#include "check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nl = memchr(data, '\n', size);
	size_t plen = nl ? (size_t)(nl - data) : size;
	char *path = malloc(plen + 1);
	if (!path)
		return 0;
	memcpy(path, data, plen);
	path[plen] = 0;
	struct route_match rm;
	if (check_route(path, &rm) == 0) {
		if (!rm.upstream || !rm.label || !rm.allow)
			abort();
		if (rm.cluster[0] && !check_name(rm.cluster, strlen(rm.cluster)))
			abort();
		if (rm.framework[0] && !check_name(rm.framework, strlen(rm.framework)))
			abort();
	}
	free(path);
	const uint8_t *body = nl ? nl + 1 : data + size;
	size_t blen = nl ? size - plen - 1 : 0;
	struct body_limits lim = {16};
	struct body_result r;
	int st = check_body(body, blen, &lim, &r);
	if (st == 0 && (r.model[0] == 0 || strlen(r.model) > 255))
		abort();
	if (st != 0 && (st != 400 || !r.code || !r.message[0]))
		abort();
	if (check_json_depth(body, blen, 1000000) > 16 && st == 0)
		abort();
	check_content_type((const char *)r.message);
	return 0;
}
