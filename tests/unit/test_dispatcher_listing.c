/* Listings: /v1/models, list-endpoints and jobs shapes, gw-models filtering, FIRST
 * scoping, open circuits. */
#include "backend.h"
#include "check.h"
#include "listing.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static struct backend *mk(const char *name, const char *m1, const char *m2, const char *cluster,
			  const char *fw)
{
	struct backend *b = calloc(1, sizeof *b);
	snprintf(b->ep.name, sizeof b->ep.name, "%s", name);
	snprintf(b->ep.cluster, sizeof b->ep.cluster, "%s", cluster);
	snprintf(b->ep.framework, sizeof b->ep.framework, "%s", fw);
	b->ep.models = calloc(2, sizeof *b->ep.models);
	b->ep.models[b->ep.nmodels++] = strdup(m1);
	if (m2)
		b->ep.models[b->ep.nmodels++] = strdup(m2);
	b->health_ok = -1;
	return b;
}

static json_t *parse(char *s)
{
	json_t *j = json_loads(s ? s : "", 0, NULL);
	free(s);
	return j;
}

static char *ids(json_t *list)
{
	static char buf[512];
	size_t len = 0, i;
	json_t *v;
	buf[0] = 0;
	json_array_foreach(json_object_get(list, "data"), i, v) len +=
	    (size_t)snprintf(buf + len, sizeof buf - len, "%s%s", len ? "," : "",
			     json_string_value(json_object_get(v, "id")));
	return buf;
}

int main(void)
{
	struct backend *bs[3];
	bs[0] = mk("a", "m1", "m2", "polaris", "vllm");
	bs[1] = mk("b", "m1", "m3", "polaris", "vllm");
	bs[2] = mk("c", "m4", NULL, "sophia", "llama.cpp");

	CHECK(listing_allowed("*", "x"));
	CHECK(listing_allowed("a,b,c", "b"));
	CHECK(!listing_allowed("a,bb,c", "b"));
	CHECK(!listing_allowed("", "b"));
	CHECK(!listing_allowed(NULL, "b"));

	json_t *j = parse(listing_models(bs, 3, "*", "", "", 1700000000));
	CHECK_EQ_STR("list", json_string_value(json_object_get(j, "object")));
	CHECK_EQ_STR("m1,m2,m3,m4", ids(j));
	json_t *first = json_array_get(json_object_get(j, "data"), 0);
	CHECK_EQ_STR("model", json_string_value(json_object_get(first, "object")));
	CHECK_EQ_INT(1700000000, (int)json_integer_value(json_object_get(first, "created")));
	CHECK(json_is_string(json_object_get(first, "owned_by")));
	json_decref(j);
	/* Filtered by gw-models and by cluster; an open circuit hides its models. */
	j = parse(listing_models(bs, 3, "m1,m4", "", "", 0));
	CHECK_EQ_STR("m1,m4", ids(j));
	json_decref(j);
	j = parse(listing_models(bs, 3, "*", "sophia", "llama.cpp", 0));
	CHECK_EQ_STR("m4", ids(j));
	json_decref(j);
	bs[0]->br.state = BREAKER_OPEN;
	j = parse(listing_models(bs, 3, "*", "polaris", "", 0));
	CHECK_EQ_STR("m1,m3", ids(j));
	json_decref(j);

	j = parse(listing_endpoints(bs, 3, "m1,m2,m4"));
	json_t *pol = json_object_get(json_object_get(j, "clusters"), "polaris");
	CHECK_EQ_STR("/resource_server/polaris",
		     json_string_value(json_object_get(pol, "base_url")));
	json_t *vllm = json_object_get(json_object_get(pol, "frameworks"), "vllm");
	char *models = json_dumps(json_object_get(vllm, "models"), JSON_COMPACT);
	CHECK_EQ_STR("[\"m1\",\"m2\"]", models);
	free(models);
	CHECK_EQ_STR(
	    "/resource_server/polaris/vllm/v1/chat/completions/",
	    json_string_value(json_object_get(json_object_get(vllm, "endpoints"), "chat")));
	CHECK(json_object_get(
		  json_object_get(json_object_get(json_object_get(j, "clusters"), "sophia"),
				  "frameworks"),
		  "llama.cpp") != NULL);
	json_decref(j);

	j = parse(listing_jobs(bs, 3, "*", "polaris"));
	CHECK_EQ_INT(1, (int)json_array_size(json_object_get(j, "running")));
	CHECK_EQ_INT(1, (int)json_array_size(json_object_get(j, "stopped")));
	CHECK_EQ_INT(0, (int)json_array_size(json_object_get(j, "queued")));
	json_t *run = json_array_get(json_object_get(j, "running"), 0);
	CHECK_EQ_STR("m1,m3", json_string_value(json_object_get(run, "Models")));
	CHECK_EQ_STR("b", json_string_value(json_object_get(run, "Endpoint")));
	CHECK_EQ_STR("running", json_string_value(json_object_get(run, "Model Status")));
	CHECK_EQ_STR("a", json_string_value(json_object_get(
			      json_array_get(json_object_get(j, "stopped"), 0), "Endpoint")));
	json_decref(j);
	/* A failing health check also counts as stopped. */
	bs[0]->br.state = BREAKER_CLOSED;
	bs[1]->health_ok = 0;
	j = parse(listing_jobs(bs, 3, "m3", ""));
	CHECK_EQ_INT(0, (int)json_array_size(json_object_get(j, "running")));
	CHECK_EQ_INT(1, (int)json_array_size(json_object_get(j, "stopped")));
	json_decref(j);
	for (int i = 0; i < 3; i++) {
		for (int k = 0; k < bs[i]->ep.nmodels; k++)
			free(bs[i]->ep.models[k]);
		free(bs[i]->ep.models);
		free(bs[i]);
	}
	return check_done();
}
