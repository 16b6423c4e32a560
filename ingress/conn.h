/* Client connections under evhttp: each one is a bufferevent filter (over a socket or a
 * TLS bufferevent) that sees the raw request bytes first, so limits, framing attacks
 * and slow clients get a clear answer in OpenAI's shape before evhttp parses anything. */
#ifndef GW_INGRESS_CONN_H
#define GW_INGRESS_CONN_H

#include "check.h"

#include <event2/bufferevent.h>
#include <event2/http.h>
#include <openssl/ssl.h>
#include <stdint.h>

struct ingress;
struct pending;

enum conn_state {
	CONN_HEAD,       /* reading a request head (or idle between requests) */
	CONN_BODY,       /* Content-Length body */
	CONN_CHUNK_SIZE, /* chunked body: size line */
	CONN_CHUNK_DATA,
	CONN_CHUNK_CRLF, /* the line end after a chunk's data */
	CONN_TRAILER,
	CONN_REJECTED, /* our answer is queued; input is discarded; closing once written */
	CONN_CLOSING,  /* evhttp was told to drop it */
};

/* One client connection. Refcounted: the filter bufferevent holds one reference until
 * evhttp frees it (then `dead` is set), and each pending request on it holds one. */
struct conn {
	struct ingress *ig;
	struct bufferevent *bev;         /* the filter evhttp reads and writes; owned by evhttp */
	struct bufferevent *under;       /* socket or TLS; freed with bev */
	struct evhttp_connection *evcon; /* known once a request on it is pending */
	struct event *closed_ev;         /* EV_CLOSED on the socket while requests wait */
	struct event *kick;              /* moves bytes through the filter (see conn_kick) */
	struct evbuffer_cb_entry *under_cb;
	int fd;
	int refs;
	int dead;
	int admitted;
	int counted_ip;
	enum conn_state state;
	struct head_state head;
	uint64_t remaining;    /* body bytes left in this body or chunk */
	uint64_t body_total;   /* chunked: data bytes so far */
	int64_t since_ms;      /* when the current head/body began */
	int64_t idle_ms;       /* when the connection last became idle */
	int requests;          /* requests forwarded to evhttp */
	uint64_t fwd_bytes;    /* bytes forwarded to evhttp */
	uint64_t fwd_complete; /* of them, up to the end of the last complete request */
	int inflight;          /* of them, waiting for an answer from the pipeline */
	char *deferred;        /* a rejection waiting for earlier answers to go out */
	size_t deferred_len;
	char addr[64];
	struct pending *waiting; /* pending requests on this connection (list via cnext) */
	struct conn *prev, *next;
};

/* All connections, for the janitor's sweep and the limits. */
struct conn_table {
	struct conn *head;
	size_t count;
	struct conn **byfd;
	size_t nfd;
	struct ipcount **ips;
	size_t nips;
};

int conn_init(struct ingress *ig);
void conn_shutdown(struct ingress *ig);
/* The connection an evhttp request arrived on, or NULL. */
struct conn *conn_of(struct ingress *ig, struct evhttp_request *req);
/* p waits for an answer on c (takes a reference, watches for the client leaving). */
void conn_attach(struct conn *c, struct pending *p, struct evhttp_connection *evcon);
void conn_detach(struct pending *p);
/* Bytes queued to the client and not yet written. */
size_t conn_output_len(struct conn *c);
/* Drops the connection now (slow client); evhttp frees it from the loop. */
void conn_drop(struct conn *c);
/* Timeouts, deferred rejections and closing; called by the janitor. */
void conn_sweep(struct ingress *ig, int64_t now_ms);

/* TLS: builds the context from GW_TLS_CERT_FILE/GW_TLS_KEY_FILE. Returns NULL (and
 * logs why) on failure. */
SSL_CTX *conn_tls_context(const char *cert, const char *key);
/* SIGHUP: reloads the certificate; keeps the old context when the new files are bad. */
void conn_tls_reload(struct ingress *ig);

#endif
