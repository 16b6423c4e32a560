/* One-document HTTP(S) GET on the loop (see fetch.h). */
#include "fetch.h"
#include "log.h"
#include "tls.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Owns the parsed URL and the TLS context; the request under way is owned by evhttp. */
struct fetcher {
	struct event_base *base;
	struct evhttp_uri *uri;
	char host[256], path[1024];
	int port, https, timeout_ms;
	size_t max_body;
	SSL_CTX *ssl;
	/* The connection of the last fetch: freed before the next one or by fetch_free, never
	 * from its own callback. */
	struct evhttp_connection *conn;
	struct evhttp_request *req;
	fetch_done_fn done;
	void *arg;
};

struct fetcher *fetch_new(struct event_base *base, const char *url, int timeout_ms, size_t max_body,
			  fetch_done_fn done, void *arg)
{
	struct fetcher *f = calloc(1, sizeof *f);
	if (!f)
		return NULL;
	f->base = base;
	f->timeout_ms = timeout_ms;
	f->max_body = max_body;
	f->done = done;
	f->arg = arg;
	f->uri = evhttp_uri_parse(url);
	const char *scheme = f->uri ? evhttp_uri_get_scheme(f->uri) : NULL;
	const char *host = f->uri ? evhttp_uri_get_host(f->uri) : NULL;
	if (!scheme || !host || (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) ||
	    strlen(host) >= sizeof f->host) {
		log_error("not an http:// or https:// URL with a host", LS("url", url));
		fetch_free(f);
		return NULL;
	}
	f->https = strcmp(scheme, "https") == 0;
	snprintf(f->host, sizeof f->host, "%s", host);
	f->port = evhttp_uri_get_port(f->uri);
	if (f->port < 0)
		f->port = f->https ? 443 : 80;
	const char *path = evhttp_uri_get_path(f->uri), *q = evhttp_uri_get_query(f->uri);
	snprintf(f->path, sizeof f->path, "%s%s%s", path && *path ? path : "/", q ? "?" : "",
		 q ? q : "");
	if (f->https) {
		f->ssl = tls_client_ctx_new(NULL); /* fetch_ssl_ca may replace the store */
		if (!f->ssl) {
			log_error("cannot set up TLS", LS("url", url));
			fetch_free(f);
			return NULL;
		}
	}
	return f;
}

int fetch_ssl_ca(SSL_CTX *ctx, const char *ca_file, const char *what)
{
	X509_STORE *st = X509_STORE_new();
	if (!st || X509_STORE_load_file(st, ca_file) != 1) {
		unsigned long e = ERR_get_error();
		log_error("cannot load the CA file: check GW_AUTHZ_CA_FILE", LS("file", ca_file),
			  LS("for", what), LS("error", e ? ERR_reason_error_string(e) : "unknown"));
		ERR_clear_error();
		X509_STORE_free(st);
		return -1;
	}
	SSL_CTX_set_cert_store(ctx, st); /* takes st, frees the previous store */
	return 0;
}

int fetch_set_ca_file(struct fetcher *f, const char *ca_file)
{
	return f->ssl ? fetch_ssl_ca(f->ssl, ca_file, "GW_JWKS_URL") : 0;
}

void fetch_tls_error(struct evhttp_connection *conn, char *out, size_t cap)
{
	out[0] = 0;
	struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
	SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
	if (!ssl)
		return;
	long v = SSL_get_verify_result(ssl);
	if (v != X509_V_OK) {
		snprintf(out, cap, "TLS certificate verification failed: %s",
			 X509_verify_cert_error_string(v));
		return;
	}
	unsigned long e = bufferevent_get_openssl_error(bev);
	if (e) {
		char buf[256];
		ERR_error_string_n(e, buf, sizeof buf);
		snprintf(out, cap, "TLS error: %s", buf);
	}
}

static void on_response(struct evhttp_request *req, void *arg)
{
	struct fetcher *f = arg;
	f->req = NULL;
	int status = req ? evhttp_request_get_response_code(req) : 0;
	struct evbuffer *b = req ? evhttp_request_get_input_buffer(req) : NULL;
	size_t len = b ? evbuffer_get_length(b) : 0;
	char err[300] = "";
	if (status == 200 && len > f->max_body) {
		snprintf(err, sizeof err, "document too large (%zu bytes, at most %zu)", len,
			 f->max_body);
		status = 0;
		len = 0;
	} else if (status == 0) {
		fetch_tls_error(f->conn, err, sizeof err);
		if (!err[0])
			snprintf(err, sizeof err,
				 "no answer (connection refused, closed or timed "
				 "out)");
	} else if (status != 200) {
		snprintf(err, sizeof err, "HTTP status %d", status);
	}
	const char *body = len ? (const char *)evbuffer_pullup(b, -1) : "";
	f->done(f->arg, status, body ? body : "", body ? len : 0, err[0] ? err : NULL);
}

int fetch_start(struct fetcher *f)
{
	if (f->req)
		return 1;
	if (f->conn) {
		evhttp_connection_free(f->conn);
		f->conn = NULL;
	}
	struct bufferevent *bev = NULL;
	if (f->https) {
		bev = tls_client_bev(f->base, f->ssl, f->host,
				     BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		if (!bev) {
			log_error("cannot set up the TLS connection", LS("host", f->host));
			return -1;
		}
	}
	struct evhttp_connection *conn = evhttp_connection_base_bufferevent_new(
	    f->base, NULL, bev, f->host, (unsigned short)f->port);
	if (!conn) {
		if (bev)
			bufferevent_free(bev);
		log_error("cannot create the HTTP connection", LS("host", f->host));
		return -1;
	}
	evhttp_connection_set_timeout(conn, (f->timeout_ms + 999) / 1000);
	f->conn = conn;
	struct evhttp_request *req = evhttp_request_new(on_response, f);
	if (!req)
		return -1;
	evhttp_add_header(evhttp_request_get_output_headers(req), "Host", f->host);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Accept", "application/json");
	if (evhttp_make_request(conn, req, EVHTTP_REQ_GET, f->path) != 0) {
		log_error("cannot send the HTTP request", LS("host", f->host));
		return -1;
	}
	f->req = req;
	return 0;
}

int fetch_busy(const struct fetcher *f)
{
	return f && f->req != NULL;
}

void fetch_free(struct fetcher *f)
{
	if (!f)
		return;
	/* Frees a request under way too, without calling back. */
	if (f->conn)
		evhttp_connection_free(f->conn);
	if (f->uri)
		evhttp_uri_free(f->uri);
	if (f->ssl)
		SSL_CTX_free(f->ssl);
	free(f);
}
