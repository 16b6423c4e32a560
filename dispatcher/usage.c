/* Token usage from OpenAI-shaped JSON. */
#include "usage.h"

#include <string.h>

static int field(const json_t *u, const char *key, int required, long long *out)
{
	json_t *v = json_object_get(u, key);
	if (!v) {
		*out = -1;
		return required ? -1 : 0;
	}
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -1;
	*out = json_integer_value(v);
	return 0;
}

int usage_from_object(const json_t *u, struct usage *out)
{
	struct usage x;
	if (!json_is_object(u) || field(u, "prompt_tokens", 1, &x.prompt_tokens) ||
	    field(u, "completion_tokens", 0, &x.completion_tokens) ||
	    field(u, "total_tokens", 0, &x.total_tokens))
		return -1;
	if (x.completion_tokens < 0)
		x.completion_tokens = 0;
	if (x.total_tokens < 0)
		x.total_tokens = x.prompt_tokens + x.completion_tokens;
	*out = x;
	return 0;
}

int usage_from_json(const char *buf, size_t len, struct usage *out)
{
	json_t *root = json_loadb(buf, len, 0, NULL);
	if (!root)
		return -1;
	int rc = json_is_object(root) ? usage_from_object(json_object_get(root, "usage"), out) : -1;
	json_decref(root);
	return rc;
}
