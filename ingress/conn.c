/* Client connections: a bufferevent filter in front of evhttp that enforces the
 * connection, header and body limits and rejects ambiguous framing itself, in OpenAI's
 * error shape, before evhttp (whose own error pages are HTML) sees the bytes. */
#include "conn.h"
#include "ingress.h"
#include "log.h"
#include "openai.h"
#include "wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

/* Connections per client address. Owned by the table; freed when n drops to 0. */
struct ipcount {
	char addr[64];
	int n;
	struct ipcount *next;
};

#define LINGER_MS 2000 /* how long a rejected connection may take to read its answer */

static size_t ip_bucket(const struct conn_table *t, const char *a)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *a; a++)
		h = (h ^ (unsigned char)*a) * 1099511628211ULL;
	return (size_t)(h % t->nips);
}

static int ip_add(struct conn_table *t, const char *addr, int delta)
{
	struct ipcount **pp = &t->ips[ip_bucket(t, addr)];
	for (; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->addr, addr) == 0)
			break;
	if (!*pp) {
		if (delta <= 0)
			return 0;
		struct ipcount *e = calloc(1, sizeof *e);
		if (!e)
			return -1;
		snprintf(e->addr, sizeof e->addr, "%s", addr);
		*pp = e;
	}
	struct ipcount *e = *pp;
	e->n += delta;
	int n = e->n;
	if (n <= 0) {
		*pp = e->next;
		free(e);
	}
	return n;
}

static void conn_unref(struct conn *c)
{
	if (--c->refs > 0)
		return;
	free(c->deferred);
	free(c);
}

static void count_reject(const char *reason)
{
	char labels[64];
	snprintf(labels, sizeof labels, "reason=\"%s\"", reason);
	metric_add(metric_get(METRIC_COUNTER, "gw_ingress_connections_rejected_total", labels,
			      "Connections answered and closed by the connection layer, by reason"),
		   1);
}

static void conn_flush_deferred(struct conn *c)
{
	if (!c->deferred || c->dead || c->inflight > 0)
		return;
	/* Complete requests evhttp has not read yet would be answered after ours. */
	if (c->fwd_bytes - evbuffer_get_length(bufferevent_get_input(c->bev)) < c->fwd_complete)
		return;
	/* evhttp's last answer may still sit in the filter: it goes first. */
	bufferevent_flush(c->bev, EV_WRITE, BEV_FLUSH);
	bufferevent_write(c->under, c->deferred, c->deferred_len);
	free(c->deferred);
	c->deferred = NULL;
	c->since_ms = wire_now_ms();
}

/* Queues a complete HTTP answer and stops reading; the janitor closes the connection
 * once it is written. Waits for earlier answers when requests are in flight on it. */
static void conn_reject(struct conn *c, int status, const char *code, const char *message,
			int retry_after)
{
	struct ingress *ig = c->ig;
	char id[GW_ID_HEX + 1];
	if (wire_id_new(id) != 0)
		snprintf(id, sizeof id, "%032d", 0);
	char *body = openai_error_json(message, openai_error_type(status), code, id);
	const char *reason = status == 400   ? "Bad Request"
			     : status == 408 ? "Request Timeout"
			     : status == 413 ? "Payload Too Large"
			     : status == 429 ? "Too Many Requests"
			     : status == 431 ? "Request Header Fields Too Large"
			     : status == 405 ? "Method Not Allowed"
			     : status == 501 ? "Not Implemented"
			     : status == 505 ? "HTTP Version Not Supported"
					     : "Service Unavailable";
	char ra[48] = "";
	if (retry_after > 0)
		snprintf(ra, sizeof ra, "Retry-After: %d\r\n", retry_after);
	char hsts[80];
	snprintf(hsts, sizeof hsts, "Strict-Transport-Security: max-age=%lld\r\n",
		 ig->cfg.hsts_max_age);
	char *out = NULL;
	int n = asprintf(&out,
			 "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
			 "Content-Length: %zu\r\nConnection: close\r\nX-Request-Id: %s\r\n"
			 "X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n%s%s\r\n%s",
			 status, reason, body ? strlen(body) : 0, id, ra, ig->tls ? hsts : "",
			 body ? body : "");
	free(body);
	c->state = CONN_REJECTED;
	c->since_ms = wire_now_ms();
	count_reject(code);
	front_count(ig, "other", status);
	log_info("connection rejected", LS("request_id", id), LS("client", c->addr),
		 LI("status", status), LS("reason", message));
	if (n < 0)
		return;
	/* Earlier requests on this connection answer first: ours waits until none is
	 * waiting for the pipeline and evhttp has read everything forwarded to it. */
	free(c->deferred);
	c->deferred = out;
	c->deferred_len = (size_t)n;
	conn_flush_deferred(c);
	if (c->deferred && c->kick)
		event_active(c->kick, 0, 0); /* again once evhttp has read what it was given */
}

static void conn_admit(struct conn *c)
{
	struct ingress *ig = c->ig;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	c->admitted = 1;
	c->fd = (int)bufferevent_getfd(c->under);
	if (c->fd >= 0 && (size_t)c->fd < ig->conns.nfd)
		ig->conns.byfd[c->fd] = c;
	if (c->fd >= 0 && getpeername(c->fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->addr,
				  sizeof c->addr);
		else if (ss.ss_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->addr,
				  sizeof c->addr);
	}
	if ((long long)ig->conns.count > ig->cfg.max_conns) {
		conn_reject(c, 503, "too_many_connections", "the gateway has too many connections",
			    1);
		return;
	}
	if (c->addr[0]) {
		int n = ip_add(&ig->conns, c->addr, 1);
		if (n < 0) {
			conn_reject(c, 503, "overloaded", "out of memory", 1);
			return;
		}
		c->counted_ip = 1;
		if (n > ig->cfg.max_conns_per_ip)
			conn_reject(c, 429, "too_many_connections_from_address",
				    "too many connections from your address", 1);
	}
}

static void request_forwarded(struct conn *c)
{
	c->requests++;
	c->fwd_complete = c->fwd_bytes;
	c->state = CONN_HEAD;
	head_reset(&c->head);
	c->since_ms = c->idle_ms = wire_now_ms();
}

static void forward(struct conn *c, struct evbuffer *src, struct evbuffer *dst, size_t n)
{
	evbuffer_remove_buffer(src, dst, n);
	c->fwd_bytes += n;
}

/* One line from src (without moving it); -1 when none is complete yet. */
static int next_line(struct evbuffer *src, size_t *len, size_t *raw)
{
	size_t eol_len = 0;
	struct evbuffer_ptr p = evbuffer_search_eol(src, NULL, &eol_len, EVBUFFER_EOL_CRLF);
	if (p.pos < 0)
		return -1;
	*len = (size_t)p.pos;
	*raw = (size_t)p.pos + eol_len;
	return 0;
}

static enum bufferevent_filter_result conn_in(struct evbuffer *src, struct evbuffer *dst,
					      ev_ssize_t limit, enum bufferevent_flush_mode mode,
					      void *ctx)
{
	struct conn *c = ctx;
	struct ingress *ig = c->ig;
	const struct head_limits lim = {(size_t)ig->cfg.max_header_bytes, (int)ig->cfg.max_headers,
					(uint64_t)ig->cfg.max_body};
	int moved = 0;
	if (!c->admitted)
		conn_admit(c);
	while (c->state < CONN_REJECTED && evbuffer_get_length(src) > 0) {
		size_t len, raw, avail = evbuffer_get_length(src);
		switch (c->state) {
		case CONN_HEAD:
		case CONN_TRAILER: {
			if (c->state == CONN_HEAD && c->head.bytes == 0 &&
			    !c->head.seen_request_line && c->requests > 0 &&
			    c->since_ms <= c->idle_ms)
				c->since_ms = wire_now_ms(); /* the next request's head begins */
			if (next_line(src, &len, &raw) != 0) {
				if (c->head.bytes + avail > lim.max_header_bytes)
					conn_reject(c, 431, "headers_too_large",
						    "request headers are too large", 0);
				goto out;
			}
			const char *line = (const char *)evbuffer_pullup(src, (ev_ssize_t)raw);
			if (c->state == CONN_TRAILER) {
				c->head.bytes += raw;
				if (c->head.bytes > lim.max_header_bytes) {
					conn_reject(c, 431, "headers_too_large",
						    "request trailers are too large", 0);
					goto out;
				}
				forward(c, src, dst, raw);
				moved = 1;
				if (len == 0)
					request_forwarded(c);
				break;
			}
			enum head_verdict v = head_line(&c->head, &lim, line, len, raw);
			if (v == HEAD_REJECT) {
				conn_reject(c, c->head.status, c->head.code, c->head.message, 0);
				goto out;
			}
			forward(c, src, dst, raw);
			moved = 1;
			if (v == HEAD_DONE) {
				c->since_ms = wire_now_ms();
				if (c->head.chunked) {
					c->state = CONN_CHUNK_SIZE;
					c->body_total = 0;
					c->head.bytes = 0; /* reused for the trailer's size */
				} else if (c->head.has_cl && c->head.content_length > 0) {
					c->state = CONN_BODY;
					c->remaining = c->head.content_length;
				} else {
					request_forwarded(c);
				}
			}
			break;
		}
		case CONN_BODY:
		case CONN_CHUNK_DATA: {
			size_t n = avail < c->remaining ? avail : (size_t)c->remaining;
			forward(c, src, dst, n);
			moved = 1;
			c->remaining -= n;
			if (c->remaining == 0) {
				if (c->state == CONN_BODY)
					request_forwarded(c);
				else
					c->state = CONN_CHUNK_CRLF;
			}
			break;
		}
		case CONN_CHUNK_SIZE:
		case CONN_CHUNK_CRLF: {
			uint64_t size;
			if (next_line(src, &len, &raw) != 0) {
				if (avail > 1024)
					conn_reject(c, 400, "bad_framing", "malformed chunked body",
						    0);
				goto out;
			}
			const char *line = (const char *)evbuffer_pullup(src, (ev_ssize_t)raw);
			if (c->state == CONN_CHUNK_CRLF) {
				if (len != 0) {
					conn_reject(c, 400, "bad_framing", "malformed chunked body",
						    0);
					goto out;
				}
				forward(c, src, dst, raw);
				moved = 1;
				c->state = CONN_CHUNK_SIZE;
				break;
			}
			if (raw > 1024 || check_chunk_size(line, len, &size) != 0) {
				conn_reject(c, 400, "bad_framing", "malformed chunk size", 0);
				goto out;
			}
			c->body_total += size;
			if (c->body_total > lim.max_body) {
				conn_reject(c, 413, "body_too_large", "request body is too large",
					    0);
				goto out;
			}
			forward(c, src, dst, raw);
			moved = 1;
			if (size == 0) {
				c->state = CONN_TRAILER;
			} else {
				c->state = CONN_CHUNK_DATA;
				c->remaining = size;
			}
			break;
		}
		default: goto out;
		}
	}
out:
	if (c->state >= CONN_REJECTED)
		evbuffer_drain(src, evbuffer_get_length(src));
	return moved ? BEV_OK : BEV_NEED_MORE;
}

static void conn_free_ctx(void *ctx)
{
	struct conn *c = ctx;
	struct ingress *ig = c->ig;
	c->dead = 1;
	if (c->under_cb)
		evbuffer_remove_cb_entry(bufferevent_get_output(c->under), c->under_cb);
	if (c->kick)
		event_free(c->kick);
	c->kick = NULL;
	if (c->closed_ev) {
		event_free(c->closed_ev);
		c->closed_ev = NULL;
	}
	if (c->fd >= 0 && (size_t)c->fd < ig->conns.nfd && ig->conns.byfd[c->fd] == c)
		ig->conns.byfd[c->fd] = NULL;
	if (c->prev)
		c->prev->next = c->next;
	else
		ig->conns.head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	ig->conns.count--;
	if (c->counted_ip)
		ip_add(&ig->conns, c->addr, -1);
	c->evcon = NULL;
	c->bev = c->under = NULL;
	conn_unref(c);
}

/* libevent 2.1's filter bufferevent moves bytes only on its own events: output added
 * while evhttp has writing disabled, or input that arrived while evhttp had reading
 * disabled (pipelined requests), would wait forever. The kick, run from the loop once
 * evhttp is done with its callback, pushes both along. */
static void conn_kick(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	if (c->dead || !c->bev)
		return;
	if (!c->admitted)
		conn_admit(c);
	size_t before = evbuffer_get_length(bufferevent_get_input(c->bev));
	bufferevent_flush(c->bev, EV_READ | EV_WRITE, BEV_NORMAL);
	if (evbuffer_get_length(bufferevent_get_input(c->bev)) > before)
		bufferevent_trigger(c->bev, EV_READ, 0);
	conn_flush_deferred(c);
}

static void conn_out_cb(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	struct conn *c = arg;
	if (c->kick && (info->n_added || info->n_deleted))
		event_active(c->kick, 0, 0);
}

static struct bufferevent *conn_bevcb(struct event_base *base, void *arg)
{
	struct ingress *ig = arg;
	struct bufferevent *under;
	struct conn *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	if (ig->tls) {
		SSL *ssl = SSL_new(ig->tls);
		if (!ssl) {
			free(c);
			return NULL;
		}
		under = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
						       BEV_OPT_CLOSE_ON_FREE);
		if (under)
			bufferevent_openssl_set_allow_dirty_shutdown(under, 1);
		else
			SSL_free(ssl);
	} else {
		under = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	}
	if (!under) {
		free(c);
		return NULL;
	}
	c->ig = ig;
	c->fd = -1;
	c->refs = 1;
	c->under = under;
	c->since_ms = c->idle_ms = wire_now_ms();
	c->bev =
	    bufferevent_filter_new(under, conn_in, NULL, BEV_OPT_CLOSE_ON_FREE, conn_free_ctx, c);
	if (!c->bev) {
		bufferevent_free(under);
		free(c);
		return NULL;
	}
	c->next = ig->conns.head;
	if (c->next)
		c->next->prev = c;
	ig->conns.head = c;
	ig->conns.count++;
	c->kick = event_new(base, -1, 0, conn_kick, c);
	if (!c->kick || !evbuffer_add_cb(bufferevent_get_output(c->bev), conn_out_cb, c) ||
	    !(c->under_cb = evbuffer_add_cb(bufferevent_get_output(under), conn_out_cb, c))) {
		log_error("out of memory setting up a connection");
		bufferevent_free(c->bev); /* conn_free_ctx unlinks and frees c */
		return NULL;
	}
	/* Admission (limits per address) once evhttp has given the bufferevent its socket. */
	event_active(c->kick, 0, 0);
	return c->bev;
}

struct conn *conn_of(struct ingress *ig, struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
	struct bufferevent *under = bev ? bufferevent_get_underlying(bev) : NULL;
	evutil_socket_t fd = under ? bufferevent_getfd(under) : -1;
	if (fd < 0 || (size_t)fd >= ig->conns.nfd)
		return NULL;
	struct conn *c = ig->conns.byfd[fd];
	return c && c->bev == bev ? c : NULL;
}

static void conn_on_closed(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	struct evhttp_connection *evcon = c->evcon;
	c->refs++;
	while (c->waiting)
		front_client_gone(c->ig, c->waiting, "connection closed by the client");
	int dead = c->dead;
	conn_unref(c);
	if (!dead && evcon)
		evhttp_connection_free(evcon);
}

void conn_attach(struct conn *c, struct pending *p, struct evhttp_connection *evcon)
{
	c->refs++;
	c->evcon = evcon;
	p->cn = c;
	p->cnext = c->waiting;
	c->waiting = p;
	if (c->inflight++ == 0 && c->fd >= 0) {
		if (!c->closed_ev)
			c->closed_ev = event_new(c->ig->rt.base, c->fd, EV_CLOSED | EV_PERSIST,
						 conn_on_closed, c);
		if (!c->closed_ev || event_add(c->closed_ev, NULL) != 0)
			log_warn("cannot watch the connection for the client leaving",
				 LS("request_id", p->id));
	}
}

void conn_detach(struct pending *p)
{
	struct conn *c = p->cn;
	if (!c)
		return;
	struct pending **pp = &c->waiting;
	while (*pp && *pp != p)
		pp = &(*pp)->cnext;
	if (*pp)
		*pp = p->cnext;
	p->cn = NULL;
	p->cnext = NULL;
	if (--c->inflight == 0) {
		c->idle_ms = wire_now_ms();
		if (c->closed_ev)
			event_del(c->closed_ev);
		conn_flush_deferred(c);
	}
	conn_unref(c);
}

size_t conn_output_len(struct conn *c)
{
	if (!c || c->dead)
		return 0;
	return evbuffer_get_length(bufferevent_get_output(c->bev)) +
	       evbuffer_get_length(bufferevent_get_output(c->under));
}

void conn_drop(struct conn *c)
{
	if (!c || c->dead || c->state == CONN_CLOSING)
		return;
	c->state = CONN_CLOSING;
	/* evhttp frees the connection on EOF; deferred so it happens from the loop. */
	bufferevent_trigger_event(c->bev, BEV_EVENT_EOF | BEV_EVENT_READING,
				  BEV_TRIG_DEFER_CALLBACKS);
}

void conn_sweep(struct ingress *ig, int64_t now)
{
	for (struct conn *c = ig->conns.head; c; c = c->next) {
		if (c->state == CONN_CLOSING)
			continue;
		if (c->state == CONN_REJECTED) {
			conn_flush_deferred(c);
			if (!c->deferred && c->inflight == 0 &&
			    (conn_output_len(c) == 0 || now - c->since_ms > LINGER_MS))
				conn_drop(c);
			continue;
		}
		if (c->inflight > 0)
			continue; /* waiting for our answer: the request deadline applies */
		if (c->state == CONN_HEAD && !c->head.seen_request_line && c->head.bytes == 0 &&
		    c->requests > 0) {
			if (now - c->idle_ms > ig->cfg.keepalive_ms && conn_output_len(c) == 0)
				conn_drop(c);
			continue;
		}
		if (c->state == CONN_HEAD) {
			if (now - c->since_ms > ig->cfg.header_timeout_ms)
				conn_reject(c, 408, "header_timeout",
					    "the request headers were not received in time", 0);
		} else if (now - c->since_ms > ig->cfg.body_timeout_ms) {
			conn_reject(c, 408, "body_timeout",
				    "the request body was not received in time", 0);
		}
	}
}

static double conns_fn(void *arg)
{
	struct ingress *ig = arg;
	return (double)ig->conns.count;
}

SSL_CTX *conn_tls_context(const char *cert, const char *key)
{
	char err[256] = "";
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx)
		goto fail;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
				     SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* TLS 1.2: forward-secret AEAD suites only (TLS 1.3 suites are all modern). */
	if (SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!SHA1") != 1)
		goto fail;
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		ERR_error_string_n(ERR_get_error(), err, sizeof err);
		log_error("cannot load the TLS certificate (GW_TLS_CERT_FILE: PEM chain)",
			  LS("path", cert), LS("error", err));
		goto out;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		ERR_error_string_n(ERR_get_error(), err, sizeof err);
		log_error("cannot load the TLS private key (GW_TLS_KEY_FILE: PEM)", LS("path", key),
			  LS("error", err));
		goto out;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		ERR_error_string_n(ERR_get_error(), err, sizeof err);
		log_error("the TLS private key does not match the certificate", LS("cert", cert),
			  LS("key", key), LS("error", err));
		goto out;
	}
	ERR_clear_error();
	return ctx;
fail:
	ERR_error_string_n(ERR_get_error(), err, sizeof err);
	log_error("cannot set up TLS", LS("error", err));
out:
	ERR_clear_error();
	if (ctx)
		SSL_CTX_free(ctx);
	return NULL;
}

void conn_tls_reload(struct ingress *ig)
{
	if (!ig->tls)
		return;
	SSL_CTX *ctx = conn_tls_context(ig->cfg.tls_cert, ig->cfg.tls_key);
	if (!ctx) {
		log_error("TLS reload failed: still serving the previous certificate",
			  LS("cert", ig->cfg.tls_cert));
		return;
	}
	/* Connections already open keep a reference to the old context. */
	SSL_CTX_free(ig->tls);
	ig->tls = ctx;
	log_info("TLS certificate reloaded", LS("cert", ig->cfg.tls_cert));
}

int conn_init(struct ingress *ig)
{
	struct rlimit rl;
	size_t nfd = 65536;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		nfd = rl.rlim_cur < (1u << 20) ? (size_t)rl.rlim_cur : (1u << 20);
	ig->conns.byfd = calloc(nfd, sizeof *ig->conns.byfd);
	ig->conns.nips = 4096;
	ig->conns.ips = calloc(ig->conns.nips, sizeof *ig->conns.ips);
	if (!ig->conns.byfd || !ig->conns.ips) {
		log_error("out of memory for the connection table");
		return -1;
	}
	ig->conns.nfd = nfd;
	if ((long long)nfd < ig->cfg.max_conns + 64)
		log_warn("GW_MAX_CONNECTIONS is above the open-file limit (ulimit -n)",
			 LI("max_connections", ig->cfg.max_conns), LI("nofile", (long long)nfd));
	if (ig->cfg.tls_cert[0] || ig->cfg.tls_key[0]) {
		if (!ig->cfg.tls_cert[0] || !ig->cfg.tls_key[0]) {
			log_error("set both GW_TLS_CERT_FILE and GW_TLS_KEY_FILE, or neither");
			return -1;
		}
		ig->tls = conn_tls_context(ig->cfg.tls_cert, ig->cfg.tls_key);
		if (!ig->tls)
			return -1;
	}
	evhttp_set_bevcb(ig->http, conn_bevcb, ig);
	metric_gauge_fn("gw_ingress_connections_open", NULL, "Client connections open", conns_fn,
			ig);
	return 0;
}

void conn_shutdown(struct ingress *ig)
{
	if (ig->tls)
		SSL_CTX_free(ig->tls);
	ig->tls = NULL;
	for (size_t i = 0; ig->conns.ips && i < ig->conns.nips; i++)
		while (ig->conns.ips[i]) {
			struct ipcount *e = ig->conns.ips[i];
			ig->conns.ips[i] = e->next;
			free(e);
		}
	free(ig->conns.ips);
	free(ig->conns.byfd);
	ig->conns.ips = NULL;
	ig->conns.byfd = NULL;
}
