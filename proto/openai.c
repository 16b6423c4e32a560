/* OpenAI's error shape, built with jansson so messages are escaped correctly. */
#include "openai.h"

#include <jansson.h>

char *openai_error_json(const char *message, const char *type, const char *code,
			const char *request_id)
{
	json_t *err =
	    json_pack("{s:s, s:s, s:o}", "message", message ? message : "", "type",
		      type ? type : "server_error", "code", code ? json_string(code) : json_null());
	if (!err)
		return NULL;
	json_t *root = json_pack("{s:o}", "error", err);
	if (!root)
		return NULL;
	if (request_id && *request_id)
		json_object_set_new(root, "request_id", json_string(request_id));
	char *s = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	return s;
}

const char *openai_error_type(int status)
{
	switch (status) {
	case 400:
	case 404:
	case 405:
	case 409:
	case 413:
	case 415:
	case 422: return "invalid_request_error";
	case 401: return "authentication_error";
	case 403: return "permission_error";
	case 429: return "rate_limit_error";
	default: return status >= 500 ? "server_error" : "invalid_request_error";
	}
}
