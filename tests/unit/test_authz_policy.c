/* authz unit tests: policy file parsing (strict: unknown fields and bad types refused),
 * admission (groups, identity providers, required policies, service accounts, '<' '>'
 * in usernames), allowed models (the key's list intersected with the group lists). */
#include "check.h"
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

static int refused(const char *s, const char *want_in_error)
{
	char err[256] = "";
	struct policy *p = policy_parse(s, strlen(s), err, sizeof err);
	policy_free(p);
	return !p && strstr(err, want_in_error) != NULL;
}

static struct identity ident(enum cred_type t, const char *principal, const char *groups,
			     const char *idp, const char *policies, const char *models)
{
	struct identity id;
	memset(&id, 0, sizeof id);
	id.type = t;
	snprintf(id.principal, sizeof id.principal, "%s", principal);
	snprintf(id.groups, sizeof id.groups, "%s", groups);
	snprintf(id.idp, sizeof id.idp, "%s", idp);
	snprintf(id.policies, sizeof id.policies, "%s", policies);
	snprintf(id.models, sizeof id.models, "%s", models);
	return id;
}

static int admit(const struct policy *p, const struct identity *id, char *rule)
{
	char msg[384];
	return policy_admit(p, id, rule, 64, msg, sizeof msg);
}

static void test_parse_errors(void)
{
	CHECK(refused("not json", "not JSON"));
	CHECK(refused("[]", "must be a JSON object"));
	CHECK(refused("{\"allowed_group\":[\"a\"]}", "unknown field 'allowed_group'"));
	CHECK(refused("{\"allowed_groups\":\"a\"}", "allowed_groups must be an array"));
	CHECK(refused("{\"allowed_groups\":[\"a,b\"]}", "allowed_groups[0]"));
	CHECK(refused("{\"allowed_groups\":[\"\"]}", "allowed_groups[0]"));
	CHECK(refused("{\"limits\":{\"default\":{\"requests_per_minute\":-1}}}", "non-negative"));
	CHECK(refused("{\"limits\":{\"default\":{\"rpm\":1}}}", "unknown limit 'rpm'"));
	CHECK(refused("{\"limits\":{\"principals\":{\"a\":{\"concurrent\":\"2\"}}}}",
		      "limits.principals.a.concurrent"));
	CHECK(refused("{\"limits\":{\"users\":{}}}", "unknown field 'users'"));
	CHECK(refused("{\"models_by_group\":{\"g\":\"m\"}}", "models_by_group.g"));
	CHECK(refused("{\"a\":1,\"a\":2}", "not JSON"));
	struct policy *p = parse("{}");
	CHECK(p != NULL);
	policy_free(p);
	p = policy_default();
	CHECK(p != NULL && p->allowed_groups == NULL && !p->has_models);
	policy_free(p);
	char err[128];
	CHECK(policy_load("/nonexistent/policy.json", err, sizeof err) == NULL);
	CHECK(strstr(err, "cannot open") != NULL);
}

static void test_admit(void)
{
	struct policy *p = parse("{\"allowed_groups\":[\"staff\",\"hpc\"],"
				 "\"allowed_idps\":[\"anl.gov\",\"uchicago.edu\"],"
				 "\"idp_required_groups\":{\"uchicago.edu\":[\"uc-ai\"]},"
				 "\"required_policies\":[\"mfa\"],"
				 "\"service_accounts\":[\"svc-bot\"],"
				 "\"comment\":\"test\"}");
	CHECK(p != NULL);
	if (!p)
		return;
	char rule[64];
	struct identity id = ident(CRED_JWT, "alice", "staff", "anl.gov", "mfa", "*");
	CHECK_EQ_INT(admit(p, &id, rule), 0);
	id = ident(CRED_JWT, "alice", "visitors", "anl.gov", "mfa", "*");
	CHECK_EQ_INT(admit(p, &id, rule), -1);
	CHECK_EQ_STR(rule, "allowed_groups");
	id = ident(CRED_JWT, "alice", "staff", "gmail.com", "mfa", "*");
	CHECK_EQ_INT(admit(p, &id, rule), -1);
	CHECK_EQ_STR(rule, "allowed_idps");
	id = ident(CRED_JWT, "alice", "staff", "", "mfa", "*");
	CHECK_EQ_INT(admit(p, &id, rule), -1);
	CHECK_EQ_STR(rule, "allowed_idps");
	id = ident(CRED_JWT, "bob", "staff", "uchicago.edu", "mfa", "*");
	CHECK_EQ_INT(admit(p, &id, rule), -1);
	CHECK_EQ_STR(rule, "idp_required_groups");
	id = ident(CRED_JWT, "bob", "staff,uc-ai", "uchicago.edu", "mfa", "*");
	CHECK_EQ_INT(admit(p, &id, rule), 0);
	id = ident(CRED_JWT, "bob", "staff", "anl.gov", "", "*");
	CHECK_EQ_INT(admit(p, &id, rule), -1);
	CHECK_EQ_STR(rule, "required_policies");
	id = ident(CRED_JWT, "bob", "staff", "anl.gov", "other,mfa2", "*");
	CHECK_EQ_INT(admit(p, &id, rule), -1);
	/* service accounts skip the provider checks, not the group check */
	id = ident(CRED_JWT, "svc-bot", "hpc", "gmail.com", "", "*");
	CHECK_EQ_INT(admit(p, &id, rule), 0);
	id = ident(CRED_JWT, "svc-bot", "nobody", "gmail.com", "", "*");
	CHECK_EQ_INT(admit(p, &id, rule), -1);
	CHECK_EQ_STR(rule, "allowed_groups");
	/* API keys have no provider: only the group check applies */
	id = ident(CRED_API_KEY, "carol", "hpc", "", "", "*");
	CHECK_EQ_INT(admit(p, &id, rule), 0);
	id = ident(CRED_API_KEY, "carol<script>", "hpc", "", "", "*");
	CHECK_EQ_INT(admit(p, &id, rule), -1);
	CHECK_EQ_STR(rule, "username_characters");
	id = ident(CRED_JWT, "a>b", "staff", "anl.gov", "mfa", "*");
	CHECK_EQ_INT(admit(p, &id, rule), -1);
	CHECK_EQ_STR(rule, "username_characters");
	policy_free(p);

	p = parse("{}");
	id = ident(CRED_JWT, "x", "", "", "", "*");
	CHECK_EQ_INT(admit(p, &id, rule), 0);
	policy_free(p);
}

static void test_models(void)
{
	char out[256];
	struct policy *p = parse("{\"models_by_group\":{\"staff\":[\"m1\",\"m2\"],"
				 "\"hpc\":[\"m2\",\"m3\"],\"*\":[\"free\"]}}");
	CHECK(p != NULL);
	if (!p)
		return;
	struct identity id = ident(CRED_API_KEY, "a", "staff", "", "", "*");
	CHECK_EQ_INT(policy_models_for(p, &id, out, sizeof out), 0);
	CHECK_EQ_STR(out, "m1,m2,free");
	id = ident(CRED_API_KEY, "a", "staff,hpc", "", "", "*");
	policy_models_for(p, &id, out, sizeof out);
	CHECK_EQ_STR(out, "m1,m2,m3,free");
	id = ident(CRED_API_KEY, "a", "staff,hpc", "", "", "m3,m9,free");
	policy_models_for(p, &id, out, sizeof out);
	CHECK_EQ_STR(out, "m3,free");
	id = ident(CRED_API_KEY, "a", "", "", "", "m9");
	policy_models_for(p, &id, out, sizeof out);
	CHECK_EQ_STR(out, "");
	CHECK(!policy_list_has(out, "m9"));
	CHECK_EQ_INT(policy_models_for(p, &id, out, 3), 0);
	id = ident(CRED_API_KEY, "a", "staff,hpc", "", "", "*");
	CHECK_EQ_INT(policy_models_for(p, &id, out, 8), -1);
	policy_free(p);

	p = parse("{\"models_by_group\":{\"admins\":[\"*\"],\"staff\":[\"m1\"]}}");
	id = ident(CRED_API_KEY, "a", "admins", "", "", "*");
	policy_models_for(p, &id, out, sizeof out);
	CHECK_EQ_STR(out, "*");
	id = ident(CRED_API_KEY, "a", "admins", "", "", "k1,k2");
	policy_models_for(p, &id, out, sizeof out);
	CHECK_EQ_STR(out, "k1,k2");
	policy_free(p);

	p = parse("{}");
	id = ident(CRED_API_KEY, "a", "", "", "", "*");
	policy_models_for(p, &id, out, sizeof out);
	CHECK_EQ_STR(out, "*");
	id = ident(CRED_API_KEY, "a", "", "", "", "k1");
	policy_models_for(p, &id, out, sizeof out);
	CHECK_EQ_STR(out, "k1");
	policy_free(p);

	CHECK(policy_list_has("a,bb,c", "bb"));
	CHECK(!policy_list_has("a,bb,c", "b"));
	CHECK(!policy_list_has("a,bb,c", ""));
	CHECK(policy_list_has("*", "anything"));
}

static void test_limits_lookup(void)
{
	struct policy *p = parse("{\"limits\":{\"default\":{\"requests_per_minute\":10},"
				 "\"principals\":{\"vip\":{\"requests_per_minute\":1000,"
				 "\"tokens_per_day\":5}},"
				 "\"groups\":{\"students\":{\"concurrent\":2}}}}");
	CHECK(p != NULL);
	if (!p)
		return;
	CHECK_EQ_INT(policy_principal_limits(p, "anyone").rpm, 10);
	CHECK_EQ_INT(policy_principal_limits(p, "vip").rpm, 1000);
	CHECK_EQ_INT(policy_principal_limits(p, "vip").tokens_day, 5);
	CHECK(policy_group_limits(p, "students") != NULL);
	CHECK_EQ_INT(policy_group_limits(p, "students")->concurrent, 2);
	CHECK(policy_group_limits(p, "staff") == NULL);
	policy_free(p);
}

int main(void)
{
	test_parse_errors();
	test_admit();
	test_models();
	test_limits_lookup();
	return check_done();
}
