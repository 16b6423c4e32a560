/* backup-agent: retention keeps the newest KEEP_LAST good snapshots and every one
 * younger than KEEP_DAYS; broken ones never count towards KEEP_LAST; ids give the age. */
#include "check.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "retention.h"

static void entry(struct store_entry *e, time_t now, double days_ago, enum store_status st)
{
	time_t t = now - (time_t)(days_ago * 86400);
	struct tm tm;
	gmtime_r(&t, &tm);
	memset(e, 0, sizeof *e);
	char buf[64];
	snprintf(buf, sizeof buf, "%04d%02d%02dT%02d%02d%02dZ-00000%d", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)days_ago % 10);
	CHECK(strlen(buf) < sizeof e->id);
	memcpy(e->id, buf, sizeof e->id - 1);
	e->status = st;
}

int main(void)
{
	time_t now = 1795440000, t;
	CHECK_EQ_INT(0, retention_id_time("20261123T142501Z-a1b2c3", &t));
	CHECK_EQ_INT(1795443901, (long long)t);
	CHECK_EQ_INT(-1, retention_id_time("20261123T142501Z", &t));

	/* Newest first, as store_list gives them. */
	struct store_entry v[7];
	entry(&v[0], now, 0.1, STORE_OK);
	entry(&v[1], now, 1, STORE_OK);
	entry(&v[2], now, 2, STORE_OK);
	entry(&v[3], now, 4, STORE_CORRUPT);
	entry(&v[4], now, 5, STORE_OK);
	entry(&v[5], now, 10, STORE_OK);
	entry(&v[6], now, 20, STORE_NO_MANIFEST);
	unsigned char keep[7];

	/* 4 newest good: 0, 1, 2, 4 (3 is broken); younger than 3 days: 0, 1, 2. */
	CHECK_EQ_INT(3, (int)retention_plan(v, 7, 4, 3, now, keep));
	unsigned char want1[7] = {1, 1, 1, 0, 1, 0, 0};
	CHECK(memcmp(keep, want1, 7) == 0);

	/* Age alone keeps the broken one while it is young. */
	CHECK_EQ_INT(2, (int)retention_plan(v, 7, 1, 7, now, keep));
	unsigned char want2[7] = {1, 1, 1, 1, 1, 0, 0};
	CHECK(memcmp(keep, want2, 7) == 0);

	/* KEEP_DAYS=0: only the count; the newest good one always stays. */
	CHECK_EQ_INT(6, (int)retention_plan(v, 7, 1, 0, now, keep));
	CHECK_EQ_INT(1, keep[0]);

	/* Nothing good at all: the count keeps none, age still applies. */
	struct store_entry bad[2];
	entry(&bad[0], now, 1, STORE_CORRUPT);
	entry(&bad[1], now, 9, STORE_MISSING);
	CHECK_EQ_INT(1, (int)retention_plan(bad, 2, 5, 2, now, keep));
	CHECK_EQ_INT(1, keep[0]);
	CHECK_EQ_INT(0, keep[1]);
	CHECK_EQ_INT(0, (int)retention_plan(v, 0, 1, 1, now, keep));
	return check_done();
}
