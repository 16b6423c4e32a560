/* OpenAI's error shape {"error":{"message","type","code"}} plus the request id. */
#ifndef GW_OPENAI_H
#define GW_OPENAI_H

/* Returns a malloc'd JSON body (caller frees) or NULL on allocation failure.
 * type e.g. "invalid_request_error", "authentication_error", "permission_error",
 * "rate_limit_error", "server_error"; code may be NULL (JSON null). */
char *openai_error_json(const char *message, const char *type, const char *code,
			const char *request_id);

/* The OpenAI error type for an HTTP status. */
const char *openai_error_type(int status);

#endif
