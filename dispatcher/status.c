/* JSON views of the live endpoints; never includes an API key. */
#include "status.h"

#include <jansson.h>

static const char *health_name(int h)
{
	return h < 0 ? "unknown" : h ? "passing" : "failing";
}

static char *dump(json_t *o)
{
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	return s;
}

char *status_endpoints_json(struct backend *const *bs, int n, const struct breaker_config *c,
			    int64_t now_us)
{
	json_t *arr = json_array();
	for (int i = 0; arr && i < n; i++) {
		const struct backend *b = bs[i];
		json_t *models = json_array(), *live = b->live_known ? json_array() : json_null();
		for (int j = 0; models && j < b->ep.nmodels; j++)
			json_array_append_new(models, json_string(b->ep.models[j]));
		for (int j = 0; b->live_known && live && j < b->nlive; j++)
			json_array_append_new(live, json_string(b->live_models[j]));
		json_array_append_new(
		    arr,
		    json_pack("{s:s, s:s, s:s, s:s, s:o*, s:o*, s:i, s:i, s:i, s:i, s:s, s:s, s:s, "
			      "s:I, s:I, s:{s:i, s:I, s:I, s:I}}",
			      "name", b->ep.name, "url", b->ep.url, "cluster", b->ep.cluster,
			      "framework", b->ep.framework, "models", models, "live_models", live,
			      "weight", b->ep.weight, "max_concurrent", b->ep.max_concurrent,
			      "inflight", b->pool.inflight, "queued", b->nqueue, "health",
			      health_name(b->health_ok), "health_detail", b->health_why, "circuit",
			      breaker_state_name(b->br.state), "requests", (json_int_t)b->requests,
			      "failures", (json_int_t)b->failures, "connections", "idle",
			      b->pool.nidle, "opened", (json_int_t)b->pool.opened, "reused",
			      (json_int_t)b->pool.reused, "resent", (json_int_t)b->pool.stale));
	}
	return dump(json_pack("{s:o*}", "endpoints", arr));
}

char *status_circuits_json(struct backend *const *bs, int n, const struct breaker_config *c,
			   int64_t now_us)
{
	json_t *arr = json_array();
	for (int i = 0; arr && i < n; i++) {
		const struct backend *b = bs[i];
		int ok = 0, bad = 0;
		breaker_window(&b->br, c, now_us, &ok, &bad);
		long long retry_in = 0;
		if (b->br.state == BREAKER_OPEN) {
			retry_in =
			    (b->br.opened_us + (long long)c->cooldown_ms * 1000 - now_us) / 1000;
			if (retry_in < 0)
				retry_in = 0;
		}
		json_array_append_new(
		    arr, json_pack("{s:s, s:s, s:I, s:s, s:i, s:i, s:i, s:I, s:I, s:i}", "endpoint",
				   b->ep.name, "state", breaker_state_name(b->br.state), "since_ms",
				   (json_int_t)((now_us - b->br.changed_us) / 1000), "reason",
				   b->br.why, "consecutive_failures", b->br.consecutive,
				   "window_ok", ok, "window_failures", bad, "opens",
				   (json_int_t)b->br.opens, "retry_in_ms", (json_int_t)retry_in,
				   "halfopen_probes", b->br.probes));
	}
	return dump(json_pack("{s:o*, s:{s:i, s:i, s:i, s:i, s:i, s:i}}", "circuit_breakers", arr,
			      "settings", "failures", c->consecutive, "rate_pct", c->rate_pct,
			      "rate_min", c->rate_min, "window_ms", c->window_ms, "cooldown_ms",
			      c->cooldown_ms, "halfopen_probes", c->halfopen_max));
}
