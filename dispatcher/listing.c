/* Listing answers in the shapes FIRST clients expect (docs/CONTRACT.md). */
#include "listing.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

int listing_allowed(const char *allowed, const char *model)
{
	if (!allowed || !*allowed)
		return 0;
	if (strcmp(allowed, "*") == 0)
		return 1;
	size_t ml = strlen(model);
	for (const char *p = allowed; *p;) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == ml && memcmp(p, model, n) == 0)
			return 1;
		if (!e)
			break;
		p = e + 1;
	}
	return 0;
}

static int in_scope(const struct backend *b, const char *cluster, const char *framework)
{
	if (b->retired)
		return 0;
	if (cluster && *cluster && strcmp(b->ep.cluster, cluster) != 0)
		return 0;
	return !framework || !*framework || strcmp(b->ep.framework, framework) == 0;
}

static char *dump(json_t *o)
{
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	return s;
}

char *listing_models(struct backend *const *bs, int n, const char *allowed, const char *cluster,
		     const char *framework, long long created)
{
	json_t *data = json_array(), *seen = json_object();
	for (int i = 0; data && seen && i < n; i++) {
		const struct backend *b = bs[i];
		if (!in_scope(b, cluster, framework) || b->br.state == BREAKER_OPEN)
			continue;
		for (int j = 0; j < b->ep.nmodels; j++) {
			const char *m = b->ep.models[j];
			if (!backend_serves(b, m) || !listing_allowed(allowed, m) ||
			    json_object_get(seen, m))
				continue;
			json_object_set_new(seen, m, json_true());
			json_array_append_new(
			    data, json_pack("{s:s, s:s, s:I, s:s}", "id", m, "object", "model",
					    "created", (json_int_t)created, "owned_by",
					    b->ep.cluster[0] ? b->ep.cluster : "gateway"));
		}
	}
	json_decref(seen);
	return dump(json_pack("{s:s, s:o}", "object", "list", "data", data));
}

/* The endpoint's models the principal may use, as a JSON array. */
static json_t *allowed_models(const struct backend *b, const char *allowed)
{
	json_t *a = json_array();
	for (int j = 0; a && j < b->ep.nmodels; j++)
		if (backend_serves(b, b->ep.models[j]) && listing_allowed(allowed, b->ep.models[j]))
			json_array_append_new(a, json_string(b->ep.models[j]));
	return a;
}

char *listing_endpoints(struct backend *const *bs, int n, const char *allowed)
{
	json_t *clusters = json_object();
	for (int i = 0; clusters && i < n; i++) {
		const struct backend *b = bs[i];
		const char *c = b->ep.cluster[0] ? b->ep.cluster : "default";
		const char *f = b->ep.framework;
		if (b->retired)
			continue;
		json_t *models = allowed_models(b, allowed);
		if (!models || json_array_size(models) == 0) {
			json_decref(models);
			continue;
		}
		json_t *cl = json_object_get(clusters, c);
		if (!cl) {
			char base[128];
			snprintf(base, sizeof base, "/resource_server/%s", c);
			cl = json_pack("{s:s, s:{}}", "base_url", base, "frameworks");
			json_object_set_new(clusters, c, cl);
		}
		json_t *fws = json_object_get(cl, "frameworks");
		json_t *fw = fws ? json_object_get(fws, f) : NULL;
		if (!fw && fws) {
			char chat[256], comp[256], emb[256];
			snprintf(chat, sizeof chat, "/resource_server/%s/%s/v1/chat/completions/",
				 c, f);
			snprintf(comp, sizeof comp, "/resource_server/%s/%s/v1/completions/", c, f);
			snprintf(emb, sizeof emb, "/resource_server/%s/%s/v1/embeddings/", c, f);
			fw = json_pack("{s:[], s:{s:s, s:s, s:s}}", "models", "endpoints", "chat",
				       chat, "completion", comp, "embedding", emb);
			json_object_set_new(fws, f, fw);
		}
		json_t *list = fw ? json_object_get(fw, "models") : NULL;
		size_t k;
		json_t *m;
		json_array_foreach(models, k, m)
		{
			int dup = 0;
			size_t x;
			json_t *y;
			json_array_foreach(list, x, y) dup |= json_equal(y, m);
			if (list && !dup)
				json_array_append(list, m);
		}
		json_decref(models);
	}
	return dump(json_pack("{s:o}", "clusters", clusters));
}

char *listing_jobs(struct backend *const *bs, int n, const char *allowed, const char *cluster)
{
	json_t *running = json_array(), *stopped = json_array();
	for (int i = 0; running && stopped && i < n; i++) {
		const struct backend *b = bs[i];
		if (!in_scope(b, cluster, NULL))
			continue;
		char models[4096];
		size_t len = 0;
		models[0] = 0;
		for (int j = 0; j < b->ep.nmodels && len < sizeof models; j++)
			if (listing_allowed(allowed, b->ep.models[j]))
				len += (size_t)snprintf(models + len, sizeof models - len, "%s%s",
							len ? "," : "", b->ep.models[j]);
		if (!len)
			continue;
		int up = b->br.state != BREAKER_OPEN && b->health_ok != 0;
		json_array_append_new(up ? running : stopped,
				      json_pack("{s:s, s:s, s:s, s:s, s:s}", "Models", models,
						"Framework", b->ep.framework, "Cluster",
						b->ep.cluster, "Endpoint", b->ep.name,
						"Model Status", up ? "running" : "stopped"));
	}
	return dump(json_pack("{s:o, s:[], s:o, s:[]}", "running", running, "queued", "stopped",
			      stopped, "others"));
}
