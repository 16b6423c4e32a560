/* Unit tests of the hash chain arithmetic: the writer's hash (from its COPY line) must
 * equal verify's (from the column values read back), and every byte must count. */
#include "auditor_event.h"
#include "chain.h"
#include "check.h"

#include <stdlib.h>
#include <string.h>

#define ID "0123456789abcdef0123456789abcdef"

int main(void)
{
	/* A tab, a newline and a backslash: the COPY escapes must be undone exactly. */
	const char ev[] = "{\"event_id\":\"" ID "\",\"ts_us\":1,\"type\":\"t\\tx\","
			  "\"principal\":\"a\\\\b\\nc\",\"status\":200}";
	struct auditor_row row;
	const char *reason = NULL;
	CHECK(auditor_event_map(ev, strlen(ev), 3, 42, &row, &reason) == 0);
	CHECK_EQ_INT(3, row.chain_id);

	unsigned char prev[CHAIN_HASH_LEN] = {0}, a[CHAIN_HASH_LEN], b[CHAIN_HASH_LEN];
	char *scratch = NULL;
	size_t cap = 0;
	CHECK(chain_hash_copy_line(prev, 3, row.line, row.len, &scratch, &cap, a) == 0);

	const char *vals[AUDITOR_EVENT_NCOLUMNS] = {0};
	size_t lens[AUDITOR_EVENT_NCOLUMNS] = {0};
	vals[0] = ID;
	vals[2] = "t\tx";
	vals[3] = "1970-01-01T00:00:00.000001Z";
	vals[7] = "a\\b\nc";
	vals[14] = "200";
	vals[25] = "3";
	vals[26] = "42";
	vals[27] = ev;
	for (int i = 0; i < AUDITOR_EVENT_NCOLUMNS; i++)
		lens[i] = vals[i] ? strlen(vals[i]) : 0;
	CHECK(chain_hash_fields(prev, 3, vals, lens, AUDITOR_EVENT_NCOLUMNS, b) == 0);
	CHECK(memcmp(a, b, sizeof a) == 0);

	/* Any change is a different hash: a value, NULL versus empty, the chain, prev. */
	vals[7] = "a\\b\nC";
	CHECK(chain_hash_fields(prev, 3, vals, lens, AUDITOR_EVENT_NCOLUMNS, b) == 0);
	CHECK(memcmp(a, b, sizeof a) != 0);
	vals[7] = "a\\b\nc";
	vals[1] = "";
	CHECK(chain_hash_fields(prev, 3, vals, lens, AUDITOR_EVENT_NCOLUMNS, b) == 0);
	CHECK(memcmp(a, b, sizeof a) != 0);
	vals[1] = NULL;
	CHECK(chain_hash_fields(prev, 4, vals, lens, AUDITOR_EVENT_NCOLUMNS, b) == 0);
	CHECK(memcmp(a, b, sizeof a) != 0);
	prev[31] = 1;
	CHECK(chain_hash_fields(prev, 3, vals, lens, AUDITOR_EVENT_NCOLUMNS, b) == 0);
	CHECK(memcmp(a, b, sizeof a) != 0);
	/* Framing: moving a byte across a field boundary changes the hash. */
	prev[31] = 0;
	vals[4] = "ab";
	vals[5] = "c";
	lens[4] = 2;
	lens[5] = 1;
	CHECK(chain_hash_fields(prev, 3, vals, lens, AUDITOR_EVENT_NCOLUMNS, a) == 0);
	vals[4] = "a";
	vals[5] = "bc";
	lens[4] = 1;
	lens[5] = 2;
	CHECK(chain_hash_fields(prev, 3, vals, lens, AUDITOR_EVENT_NCOLUMNS, b) == 0);
	CHECK(memcmp(a, b, sizeof a) != 0);

	/* A line without its newline is refused. */
	CHECK(chain_hash_copy_line(prev, 3, row.line, row.len - 1, &scratch, &cap, a) == -1);

	/* Hex round trip; wrong length or digits refused. */
	char hex[CHAIN_HEX_LEN + 1];
	unsigned char back[CHAIN_HASH_LEN];
	chain_hex(a, hex);
	CHECK_EQ_INT(CHAIN_HEX_LEN, (int)strlen(hex));
	CHECK(chain_unhex(hex, back) == 0);
	CHECK(memcmp(a, back, sizeof a) == 0);
	hex[5] = 'g';
	CHECK(chain_unhex(hex, back) == -1);
	CHECK(chain_unhex("abcd", back) == -1);
	CHECK(chain_unhex(NULL, back) == -1);

	/* A known value: SHA-256 of 32 zero bytes, chain 0 (4 zero bytes), no fields. */
	unsigned char zero[CHAIN_HASH_LEN] = {0};
	CHECK(chain_hash_fields(zero, 0, NULL, NULL, 0, a) == 0);
	chain_hex(a, hex);
	CHECK_EQ_STR("6db65fd59fd356f6729140571b5bcd6bb3b83492a16e1bf0a3884442fc3c8a0e", hex);

	free(row.line);
	free(scratch);
	return check_done();
}
