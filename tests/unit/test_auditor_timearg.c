/* Unit tests of `auditor query`'s time arguments (timearg.c): RFC 3339 and ages. */
#include "check.h"
#include "timearg.h"

#include <stdint.h>

#define NOW 1714564800000000LL /* 2024-05-01T12:00:00Z */

static int64_t parse(const char *s, int *rc)
{
	int64_t v = -42;
	*rc = timearg_parse(s, NOW, &v);
	return v;
}

static void ok(const char *s, int64_t want)
{
	int rc;
	int64_t v = parse(s, &rc);
	CHECK_EQ_INT(rc, 0);
	CHECK_EQ_INT(v, want);
	if (rc || v != want)
		printf("  for \"%s\"\n", s);
}

static void bad(const char *s)
{
	int rc;
	parse(s, &rc);
	CHECK_EQ_INT(rc, -1);
	if (rc != -1)
		printf("  accepted \"%s\"\n", s);
}

int main(void)
{
	/* Ages count back from now. */
	ok("30s", NOW - 30 * 1000000LL);
	ok("15m", NOW - 15 * 60 * 1000000LL);
	ok("24h", NOW - 24 * 3600 * 1000000LL);
	ok("7d", NOW - 7 * 86400 * 1000000LL);
	ok("2w", NOW - 14 * 86400 * 1000000LL);
	ok("0m", NOW);
	bad("");
	bad("m");
	bad("15");
	bad("15x");
	bad("-5m");
	bad("1.5h");
	bad("15 m");
	bad("15mm");
	bad("99999999999w");

	/* RFC 3339. */
	ok("2024-05-01T12:00:00Z", NOW);
	ok("2024-05-01t12:00:00z", NOW);
	ok("2024-05-01 12:00:00Z", NOW);
	ok("2024-05-01T12:00:00.000001Z", NOW + 1);
	ok("2024-05-01T12:00:00.5Z", NOW + 500000);
	ok("2024-05-01T12:00:00.123456789Z", NOW + 123456);
	ok("2024-05-01T14:00:00+02:00", NOW);
	ok("2024-05-01T07:30:00-04:30", NOW);
	ok("2024-05-01", NOW - 12 * 3600 * 1000000LL);
	ok("1970-01-01T00:00:00Z", 0);
	ok("1969-12-31T23:59:59Z", -1000000LL);
	ok("2024-02-29T00:00:00Z", 1709164800000000LL);
	ok("2000-03-01", 951868800000000LL);
	bad("2023-02-29");
	bad("1900-02-29");
	bad("2024-13-01");
	bad("2024-00-10");
	bad("2024-04-31");
	bad("2024-05-01T24:00:00Z");
	bad("2024-05-01T12:60:00Z");
	bad("2024-05-01T12:00:00");             /* no offset */
	bad("2024-05-01T12:00Z");               /* no seconds */
	bad("2024-05-01T12:00:00.Z");           /* empty fraction */
	bad("2024-05-01T12:00:00.1234567890Z"); /* more than nanoseconds */
	bad("2024-05-01T12:00:00Zjunk");
	bad("2024-05-01T12:00:00+2:00");
	bad("2024-05-01T12:00:00+24:00");
	bad("2024-5-01");
	bad("0000-01-01");
	bad("2024-05-01X");
	return check_done();
}
