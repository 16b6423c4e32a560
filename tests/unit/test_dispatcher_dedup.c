/* Recent-id table: repeats are found, the oldest id is forgotten when full, bucket
 * chains survive eviction. */
#include "check.h"
#include "dedup.h"

#include <stdio.h>
#include <string.h>

static void id_of(unsigned n, unsigned prefix, char out[33])
{
	/* The same leading bytes for all ids with the same prefix: one bucket chain. */
	snprintf(out, 33, "%08x%024x", prefix, n);
}

int main(void)
{
	struct dedup d;
	char id[33];
	CHECK_EQ_INT(dedup_init(&d, 0), -1);
	CHECK_EQ_INT(dedup_init(&d, 4), 0);
	id_of(1, 1, id);
	CHECK_EQ_INT(dedup_check_add(&d, id), 0);
	CHECK_EQ_INT(dedup_check_add(&d, id), 1);
	CHECK_EQ_INT(dedup_check_add(&d, "not-an-id"), -1);
	CHECK_EQ_INT(dedup_check_add(&d, "0123456789ABCDEF0123456789abcdef"), -1);
	CHECK_EQ_INT(dedup_check_add(&d, "0123456789abcdef0123456789abcdef0"), -1);
	for (unsigned i = 2; i <= 4; i++) {
		id_of(i, 1, id);
		CHECK_EQ_INT(dedup_check_add(&d, id), 0);
	}
	/* Full (1..4). Adding 5 forgets 1. */
	id_of(5, 1, id);
	CHECK_EQ_INT(dedup_check_add(&d, id), 0);
	for (unsigned i = 2; i <= 5; i++) {
		id_of(i, 1, id);
		CHECK_EQ_INT(dedup_check_add(&d, id), 1);
	}
	id_of(1, 1, id);
	CHECK_EQ_INT(dedup_check_add(&d, id), 0); /* forgotten, now newest; 2 goes */
	id_of(2, 1, id);
	CHECK_EQ_INT(dedup_check_add(&d, id), 0);
	dedup_free(&d);

	/* Many ids over a small table, with colliding and spread prefixes. */
	CHECK_EQ_INT(dedup_init(&d, 1000), 0);
	int wrong = 0;
	for (unsigned i = 0; i < 20000; i++) {
		id_of(i, i % 3 ? i * 2654435761u : 7, id);
		if (dedup_check_add(&d, id) != 0)
			wrong++;
		/* The 999 before it are all still remembered; the 1000th before is not. */
		if (i >= 1000) {
			unsigned j = i - 999;
			id_of(j, j % 3 ? j * 2654435761u : 7, id);
			if (dedup_check_add(&d, id) != 1)
				wrong++;
		}
	}
	CHECK_EQ_INT(wrong, 0);
	CHECK_EQ_INT(d.count, 1000);
	dedup_free(&d);
	return check_done();
}
