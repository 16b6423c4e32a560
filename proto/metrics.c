/* Prometheus text-format metrics: a small registry of series, rendered on scrape. */
#include "metrics.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
				 0.5,    1,     2.5,    5,     10,   30,    60,   120};
#define NBUCKETS (sizeof buckets / sizeof buckets[0])

/* Owned by the registry list; freed in metrics_free. */
struct metric {
	enum metric_type type;
	char *name, *labels, *help;
	double value;
	double sum;
	unsigned long long count;
	unsigned long long bucket[NBUCKETS];
	double (*fn)(void *);
	void *fn_arg;
	struct metric *next;
};

static struct metric *head, *tail;

static int same(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

struct metric *metric_get(enum metric_type type, const char *name, const char *labels,
			  const char *help)
{
	if (labels && !*labels)
		labels = NULL;
	for (struct metric *m = head; m; m = m->next)
		if (strcmp(m->name, name) == 0 && same(m->labels, labels))
			return m;
	struct metric *m = calloc(1, sizeof *m);
	if (!m || !(m->name = strdup(name)) || (labels && !(m->labels = strdup(labels))) ||
	    !(m->help = strdup(help ? help : name))) {
		log_error("out of memory registering metric", LS("name", name));
		if (m) {
			free(m->name);
			free(m->labels);
			free(m);
		}
		return NULL;
	}
	m->type = type;
	if (tail)
		tail->next = m;
	else
		head = m;
	tail = m;
	return m;
}

struct metric *metric_gauge_fn(const char *name, const char *labels, const char *help,
			       double (*fn)(void *arg), void *arg)
{
	struct metric *m = metric_get(METRIC_GAUGE, name, labels, help);
	if (m) {
		m->fn = fn;
		m->fn_arg = arg;
	}
	return m;
}

void metric_add(struct metric *m, double v)
{
	if (m)
		m->value += v;
}

void metric_set(struct metric *m, double v)
{
	if (m)
		m->value = v;
}

void metric_observe(struct metric *m, double s)
{
	if (!m)
		return;
	m->count++;
	m->sum += s;
	for (size_t i = 0; i < NBUCKETS; i++)
		if (s <= buckets[i])
			m->bucket[i]++;
}

static void series(struct evbuffer *out, const char *name, const char *suffix, const char *labels,
		   const char *extra, double v)
{
	int any = (labels && *labels) || extra;
	evbuffer_add_printf(out, "%s%s%s%s%s%s%s %.17g\n", name, suffix, any ? "{" : "",
			    labels ? labels : "", labels && extra ? "," : "", extra ? extra : "",
			    any ? "}" : "", v);
}

void metrics_render(struct evbuffer *out)
{
	static const char *const types[] = {"counter", "gauge", "histogram"};
	for (struct metric *m = head; m; m = m->next) {
		/* HELP/TYPE once per name, before its first series. */
		int first = 1;
		for (struct metric *p = head; p != m; p = p->next)
			if (strcmp(p->name, m->name) == 0) {
				first = 0;
				break;
			}
		if (!first)
			continue;
		evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name,
				    types[m->type]);
		for (struct metric *s = m; s; s = s->next) {
			if (strcmp(s->name, m->name) != 0)
				continue;
			if (s->type != METRIC_HISTOGRAM) {
				series(out, s->name, "", s->labels, NULL,
				       s->fn ? s->fn(s->fn_arg) : s->value);
				continue;
			}
			char le[48];
			for (size_t i = 0; i < NBUCKETS; i++) {
				snprintf(le, sizeof le, "le=\"%g\"", buckets[i]);
				series(out, s->name, "_bucket", s->labels, le,
				       (double)s->bucket[i]);
			}
			series(out, s->name, "_bucket", s->labels, "le=\"+Inf\"", (double)s->count);
			series(out, s->name, "_sum", s->labels, NULL, s->sum);
			series(out, s->name, "_count", s->labels, NULL, (double)s->count);
		}
	}
}

void metrics_free(void)
{
	struct metric *m = head;
	while (m) {
		struct metric *n = m->next;
		free(m->name);
		free(m->labels);
		free(m->help);
		free(m);
		m = n;
	}
	head = tail = NULL;
}
