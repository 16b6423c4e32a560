/* authz unit tests: parsing of RFC 7662 / Globus introspection answers (principal,
 * provider, policy evaluations, groups, cache lifetime) and the cache seeding used by
 * the bench. */
#include "check.h"
#include "introspect.h"

#include <stdio.h>
#include <string.h>

#define NOW 1700000000000LL

static int parse(const char *s, struct identity *id, int64_t *until)
{
	return introspect_parse(s, strlen(s), NOW, id, until);
}

int main(void)
{
	struct identity id;
	int64_t until = 0;
	CHECK_EQ_INT(parse("{\"active\":false}", &id, &until), 0);
	CHECK_EQ_INT(until, NOW + INTROSPECT_INACTIVE_MS);
	CHECK_EQ_INT(parse("not json", &id, &until), -1);
	CHECK_EQ_INT(parse("{\"active\":\"yes\"}", &id, &until), -1);
	CHECK_EQ_INT(parse("{}", &id, &until), -1);
	CHECK_EQ_INT(parse("{\"active\":true}", &id, &until), -1); /* no principal */
	CHECK_EQ_INT(parse("{\"active\":true,\"sub\":\"u\",\"exp\":\"x\"}", &id, &until), -1);

	const char *globus =
	    "{\"active\":true,\"scope\":\"s\",\"sub\":\"8c1e-uuid\",\"username\":\"alice@anl.gov\","
	    "\"exp\":1700000300,\"identity_set\":[\"8c1e-uuid\"],"
	    "\"session_info\":{\"session_id\":\"x\",\"authentications\":{\"8c1e-uuid\":"
	    "{\"idp\":\"idp-uuid-anl\",\"auth_time\":1699999000}}},"
	    "\"policy_evaluations\":{\"pol-mfa\":{\"evaluation\":true},\"pol-x\":"
	    "{\"evaluation\":false}},\"groups\":[\"staff\",\"hpc\"]}";
	CHECK_EQ_INT(parse(globus, &id, &until), 1);
	CHECK_EQ_STR(id.principal, "alice@anl.gov");
	CHECK_EQ_STR(id.idp, "idp-uuid-anl");
	CHECK_EQ_STR(id.policies, "pol-mfa");
	CHECK_EQ_STR(id.groups, "staff,hpc");
	CHECK_EQ_STR(id.cred_id, "8c1e-uuid");
	CHECK_EQ_INT(id.type, CRED_INTROSPECTION);
	CHECK_EQ_INT(id.expires_ms, 1700000300000LL);
	CHECK_EQ_INT(until, 1700000300000LL); /* exp before the 10 min cap */

	/* no username: sub; exp far away: capped at 10 minutes */
	CHECK_EQ_INT(parse("{\"active\":true,\"sub\":\"u1\",\"exp\":1800000000}", &id, &until), 1);
	CHECK_EQ_STR(id.principal, "u1");
	CHECK_EQ_INT(until, NOW + INTROSPECT_ACTIVE_MAX_MS);
	/* active but already expired: treated as inactive */
	CHECK_EQ_INT(parse("{\"active\":true,\"sub\":\"u1\",\"exp\":1600000000}", &id, &until), 0);
	CHECK_EQ_STR(id.principal, "");
	/* names with ',' or control characters are refused or skipped */
	CHECK_EQ_INT(parse("{\"active\":true,\"username\":\"a,b\"}", &id, &until), -1);
	CHECK_EQ_INT(
	    parse("{\"active\":true,\"sub\":\"u\",\"groups\":[\"a,b\",\"ok\"]}", &id, &until), 1);
	CHECK_EQ_STR(id.groups, "ok");

	/* the cache: put and look up without any call */
	struct event_base *base = event_base_new();
	struct introspect_config ic = {"http://127.0.0.1:9/introspect", "id", "secret", 1000, 4};
	struct introspect *in = introspect_new(base, &ic, NULL);
	CHECK(in != NULL);
	struct introspect_config bad = {"ftp://x/", "id", "secret", 1000, 4};
	CHECK(introspect_new(base, &bad, NULL) == NULL);
	if (in) {
		struct identity who, got;
		memset(&who, 0, sizeof who);
		snprintf(who.principal, sizeof who.principal, "bob");
		CHECK_EQ_INT(introspect_put(in, "tok", 3, &who, NOW + 1000), 0);
		CHECK_EQ_INT(introspect_put(in, "tok", 3, &who, NOW + 1000), -1);
		CHECK_EQ_INT(introspect_lookup(in, "tok", 3, NOW, NULL, &got), INTRO_OK);
		CHECK_EQ_STR(got.principal, "bob");
		CHECK_EQ_INT(introspect_count(in), 1);
		introspect_tick(in, NOW + 1000);
		CHECK_EQ_INT(introspect_count(in), 0);
		introspect_free(in);
	}
	event_base_free(base);
	return check_done();
}
