/* The actor runtime: event loop, signals via evsignal, admin HTTP (/health, /ready,
 * /metrics). */
#include "runtime.h"
#include "config.h"
#include "log.h"
#include "audit.h"
#include "metrics.h"

#include <event2/keyvalq_struct.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct runtime *rt = arg;
	if (sig == SIGHUP) {
		log_info("SIGHUP: reloading");
		if (rt->on_reload)
			rt->on_reload(rt->arg);
		return;
	}
	if (rt->stopping) {
		log_warn("second stop signal: leaving now");
		event_base_loopbreak(rt->base);
		return;
	}
	rt->stopping = 1;
	log_info("stop signal: shutting down gracefully",
		 LS("signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"));
	if (rt->on_stop)
		rt->on_stop(rt->arg);
	else
		runtime_exit(rt);
}

int runtime_init(struct runtime *rt, const char *service)
{
	memset(rt, 0, sizeof *rt);
	rt->service = service;
	/* A peer closing a socket must be an error return, not a process kill. */
	signal(SIGPIPE, SIG_IGN);
	rt->base = event_base_new();
	if (!rt->base) {
		log_error("event_base_new failed");
		return -1;
	}
	rt->sig_term = evsignal_new(rt->base, SIGTERM, on_signal, rt);
	rt->sig_int = evsignal_new(rt->base, SIGINT, on_signal, rt);
	rt->sig_hup = evsignal_new(rt->base, SIGHUP, on_signal, rt);
	if (!rt->sig_term || !rt->sig_int || !rt->sig_hup || evsignal_add(rt->sig_term, NULL) ||
	    evsignal_add(rt->sig_int, NULL) || evsignal_add(rt->sig_hup, NULL)) {
		log_error("cannot install signal handlers");
		return -1;
	}
	return 0;
}

int runtime_parse_hostport(const char *s, char *host, size_t hostcap, unsigned short *port)
{
	const char *colon = strrchr(s, ':');
	if (!colon || colon == s)
		return -1;
	size_t hl = (size_t)(colon - s);
	if (s[0] == '[' && hl >= 2 && s[hl - 1] == ']') { /* [::1]:8080 */
		s++;
		hl -= 2;
	}
	if (hl >= hostcap)
		return -1;
	char *end;
	long p = strtol(colon + 1, &end, 10);
	if (*end || end == colon + 1 || p < 0 || p > 65535)
		return -1;
	memcpy(host, s, hl);
	host[hl] = 0;
	*port = (unsigned short)p;
	return 0;
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *ctype,
		       const char *body)
{
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	evbuffer_add(b, body, strlen(body));
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
	evhttp_send_reply(req, code, reason, b);
	evbuffer_free(b);
}

static void on_health(struct evhttp_request *req, void *arg)
{
	reply_text(req, 200, "OK", "application/json", "{\"status\":\"ok\"}\n");
}

static void on_ready(struct evhttp_request *req, void *arg)
{
	struct runtime *rt = arg;
	char why[256] = "";
	int ok = !rt->stopping && (!rt->ready || rt->ready(rt->arg, why, sizeof why));
	if (rt->stopping)
		snprintf(why, sizeof why, "shutting down");
	char body[512];
	char esc[400];
	size_t n = 0;
	log_json_escape(esc, sizeof esc, &n, why);
	esc[n] = 0;
	if (ok)
		snprintf(body, sizeof body, "{\"status\":\"ready\"}\n");
	else
		snprintf(body, sizeof body, "{\"status\":\"not ready\",\"reason\":\"%s\"}\n", esc);
	reply_text(req, ok ? 200 : 503, ok ? "OK" : "Service Unavailable", "application/json",
		   body);
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b = evbuffer_new();
	if (!b) {
		evhttp_send_error(req, 500, NULL);
		return;
	}
	metrics_render(b);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

void runtime_admin_routes(struct runtime *rt, struct evhttp *http)
{
	evhttp_set_cb(http, "/health", on_health, rt);
	evhttp_set_cb(http, "/ready", on_ready, rt);
	evhttp_set_cb(http, "/metrics", on_metrics, rt);
}

static void admin_fallback(struct evhttp_request *req, void *arg)
{
	reply_text(req, 404, "Not Found", "application/json", "{\"error\":\"not found\"}\n");
}

int runtime_admin_listen(struct runtime *rt, const char *hostport)
{
	char host[256];
	unsigned short port;
	if (runtime_parse_hostport(hostport, host, sizeof host, &port) != 0) {
		log_error("GW_ADMIN_LISTEN must be host:port", LS("value", hostport));
		return -1;
	}
	rt->admin = evhttp_new(rt->base);
	if (!rt->admin)
		return -1;
	evhttp_set_allowed_methods(rt->admin, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_timeout(rt->admin, 10);
	evhttp_set_max_headers_size(rt->admin, 16384);
	evhttp_set_max_body_size(rt->admin, 65536);
	runtime_admin_routes(rt, rt->admin);
	evhttp_set_gencb(rt->admin, admin_fallback, rt);
	if (!evhttp_bind_socket_with_handle(rt->admin, host, port)) {
		log_error("cannot listen on the admin address: is it in use? set GW_ADMIN_LISTEN",
			  LS("address", hostport));
		return -1;
	}
	log_info("admin listening", LS("address", hostport));
	return 0;
}

int runtime_setup_cli(const char *service)
{
	audit_set_service(service);
	log_init(service, config_instance(service));
	if (config_load_env_file() != 0)
		return -1;
	/* The instance may come from the env file. */
	log_init(service, config_instance(service));
	const char *lvl = config_str("GW_LOG_LEVEL", "info");
	enum log_level l;
	if (log_level_parse(lvl, &l) != 0) {
		log_error("GW_LOG_LEVEL must be debug, info, warn or error", LS("value", lvl));
		return -1;
	}
	log_set_level(l);
	return 0;
}

int runtime_setup(struct runtime *rt, const char *service, const char *default_admin)
{
	if (runtime_setup_cli(service) != 0 || runtime_init(rt, service) != 0)
		return -1;
	const char *admin = config_str("GW_ADMIN_LISTEN", default_admin);
	if (admin && strcmp(admin, "off") != 0 && runtime_admin_listen(rt, admin) != 0)
		return -1;
	return 0;
}

int runtime_run(struct runtime *rt)
{
	if (event_base_dispatch(rt->base) < 0) {
		log_error("event loop failed");
		return -1;
	}
	return 0;
}

void runtime_exit(struct runtime *rt)
{
	event_base_loopexit(rt->base, NULL);
}

void runtime_free(struct runtime *rt)
{
	if (rt->admin)
		evhttp_free(rt->admin);
	if (rt->sig_term)
		event_free(rt->sig_term);
	if (rt->sig_int)
		event_free(rt->sig_int);
	if (rt->sig_hup)
		event_free(rt->sig_hup);
	if (rt->base)
		event_base_free(rt->base);
	metrics_free();
	memset(rt, 0, sizeof *rt);
}
