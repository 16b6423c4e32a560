/* gw-introspect-mock: a tiny RFC 7662 introspection server for the authz tests, on
 * evhttp. POST / with client_secret_basic auth and a form body token=...; answers the
 * JSON stored for that token in TOKENS_FILE ({"token": {answer}}), else
 * {"active":false}. GET /calls returns how many calls it answered; GET /jwks serves the
 * file named by MOCK_JWKS_FILE (a JWKS URL for the JWT tests).
 *   gw-introspect-mock PORT TOKENS_FILE CLIENT_ID CLIENT_SECRET [DELAY_MS] */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *tokens;
static char auth[1024];
static long calls;
static int delay_ms;
static struct event_base *base;

struct pending {
	struct evhttp_request *req;
	char *body;
	struct event *ev;
};

static void send_json(struct evhttp_request *req, int code, const char *body)
{
	struct evbuffer *b = evbuffer_new();
	evbuffer_add(b, body, strlen(body));
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
	evbuffer_free(b);
}

static void on_delay(evutil_socket_t fd, short what, void *arg)
{
	struct pending *p = arg;
	send_json(p->req, 200, p->body);
	free(p->body);
	event_free(p->ev);
	free(p);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	const char *uri = evhttp_request_get_uri(req);
	if (evhttp_request_get_command(req) == EVHTTP_REQ_GET && strcmp(uri, "/calls") == 0) {
		char b[32];
		snprintf(b, sizeof b, "%ld", calls);
		send_json(req, 200, b);
		return;
	}
	if (evhttp_request_get_command(req) == EVHTTP_REQ_GET && strcmp(uri, "/jwks") == 0) {
		/* The JWKS URL of the tests: the file named by MOCK_JWKS_FILE, read each time. */
		const char *path = getenv("MOCK_JWKS_FILE");
		json_t *j = path ? json_load_file(path, 0, NULL) : NULL;
		char *b = j ? json_dumps(j, JSON_COMPACT) : NULL;
		send_json(req, b ? 200 : 404, b ? b : "{}");
		free(b);
		json_decref(j);
		calls++;
		return;
	}
	const char *a = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (!a || strcmp(a, auth) != 0) {
		send_json(req, 401, "{\"error\":\"invalid_client\"}");
		return;
	}
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	char *form = malloc(len + 1);
	evbuffer_copyout(in, form, len);
	form[len] = 0;
	struct evkeyvalq q;
	const char *tok = NULL;
	if (evhttp_parse_query_str(form, &q) == 0)
		tok = evhttp_find_header(&q, "token");
	json_t *ans = tok ? json_object_get(tokens, tok) : NULL;
	char *body = ans ? json_dumps(ans, JSON_COMPACT) : strdup("{\"active\":false}");
	if (tok)
		evhttp_clear_headers(&q);
	free(form);
	calls++;
	if (delay_ms > 0) {
		struct pending *p = calloc(1, sizeof *p);
		p->req = req;
		p->body = body;
		p->ev = evtimer_new(base, on_delay, p);
		struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
		evtimer_add(p->ev, &tv);
		return;
	}
	send_json(req, 200, body);
	free(body);
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fputs("usage: gw-introspect-mock PORT TOKENS_FILE CLIENT_ID CLIENT_SECRET "
		      "[DELAY_MS]\n",
		      stderr);
		return 2;
	}
	tokens = json_load_file(argv[2], 0, NULL);
	if (!json_is_object(tokens)) {
		fputs("gw-introspect-mock: TOKENS_FILE must hold a JSON object\n", stderr);
		return 1;
	}
	delay_ms = argc > 5 ? atoi(argv[5]) : 0;
	char cred[512];
	int n = snprintf(cred, sizeof cred, "%s:%s", argv[3], argv[4]);
	memcpy(auth, "Basic ", 6);
	EVP_EncodeBlock((unsigned char *)auth + 6, (unsigned char *)cred, n);
	base = event_base_new();
	struct evhttp *http = evhttp_new(base);
	if (!base || !http ||
	    evhttp_bind_socket(http, "127.0.0.1", (unsigned short)atoi(argv[1]))) {
		fputs("gw-introspect-mock: cannot listen\n", stderr);
		return 1;
	}
	evhttp_set_gencb(http, on_request, NULL);
	event_base_dispatch(base);
	return 0;
}
