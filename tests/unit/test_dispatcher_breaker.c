/* Circuit breaker: consecutive failures, failure rate over the window, cooldown to
 * half-open, probe limit, recovery and relapse. */
#include "breaker.h"
#include "check.h"

static const struct breaker_config cfg = {.consecutive = 3,
					  .rate_pct = 50,
					  .rate_min = 10,
					  .window_ms = 1000,
					  .cooldown_ms = 500,
					  .halfopen_max = 1};

#define MS(x) ((int64_t)(x)*1000)

static void test_consecutive(void)
{
	struct breaker b;
	int64_t t = MS(1000000);
	breaker_init(&b, t);
	CHECK_EQ_INT(BREAKER_CLOSED, b.state);
	CHECK_EQ_INT(0, breaker_failure(&b, &cfg, t, 0));
	CHECK_EQ_INT(0, breaker_failure(&b, &cfg, t, 0));
	/* A success in between resets the run. */
	CHECK_EQ_INT(0, breaker_success(&b, &cfg, t, 0));
	CHECK_EQ_INT(0, breaker_failure(&b, &cfg, t, 0));
	CHECK_EQ_INT(0, breaker_failure(&b, &cfg, t, 0));
	CHECK_EQ_INT(1, breaker_failure(&b, &cfg, t, 0));
	CHECK_EQ_INT(BREAKER_OPEN, b.state);
	CHECK_EQ_STR("consecutive failures", b.why);
	CHECK_EQ_INT(0, breaker_allow(&b, &cfg, t + MS(100)));
	/* Cooldown over: half-open, one probe at a time. */
	CHECK_EQ_INT(1, breaker_allow(&b, &cfg, t + MS(500)));
	CHECK_EQ_INT(BREAKER_HALF_OPEN, b.state);
	CHECK_EQ_INT(0, breaker_allow(&b, &cfg, t + MS(501)));
	/* The probe fails: open again, a new cooldown. */
	CHECK_EQ_INT(1, breaker_failure(&b, &cfg, t + MS(600), 1));
	CHECK_EQ_INT(BREAKER_OPEN, b.state);
	CHECK_EQ_INT(0, breaker_tick(&b, &cfg, t + MS(1000)));
	CHECK_EQ_INT(1, breaker_tick(&b, &cfg, t + MS(1100)));
	CHECK_EQ_INT(BREAKER_HALF_OPEN, b.state);
	CHECK_EQ_INT(1, breaker_allow(&b, &cfg, t + MS(1100)));
	CHECK_EQ_INT(1, breaker_success(&b, &cfg, t + MS(1200), 1));
	CHECK_EQ_INT(BREAKER_CLOSED, b.state);
	CHECK_EQ_INT(0, b.probes);
	CHECK_EQ_INT(2, (int)b.opens);
}

static void test_rate(void)
{
	struct breaker b;
	int64_t t = MS(5000000);
	breaker_init(&b, t);
	/* Alternating ok/bad never makes 3 in a row, but is 50% failures. */
	int changed = 0;
	for (int i = 0; i < 9; i++) {
		breaker_success(&b, &cfg, t + MS(i), 0);
		changed |= breaker_failure(&b, &cfg, t + MS(i), 0);
	}
	CHECK_EQ_INT(1, changed);
	CHECK_EQ_INT(BREAKER_OPEN, b.state);
	CHECK_EQ_STR("failure rate", b.why);

	/* Old outcomes leave the window: a fresh window does not open on one failure. */
	breaker_init(&b, t);
	for (int i = 0; i < 4; i++)
		breaker_failure(&b, &cfg, t, 0), breaker_success(&b, &cfg, t, 0);
	int ok, bad;
	breaker_window(&b, &cfg, t, &ok, &bad);
	CHECK_EQ_INT(4, ok);
	CHECK_EQ_INT(4, bad);
	CHECK_EQ_INT(BREAKER_CLOSED, b.state); /* 8 outcomes: below rate_min */
	breaker_window(&b, &cfg, t + MS(2000), &ok, &bad);
	CHECK_EQ_INT(0, ok + bad);
	CHECK_EQ_INT(0, breaker_failure(&b, &cfg, t + MS(2000), 0));
	CHECK_EQ_INT(BREAKER_CLOSED, b.state);
	/* Below rate_min nothing opens even at 100% failures (consecutive aside). */
	CHECK_EQ_INT(0, breaker_failure(&b, &cfg, t + MS(2000), 0));
}

int main(void)
{
	test_consecutive();
	test_rate();
	CHECK_EQ_STR("half_open", breaker_state_name(BREAKER_HALF_OPEN));
	return check_done();
}
