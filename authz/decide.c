/* API-key decisions. Every credential failure answers the same 401 so a caller cannot
 * probe which ids exist or which keys were revoked; the audit reason says which. */
#include "decide.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static void deny(struct decision *d, int status, const char *reason, const char *type,
		 const char *code, const char *message)
{
	d->allowed = 0;
	d->status = status;
	d->reason = reason;
	d->type = type;
	d->code = code;
	snprintf(d->message, sizeof d->message, "%s", message);
}

void decide_deny_credential(struct decision *d, const char *reason)
{
	memset(d, 0, sizeof *d);
	deny(d, 401, reason, "authentication_error", "invalid_api_key", "invalid API key");
}

void decide(const struct key_cache *c, const void *cred, size_t len, const char *model,
	    int64_t now_ms, struct decision *d)
{
	memset(d, 0, sizeof *d);
	if (!cred || len == 0) {
		deny(d, 401, "no credential", "authentication_error", "missing_api_key",
		     "missing API key: send Authorization: Bearer <key>");
		return;
	}
	const char *k = cred;
	if (len > 7 && strncasecmp(k, "Bearer ", 7) == 0) {
		k += 7;
		len -= 7;
	}
	char id[APIKEY_ID_HEX + 1];
	if (apikey_parse_n(k, len, id) != 0) {
		decide_deny_credential(d, "malformed API key");
		return;
	}
	const struct key_entry *e = keys_get(c, id);
	if (!e) {
		decide_deny_credential(d, "unknown key id");
		return;
	}
	if (!apikey_verify(k, len, e->hash)) {
		decide_deny_credential(d, "secret does not match");
		return;
	}
	/* From here the caller proved possession of the key: its principal is known. */
	if (e->revoked) {
		decide_deny_credential(d, "key revoked");
	} else if (e->expires_ms && now_ms >= e->expires_ms) {
		decide_deny_credential(d, "key expired");
	} else if (model && !keys_model_allowed(e, model)) {
		char msg[sizeof d->message];
		snprintf(msg, sizeof msg, "model '%.256s' is not allowed by rule api-key:%s",
			 model ? model : "", e->id);
		deny(d, 403, "model not allowed", "permission_error", "model_not_allowed", msg);
	} else {
		d->allowed = 1;
		d->reason = "api key valid";
	}
	d->key = e;
	snprintf(d->rule, sizeof d->rule, "api-key:%s", e->id);
}

void decide_identity(const struct key_entry *e, struct identity *id)
{
	memset(id, 0, sizeof *id);
	id->type = CRED_API_KEY;
	snprintf(id->principal, sizeof id->principal, "%s", e->principal);
	snprintf(id->groups, sizeof id->groups, "%s", e->groups);
	snprintf(id->cred_id, sizeof id->cred_id, "%s", e->id);
	id->expires_ms = e->expires_ms;
	if (e->nmodels == 0) {
		snprintf(id->models, sizeof id->models, "*");
		return;
	}
	size_t len = 0;
	const char *m = e->models;
	for (int i = 0; i < e->nmodels; i++) {
		size_t n = strlen(m);
		/* A list too long for the header keeps its head: narrower, never wider. */
		if (len + n + 2 > sizeof id->models)
			break;
		if (len)
			id->models[len++] = ',';
		memcpy(id->models + len, m, n + 1);
		len += n;
		m += n + 1;
	}
}
