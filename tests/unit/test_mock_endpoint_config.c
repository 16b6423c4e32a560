/* The mock endpoint's settings parsers: the model list (and its JSON escaping) and
 * the failure rate. */
#include "check.h"
#include "mock_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
	static struct mock_config c;
	unsigned long ppm;

	CHECK_EQ_INT(mock_config_models(&c, " a , b/c,,d\"e "), 0);
	CHECK_EQ_INT(c.nmodels, 3);
	CHECK_EQ_STR(c.models[0].name, "a");
	CHECK_EQ_STR(c.models[1].name, "b/c");
	CHECK_EQ_STR(c.models[2].name, "d\"e");
	CHECK_EQ_STR(c.models[2].json, "d\\\"e");
	CHECK_EQ_INT(mock_config_find_model(&c, "b/c"), 1);
	CHECK_EQ_INT(mock_config_find_model(&c, "b"), -1);
	CHECK_EQ_INT(mock_config_models(&c, " , "), -1);

	CHECK_EQ_INT(mock_config_rate("0", &ppm), 0);
	CHECK_EQ_INT(ppm, 0);
	CHECK_EQ_INT(mock_config_rate("0.25", &ppm), 0);
	CHECK_EQ_INT(ppm, 250000);
	CHECK_EQ_INT(mock_config_rate("1", &ppm), 0);
	CHECK_EQ_INT(ppm, 1000000);
	CHECK_EQ_INT(mock_config_rate("1.5", &ppm), -1);
	CHECK_EQ_INT(mock_config_rate("-0.1", &ppm), -1);
	CHECK_EQ_INT(mock_config_rate("nan", &ppm), -1);
	CHECK_EQ_INT(mock_config_rate("0.5x", &ppm), -1);

	/* Names: too long, control characters, too many. */
	{
		char list[MOCK_MODELS_MAX * 3 + 8] = "";
		char name[MOCK_MODEL_NAME_MAX + 2];

		memset(name, 'n', sizeof name - 1);
		name[sizeof name - 1] = 0;
		CHECK_EQ_INT(mock_config_models(&c, name), -1);
		name[sizeof name - 2] = 0; /* exactly the maximum */
		CHECK_EQ_INT(mock_config_models(&c, name), 0);
		CHECK_EQ_INT(mock_config_models(&c, "a,b\tc"), -1);
		CHECK_EQ_INT(mock_config_models(&c, "a,b\x01"
						    "c"),
			     -1);
		CHECK_EQ_INT(mock_config_models(&c, "ok,b\nc"), -1);
		CHECK_EQ_INT(mock_config_models(&c, "ok,b\x7f"), -1);
		CHECK_EQ_INT(mock_config_models(&c, "tab\t"), 0); /* trailing tab is trimmed */
		for (int i = 0; i < MOCK_MODELS_MAX; i++)
			strcat(list, "m,");
		CHECK_EQ_INT(mock_config_models(&c, list), 0);
		strcat(list, "x");
		CHECK_EQ_INT(mock_config_models(&c, list), -1);
	}

	/* The whole load from the environment. */
	{
		static struct mock_config l;
		const char *keyfile = "test_mock_endpoint_config.key";
		FILE *f;

		static const char *const vars[] = {
		    "GW_ENV_FILE",          "GW_MOCK_LISTEN",       "GW_MOCK_MODELS",
		    "GW_MOCK_LATENCY_MS",   "GW_MOCK_TOKEN_MS",     "GW_MOCK_COMPLETION_TOKENS",
		    "GW_MOCK_FAIL_RATE",    "GW_MOCK_MAX_INFLIGHT", "GW_MOCK_API_KEY",
		    "GW_MOCK_API_KEY_FILE",
		};

		/* Defaults are checked: nothing inherited may count. */
		for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
			unsetenv(vars[i]);
		CHECK_EQ_INT(mock_config_load(&l), 0);
		CHECK_EQ_STR(l.listen, "127.0.0.1:8000");
		CHECK_EQ_INT(l.nmodels, 2);
		CHECK_EQ_STR(l.models[1].name, "mock-embed");
		CHECK_EQ_INT(l.completion_tokens, 16);
		CHECK_EQ_INT(l.latency_ms, 0);
		CHECK_EQ_INT(l.fail_ppm, 0);
		CHECK(l.api_key == NULL);
		mock_config_free(&l);

		setenv("GW_MOCK_LATENCY_MS", "25", 1);
		setenv("GW_MOCK_FAIL_RATE", "0.1", 1);
		setenv("GW_MOCK_MODELS", "x", 1);
		f = fopen(keyfile, "w");
		CHECK(f != NULL);
		if (f) {
			fputs("secret\n", f);
			fclose(f);
		}
		setenv("GW_MOCK_API_KEY_FILE", keyfile, 1);
		CHECK_EQ_INT(mock_config_load(&l), 0);
		CHECK_EQ_INT(l.latency_ms, 25);
		CHECK_EQ_INT(l.fail_ppm, 100000);
		CHECK_EQ_INT(l.nmodels, 1);
		CHECK(l.api_key && strcmp(l.api_key, "secret") == 0 && l.api_key_len == 6);
		mock_config_free(&l);
		CHECK(l.api_key == NULL);

		setenv("GW_MOCK_API_KEY", "other", 1); /* both set: refused */
		CHECK_EQ_INT(mock_config_load(&l), -1);
		unsetenv("GW_MOCK_API_KEY");
		unsetenv("GW_MOCK_API_KEY_FILE");
		remove(keyfile);

		setenv("GW_MOCK_LATENCY_MS", "soon", 1);
		CHECK_EQ_INT(mock_config_load(&l), -1);
		setenv("GW_MOCK_LATENCY_MS", "-1", 1);
		CHECK_EQ_INT(mock_config_load(&l), -1);
		unsetenv("GW_MOCK_LATENCY_MS");
		setenv("GW_MOCK_COMPLETION_TOKENS", "65537", 1);
		CHECK_EQ_INT(mock_config_load(&l), -1);
		unsetenv("GW_MOCK_COMPLETION_TOKENS");
		setenv("GW_MOCK_FAIL_RATE", "often", 1);
		CHECK_EQ_INT(mock_config_load(&l), -1);
		unsetenv("GW_MOCK_FAIL_RATE");
		CHECK_EQ_INT(mock_config_load(&l), 0);
		mock_config_free(&l);
	}
	return check_done();
}
