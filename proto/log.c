/* JSON-line logging to stderr. One write(2) per line so lines from concurrent
 * threads (librdkafka's log callback) never interleave. */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char log_service[32] = "gw";
static char log_instance[64] = "";
static enum log_level log_min = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(const char *service, const char *instance)
{
	snprintf(log_service, sizeof log_service, "%s", service ? service : "gw");
	snprintf(log_instance, sizeof log_instance, "%s", instance ? instance : "");
}

void log_set_level(enum log_level level)
{
	log_min = level;
}

int log_level_parse(const char *s, enum log_level *out)
{
	for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

int log_enabled(enum log_level level)
{
	return level >= log_min;
}

static void put(char *buf, size_t cap, size_t *len, const char *s)
{
	while (*s && *len + 1 < cap)
		buf[(*len)++] = *s++;
}

void log_json_escape(char *buf, size_t cap, size_t *len, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char esc[7];
		const char *out = esc;
		switch (*p) {
		case '"': out = "\\\""; break;
		case '\\': out = "\\\\"; break;
		case '\n': out = "\\n"; break;
		case '\r': out = "\\r"; break;
		case '\t': out = "\\t"; break;
		default:
			if (*p < 0x20 || *p == 0x7f) {
				memcpy(esc, "\\u00", 4);
				esc[4] = hex[*p >> 4];
				esc[5] = hex[*p & 15];
				esc[6] = 0;
			} else {
				esc[0] = (char)*p;
				esc[1] = 0;
			}
		}
		size_t n = strlen(out);
		if (*len + n + 1 >= cap)
			return;
		memcpy(buf + *len, out, n);
		*len += n;
	}
}

void log_write(enum log_level level, const char *msg, const struct log_kv *kv, size_t n)
{
	if (level < log_min)
		return;
	char line[4096];
	size_t len = 0;
	struct timeval tv;
	struct tm tm;
	char ts[64];

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)tv.tv_usec);

	/* Reserve room for the closing brace and newline. */
	const size_t cap = sizeof line - 3;
	put(line, cap, &len, "{\"ts\":\"");
	put(line, cap, &len, ts);
	put(line, cap, &len, "\",\"level\":\"");
	put(line, cap, &len, level_names[level]);
	put(line, cap, &len, "\",\"service\":\"");
	log_json_escape(line, cap, &len, log_service);
	if (log_instance[0]) {
		put(line, cap, &len, "\",\"instance\":\"");
		log_json_escape(line, cap, &len, log_instance);
	}
	put(line, cap, &len, "\",\"msg\":\"");
	log_json_escape(line, cap, &len, msg ? msg : "");
	put(line, cap, &len, "\"");
	for (size_t i = 0; i < n; i++) {
		if (!kv[i].key)
			continue;
		put(line, cap, &len, ",\"");
		log_json_escape(line, cap, &len, kv[i].key);
		put(line, cap, &len, "\":");
		if (kv[i].type == LOG_KV_INT) {
			char num[32];
			snprintf(num, sizeof num, "%lld", kv[i].num);
			put(line, cap, &len, num);
		} else {
			put(line, cap, &len, "\"");
			log_json_escape(line, cap, &len, kv[i].str ? kv[i].str : "");
			put(line, cap, &len, "\"");
		}
	}
	line[len++] = '}';
	line[len++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w; /* nowhere left to report a failed write to stderr */
}
