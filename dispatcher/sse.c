/* Incremental SSE line scanner extracting usage. Lines are bounded: a longer one is
 * skipped whole (counted), never truncated and misread. */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

int sse_usage_init(struct sse_usage *s, size_t line_max)
{
	memset(s, 0, sizeof *s);
	s->line = malloc(line_max);
	if (!s->line)
		return -1;
	s->cap = line_max;
	return 0;
}

void sse_usage_free(struct sse_usage *s)
{
	free(s->line);
	s->line = NULL;
	s->cap = s->len = 0;
}

static void take_line(struct sse_usage *s)
{
	s->lines++;
	if (s->overflow) {
		s->overflow = 0;
		s->len = 0;
		return;
	}
	const char *p = s->line;
	size_t n = s->len;
	s->len = 0;
	if (n < 5 || memcmp(p, "data:", 5) != 0)
		return; /* blank line, comment, event:, id:, retry: */
	p += 5;
	n -= 5;
	if (n && *p == ' ') {
		p++;
		n--;
	}
	if (n == 6 && memcmp(p, "[DONE]", 6) == 0)
		return;
	/* Every payload is parsed: an endpoint sending garbage must be caught. */
	json_t *root = json_loadb(p, n, JSON_DECODE_ANY, NULL);
	if (!root) {
		s->broken++;
		return;
	}
	if (!json_is_object(root) || !memmem(p, n, "\"usage\"", 7)) {
		json_decref(root);
		return;
	}
	json_t *u = json_object_get(root, "usage");
	struct usage x;
	/* "usage": null on ordinary chunks is normal, not malformed. */
	if (u && !json_is_null(u)) {
		if (usage_from_object(u, &x) == 0) {
			s->usage = x;
			s->have = 1;
		} else {
			s->malformed++;
		}
	}
	json_decref(root);
}

void sse_usage_feed(struct sse_usage *s, const void *data, size_t len)
{
	const char *p = data;
	for (size_t i = 0; i < len; i++) {
		char c = p[i];
		if (c == '\n' && s->after_cr) {
			s->after_cr = 0;
			continue;
		}
		s->after_cr = c == '\r';
		if (c == '\n' || c == '\r') {
			take_line(s);
			continue;
		}
		if (s->overflow)
			continue;
		if (s->len == s->cap) {
			s->overflow = 1;
			s->overlong++;
			continue;
		}
		s->line[s->len++] = c;
	}
}

void sse_usage_finish(struct sse_usage *s)
{
	if (s->len || s->overflow)
		take_line(s);
}
