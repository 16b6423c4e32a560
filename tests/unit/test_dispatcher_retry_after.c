/* Retry-After from an endpoint: both forms RFC 9110 allows, the cap, and garbage
 * ignored rather than read as "retry now". */
#include "check.h"
#include "upstream.h"

int main(void)
{
	/* 2026-11-23T12:00:00Z */
	time_t now = 1795435200;
	CHECK_EQ_INT(upstream_retry_after("0", now), 0);
	CHECK_EQ_INT(upstream_retry_after("7", now), 7);
	CHECK_EQ_INT(upstream_retry_after(" 12 ", now), 12);
	CHECK_EQ_INT(upstream_retry_after("86400", now), RETRY_AFTER_MAX_S);
	CHECK_EQ_INT(upstream_retry_after("99999999999999999999", now), -1);
	CHECK_EQ_INT(upstream_retry_after("-5", now), -1);
	CHECK_EQ_INT(upstream_retry_after("+5", now), -1);
	CHECK_EQ_INT(upstream_retry_after("5s", now), -1);
	CHECK_EQ_INT(upstream_retry_after("", now), -1);
	CHECK_EQ_INT(upstream_retry_after("soon", now), -1);
	/* IMF-fixdate: 30 s ahead, in the past, far ahead, and malformed variants. */
	CHECK_EQ_INT(upstream_retry_after("Mon, 23 Nov 2026 12:00:30 GMT", now), 30);
	CHECK_EQ_INT(upstream_retry_after("Mon, 23 Nov 2026 11:59:00 GMT", now), 0);
	CHECK_EQ_INT(upstream_retry_after("Tue, 24 Nov 2026 12:00:00 GMT", now), RETRY_AFTER_MAX_S);
	CHECK_EQ_INT(upstream_retry_after("Mon, 23 Nov 2026 12:00:30 PST", now), -1);
	CHECK_EQ_INT(upstream_retry_after("Mon, 23 Nov 2026 12:00:30 GMT trailing", now), -1);
	CHECK_EQ_INT(upstream_retry_after("Mon, 23 Nov 2026", now), -1);
	CHECK_EQ_INT(upstream_retry_after("Mon, 31 Foo 2026 12:00:30 GMT", now), -1);
	return check_done();
}
