/* Routing: least outstanding relative to capacity and weight, model lists (configured
 * and live), FIRST cluster/framework, open circuits, saturation, tried endpoints last. */
#include "backend.h"
#include "check.h"
#include "route.h"

#include <stdlib.h>
#include <string.h>

static const struct breaker_config bc = {.consecutive = 3,
					 .rate_pct = 50,
					 .rate_min = 10,
					 .window_ms = 1000,
					 .cooldown_ms = 1000,
					 .halfopen_max = 1};

/* Backends built by hand: routing reads only configuration and counters. */
static struct backend *mk(const char *name, const char *models, const char *cluster, int cap,
			  int weight)
{
	struct backend *b = calloc(1, sizeof *b);
	snprintf(b->ep.name, sizeof b->ep.name, "%s", name);
	snprintf(b->ep.cluster, sizeof b->ep.cluster, "%s", cluster);
	snprintf(b->ep.framework, sizeof b->ep.framework, "vllm");
	b->ep.models = calloc(8, sizeof *b->ep.models);
	char buf[256];
	snprintf(buf, sizeof buf, "%s", models);
	for (char *s = strtok(buf, ","); s; s = strtok(NULL, ","))
		b->ep.models[b->ep.nmodels++] = strdup(s);
	b->ep.max_concurrent = cap;
	b->ep.weight = weight;
	b->health_ok = -1;
	return b;
}

static void rm(struct backend *b)
{
	for (int i = 0; i < b->ep.nmodels; i++)
		free(b->ep.models[i]);
	free(b->ep.models);
	for (int i = 0; i < b->nlive; i++)
		free(b->live_models[i]);
	free(b->live_models);
	free(b);
}

static int pick(struct backend **bs, int n, const char *model, const char *cluster,
		const char *const *tried, int ntried, enum route_none *why)
{
	struct route_query q = {model, cluster, "", tried, ntried, 2, 1000000000, 0};
	return route_pick(bs, n, &q, &bc, why);
}

int main(void)
{
	struct backend *bs[3];
	bs[0] = mk("a", "m1,m2", "c1", 4, 1);
	bs[1] = mk("b", "m1", "c1", 4, 1);
	bs[2] = mk("c", "m1", "c2", 8, 1);
	enum route_none why;

	/* All idle: ties go to the first in rotation. */
	CHECK_EQ_INT(0, pick(bs, 3, "m1", "", NULL, 0, &why));
	CHECK_EQ_INT(ROUTE_FOUND, why);
	/* Least outstanding relative to capacity: a has 2/4, b 1/4, c 3/8. */
	bs[0]->pool.inflight = 2;
	bs[1]->pool.inflight = 1;
	bs[2]->pool.inflight = 3;
	CHECK_EQ_INT(1, pick(bs, 3, "m1", "", NULL, 0, &why));
	/* Queued requests count as outstanding. */
	bs[1]->nqueue = 2;
	CHECK_EQ_INT(2, pick(bs, 3, "m1", "", NULL, 0, &why));
	/* Weight doubles c's share: 3/(8*2) beats everything. */
	bs[1]->nqueue = 0;
	bs[2]->ep.weight = 2;
	bs[2]->pool.inflight = 5;
	CHECK_EQ_INT(1, pick(bs, 3, "m1", "", NULL, 0, &why));
	bs[2]->ep.weight = 1;
	/* FIRST: only the named cluster. */
	CHECK_EQ_INT(2, pick(bs, 3, "m1", "c2", NULL, 0, &why));
	CHECK_EQ_INT(-1, pick(bs, 3, "m2", "c2", NULL, 0, &why));
	CHECK_EQ_INT(ROUTE_NOT_LISTED, why);
	CHECK_EQ_INT(-1, pick(bs, 3, "nope", "", NULL, 0, &why));
	CHECK_EQ_INT(ROUTE_NOT_LISTED, why);
	/* A model missing from the live list is not routed there. */
	bs[0]->live_models = calloc(1, sizeof(char *));
	bs[0]->live_models[0] = strdup("m1");
	bs[0]->nlive = 1;
	bs[0]->live_known = 1;
	CHECK_EQ_INT(-1, pick(bs, 3, "m2", "", NULL, 0, &why));
	CHECK_EQ_INT(ROUTE_NOT_LISTED, why);
	/* Open circuits are skipped; all open -> ROUTE_ALL_OPEN with a retry hint. */
	bs[0]->pool.inflight = bs[1]->pool.inflight = bs[2]->pool.inflight = 0;
	bs[0]->br.state = BREAKER_OPEN;
	bs[0]->br.opened_us = 1000000000 - 200000;
	CHECK_EQ_INT(1, pick(bs, 3, "m1", "c1", NULL, 0, &why));
	bs[1]->br.state = BREAKER_OPEN;
	bs[1]->br.opened_us = 1000000000 - 100000;
	CHECK_EQ_INT(-1, pick(bs, 3, "m1", "c1", NULL, 0, &why));
	CHECK_EQ_INT(ROUTE_ALL_OPEN, why);
	struct route_query q = {"m1", "c1", "", NULL, 0, 2, 1000000000, 0};
	CHECK_EQ_INT(1, route_retry_after(bs, 3, &q, &bc));
	/* Half-open with its probe slot taken counts as closed to new requests. */
	bs[1]->br.state = BREAKER_HALF_OPEN;
	bs[1]->br.probes = 1;
	CHECK_EQ_INT(-1, pick(bs, 3, "m1", "c1", NULL, 0, &why));
	bs[1]->br.probes = 0;
	CHECK_EQ_INT(1, pick(bs, 3, "m1", "c1", NULL, 0, &why));
	bs[0]->br.state = bs[1]->br.state = BREAKER_CLOSED;
	/* Saturated: full and queue full everywhere. */
	bs[0]->pool.inflight = 4;
	bs[0]->nqueue = 2;
	bs[1]->pool.inflight = 4;
	bs[1]->nqueue = 2;
	CHECK_EQ_INT(-1, pick(bs, 3, "m1", "c1", NULL, 0, &why));
	CHECK_EQ_INT(ROUTE_SATURATED, why);
	/* Full but with queue room: still routed (it waits). */
	bs[1]->nqueue = 1;
	CHECK_EQ_INT(1, pick(bs, 3, "m1", "c1", NULL, 0, &why));
	/* Endpoints already tried come last, even when lighter. */
	bs[0]->pool.inflight = bs[1]->pool.inflight = 0;
	bs[0]->nqueue = bs[1]->nqueue = 0;
	bs[1]->pool.inflight = 3;
	const char *tried[] = {"a"};
	CHECK_EQ_INT(1, pick(bs, 3, "m1", "c1", tried, 1, &why));
	const char *both[] = {"a", "b"};
	CHECK_EQ_INT(0, pick(bs, 3, "m1", "c1", both, 2, &why));
	/* A Retry-After'd endpoint is avoided while another can serve. */
	bs[0]->busy_until_us = 2000000000;
	CHECK_EQ_INT(1, pick(bs, 3, "m1", "c1", NULL, 0, &why));
	for (int i = 0; i < 3; i++)
		rm(bs[i]);
	return check_done();
}
