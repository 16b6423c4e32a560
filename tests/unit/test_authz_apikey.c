/* authz unit tests: the API key format, hashing and constant-time verification, the key
 * cache, the pure decision function, the usage table and RFC 3339 parsing. */
#include "apikey.h"
#include "check.h"
#include "cli.h"
#include "decide.h"
#include "keys.h"
#include "usage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A well-formed key with a fixed id; the secret's last char 'A' has zero padding bits. */
static const char GOOD[] = "gw_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

static void test_parse(void)
{
	char id[APIKEY_ID_HEX + 1];
	char k[256];
	CHECK_EQ_INT(strlen(GOOD), APIKEY_LEN);
	CHECK_EQ_INT(apikey_parse(GOOD, id), 0);
	CHECK_EQ_STR(id, "0123456789abcdef");

	/* wrong prefix */
	snprintf(k, sizeof k, "%s", GOOD);
	k[0] = 'G';
	CHECK_EQ_INT(apikey_parse(k, id), -1);
	CHECK_EQ_STR(id, "");
	snprintf(k, sizeof k, "gx%s", GOOD + 2);
	CHECK_EQ_INT(apikey_parse(k, id), -1);
	snprintf(k, sizeof k, "sk_%s", GOOD + 3);
	CHECK_EQ_INT(apikey_parse(k, id), -1);

	/* wrong lengths: id one short / one long, secret one short / one long, empty */
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789abcde_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", id),
	    -1);
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789abcdef0_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", id),
	    -1);
	snprintf(k, sizeof k, "%.*s", (int)strlen(GOOD) - 1, GOOD);
	CHECK_EQ_INT(apikey_parse(k, id), -1);
	snprintf(k, sizeof k, "%sA", GOOD);
	CHECK_EQ_INT(apikey_parse(k, id), -1);
	CHECK_EQ_INT(apikey_parse("", id), -1);
	CHECK_EQ_INT(apikey_parse("gw_", id), -1);
	CHECK_EQ_INT(apikey_parse(NULL, id), -1);

	/* non-hex id: uppercase, a letter past f, a separator inside */
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789ABCDEF_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", id),
	    -1);
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789abcdeg_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", id),
	    -1);
	CHECK_EQ_INT(
	    apikey_parse("gw_01234567-9abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", id),
	    -1);
	/* missing separator between id and secret */
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789abcdefAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", id),
	    -1);

	/* bad base64url: standard alphabet, padding, space, non-canonical last char */
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+A", id),
	    -1);
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/A", id),
	    -1);
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", id),
	    -1);
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789abcdef_AAAAAAAAAAAAAAAAAAAA AAAAAAAAAAAAAAAAAAAAAA", id),
	    -1);
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB", id),
	    -1);
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE", id), 0);
	CHECK_EQ_INT(
	    apikey_parse("gw_0123456789abcdef_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_w", id), 0);

	/* embedded NUL: the C-string parser sees a short key; the length-aware one refuses */
	memcpy(k, GOOD, sizeof GOOD);
	k[30] = 0;
	CHECK_EQ_INT(apikey_parse(k, id), -1);
	CHECK_EQ_INT(apikey_parse_n(k, APIKEY_LEN, id), -1);
	CHECK_EQ_INT(apikey_parse_n(GOOD, APIKEY_LEN, id), 0);
	CHECK_EQ_INT(apikey_parse_n(GOOD, APIKEY_LEN - 1, id), -1);

	/* overlong: a long string sharing the good prefix */
	char *big = malloc(100000);
	memset(big, 'A', 99999);
	big[99999] = 0;
	memcpy(big, GOOD, APIKEY_LEN);
	CHECK_EQ_INT(apikey_parse(big, id), -1);
	CHECK_EQ_INT(apikey_parse_n(big, 99999, id), -1);
	free(big);
}

static void test_generate_hash_verify(void)
{
	char k1[APIKEY_LEN + 1], k2[APIKEY_LEN + 1], id1[17], id2[17], pid[17];
	CHECK_EQ_INT(apikey_generate(k1, id1), 0);
	CHECK_EQ_INT(apikey_generate(k2, id2), 0);
	CHECK_EQ_INT(strlen(k1), APIKEY_LEN);
	CHECK(strcmp(k1, k2) != 0);
	CHECK_EQ_INT(apikey_parse(k1, pid), 0);
	CHECK_EQ_STR(pid, id1);
	/* Many generated keys all parse (the canonical last character in particular). */
	int bad = 0;
	for (int i = 0; i < 2000; i++) {
		char k[APIKEY_LEN + 1], id[17];
		if (apikey_generate(k, id) != 0 || apikey_parse(k, pid) != 0 || strcmp(pid, id))
			bad++;
	}
	CHECK_EQ_INT(bad, 0);

	/* SHA-256("abc"), FIPS 180-2 test vector */
	unsigned char h[APIKEY_HASH_LEN], back[APIKEY_HASH_LEN];
	char hex[APIKEY_HASH_HEX + 1];
	CHECK_EQ_INT(apikey_hash("abc", 3, h), 0);
	apikey_hash_hex(h, hex);
	CHECK_EQ_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	CHECK_EQ_INT(apikey_hash_unhex(hex, back), 0);
	CHECK(memcmp(h, back, sizeof h) == 0);
	CHECK_EQ_INT(apikey_hash_unhex(
			 "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", back),
		     0);
	CHECK(memcmp(h, back, sizeof h) == 0);
	CHECK_EQ_INT(apikey_hash_unhex("ba78", back), -1);
	CHECK_EQ_INT(apikey_hash_unhex(
			 "xa7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", back),
		     -1);
	CHECK_EQ_INT(apikey_hash_unhex(
			 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0", back),
		     -1);

	/* verify: the key hashes to itself; one changed byte, one byte less, do not */
	CHECK_EQ_INT(apikey_hash(k1, APIKEY_LEN, h), 0);
	CHECK_EQ_INT(apikey_verify(k1, APIKEY_LEN, h), 1);
	char k3[APIKEY_LEN + 1];
	memcpy(k3, k1, sizeof k3);
	k3[APIKEY_LEN - 2] = k3[APIKEY_LEN - 2] == 'A' ? 'B' : 'A';
	CHECK_EQ_INT(apikey_verify(k3, APIKEY_LEN, h), 0);
	CHECK_EQ_INT(apikey_verify(k1, APIKEY_LEN - 1, h), 0);
	CHECK_EQ_INT(apikey_verify(k2, APIKEY_LEN, h), 0);
}

/* Builds a row for key `key` (its id and hash). */
static void make_row(struct key_row *r, const char *key, unsigned char hash[APIKEY_HASH_LEN],
		     char id[17], const char *principal)
{
	memset(r, 0, sizeof *r);
	apikey_parse(key, id);
	apikey_hash(key, strlen(key), hash);
	r->id = id;
	memcpy(r->hash, hash, APIKEY_HASH_LEN);
	r->principal = principal;
}

static void test_cache(void)
{
	struct key_cache c;
	CHECK_EQ_INT(keys_init(&c, 5000), 0);
	char key[APIKEY_LEN + 1], id[17];
	unsigned char hash[APIKEY_HASH_LEN];
	apikey_generate(key, id);
	struct key_row r;
	make_row(&r, key, hash, id, "alice");
	const char *groups[] = {"staff", "hpc"};
	const char *models[] = {"llama-3-8b", "mistral-7b"};
	r.groups = groups;
	r.ngroups = 2;
	r.models = models;
	r.nmodels = 2;

	/* insert and look up */
	CHECK_EQ_INT(keys_put(&c, &r), 0);
	CHECK_EQ_INT(c.count, 1);
	const struct key_entry *e = keys_get(&c, id);
	CHECK(e != NULL);
	if (e) {
		CHECK_EQ_STR(e->principal, "alice");
		CHECK_EQ_STR(e->groups, "staff,hpc");
		CHECK_EQ_INT(e->nmodels, 2);
		CHECK_EQ_INT(keys_model_allowed(e, "llama-3-8b"), 1);
		CHECK_EQ_INT(keys_model_allowed(e, "mistral-7b"), 1);
		CHECK_EQ_INT(keys_model_allowed(e, "mistral"), 0);
		CHECK_EQ_INT(keys_model_allowed(e, ""), 0);
		CHECK_EQ_INT(e->revoked, 0);
	}
	CHECK(keys_get(&c, "0000000000000000") == NULL);
	CHECK(keys_get(&c, "not-an-id") == NULL);
	CHECK(keys_get(&c, "") == NULL);

	/* revoke: the refresh puts the updated row; the entry is replaced, not duplicated */
	r.revoked = 1;
	r.ngroups = 0;
	r.nmodels = 0;
	CHECK_EQ_INT(keys_put(&c, &r), 0);
	CHECK_EQ_INT(c.count, 1);
	e = keys_get(&c, id);
	CHECK(e && e->revoked == 1);
	CHECK(e && strcmp(e->groups, "") == 0);
	CHECK(e && keys_model_allowed(e, "anything") == 1);

	/* expire is a field the decision reads (see test_decide) */
	r.revoked = 0;
	r.expires_ms = 12345;
	CHECK_EQ_INT(keys_put(&c, &r), 0);
	e = keys_get(&c, id);
	CHECK(e && e->expires_ms == 12345);

	/* malformed rows are refused and leave the cache as it was */
	struct key_row bad = r;
	bad.id = "0123";
	CHECK_EQ_INT(keys_put(&c, &bad), -1);
	bad = r;
	bad.principal = "";
	CHECK_EQ_INT(keys_put(&c, &bad), -1);
	const char *comma[] = {"a,b"};
	bad = r;
	bad.groups = comma;
	bad.ngroups = 1;
	CHECK_EQ_INT(keys_put(&c, &bad), -1);
	CHECK_EQ_INT(c.count, 1);
	e = keys_get(&c, id);
	CHECK(e && strcmp(e->principal, "alice") == 0);

	/* growth past the initial capacity: every key still found */
	static char ids[3000][17];
	int missing = 0;
	for (int i = 0; i < 3000; i++) {
		struct key_row x = r;
		snprintf(ids[i], sizeof ids[i], "%016x", (unsigned)i * 7919u + 1u);
		x.id = ids[i];
		x.principal = "bulk";
		if (keys_put(&c, &x) != 0)
			missing++;
	}
	CHECK_EQ_INT(missing, 0);
	CHECK_EQ_INT(c.count, 3001);
	for (int i = 0; i < 3000; i++)
		if (!keys_get(&c, ids[i]))
			missing++;
	CHECK_EQ_INT(missing, 0);
	keys_free(&c);

	/* the bound: max keys, then refusal; replacing an existing key still works */
	CHECK_EQ_INT(keys_init(&c, 2), 0);
	char k2[APIKEY_LEN + 1], i2[17], k3[APIKEY_LEN + 1], i3[17];
	unsigned char h2[APIKEY_HASH_LEN], h3[APIKEY_HASH_LEN];
	apikey_generate(k2, i2);
	apikey_generate(k3, i3);
	struct key_row r2, r3;
	make_row(&r2, k2, h2, i2, "bob");
	make_row(&r3, k3, h3, i3, "carol");
	CHECK_EQ_INT(keys_put(&c, &r), 0);
	CHECK_EQ_INT(keys_put(&c, &r2), 0);
	CHECK_EQ_INT(keys_put(&c, &r3), -1);
	CHECK(keys_get(&c, i3) == NULL);
	r2.revoked = 1;
	CHECK_EQ_INT(keys_put(&c, &r2), 0);
	CHECK_EQ_INT(c.count, 2);
	keys_free(&c);
}

static void test_decide(void)
{
	struct key_cache c;
	keys_init(&c, 100);
	const int64_t now = 1700000000000LL;
	char ka[APIKEY_LEN + 1], ia[17], kr[APIKEY_LEN + 1], ir[17], ke[APIKEY_LEN + 1], ie[17];
	unsigned char ha[APIKEY_HASH_LEN], hr[APIKEY_HASH_LEN], he[APIKEY_HASH_LEN];
	apikey_generate(ka, ia);
	apikey_generate(kr, ir);
	apikey_generate(ke, ie);
	struct key_row ra, rr, re;
	const char *models[] = {"llama-3-8b"};
	const char *groups[] = {"staff"};
	make_row(&ra, ka, ha, ia, "alice");
	ra.models = models;
	ra.nmodels = 1;
	ra.groups = groups;
	ra.ngroups = 1;
	ra.expires_ms = now + 1000; /* not yet expired */
	make_row(&rr, kr, hr, ir, "rita");
	rr.revoked = 1;
	make_row(&re, ke, he, ie, "eve");
	re.expires_ms = now; /* expires exactly now */
	keys_put(&c, &ra);
	keys_put(&c, &rr);
	keys_put(&c, &re);

	struct decision d;
	/* allowed */
	decide(&c, ka, strlen(ka), "llama-3-8b", now, &d);
	CHECK_EQ_INT(d.allowed, 1);
	CHECK_EQ_INT(d.status, 0);
	CHECK(d.key && strcmp(d.key->principal, "alice") == 0);
	CHECK(d.key && strcmp(d.key->groups, "staff") == 0);
	char rule[64];
	snprintf(rule, sizeof rule, "api-key:%s", ia);
	CHECK_EQ_STR(d.rule, rule);
	/* with the Authorization header's Bearer prefix */
	char bearer[128];
	snprintf(bearer, sizeof bearer, "Bearer %s", ka);
	decide(&c, bearer, strlen(bearer), "llama-3-8b", now, &d);
	CHECK_EQ_INT(d.allowed, 1);

	/* model not allowed: 403 naming the rule */
	decide(&c, ka, strlen(ka), "gpt-4", now, &d);
	CHECK_EQ_INT(d.allowed, 0);
	CHECK_EQ_INT(d.status, 403);
	CHECK_EQ_STR(d.type, "permission_error");
	CHECK(strstr(d.message, rule) != NULL);
	CHECK(strstr(d.message, "gpt-4") != NULL);
	CHECK(d.key != NULL);

	/* a key with no model list may use any model */
	decide(&c, ke, strlen(ke), "gpt-4", now - 1, &d);
	CHECK_EQ_INT(d.allowed, 1);

	/* missing credential */
	decide(&c, NULL, 0, "llama-3-8b", now, &d);
	CHECK_EQ_INT(d.allowed, 0);
	CHECK_EQ_INT(d.status, 401);
	CHECK(d.key == NULL);

	/* malformed, unknown id, wrong secret, revoked, expired: the same 401 to the client */
	char unknown[APIKEY_LEN + 1], uid[17];
	apikey_generate(unknown, uid);
	char wrong[APIKEY_LEN + 1];
	memcpy(wrong, ka, sizeof wrong);
	wrong[APIKEY_LEN - 3] = wrong[APIKEY_LEN - 3] == 'x' ? 'y' : 'x';
	struct {
		const char *key;
		const char *reason;
		int known;
	} cases[] = {
	    {"gw_nothex", "malformed API key", 0},
	    {unknown, "unknown key id", 0},
	    {wrong, "secret does not match", 0},
	    {kr, "key revoked", 1},
	    {ke, "key expired", 1},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		decide(&c, cases[i].key, strlen(cases[i].key), "llama-3-8b", now, &d);
		CHECK_EQ_INT(d.allowed, 0);
		CHECK_EQ_INT(d.status, 401);
		CHECK_EQ_STR(d.message, "invalid API key");
		CHECK_EQ_STR(d.type, "authentication_error");
		CHECK_EQ_STR(d.reason, cases[i].reason);
		CHECK_EQ_INT(d.key != NULL, cases[i].known);
	}
	/* an embedded NUL in the unsealed credential is refused, not truncated */
	char nul[APIKEY_LEN + 8];
	memcpy(nul, ka, APIKEY_LEN);
	memcpy(nul + APIKEY_LEN, "\0junk", 5);
	decide(&c, nul, APIKEY_LEN + 5, "llama-3-8b", now, &d);
	CHECK_EQ_INT(d.allowed, 0);
	CHECK_EQ_INT(d.status, 401);

	decide_deny_credential(&d, "credential cannot be unsealed");
	CHECK_EQ_INT(d.status, 401);
	CHECK_EQ_STR(d.message, "invalid API key");
	keys_free(&c);
}

static void test_usage(void)
{
	struct usage_table t;
	CHECK_EQ_INT(usage_init(&t, 3), 0);
	int32_t day = usage_day(1700000000000LL);
	CHECK_EQ_INT(day, 19675);
	CHECK_EQ_INT(usage_add(&t, "alice", day, 10), 0);
	CHECK_EQ_INT(usage_add(&t, "alice", day, 5), 0);
	CHECK_EQ_INT(usage_add(&t, "bob", day, 7), 0);
	CHECK_EQ_INT(usage_tokens(&t, "alice", day), 15);
	CHECK_EQ_INT(usage_tokens(&t, "bob", day), 7);
	CHECK_EQ_INT(usage_tokens(&t, "carol", day), 0);
	CHECK_EQ_INT(usage_pending(&t), 22);

	char *json = NULL;
	size_t rows = 0;
	CHECK_EQ_INT(usage_flush_begin(&t, &json, &rows), 1);
	CHECK_EQ_INT(rows, 2);
	CHECK(json && strstr(json, "\"day\":\"2023-11-14\"") != NULL);
	CHECK(json && strstr(json, "\"tokens\":15") != NULL);
	free(json);
	/* a second flush cannot start while one is under way */
	CHECK_EQ_INT(usage_flush_begin(&t, &json, &rows), 0);
	/* tokens arriving during the flush stay pending after it commits */
	CHECK_EQ_INT(usage_add(&t, "alice", day, 1), 0);
	usage_flush_end(&t, 1);
	CHECK_EQ_INT(usage_pending(&t), 1);
	CHECK_EQ_INT(usage_tokens(&t, "alice", day), 16);
	/* a failed flush keeps the deltas */
	CHECK_EQ_INT(usage_flush_begin(&t, &json, &rows), 1);
	free(json);
	usage_flush_end(&t, 0);
	CHECK_EQ_INT(usage_pending(&t), 1);
	CHECK_EQ_INT(usage_flush_begin(&t, &json, &rows), 1);
	free(json);
	usage_flush_end(&t, 1);
	CHECK_EQ_INT(usage_pending(&t), 0);
	CHECK_EQ_INT(usage_flush_begin(&t, &json, &rows), 0);

	/* bounded: 3 entries; a settled earlier day is dropped to make room */
	CHECK_EQ_INT(usage_add(&t, "carol", day, 1), 0);
	CHECK_EQ_INT(usage_add(&t, "dave", day, 1), -1);
	usage_flush_begin(&t, &json, &rows);
	free(json);
	usage_flush_end(&t, 1);
	CHECK_EQ_INT(usage_add(&t, "dave", day + 1, 1), 0);
	CHECK_EQ_INT(usage_tokens(&t, "dave", day + 1), 1);
	CHECK_EQ_INT(usage_tokens(&t, "alice", day), 0);
	usage_free(&t);
}

static void test_rfc3339(void)
{
	long long ms;
	CHECK_EQ_INT(cli_parse_rfc3339("2030-01-31T00:00:00Z", &ms), 0);
	CHECK_EQ_INT(ms, 1896048000000LL);
	CHECK_EQ_INT(cli_parse_rfc3339("2030-01-31T02:00:00.250+02:00", &ms), 0);
	CHECK_EQ_INT(ms, 1896048000250LL);
	CHECK_EQ_INT(cli_parse_rfc3339("2030-02-31T00:00:00Z", &ms), -1);
	CHECK_EQ_INT(cli_parse_rfc3339("2030-01-31 00:00:00Z", &ms), -1);
	CHECK_EQ_INT(cli_parse_rfc3339("2030-01-31T00:00:00", &ms), -1);
	CHECK_EQ_INT(cli_parse_rfc3339("tomorrow", &ms), -1);
}

int main(void)
{
	test_parse();
	test_generate_hash_verify();
	test_cache();
	test_decide();
	test_usage();
	test_rfc3339();
	return check_done();
}
