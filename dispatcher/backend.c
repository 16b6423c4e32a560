/* Endpoint runtime objects and their active health check (GET /v1/models). */
#include "backend.h"

#include "log.h"
#include "wire.h"

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEALTH_BODY_MAX (1 << 20)

static void live_free(struct backend *b)
{
	for (int i = 0; i < b->nlive; i++)
		free(b->live_models[i]);
	free(b->live_models);
	b->live_models = NULL;
	b->nlive = 0;
}

struct backend *backend_new(struct event_base *base, struct evdns_base *dns, void *ssl_ctx,
			    const struct upstream_pool_config *pc, struct endpoint *ep,
			    int64_t now_us)
{
	struct backend *b = calloc(1, sizeof *b);
	if (!b) {
		log_error("out of memory for an endpoint", LS("endpoint", ep->name));
		return NULL;
	}
	b->ep = *ep;
	memset(ep, 0, sizeof *ep); /* models and api_key now belong to b */
	b->refs = 1;
	b->health_ok = -1;
	TAILQ_INIT(&b->queue);
	breaker_init(&b->br, now_us);
	if (upstream_pool_init(&b->pool, base, dns, ssl_ctx, &b->ep, pc) != 0) {
		registry_endpoint_free(&b->ep);
		free(b);
		return NULL;
	}
	return b;
}

void backend_ref(struct backend *b)
{
	b->refs++;
}

void backend_unref(struct backend *b)
{
	if (--b->refs > 0)
		return;
	/* Cancelling reports back through health_done: nobody must be told any more. */
	b->health_fn = NULL;
	if (b->hreq)
		evhttp_cancel_request(b->hreq);
	upstream_conn_free(b->hconn);
	upstream_pool_free(&b->pool);
	live_free(b);
	registry_endpoint_free(&b->ep);
	free(b);
}

void backend_retire(struct backend *b)
{
	b->retired = 1;
	b->health_fn = NULL;
}

int backend_serves(const struct backend *b, const char *model)
{
	if (!registry_endpoint_serves(&b->ep, model))
		return 0;
	if (!b->live_known)
		return 1;
	for (int i = 0; i < b->nlive; i++)
		if (strcmp(b->live_models[i], model) == 0)
			return 1;
	return 0;
}

/* Reads {"data":[{"id":...},...]} into live_models; -1 when it is not that shape. */
static int parse_models(struct backend *b, const char *buf, size_t len)
{
	json_t *root = json_loadb(buf, len, 0, NULL);
	json_t *data = root ? json_object_get(root, "data") : NULL;
	if (!json_is_array(data)) {
		json_decref(root);
		return -1;
	}
	size_t n = json_array_size(data);
	char **list = calloc(n ? n : 1, sizeof *list);
	int k = 0;
	if (!list) {
		json_decref(root);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *id = json_object_get(json_array_get(data, i), "id");
		if (!json_is_string(id))
			continue;
		list[k] = strdup(json_string_value(id));
		if (!list[k])
			break;
		k++;
	}
	json_decref(root);
	live_free(b);
	b->live_models = list;
	b->nlive = k;
	b->live_known = 1;
	return 0;
}

static void health_done(struct evhttp_request *req, void *arg)
{
	struct backend *b = arg;
	b->hreq = NULL;
	int ok = 0;
	/* A failed check may leave the connection reset without evhttp calling it closed (a
	 * connect that never came up): the next check opens a new one. */
	if (b->hconn && (!req || evhttp_request_get_response_code(req) == 0))
		b->hconn->dead = 1;
	char why[128];
	int status = req ? evhttp_request_get_response_code(req) : 0;
	if (!req || status == 0) {
		snprintf(why, sizeof why, "GET /v1/models: no answer (unreachable or timed out)");
	} else if (status != 200) {
		snprintf(why, sizeof why, "GET /v1/models: status %d", status);
	} else {
		struct evbuffer *in = evhttp_request_get_input_buffer(req);
		size_t len = evbuffer_get_length(in);
		const char *data = len ? (const char *)evbuffer_pullup(in, -1) : "";
		if (len > HEALTH_BODY_MAX || !data || parse_models(b, data, len) != 0) {
			snprintf(why, sizeof why, "GET /v1/models: not an OpenAI model list");
		} else {
			ok = 1;
			snprintf(why, sizeof why, "GET /v1/models: %d models", b->nlive);
		}
	}
	b->health_ok = ok;
	snprintf(b->health_why, sizeof b->health_why, "%s", why);
	if (b->health_fn)
		b->health_fn(b, ok, why, b->health_arg);
}

void backend_health_tick(struct backend *b, int64_t now_us, int interval_ms, int timeout_ms)
{
	if (b->retired || b->hreq || now_us < b->next_check_us)
		return;
	b->next_check_us = now_us + (int64_t)interval_ms * 1000;
	if (b->hconn && b->hconn->dead) {
		upstream_conn_free(b->hconn);
		b->hconn = NULL;
	}
	if (!b->hconn) {
		b->hconn = upstream_conn_new(&b->pool);
		if (!b->hconn)
			return;
	}
	struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
	evhttp_connection_set_timeout_tv(b->hconn->evcon, &tv);
	struct evhttp_request *req = evhttp_request_new(health_done, b);
	if (!req) {
		log_error("cannot create a health check request", LS("endpoint", b->ep.name));
		return;
	}
	char uri[300];
	snprintf(uri, sizeof uri, "%s/v1/models", b->ep.base_path);
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	if (evhttp_add_header(h, "Host", b->ep.host_header) ||
	    (b->pool.auth && evhttp_add_header(h, "Authorization", b->pool.auth))) {
		evhttp_request_free(req);
		return;
	}
	b->hreq = req;
	if (evhttp_make_request(b->hconn->evcon, req, EVHTTP_REQ_GET, uri) != 0) {
		/* The request is gone either way; a fresh connection next time. */
		b->hreq = NULL;
		upstream_conn_free(b->hconn);
		b->hconn = NULL;
		log_warn("cannot start a health check", LS("endpoint", b->ep.name));
	}
}
