/* Broker liveness probe: a metadata request (no topics) on a side thread, so a dead
 * broker is noticed, and its return too, without any client traffic. */
#include "probe.h"
#include "log.h"

#include <string.h>
#include <time.h>

static void *probe_main(void *arg)
{
	struct probe *p = arg;
	int was = 1;
	while (!atomic_load(&p->stop)) {
		const struct rd_kafka_metadata *md = NULL;
		rd_kafka_resp_err_t err = rd_kafka_metadata(p->rk, 0, NULL, &md, p->interval_ms);
		int up = err == RD_KAFKA_RESP_ERR_NO_ERROR && md && md->broker_cnt > 0;
		if (md)
			rd_kafka_metadata_destroy(md);
		atomic_store(&p->up, up);
		if (up != was)
			log_write(up ? LOG_INFO : LOG_ERROR,
				  up ? "message broker reachable again"
				     : "message broker unreachable",
				  (const struct log_kv[]){LS("error", rd_kafka_err2str(err))}, 1);
		was = up;
		/* Sleep the rest of the interval in small steps so stop is prompt. */
		for (int i = 0; i < p->interval_ms / 50 && up && !atomic_load(&p->stop); i++) {
			struct timespec ts = {0, 50 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
	}
	return NULL;
}

int probe_start(struct probe *p, rd_kafka_t *rk, int interval_ms)
{
	p->rk = rk;
	p->interval_ms = interval_ms;
	atomic_store(&p->up, 1);
	atomic_store(&p->stop, 0);
	int rc = pthread_create(&p->thread, NULL, probe_main, p);
	if (rc != 0) {
		log_error("cannot start the broker probe thread", LS("error", strerror(rc)));
		return -1;
	}
	p->started = 1;
	return 0;
}

int probe_up(struct probe *p)
{
	return !p->started || atomic_load(&p->up);
}

void probe_stop(struct probe *p)
{
	if (!p->started)
		return;
	atomic_store(&p->stop, 1);
	pthread_join(p->thread, NULL);
	p->started = 0;
}
