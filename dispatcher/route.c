/* Least outstanding requests relative to capacity, weighted, over the usable endpoints. */
#include "route.h"

#include <string.h>

static int matches(const struct backend *b, const struct route_query *q)
{
	if (b->retired || !backend_serves(b, q->model))
		return 0;
	if (q->cluster && q->cluster[0] && strcmp(b->ep.cluster, q->cluster) != 0)
		return 0;
	if (q->framework && q->framework[0] && strcmp(b->ep.framework, q->framework) != 0)
		return 0;
	return 1;
}

/* Would the breaker let a request through now (without taking a probe slot)? */
static int circuit_lets(const struct backend *b, const struct breaker_config *bc, int64_t now)
{
	switch (b->br.state) {
	case BREAKER_CLOSED: return 1;
	case BREAKER_HALF_OPEN: return b->br.probes < bc->halfopen_max;
	case BREAKER_OPEN: return now - b->br.opened_us >= (int64_t)bc->cooldown_ms * 1000;
	}
	return 0;
}

static int was_tried(const struct backend *b, const struct route_query *q)
{
	for (int i = 0; i < q->ntried; i++)
		if (strcmp(q->tried[i], b->ep.name) == 0)
			return 1;
	return 0;
}

/* a's load relative to capacity is lower than b's. */
static int lighter(const struct backend *a, const struct backend *b)
{
	long long ca = (long long)a->ep.max_concurrent * a->ep.weight;
	long long cb = (long long)b->ep.max_concurrent * b->ep.weight;
	return (long long)backend_outstanding(a) * cb < (long long)backend_outstanding(b) * ca;
}

/* Preference classes: 0 fresh and not rate limited, 1 rate limited (Retry-After),
 * 2 already tried for this request. Lower wins before load is compared. */
static int klass(const struct backend *b, const struct route_query *q)
{
	if (was_tried(b, q))
		return 2;
	return b->busy_until_us > q->now_us ? 1 : 0;
}

int route_pick(struct backend *const *bs, int n, const struct route_query *q,
	       const struct breaker_config *bc, enum route_none *why)
{
	int listed = 0, closed = 0, best = -1, bestk = 0;
	for (int k = 0; k < n; k++) {
		int i = (int)((q->rr + (unsigned)k) % (unsigned)n);
		const struct backend *b = bs[i];
		if (!matches(b, q))
			continue;
		listed++;
		if (!circuit_lets(b, bc, q->now_us))
			continue;
		closed++;
		if (b->pool.inflight >= b->ep.max_concurrent && b->nqueue >= q->queue_max)
			continue;
		int kb = klass(b, q);
		if (best < 0 || kb < bestk || (kb == bestk && lighter(b, bs[best]))) {
			best = i;
			bestk = kb;
		}
	}
	if (best >= 0) {
		*why = ROUTE_FOUND;
		return best;
	}
	*why = !listed ? ROUTE_NOT_LISTED : !closed ? ROUTE_ALL_OPEN : ROUTE_SATURATED;
	return -1;
}

int route_retry_after(struct backend *const *bs, int n, const struct route_query *q,
		      const struct breaker_config *bc)
{
	int64_t best = -1;
	for (int i = 0; i < n; i++) {
		const struct backend *b = bs[i];
		if (!matches(b, q) || b->br.state != BREAKER_OPEN)
			continue;
		int64_t left = b->br.opened_us + (int64_t)bc->cooldown_ms * 1000 - q->now_us;
		if (best < 0 || left < best)
			best = left;
	}
	int s = best < 0 ? 1 : (int)((best + 999999) / 1000000);
	return s < 1 ? 1 : s;
}
