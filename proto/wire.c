/* Codec between Kafka headers and struct gw_meta. Every value is validated here so
 * stages can trust what they decode. */
#include "wire.h"

#include <errno.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

int64_t wire_now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

int64_t wire_now_us(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

int wire_id_valid(const char *s)
{
	if (!s)
		return 0;
	for (int i = 0; i < GW_ID_HEX; i++) {
		char c = s[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return 0;
	}
	return s[GW_ID_HEX] == 0;
}

int wire_id_new(char out[GW_ID_HEX + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char raw[16];
	if (RAND_bytes(raw, sizeof raw) != 1)
		return -1;
	for (int i = 0; i < 16; i++) {
		out[2 * i] = hex[raw[i] >> 4];
		out[2 * i + 1] = hex[raw[i] & 15];
	}
	out[GW_ID_HEX] = 0;
	return 0;
}

/* Header values are text without control characters, except gw-cred (binary). */
static int text_ok(const char *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)v[i];
		if (c < 0x20 || c == 0x7f)
			return 0;
	}
	return 1;
}

static int copy_text(const void *v, size_t n, char *out, size_t cap)
{
	if (!v || n >= cap || !text_ok(v, n))
		return -1;
	memcpy(out, v, n);
	out[n] = 0;
	return 0;
}

static int parse_i64(const void *v, size_t n, int64_t min, int64_t max, int64_t *out)
{
	char buf[24];
	if (!v || n == 0 || n >= sizeof buf)
		return -1;
	memcpy(buf, v, n);
	buf[n] = 0;
	for (size_t i = 0; i < n; i++)
		if (!(buf[i] >= '0' && buf[i] <= '9') && !(i == 0 && buf[i] == '-' && n > 1))
			return -1;
	errno = 0;
	long long x = strtoll(buf, NULL, 10);
	if (errno || x < min || x > max)
		return -1;
	*out = x;
	return 0;
}

struct field_spec {
	unsigned flag;
	const char *name;
};

static const struct field_spec fields[] = {
    {GW_F_ID, GW_H_ID},         {GW_F_DEADLINE, GW_H_DEADLINE}, {GW_F_REPLY, GW_H_REPLY},
    {GW_F_ROUTE, GW_H_ROUTE},   {GW_F_MODEL, GW_H_MODEL},       {GW_F_STREAM, GW_H_STREAM},
    {GW_F_CRED, GW_H_CRED},     {GW_F_CLIENT, GW_H_CLIENT},     {GW_F_PRINCIPAL, GW_H_PRINCIPAL},
    {GW_F_GROUPS, GW_H_GROUPS}, {GW_F_RULE, GW_H_RULE},         {GW_F_STATUS, GW_H_STATUS},
    {GW_F_SEQ, GW_H_SEQ},       {GW_F_FINAL, GW_H_FINAL},       {GW_F_CTYPE, GW_H_CTYPE},
    {GW_F_HINT, GW_H_HINT},     {GW_F_CLUSTER, GW_H_CLUSTER},   {GW_F_FRAMEWORK, GW_H_FRAMEWORK},
    {GW_F_MODELS, GW_H_MODELS}, {GW_F_CANCEL, GW_H_CANCEL},
};

static int decode_field(struct gw_meta *m, unsigned flag, const void *v, size_t n)
{
	int64_t x;
	switch (flag) {
	case GW_F_ID:
		if (copy_text(v, n, m->id, sizeof m->id) || !wire_id_valid(m->id))
			return -1;
		return 0;
	case GW_F_DEADLINE:
		if (parse_i64(v, n, 0, INT64_MAX / 2, &x))
			return -1;
		m->deadline_ms = x;
		return 0;
	case GW_F_REPLY:
		if (parse_i64(v, n, 0, 100000, &x))
			return -1;
		m->reply_partition = (int32_t)x;
		return 0;
	case GW_F_ROUTE: return copy_text(v, n, m->route, sizeof m->route);
	case GW_F_MODEL: return copy_text(v, n, m->model, sizeof m->model);
	case GW_F_STREAM:
		if (parse_i64(v, n, 0, 1, &x))
			return -1;
		m->stream = (int)x;
		return 0;
	case GW_F_CRED:
		if (!v || n == 0 || n > GW_CRED_MAX)
			return -1;
		memcpy(m->cred, v, n);
		m->cred_len = n;
		return 0;
	case GW_F_CLIENT: return copy_text(v, n, m->client, sizeof m->client);
	case GW_F_PRINCIPAL: return copy_text(v, n, m->principal, sizeof m->principal);
	case GW_F_GROUPS: return copy_text(v, n, m->groups, sizeof m->groups);
	case GW_F_RULE: return copy_text(v, n, m->rule, sizeof m->rule);
	case GW_F_STATUS:
		if (parse_i64(v, n, 100, 599, &x))
			return -1;
		m->status = (int)x;
		return 0;
	case GW_F_SEQ:
		if (parse_i64(v, n, 0, INT32_MAX, &x))
			return -1;
		m->seq = (int32_t)x;
		return 0;
	case GW_F_FINAL:
		if (parse_i64(v, n, 0, 1, &x))
			return -1;
		m->final = (int)x;
		return 0;
	case GW_F_CTYPE: return copy_text(v, n, m->ctype, sizeof m->ctype);
	case GW_F_HINT: return copy_text(v, n, m->hint, sizeof m->hint);
	case GW_F_CLUSTER: return copy_text(v, n, m->cluster, sizeof m->cluster);
	case GW_F_FRAMEWORK: return copy_text(v, n, m->framework, sizeof m->framework);
	case GW_F_MODELS: return copy_text(v, n, m->models, sizeof m->models);
	case GW_F_CANCEL:
		if (parse_i64(v, n, 0, 1, &x))
			return -1;
		m->cancel = (int)x;
		return 0;
	}
	return -1;
}

int wire_decode(const rd_kafka_message_t *msg, unsigned required, struct gw_meta *m,
		const char **reason)
{
	rd_kafka_headers_t *hdrs = NULL;
	if (rd_kafka_message_headers(msg, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR || !hdrs) {
		memset(m, 0, offsetof(struct gw_meta, cred));
		*reason = "no headers";
		return -1;
	}
	return wire_decode_headers(hdrs, required, m, reason);
}

int wire_decode_headers(const rd_kafka_headers_t *hdrs, unsigned required, struct gw_meta *m,
			const char **reason)
{
	memset(m, 0, offsetof(struct gw_meta, cred));
	m->cred_len = 0;
	m->reply_partition = -1;
	const void *v;
	size_t n;
	if (rd_kafka_header_get_last(hdrs, GW_H_VERSION, &v, &n) != RD_KAFKA_RESP_ERR_NO_ERROR ||
	    !v || n == 0) {
		*reason = "missing gw-v";
		return -1;
	}
	/* Major version: digits up to the first '.', which must equal GW_WIRE_MAJOR. */
	size_t dot = 0;
	while (dot < n && ((const char *)v)[dot] != '.')
		dot++;
	int64_t major;
	if (parse_i64(v, dot, 0, 1000, &major) || major != GW_WIRE_MAJOR) {
		*reason = "unsupported gw-v major version";
		return -1;
	}
	for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
		if (rd_kafka_header_get_last(hdrs, fields[i].name, &v, &n) !=
		    RD_KAFKA_RESP_ERR_NO_ERROR)
			continue;
		if (decode_field(m, fields[i].flag, v, n) != 0) {
			*reason = "invalid header value";
			return -1;
		}
		m->present |= fields[i].flag;
	}
	if ((m->present & required) != required) {
		*reason = "missing required header";
		return -1;
	}
	*reason = NULL;
	return 0;
}

static int add_text(rd_kafka_headers_t *h, const char *name, const char *v)
{
	return rd_kafka_header_add(h, name, -1, v, (ssize_t)strlen(v)) ? -1 : 0;
}

static int add_int(rd_kafka_headers_t *h, const char *name, long long x)
{
	char buf[24];
	int n = snprintf(buf, sizeof buf, "%lld", x);
	return rd_kafka_header_add(h, name, -1, buf, n) ? -1 : 0;
}

int wire_encode(const struct gw_meta *m, unsigned want, rd_kafka_headers_t *h)
{
	if (add_text(h, GW_H_VERSION, GW_WIRE_VERSION))
		return -1;
	for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
		unsigned f = fields[i].flag;
		const char *name = fields[i].name;
		if (!(want & f))
			continue;
		int rc = 0;
		switch (f) {
		case GW_F_ID: rc = wire_id_valid(m->id) ? add_text(h, name, m->id) : -1; break;
		case GW_F_DEADLINE: rc = add_int(h, name, m->deadline_ms); break;
		case GW_F_REPLY:
			rc = m->reply_partition < 0 ? -1 : add_int(h, name, m->reply_partition);
			break;
		case GW_F_ROUTE: rc = add_text(h, name, m->route); break;
		case GW_F_MODEL: rc = add_text(h, name, m->model); break;
		case GW_F_STREAM: rc = add_int(h, name, m->stream ? 1 : 0); break;
		case GW_F_CRED:
			rc = (m->cred_len == 0 || m->cred_len > GW_CRED_MAX)
				 ? -1
				 : (rd_kafka_header_add(h, name, -1, m->cred, (ssize_t)m->cred_len)
					? -1
					: 0);
			break;
		case GW_F_CLIENT: rc = add_text(h, name, m->client); break;
		case GW_F_PRINCIPAL: rc = add_text(h, name, m->principal); break;
		case GW_F_GROUPS: rc = add_text(h, name, m->groups); break;
		case GW_F_RULE: rc = add_text(h, name, m->rule); break;
		case GW_F_STATUS:
			rc =
			    (m->status < 100 || m->status > 599) ? -1 : add_int(h, name, m->status);
			break;
		case GW_F_SEQ: rc = m->seq < 0 ? -1 : add_int(h, name, m->seq); break;
		case GW_F_FINAL: rc = add_int(h, name, m->final ? 1 : 0); break;
		case GW_F_CTYPE: rc = add_text(h, name, m->ctype); break;
		case GW_F_HINT: rc = add_text(h, name, m->hint); break;
		case GW_F_CLUSTER: rc = add_text(h, name, m->cluster); break;
		case GW_F_FRAMEWORK: rc = add_text(h, name, m->framework); break;
		case GW_F_MODELS: rc = add_text(h, name, m->models); break;
		case GW_F_CANCEL: rc = add_int(h, name, m->cancel ? 1 : 0); break;
		}
		if (rc)
			return -1;
	}
	return 0;
}
