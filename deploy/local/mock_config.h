/* Settings of gw-mock-endpoint, read once from the environment (GW_MOCK_*). */
#ifndef GW_MOCK_CONFIG_H
#define GW_MOCK_CONFIG_H

#include <stddef.h>

#define MOCK_MODELS_MAX     64
#define MOCK_MODEL_NAME_MAX 255

struct mock_model {
	char name[MOCK_MODEL_NAME_MAX + 1];
	char json[2 * (MOCK_MODEL_NAME_MAX + 1)]; /* name escaped for a JSON string */
};

/* Owns api_key (malloc'd, freed by mock_config_free); everything else is inline. */
struct mock_config {
	char listen[256];
	struct mock_model models[MOCK_MODELS_MAX];
	int nmodels;
	long long latency_ms;
	long long token_ms;
	long long completion_tokens;
	long long max_inflight;
	/* Failures per million requests; accumulated so the sequence is deterministic. */
	unsigned long fail_ppm;
	char *api_key; /* never logged */
	size_t api_key_len;
};

/* Returns 0, or -1 after logging which variable is wrong. */
int mock_config_load(struct mock_config *c);
void mock_config_free(struct mock_config *c);

/* Parses a comma list of model names into c->models. Returns -1 (logged) when it
 * names none, too many, or one too long. Exposed for the unit test. */
int mock_config_models(struct mock_config *c, const char *list);
/* Parses a fraction in [0, 1] into parts per million; -1 on anything else. */
int mock_config_rate(const char *s, unsigned long *ppm);

/* Index of the model named name, or -1. */
int mock_config_find_model(const struct mock_config *c, const char *name);

#endif
