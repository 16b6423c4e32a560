/* The access policy file: strict parsing (an unknown field is an error, so a typo never
 * silently widens access) and the admission and model checks decide() applies. */
#include "policy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POLICY_FILE_MAX (4 << 20)

static void set_err(char *err, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, cap, fmt, ap);
	va_end(ap);
}

static char *own(struct policy *p, char *s)
{
	if (!s)
		return NULL;
	if (p->nowned == p->capowned) {
		int cap = p->capowned ? 2 * p->capowned : 16;
		char **n = realloc(p->owned, (size_t)cap * sizeof *n);
		if (!n) {
			free(s);
			return NULL;
		}
		p->owned = n;
		p->capowned = cap;
	}
	p->owned[p->nowned++] = s;
	return s;
}

/* A JSON array of non-empty strings without ',' joined by commas (owned by p). */
static const char *comma_list(struct policy *p, const json_t *arr, const char *field, char *err,
			      size_t errcap)
{
	if (!json_is_array(arr)) {
		set_err(err, errcap, "%s must be an array of strings", field);
		return NULL;
	}
	size_t total = 1, i;
	json_t *v;
	json_array_foreach(arr, i, v)
	{
		const char *s = json_string_value(v);
		if (!s || !*s || strchr(s, ',') || strlen(s) > 255) {
			set_err(err, errcap, "%s[%zu] must be a non-empty string without ','",
				field, i);
			return NULL;
		}
		total += strlen(s) + 1;
	}
	char *out = malloc(total);
	if (!out) {
		set_err(err, errcap, "out of memory");
		return NULL;
	}
	size_t len = 0;
	out[0] = 0;
	json_array_foreach(arr, i, v)
	{
		const char *s = json_string_value(v);
		size_t n = strlen(s);
		if (len)
			out[len++] = ',';
		memcpy(out + len, s, n + 1);
		len += n;
	}
	if (!own(p, out)) {
		set_err(err, errcap, "out of memory");
		return NULL;
	}
	return out;
}

static int parse_limits(const json_t *o, const char *field, struct limits *l, char *err,
			size_t errcap)
{
	static const char *names[] = {"requests_per_minute", "tokens_per_minute", "concurrent",
				      "tokens_per_day", "tokens_per_month"};
	int64_t *vals[] = {&l->rpm, &l->tpm, &l->concurrent, &l->tokens_day, &l->tokens_month};
	memset(l, 0, sizeof *l);
	if (!json_is_object(o)) {
		set_err(err, errcap, "%s must be an object", field);
		return -1;
	}
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)o, k, v)
	{
		int found = 0;
		for (int i = 0; i < 5; i++) {
			if (strcmp(k, names[i]) != 0)
				continue;
			found = 1;
			if (!json_is_integer(v) || json_integer_value(v) < 0) {
				set_err(err, errcap, "%s.%s must be a non-negative integer", field,
					k);
				return -1;
			}
			*vals[i] = json_integer_value(v);
		}
		if (!found) {
			set_err(err, errcap, "%s: unknown limit '%.64s'", field, k);
			return -1;
		}
	}
	return 0;
}

static int parse_limit_map(const json_t *o, const char *field, struct policy_limits **out, int *n,
			   char *err, size_t errcap)
{
	if (!json_is_object(o)) {
		set_err(err, errcap, "%s must be an object of name -> limits", field);
		return -1;
	}
	size_t cnt = json_object_size(o);
	*out = calloc(cnt ? cnt : 1, sizeof **out);
	if (!*out) {
		set_err(err, errcap, "out of memory");
		return -1;
	}
	const char *k;
	json_t *v;
	char sub[128];
	json_object_foreach((json_t *)o, k, v)
	{
		snprintf(sub, sizeof sub, "%s.%.64s", field, k);
		if (parse_limits(v, sub, &(*out)[*n].l, err, errcap) != 0)
			return -1;
		(*out)[*n].name = k;
		(*n)++;
	}
	return 0;
}

struct policy *policy_parse(const char *text, size_t len, char *err, size_t errcap)
{
	json_error_t je;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!root) {
		set_err(err, errcap, "not JSON: line %d: %s", je.line, je.text);
		return NULL;
	}
	struct policy *p = calloc(1, sizeof *p);
	if (!p) {
		json_decref(root);
		set_err(err, errcap, "out of memory");
		return NULL;
	}
	p->root = root;
	if (!json_is_object(root)) {
		set_err(err, errcap, "the policy must be a JSON object");
		goto fail;
	}
	const char *k;
	json_t *v;
	json_object_foreach(root, k, v)
	{
		if (strcmp(k, "allowed_groups") == 0) {
			if (!(p->allowed_groups = comma_list(p, v, k, err, errcap)))
				goto fail;
		} else if (strcmp(k, "allowed_idps") == 0) {
			if (!(p->allowed_idps = comma_list(p, v, k, err, errcap)))
				goto fail;
		} else if (strcmp(k, "required_policies") == 0) {
			if (!(p->required_policies = comma_list(p, v, k, err, errcap)))
				goto fail;
		} else if (strcmp(k, "service_accounts") == 0) {
			if (!(p->service_accounts = comma_list(p, v, k, err, errcap)))
				goto fail;
		} else if (strcmp(k, "idp_required_groups") == 0 ||
			   strcmp(k, "models_by_group") == 0) {
			int idp = k[0] == 'i';
			if (!json_is_object(v)) {
				set_err(err, errcap, "%s must be an object of name -> [names]", k);
				goto fail;
			}
			size_t cnt = json_object_size(v);
			void *arr = calloc(cnt ? cnt : 1, idp ? sizeof(struct policy_idp_groups)
							      : sizeof(struct policy_models));
			if (!arr) {
				set_err(err, errcap, "out of memory");
				goto fail;
			}
			if (idp)
				p->idp_groups = arr;
			else
				p->models = arr, p->has_models = 1;
			const char *name;
			json_t *list;
			char sub[128];
			json_object_foreach(v, name, list)
			{
				snprintf(sub, sizeof sub, "%s.%.64s", k, name);
				const char *l = comma_list(p, list, sub, err, errcap);
				if (!l)
					goto fail;
				if (idp) {
					p->idp_groups[p->nidp_groups].idp = name;
					p->idp_groups[p->nidp_groups++].groups = l;
				} else {
					p->models[p->nmodels].group = name;
					p->models[p->nmodels++].models = l;
				}
			}
		} else if (strcmp(k, "limits") == 0) {
			if (!json_is_object(v)) {
				set_err(err, errcap, "limits must be an object");
				goto fail;
			}
			const char *lk;
			json_t *lv;
			json_object_foreach(v, lk, lv)
			{
				int rc;
				if (strcmp(lk, "default") == 0)
					rc = parse_limits(lv, "limits.default",
							  &p->principal_default, err, errcap);
				else if (strcmp(lk, "principals") == 0)
					rc =
					    parse_limit_map(lv, "limits.principals", &p->principals,
							    &p->nprincipals, err, errcap);
				else if (strcmp(lk, "groups") == 0)
					rc = parse_limit_map(lv, "limits.groups", &p->groups,
							     &p->ngroups, err, errcap);
				else {
					set_err(err, errcap, "limits: unknown field '%.64s'", lk);
					rc = -1;
				}
				if (rc != 0)
					goto fail;
			}
		} else if (strcmp(k, "comment") != 0) {
			set_err(err, errcap, "unknown field '%.64s'", k);
			goto fail;
		}
	}
	return p;
fail:
	policy_free(p);
	return NULL;
}

struct policy *policy_load(const char *path, char *err, size_t errcap)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		set_err(err, errcap, "cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	char *buf = malloc(POLICY_FILE_MAX + 1);
	size_t n = buf ? fread(buf, 1, POLICY_FILE_MAX + 1, f) : 0;
	int bad = !buf || ferror(f);
	fclose(f);
	if (bad || n > POLICY_FILE_MAX) {
		set_err(err, errcap, bad ? "cannot read %s" : "%s is larger than 4 MiB", path);
		free(buf);
		return NULL;
	}
	struct policy *p = policy_parse(buf, n, err, errcap);
	free(buf);
	return p;
}

struct policy *policy_default(void)
{
	char err[64];
	return policy_parse("{}", 2, err, sizeof err);
}

void policy_free(struct policy *p)
{
	if (!p)
		return;
	for (int i = 0; i < p->nowned; i++)
		free(p->owned[i]);
	free(p->owned);
	free(p->idp_groups);
	free(p->models);
	free(p->principals);
	free(p->groups);
	json_decref(p->root);
	free(p);
}

int policy_list_has(const char *list, const char *item)
{
	if (!list || !item)
		return 0;
	if (strcmp(list, "*") == 0)
		return 1;
	size_t n = strlen(item);
	if (n == 0)
		return 0;
	for (const char *s = list; *s;) {
		const char *e = strchr(s, ',');
		size_t l = e ? (size_t)(e - s) : strlen(s);
		if (l == n && memcmp(s, item, n) == 0)
			return 1;
		if (!e)
			break;
		s = e + 1;
	}
	return 0;
}

/* 1 when the two comma lists share an element. */
static int lists_meet(const char *a, const char *b)
{
	char item[256];
	for (const char *s = a; s && *s;) {
		const char *e = strchr(s, ',');
		size_t l = e ? (size_t)(e - s) : strlen(s);
		if (l < sizeof item) {
			memcpy(item, s, l);
			item[l] = 0;
			if (policy_list_has(b, item))
				return 1;
		}
		if (!e)
			break;
		s = e + 1;
	}
	return 0;
}

int policy_admit(const struct policy *p, const struct identity *id, char *rule, size_t rulecap,
		 char *msg, size_t msgcap)
{
	if (strchr(id->principal, '<') || strchr(id->principal, '>')) {
		snprintf(rule, rulecap, "username_characters");
		snprintf(msg, msgcap, "usernames containing '<' or '>' are refused");
		return -1;
	}
	int service = policy_list_has(p->service_accounts, id->principal);
	/* API keys are issued by an operator, not a provider: the provider checks apply to
	 * tokens only, and service accounts are exempt from them. */
	if (!service && id->type != CRED_API_KEY) {
		if (p->allowed_idps && !policy_list_has(p->allowed_idps, id->idp)) {
			snprintf(rule, rulecap, "allowed_idps");
			snprintf(msg, msgcap, "identity provider '%.128s' is not allowed", id->idp);
			return -1;
		}
		for (int i = 0; i < p->nidp_groups; i++) {
			if (strcmp(p->idp_groups[i].idp, id->idp) != 0)
				continue;
			if (!lists_meet(p->idp_groups[i].groups, id->groups)) {
				snprintf(rule, rulecap, "idp_required_groups");
				snprintf(
				    msg, msgcap,
				    "identity provider '%.128s' requires membership in one of: "
				    "%.200s",
				    id->idp, p->idp_groups[i].groups);
				return -1;
			}
		}
		if (p->required_policies) {
			const char *s = p->required_policies;
			char item[256];
			while (*s) {
				const char *e = strchr(s, ',');
				size_t l = e ? (size_t)(e - s) : strlen(s);
				snprintf(item, sizeof item, "%.*s", (int)l, s);
				if (!policy_list_has(id->policies, item)) {
					snprintf(rule, rulecap, "required_policies");
					snprintf(msg, msgcap,
						 "the session does not satisfy the required policy "
						 "'%.128s' (e.g. a high-assurance login)",
						 item);
					return -1;
				}
				if (!e)
					break;
				s = e + 1;
			}
		}
	}
	if (p->allowed_groups && !lists_meet(id->groups, p->allowed_groups)) {
		snprintf(rule, rulecap, "allowed_groups");
		snprintf(msg, msgcap, "principal '%.128s' is in none of the allowed groups",
			 id->principal);
		return -1;
	}
	return 0;
}

static int append(char *out, size_t cap, size_t *len, const char *item, size_t n)
{
	if (*len + n + 2 > cap)
		return -1;
	if (*len)
		out[(*len)++] = ',';
	memcpy(out + *len, item, n);
	*len += n;
	out[*len] = 0;
	return 0;
}

int policy_models_for(const struct policy *p, const struct identity *id, char *out, size_t cap)
{
	/* The union of the allow-lists of the identity's groups (and "*"). */
	char grp[4096] = "*";
	if (p->has_models) {
		size_t len = 0;
		grp[0] = 0;
		int any = 0;
		for (int i = 0; i < p->nmodels; i++) {
			const char *g = p->models[i].group;
			if (strcmp(g, "*") != 0 && !policy_list_has(id->groups, g))
				continue;
			if (strcmp(p->models[i].models, "*") == 0) {
				any = 1;
				break;
			}
			const char *s = p->models[i].models;
			while (*s) {
				const char *e = strchr(s, ',');
				size_t l = e ? (size_t)(e - s) : strlen(s);
				char item[256];
				snprintf(item, sizeof item, "%.*s", (int)l, s);
				if (!policy_list_has(grp, item) &&
				    append(grp, sizeof grp, &len, s, l) != 0)
					return -1;
				if (!e)
					break;
				s = e + 1;
			}
		}
		if (any)
			snprintf(grp, sizeof grp, "*");
	}
	const char *key = id->models[0] ? id->models : "*";
	size_t len = 0;
	out[0] = 0;
	if (strcmp(grp, "*") == 0 || strcmp(key, "*") == 0) {
		const char *src = strcmp(grp, "*") == 0 ? key : grp;
		if (strlen(src) >= cap)
			return -1;
		memcpy(out, src, strlen(src) + 1);
		return 0;
	}
	for (const char *s = key; *s;) {
		const char *e = strchr(s, ',');
		size_t l = e ? (size_t)(e - s) : strlen(s);
		char item[256];
		snprintf(item, sizeof item, "%.*s", (int)l, s);
		if (policy_list_has(grp, item) && append(out, cap, &len, s, l) != 0)
			return -1;
		if (!e)
			break;
		s = e + 1;
	}
	return 0;
}

struct limits policy_principal_limits(const struct policy *p, const char *principal)
{
	for (int i = 0; i < p->nprincipals; i++)
		if (strcmp(p->principals[i].name, principal) == 0)
			return p->principals[i].l;
	return p->principal_default;
}

const struct limits *policy_group_limits(const struct policy *p, const char *group)
{
	for (int i = 0; i < p->ngroups; i++)
		if (strcmp(p->groups[i].name, group) == 0)
			return &p->groups[i].l;
	return NULL;
}
