/* The access policy (GW_POLICY_FILE, JSON): who may come in (groups, identity providers,
 * required policies, service accounts), which models each group may use, and the limits
 * per principal and per group. Parsed into an immutable struct; a reload builds a new
 * one and swaps it only when the whole file is valid. */
#ifndef GW_AUTHZ_POLICY_H
#define GW_AUTHZ_POLICY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Credential kinds an identity comes from. */
enum cred_type { CRED_API_KEY = 0, CRED_JWT, CRED_INTROSPECTION };

/* Who the caller is, once authenticated. Plain value type with fixed buffers. */
struct identity {
	enum cred_type type;
	char principal[256];
	char groups[1024];  /* comma-separated, "" when none */
	char idp[256];      /* identity provider, "" when unknown (API keys) */
	char policies[512]; /* comma-separated policies the token shows (e.g. mfa) */
	char cred_id[128];  /* key id, JWT jti/kid, or token digest prefix */
	char models[2048];  /* the credential's own model list, "*" = any */
	int64_t expires_ms; /* 0 = never / unknown */
};

/* Limits; 0 = unlimited. */
struct limits {
	int64_t rpm, tpm, concurrent, tokens_day, tokens_month;
};

/* A name -> value entry; name is owned by the policy's string arena (json). */
struct policy_limits {
	const char *name;
	struct limits l;
};

struct policy_models {
	const char *group;  /* "*" applies to everyone */
	const char *models; /* comma-separated */
};

struct policy_idp_groups {
	const char *idp;
	const char *groups; /* comma-separated: at least one of them is required */
};

/* Owns everything: the parsed JSON (strings borrowed from it) and the arrays. */
struct policy {
	json_t *root;
	const char *allowed_groups;    /* comma list or NULL = any */
	const char *allowed_idps;      /* comma list or NULL = any */
	const char *required_policies; /* comma list or NULL = none */
	const char *service_accounts;  /* comma list or NULL */
	struct policy_idp_groups *idp_groups;
	int nidp_groups;
	struct policy_models *models; /* NULL/0 = any model for everyone */
	int nmodels;
	int has_models;
	struct limits principal_default;
	struct policy_limits *principals, *groups;
	int nprincipals, ngroups;
	char **owned; /* comma lists built at parse time, each malloc'd */
	int nowned, capowned;
};

/* Parses a policy document. Returns a new policy, or NULL with err set (what is wrong,
 * naming the field). */
struct policy *policy_parse(const char *text, size_t len, char *err, size_t errcap);
/* Reads and parses a file; NULL with err set. */
struct policy *policy_load(const char *path, char *err, size_t errcap);
/* The permissive policy used when GW_POLICY_FILE is unset. */
struct policy *policy_default(void);
void policy_free(struct policy *p);

/* Checks who may come in. Returns 0 when allowed, else -1 with the rule that refused
 * in rule (e.g. "allowed_groups") and a client message. */
int policy_admit(const struct policy *p, const struct identity *id, char *rule, size_t rulecap,
		 char *msg, size_t msgcap);

/* The models the identity may use: the credential's list intersected with the union of
 * the per-group allow-lists; "*" for any. Writes "" when none. Returns -1 when it does
 * not fit. */
int policy_models_for(const struct policy *p, const struct identity *id, char *out, size_t cap);

/* 1 when model is in the comma list (or the list is "*"). */
int policy_list_has(const char *list, const char *item);

/* Limits for a principal (its own entry, else principal_default) and for a group
 * (NULL when the group has none). */
struct limits policy_principal_limits(const struct policy *p, const char *principal);
const struct limits *policy_group_limits(const struct policy *p, const char *group);

#endif
