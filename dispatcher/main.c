/* dispatcher: routes authorized requests from gw.authorized to the compute endpoints
 * and relays their answers (DESIGN.md). `serve` runs the stage; `endpoints` shows the
 * live endpoints of a running dispatcher, or checks the endpoint registry file. */
#include "dispatch.h"
#include "config.h"
#include "log.h"
#include "registry.h"
#include "runtime.h"

#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char usage_text[] =
    "usage: dispatcher <command>\n"
    "\n"
    "commands:\n"
    "  serve                  consume gw.authorized, call the endpoints, relay the answers\n"
    "  endpoints [--admin HOST:PORT] [--json]\n"
    "                         ask the running dispatcher (GET /endpoints on its admin\n"
    "                         port: GW_ADMIN_LISTEN, or the dispatcher entry of\n"
    "                         GW_ADMIN_PORTS in .run/env) and print each endpoint with its\n"
    "                         health, load and circuit state; when none answers,\n"
    "                         validate GW_ENDPOINTS_FILE and print it\n"
    "  endpoints --file F     validate the endpoints file F and print the registry\n"
    "  --help                 this text\n"
    "\n"
    "environment (serve):\n"
    "  GW_ENDPOINTS_FILE              endpoints JSON file (required)\n"
    "  GW_KAFKA_BROKERS               Kafka bootstrap servers (required)\n"
    "  GW_KAFKA_PROPERTIES            extra librdkafka properties k=v;k=v\n"
    "  GW_KAFKA_FETCH_WAIT_MS         fetch.wait.max.ms (default 2)\n"
    "  GW_DISPATCHER_GROUP            consumer group (default dispatcher)\n"
    "  GW_DISPATCHER_MAX_INFLIGHT     requests held at once before pausing (default 1024)\n"
    "  GW_DISPATCHER_ENDPOINT_QUEUE   requests waiting per full endpoint (default 256)\n"
    "  GW_DISPATCHER_DEDUP            request ids remembered (default 65536)\n"
    "  GW_DISPATCHER_MAX_RESPONSE     bytes of a non-streamed answer (default 16777216)\n"
    "  GW_DISPATCHER_SSE_LINE_MAX     longest SSE line scanned for usage (default 65536)\n"
    "  GW_DISPATCHER_DRAIN_MS         drain time on SIGTERM (default 10000)\n"
    "  GW_DISPATCHER_CA_FILE          CA bundle for https endpoints (system store)\n"
    "  GW_MAX_ATTEMPTS                attempts per request, retries included (default 3)\n"
    "  GW_DISPATCHER_RETRY_BASE_MS    first retry backoff (default 100)\n"
    "  GW_DISPATCHER_RETRY_MAX_MS     largest retry backoff (default 2000)\n"
    "  GW_DISPATCHER_HEALTH_INTERVAL_MS  health check period (default 5000)\n"
    "  GW_DISPATCHER_HEALTH_TIMEOUT_MS   health check timeout (default 2000)\n"
    "  GW_DISPATCHER_CB_FAILURES      consecutive failures opening a circuit (default 5)\n"
    "  GW_DISPATCHER_CB_RATE_PCT      failure %% over the window opening it (default 50)\n"
    "  GW_DISPATCHER_CB_RATE_MIN      outcomes before the rate counts (default 20)\n"
    "  GW_DISPATCHER_CB_WINDOW_MS     failure-rate window (default 30000)\n"
    "  GW_DISPATCHER_CB_COOLDOWN_MS   open -> half-open (default 10000)\n"
    "  GW_DISPATCHER_CB_HALFOPEN_PROBES  probes at once while half-open (default 1)\n"
    "  GW_DISPATCHER_SATURATED_STATUS 429 or 503 when all endpoints are full (429)\n"
    "  GW_DISPATCHER_CANCEL_MEMORY    cancelled ids remembered (default 16384)\n"
    "  GW_DISPATCHER_POOL_IDLE        idle keep-alive connections per endpoint (default 64;\n"
    "                                 0 = no keep-alive)\n"
    "  GW_DISPATCHER_POOL_IDLE_MS     idle connection closed after (default 4000)\n"
    "  GW_DISPATCHER_COALESCE_MS      stream coalescing window (default 2; 0 = off)\n"
    "  GW_DISPATCHER_COALESCE_BYTES   largest coalesced stream message (default 16384)\n"
    "  GW_ADMIN_LISTEN                /health /ready /metrics (default 127.0.0.1:9102)\n"
    "  GW_LOG_LEVEL                   debug|info|warn|error (default info)\n";

static int cmd_serve(void)
{
	struct runtime rt;
	struct dispatch_config cfg;
	struct dispatcher d;
	if (runtime_setup(&rt, "dispatcher", "127.0.0.1:9102") != 0)
		return 1;
	if (dispatch_config_load(&cfg) != 0) {
		runtime_free(&rt);
		return 1;
	}
	if (dispatch_init(&d, &rt, &cfg) != 0) {
		dispatch_free(&d);
		runtime_free(&rt);
		return 1;
	}
	int rc = runtime_run(&rt);
	dispatch_free(&d);
	runtime_free(&rt);
	log_info("dispatcher stopped");
	return rc ? 1 : 0;
}

static void print_row(int w1, int w2, const char *a, const char *b, const char *c)
{
	printf("%-*s  %-*s  %s\n", w1, a, w2, b, c);
}

/* GET path from host:port over plain HTTP/1.0 with a short timeout. Returns the
 * malloc'd body of a 200 answer, or NULL when nothing (or not a 200) answered. */
static char *admin_get(const char *hostport, const char *path)
{
	char host[256];
	unsigned short port;
	if (runtime_parse_hostport(hostport, host, sizeof host, &port) != 0)
		return NULL;
	char ports[8];
	snprintf(ports, sizeof ports, "%u", port);
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
	if (getaddrinfo(host[0] ? host : "127.0.0.1", ports, &hints, &ai) != 0)
		return NULL;
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval tv = {2, 0};
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) ||
	    connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return NULL;
	}
	freeaddrinfo(ai);
	char req[512];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, hostport);
	if (write(fd, req, (size_t)n) != n) {
		close(fd);
		return NULL;
	}
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap + 1);
	while (buf) {
		if (len == cap) {
			if (cap >= (16u << 20))
				break;
			char *nb = realloc(buf, cap * 2 + 1);
			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
		ssize_t got = read(fd, buf + len, cap - len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		len += (size_t)got;
	}
	close(fd);
	if (!buf)
		return NULL;
	buf[len] = 0;
	char *body = strstr(buf, "\r\n\r\n");
	if (strncmp(buf, "HTTP/1.", 7) != 0 || strncmp(buf + 8, " 200", 4) != 0 || !body) {
		free(buf);
		return NULL;
	}
	memmove(buf, body + 4, len - (size_t)(body + 4 - buf) + 1);
	return buf;
}

static const char *jstr(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : "";
}

/* Prints the running dispatcher's view as a table. */
static int print_live(const char *body, int as_json)
{
	json_t *root = json_loads(body, 0, NULL);
	json_t *eps = json_object_get(root, "endpoints");
	if (!json_is_array(eps)) {
		json_decref(root);
		log_error("the dispatcher's /endpoints answer is not the expected JSON");
		return 1;
	}
	if (as_json) {
		printf("%s\n", body);
		json_decref(root);
		return 0;
	}
	printf("%-20s  %-9s  %-9s  %-9s  %-8s  %-40s  %s\n", "NAME", "HEALTH", "CIRCUIT", "LOAD",
	       "QUEUED", "URL", "MODELS");
	size_t i;
	json_t *e;
	json_array_foreach(eps, i, e)
	{
		char load[32], models[2048];
		size_t len = 0, k;
		json_t *m;
		snprintf(load, sizeof load, "%lld/%lld",
			 (long long)json_integer_value(json_object_get(e, "inflight")),
			 (long long)json_integer_value(json_object_get(e, "max_concurrent")));
		models[0] = 0;
		json_array_foreach(json_object_get(e, "models"), k, m) if (len < sizeof models)
		    len += (size_t)snprintf(models + len, sizeof models - len, "%s%s", k ? "," : "",
					    json_string_value(m));
		printf("%-20s  %-9s  %-9s  %-9s  %-8lld  %-40s  %s\n", jstr(e, "name"),
		       jstr(e, "health"), jstr(e, "circuit"), load,
		       (long long)json_integer_value(json_object_get(e, "queued")), jstr(e, "url"),
		       models);
	}
	json_decref(root);
	return 0;
}

static int cmd_endpoints(int argc, char **argv)
{
	const char *file = NULL, *admin = NULL;
	int as_json = 0;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--file") == 0 && i + 1 < argc) {
			file = argv[++i];
		} else if (strcmp(argv[i], "--admin") == 0 && i + 1 < argc) {
			admin = argv[++i];
		} else if (strcmp(argv[i], "--json") == 0) {
			as_json = 1;
		} else {
			fprintf(stderr, "%s", usage_text);
			return 2;
		}
	}
	if (runtime_setup_cli("dispatcher") != 0)
		return 1;
	if (!file) {
		/* After `make run`, .run/env lists the admin ports of the local stack. */
		char local[64];
		const char *ports = config_str("GW_ADMIN_PORTS", NULL);
		const char *mine = ports ? strstr(ports, "dispatcher=") : NULL;
		if (!admin && !config_str("GW_ADMIN_LISTEN", NULL) && mine &&
		    (mine == ports || mine[-1] == ' ')) {
			snprintf(local, sizeof local, "127.0.0.1:%d", atoi(mine + 11));
			admin = local;
		}
		if (!admin)
			admin = config_str("GW_ADMIN_LISTEN", "127.0.0.1:9102");
		char *body = strcmp(admin, "off") ? admin_get(admin, "/endpoints") : NULL;
		if (body) {
			int rc = print_live(body, as_json);
			free(body);
			return rc;
		}
		log_info("no dispatcher answers on the admin address: validating the file",
			 LS("admin", admin));
		file = config_str("GW_ENDPOINTS_FILE", NULL);
	}
	if (!file) {
		log_error("GW_ENDPOINTS_FILE is not set (or pass --file PATH)");
		return 1;
	}
	struct registry reg;
	char err[1024];
	if (registry_load(&reg, file, err, sizeof err) != 0) {
		log_error("invalid endpoints file", LS("error", err));
		return 1;
	}
	int w1 = 4, w2 = 3;
	for (int i = 0; i < reg.n; i++) {
		int n1 = (int)strlen(reg.eps[i].name), n2 = (int)strlen(reg.eps[i].url);
		w1 = n1 > w1 ? n1 : w1;
		w2 = n2 > w2 ? n2 : w2;
	}
	print_row(w1, w2, "NAME", "URL", "MODELS");
	for (int i = 0; i < reg.n; i++) {
		const struct endpoint *ep = &reg.eps[i];
		char models[4096];
		size_t len = 0;
		models[0] = 0;
		for (int j = 0; j < ep->nmodels && len < sizeof models; j++)
			len += (size_t)snprintf(models + len, sizeof models - len, "%s%s",
						j ? "," : "", ep->models[j]);
		print_row(w1, w2, ep->name, ep->url, models);
	}
	registry_free(&reg);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "%s", usage_text);
		return 2;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		printf("%s", usage_text);
		return 0;
	}
	if (strcmp(argv[1], "serve") == 0 && argc == 2)
		return cmd_serve();
	if (strcmp(argv[1], "endpoints") == 0)
		return cmd_endpoints(argc - 2, argv + 2);
	fprintf(stderr, "%s", usage_text);
	return 2;
}
