/* Unit tests of ingress/pending.c: lookup by id, FIFO (deadline) order, references. */
#include "check.h"
#include "../../ingress/pending.h"

#include <stdio.h>

int main(void)
{
	struct pending_table t;
	CHECK_EQ_INT(pending_table_init(&t, 16), 0);
	char ids[3][GW_ID_HEX + 1];
	struct pending *p[3];
	for (int i = 0; i < 3; i++) {
		snprintf(ids[i], sizeof ids[i], "%032x", i * 17 + 1);
		p[i] = pending_new(&t, NULL, ids[i]);
		CHECK(p[i] != NULL);
	}
	CHECK_EQ_INT((int)t.count, 3);
	CHECK(t.head == p[0] && t.tail == p[2]);
	CHECK(pending_find(&t, ids[1]) == p[1]);
	CHECK(pending_find(&t, "ffffffffffffffffffffffffffffffff") == NULL);
	p[1]->refs++; /* e.g. the audit event still in flight */
	pending_finish(&t, p[1]);
	CHECK(pending_find(&t, ids[1]) == NULL);
	CHECK_EQ_INT((int)t.count, 2);
	CHECK(t.head == p[0] && p[0]->next == p[2]);
	CHECK_EQ_INT(p[1]->answered, 1);
	pending_finish(&t, p[1]); /* twice is harmless */
	CHECK_EQ_INT((int)t.count, 2);
	pending_unref(p[1]);
	pending_finish(&t, p[0]);
	pending_finish(&t, p[2]);
	CHECK_EQ_INT((int)t.count, 0);
	CHECK(t.head == NULL && t.tail == NULL);
	pending_table_free(&t);
	return check_done();
}
