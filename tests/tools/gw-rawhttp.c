/* gw-rawhttp: a raw HTTP client for the hostile-input tests. Sends stdin's bytes to
 * HOST:PORT (optionally one byte per --delay-ms, optionally half-closing after), then
 * prints everything the server answers until it closes or --timeout-ms passes. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: gw-rawhttp HOST PORT [--delay-ms N] [--shutdown] [--timeout-ms N]\n"
    "                  [--rcvbuf BYTES] [--hold-ms N]\n"
    "  Sends stdin to HOST:PORT, prints the answer. Exit 0 when the server closed the\n"
    "  connection, 3 when it was still open at the timeout, 1 on errors.\n"
    "  --rcvbuf sets a small receive buffer; --hold-ms reads nothing for N ms after\n"
    "  sending (a slow reader).\n";

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads what the server sent so far, for up to wait_ms; -1 when it closed. */
static int drain(int fd, int wait_ms)
{
	struct pollfd pfd = {fd, POLLIN, 0};
	char buf[65536];
	long long end = now_ms() + wait_ms;
	for (;;) {
		long long left = end - now_ms();
		if (left < 0)
			left = 0;
		int r = poll(&pfd, 1, (int)left);
		if (r <= 0)
			return 0;
		ssize_t n = read(fd, buf, sizeof buf);
		if (n <= 0)
			return -1;
		fwrite(buf, 1, (size_t)n, stdout);
		fflush(stdout);
	}
}

int main(int argc, char **argv)
{
	int delay = 0, half = 0, timeout = 5000, rcvbuf = 0, hold = 0;
	if (argc < 3 || strcmp(argv[1], "--help") == 0) {
		fputs(usage, argc < 3 ? stderr : stdout);
		return argc < 3 ? 2 : 0;
	}
	for (int i = 3; i < argc; i++) {
		if (strcmp(argv[i], "--delay-ms") == 0 && i + 1 < argc)
			delay = atoi(argv[++i]);
		else if (strcmp(argv[i], "--timeout-ms") == 0 && i + 1 < argc)
			timeout = atoi(argv[++i]);
		else if (strcmp(argv[i], "--rcvbuf") == 0 && i + 1 < argc)
			rcvbuf = atoi(argv[++i]);
		else if (strcmp(argv[i], "--hold-ms") == 0 && i + 1 < argc)
			hold = atoi(argv[++i]);
		else if (strcmp(argv[i], "--shutdown") == 0)
			half = 1;
		else {
			fputs(usage, stderr);
			return 2;
		}
	}
	char *req = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 65536;
			req = realloc(req, cap);
			if (!req)
				return 1;
		}
		size_t n = fread(req + len, 1, cap - len, stdin);
		if (n == 0)
			break;
		len += n;
	}
	struct addrinfo hints = {0}, *ai;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(argv[1], argv[2], &hints, &ai) != 0) {
		fprintf(stderr, "gw-rawhttp: cannot resolve %s\n", argv[1]);
		return 1;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM, 0);
	if (fd >= 0 && rcvbuf > 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
	if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		fprintf(stderr, "gw-rawhttp: connect: %s\n", strerror(errno));
		return 1;
	}
	freeaddrinfo(ai);
	int closed = 0;
	long long end = now_ms() + timeout;
	for (size_t off = 0; off < len && !closed;) {
		size_t n = delay > 0 ? 1 : len - off;
		ssize_t w = send(fd, req + off, n, MSG_NOSIGNAL);
		if (w <= 0) {
			closed = 1;
			break;
		}
		off += (size_t)w;
		if (delay > 0) {
			if (drain(fd, delay) < 0)
				closed = 1;
			if (now_ms() > end)
				break;
		}
	}
	if (half)
		shutdown(fd, SHUT_WR);
	if (hold > 0) {
		struct timespec ts = {hold / 1000, (hold % 1000) * 1000000L};
		nanosleep(&ts, NULL);
	}
	while (!closed && now_ms() < end)
		if (drain(fd, (int)(end - now_ms())) < 0)
			closed = 1;
	close(fd);
	free(req);
	return closed ? 0 : 3;
}
