/* Deterministic answers of the mock endpoint, written straight into an evbuffer in
 * OpenAI's response shapes (no JSON tree: this is the benchmark's hot path). */
#include "mock_gen.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

static const char *const words[64] = {
    "the",     "gateway", "routes",   "each",    "request", "through", "a",       "small",
    "stage",   "of",      "kafka",    "and",     "returns", "tokens",  "from",    "shared",
    "compute", "model",   "answer",   "quickly", "with",    "audit",   "trail",   "for",
    "every",   "client",  "while",    "limits",  "keep",    "load",    "fair",    "across",
    "nodes",   "in",      "cluster",  "when",    "one",     "fails",   "another", "takes",
    "over",    "so",      "nothing",  "is",      "lost",    "but",     "latency", "stays",
    "low",     "under",   "pressure", "as",      "queues",  "remain",  "bounded", "by",
    "design",  "then",    "streams",  "flow",    "back",    "to",      "waiting", "users",
};

/* A fixed creation time derived from the hash keeps answers byte-identical. */
static long long created_of(uint64_t hash)
{
	return 1700000000LL + (long long)(hash % 100000000u);
}

static const char *id_prefix(enum mock_kind kind)
{
	return kind == MOCK_CHAT ? "chatcmpl-" : "cmpl-";
}

uint64_t mock_gen_hash(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	uint64_t h = 14695981039346656037ULL;

	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 1099511628211ULL;
	}
	return h;
}

uint64_t mock_gen_next(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

const char *mock_gen_word(uint64_t *state)
{
	return words[mock_gen_next(state) >> 58];
}

/* Everything of a completion object before the first choice's own fields. */
static int add_head(struct evbuffer *out, const struct mock_answer *a, const char *object)
{
	int rc = evbuffer_add_printf(
	    out,
	    "{\"id\":\"%s%016" PRIx64 "\",\"object\":\"%s\",\"created\":%lld,"
	    "\"model\":\"%s\",\"choices\":[{\"index\":0,",
	    id_prefix(a->kind), a->hash, object, created_of(a->hash), a->model_json);

	return rc < 0 ? -1 : 0;
}

static int add_usage(struct evbuffer *out, const struct mock_answer *a)
{
	int rc = evbuffer_add_printf(out,
				     "\"usage\":{\"prompt_tokens\":%lu,\"completion_tokens\":%lu,"
				     "\"total_tokens\":%lu}",
				     a->prompt_tokens, a->completion_tokens,
				     a->prompt_tokens + a->completion_tokens);

	return rc < 0 ? -1 : 0;
}

static int add_str(struct evbuffer *out, const char *s)
{
	return evbuffer_add(out, s, strlen(s));
}

/* "data: " and the head of a streamed chunk. */
static int add_chunk_head(struct evbuffer *out, const struct mock_answer *a)
{
	if (add_str(out, "data: ") < 0)
		return -1;
	return add_head(out, a, a->kind == MOCK_CHAT ? "chat.completion.chunk" : "text_completion");
}

int mock_gen_completion(struct evbuffer *out, const struct mock_answer *a)
{
	int chat = a->kind == MOCK_CHAT;
	uint64_t rng = a->hash;

	if (add_head(out, a, chat ? "chat.completion" : "text_completion") < 0)
		return -1;
	if (add_str(out, chat ? "\"message\":{\"role\":\"assistant\",\"content\":\""
			      : "\"text\":\"") < 0)
		return -1;
	for (unsigned long i = 0; i < a->completion_tokens; i++) {
		if (i && evbuffer_add(out, " ", 1) < 0)
			return -1;
		if (add_str(out, mock_gen_word(&rng)) < 0)
			return -1;
	}
	if (add_str(out, chat ? "\"}," : "\",") < 0 ||
	    add_str(out, "\"logprobs\":null,\"finish_reason\":\"stop\"}],") < 0 ||
	    add_usage(out, a) < 0)
		return -1;
	return evbuffer_add(out, "}", 1);
}

int mock_gen_chunk(struct evbuffer *out, const struct mock_answer *a, uint64_t *rng,
		   unsigned long index)
{
	const char *sep = index ? " " : "";
	const char *word = mock_gen_word(rng);
	int rc;

	if (add_chunk_head(out, a) < 0)
		return -1;
	if (a->kind == MOCK_CHAT)
		rc = evbuffer_add_printf(out, "\"delta\":{%s\"content\":\"%s%s\"},",
					 index ? "" : "\"role\":\"assistant\",", sep, word);
	else
		rc = evbuffer_add_printf(out, "\"text\":\"%s%s\",", sep, word);
	if (rc < 0)
		return -1;
	return add_str(out, "\"logprobs\":null,\"finish_reason\":null}]}\n\n");
}

int mock_gen_final(struct evbuffer *out, const struct mock_answer *a, unsigned long sent)
{
	const char *body;

	if (a->kind == MOCK_TEXT)
		body = "\"text\":\"\",";
	else if (sent)
		body = "\"delta\":{},";
	else /* no token chunk came first: the role still has to reach the client */
		body = "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},";
	if (add_chunk_head(out, a) < 0 || add_str(out, body) < 0 ||
	    add_str(out, "\"logprobs\":null,\"finish_reason\":\"stop\"}],") < 0 ||
	    add_usage(out, a) < 0)
		return -1;
	return add_str(out, "}\n\ndata: [DONE]\n\n");
}

int mock_gen_embeddings(struct evbuffer *out, uint64_t hash, const char *model_json,
			unsigned long items, unsigned long prompt_tokens)
{
	int rc;

	if (add_str(out, "{\"object\":\"list\",\"data\":[") < 0)
		return -1;
	for (unsigned long i = 0; i < items; i++) {
		uint64_t rng = hash ^ (i * 0x9e3779b97f4a7c15ULL);
		double v[MOCK_EMBED_DIM], norm = 0;

		for (int d = 0; d < MOCK_EMBED_DIM; d++) {
			/* 53 random bits to [-1, 1). */
			v[d] = (double)(mock_gen_next(&rng) >> 11) * 0x1.0p-52 - 1.0;
			norm += v[d] * v[d];
		}
		norm = norm > 0 ? sqrt(norm) : 1.0;
		if (evbuffer_add_printf(out,
					"%s{\"object\":\"embedding\",\"index\":%lu,\"embedding\":[",
					i ? "," : "", i) < 0)
			return -1;
		for (int d = 0; d < MOCK_EMBED_DIM; d++)
			if (evbuffer_add_printf(out, "%s%.6f", d ? "," : "", v[d] / norm) < 0)
				return -1;
		if (evbuffer_add(out, "]}", 2) < 0)
			return -1;
	}
	rc = evbuffer_add_printf(
	    out, "],\"model\":\"%s\",\"usage\":{\"prompt_tokens\":%lu,\"total_tokens\":%lu}}",
	    model_json, prompt_tokens, prompt_tokens);
	return rc < 0 ? -1 : 0;
}
