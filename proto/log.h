/* JSON-line logging to stderr: one object per line, the only log format of every
 * process. Credentials must never be passed here (DESIGN.md, security invariants). */
#ifndef GW_LOG_H
#define GW_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_kv_type { LOG_KV_NONE = 0, LOG_KV_STR, LOG_KV_INT };

/* A key/value field; the strings are borrowed for the duration of the call. */
struct log_kv {
	const char *key;
	enum log_kv_type type;
	const char *str;
	long long num;
};

#define LS(k, v)                                                                                   \
	{                                                                                          \
		(k), LOG_KV_STR, (v), 0                                                            \
	}
#define LI(k, v)                                                                                   \
	{                                                                                          \
		(k), LOG_KV_INT, NULL, (long long)(v)                                              \
	}

/* A leading empty element keeps the array non-empty when no field is given. */
#define LOG_KVS_(...) ((const struct log_kv[]){{NULL, LOG_KV_NONE, NULL, 0}, ##__VA_ARGS__})
#define LOG_NKV_(...) (sizeof(LOG_KVS_(__VA_ARGS__)) / sizeof(struct log_kv) - 1)
#define LOG_AT_(lvl, msg, ...)                                                                     \
	log_write((lvl), (msg), LOG_KVS_(__VA_ARGS__) + 1, LOG_NKV_(__VA_ARGS__))

#define log_debug(msg, ...) LOG_AT_(LOG_DEBUG, msg, ##__VA_ARGS__)
#define log_info(msg, ...)  LOG_AT_(LOG_INFO, msg, ##__VA_ARGS__)
#define log_warn(msg, ...)  LOG_AT_(LOG_WARN, msg, ##__VA_ARGS__)
#define log_error(msg, ...) LOG_AT_(LOG_ERROR, msg, ##__VA_ARGS__)

/* service and instance are copied. */
void log_init(const char *service, const char *instance);
void log_set_level(enum log_level level);
/* Parses "debug|info|warn|error"; returns -1 on anything else. */
int log_level_parse(const char *s, enum log_level *out);
int log_enabled(enum log_level level);
void log_write(enum log_level level, const char *msg, const struct log_kv *kv, size_t n);

/* Appends s as a JSON string body (no quotes) to buf of size cap at *len; truncates
 * safely. Shared with the audit-event writer. */
void log_json_escape(char *buf, size_t cap, size_t *len, const char *s);

#endif
