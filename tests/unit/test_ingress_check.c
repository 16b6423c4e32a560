/* Unit tests of ingress/check.c: routes, body checks, request-head framing. */
#include "check.h"
#include "../../ingress/check.h"

#include <stdlib.h>
#include <string.h>

static int route(const char *path, struct route_match *m)
{
	return check_route(path, m);
}

static void test_routes(void)
{
	struct route_match m;
	CHECK_EQ_INT(route("/v1/chat/completions", &m), 0);
	CHECK_EQ_INT(m.kind, ROUTE_OPENAI);
	CHECK_EQ_STR(m.upstream, "/v1/chat/completions");
	CHECK_EQ_STR(m.allow, "POST");
	CHECK_EQ_INT(route("/v1/chat/completions/", &m), 0); /* FIRST's trailing slash */
	CHECK_EQ_INT(route("/v1/chat/completions//", &m), -1);
	CHECK_EQ_INT(route("/v1/completions", &m), 0);
	CHECK_EQ_STR(m.upstream, "/v1/completions");
	CHECK_EQ_INT(route("/v1/embeddings/", &m), 0);
	CHECK_EQ_STR(m.upstream, "/v1/embeddings");
	CHECK_EQ_INT(route("/v1/models", &m), 0);
	CHECK_EQ_INT(m.kind, ROUTE_MODELS);
	CHECK_EQ_STR(m.allow, "GET");
	CHECK_EQ_INT(route("/v1/nope", &m), -1);
	CHECK_EQ_INT(route("/v1", &m), -1);
	CHECK_EQ_INT(route("/", &m), -1);
	CHECK_EQ_INT(route("", &m), -1);
	CHECK_EQ_INT(route(NULL, &m), -1);
	CHECK_EQ_INT(route("/v1/chat/completionsX", &m), -1);

	CHECK_EQ_INT(route("/resource_server/sophia/vllm/v1/chat/completions/", &m), 0);
	CHECK_EQ_INT(m.kind, ROUTE_OPENAI);
	CHECK_EQ_STR(m.cluster, "sophia");
	CHECK_EQ_STR(m.framework, "vllm");
	CHECK_EQ_STR(m.upstream, "/v1/chat/completions");
	CHECK_EQ_STR(m.label, "/resource_server/{cluster}/{framework}/v1/chat/completions");
	CHECK_EQ_INT(route("/resource_server/sophia/vllm/v1/models", &m), 0);
	CHECK_EQ_INT(m.kind, ROUTE_MODELS);
	CHECK_EQ_INT(route("/resource_server/list-endpoints", &m), 0);
	CHECK_EQ_INT(m.kind, ROUTE_LIST_ENDPOINTS);
	CHECK_EQ_STR(m.upstream, "/resource_server/list-endpoints");
	CHECK_EQ_INT(route("/resource_server/whoami/", &m), 0);
	CHECK_EQ_INT(m.kind, ROUTE_WHOAMI);
	CHECK_EQ_INT(route("/resource_server/polaris/jobs", &m), 0);
	CHECK_EQ_INT(m.kind, ROUTE_JOBS);
	CHECK_EQ_STR(m.cluster, "polaris");
	CHECK_EQ_STR(m.upstream, "/resource_server/jobs");
	CHECK_EQ_INT(route("/resource_server/bad%20name/jobs", &m), -1);
	CHECK_EQ_INT(route("/resource_server//vllm/v1/models", &m), -1);
	CHECK_EQ_INT(route("/resource_server/a/b/v2/models", &m), -1);
	CHECK_EQ_INT(route("/resource_server/a/b/v1/models/x", &m), -1);
	CHECK_EQ_INT(route("/resource_server/", &m), -1);
	char longname[200] = "/resource_server/";
	memset(longname + 17, 'a', 64);
	strcpy(longname + 81, "/jobs");
	CHECK_EQ_INT(route(longname, &m), -1); /* cluster names are at most 63 */
	CHECK(check_name("a.b_c-9", 7));
	CHECK(!check_name("a/b", 3));
	CHECK(!check_name("", 0));
}

static int body(const char *s, int depth, struct body_result *r)
{
	struct body_limits lim = {depth};
	return check_body((const unsigned char *)s, strlen(s), &lim, r);
}

static void test_body(void)
{
	struct body_result r;
	CHECK_EQ_INT(body("{\"model\":\"m\",\"messages\":[]}", 64, &r), 0);
	CHECK_EQ_STR(r.model, "m");
	CHECK_EQ_INT(r.stream, 0);
	CHECK_EQ_INT(body("{\"model\":\"m\",\"stream\":true}", 64, &r), 0);
	CHECK_EQ_INT(r.stream, 1);
	CHECK_EQ_INT(body("{\"model\":\"m\",\"stream\":null}", 64, &r), 0);
	CHECK_EQ_INT(body("{\"model\":\"m\",\"stream\":\"yes\"}", 64, &r), 400);
	CHECK_EQ_INT(body("not json", 64, &r), 400);
	CHECK_EQ_STR(r.code, "invalid_json");
	CHECK_EQ_INT(body("", 64, &r), 400);
	CHECK_EQ_INT(body("[1,2]", 64, &r), 400);
	CHECK_EQ_STR(r.message, "request body must be a JSON object");
	CHECK_EQ_INT(body("{\"messages\":[]}", 64, &r), 400);
	CHECK_EQ_INT(body("{\"model\":7}", 64, &r), 400);
	CHECK_EQ_INT(body("{\"model\":\"\"}", 64, &r), 400);
	CHECK_EQ_INT(body("{\"model\":\"a\\u0001b\"}", 64, &r), 400);
	CHECK_EQ_INT(body("{\"model\":\"m\",\"model\":\"n\"}", 64, &r), 400); /* duplicate */
	CHECK_EQ_INT(body("{\"model\":\"m\xff\"}", 64, &r), 400);             /* invalid UTF-8 */
	CHECK_EQ_STR(r.code, "invalid_json");
	CHECK_EQ_INT(body("{\"model\":\"m\xc3\xa9\"}", 64, &r), 0); /* valid UTF-8 */
	CHECK_EQ_INT(body("{\"model\":\"m\"} trailing", 64, &r), 400);
	/* Depth: {"model":"m","x":[[[...]]]} */
	char deep[400];
	strcpy(deep, "{\"model\":\"m\",\"x\":");
	size_t n = strlen(deep);
	for (int i = 0; i < 10; i++)
		deep[n++] = '[';
	for (int i = 0; i < 10; i++)
		deep[n++] = ']';
	deep[n++] = '}';
	deep[n] = 0;
	CHECK_EQ_INT(body(deep, 11, &r), 0);
	CHECK_EQ_INT(body(deep, 10, &r), 400);
	CHECK_EQ_STR(r.code, "json_too_deep");
	/* Brackets inside strings do not count. */
	CHECK_EQ_INT(body("{\"model\":\"[[[[[[[[\\\"[[[[\"}", 2, &r), 0);
	/* A huge nesting is refused before any tree is built. */
	size_t big = 1 << 20;
	char *b = malloc(big + 1);
	memset(b, '[', big);
	b[big] = 0;
	CHECK_EQ_INT(check_json_depth((unsigned char *)b, big, 64), 65);
	free(b);
	CHECK(check_content_type(NULL));
	CHECK(check_content_type("application/json"));
	CHECK(check_content_type("Application/JSON; charset=utf-8"));
	CHECK(!check_content_type("text/plain"));
	CHECK(!check_content_type("application/jsonx"));
}

static enum head_verdict feed(struct head_state *h, const char *const *lines)
{
	static const struct head_limits lim = {4096, 10, 1000};
	enum head_verdict v = HEAD_MORE;
	head_reset(h);
	for (int i = 0; lines[i] && v == HEAD_MORE; i++)
		v = head_line(h, &lim, lines[i], strlen(lines[i]), strlen(lines[i]) + 2);
	return v;
}

static void test_head(void)
{
	struct head_state h;
	const char *ok[] = {"POST /v1/x HTTP/1.1", "Host: a", "Content-Length: 5", "", NULL};
	CHECK_EQ_INT(feed(&h, ok), HEAD_DONE);
	CHECK(h.has_cl && h.content_length == 5);
	const char *te_cl[] = {"POST / HTTP/1.1", "Content-Length: 5", "Transfer-Encoding: chunked",
			       "", NULL};
	CHECK_EQ_INT(feed(&h, te_cl), HEAD_REJECT);
	CHECK_EQ_INT(h.status, 400);
	const char *two_cl[] = {"POST / HTTP/1.1", "Content-Length: 5", "Content-Length: 6", "",
				NULL};
	CHECK_EQ_INT(feed(&h, two_cl), HEAD_REJECT);
	CHECK_EQ_INT(h.status, 400);
	const char *same_cl[] = {"POST / HTTP/1.1", "Content-Length: 5", "content-length: 5", "",
				 NULL};
	CHECK_EQ_INT(feed(&h, same_cl), HEAD_DONE);
	const char *bad_cl[] = {"POST / HTTP/1.1", "Content-Length: 5x", "", NULL};
	CHECK_EQ_INT(feed(&h, bad_cl), HEAD_REJECT);
	const char *neg_cl[] = {"POST / HTTP/1.1", "Content-Length: -1", "", NULL};
	CHECK_EQ_INT(feed(&h, neg_cl), HEAD_REJECT);
	const char *big[] = {"POST / HTTP/1.1", "Content-Length: 1001", "", NULL};
	CHECK_EQ_INT(feed(&h, big), HEAD_REJECT);
	CHECK_EQ_INT(h.status, 413);
	const char *chunked[] = {"POST / HTTP/1.1", "Transfer-Encoding: chunked", "", NULL};
	CHECK_EQ_INT(feed(&h, chunked), HEAD_DONE);
	CHECK(h.chunked);
	const char *gzip[] = {"POST / HTTP/1.1", "Transfer-Encoding: gzip, chunked", "", NULL};
	CHECK_EQ_INT(feed(&h, gzip), HEAD_REJECT);
	const char *folded[] = {"GET / HTTP/1.1", "X: a", " b", "", NULL};
	CHECK_EQ_INT(feed(&h, folded), HEAD_REJECT);
	const char *many[] = {"GET / HTTP/1.1", "a: 1", "b: 1", "c: 1", "d: 1", "e: 1", "f: 1",
			      "g: 1",           "h: 1", "i: 1", "j: 1", "k: 1", "",     NULL};
	CHECK_EQ_INT(feed(&h, many), HEAD_REJECT);
	CHECK_EQ_INT(h.status, 431);
	const char *space[] = {"GET / HTTP/1.1", "Bad Name: 1", "", NULL};
	CHECK_EQ_INT(feed(&h, space), HEAD_REJECT);
	const char *method[] = {"BREW / HTTP/1.1", "", NULL};
	CHECK_EQ_INT(feed(&h, method), HEAD_REJECT);
	CHECK_EQ_INT(h.status, 405);
	const char *version[] = {"GET / HTTP/2.0", "", NULL};
	CHECK_EQ_INT(feed(&h, version), HEAD_REJECT);
	CHECK_EQ_INT(h.status, 505);
	const char *garbage[] = {"hello", "", NULL};
	CHECK_EQ_INT(feed(&h, garbage), HEAD_REJECT);
	CHECK_EQ_INT(h.status, 400);
	char longv[5000];
	memset(longv, 'a', sizeof longv - 1);
	longv[0] = 'X';
	longv[1] = ':';
	longv[sizeof longv - 1] = 0;
	const char *huge[] = {"GET / HTTP/1.1", longv, "", NULL};
	CHECK_EQ_INT(feed(&h, huge), HEAD_REJECT);
	CHECK_EQ_INT(h.status, 431);

	uint64_t sz;
	CHECK_EQ_INT(check_chunk_size("1a", 2, &sz), 0);
	CHECK(sz == 26);
	CHECK_EQ_INT(check_chunk_size("0;ext=1", 7, &sz), 0);
	CHECK(sz == 0);
	CHECK_EQ_INT(check_chunk_size("", 0, &sz), -1);
	CHECK_EQ_INT(check_chunk_size("xyz", 3, &sz), -1);
	CHECK_EQ_INT(check_chunk_size("ffffffffffffffffff", 18, &sz), -1);
}

int main(void)
{
	test_routes();
	test_body();
	test_head();
	return check_done();
}
