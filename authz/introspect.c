/* RFC 7662 introspection client and its cache. The token leaves this process only in
 * the POST body to the introspection endpoint; the cache holds its SHA-256 alone. */
#include "introspect.h"
#include "fetch.h"
#include "log.h"
#include "tls.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Owns the cache entries, the URL parts, the TLS context and the secret. */
struct introspect {
	struct event_base *base;
	introspect_done_fn done;
	struct evhttp_uri *uri;
	char host[256], path[1024], auth[1024];
	int port, https, timeout_ms;
	SSL_CTX *ssl;
	struct intro_entry **buckets;
	size_t nbuckets, count, max;
	/* Connections of finished calls: freed by the next tick, never from their own
	 * callback. */
	struct evhttp_connection **dead;
	size_t ndead, capdead;
};

static void reap(struct introspect *in)
{
	for (size_t i = 0; i < in->ndead; i++)
		evhttp_connection_free(in->dead[i]);
	in->ndead = 0;
}

static void retire_conn(struct introspect *in, struct intro_entry *e)
{
	if (!e->conn)
		return;
	if (in->ndead == in->capdead) {
		size_t cap = in->capdead ? 2 * in->capdead : 16;
		struct evhttp_connection **n = realloc(in->dead, cap * sizeof *n);
		if (!n) {
			/* Rare: let libevent free it once it is idle. */
			evhttp_connection_free_on_completion(e->conn);
			e->conn = NULL;
			return;
		}
		in->dead = n;
		in->capdead = cap;
	}
	in->dead[in->ndead++] = e->conn;
	e->conn = NULL;
}

static void sha256_hex(const void *data, size_t len, char out[65])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[32];
	unsigned int n = 0;
	out[0] = 0;
	if (EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) != 1 || n != 32)
		return;
	for (int i = 0; i < 32; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[64] = 0;
}

struct introspect *introspect_new(struct event_base *base, const struct introspect_config *cfg,
				  introspect_done_fn done)
{
	struct introspect *in = calloc(1, sizeof *in);
	if (!in)
		return NULL;
	in->base = base;
	in->done = done;
	in->timeout_ms = cfg->timeout_ms;
	in->max = cfg->max_entries;
	in->nbuckets = 1024;
	while (in->nbuckets < in->max / 2 && in->nbuckets < (1u << 24))
		in->nbuckets <<= 1;
	in->buckets = calloc(in->nbuckets, sizeof *in->buckets);
	in->uri = evhttp_uri_parse(cfg->url);
	const char *scheme = in->uri ? evhttp_uri_get_scheme(in->uri) : NULL;
	const char *host = in->uri ? evhttp_uri_get_host(in->uri) : NULL;
	if (!in->buckets || !scheme || !host ||
	    (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) ||
	    strlen(host) >= sizeof in->host) {
		log_error("GW_INTROSPECTION_URL must be an http:// or https:// URL with a host");
		introspect_free(in);
		return NULL;
	}
	in->https = strcmp(scheme, "https") == 0;
	snprintf(in->host, sizeof in->host, "%s", host);
	in->port = evhttp_uri_get_port(in->uri);
	if (in->port < 0)
		in->port = in->https ? 443 : 80;
	const char *path = evhttp_uri_get_path(in->uri), *q = evhttp_uri_get_query(in->uri);
	snprintf(in->path, sizeof in->path, "%s%s%s", path && *path ? path : "/", q ? "?" : "",
		 q ? q : "");
	/* client_secret_basic (RFC 6749 2.3.1). */
	char cred[768];
	int n = snprintf(cred, sizeof cred, "%s:%s", cfg->client_id, cfg->client_secret);
	if (n <= 0 || (size_t)n >= sizeof cred || (size_t)(n + 2) / 3 * 4 + 7 > sizeof in->auth) {
		OPENSSL_cleanse(cred, sizeof cred);
		log_error("introspection client id and secret are too long");
		introspect_free(in);
		return NULL;
	}
	memcpy(in->auth, "Basic ", 6);
	EVP_EncodeBlock((unsigned char *)in->auth + 6, (unsigned char *)cred, n);
	OPENSSL_cleanse(cred, sizeof cred);
	if (in->https) {
		in->ssl = tls_client_ctx_new(NULL); /* introspect_set_ca_file may replace it */
		if (!in->ssl) {
			log_error("cannot set up TLS for GW_INTROSPECTION_URL");
			introspect_free(in);
			return NULL;
		}
	}
	return in;
}

int introspect_set_ca_file(struct introspect *in, const char *ca_file)
{
	return in->ssl ? fetch_ssl_ca(in->ssl, ca_file, "GW_INTROSPECTION_URL") : 0;
}

static void entry_free(struct intro_entry *e)
{
	free(e->waiters);
	free(e);
}

void introspect_free(struct introspect *in)
{
	if (!in)
		return;
	for (size_t i = 0; in->buckets && i < in->nbuckets; i++)
		for (struct intro_entry *e = in->buckets[i], *n; e; e = n) {
			n = e->next;
			/* Freeing the connection frees a call under way without calling back;
			 * its waiters were handed back by the caller's own shutdown. */
			if (e->conn)
				evhttp_connection_free(e->conn);
			entry_free(e);
		}
	free(in->buckets);
	reap(in);
	free(in->dead);
	if (in->uri)
		evhttp_uri_free(in->uri);
	if (in->ssl)
		SSL_CTX_free(in->ssl);
	OPENSSL_cleanse(in->auth, sizeof in->auth);
	free(in);
}

size_t introspect_count(const struct introspect *in)
{
	return in->count;
}

static struct intro_entry **find(struct introspect *in, const char *digest)
{
	/* The digest is already uniform: its first 16 hex digits make the bucket. */
	uint64_t h = 0;
	for (int i = 0; i < 16; i++)
		h = h << 4 | (uint64_t)(digest[i] <= '9' ? digest[i] - '0' : digest[i] - 'a' + 10);
	size_t b = (size_t)h & (in->nbuckets - 1);
	struct intro_entry **pp = &in->buckets[b];
	while (*pp && strcmp((*pp)->digest, digest) != 0)
		pp = &(*pp)->next;
	return pp;
}

static void unlink_entry(struct introspect *in, struct intro_entry *e)
{
	struct intro_entry **pp = find(in, e->digest);
	if (*pp == e) {
		*pp = e->next;
		in->count--;
	}
}

static int text_ok(const char *s, size_t max)
{
	size_t n = 0;
	for (; s[n]; n++)
		if ((unsigned char)s[n] < 0x20 || s[n] == 0x7f || s[n] == ',')
			return 0;
	return n > 0 && n < max;
}

int introspect_parse(const char *body, size_t len, int64_t now_ms, struct identity *id,
		     int64_t *until_ms)
{
	memset(id, 0, sizeof *id);
	json_t *root = json_loadb(body, len, 0, NULL);
	json_t *active = root ? json_object_get(root, "active") : NULL;
	int rc = -1;
	if (!json_is_boolean(active))
		goto out;
	if (!json_is_true(active)) {
		*until_ms = now_ms + INTROSPECT_INACTIVE_MS;
		rc = 0;
		goto out;
	}
	/* Globus: username is the human-readable identity (user@idp); sub its UUID. */
	const char *user = json_string_value(json_object_get(root, "username"));
	const char *sub = json_string_value(json_object_get(root, "sub"));
	const char *p = user && *user ? user : sub;
	json_t *exp = json_object_get(root, "exp");
	if (!p || !text_ok(p, sizeof id->principal) || (exp && !json_is_integer(exp)))
		goto out;
	id->type = CRED_INTROSPECTION;
	snprintf(id->principal, sizeof id->principal, "%s", p);
	snprintf(id->models, sizeof id->models, "*");
	snprintf(id->cred_id, sizeof id->cred_id, "%.64s", sub && text_ok(sub, 128) ? sub : "");
	int64_t until = now_ms + INTROSPECT_ACTIVE_MAX_MS;
	if (exp) {
		id->expires_ms = json_integer_value(exp) * 1000;
		if (id->expires_ms <= now_ms) {
			/* Active but already past exp: treat as inactive. */
			memset(id, 0, sizeof *id);
			*until_ms = now_ms + INTROSPECT_INACTIVE_MS;
			rc = 0;
			goto out;
		}
		if (id->expires_ms < until)
			until = id->expires_ms;
	}
	*until_ms = until;
	/* The session's identity provider: the one the session authenticated with. */
	json_t *auths = json_object_get(json_object_get(root, "session_info"), "authentications");
	const char *k;
	json_t *v;
	if (json_is_object(auths))
		json_object_foreach(auths, k, v)
		{
			const char *idp = json_string_value(json_object_get(v, "idp"));
			if (idp && text_ok(idp, sizeof id->idp)) {
				snprintf(id->idp, sizeof id->idp, "%s", idp);
				break;
			}
		}
	/* Globus policy evaluations: {"<policy id>": {"evaluation": true}, ...} */
	json_t *pe = json_object_get(root, "policy_evaluations");
	size_t plen = 0;
	if (json_is_object(pe))
		json_object_foreach(pe, k, v)
		{
			size_t n = strlen(k);
			if (!json_is_true(json_object_get(v, "evaluation")) || !text_ok(k, 256) ||
			    plen + n + 2 > sizeof id->policies)
				continue;
			if (plen)
				id->policies[plen++] = ',';
			memcpy(id->policies + plen, k, n + 1);
			plen += n;
		}
	/* Group memberships when the server includes them (not part of RFC 7662). */
	json_t *groups = json_object_get(root, "groups");
	size_t glen = 0, i;
	if (json_is_array(groups))
		json_array_foreach(groups, i, v)
		{
			const char *g = json_string_value(v);
			if (!g || !text_ok(g, 256) || glen + strlen(g) + 2 > sizeof id->groups)
				continue;
			if (glen)
				id->groups[glen++] = ',';
			memcpy(id->groups + glen, g, strlen(g) + 1);
			glen += strlen(g);
		}
	rc = 1;
out:
	json_decref(root);
	return rc;
}

static void answer_all(struct introspect *in, struct intro_entry *e, enum introspect_answer ans,
		       const char *why)
{
	/* Waiters may look the token up again from the callback: detach them first. */
	void **w = e->waiters;
	int n = e->nwaiters;
	e->waiters = NULL;
	e->nwaiters = e->capwaiters = 0;
	struct identity id = e->id;
	for (int i = 0; i < n; i++)
		in->done(w[i], ans, &id, why);
	free(w);
}

static void on_response(struct evhttp_request *req, void *arg)
{
	struct intro_entry *e = arg;
	struct introspect *in = e->owner;
	e->call = NULL;
	/* Retired connections stay alive until the next reap: its TLS state can be read. */
	struct evhttp_connection *conn = e->conn;
	retire_conn(in, e);
	int code = req ? evhttp_request_get_response_code(req) : 0;
	int64_t now = 0;
	{
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	}
	int rc = -1;
	if (code == 200) {
		struct evbuffer *b = evhttp_request_get_input_buffer(req);
		size_t len = evbuffer_get_length(b);
		const char *body = len < (1 << 20) ? (const char *)evbuffer_pullup(b, -1) : NULL;
		rc = body ? introspect_parse(body, len, now, &e->id, &e->until_ms) : -1;
		if (rc < 0)
			log_error("introspection answer not understood (no boolean 'active')",
				  LS("host", in->host));
	} else {
		char err[300] = "";
		if (code == 0)
			fetch_tls_error(conn, err, sizeof err);
		log_error("introspection call failed: new opaque tokens get 503 until it answers",
			  LS("host", in->host), LI("status", code),
			  LS("error", err[0] ? err
				      : code
					  ? "unexpected HTTP status"
					  : "no answer (connection refused, closed or timed out)"));
	}
	if (rc < 0) {
		unlink_entry(in, e);
		answer_all(in, e, INTRO_UNAVAILABLE, "token introspection unavailable");
		entry_free(e);
		return;
	}
	e->state = rc ? INTRO_ACTIVE : INTRO_INACTIVE;
	answer_all(in, e, rc ? INTRO_OK : INTRO_DENIED, rc ? NULL : "token is not active");
}

static int start_call(struct introspect *in, struct intro_entry *e, const char *tok, size_t len)
{
	struct bufferevent *bev = NULL;
	if (in->https) {
		bev = tls_client_bev(in->base, in->ssl, in->host,
				     BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		if (!bev)
			return -1;
	}
	struct evhttp_connection *conn = evhttp_connection_base_bufferevent_new(
	    in->base, NULL, bev, in->host, (unsigned short)in->port);
	if (!conn) {
		if (bev)
			bufferevent_free(bev);
		return -1;
	}
	evhttp_connection_set_timeout(conn, (in->timeout_ms + 999) / 1000);
	struct evhttp_request *req = evhttp_request_new(on_response, e);
	char *enc = evhttp_uriencode(tok, (ev_ssize_t)len, 1);
	if (!req || !enc) {
		if (req)
			evhttp_request_free(req);
		free(enc);
		evhttp_connection_free(conn);
		return -1;
	}
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "Host", in->host);
	evhttp_add_header(h, "Authorization", in->auth);
	evhttp_add_header(h, "Content-Type", "application/x-www-form-urlencoded");
	evhttp_add_header(h, "Accept", "application/json");
	struct evbuffer *out = evhttp_request_get_output_buffer(req);
	int ok = evbuffer_add_printf(out, "token=%s&include=session_info,identity_set", enc) > 0;
	OPENSSL_cleanse(enc, strlen(enc));
	free(enc);
	if (!ok) {
		evhttp_request_free(req);
		evhttp_connection_free(conn);
		return -1;
	}
	if (evhttp_make_request(conn, req, EVHTTP_REQ_POST, in->path) != 0) {
		/* evhttp_make_request frees req on failure. */
		evhttp_connection_free(conn);
		return -1;
	}
	e->call = req;
	e->conn = conn;
	return 0;
}

static int add_waiter(struct intro_entry *e, void *w)
{
	if (e->nwaiters == e->capwaiters) {
		int cap = e->capwaiters ? 2 * e->capwaiters : 4;
		void **n = realloc(e->waiters, (size_t)cap * sizeof *n);
		if (!n)
			return -1;
		e->waiters = n;
		e->capwaiters = cap;
	}
	e->waiters[e->nwaiters++] = w;
	return 0;
}

int introspect_lookup(struct introspect *in, const char *tok, size_t len, int64_t now_ms,
		      void *waiter, struct identity *id)
{
	char digest[65];
	sha256_hex(tok, len, digest);
	if (!digest[0])
		return INTRO_UNAVAILABLE;
	struct intro_entry **pp = find(in, digest), *e = *pp;
	if (e && e->state != INTRO_PENDING && e->until_ms <= now_ms) {
		*pp = e->next;
		in->count--;
		entry_free(e);
		e = NULL;
	}
	if (e && e->state == INTRO_ACTIVE) {
		*id = e->id;
		return INTRO_OK;
	}
	if (e && e->state == INTRO_INACTIVE)
		return INTRO_DENIED;
	if (e) /* a call for this token is under way */
		return add_waiter(e, waiter) == 0 ? -1 : INTRO_UNAVAILABLE;
	if (in->count >= in->max)
		introspect_tick(in, now_ms);
	if (in->count >= in->max)
		return INTRO_UNAVAILABLE;
	e = calloc(1, sizeof *e);
	if (!e)
		return INTRO_UNAVAILABLE;
	memcpy(e->digest, digest, sizeof digest);
	e->owner = in;
	e->state = INTRO_PENDING;
	if (add_waiter(e, waiter) != 0 || start_call(in, e, tok, len) != 0) {
		log_error("cannot start the introspection call", LS("host", in->host));
		entry_free(e);
		return INTRO_UNAVAILABLE;
	}
	pp = find(in, digest);
	e->next = *pp;
	*pp = e;
	in->count++;
	return -1;
}

void introspect_tick(struct introspect *in, int64_t now_ms)
{
	reap(in);
	for (size_t i = 0; i < in->nbuckets; i++) {
		struct intro_entry **pp = &in->buckets[i];
		while (*pp) {
			struct intro_entry *e = *pp;
			if (e->state != INTRO_PENDING && e->until_ms <= now_ms) {
				*pp = e->next;
				in->count--;
				entry_free(e);
			} else {
				pp = &e->next;
			}
		}
	}
}

int introspect_put(struct introspect *in, const char *tok, size_t len, const struct identity *id,
		   int64_t until_ms)
{
	char digest[65];
	sha256_hex(tok, len, digest);
	if (!digest[0] || *find(in, digest) || in->count >= in->max)
		return -1;
	struct intro_entry *e = calloc(1, sizeof *e);
	if (!e)
		return -1;
	memcpy(e->digest, digest, sizeof digest);
	e->owner = in;
	e->state = INTRO_ACTIVE;
	e->id = *id;
	e->until_ms = until_ms;
	struct intro_entry **pp = find(in, digest);
	e->next = *pp;
	*pp = e;
	in->count++;
	return 0;
}
