/* The actor runtime every process shares: one libevent loop, signals through evsignal
 * (SIGTERM/SIGINT stop, SIGHUP reload), and the admin HTTP listener serving
 * /health, /ready and /metrics. */
#ifndef GW_RUNTIME_H
#define GW_RUNTIME_H

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stddef.h>

struct runtime {
	struct event_base *base;
	struct event *sig_term, *sig_int, *sig_hup;
	struct evhttp *admin;
	const char *service;
	int stopping;
	/* Service hooks; any may be NULL. */
	void (*on_stop)(void *arg);   /* begin graceful shutdown; call runtime_exit when done */
	void (*on_reload)(void *arg); /* SIGHUP */
	int (*ready)(void *arg, char *why,
		     size_t whycap); /* 1 ready; else why says what is missing */
	void *arg;
};

/* The usual start of `NAME serve`: loads .run/env (config_load_env_file), sets up
 * logging (GW_LOG_LEVEL, instance name), runtime_init, and the admin listener on
 * GW_ADMIN_LISTEN (default_admin when unset; "off" disables it). Logs what to fix
 * and returns -1 on failure: the caller exits 1. */
int runtime_setup(struct runtime *rt, const char *service, const char *default_admin);
/* Only logging and env file, for admin subcommands. */
int runtime_setup_cli(const char *service);

/* Creates the loop and signal events; logs with the service name. */
int runtime_init(struct runtime *rt, const char *service);
/* Starts the admin listener on "host:port" (GW_ADMIN_LISTEN). */
int runtime_admin_listen(struct runtime *rt, const char *hostport);
/* Serves /health, /ready and /metrics on an existing evhttp (ingress's main port). */
void runtime_admin_routes(struct runtime *rt, struct evhttp *http);
int runtime_run(struct runtime *rt);
/* Leaves the loop after the current callbacks. */
void runtime_exit(struct runtime *rt);
void runtime_free(struct runtime *rt);

/* Splits "host:port"; host is copied into hostbuf. */
int runtime_parse_hostport(const char *s, char *hostbuf, size_t hostcap, unsigned short *port);

#endif
