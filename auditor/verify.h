/* `auditor verify`: walks every hash chain in audit.audit_events and names each row
 * that was altered, deleted, inserted or reordered since the auditor wrote it. */
#ifndef GW_VERIFY_H
#define GW_VERIFY_H

/* argv[0] is "verify". Exit codes: 0 every chain intact, 1 tampering found, 2 usage,
 * 3 could not verify (database unreachable, schema too old). */
int verify_main(int argc, char **argv);

#endif
