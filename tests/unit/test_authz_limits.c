/* authz unit tests: sliding windows and their retry times, rate, concurrency, token and
 * quota limits per principal and per group, slots freed by usage or by their deadline,
 * quota totals loaded from PostgreSQL combined with what this copy counted. */
#include "check.h"
#include "limiter.h"
#include "policy.h"

#include <stdio.h>
#include <string.h>

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

#define T0 (1700000000000LL) /* 2023-11-14T22:13:20Z */

static void test_window(void)
{
	struct window w;
	memset(&w, 0, sizeof w);
	window_add(&w, 1000, 3);
	window_add(&w, 1010, 2);
	CHECK_EQ_INT(window_sum(&w, 1010), 5);
	CHECK_EQ_INT(window_sum(&w, 1059), 5);
	CHECK_EQ_INT(window_sum(&w, 1060), 2); /* second 1000 left the window */
	CHECK_EQ_INT(window_sum(&w, 1069), 2);
	CHECK_EQ_INT(window_sum(&w, 1070), 0);
	memset(&w, 0, sizeof w);
	window_add(&w, 1000, 3);
	window_add(&w, 1010, 2);
	/* limit 5, one more wanted: the 3 of second 1000 leave at 1060 */
	CHECK_EQ_INT(window_retry_s(&w, 1020, 5, 1), 40);
	CHECK_EQ_INT(window_retry_s(&w, 1020, 10, 1), 0);
	/* limit 2: the 3 leave at 1060 but 2 remain, so 2 + 1 > 2 until 1070 */
	CHECK_EQ_INT(window_retry_s(&w, 1020, 2, 1), 50);
	memset(&w, 0, sizeof w);
	window_add(&w, 5000, 1);
	CHECK_EQ_INT(window_sum(&w, 100000), 0); /* a long gap clears everything */
}

static void test_rpm(void)
{
	struct policy *p = parse("{\"limits\":{\"principals\":{\"alice\":"
				 "{\"requests_per_minute\":60}}}}");
	struct limiter l;
	CHECK_EQ_INT(limiter_init(&l, 100, 1000), 0);
	struct identity a = ident("alice", ""), b = ident("bob", "");
	struct lim_refusal r;
	int allowed = 0, refusedn = 0;
	for (int i = 0; i < 150; i++) {
		int rc = limiter_admit(&l, p, &a, rid(i), T0 + 60000, T0 + i * 10, 0, &r);
		allowed += rc == 0;
		refusedn += rc == 1;
	}
	CHECK_EQ_INT(allowed, 60);
	CHECK_EQ_INT(refusedn, 90);
	CHECK_EQ_STR(r.limit, "requests_per_minute");
	CHECK_EQ_STR(r.scope, "principal");
	CHECK_EQ_INT(r.max, 60);
	CHECK(r.retry_after_s >= 58 && r.retry_after_s <= 60);
	/* another principal is not affected (default: unlimited) */
	CHECK_EQ_INT(limiter_admit(&l, p, &b, rid(1000), T0 + 60000, T0 + 2000, 0, &r), 0);
	/* a minute later, room again */
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(2000), T0 + 200000, T0 + 61000, 0, &r), 0);
	/* the same request id redelivered does not take a second slot */
	size_t slots = l.nslots;
	limiter_admit(&l, p, &b, rid(1000), T0 + 60000, T0 + 61000, 0, &r);
	CHECK_EQ_INT(l.nslots, slots);
	limiter_free(&l);
	policy_free(p);
}

static void test_concurrency(void)
{
	struct policy *p = parse("{\"limits\":{\"default\":{\"concurrent\":2},"
				 "\"groups\":{\"students\":{\"concurrent\":3}}}}");
	struct limiter l;
	limiter_init(&l, 100, 1000);
	struct identity a = ident("alice", "students"), b = ident("bob", "students,x"),
			c = ident("carol", "x");
	struct lim_refusal r;
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(1), T0 + 5000, T0, 0, &r), 0);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(2), T0 + 5000, T0, 0, &r), 0);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(3), T0 + 5000, T0, 0, &r), 1);
	CHECK_EQ_STR(r.limit, "concurrent");
	CHECK_EQ_STR(r.scope, "principal");
	CHECK_EQ_INT(limiter_admit(&l, p, &b, rid(4), T0 + 5000, T0, 0, &r), 0);
	/* the group holds 3 now */
	CHECK_EQ_INT(limiter_admit(&l, p, &b, rid(5), T0 + 5000, T0, 0, &r), 1);
	CHECK_EQ_STR(r.scope, "group:students");
	CHECK_EQ_INT(limiter_admit(&l, p, &c, rid(6), T0 + 5000, T0, 0, &r), 0);
	/* usage frees the slot */
	limiter_usage(&l, rid(1), "alice", 0, T0 + 100);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(7), T0 + 5000, T0 + 100, 0, &r), 0);
	/* a usage for an unknown request changes nothing */
	limiter_usage(&l, rid(99), "alice", 0, T0 + 100);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(8), T0 + 5000, T0 + 100, 0, &r), 1);
	/* deadlines free lost slots */
	CHECK_EQ_INT(l.nslots, 4); /* alice 2, bob 1, carol 1 */
	CHECK_EQ_INT(limiter_tick(&l, T0 + 4999, 0), 0);
	CHECK_EQ_INT(limiter_tick(&l, T0 + 5000, 0), 4);
	CHECK_EQ_INT(l.nslots, 0);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(9), T0 + 9000, T0 + 5001, 0, &r), 0);
	CHECK_EQ_INT(limiter_admit(&l, p, &b, rid(10), T0 + 9000, T0 + 5001, 0, &r), 0);
	limiter_free(&l);
	policy_free(p);
}

static void test_tokens(void)
{
	struct policy *p = parse("{\"limits\":{\"default\":{\"tokens_per_minute\":100},"
				 "\"groups\":{\"g\":{\"tokens_per_minute\":150}}}}");
	struct limiter l;
	limiter_init(&l, 100, 1000);
	struct identity a = ident("alice", "g"), b = ident("bob", "g");
	struct lim_refusal r;
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(1), T0 + 60000, T0, 0, &r), 0);
	limiter_usage(&l, rid(1), "alice", 100, T0 + 1000);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(2), T0 + 60000, T0 + 2000, 0, &r), 1);
	CHECK_EQ_STR(r.limit, "tokens_per_minute");
	CHECK_EQ_INT(r.retry_after_s, 59);
	CHECK_EQ_INT(limiter_admit(&l, p, &b, rid(3), T0 + 60000, T0 + 2000, 0, &r), 0);
	limiter_usage(&l, rid(3), "bob", 60, T0 + 2000);
	/* group g now has 160 > 150 */
	CHECK_EQ_INT(limiter_admit(&l, p, &b, rid(4), T0 + 60000, T0 + 3000, 0, &r), 1);
	CHECK_EQ_STR(r.scope, "group:g");
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(5), T0 + 120000, T0 + 61000, 0, &r), 0);
	limiter_free(&l);
	policy_free(p);
}

static void test_quota(void)
{
	struct policy *p = parse("{\"limits\":{\"default\":{\"tokens_per_day\":1000,"
				 "\"tokens_per_month\":5000}}}");
	struct limiter l;
	limiter_init(&l, 100, 1000);
	struct identity a = ident("alice", "");
	struct lim_refusal r;
	/* first sight: queued for a load; decided from memory meanwhile */
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(1), T0 + 1000, T0, 10, &r), 0);
	struct lim_entry *e = limiter_next_load(&l);
	CHECK(e != NULL && strcmp(e->name, "alice") == 0);
	CHECK(limiter_next_load(&l) == NULL);
	e->quota_day = (int32_t)(T0 / 86400000);
	/* PostgreSQL says 995 today (5 of them committed by this copy), 4990 this month */
	limiter_loaded(&l, e, 1, 995, 4990, 5);
	/* memory counts 10 for today: 995 - 5 + 10 = 1000 >= 1000 */
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(2), T0 + 1000, T0, 10, &r), 1);
	CHECK_EQ_STR(r.limit, "tokens_per_day");
	CHECK_EQ_INT(r.value, 1000);
	CHECK_EQ_INT(r.retry_after_s, limits_to_midnight_s(T0));
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(3), T0 + 1000, T0, 9, &r), 0);
	/* month: 4990 - 5 + 9 = 4994 < 5000; with a small day use the month decides */
	limiter_loaded(&l, e, 1, 0, 4999, 0);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(4), T0 + 1000, T0, 1, &r), 1);
	CHECK_EQ_STR(r.limit, "tokens_per_month");
	CHECK(r.retry_after_s > 0 && r.retry_after_s <= 31 * 86400);
	/* a failed load goes back to unknown and is queued again by the next request */
	limiter_loaded(&l, e, 0, 0, 0, 0);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(5), T0 + 1000, T0, 1, &r), 0);
	CHECK(limiter_next_load(&l) == e);
	/* a new day forgets the loaded base */
	limiter_loaded(&l, e, 1, 999, 999, 0);
	limiter_tick(&l, T0, 1);
	CHECK_EQ_INT(e->quota, QUOTA_UNKNOWN);
	limiter_free(&l);
	policy_free(p);

	CHECK_EQ_INT(limits_to_midnight_s(86400000LL * 10 + 1000), 86399);
	/* 2024-02-29T00:00:00Z -> 2024-03-01: one day */
	CHECK_EQ_INT(limits_to_month_end_s(1709164800000LL), 86400);
}

static void test_full(void)
{
	struct policy *p = parse("{}");
	struct limiter l;
	limiter_init(&l, 2, 3);
	struct identity a = ident("a", ""), b = ident("b", ""), c = ident("c", "");
	struct lim_refusal r;
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(1), T0 + 1000, T0, 0, &r), 0);
	CHECK_EQ_INT(limiter_admit(&l, p, &b, rid(2), T0 + 1000, T0, 0, &r), 0);
	CHECK_EQ_INT(limiter_admit(&l, p, &c, rid(3), T0 + 1000, T0, 0, &r), -1);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(4), T0 + 1000, T0, 0, &r), 0);
	CHECK_EQ_INT(limiter_admit(&l, p, &a, rid(5), T0 + 1000, T0, 0, &r), -1);
	/* idle entries go after a while, once their slots and loads are done */
	limiter_tick(&l, T0 + 2000, 0);
	while (limiter_next_load(&l))
		;
	struct lim_entry *e;
	for (int t = 0; t < 2; t++)
		for (size_t i = 0; i < l.principals.nbuckets; i++)
			for (e = l.principals.buckets[i]; e; e = e->next)
				limiter_loaded(&l, e, 1, 0, 0, 0);
	limiter_tick(&l, T0 + 10 * 60 * 1000, 0);
	CHECK_EQ_INT(l.principals.count, 0);
	CHECK_EQ_INT(limiter_admit(&l, p, &c, rid(6), T0 + 700000, T0 + 600001, 0, &r), 0);
	limiter_free(&l);
	policy_free(p);
}

int main(void)
{
	test_window();
	test_rpm();
	test_concurrency();
	test_tokens();
	test_quota();
	test_full();
	return check_done();
}
