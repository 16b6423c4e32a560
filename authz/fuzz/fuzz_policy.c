/* libFuzzer target: the policy file parser and the checks run against what it parsed.
 * A parsed policy must answer admission and model questions without crashing. */
#include "policy.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256] = "";
	struct policy *p = policy_parse((const char *)data, size, err, sizeof err);
	if (!p) {
		if (!err[0])
			abort();
		return 0;
	}
	struct identity id;
	memset(&id, 0, sizeof id);
	snprintf(id.principal, sizeof id.principal, "alice");
	snprintf(id.groups, sizeof id.groups, "staff,g");
	snprintf(id.idp, sizeof id.idp, "anl.gov");
	snprintf(id.models, sizeof id.models, "m1,free");
	id.type = CRED_JWT;
	char rule[64], msg[384], models[2048];
	(void)policy_admit(p, &id, rule, sizeof rule, msg, sizeof msg);
	(void)policy_models_for(p, &id, models, sizeof models);
	(void)policy_principal_limits(p, "a");
	(void)policy_group_limits(p, "g");
	policy_free(p);
	return 0;
}
