/* authz unit tests: day and month token quotas. The UTC period arithmetic (midnight,
 * month ends of 28/29/30/31 days, leap and century years, year end), and the group
 * quotas shared by copies: this copy's count plus the totals synced from
 * authz.group_usage minus its own committed share, stale totals after midnight, a failed
 * sync, which groups a usage message is charged to, and policy reloads. */
#include "check.h"
#include "limiter.h"
#include "policy.h"
#include "usage.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static struct policy *parse(const char *s)
{
	char err[256];
	struct policy *p = policy_parse(s, strlen(s), err, sizeof err);
	if (!p)
		printf("# parse error: %s\n", err);
	return p;
}

static struct identity ident(const char *principal, const char *groups)
{
	struct identity id;
	memset(&id, 0, sizeof id);
	snprintf(id.principal, sizeof id.principal, "%s", principal);
	snprintf(id.groups, sizeof id.groups, "%s", groups);
	return id;
}

static const char *rid(int i)
{
	static char b[33];
	snprintf(b, sizeof b, "%032x", i);
	return b;
}

/* Unix ms of a UTC date and time. */
static int64_t utc(int y, int mon, int d, int h, int mi, int s)
{
	struct tm tm;
	memset(&tm, 0, sizeof tm);
	tm.tm_year = y - 1900;
	tm.tm_mon = mon - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = s;
	return (int64_t)timegm(&tm) * 1000;
}

#define DAY_S 86400LL

static void test_periods(void)
{
	/* midnight */
	CHECK_EQ_INT(limits_to_midnight_s(utc(2024, 3, 10, 0, 0, 0)), DAY_S);
	CHECK_EQ_INT(limits_to_midnight_s(utc(2024, 3, 10, 23, 59, 59)), 1);
	CHECK_EQ_INT(limits_to_midnight_s(utc(2024, 3, 10, 12, 0, 0) + 999), DAY_S / 2);
	/* month lengths, from the first at 00:00 */
	CHECK_EQ_INT(limits_to_month_end_s(utc(2023, 1, 1, 0, 0, 0)), 31 * DAY_S);
	CHECK_EQ_INT(limits_to_month_end_s(utc(2023, 2, 1, 0, 0, 0)), 28 * DAY_S);
	CHECK_EQ_INT(limits_to_month_end_s(utc(2024, 2, 1, 0, 0, 0)), 29 * DAY_S); /* leap */
	CHECK_EQ_INT(limits_to_month_end_s(utc(2100, 2, 1, 0, 0, 0)), 28 * DAY_S); /* century */
	CHECK_EQ_INT(limits_to_month_end_s(utc(2000, 2, 1, 0, 0, 0)), 29 * DAY_S); /* 400 */
	CHECK_EQ_INT(limits_to_month_end_s(utc(2024, 4, 1, 0, 0, 0)), 30 * DAY_S);
	CHECK_EQ_INT(limits_to_month_end_s(utc(2024, 12, 1, 0, 0, 0)), 31 * DAY_S);
	/* the last second of a month, and across the year end */
	CHECK_EQ_INT(limits_to_month_end_s(utc(2024, 1, 31, 23, 59, 59)), 1);
	CHECK_EQ_INT(limits_to_month_end_s(utc(2024, 12, 31, 23, 59, 59)), 1);
	CHECK_EQ_INT(limits_to_month_end_s(utc(2024, 12, 15, 12, 0, 0)), 16 * DAY_S + DAY_S / 2);
	CHECK_EQ_INT(limits_to_month_end_s(utc(2023, 2, 28, 0, 0, 0)), DAY_S);
	CHECK_EQ_INT(limits_to_month_end_s(utc(2024, 2, 28, 0, 0, 0)), 2 * DAY_S);
	/* UTC days and their names */
	CHECK_EQ_INT(usage_day(0), 0);
	CHECK_EQ_INT(usage_day(86399999), 0);
	CHECK_EQ_INT(usage_day(86400000), 1);
	CHECK_EQ_INT(usage_day(-1), -1);
	char d[16];
	usage_day_str(usage_day(utc(2024, 2, 29, 23, 59, 59)), d, sizeof d);
	CHECK_EQ_STR(d, "2024-02-29");
	usage_day_str(usage_day(utc(2024, 3, 1, 0, 0, 0)), d, sizeof d);
	CHECK_EQ_STR(d, "2024-03-01");
}

/* Charges a usage message the way serve.c does: the principal's quota groups first, then
 * the limiter (which frees the slot). */
static void charge(struct limiter *l, struct usage_table *gu, const char *req, const char *who,
		   int64_t tokens, int64_t now)
{
	const char *g[LIMITS_MAX_GROUPS];
	int n = limiter_quota_groups_of(l, req, who, g, LIMITS_MAX_GROUPS);
	for (int i = 0; i < n; i++)
		usage_add(gu, g[i], usage_day(now), tokens);
	limiter_usage(l, req, who, tokens, now);
}

static void test_group_month(void)
{
	struct policy *p = parse("{\"limits\":{\"groups\":{\"research\":{\"tokens_per_month\":"
				 "1000},\"other\":{\"requests_per_minute\":100}}}}");
	struct limiter l;
	struct usage_table gu;
	CHECK_EQ_INT(limiter_init(&l, 100, 1000), 0);
	CHECK_EQ_INT(usage_init(&gu, 100), 0);
	l.group_usage = &gu;
	/* only groups with a day or month quota are tracked */
	CHECK_EQ_INT(limiter_quota_groups(&l, p), 1);
	int64_t now = utc(2024, 2, 10, 12, 0, 0);
	struct identity a = ident("alice", "research,other,research");
	struct identity b = ident("bob", "research");
	struct lim_refusal r;
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(1), now + 60000, now, 0, &r), 0);
	/* charged once to research (listed twice), not to other (no quota) */
	const char *g[LIMITS_MAX_GROUPS];
	CHECK_EQ_INT(limiter_quota_groups_of(&l, rid(1), "alice", g, LIMITS_MAX_GROUPS), 1);
	CHECK_EQ_STR(g[0], "research");
	charge(&l, &gu, rid(1), "alice", 600, now);
	CHECK_EQ_INT(usage_tokens(&gu, "research", usage_day(now)), 600);
	CHECK_EQ_INT(limiter_admit(&l, p, &b, rid(2), now + 60000, now, 0, &r), 0);
	charge(&l, &gu, rid(2), "bob", 399, now);
	/* 999 < 1000: still allowed */
	CHECK_EQ_INT(limiter_admit(&l, p, &b, rid(3), now + 60000, now, 0, &r), 0);
	/* a usage without a slot (no request id) is charged through the principal's groups */
	charge(&l, &gu, NULL, "bob", 1, now);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(4), now + 60000, now, 0, &r), 1);
	CHECK_EQ_STR(r.limit, "tokens_per_month");
	CHECK_EQ_STR(r.scope, "group:research");
	CHECK_EQ_INT(r.value, 1000);
	CHECK_EQ_INT(r.max, 1000);
	CHECK_EQ_INT(r.retry_after_s, limits_to_month_end_s(now));
	CHECK_EQ_INT(r.retry_after_s, 19 * DAY_S + DAY_S / 2); /* to 2024-03-01T00:00Z */
	/* a principal outside the group is not affected */
	struct identity c = ident("carol", "other");
	CHECK_EQ_INT(limiter_admit(&l, p, &c, rid(5), now + 60000, now, 0, &r), 0);
	usage_free(&gu);
	limiter_free(&l);
	policy_free(p);
}

static void test_group_sync(void)
{
	struct policy *p = parse("{\"limits\":{\"groups\":{\"research\":{\"tokens_per_day\":"
				 "1000,\"tokens_per_month\":5000}}}}");
	struct limiter l;
	struct usage_table gu;
	limiter_init(&l, 100, 1000);
	usage_init(&gu, 100);
	l.group_usage = &gu;
	limiter_quota_groups(&l, p);
	int64_t now = utc(2024, 5, 20, 8, 0, 0);
	int32_t today = usage_day(now);
	struct identity a = ident("alice", "research");
	struct lim_refusal r;
	/* this copy counted 300 and committed them */
	usage_add(&gu, "research", today, 300);
	char *json = NULL;
	size_t rows = 0;
	CHECK_EQ_INT(usage_flush_begin(&gu, &json, &rows), 1);
	free(json);
	usage_flush_end(&gu, 1);
	/* sync: PostgreSQL has 800 today (300 of them ours) and 4800 this month */
	CHECK_EQ_INT(limiter_group_sync_begin(&l, today, &json), 1);
	CHECK_EQ_STR(json, "[\"research\"]");
	free(json);
	limiter_group_synced(&l, "research", 800, 4800);
	limiter_group_synced(&l, "unknown", 5, 5); /* not a quota group: ignored */
	limiter_group_sync_end(&l, 1, today);
	/* day: 300 + (800 - 300) = 800 < 1000; month 300 + 4500 = 4800 < 5000 */
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(1), now + 60000, now, 0, &r), 0);
	/* 150 more here: month 4950, day 950 */
	charge(&l, &gu, rid(1), "alice", 150, now);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(2), now + 60000, now, 0, &r), 0);
	/* another copy adds 60 (seen at the next sync): day 1010 -> refused until midnight */
	CHECK_EQ_INT(limiter_group_sync_begin(&l, today, &json), 1);
	free(json);
	limiter_group_synced(&l, "research", 860, 4860);
	limiter_group_sync_end(&l, 1, today);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(3), now + 60000, now, 0, &r), 1);
	CHECK_EQ_STR(r.limit, "tokens_per_day");
	CHECK_EQ_INT(r.value, 1010);
	CHECK_EQ_INT(r.retry_after_s, 16 * 3600);
	/* a failed sync keeps the totals in force */
	CHECK_EQ_INT(limiter_group_sync_begin(&l, today, &json), 1);
	free(json);
	limiter_group_sync_end(&l, 0, today);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(4), now + 60000, now, 0, &r), 1);
	/* next day: the old totals are stale (this copy's count starts at 0) until a sync */
	int64_t tomorrow = now + DAY_S * 1000;
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(5), tomorrow + 60000, tomorrow, 0, &r), 0);
	/* the month carries over: 4950 (earlier days) + 60 */
	CHECK_EQ_INT(limiter_group_sync_begin(&l, today + 1, &json), 1);
	free(json);
	limiter_group_synced(&l, "research", 0, 5010);
	limiter_group_sync_end(&l, 1, today + 1);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(6), tomorrow + 60000, tomorrow, 0, &r), 1);
	CHECK_EQ_STR(r.limit, "tokens_per_month");
	CHECK_EQ_INT(r.value, 5010);
	/* a group with no row in the answer has no usage: day and month 0 + own count */
	CHECK_EQ_INT(limiter_group_sync_begin(&l, today + 1, &json), 1);
	free(json);
	limiter_group_sync_end(&l, 1, today + 1);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(7), tomorrow + 60000, tomorrow, 0, &r), 0);

	/* a reload that drops the quota forgets the group; one that adds a group keeps the
	 * totals of the groups still there */
	struct policy *p2 = parse("{\"limits\":{\"groups\":{\"research\":{\"tokens_per_day\":"
				  "100},\"hpc\":{\"tokens_per_month\":10}}}}");
	CHECK_EQ_INT(limiter_group_sync_begin(&l, today + 1, &json), 1);
	free(json);
	limiter_group_synced(&l, "research", 90, 90);
	limiter_group_sync_end(&l, 1, today + 1);
	CHECK_EQ_INT(limiter_quota_groups(&l, p2), 2);
	/* a group added while a sync runs waits for the next one */
	limiter_group_synced(&l, "hpc", 50, 50);
	struct identity h = ident("henry", "hpc");
	CHECK_EQ_INT(limiter_admit(&l, p2, &h, rid(8), tomorrow + 60000, tomorrow, 0, &r), 0);
	CHECK_EQ_INT(limiter_admit(&l, p2, &a, rid(9), tomorrow + 60000, tomorrow, 0, &r), 0);
	charge(&l, &gu, rid(9), "alice", 10, tomorrow);
	CHECK_EQ_INT(limiter_admit(&l, p2, &a, rid(10), tomorrow + 60000, tomorrow, 0, &r), 1);
	CHECK_EQ_STR(r.scope, "group:research");
	CHECK_EQ_INT(r.value, 100);
	struct policy *p3 = parse("{}");
	CHECK_EQ_INT(limiter_quota_groups(&l, p3), 0);
	CHECK_EQ_INT(limiter_group_sync_begin(&l, today + 1, &json), 0);
	CHECK(json == NULL);
	CHECK_EQ_INT(limiter_quota_groups_of(&l, NULL, "alice", (const char *[4]){0}, 4), 0);
	usage_free(&gu);
	limiter_free(&l);
	policy_free(p);
	policy_free(p2);
	policy_free(p3);
}

int main(void)
{
	test_periods();
	test_group_month();
	test_group_sync();
	return check_done();
}
