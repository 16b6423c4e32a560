/* Deterministic answers of the mock endpoint: a body's FNV-1a hash seeds a tiny PRNG,
 * which picks the words and vectors, so the same body always gives the same bytes. */
#ifndef GW_MOCK_GEN_H
#define GW_MOCK_GEN_H

#include <event2/buffer.h>
#include <stddef.h>
#include <stdint.h>

#define MOCK_EMBED_DIM 8

enum mock_kind { MOCK_CHAT, MOCK_TEXT };

/* Everything one completion answer is derived from. model_json is the model name
 * already escaped for a JSON string (borrowed). */
struct mock_answer {
	enum mock_kind kind;
	uint64_t hash;
	const char *model_json;
	unsigned long prompt_tokens;
	unsigned long completion_tokens;
};

uint64_t mock_gen_hash(const void *buf, size_t len);
/* splitmix64: advances *state, returns the next value. */
uint64_t mock_gen_next(uint64_t *state);
/* The next word of the answer whose PRNG state is *state. */
const char *mock_gen_word(uint64_t *state);

/* The whole non-streamed answer. Returns 0, or -1 when out of memory. */
int mock_gen_completion(struct evbuffer *out, const struct mock_answer *a);
/* One SSE event "data: {chunk}\n\n" carrying token number index (0-based) drawn
 * from *rng (seeded with a->hash before the first token). */
int mock_gen_chunk(struct evbuffer *out, const struct mock_answer *a, uint64_t *rng,
		   unsigned long index);
/* The last chunk (finish_reason "stop" and usage) followed by "data: [DONE]\n\n".
 * sent is how many token chunks preceded it. */
int mock_gen_final(struct evbuffer *out, const struct mock_answer *a, unsigned long sent);
/* An embeddings list with items unit vectors of MOCK_EMBED_DIM. */
int mock_gen_embeddings(struct evbuffer *out, uint64_t hash, const char *model_json,
			unsigned long items, unsigned long prompt_tokens);

#endif
