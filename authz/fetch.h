/* A non-blocking HTTP GET of one document (the JWKS URL): evhttp client, http or https
 * with OpenSSL peer and host name verification, one fetch at a time, bounded size. */
#ifndef GW_AUTHZ_FETCH_H
#define GW_AUTHZ_FETCH_H

#include <event2/event.h>
#include <event2/http.h>
#include <openssl/ssl.h>
#include <stddef.h>

/* status 0 = no answer (connection failure, TLS verification failure, timeout), then
 * error says why; body valid for the call only. */
typedef void (*fetch_done_fn)(void *arg, int status, const char *body, size_t len,
			      const char *error);

struct fetcher;

/* NULL (logged, naming what) on a URL that is not http(s)://host... */
struct fetcher *fetch_new(struct event_base *base, const char *url, int timeout_ms, size_t max_body,
			  fetch_done_fn done, void *arg);
/* Verifies https peers against the CA certificates in this PEM file instead of the
 * system store. Returns 0, or -1 (logged) when the file cannot be loaded. No-op for
 * http URLs. */
int fetch_set_ca_file(struct fetcher *f, const char *ca_file);
/* Shared with introspect.c: replaces ctx's trust store with ca_file. 0 or -1 (logged,
 * naming `what`). */
int fetch_ssl_ca(SSL_CTX *ctx, const char *ca_file, const char *what);
/* Why a call on conn failed at the TLS level, for the log: the certificate verification
 * error, else the OpenSSL error; "" when neither (plain http, refused, timeout). */
void fetch_tls_error(struct evhttp_connection *conn, char *out, size_t cap);

/* Starts a GET unless one is under way. Returns 0 started, 1 busy, -1 failed (logged). */
int fetch_start(struct fetcher *f);
/* 1 while a GET is under way. */
int fetch_busy(const struct fetcher *f);
void fetch_free(struct fetcher *f);

#endif
