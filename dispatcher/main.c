/* dispatcher: routes authorized requests from gw.authorized to the compute endpoints
 * and relays their answers (DESIGN.md). `serve` runs the stage; `endpoints` checks and
 * shows the endpoint registry. */
#include "dispatch.h"
#include "config.h"
#include "log.h"
#include "registry.h"
#include "runtime.h"

#include <stdio.h>
#include <string.h>

static const char usage_text[] =
    "usage: dispatcher <command>\n"
    "\n"
    "commands:\n"
    "  serve                  consume gw.authorized, call the endpoints, relay the answers\n"
    "  endpoints [--file F]   validate the endpoints file (GW_ENDPOINTS_FILE, or F) and\n"
    "                         print the registry\n"
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

static int cmd_endpoints(int argc, char **argv)
{
	const char *file = NULL;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--file") == 0 && i + 1 < argc) {
			file = argv[++i];
		} else {
			fprintf(stderr, "%s", usage_text);
			return 2;
		}
	}
	if (runtime_setup_cli("dispatcher") != 0)
		return 1;
	if (!file)
		file = config_str("GW_ENDPOINTS_FILE", NULL);
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
