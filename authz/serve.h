/* `authz serve`: consumes gw.requests and gw.usage, decides each request from the key
 * cache, and produces gw.authorized, denials on gw.replies and authz.decision audit
 * events. */
#ifndef GW_AUTHZ_SERVE_H
#define GW_AUTHZ_SERVE_H

/* Runs until SIGTERM/SIGINT; returns the process exit code. */
int serve_main(void);

#endif
