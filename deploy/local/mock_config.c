/* Settings of gw-mock-endpoint from GW_MOCK_* variables; a bad value stops startup
 * with a message naming the variable. */
#include "mock_config.h"

#include "config.h"
#include "log.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int mock_config_models(struct mock_config *c, const char *list)
{
	const char *p = list;

	c->nmodels = 0;
	while (*p) {
		const char *start, *end;
		size_t n;

		while (*p == ' ' || *p == '\t')
			p++;
		start = p;
		while (*p && *p != ',')
			p++;
		end = p;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if (*p == ',')
			p++;
		n = (size_t)(end - start);
		if (n == 0)
			continue;
		if (n > MOCK_MODEL_NAME_MAX) {
			log_error("GW_MOCK_MODELS: a model name is longer than 255 bytes");
			return -1;
		}
		for (size_t i = 0; i < n; i++) {
			if ((unsigned char)start[i] < 0x20 || start[i] == 0x7f) {
				log_error("GW_MOCK_MODELS: a model name holds a control character");
				return -1;
			}
		}
		if (c->nmodels == MOCK_MODELS_MAX) {
			log_error("GW_MOCK_MODELS: too many models", LI("max", MOCK_MODELS_MAX));
			return -1;
		}
		struct mock_model *m = &c->models[c->nmodels++];
		size_t jl = 0;

		memcpy(m->name, start, n);
		m->name[n] = 0;
		log_json_escape(m->json, sizeof m->json, &jl, m->name);
		m->json[jl] = 0;
	}
	if (c->nmodels == 0) {
		log_error("GW_MOCK_MODELS names no model", LS("value", list));
		return -1;
	}
	return 0;
}

int mock_config_rate(const char *s, unsigned long *ppm)
{
	char *end;
	double r;

	errno = 0;
	r = strtod(s, &end);
	if (errno || end == s || *end || !(r >= 0.0 && r <= 1.0))
		return -1;
	*ppm = (unsigned long)lround(r * 1e6);
	return 0;
}

int mock_config_find_model(const struct mock_config *c, const char *name)
{
	for (int i = 0; i < c->nmodels; i++)
		if (strcmp(c->models[i].name, name) == 0)
			return i;
	return -1;
}

int mock_config_load(struct mock_config *c)
{
	const char *listen = config_str("GW_MOCK_LISTEN", "127.0.0.1:8000");
	const char *rate = config_str("GW_MOCK_FAIL_RATE", "0");

	memset(c, 0, sizeof *c);
	if (strlen(listen) >= sizeof c->listen) {
		log_error("GW_MOCK_LISTEN is too long", LS("value", listen));
		return -1;
	}
	strcpy(c->listen, listen);
	if (mock_config_models(c, config_str("GW_MOCK_MODELS", "mock-llm,mock-embed")) < 0)
		return -1;
	if (config_int("GW_MOCK_LATENCY_MS", 0, 0, 600000, &c->latency_ms) < 0 ||
	    config_int("GW_MOCK_TOKEN_MS", 0, 0, 60000, &c->token_ms) < 0 ||
	    config_int("GW_MOCK_COMPLETION_TOKENS", 16, 0, 65536, &c->completion_tokens) < 0 ||
	    config_int("GW_MOCK_MAX_INFLIGHT", 10000, 1, 1000000, &c->max_inflight) < 0)
		return -1;
	if (mock_config_rate(rate, &c->fail_ppm) < 0) {
		log_error("GW_MOCK_FAIL_RATE must be a number from 0 to 1", LS("value", rate));
		return -1;
	}
	if (config_secret("GW_MOCK_API_KEY", &c->api_key, &c->api_key_len) < 0)
		return -1;
	if (c->api_key && c->api_key_len == 0) {
		log_error("GW_MOCK_API_KEY (or its file) is empty: unset it to disable the check");
		mock_config_free(c);
		return -1;
	}
	return 0;
}

void mock_config_free(struct mock_config *c)
{
	if (c->api_key) {
		/* Wipe before release: the key should not linger in freed heap. */
		volatile char *v = c->api_key;

		for (size_t i = 0; i < c->api_key_len; i++)
			v[i] = 0;
		free(c->api_key);
	}
	c->api_key = NULL;
	c->api_key_len = 0;
}
