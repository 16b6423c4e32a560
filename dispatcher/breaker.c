/* Circuit breaker state machine; the window is a ring of time buckets so memory and
 * work per outcome are constant. */
#include "breaker.h"

#include <string.h>

void breaker_init(struct breaker *b, int64_t now_us)
{
	memset(b, 0, sizeof *b);
	b->state = BREAKER_CLOSED;
	b->changed_us = now_us;
	b->why = "start";
}

const char *breaker_state_name(enum breaker_state s)
{
	switch (s) {
	case BREAKER_CLOSED: return "closed";
	case BREAKER_OPEN: return "open";
	case BREAKER_HALF_OPEN: return "half_open";
	}
	return "unknown";
}

static int64_t bucket_us(const struct breaker_config *c)
{
	int64_t w = (int64_t)c->window_ms * 1000 / BREAKER_BUCKETS;
	return w > 0 ? w : 1;
}

/* The bucket for now, cleared when its slot last held an older period. */
static int bucket(struct breaker *b, const struct breaker_config *c, int64_t now_us)
{
	int64_t w = bucket_us(c), start = now_us - now_us % w;
	int i = (int)((now_us / w) % BREAKER_BUCKETS);
	if (b->bucket_start_us[i] != start) {
		b->bucket_start_us[i] = start;
		b->ok[i] = b->bad[i] = 0;
	}
	return i;
}

void breaker_window(const struct breaker *b, const struct breaker_config *c, int64_t now_us,
		    int *ok, int *bad)
{
	int64_t w = bucket_us(c), oldest = now_us - now_us % w - w * (BREAKER_BUCKETS - 1);
	*ok = *bad = 0;
	for (int i = 0; i < BREAKER_BUCKETS; i++)
		if (b->bucket_start_us[i] >= oldest) {
			*ok += b->ok[i];
			*bad += b->bad[i];
		}
}

static void window_clear(struct breaker *b)
{
	memset(b->bucket_start_us, 0, sizeof b->bucket_start_us);
	memset(b->ok, 0, sizeof b->ok);
	memset(b->bad, 0, sizeof b->bad);
}

static int set_state(struct breaker *b, enum breaker_state s, int64_t now_us, const char *why)
{
	if (b->state == s)
		return 0;
	b->state = s;
	b->changed_us = now_us;
	b->why = why;
	b->probes = 0;
	if (s == BREAKER_OPEN) {
		b->opened_us = now_us;
		b->opens++;
	}
	if (s == BREAKER_CLOSED) {
		b->consecutive = 0;
		window_clear(b);
	}
	return 1;
}

int breaker_tick(struct breaker *b, const struct breaker_config *c, int64_t now_us)
{
	if (b->state == BREAKER_OPEN && now_us - b->opened_us >= (int64_t)c->cooldown_ms * 1000)
		return set_state(b, BREAKER_HALF_OPEN, now_us, "cooldown over");
	return 0;
}

int breaker_allow(struct breaker *b, const struct breaker_config *c, int64_t now_us)
{
	breaker_tick(b, c, now_us);
	switch (b->state) {
	case BREAKER_CLOSED: return 1;
	case BREAKER_OPEN: return 0;
	case BREAKER_HALF_OPEN:
		if (b->probes >= c->halfopen_max)
			return 0;
		b->probes++;
		return 1;
	}
	return 0;
}

int breaker_success(struct breaker *b, const struct breaker_config *c, int64_t now_us, int probe)
{
	b->consecutive = 0;
	if (b->state == BREAKER_HALF_OPEN) {
		if (probe && b->probes > 0)
			b->probes--;
		return set_state(b, BREAKER_CLOSED, now_us, "probe succeeded");
	}
	if (b->state == BREAKER_CLOSED)
		b->ok[bucket(b, c, now_us)]++;
	return 0;
}

int breaker_failure(struct breaker *b, const struct breaker_config *c, int64_t now_us, int probe)
{
	if (b->state == BREAKER_HALF_OPEN) {
		if (probe && b->probes > 0)
			b->probes--;
		return set_state(b, BREAKER_OPEN, now_us, "probe failed");
	}
	if (b->state == BREAKER_OPEN)
		return 0;
	b->consecutive++;
	b->bad[bucket(b, c, now_us)]++;
	if (b->consecutive >= c->consecutive)
		return set_state(b, BREAKER_OPEN, now_us, "consecutive failures");
	int ok, bad;
	breaker_window(b, c, now_us, &ok, &bad);
	if (ok + bad >= c->rate_min && bad * 100 >= c->rate_pct * (ok + bad))
		return set_state(b, BREAKER_OPEN, now_us, "failure rate");
	return 0;
}
