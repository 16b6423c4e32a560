/* Stream coalescing: the first arrival goes out at once, arrivals within the window are
 * merged in order, merged messages stay within the bound, a flush sends what is held. */
#include "check.h"
#include "coalesce.h"

#include <stdio.h>
#include <string.h>

struct sink {
	int n;
	char msgs[64][512];
	size_t lens[64];
	char all[8192];
	size_t alllen;
};

static void emit(void *arg, const unsigned char *data, size_t len)
{
	struct sink *s = arg;
	if (s->n < 64 && len < sizeof s->msgs[0]) {
		memcpy(s->msgs[s->n], data, len);
		s->msgs[s->n][len] = 0;
		s->lens[s->n] = len;
	}
	s->n++;
	if (s->alllen + len < sizeof s->all) {
		memcpy(s->all + s->alllen, data, len);
		s->alllen += len;
		s->all[s->alllen] = 0;
	}
}

static void add(struct coalesce *c, const char *text, int64_t now, struct sink *s)
{
	coalesce_add(c, (const unsigned char *)text, strlen(text), now, emit, s);
}

int main(void)
{
	struct coalesce c;
	struct sink s;

	/* First arrival: out at once, nothing held. */
	memset(&s, 0, sizeof s);
	CHECK(coalesce_init(&c, 2, 64) == 0);
	add(&c, "data: 1\n\n", 1000000, &s);
	CHECK_EQ_INT(s.n, 1);
	CHECK_EQ_STR(s.msgs[0], "data: 1\n\n");
	CHECK_EQ_INT((int)coalesce_held(&c), 0);
	CHECK(coalesce_due(&c) == 0);

	/* Within the window: held and merged, in order; due one window after the send. */
	add(&c, "data: 2\n\n", 1000500, &s);
	add(&c, "data: 3\n\n", 1001000, &s);
	CHECK_EQ_INT(s.n, 1);
	CHECK_EQ_INT((int)coalesce_held(&c), 18);
	CHECK(coalesce_due(&c) == 1002000);
	coalesce_flush(&c, 1002000, emit, &s);
	CHECK_EQ_INT(s.n, 2);
	CHECK_EQ_STR(s.msgs[1], "data: 2\n\ndata: 3\n\n");
	CHECK(coalesce_due(&c) == 0);

	/* After a quiet window: out at once again. */
	add(&c, "data: 4\n\n", 1010000, &s);
	CHECK_EQ_INT(s.n, 3);
	CHECK_EQ_STR(s.msgs[2], "data: 4\n\n");

	/* Size bound: a merge that would pass 64 bytes sends what is held first. */
	char big[40];
	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = 0;
	add(&c, big, 1010100, &s); /* held: 39 */
	CHECK_EQ_INT(s.n, 3);
	add(&c, big, 1010200, &s); /* 78 > 64: the first goes, the second is held */
	CHECK_EQ_INT(s.n, 4);
	CHECK_EQ_INT((int)s.lens[3], 39);
	CHECK_EQ_INT((int)coalesce_held(&c), 39);
	/* Reaching the bound exactly flushes at once. */
	char fill[26];
	memset(fill, 'b', sizeof fill - 1);
	fill[sizeof fill - 1] = 0;
	add(&c, fill, 1010300, &s); /* 39 + 25 = 64 */
	CHECK_EQ_INT(s.n, 5);
	CHECK_EQ_INT((int)s.lens[4], 64);
	CHECK_EQ_INT((int)coalesce_held(&c), 0);
	/* An arrival of the bound or more is never merged, even within the window. */
	char huge[100];
	memset(huge, 'c', sizeof huge - 1);
	huge[sizeof huge - 1] = 0;
	add(&c, "x", 1010400, &s);
	CHECK_EQ_INT(s.n, 5);
	add(&c, huge, 1010500, &s);
	CHECK_EQ_INT(s.n, 7);
	CHECK_EQ_STR(s.msgs[5], "x");
	CHECK_EQ_INT((int)s.lens[6], 99);
	for (int i = 0; i < s.n && i < 64; i++)
		CHECK(s.lens[i] <= 64 || s.lens[i] == 99);

	/* Final flush: what is held goes at once, whatever the window. */
	add(&c, "data: 5\n\n", 1010600, &s);
	CHECK_EQ_INT(s.n, 7);
	coalesce_flush(&c, 1010601, emit, &s);
	CHECK_EQ_INT(s.n, 8);
	CHECK_EQ_STR(s.msgs[7], "data: 5\n\n");
	coalesce_flush(&c, 1010602, emit, &s); /* nothing held: nothing sent */
	CHECK_EQ_INT(s.n, 8);

	/* Never reordered: everything out, concatenated, is everything in. */
	char expect[1024];
	snprintf(expect, sizeof expect,
		 "data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n%s%s%sx%sdata: 5\n\n", big, big, fill,
		 huge);
	CHECK_EQ_STR(s.all, expect);

	/* Dropped bytes are forgotten (a cancelled stream). */
	add(&c, "data: 6\n\n", 1010700, &s);
	coalesce_drop(&c);
	CHECK_EQ_INT((int)coalesce_held(&c), 0);
	coalesce_free(&c);

	/* Window 0: every arrival at once. */
	memset(&s, 0, sizeof s);
	CHECK(coalesce_init(&c, 0, 64) == 0);
	add(&c, "a", 1, &s);
	add(&c, "b", 2, &s);
	add(&c, "c", 2, &s);
	CHECK_EQ_INT(s.n, 3);
	CHECK_EQ_INT((int)coalesce_held(&c), 0);
	coalesce_free(&c);
	return check_done();
}
