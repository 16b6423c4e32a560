/* A child process run from the event loop without a shell: posix_spawn, stdout streamed
 * to a sink in bounded chunks, stderr kept (bounded) for the error message, and its exit
 * seen through an evsignal on SIGCHLD plus waitpid(WNOHANG). Nothing here blocks. */
#ifndef BACKUP_CHILD_H
#define BACKUP_CHILD_H

#include <event2/event.h>
#include <stddef.h>
#include <sys/types.h>

#define CHILD_ERR_MAX 2048

/* Embedded in its user, which outlives it; one run at a time. The events are owned
 * here (child_init / child_free). */
struct child {
	struct event_base *base;
	pid_t pid;  /* 0 when no child runs */
	int out_fd; /* read ends of the pipes, -1 when closed */
	int err_fd;
	struct event *out_ev, *err_ev;
	struct event *sigchld; /* persistent: a SIGCHLD for any child wakes us to waitpid ours */
	int status;            /* waitpid status, valid once on_exit runs */
	int sink_failed;       /* on_out refused data: the child was stopped */
	char err[CHILD_ERR_MAX];
	size_t errlen;
	size_t err_dropped; /* stderr bytes beyond CHILD_ERR_MAX */
	/* Each chunk of stdout; returning -1 stops the child (SIGTERM to its process group,
	 * pipe closed) and no more data is delivered. */
	int (*on_out)(void *arg, const void *buf, size_t n);
	/* Once per run: the child was reaped and its pipes drained. */
	void (*on_exit)(void *arg);
	void *arg;
};

int child_init(struct child *c, struct event_base *base,
	       int (*on_out)(void *arg, const void *buf, size_t n), void (*on_exit)(void *arg),
	       void *arg);
void child_free(struct child *c);

/* Starts path with argv and envp (NULL-terminated), stdin from /dev/null, in its own
 * process group (a terminal's ^C is for us to act on, not for pg_dump). -1 logged. */
int child_spawn(struct child *c, const char *path, char *const argv[], char *const envp[]);

int child_running(const struct child *c);

/* Kills the child's process group with SIGKILL and reaps the child (blocking, which SIGKILL keeps short);
 * on_exit is not called. For shutdown and aborts. */
void child_kill(struct child *c);

/* "exited with status 1" / "killed by signal 9 (Killed)"; then the first stderr line(s),
 * newlines folded, when there was stderr output. */
void child_describe(const struct child *c, char *buf, size_t cap);

/* True when the child exited with status 0. */
int child_succeeded(const struct child *c);

#endif
