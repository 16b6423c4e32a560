/* SSE usage extraction: any chunking of a stream gives the same answer; CRLF; last
 * usage wins; overlong lines are skipped whole; garbage never counts as usage. */
#include "check.h"
#include "sse.h"
#include "usage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char stream[] =
    ": keep-alive comment\n"
    "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n"
    "\n"
    "event: message\n"
    "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\" world, \\\"usage\\\"\"}}]}\n"
    "\n"
    "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,"
    "\"completion_tokens\":34,\"total_tokens\":46}}\n"
    "\n"
    "data: [DONE]\n"
    "\n";

/* Feeds s in pieces cut at the given offsets and returns the scanner's result. */
static int scan(const char *s, size_t len, const size_t *cuts, int ncuts, size_t line_max,
		struct sse_usage *out)
{
	struct sse_usage sc;
	if (sse_usage_init(&sc, line_max) != 0)
		return -1;
	size_t pos = 0;
	for (int i = 0; i <= ncuts; i++) {
		size_t end = i < ncuts ? cuts[i] : len;
		sse_usage_feed(&sc, s + pos, end - pos);
		pos = end;
	}
	sse_usage_finish(&sc);
	*out = sc;
	out->line = NULL;
	sse_usage_free(&sc);
	return 0;
}

static int usage_is(const struct sse_usage *s, long long p, long long c, long long t)
{
	return s->have && s->usage.prompt_tokens == p && s->usage.completion_tokens == c &&
	       s->usage.total_tokens == t;
}

static void test_every_boundary(void)
{
	size_t len = strlen(stream);
	struct sse_usage r;
	int bad = 0;
	/* Every single cut point, and every pair of cut points. */
	for (size_t a = 0; a <= len; a++) {
		if (scan(stream, len, &a, 1, 4096, &r) != 0 || !usage_is(&r, 12, 34, 46))
			bad++;
		for (size_t b = a; b <= len; b += 7) {
			size_t cuts[2] = {a, b};
			if (scan(stream, len, cuts, 2, 4096, &r) != 0 || !usage_is(&r, 12, 34, 46))
				bad++;
		}
	}
	CHECK_EQ_INT(bad, 0);
	/* Byte by byte. */
	size_t *cuts = malloc(len * sizeof *cuts);
	for (size_t i = 0; i < len; i++)
		cuts[i] = i;
	CHECK_EQ_INT(scan(stream, len, cuts, (int)len, 4096, &r), 0);
	CHECK(usage_is(&r, 12, 34, 46));
	CHECK_EQ_INT(r.malformed, 0);
	free(cuts);
	/* Random chunkings. */
	srand(7);
	bad = 0;
	for (int iter = 0; iter < 2000; iter++) {
		size_t cs[16];
		int n = rand() % 16;
		for (int i = 0; i < n; i++)
			cs[i] = (size_t)rand() % (len + 1);
		for (int i = 1; i < n; i++) /* sort */
			for (int j = i; j > 0 && cs[j - 1] > cs[j]; j--) {
				size_t t = cs[j];
				cs[j] = cs[j - 1];
				cs[j - 1] = t;
			}
		if (scan(stream, len, cs, n, 4096, &r) != 0 || !usage_is(&r, 12, 34, 46))
			bad++;
	}
	CHECK_EQ_INT(bad, 0);
}

static void test_crlf_and_last_wins(void)
{
	const char *s = "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,"
			"\"total_tokens\":3}}\r\n\r\n"
			"data:{\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\r\r"
			"data: [DONE]\r\n\r\n";
	struct sse_usage r;
	size_t len = strlen(s);
	int bad = 0;
	for (size_t a = 0; a <= len; a++)
		if (scan(s, len, &a, 1, 4096, &r) != 0 || !usage_is(&r, 5, 6, 11))
			bad++;
	CHECK_EQ_INT(bad, 0);
	/* CRLF is one line end, not two; lone CR and LF are one each. */
	const char *ends = "a\r\nb\rc\nd\r\n\r\n";
	bad = 0;
	for (size_t a = 0; a <= strlen(ends); a++)
		if (scan(ends, strlen(ends), &a, 1, 4096, &r) != 0 || r.lines != 5)
			bad++;
	CHECK_EQ_INT(bad, 0);
	/* A last line without its newline still counts at the end of the stream. */
	const char *t = "data: {\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":0,"
			"\"total_tokens\":7}}";
	CHECK_EQ_INT(scan(t, strlen(t), NULL, 0, 4096, &r), 0);
	CHECK(usage_is(&r, 7, 0, 7));
}

static void test_no_usage(void)
{
	const char *s = "data: {\"choices\":[],\"usage\":null}\n\ndata: [DONE]\n\n";
	struct sse_usage r;
	CHECK_EQ_INT(scan(s, strlen(s), NULL, 0, 4096, &r), 0);
	CHECK(!r.have);
	CHECK_EQ_INT(r.malformed, 0);
	/* "usage" inside a content string is not a usage block. */
	const char *c = "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":{}\"}}]}\n";
	CHECK_EQ_INT(scan(c, strlen(c), NULL, 0, 4096, &r), 0);
	CHECK(!r.have);
	/* Not a data line. */
	const char *e = "event: {\"usage\":{\"prompt_tokens\":1}}\nid: 1\nretry: 10\n";
	CHECK_EQ_INT(scan(e, strlen(e), NULL, 0, 4096, &r), 0);
	CHECK(!r.have);
}

static void test_oversize(void)
{
	/* A usage line longer than the buffer is skipped whole, and the next one is read. */
	size_t pad = 300;
	char *s = malloc(2048);
	int n = snprintf(s, 2048, "data: {\"pad\":\"");
	memset(s + n, 'x', pad);
	n += (int)pad;
	n += snprintf(s + n, 2048 - (size_t)n,
		      "\",\"usage\":{\"prompt_tokens\":99,\"completion_tokens\":99}}\n\n");
	struct sse_usage r;
	CHECK_EQ_INT(scan(s, (size_t)n, NULL, 0, 128, &r), 0);
	CHECK(!r.have);
	CHECK_EQ_INT(r.overlong, 1);
	/* The same with a big buffer is read. */
	CHECK_EQ_INT(scan(s, (size_t)n, NULL, 0, 4096, &r), 0);
	CHECK(usage_is(&r, 99, 99, 198));
	/* Overlong line, cut at every point, followed by a good line. */
	n += snprintf(s + n, 2048 - (size_t)n,
		      "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n");
	int bad = 0;
	for (size_t a = 0; a <= (size_t)n; a++)
		if (scan(s, (size_t)n, &a, 1, 128, &r) != 0 || !usage_is(&r, 1, 1, 2) ||
		    r.overlong != 1)
			bad++;
	CHECK_EQ_INT(bad, 0);
	/* An overlong line that never ends is not read at finish either. */
	CHECK_EQ_INT(scan(s, 200, NULL, 0, 128, &r), 0);
	CHECK(!r.have);
	free(s);
}

static void test_garbage(void)
{
	const char *bad[] = {
	    "data: {\"usage\":{\"prompt_tokens\":\"12\"}}\n",
	    "data: {\"usage\":{\"prompt_tokens\":-1}}\n",
	    "data: {\"usage\":{\"completion_tokens\":3}}\n",
	    "data: {\"usage\":[1,2,3]}\n",
	    "data: {\"usage\":{\"prompt_tokens\":1.5}}\n",
	    "data: {\"usage\": {\"prompt_tokens\": 1\n",
	    "data: {not json \"usage\"}\n",
	};
	struct sse_usage r;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		CHECK_EQ_INT(scan(bad[i], strlen(bad[i]), NULL, 0, 4096, &r), 0);
		CHECK(!r.have);
		/* Bad usage is malformed; a payload that is not JSON at all is broken SSE. */
		CHECK_EQ_INT(r.malformed, i < 5 ? 1 : 0);
		CHECK_EQ_INT(r.broken, i < 5 ? 0 : 1);
	}
	CHECK_EQ_INT(scan("data: [DONE]\n", 13, NULL, 0, 4096, &r), 0);
	CHECK_EQ_INT(r.broken, 0);
	CHECK_EQ_INT(scan("data: {\"a\":1}\n\ndata: hello\n", 28, NULL, 0, 4096, &r), 0);
	CHECK_EQ_INT(r.broken, 1);
	/* Binary junk, NULs included, then a valid usage line. */
	char junk[600];
	for (size_t i = 0; i < 512; i++)
		junk[i] = (char)((i * 37 + 11) & 0xff);
	const char *good = "\ndata: {\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5}}\n";
	memcpy(junk + 512, good, strlen(good));
	CHECK_EQ_INT(scan(junk, 512 + strlen(good), NULL, 0, 4096, &r), 0);
	CHECK(usage_is(&r, 4, 5, 9));
}

static void test_usage_json(void)
{
	struct usage u;
	const char *chat = "{\"id\":\"x\",\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":"
			   "20,\"total_tokens\":30}}";
	CHECK_EQ_INT(usage_from_json(chat, strlen(chat), &u), 0);
	CHECK_EQ_INT(u.prompt_tokens, 10);
	CHECK_EQ_INT(u.completion_tokens, 20);
	CHECK_EQ_INT(u.total_tokens, 30);
	const char *emb = "{\"data\":[],\"usage\":{\"prompt_tokens\":8,\"total_tokens\":8}}";
	CHECK_EQ_INT(usage_from_json(emb, strlen(emb), &u), 0);
	CHECK_EQ_INT(u.completion_tokens, 0);
	CHECK_EQ_INT(u.total_tokens, 8);
	const char *none = "{\"id\":\"x\"}";
	CHECK_EQ_INT(usage_from_json(none, strlen(none), &u), -1);
	CHECK_EQ_INT(usage_from_json("[]", 2, &u), -1);
	CHECK_EQ_INT(usage_from_json("{", 1, &u), -1);
}

int main(void)
{
	test_every_boundary();
	test_crlf_and_last_wins();
	test_no_usage();
	test_oversize();
	test_garbage();
	test_usage_json();
	return check_done();
}
