/* gw-mock-endpoint: a deterministic OpenAI-compatible compute endpoint for
 * development, tests and benchmarks (DESIGN.md, "The embedded default"). */
#include "mock_config.h"
#include "mock_server.h"

#include "log.h"
#include "runtime.h"

#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: gw-mock-endpoint [serve]\n"
    "       gw-mock-endpoint --help\n"
    "\n"
    "Serves a deterministic OpenAI-compatible API until SIGTERM/SIGINT:\n"
    "  POST /v1/chat/completions, /v1/completions (\"stream\": true for SSE),\n"
    "  POST /v1/embeddings, GET /v1/models, GET /health, GET /mock/stats.\n"
    "\n"
    "Environment:\n"
    "  GW_MOCK_LISTEN             host:port to listen on (127.0.0.1:8000)\n"
    "  GW_MOCK_MODELS             comma-separated model names (mock-llm,mock-embed)\n"
    "  GW_MOCK_LATENCY_MS         delay before answering (0)\n"
    "  GW_MOCK_TOKEN_MS           delay between stream chunks (0)\n"
    "  GW_MOCK_COMPLETION_TOKENS  words per completion (16)\n"
    "  GW_MOCK_FAIL_RATE          fraction 0..1 of requests answered 503 (0)\n"
    "  GW_MOCK_MAX_INFLIGHT       delayed/streamed answers at once, then 503 (10000)\n"
    "  GW_MOCK_API_KEY[_FILE]     require \"Authorization: Bearer <key>\" (unset: none)\n"
    "  GW_ADMIN_LISTEN            runtime admin listener (off)\n"
    "  GW_LOG_LEVEL               debug|info|warn|error (info)\n";

struct app {
	struct runtime rt;
	struct mock_config cfg;
	struct mock_server srv;
};

static void on_stopped(void *arg)
{
	struct app *app = arg;

	runtime_exit(&app->rt);
}

static void on_stop(void *arg)
{
	struct app *app = arg;

	mock_server_stop(&app->srv, on_stopped, app);
}

static int serve(void)
{
	static struct app app; /* large (model table); lives for the whole process */
	int rc = 1;

	if (runtime_setup(&app.rt, "gw-mock-endpoint", "off") < 0)
		goto out_rt;
	if (mock_config_load(&app.cfg) < 0)
		goto out_rt;
	if (mock_server_start(&app.srv, app.rt.base, &app.cfg) < 0)
		goto out;
	app.rt.on_stop = on_stop;
	app.rt.arg = &app;
	if (runtime_run(&app.rt) == 0)
		rc = 0;
	log_info("mock endpoint stopped", LI("requests", app.srv.stats.requests),
		 LI("streams", app.srv.stats.streams), LI("cancelled", app.srv.stats.cancelled),
		 LI("failed", app.srv.stats.failed));
out:
	mock_server_free(&app.srv);
	mock_config_free(&app.cfg);
out_rt:
	runtime_free(&app.rt);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
			  strcmp(argv[1], "help") == 0)) {
		fputs(usage, stdout);
		return 0;
	}
	if (argc == 1 || (argc == 2 && strcmp(argv[1], "serve") == 0))
		return serve();
	fputs(usage, stderr);
	return 2;
}
