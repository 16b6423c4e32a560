/* Endpoint registry: validation of every field, https refusal, duplicates, unknown
 * fields, API key files, and routing by model in file order. */
#include "check.h"
#include "registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char err[1024];

static int parse(struct registry *r, const char *json)
{
	err[0] = 0;
	return registry_parse(r, json, strlen(json), err, sizeof err);
}

/* Parses json expecting a failure whose message contains want. */
static int fails_with(const char *json, const char *want)
{
	struct registry r;
	if (parse(&r, json) == 0) {
		registry_free(&r);
		printf("accepted: %s\n", json);
		return 0;
	}
	if (!strstr(err, want)) {
		printf("error \"%s\" lacks \"%s\"\n", err, want);
		return 0;
	}
	return r.n == 0 && r.eps == NULL;
}

#define EP(fields) "{\"endpoints\":[{" fields "}]}"
#define BASE       "\"name\":\"a\",\"models\":[\"m\"],"

static void test_valid(void)
{
	struct registry r;
	const char *json =
	    "{\"endpoints\":[{\"name\":\"mock\",\"url\":\"http://127.0.0.1:8000/\","
	    "\"models\":[\"mock-llm\",\"mock-embed\"],\"cluster\":\"local\","
	    "\"framework\":\"vllm\",\"weight\":3,\"max_concurrent\":64,\"timeout_ms\":120000},"
	    "{\"name\":\"b.2\",\"url\":\"http://[::1]:9000/prefix\",\"models\":[\"x\"]},"
	    "{\"name\":\"c_3\",\"url\":\"http://gpu-node-1.example.org\",\"models\":[\"x\","
	    "\"mock-llm\"]}]}";
	CHECK_EQ_INT(parse(&r, json), 0);
	CHECK_EQ_INT(r.n, 3);
	if (r.n != 3)
		return;
	struct endpoint *a = &r.eps[0], *b = &r.eps[1], *c = &r.eps[2];
	CHECK_EQ_STR(a->name, "mock");
	CHECK_EQ_STR(a->url, "http://127.0.0.1:8000");
	CHECK_EQ_STR(a->host, "127.0.0.1");
	CHECK_EQ_STR(a->host_header, "127.0.0.1:8000");
	CHECK_EQ_INT(a->port, 8000);
	CHECK_EQ_STR(a->base_path, "");
	CHECK_EQ_INT(a->nmodels, 2);
	CHECK_EQ_STR(a->models[1], "mock-embed");
	CHECK_EQ_STR(a->cluster, "local");
	CHECK_EQ_STR(a->framework, "vllm");
	CHECK_EQ_INT(a->weight, 3);
	CHECK_EQ_INT(a->max_concurrent, 64);
	CHECK_EQ_INT(a->timeout_ms, 120000);
	CHECK(a->api_key == NULL);
	CHECK_EQ_STR(b->host, "::1");
	CHECK_EQ_STR(b->host_header, "[::1]:9000");
	CHECK_EQ_INT(b->port, 9000);
	CHECK_EQ_STR(b->base_path, "/prefix");
	/* Defaults. */
	CHECK_EQ_INT(b->weight, 1);
	CHECK_EQ_INT(b->max_concurrent, 64);
	CHECK_EQ_INT(b->timeout_ms, 120000);
	CHECK_EQ_STR(b->framework, "openai");
	CHECK_EQ_STR(b->cluster, "");
	CHECK_EQ_INT(c->port, 80);
	CHECK_EQ_STR(c->host, "gpu-node-1.example.org");

	/* Model names match exactly. */
	CHECK(registry_endpoint_serves(a, "mock-embed"));
	CHECK(!registry_endpoint_serves(a, ""));
	CHECK(!registry_endpoint_serves(a, "mock-llm "));
	CHECK(registry_endpoint_serves(c, "mock-llm"));
	CHECK(!registry_endpoint_serves(b, "mock-llm"));
	registry_free(&r);
	CHECK(r.eps == NULL && r.n == 0);
}

static void test_missing(void)
{
	CHECK(fails_with(EP("\"url\":\"http://h:1\",\"models\":[\"m\"]"),
			 "missing required field \"name\""));
	CHECK(
	    fails_with(EP("\"name\":\"a\",\"models\":[\"m\"]"), "missing required field \"url\""));
	CHECK(fails_with(EP("\"name\":\"a\",\"url\":\"http://h:1\""),
			 "missing required field \"models\""));
	CHECK(fails_with("{}", "missing required field \"endpoints\""));
	CHECK(fails_with("{\"endpoints\":[]}", "non-empty array"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:1\",\"models\":[]"), "duplicate"));
	CHECK(fails_with(EP("\"name\":\"a\",\"url\":\"http://h:1\",\"models\":[]"),
			 "non-empty array"));
	CHECK(fails_with(EP("\"name\":\"\",\"url\":\"http://h:1\",\"models\":[\"m\"]"),
			 "endpoints[0].name: must not be empty"));
	CHECK(fails_with(EP("\"name\":\"a b\",\"url\":\"http://h:1\",\"models\":[\"m\"]"),
			 "endpoints[0].name"));
	CHECK(fails_with(EP("\"name\":7,\"url\":\"http://h:1\",\"models\":[\"m\"]"),
			 "must be a string"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:1\",\"weight\":0"), "weight"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:1\",\"max_concurrent\":\"8\""),
			 "max_concurrent: must be an integer"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:1\",\"timeout_ms\":0"), "timeout_ms"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:1\",\"framework\":\"magic\""), "framework"));
	CHECK(fails_with(EP("\"name\":\"a\",\"url\":\"http://h:1\",\"models\":[\"m\",\"m\"]"),
			 "listed twice"));
	CHECK(
	    fails_with(EP("\"name\":\"a\",\"url\":\"http://h:1\",\"models\":[\"\"]"), "models[0]"));
	CHECK(fails_with("[1,2]", "top level must be an object"));
	CHECK(fails_with("{\"endpoints\":[1]}", "endpoints[0]: must be an object"));
	CHECK(fails_with("{\"endpoints\":[", "not valid JSON"));
	/* The second entry is the bad one: the message must point at it. */
	CHECK(
	    fails_with("{\"endpoints\":[{\"name\":\"a\",\"url\":\"http://h:1\",\"models\":[\"m\"]},"
		       "{\"name\":\"b\",\"url\":\"http://h:1\"}]}",
		       "endpoints[1]: missing required field \"models\""));
}

static void test_urls(void)
{
	struct registry r;
	CHECK_EQ_INT(0, parse(&r, EP(BASE "\"url\":\"https://gpu.example.org/v\"")));
	CHECK_EQ_INT(1, r.eps[0].https);
	CHECK_EQ_INT(443, r.eps[0].port);
	CHECK_EQ_STR("gpu.example.org", r.eps[0].host);
	CHECK_EQ_STR("/v", r.eps[0].base_path);
	/* Phase timeouts default to at most the total. */
	CHECK_EQ_INT(5000, r.eps[0].connect_timeout_ms);
	CHECK_EQ_INT(60000, r.eps[0].first_byte_timeout_ms);
	CHECK_EQ_INT(30000, r.eps[0].chunk_timeout_ms);
	registry_free(&r);
	CHECK_EQ_INT(0, parse(&r, EP(BASE "\"url\":\"http://h:1\",\"timeout_ms\":2000,"
					  "\"chunk_timeout_ms\":700")));
	CHECK_EQ_INT(2000, r.eps[0].connect_timeout_ms);
	CHECK_EQ_INT(2000, r.eps[0].first_byte_timeout_ms);
	CHECK_EQ_INT(700, r.eps[0].chunk_timeout_ms);
	CHECK_EQ_INT(0, r.eps[0].https);
	registry_free(&r);
	CHECK(fails_with(EP(BASE "\"url\":\"HTTPS://gpu.example.org\""),
			 "must start with http:// or https://"));
	CHECK(fails_with(EP(BASE "\"url\":\"https://h:1\",\"connect_timeout_ms\":0"),
			 "connect_timeout_ms: must be between"));
	CHECK(fails_with(EP(BASE "\"url\":\"ftp://h\""), "must start with http://"));
	CHECK(fails_with(EP(BASE "\"url\":\"127.0.0.1:8000\""), "must start with http://"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://\""), "has no host"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://:80\""), "has no host"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:0\""), "port must be 1-65535"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:65536\""), "port must be 1-65535"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:8x\""), "port must be 1-65535"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:\""), "port must be 1-65535"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://user:pw@h\""), "must not carry credentials"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h/v1?x=1\""), "query or fragment"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h /v1\""), "space or control"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h_x\""), "bad character in host"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://[::1\""), "bad IPv6"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://[zz]:80\""), "bad IPv6"));
	CHECK(fails_with(EP(BASE "\"url\":\"\""), "must not be empty"));
}

static void test_duplicates_unknown(void)
{
	CHECK(
	    fails_with("{\"endpoints\":[{\"name\":\"a\",\"url\":\"http://h:1\",\"models\":[\"m\"]},"
		       "{\"name\":\"a\",\"url\":\"http://h:2\",\"models\":[\"n\"]}]}",
		       "endpoints[1].name: \"a\" is already used by endpoints[0]"));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:1\",\"modles\":[\"m\"]"),
			 "unknown field \"modles\""));
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:1\",\"api_key\":\"secret\""),
			 "unknown field \"api_key\""));
	CHECK(fails_with(
	    "{\"endpoints\":[{\"name\":\"a\",\"url\":\"http://h:1\",\"models\":[\"m\"]}],"
	    "\"extra\":1}",
	    "unknown top-level field \"extra\""));
	/* Duplicate keys in one object would silently pick one value. */
	CHECK(fails_with(EP(BASE "\"url\":\"http://h:1\",\"url\":\"http://h:2\""), "duplicate"));
}

static void test_files(void)
{
	char dir[] = "/tmp/test_dispatcher_registryXXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	char keyf[256], regf[256], json[1024];
	snprintf(keyf, sizeof keyf, "%s/key", dir);
	snprintf(regf, sizeof regf, "%s/endpoints.json", dir);
	FILE *f = fopen(keyf, "w");
	CHECK(f != NULL);
	if (!f)
		return;
	fputs("sk-test-123\n", f);
	fclose(f);
	snprintf(json, sizeof json,
		 "{\"endpoints\":[{\"name\":\"k\",\"url\":\"http://h:1\",\"models\":[\"m\"],"
		 "\"api_key_file\":\"%s\"}]}",
		 keyf);
	f = fopen(regf, "w");
	CHECK(f != NULL);
	if (!f)
		return;
	fputs(json, f);
	fclose(f);
	struct registry r;
	CHECK_EQ_INT(registry_load(&r, regf, err, sizeof err), 0);
	CHECK_EQ_INT(r.n, 1);
	if (r.n == 1) {
		CHECK_EQ_STR(r.eps[0].api_key, "sk-test-123");
		CHECK_EQ_STR(r.eps[0].api_key_file, keyf);
	}
	registry_free(&r);

	/* A key file that is missing or empty is an error naming the field. */
	unlink(keyf);
	CHECK_EQ_INT(registry_load(&r, regf, err, sizeof err), -1);
	CHECK(strstr(err, "endpoints[0].api_key_file: cannot open") != NULL);
	CHECK(strstr(err, regf) != NULL);
	f = fopen(keyf, "w");
	if (f)
		fclose(f);
	CHECK_EQ_INT(registry_load(&r, regf, err, sizeof err), -1);
	CHECK(strstr(err, "is empty") != NULL);
	/* The key never appears in an error. */
	CHECK(strstr(err, "sk-test") == NULL);

	char missing[300];
	snprintf(missing, sizeof missing, "%s/nope.json", dir);
	CHECK_EQ_INT(registry_load(&r, missing, err, sizeof err), -1);
	CHECK(strstr(err, "GW_ENDPOINTS_FILE") != NULL && strstr(err, "cannot open") != NULL);
	CHECK_EQ_INT(registry_load(&r, dir, err, sizeof err), -1);
	CHECK(strstr(err, "not a regular file") != NULL);
	unlink(keyf);
	unlink(regf);
	rmdir(dir);
}

int main(void)
{
	test_valid();
	test_missing();
	test_urls();
	test_duplicates_unknown();
	test_files();
	return check_done();
}
