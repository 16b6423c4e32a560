/* TLS for the outgoing https calls (dispatcher endpoints, authz's JWKS and introspection):
 * one way to verify a server, so the three clients cannot drift apart. */
#ifndef GW_TLS_H
#define GW_TLS_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/ssl.h>

/* A client context: peer verification on, TLS 1.2 at least, trust from ca_file (PEM)
 * or, when it is NULL, the system store. NULL on failure; the OpenSSL reason is left in
 * the error queue for the caller, who knows which setting to name. */
SSL_CTX *tls_client_ctx_new(const char *ca_file);

/* A connecting client bufferevent for host (a name or an IP literal): the certificate
 * must match it (no partial wildcards), SNI is sent for a name. NULL on failure. The
 * bufferevent owns the SSL; options are bufferevent options (BEV_OPT_CLOSE_ON_FREE ...). */
struct bufferevent *tls_client_bev(struct event_base *base, SSL_CTX *ctx, const char *host,
				   int options);

#endif
