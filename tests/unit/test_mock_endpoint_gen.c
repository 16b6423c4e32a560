/* The mock endpoint's answers: valid JSON in OpenAI's shapes, deterministic, and a
 * stream that spells the same text as the non-streamed answer. */
#include "check.h"
#include "mock_gen.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Takes the whole buffer as a NUL-terminated string (caller frees). */
static char *take(struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b);
	char *s = malloc(n + 1);

	if (!s)
		return NULL;
	evbuffer_remove(b, s, n);
	s[n] = 0;
	return s;
}

static json_t *parse(const char *s)
{
	json_error_t e;
	json_t *j = json_loads(s, 0, &e);

	if (!j)
		printf("bad JSON (%s): %s\n", e.text, s);
	return j;
}

static void test_completion(void)
{
	struct evbuffer *b = evbuffer_new();
	struct mock_answer a = {MOCK_CHAT, mock_gen_hash("body", 4), "mock-llm", 7, 16};
	char *s1, *s2;
	json_t *j;

	CHECK_EQ_INT(mock_gen_completion(b, &a), 0);
	s1 = take(b);
	CHECK_EQ_INT(mock_gen_completion(b, &a), 0);
	s2 = take(b);
	CHECK_EQ_STR(s1, s2);
	j = parse(s1);
	CHECK(j != NULL);
	if (j) {
		const char *content = json_string_value(json_object_get(
		    json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"),
		    "content"));
		int words = 0;

		CHECK_EQ_STR(json_string_value(json_object_get(j, "object")), "chat.completion");
		CHECK(strncmp(json_string_value(json_object_get(j, "id")), "chatcmpl-", 9) == 0);
		CHECK_EQ_INT(strlen(json_string_value(json_object_get(j, "id"))), 9 + 16);
		CHECK_EQ_STR(json_string_value(json_object_get(j, "model")), "mock-llm");
		CHECK(json_integer_value(json_object_get(j, "created")) >= 1700000000);
		CHECK(content != NULL);
		for (const char *p = content; p && *p; p++)
			if (*p != ' ' && (p == content || p[-1] == ' '))
				words++;
		CHECK_EQ_INT(words, 16);
		CHECK_EQ_STR(
		    json_string_value(json_object_get(
			json_array_get(json_object_get(j, "choices"), 0), "finish_reason")),
		    "stop");
		json_t *u = json_object_get(j, "usage");
		CHECK_EQ_INT(json_integer_value(json_object_get(u, "prompt_tokens")), 7);
		CHECK_EQ_INT(json_integer_value(json_object_get(u, "completion_tokens")), 16);
		CHECK_EQ_INT(json_integer_value(json_object_get(u, "total_tokens")), 23);

		/* The stream spells the same text, role first, usage last, then [DONE]. */
		uint64_t rng = a.hash;
		char text[1024] = "";
		for (unsigned long i = 0; i < a.completion_tokens; i++) {
			CHECK_EQ_INT(mock_gen_chunk(b, &a, &rng, i), 0);
			char *ev = take(b);
			CHECK(strncmp(ev, "data: ", 6) == 0);
			CHECK(strcmp(ev + strlen(ev) - 2, "\n\n") == 0);
			json_t *c = parse(ev + 6);
			CHECK(c != NULL);
			if (c) {
				json_t *ch = json_array_get(json_object_get(c, "choices"), 0);
				json_t *d = json_object_get(ch, "delta");
				CHECK_EQ_STR(json_string_value(json_object_get(c, "object")),
					     "chat.completion.chunk");
				CHECK(json_is_null(json_object_get(ch, "finish_reason")));
				CHECK_EQ_INT(json_object_get(d, "role") != NULL, i == 0);
				strncat(text, json_string_value(json_object_get(d, "content")),
					sizeof text - strlen(text) - 1);
				json_decref(c);
			}
			free(ev);
		}
		CHECK_EQ_STR(text, content);
		CHECK_EQ_INT(mock_gen_final(b, &a, a.completion_tokens), 0);
		char *fin = take(b);
		char *done = strstr(fin, "\n\ndata: [DONE]\n\n");
		CHECK(done != NULL && done[16] == 0);
		if (done) {
			*done = 0;
			json_t *c = parse(fin + 6);
			CHECK(c != NULL);
			if (c) {
				json_t *ch = json_array_get(json_object_get(c, "choices"), 0);
				CHECK_EQ_STR(
				    json_string_value(json_object_get(ch, "finish_reason")),
				    "stop");
				CHECK_EQ_INT(json_object_size(json_object_get(ch, "delta")), 0);
				CHECK_EQ_INT(json_integer_value(json_object_get(
						 json_object_get(c, "usage"), "total_tokens")),
					     23);
				json_decref(c);
			}
		}
		free(fin);
		json_decref(j);
	}
	free(s1);
	free(s2);

	/* Another body, another answer; the text-completion shape. */
	struct mock_answer t = {MOCK_TEXT, mock_gen_hash("other", 5), "m\\\"q", 1, 3};
	CHECK_EQ_INT(mock_gen_completion(b, &t), 0);
	s1 = take(b);
	j = parse(s1);
	CHECK(j != NULL);
	if (j) {
		json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
		CHECK_EQ_STR(json_string_value(json_object_get(j, "object")), "text_completion");
		CHECK(strncmp(json_string_value(json_object_get(j, "id")), "cmpl-", 5) == 0);
		CHECK_EQ_STR(json_string_value(json_object_get(j, "model")), "m\"q");
		CHECK(json_is_string(json_object_get(ch, "text")));
		CHECK(json_object_get(ch, "message") == NULL);
		json_decref(j);
	}
	free(s1);

	/* Zero tokens: the final chunk still carries the role. */
	struct mock_answer z = {MOCK_CHAT, 1, "m", 1, 0};
	CHECK_EQ_INT(mock_gen_final(b, &z, 0), 0);
	s1 = take(b);
	CHECK(strstr(s1, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}") != NULL);
	free(s1);
	evbuffer_free(b);
}

static void test_embeddings(void)
{
	struct evbuffer *b = evbuffer_new();
	char *s;
	json_t *j;

	CHECK_EQ_INT(mock_gen_embeddings(b, mock_gen_hash("x", 1), "mock-embed", 3, 5), 0);
	s = take(b);
	j = parse(s);
	CHECK(j != NULL);
	if (j) {
		json_t *data = json_object_get(j, "data");
		CHECK_EQ_STR(json_string_value(json_object_get(j, "object")), "list");
		CHECK_EQ_INT(json_array_size(data), 3);
		for (size_t i = 0; i < json_array_size(data); i++) {
			json_t *e = json_array_get(data, i);
			json_t *v = json_object_get(e, "embedding");
			double norm = 0;

			CHECK_EQ_STR(json_string_value(json_object_get(e, "object")), "embedding");
			CHECK_EQ_INT(json_integer_value(json_object_get(e, "index")), i);
			CHECK_EQ_INT(json_array_size(v), MOCK_EMBED_DIM);
			for (size_t d = 0; d < json_array_size(v); d++)
				norm += json_real_value(json_array_get(v, d)) *
					json_real_value(json_array_get(v, d));
			CHECK(fabs(norm - 1.0) < 1e-4);
		}
		CHECK(!json_equal(json_object_get(json_array_get(data, 0), "embedding"),
				  json_object_get(json_array_get(data, 1), "embedding")));
		CHECK_EQ_INT(json_integer_value(
				 json_object_get(json_object_get(j, "usage"), "prompt_tokens")),
			     5);
		json_decref(j);
	}
	free(s);
	evbuffer_free(b);
}

int main(void)
{
	CHECK(mock_gen_hash("a", 1) != mock_gen_hash("b", 1));
	CHECK_EQ_INT(mock_gen_hash("", 0), 14695981039346656037ULL);
	test_completion();
	test_embeddings();
	return check_done();
}
