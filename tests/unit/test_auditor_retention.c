/* Unit test of the retention arithmetic: UTC month starts, which months are wholly past
 * retention, and the partition names retention accepts. */
#include "check.h"
#include "retention.h"

#include <stdint.h>
#include <time.h>

#define US  1000000LL
#define DAY (86400 * US)

/* timegm of y-m-d 00:00:00 UTC, in microseconds. */
static int64_t at(int y, int m, int d)
{
	struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
	return (int64_t)timegm(&tm) * US;
}

int main(void)
{
	/* Month starts against the C library, over leap years and the turn of centuries. */
	CHECK(retention_month_start_us(1970, 1) == 0);
	CHECK(retention_month_start_us(2026, 11) == at(2026, 11, 1));
	CHECK(retention_month_start_us(2024, 3) == at(2024, 3, 1)); /* after a 29-day February */
	CHECK(retention_month_start_us(2024, 3) - retention_month_start_us(2024, 2) == 29 * DAY);
	CHECK(retention_month_start_us(2023, 3) - retention_month_start_us(2023, 2) == 28 * DAY);
	CHECK(retention_month_start_us(2100, 3) - retention_month_start_us(2100, 2) == 28 * DAY);
	CHECK(retention_month_start_us(2000, 3) - retention_month_start_us(2000, 2) == 29 * DAY);
	int bad = 0;
	for (int y = 1970; y <= 2400; y++)
		for (int m = 1; m <= 12; m++)
			bad += retention_month_start_us(y, m) != at(y, m, 1);
	CHECK_EQ_INT(0, bad);
	/* Months roll over years both ways. */
	CHECK(retention_month_start_us(2026, 13) == at(2027, 1, 1));
	CHECK(retention_month_start_us(2026, 0) == at(2025, 12, 1));
	CHECK(retention_month_start_us(2026, -11) == at(2025, 1, 1));
	CHECK(retention_month_start_us(2026, -12) == at(2024, 12, 1));
	CHECK(retention_month_start_us(2026, 25) == at(2028, 1, 1));

	/* A month goes only when its last microsecond is older than now - days. */
	int64_t now = at(2026, 11, 23) + 12 * 3600 * US;
	CHECK_EQ_INT(0, retention_month_expired(2026, 1, now, 0));   /* 0 = keep forever */
	CHECK_EQ_INT(1, retention_month_expired(2026, 8, now, 30));  /* ends Sep 1 < Oct 24 */
	CHECK_EQ_INT(1, retention_month_expired(2026, 9, now, 30));  /* ends Oct 1 < Oct 24 */
	CHECK_EQ_INT(0, retention_month_expired(2026, 10, now, 30)); /* Oct 24..31 are young */
	CHECK_EQ_INT(0, retention_month_expired(2026, 11, now, 1));
	CHECK_EQ_INT(1, retention_month_expired(2026, 10, now, 1));
	/* Exactly at the boundary: the month's end equal to the cutoff is past retention. */
	int64_t cutoff_at_nov1 = at(2026, 11, 1) + 10 * DAY;
	CHECK_EQ_INT(1, retention_month_expired(2026, 10, cutoff_at_nov1, 10));
	CHECK_EQ_INT(0, retention_month_expired(2026, 10, cutoff_at_nov1 - 1, 10));
	/* A year of retention on Mar 1 of a leap year keeps Feb and Mar of the year before. */
	int64_t mar1 = at(2024, 3, 1);
	CHECK_EQ_INT(1, retention_month_expired(2023, 2, mar1, 366)); /* ends Mar 1 2023 */
	CHECK_EQ_INT(0, retention_month_expired(2023, 3, mar1, 366));
	CHECK_EQ_INT(0, retention_month_expired(2023, 2, mar1, 367));
	/* A huge retention never wraps into "expired". */
	CHECK_EQ_INT(0, retention_month_expired(1970, 1, now, 100000));

	/* Partition names. */
	int y = 0, m = 0;
	CHECK_EQ_INT(0, retention_parse_partition("audit_events_2026_11", &y, &m));
	CHECK_EQ_INT(2026, y);
	CHECK_EQ_INT(11, m);
	CHECK_EQ_INT(0, retention_parse_partition("audit_events_1970_01", &y, &m));
	CHECK_EQ_INT(1, m);
	CHECK_EQ_INT(-1, retention_parse_partition("audit_events_2026_13", &y, &m));
	CHECK_EQ_INT(-1, retention_parse_partition("audit_events_2026_00", &y, &m));
	CHECK_EQ_INT(-1, retention_parse_partition("audit_events_2026_1", &y, &m));
	CHECK_EQ_INT(-1, retention_parse_partition("audit_events_2026_111", &y, &m));
	CHECK_EQ_INT(-1, retention_parse_partition("audit_events_2026-11", &y, &m));
	CHECK_EQ_INT(-1, retention_parse_partition("audit_events_20x6_11", &y, &m));
	CHECK_EQ_INT(-1, retention_parse_partition("audit_events_default", &y, &m));
	CHECK_EQ_INT(-1, retention_parse_partition("checkpoints", &y, &m));
	CHECK_EQ_INT(-1, retention_parse_partition("", &y, &m));
	return check_done();
}
