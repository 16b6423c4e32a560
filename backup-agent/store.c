/* The snapshot directory: naming, crash-safe publication and the checked listing.
 * A final name (<id>.dump, <id>.json) only ever appears by rename of a complete,
 * fsynced file, so a crash leaves at most a temporary file behind. */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define MANIFEST_FILE_MAX 65536

static int mkdir_parents(const char *path)
{
	char buf[PATH_MAX];
	if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0700) != 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(buf, 0700) != 0 && errno != EEXIST)
		return -1;
	return 0;
}

int store_open(struct store *st, const char *path, int create)
{
	st->dirfd = -1;
	if (snprintf(st->path, sizeof st->path, "%s", path) >= (int)sizeof st->path) {
		log_error("GW_BACKUP_DIR is too long", LS("path", path));
		return -1;
	}
	if (create && mkdir_parents(path) != 0) {
		log_error("cannot create the backup directory: check GW_BACKUP_DIR",
			  LS("path", path), LS("error", strerror(errno)));
		return -1;
	}
	st->dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (st->dirfd < 0) {
		log_error("cannot open the backup directory: check GW_BACKUP_DIR", LS("path", path),
			  LS("error", strerror(errno)));
		return -1;
	}
	struct stat sb;
	if (fstat(st->dirfd, &sb) == 0 && (sb.st_mode & 077) && create)
		log_warn("the backup directory is accessible to other users: snapshots hold the "
			 "whole database; chmod 700 it",
			 LS("path", path));
	return 0;
}

void store_close(struct store *st)
{
	if (st->dirfd >= 0)
		close(st->dirfd);
	st->dirfd = -1;
}

int store_id_new(time_t t, char out[STORE_ID_LEN + 1])
{
	unsigned char r[3];
	struct tm tm;
	if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
		log_error("getrandom failed", LS("error", strerror(errno)));
		return -1;
	}
	char buf[96];
	if (!gmtime_r(&t, &tm))
		return -1;
	int n =
	    snprintf(buf, sizeof buf, "%04d%02d%02dT%02d%02d%02dZ-%02x%02x%02x", tm.tm_year + 1900,
		     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, r[0], r[1], r[2]);
	if (n != STORE_ID_LEN) {
		log_error("the clock is outside years 1000-9999: cannot name a snapshot");
		return -1;
	}
	memcpy(out, buf, STORE_ID_LEN + 1);
	return 0;
}

int store_id_valid(const char *s)
{
	static const char shape[] = "ddddddddTddddddZ-hhhhhh";
	size_t i;
	for (i = 0; i < sizeof shape - 1; i++) {
		char c = s[i];
		switch (shape[i]) {
		case 'd':
			if (c < '0' || c > '9')
				return 0;
			break;
		case 'h':
			if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
				return 0;
			break;
		default:
			if (c != shape[i])
				return 0;
		}
	}
	return s[i] == 0;
}

void store_dump_name(const char *id, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s.dump", id);
}

void store_manifest_name(const char *id, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s.json", id);
}

void store_tmp_name(const char *id, const char *kind, char *buf, size_t cap)
{
	snprintf(buf, cap, ".snap-%s%s.tmp", id, kind);
}

int store_tmp_create(struct store *st, const char *name)
{
	int fd =
	    openat(st->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		log_error("cannot create a temporary file in the backup directory",
			  LS("dir", st->path), LS("file", name), LS("error", strerror(errno)));
	return fd;
}

static int fsync_dir(struct store *st)
{
	if (fsync(st->dirfd) != 0) {
		log_error("fsync of the backup directory failed", LS("dir", st->path),
			  LS("error", strerror(errno)));
		return -1;
	}
	return 0;
}

int store_publish(struct store *st, const char *tmp, const char *final)
{
	int rc = renameat2(st->dirfd, tmp, st->dirfd, final, RENAME_NOREPLACE);
	if (rc != 0 && (errno == EINVAL || errno == ENOSYS)) {
		/* A filesystem without RENAME_NOREPLACE: check first; ids are random, so the
		 * window only matters for a corrupted clock and a 1 in 2^24 draw. */
		if (faccessat(st->dirfd, final, F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
			errno = EEXIST;
		} else {
			rc = renameat(st->dirfd, tmp, st->dirfd, final);
		}
	}
	if (rc != 0) {
		log_error("cannot rename into place", LS("dir", st->path), LS("from", tmp),
			  LS("to", final), LS("error", strerror(errno)));
		return -1;
	}
	return fsync_dir(st);
}

int store_remove(struct store *st, const char *name)
{
	if (unlinkat(st->dirfd, name, 0) != 0) {
		if (errno == ENOENT)
			return 0;
		log_error("cannot remove file", LS("dir", st->path), LS("file", name),
			  LS("error", strerror(errno)));
		return -1;
	}
	return fsync_dir(st);
}

int store_remove_stale(struct store *st)
{
	int fd = dup(st->dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		log_error("cannot read the backup directory", LS("dir", st->path),
			  LS("error", strerror(errno)));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	rewinddir(d);
	/* Collected first: unlinking while readdir walks the directory may skip entries. */
	char(*names)[STORE_NAME_MAX] = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int removed = 0;
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		if (strncmp(de->d_name, ".snap-", 6) != 0 || len < 10 || len >= STORE_NAME_MAX ||
		    strcmp(de->d_name + len - 4, ".tmp") != 0)
			continue;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 16;
			void *nn = realloc(names, nc * sizeof *names);
			if (!nn)
				break;
			names = nn;
			cap = nc;
		}
		memcpy(names[n++], de->d_name, len + 1);
	}
	closedir(d);
	for (size_t i = 0; i < n; i++) {
		if (store_remove(st, names[i]) == 0) {
			log_warn("removed a temporary file left by an interrupted snapshot",
				 LS("dir", st->path), LS("file", names[i]));
			removed++;
		}
	}
	free(names);
	return removed;
}

int store_write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (w == 0) {
			errno = EIO;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int store_write_manifest(struct store *st, const struct manifest *m)
{
	char tmp[STORE_NAME_MAX], final[STORE_NAME_MAX];
	char *json = manifest_encode(m);
	if (!json)
		return -1;
	store_tmp_name(m->id, ".json", tmp, sizeof tmp);
	store_manifest_name(m->id, final, sizeof final);
	int fd = store_tmp_create(st, tmp);
	if (fd < 0) {
		free(json);
		return -1;
	}
	const char *step = "write";
	int ok = store_write_all(fd, json, strlen(json)) == 0;
	if (ok) {
		step = "fsync";
		ok = fsync(fd) == 0;
	}
	int err = errno;
	if (close(fd) != 0 && ok) {
		step = "close";
		ok = 0;
		err = errno;
	}
	free(json);
	if (!ok) {
		log_error("cannot write the manifest", LS("snapshot_id", m->id),
			  LS("dir", st->path), LS("file", tmp), LS("step", step),
			  LS("error", strerror(err)));
		store_remove(st, tmp);
		return -1;
	}
	if (store_publish(st, tmp, final) != 0) {
		store_remove(st, tmp);
		return -1;
	}
	return 0;
}

int store_read_manifest(struct store *st, const char *id, struct manifest *m, char *why,
			size_t whycap)
{
	char name[STORE_NAME_MAX];
	store_manifest_name(id, name, sizeof name);
	memset(m, 0, sizeof *m);
	int fd = openat(st->dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		snprintf(why, whycap, "cannot open: %s", strerror(errno));
		return -1;
	}
	struct stat sb;
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > MANIFEST_FILE_MAX) {
		snprintf(why, whycap, "not a regular file of at most %d bytes", MANIFEST_FILE_MAX);
		close(fd);
		return -1;
	}
	char *buf = malloc((size_t)sb.st_size + 1);
	if (!buf) {
		snprintf(why, whycap, "out of memory");
		close(fd);
		return -1;
	}
	size_t got = 0;
	while (got < (size_t)sb.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	int rc = -1;
	if (got != (size_t)sb.st_size)
		snprintf(why, whycap, "short read");
	else if (manifest_decode(buf, got, m, why, whycap) == 0) {
		if (strcmp(m->id, id) != 0) {
			snprintf(why, whycap, "names snapshot %s, not %s", m->id, id);
			memset(m, 0, sizeof *m);
		} else {
			rc = 0;
		}
	}
	free(buf);
	return rc;
}

const char *store_status_name(enum store_status s)
{
	switch (s) {
	case STORE_OK: return "ok";
	case STORE_MISSING: return "MISSING";
	case STORE_SIZE_MISMATCH: return "SIZE MISMATCH";
	case STORE_CORRUPT: return "CORRUPT";
	case STORE_NO_MANIFEST: return "NO MANIFEST";
	}
	return "?";
}

/* "<id><suffix>" with a valid id: copies the id out. */
static int id_with_suffix(const char *name, const char *suffix, char id[MANIFEST_ID_MAX])
{
	size_t n = strlen(name), sl = strlen(suffix);
	if (n != STORE_ID_LEN + sl || strcmp(name + STORE_ID_LEN, suffix) != 0)
		return 0;
	memcpy(id, name, STORE_ID_LEN);
	id[STORE_ID_LEN] = 0;
	return store_id_valid(id);
}

/* One file name seen while reading the directory. */
struct seen {
	char id[MANIFEST_ID_MAX];
	int is_json;
};

static int seen_cmp_newest_first(const void *a, const void *b)
{
	return -strcmp(((const struct seen *)a)->id, ((const struct seen *)b)->id);
}

static void entry_check(struct store *st, struct store_entry *e, int has_json)
{
	char dump[STORE_NAME_MAX];
	struct stat sb;
	store_dump_name(e->id, dump, sizeof dump);
	e->actual_size = -1;
	if (fstatat(st->dirfd, dump, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(sb.st_mode))
		e->actual_size = (long long)sb.st_size;
	if (!has_json) {
		e->status = STORE_NO_MANIFEST;
		return;
	}
	if (store_read_manifest(st, e->id, &e->m, e->why, sizeof e->why) != 0) {
		e->status = STORE_CORRUPT;
		return;
	}
	e->has_manifest = 1;
	if (e->actual_size < 0)
		e->status = STORE_MISSING;
	else if (e->actual_size != e->m.size)
		e->status = STORE_SIZE_MISMATCH;
	else
		e->status = STORE_OK;
}

/* Reads the names of snapshot files into *out (malloc'd), at most 2 * STORE_LIST_MAX. */
static int read_names(struct store *st, struct seen **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	int fd = dup(st->dirfd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		log_error("cannot read the backup directory", LS("dir", st->path),
			  LS("error", strerror(errno)));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	/* The dup shares the offset with dirfd: start from the top whoever read it last. */
	rewinddir(d);
	struct seen *v = NULL;
	size_t cnt = 0, cap = 0;
	int rc = 0;
	struct dirent *de;
	for (errno = 0; (de = readdir(d)) != NULL; errno = 0) {
		struct seen s;
		if (de->d_name[0] == '.')
			continue; /* temporary files, . and .. */
		if (id_with_suffix(de->d_name, ".json", s.id))
			s.is_json = 1;
		else if (id_with_suffix(de->d_name, ".dump", s.id))
			s.is_json = 0;
		else
			continue;
		if (cnt == 2 * (size_t)STORE_LIST_MAX) {
			log_warn("too many snapshot files: listing only the first ones read",
				 LS("dir", st->path), LI("max", STORE_LIST_MAX));
			break;
		}
		if (cnt == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			struct seen *nv = realloc(v, ncap * sizeof *nv);
			if (!nv) {
				log_error("out of memory listing snapshots", LS("dir", st->path));
				rc = -1;
				break;
			}
			v = nv;
			cap = ncap;
		}
		v[cnt++] = s;
	}
	if (rc == 0 && de == NULL && errno != 0) {
		log_error("error reading the backup directory", LS("dir", st->path),
			  LS("error", strerror(errno)));
		rc = -1;
	}
	closedir(d);
	if (rc != 0) {
		free(v);
		return -1;
	}
	*out = v;
	*n = cnt;
	return 0;
}

int store_list(struct store *st, struct store_entry **out, size_t *n)
{
	struct seen *names;
	size_t nn;
	*out = NULL;
	*n = 0;
	if (read_names(st, &names, &nn) != 0)
		return -1;
	if (nn > 1)
		qsort(names, nn, sizeof *names, seen_cmp_newest_first);
	struct store_entry *v = nn ? calloc(nn, sizeof *v) : NULL;
	if (nn && !v) {
		log_error("out of memory listing snapshots", LS("dir", st->path));
		free(names);
		return -1;
	}
	/* Sorted, so the .json and .dump of one id are neighbours. */
	size_t cnt = 0;
	for (size_t i = 0; i < nn;) {
		int has_json = 0;
		size_t j = i;
		for (; j < nn && strcmp(names[j].id, names[i].id) == 0; j++)
			has_json |= names[j].is_json;
		memcpy(v[cnt].id, names[i].id, sizeof v[cnt].id);
		entry_check(st, &v[cnt], has_json);
		cnt++;
		i = j;
	}
	free(names);
	*out = v;
	*n = cnt;
	return 0;
}
