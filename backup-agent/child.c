/* Child processes driven by the event loop: spawned without a shell, stdout streamed in
 * bounded chunks, stderr kept up to CHILD_ERR_MAX, exit seen via SIGCHLD + waitpid. */
#include "child.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"

#define CHUNK             65536
#define CHUNKS_PER_WAKEUP 4
/* A bigger pipe means fewer wakeups per MiB dumped; refused above pipe-max-size, which
 * only costs throughput. */
#define PIPE_SIZE         (1 << 20)

static void close_out(struct child *c)
{
	if (c->out_ev)
		event_free(c->out_ev);
	c->out_ev = NULL;
	if (c->out_fd >= 0)
		close(c->out_fd);
	c->out_fd = -1;
}

static void close_err(struct child *c)
{
	if (c->err_ev)
		event_free(c->err_ev);
	c->err_ev = NULL;
	if (c->err_fd >= 0)
		close(c->err_fd);
	c->err_fd = -1;
}

/* The sink refused data (a write failed): stop the child rather than let it run on
 * into a pipe nobody reads. */
static void sink_fail(struct child *c)
{
	c->sink_failed = 1;
	close_out(c);
	if (c->pid > 0 && kill(-c->pid, SIGTERM) != 0 && errno != ESRCH)
		log_warn("cannot stop child", LI("pid", c->pid), LS("error", strerror(errno)));
}

/* Reads stdout until EAGAIN or EOF, or max chunks; returns 1 when the pipe is done. */
static int read_out(struct child *c, int max)
{
	char buf[CHUNK];
	for (int i = 0; max < 0 || i < max; i++) {
		ssize_t r = read(c->out_fd, buf, sizeof buf);
		if (r > 0) {
			if (c->on_out(c->arg, buf, (size_t)r) != 0) {
				sink_fail(c);
				return 1;
			}
			continue;
		}
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			return 0;
		if (r < 0)
			log_error("cannot read the child's output", LI("pid", c->pid),
				  LS("error", strerror(errno)));
		close_out(c);
		return 1;
	}
	return 0;
}

static int read_err(struct child *c)
{
	char buf[4096];
	for (;;) {
		ssize_t r = read(c->err_fd, buf, sizeof buf);
		if (r > 0) {
			size_t room = CHILD_ERR_MAX - 1 - c->errlen;
			size_t take = (size_t)r < room ? (size_t)r : room;
			memcpy(c->err + c->errlen, buf, take);
			c->errlen += take;
			c->err[c->errlen] = 0;
			c->err_dropped += (size_t)r - take;
			continue;
		}
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			return 0;
		close_err(c);
		return 1;
	}
}

static void on_out_ready(evutil_socket_t fd, short what, void *arg)
{
	read_out(arg, CHUNKS_PER_WAKEUP);
}

static void on_err_ready(evutil_socket_t fd, short what, void *arg)
{
	read_err(arg);
}

static void on_sigchld(evutil_socket_t sig, short what, void *arg)
{
	struct child *c = arg;
	if (c->pid <= 0)
		return;
	int st;
	pid_t r = waitpid(c->pid, &st, WNOHANG);
	if (r == 0)
		return;
	if (r < 0) {
		if (errno == EINTR)
			return;
		/* ECHILD: reaped by someone else; the status is lost, so it cannot count as
		 * a success. */
		log_error("lost track of a child process", LI("pid", c->pid),
			  LS("error", strerror(errno)));
		st = -1;
	}
	c->status = st;
	c->pid = 0;
	/* Whatever it wrote before exiting is still in the pipes: take it all. A writer
	 * left holding the pipe (a grandchild) gives EAGAIN instead of EOF; stop there. */
	if (c->out_fd >= 0 && !c->sink_failed)
		read_out(c, -1);
	close_out(c);
	if (c->err_fd >= 0)
		read_err(c);
	close_err(c);
	c->on_exit(c->arg);
}

int child_init(struct child *c, struct event_base *base,
	       int (*on_out)(void *arg, const void *buf, size_t n), void (*on_exit)(void *arg),
	       void *arg)
{
	memset(c, 0, sizeof *c);
	c->base = base;
	c->out_fd = c->err_fd = -1;
	c->on_out = on_out;
	c->on_exit = on_exit;
	c->arg = arg;
	c->sigchld = evsignal_new(base, SIGCHLD, on_sigchld, c);
	if (!c->sigchld || evsignal_add(c->sigchld, NULL) != 0) {
		log_error("cannot watch SIGCHLD");
		return -1;
	}
	return 0;
}

void child_free(struct child *c)
{
	child_kill(c);
	if (c->sigchld)
		event_free(c->sigchld);
	c->sigchld = NULL;
}

int child_running(const struct child *c)
{
	return c->pid > 0;
}

int child_spawn(struct child *c, const char *path, char *const argv[], char *const envp[])
{
	int outp[2] = {-1, -1}, errp[2] = {-1, -1};
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	int fa_ok = 0, attr_ok = 0, rc = -1, err;
	const char *step = "pipe2";
	if (c->pid > 0) {
		log_error("child_spawn: a child is already running", LI("pid", c->pid));
		return -1;
	}
	c->status = 0;
	c->sink_failed = 0;
	c->errlen = 0;
	c->err[0] = 0;
	c->err_dropped = 0;
	if (pipe2(outp, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0) {
		err = errno;
		goto out;
	}
	(void)fcntl(outp[0], F_SETPIPE_SZ, PIPE_SIZE);
	step = "posix_spawn setup";
	if ((err = posix_spawn_file_actions_init(&fa)) != 0)
		goto out;
	fa_ok = 1;
	if ((err = posix_spawnattr_init(&attr)) != 0)
		goto out;
	attr_ok = 1;
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	/* The child starts clean: no blocked signals, default dispositions (we ignore
	 * SIGPIPE; pg_dump must not), its own process group, and no descriptor of ours
	 * beyond 0-2 (Kafka sockets, the admin listener). */
	if ((err = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)) ||
	    (err = posix_spawn_file_actions_adddup2(&fa, outp[1], 1)) ||
	    (err = posix_spawn_file_actions_adddup2(&fa, errp[1], 2)) ||
	    (err = posix_spawn_file_actions_addclosefrom_np(&fa, 3)) ||
	    (err = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
						       POSIX_SPAWN_SETPGROUP)) ||
	    (err = posix_spawnattr_setsigmask(&attr, &none)) ||
	    (err = posix_spawnattr_setsigdefault(&attr, &all)) ||
	    (err = posix_spawnattr_setpgroup(&attr, 0)))
		goto out;
	step = "posix_spawn";
	pid_t pid;
	if ((err = posix_spawn(&pid, path, &fa, &attr, argv, envp)) != 0)
		goto out;
	close(outp[1]);
	close(errp[1]);
	outp[1] = errp[1] = -1;
	c->pid = pid;
	c->out_fd = outp[0];
	c->err_fd = errp[0];
	outp[0] = errp[0] = -1;
	step = "event setup";
	if (fcntl(c->out_fd, F_SETFL, O_NONBLOCK) != 0 ||
	    fcntl(c->err_fd, F_SETFL, O_NONBLOCK) != 0) {
		err = errno;
		child_kill(c);
		goto out;
	}
	c->out_ev = event_new(c->base, c->out_fd, EV_READ | EV_PERSIST, on_out_ready, c);
	c->err_ev = event_new(c->base, c->err_fd, EV_READ | EV_PERSIST, on_err_ready, c);
	if (!c->out_ev || !c->err_ev || event_add(c->out_ev, NULL) != 0 ||
	    event_add(c->err_ev, NULL) != 0) {
		err = ENOMEM;
		child_kill(c);
		goto out;
	}
	rc = 0;
out:
	if (rc != 0)
		log_error("cannot start child process", LS("path", path), LS("step", step),
			  LS("error", strerror(err)));
	for (int i = 0; i < 2; i++) {
		if (outp[i] >= 0)
			close(outp[i]);
		if (errp[i] >= 0)
			close(errp[i]);
	}
	if (fa_ok)
		posix_spawn_file_actions_destroy(&fa);
	if (attr_ok)
		posix_spawnattr_destroy(&attr);
	return rc;
}

void child_kill(struct child *c)
{
	if (c->pid > 0) {
		/* The whole process group: a wrapper script's children too. */
		if (kill(-c->pid, SIGKILL) != 0 && errno != ESRCH)
			log_warn("cannot kill child", LI("pid", c->pid),
				 LS("error", strerror(errno)));
		int st;
		pid_t r;
		do {
			r = waitpid(c->pid, &st, 0);
		} while (r < 0 && errno == EINTR);
		c->status = r == c->pid ? st : -1;
		c->pid = 0;
	}
	close_out(c);
	close_err(c);
}

int child_succeeded(const struct child *c)
{
	return c->status != -1 && WIFEXITED(c->status) && WEXITSTATUS(c->status) == 0;
}

void child_describe(const struct child *c, char *buf, size_t cap)
{
	int n;
	if (c->status == -1)
		n = snprintf(buf, cap, "exit status lost");
	else if (WIFEXITED(c->status))
		n = snprintf(buf, cap, "exited with status %d", WEXITSTATUS(c->status));
	else if (WIFSIGNALED(c->status))
		n = snprintf(buf, cap, "killed by signal %d (%s)", WTERMSIG(c->status),
			     strsignal(WTERMSIG(c->status)));
	else
		n = snprintf(buf, cap, "ended with wait status %d", c->status);
	if (n < 0 || (size_t)n >= cap || c->errlen == 0)
		return;
	/* stderr folded onto one line: newlines become " | ", trailing ones dropped. */
	size_t len = (size_t)n, end = c->errlen;
	while (end > 0 && (c->err[end - 1] == '\n' || c->err[end - 1] == '\r'))
		end--;
	if (end == 0)
		return;
	const char *sep = ": ";
	for (size_t i = 0; i < end && len + 4 < cap; i++) {
		if (sep) {
			for (const char *s = sep; *s && len + 1 < cap; s++)
				buf[len++] = *s;
			sep = NULL;
		}
		char ch = c->err[i];
		if (ch == '\n') {
			buf[len++] = ' ';
			buf[len++] = '|';
			buf[len++] = ' ';
		} else if (ch != '\r') {
			buf[len++] = ch;
		}
	}
	buf[len] = 0;
	if (c->err_dropped)
		snprintf(buf + len, cap - len, " ... (%zu more bytes)", c->err_dropped);
}
