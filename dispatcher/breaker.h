/* A per-endpoint circuit breaker: closed -> open after K consecutive failures or a
 * failure rate over a sliding window; open -> half-open after a cooldown, letting a
 * few probes through; half-open -> closed on a success, back to open on a failure.
 * Pure state over a caller-given clock, so it is tested without timers. */
#ifndef GW_DISPATCHER_BREAKER_H
#define GW_DISPATCHER_BREAKER_H

#include <stdint.h>

enum breaker_state { BREAKER_CLOSED = 0, BREAKER_OPEN = 1, BREAKER_HALF_OPEN = 2 };

/* Settings; shared by every breaker of the dispatcher (GW_DISPATCHER_CB_*). */
struct breaker_config {
	int consecutive;  /* failures in a row that open the circuit */
	int rate_pct;     /* failure percentage over the window that opens it */
	int rate_min;     /* outcomes needed in the window before the rate counts */
	int window_ms;    /* the rate window */
	int cooldown_ms;  /* open -> half-open */
	int halfopen_max; /* probes let through at once while half-open */
};

#define BREAKER_BUCKETS 10

/* Plain value type, embedded in its endpoint. */
struct breaker {
	enum breaker_state state;
	int consecutive;
	int probes; /* half-open: probes in flight */
	int64_t opened_us;
	int64_t changed_us;
	/* The window as BREAKER_BUCKETS buckets of window_ms / BREAKER_BUCKETS each. */
	int64_t bucket_start_us[BREAKER_BUCKETS];
	int ok[BREAKER_BUCKETS], bad[BREAKER_BUCKETS];
	const char *why; /* static string: the reason of the last change */
	unsigned long opens;
};

void breaker_init(struct breaker *b, int64_t now_us);

/* Moves open -> half-open when the cooldown is over. Returns 1 when the state
 * changed (the caller logs, meters and audits it). */
int breaker_tick(struct breaker *b, const struct breaker_config *c, int64_t now_us);

/* May a request be sent now? Closed: yes. Half-open: while fewer than halfopen_max
 * probes are in flight (a yes takes a probe slot). Open: no. */
int breaker_allow(struct breaker *b, const struct breaker_config *c, int64_t now_us);

/* Outcome of a request or health check. probe: it held a half-open probe slot.
 * Return 1 when the state changed. */
int breaker_success(struct breaker *b, const struct breaker_config *c, int64_t now_us, int probe);
int breaker_failure(struct breaker *b, const struct breaker_config *c, int64_t now_us, int probe);

/* Failure percentage and outcomes in the current window. */
void breaker_window(const struct breaker *b, const struct breaker_config *c, int64_t now_us,
		    int *ok, int *bad);

const char *breaker_state_name(enum breaker_state s);

#endif
