/* TLS client contexts and connections (see tls.h). */
#include "tls.h"

#include <event2/bufferevent_ssl.h>
#include <openssl/x509v3.h>
#include <string.h>

SSL_CTX *tls_client_ctx_new(const char *ca_file)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
			 : SSL_CTX_set_default_verify_paths(ctx);
	if (ok != 1) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

struct bufferevent *tls_client_bev(struct event_base *base, SSL_CTX *ctx, const char *host,
				   int options)
{
	SSL *ssl = SSL_new(ctx);
	if (!ssl)
		return NULL;
	X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
	X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	/* An IP literal is matched against the certificate's IP entries and gets no SNI. */
	int is_ip = strchr(host, ':') || strspn(host, "0123456789.") == strlen(host);
	if ((is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, host)
		   : X509_VERIFY_PARAM_set1_host(vp, host, 0)) != 1 ||
	    (!is_ip && SSL_set_tlsext_host_name(ssl, host) != 1)) {
		SSL_free(ssl);
		return NULL;
	}
	struct bufferevent *bev =
	    bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, options);
	if (!bev)
		SSL_free(ssl); /* not taken over on failure */
	return bev;
}
