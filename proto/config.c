/* Settings from the environment and *_FILE secrets. */
#include "config.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int config_load_env_file(void)
{
	const char *path = getenv("GW_ENV_FILE");
	int explicit_path = path && *path;
	if (!explicit_path)
		path = ".run/env";
	FILE *f = fopen(path, "r");
	if (!f) {
		if (!explicit_path && errno == ENOENT)
			return 0;
		log_error("cannot read env file", LS("path", path), LS("error", strerror(errno)));
		return -1;
	}
	char line[4096];
	while (fgets(line, sizeof line, f)) {
		size_t n = strcspn(line, "\r\n");
		line[n] = 0;
		if (!line[0] || line[0] == '#')
			continue;
		char *eq = strchr(line, '=');
		if (!eq || eq == line)
			continue;
		*eq = 0;
		char *val = eq + 1;
		/* Values may be single-quoted, as written by the run script. */
		size_t vl = strlen(val);
		if (vl >= 2 && val[0] == '\'' && val[vl - 1] == '\'') {
			val[vl - 1] = 0;
			val++;
		}
		if (setenv(line, val, 0) != 0) {
			log_error("setenv failed", LS("name", line), LS("error", strerror(errno)));
			fclose(f);
			return -1;
		}
	}
	fclose(f);
	return 0;
}

const char *config_str(const char *name, const char *def)
{
	const char *v = getenv(name);
	return (v && *v) ? v : def;
}

int config_int(const char *name, long long def, long long min, long long max, long long *out)
{
	const char *v = getenv(name);
	if (!v || !*v) {
		*out = def;
		return 0;
	}
	char *end;
	errno = 0;
	long long x = strtoll(v, &end, 10);
	if (errno || *end || end == v) {
		log_error("setting is not an integer", LS("name", name), LS("value", v));
		return -1;
	}
	if (x < min || x > max) {
		log_error("setting out of range", LS("name", name), LI("value", x), LI("min", min),
			  LI("max", max));
		return -1;
	}
	*out = x;
	return 0;
}

int config_secret(const char *name, char **out, size_t *len)
{
	char fname[256];
	*out = NULL;
	if (len)
		*len = 0;
	snprintf(fname, sizeof fname, "%s_FILE", name);
	const char *direct = getenv(name);
	const char *file = getenv(fname);
	if (direct && *direct && file && *file) {
		log_error("both a secret and its _FILE are set; set only one", LS("name", name));
		return -1;
	}
	if (direct && *direct) {
		*out = strdup(direct);
		if (!*out)
			return -1;
		if (len)
			*len = strlen(*out);
		return 0;
	}
	if (!file || !*file)
		return 0;
	FILE *f = fopen(file, "r");
	if (!f) {
		log_error("cannot read secret file", LS("name", fname), LS("path", file),
			  LS("error", strerror(errno)));
		return -1;
	}
	size_t cap = 1024, n = 0;
	char *buf = malloc(cap);
	if (!buf) {
		fclose(f);
		return -1;
	}
	for (;;) {
		if (n + 1 >= cap) {
			if (cap >= (1u << 20)) {
				log_error("secret file too large", LS("name", fname));
				free(buf);
				fclose(f);
				return -1;
			}
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				fclose(f);
				return -1;
			}
			buf = nb;
			cap *= 2;
		}
		size_t r = fread(buf + n, 1, cap - n - 1, f);
		if (r == 0)
			break;
		n += r;
	}
	int err = ferror(f);
	fclose(f);
	if (err) {
		log_error("error reading secret file", LS("name", fname));
		free(buf);
		return -1;
	}
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	buf[n] = 0;
	*out = buf;
	if (len)
		*len = n;
	return 0;
}

const char *config_instance(const char *service)
{
	static char inst[128];
	const char *v = getenv("GW_INSTANCE");
	if (v && *v) {
		snprintf(inst, sizeof inst, "%s", v);
		return inst;
	}
	char host[64] = "localhost";
	if (gethostname(host, sizeof host) != 0)
		snprintf(host, sizeof host, "localhost");
	host[sizeof host - 1] = 0;
	snprintf(inst, sizeof inst, "%s-%s-%ld", service, host, (long)getpid());
	return inst;
}
