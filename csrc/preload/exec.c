/* fastivc preload — exec: a connection whose fd survives exec goes on in
 * the new program.
 *
 * Before exec, each such connection is written into FASTIVC_INHERIT (one
 * record per connection: its surviving fds and the private state that is
 * not in shared memory) and the fabric fd is kept open across the exec, so
 * the new program is the same member, already entered in the slots' holder
 * tables.  At load, the new program's library reads the records back,
 * checks each against the kernel (the fd is a TCP socket) and the fabric
 * (the slot is held by this member), and rebuilds the sockets.  A record
 * that does not check out has its TCP connection shut down, so the peer sees
 * the connection end instead of writing into a ring nobody reads.
 *
 * A program that will not load the library (an environment without it in
 * LD_PRELOAD, a static binary, a set-user-ID one) gets its connections back
 * on plain TCP instead, byte-exact (down.c), before the exec.
 *
 * In a vfork() child (memory shared with the parent) and before
 * posix_spawn (whose child execs past us) no connection can be handed
 * over: the new program would be another member, and the parent goes on
 * with the same socket.  The connections the child holds go back to plain
 * TCP in the same way, for both, whether or not the new program loads the
 * library (before, one that loads it got sockets that carried doorbells).
 */
#include <dlfcn.h>
#include <elf.h>
#include <pthread.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "preload.h"

#define VAR "FASTIVC_INHERIT="
#define REC_FMT "%" SCNu32 ":%" SCNu32 ":%d:%d:%d:%d:%" SCNu64 ":%" SCNu64 ":%" SCNu64 ":%d:%" \
		SCNu32 ":%" SCNu64 ":%d:%d:%d:%d:%d:%d:%" SCNu64 ":%" SCNu64 ":%d:%" SCNu64

extern char **environ;

/* Append one record: "fd,fd,...=" then the fields. */
static int put_record(char *out, size_t cap, size_t *len, struct fsock *fs, const int *fds,
		      int nfds)
{
	size_t n = *len;
	int any = 0;
	for (int i = 0; i < nfds; i++) {
		int fl = fivc_real.fcntl(fds[i], F_GETFD);
		if (fl < 0 || (fl & FD_CLOEXEC))
			continue;
		int k = snprintf(out + n, cap - n, "%s%d", any ? "," : "", fds[i]);
		if (k < 0 || (size_t)k >= cap - n)
			return -1;
		n += (size_t)k;
		any = 1;
	}
	if (!any)
		return 0;
	int k = snprintf(out + n, cap - n,
			 "=%" PRIu32 ":%" PRIu32 ":%d:%d:%d:%d:%" PRIu64 ":%" PRIu64 ":%" PRIu64
			 ":%d:%" PRIu32 ":%" PRIu64 ":%d:%d:%d:%d:%d:%d:%" PRIu64 ":%" PRIu64 ":%d:%" PRIu64
			 ";",
			 fs->slot, fs->gen, fs->side, fs->state, fs->nonblock, fs->untracked,
			 fs->tcp_sent, fs->tcp_recvd, fs->switch_n, fs->n_known, fs->offer_idx,
			 fs->offer_word, fs->app_nodelay, fs->nodelay_forced,
			 fs->ch.reset | fs->ch.sk_err << 1, /* (the reset state: channel.c) */
			 fs->ch.wr_shut, fs->ch.rd_shut, fs->tcp_eof, fs->ch.rd_timeout_ns,
			 fs->ch.wr_timeout_ns, fs->pre_shared, fs->ch.sndbuf);
	if (k < 0 || (size_t)k >= cap - n)
		return -1;
	*len = n + (size_t)k;
	return 1;
}

struct records {
	char *buf;
	size_t cap, len;
	int count, full;
};

static void record_one(struct fivc_walk_ent *e, const int *fds, struct records *r)
{
	if (r->full || !fivc_fs_uses_fabric(e->fs))
		return;
	int k = put_record(r->buf, r->cap, &r->len, e->fs, fds + e->first, e->nfds);
	if (k < 0)
		r->full = 1;
	else
		r->count += k;
}

/* O(connections): the records are built from the fd index. */
char **fivc_exec_env(char *const envp[])
{
	struct fivc_walk w;
	fivc_fdlist_lock();
	int wr = fivc_walk_take(&w);
	fivc_fdlist_unlock();
	if (wr < 0)
		return NULL;
	/* a record is at most 21 numbers of 20 digits, and one per fd */
	struct records rs = {.cap = 256};
	for (int k = 0; k < w.n; k++)
		rs.cap += 480 + (size_t)w.ent[k].nfds * 12;
	rs.buf = malloc(rs.cap);
	if (!rs.buf) {
		fivc_walk_free(&w);
		return NULL;
	}
	rs.buf[0] = 0;
	for (int k = 0; k < w.n; k++)
		record_one(&w.ent[k], w.fds, &rs);
	fivc_walk_free(&w);
	if (rs.full) {
		FIVC_INFO("exec: too many connections to hand over; they end");
		free(rs.buf);
		return NULL;
	}
	char *rec = rs.buf;
	size_t len = rs.len;
	int count = rs.count;
	int ffd = count ? fivc_fabric_keep_across_exec(1) : -1;
	if (ffd < 0) {
		free(rec);
		return NULL;
	}
	size_t n = 0;
	while (envp && envp[n])
		n++;
	char **env = malloc((n + 2) * sizeof(*env));
	char *var = malloc(len + 64);
	if (!env || !var) {
		free(env);
		free(var);
		free(rec);
		fivc_fabric_keep_across_exec(0);
		return NULL;
	}
	snprintf(var, len + 64, VAR "%d:%" PRIu32 ";%s", ffd, fivc_fabric_get()->self, rec);
	free(rec);
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(envp[i], VAR, sizeof(VAR) - 1) != 0)
			env[k++] = envp[i];
	env[k++] = var;
	env[k] = NULL;
	FIVC_DEBUG("exec: handing over %d connection(s)", count);
	return env;
}

void fivc_exec_failed(char **env)
{
	if (!env)
		return;
	for (size_t i = 0; env[i]; i++)
		if (!strncmp(env[i], VAR, sizeof(VAR) - 1))
			free(env[i]);
	free(env);
	fivc_fabric_keep_across_exec(0);
}

static int is_tcp(int fd)
{
	int type = 0, dom = 0;
	socklen_t l = sizeof(type);
	if (fivc_real.getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) < 0 || type != SOCK_STREAM)
		return 0;
	l = sizeof(dom);
	return fivc_real.getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l) == 0 &&
	       (dom == AF_INET || dom == AF_INET6);
}

/* End what cannot be rebuilt: the peer must not write into a ring nobody reads. */
static void give_up(const char *fds, const char *why)
{
	FIVC_INFO("exec: connection on fd(s) %s cannot go on (%s): shut down", fds, why);
	char *copy = strdup(fds), *save = NULL;
	for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save)) {
		int fd = atoi(t);
		if (is_tcp(fd))
			fivc_real.shutdown(fd, SHUT_RDWR);
	}
	free(copy);
}

/* The fds of a record, checked: the first one, or -1 if any is not a TCP socket. */
static int record_fds(const char *fds, struct fsock *fs)
{
	int first = -1;
	char *save = NULL, *copy = strdup(fds);
	for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; t; t = strtok_r(NULL, ",", &save)) {
		int fd = atoi(t);
		if (fd < 0 || fd >= fivc_nfds || !is_tcp(fd)) {
			first = -1;
			break;
		}
		if (fs) {
			fs->refs++;
			fivc_fd_set(fd, fs);
			fivc_fd_set_kind(fd, FIVC_KIND_TCP | FIVC_FD_MISCOPT); /* (inherit_one) */
		} else if (first < 0) {
			first = fd;
		}
	}
	free(copy);
	return first;
}

static void inherit_one(struct fivc_fabric *fab, char *fds, const char *fields)
{
	int first = record_fds(fds, NULL);
	if (first < 0) {
		give_up(fds, "not a TCP socket");
		return;
	}
	struct fsock *fs = fab ? fivc_fs_new(fab, first, 0) : NULL;
	if (!fs) {
		give_up(fds, fab ? "out of memory" : "no fabric");
		return;
	}
	int wr_shut, rd_shut;
	uint64_t rd_tmo, wr_tmo, sndbuf;
	if (sscanf(fields, REC_FMT, &fs->slot, &fs->gen, &fs->side, &fs->state, &fs->nonblock,
		   &fs->untracked, &fs->tcp_sent, &fs->tcp_recvd, &fs->switch_n, &fs->n_known,
		   &fs->offer_idx, &fs->offer_word, &fs->app_nodelay, &fs->nodelay_forced,
		   &fs->reset, &wr_shut, &rd_shut, &fs->tcp_eof, &rd_tmo, &wr_tmo,
		   &fs->pre_shared, &sndbuf) != 22 ||
	    (fs->side != 0 && fs->side != 1) ||
	    (fs->state != FS_CLIENT_PENDING && fs->state != FS_SERVER_PRE && fs->state != FS_ACCEL)) {
		free(fs);
		give_up(fds, "malformed record");
		return;
	}
	if (fivc_fs_open_chan(fs) < 0) {
		free(fs);
		give_up(fds, "its slot is no longer ours");
		return;
	}
	/* Another process may hold this side too (we were forked before the
	 * exec): shared until the first read or write finds us alone. */
	fivc_chan_share(&fs->ch);
	fs->ch.wr_shut = wr_shut;
	fs->ch.rd_shut = rd_shut;
	fs->ch.reset = fs->reset & 1;
	fs->ch.sk_err = fs->reset >> 1;
	fs->ch.rd_timeout_ns = rd_tmo;
	fs->ch.wr_timeout_ns = wr_tmo;
	fs->ch.sndbuf = sndbuf; /* (the reader's figure is in the ring) */
	fs->refs = 0;
	record_fds(fds, fs);
	/* The options and signals the file carries across exec (SO_OOBINLINE,
	 * SO_LINGER, SO_RCVLOWAT, O_ASYNC, F_SETOWN), from the kernel: this
	 * program's fd bits know nothing of what the last one set (regression,
	 * issue 11: they were lost at exec); record_fds marked the fds so */
	fivc_fs_take_sockopts(fs, first, FIVC_FD_MISCOPT);
	FIVC_DEBUG("exec: fd(s) %s go on (slot %u)", fds, fs->slot);
}

/* At load: take over what the program before the exec handed over. */
void fivc_inherit(void)
{
	const char *v = getenv("FASTIVC_INHERIT");
	if (!v || !*v)
		return;
	char *all = strdup(v);
	unsetenv("FASTIVC_INHERIT"); /* ours alone: never passed further */
	if (!all)
		return;
	int ffd = -1;
	uint32_t member1 = 0;
	char *save = NULL;
	char *head = strtok_r(all, ";", &save);
	struct fivc_fabric *fab = NULL;
	if (head && sscanf(head, "%d:%" SCNu32, &ffd, &member1) == 2 && ffd >= 0 &&
	    fivc_fabric_adopt(ffd, member1) == 0)
		fab = fivc_fabric_get();
	for (char *r = strtok_r(NULL, ";", &save); r; r = strtok_r(NULL, ";", &save)) {
		char *eq = strchr(r, '=');
		if (!eq)
			continue;
		*eq = 0;
		inherit_one(fab, r, eq + 1);
	}
	free(all);
}

/* ---- exec of a program that will not load the library ---- */

/* The ELF file at path has an interpreter (dynamic); 1 yes, 0 no (static),
 * -1 unknown (not ELF, unreadable).  A script: its interpreter's answer. */
static int elf_dynamic(const char *path, int depth)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	unsigned char h[256];
	ssize_t n = pread(fd, h, sizeof(h), 0);
	int r = -1;
	if (n >= 4 && h[0] == '#' && h[1] == '!' && depth == 0) {
		char interp[256];
		size_t i = 2, k = 0;
		while (i < (size_t)n && (h[i] == ' ' || h[i] == '\t'))
			i++;
		while (i < (size_t)n && h[i] != ' ' && h[i] != '\t' && h[i] != '\n' &&
		       k < sizeof(interp) - 1)
			interp[k++] = (char)h[i++];
		interp[k] = 0;
		close(fd);
		return k ? elf_dynamic(interp, 1) : -1;
	}
	uint64_t phoff = 0;
	unsigned phnum = 0, phentsize = 0;
	if (n >= (ssize_t)sizeof(Elf64_Ehdr) && !memcmp(h, ELFMAG, SELFMAG) && h[EI_CLASS] == ELFCLASS64) {
		Elf64_Ehdr eh;
		memcpy(&eh, h, sizeof(eh));
		phoff = eh.e_phoff, phnum = eh.e_phnum, phentsize = eh.e_phentsize;
		r = 0;
	} else if (n >= (ssize_t)sizeof(Elf32_Ehdr) && !memcmp(h, ELFMAG, SELFMAG) &&
		   h[EI_CLASS] == ELFCLASS32) {
		Elf32_Ehdr eh;
		memcpy(&eh, h, sizeof(eh));
		phoff = eh.e_phoff, phnum = eh.e_phnum, phentsize = eh.e_phentsize;
		r = 0;
	}
	/* p_type is the first word of a program header in both classes */
	for (unsigned i = 0; r == 0 && i < phnum && i < 256; i++) {
		uint32_t type;
		if (pread(fd, &type, sizeof(type), (off_t)(phoff + (uint64_t)i * phentsize)) !=
		    (ssize_t)sizeof(type))
			r = -1;
		else if (type == PT_INTERP)
			r = 1;
	}
	close(fd);
	return r;
}

/* execvpe's search, with the caller's PATH as glibc takes it. */
static int find_in_path(const char *p, char *out, size_t cap)
{
	if (strchr(p, '/')) {
		snprintf(out, cap, "%s", p);
		return 0;
	}
	const char *path = getenv("PATH");
	if (!path || !*path)
		path = "/bin:/usr/bin";
	for (const char *d = path; d;) {
		const char *end = strchr(d, ':');
		size_t len = end ? (size_t)(end - d) : strlen(d);
		snprintf(out, cap, "%.*s%s%s", (int)len, d, len ? "/" : "", p);
		if (access(out, X_OK) == 0)
			return 0;
		d = end ? end + 1 : NULL;
	}
	return -1;
}

static int mentions_library(const char *list)
{
	Dl_info di;
	const char *self = dladdr((void *)fivc_exec_env, &di) && di.dli_fname ? di.dli_fname : NULL;
	const char *base = self && strrchr(self, '/') ? strrchr(self, '/') + 1 : "libfastivc.so";
	return list && (strstr(list, base) || (self && strstr(list, self)));
}

static int preload_file_mentions(void)
{
	int fd = open("/etc/ld.so.preload", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	char b[4096];
	ssize_t n = read(fd, b, sizeof(b) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	b[n] = 0;
	return mentions_library(b);
}

int fivc_exec_loads_library(const char *p, int fd, int search, char *const envp[])
{
	const char *pre = NULL;
	for (size_t i = 0; envp && envp[i]; i++)
		if (!strncmp(envp[i], "LD_PRELOAD=", 11))
			pre = envp[i] + 11;
	if (!mentions_library(pre) && !preload_file_mentions())
		return 0; /* an environment without it */
	char path[4096];
	if (!p)
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	else if (!search)
		snprintf(path, sizeof(path), "%s", p);
	else if (find_in_path(p, path, sizeof(path)) < 0)
		return 1; /* (not found: the exec fails, nothing changes) */
	struct stat st;
	if (stat(path, &st) == 0 &&
	    (((st.st_mode & S_ISUID) && st.st_uid != geteuid()) ||
	     ((st.st_mode & S_ISGID) && st.st_gid != getegid())))
		return 0; /* secure execution: ld.so ignores LD_PRELOAD */
	return elf_dynamic(path, 0) != 0; /* a static binary loads nothing */
}

/* ---- posix_spawn_file_actions: the fds a spawn's dup2 actions name,
 * which the child holds even when they are close-on-exec here ---- */
#define SPAWN_DUPS 64
static struct {
	const void *fa;
	int fd;
} dups[SPAWN_DUPS];
static int ndups;
static pthread_mutex_t dups_lock = PTHREAD_MUTEX_INITIALIZER;

struct down_what {
	int shared;   /* a vfork child: the parent's threads may be in calls */
	const void *fa; /* a spawn's file actions, or NULL */
};

static int named_by(const void *fa, int fd)
{
	int r = 0;
	pthread_mutex_lock(&dups_lock);
	for (int i = 0; i < ndups && !r; i++)
		r = fa && dups[i].fa == fa && dups[i].fd == fd;
	pthread_mutex_unlock(&dups_lock);
	return r;
}

static void downgrade_one(struct fsock *fs, const int *fds, int nfds, void *arg)
{
	const struct down_what *w = arg;
	if (!fivc_fs_uses_fabric(fs))
		return;
	int fd = -1;
	for (int i = 0; i < nfds && fd < 0; i++) {
		int fl = fivc_real.fcntl(fds[i], F_GETFD);
		if (fl >= 0 && (!(fl & FD_CLOEXEC) || named_by(w->fa, fds[i])))
			fd = fds[i];
	}
	if (fd < 0)
		return;
	int r = fivc_fs_downgrade(fs, fd, FIVC_DOWN_EXEC);
	if (r == -EBUSY && w->shared) {
		/* the parent's thread is inside a call on it: it stays as it was */
		FIVC_INFO("exec in a vfork child: fd %d is in use by the parent: stays on the ring",
			  fd);
	} else if (r < 0) {
		FIVC_INFO("exec: fd %d cannot go back to TCP (%s): shut down", fd, strerror(-r));
		fivc_real.shutdown(fd, SHUT_RDWR);
	}
}

void fivc_exec_downgrade(int shared)
{
	struct down_what w = {shared, NULL};
	fivc_for_each_fsock(downgrade_one, &w);
}

/* posix_spawn and posix_spawnp: glibc's child execs with no call through
 * us, so the parent decides before it: the connections the child will
 * hold go back to plain TCP, which the parent then goes on with too (one
 * socket), whatever program the child runs (see the top). */
static int spawn_with(int search, pid_t *pid, const char *path, const void *fa,
		      const void *attr, char *const argv[], char *const envp[])
{
	typedef int (*spawn_fn)(pid_t *, const char *, const void *, const void *,
				char *const[], char *const[]);
	static void *real[2];
	spawn_fn f = (spawn_fn)fivc_next_sym(&real[search], search ? "posix_spawnp" : "posix_spawn");
	if (!f)
		return ENOSYS;
	if (__atomic_load_n(&fivc_ready, __ATOMIC_ACQUIRE) && !FIVC_GUARDED() && path) {
		int e = errno;
		struct down_what w = {0, fa};
		fivc_for_each_fsock(downgrade_one, &w);
		errno = e;
	}
	return f(pid, path, fa, attr, argv, envp);
}

FIVC_EXPORT int posix_spawn(pid_t *pid, const char *path, const void *fa, const void *attr,
			    char *const argv[], char *const envp[])
{
	return spawn_with(0, pid, path, fa, attr, argv, envp);
}

FIVC_EXPORT int posix_spawnp(pid_t *pid, const char *file, const void *fa, const void *attr,
			     char *const argv[], char *const envp[])
{
	return spawn_with(1, pid, file, fa, attr, argv, envp);
}

FIVC_EXPORT int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)
{
	static void *real;
	int (*f)(void *, int, int) = (int (*)(void *, int, int))fivc_next_sym(
		&real, "posix_spawn_file_actions_adddup2");
	if (!f)
		return ENOSYS;
	int r = f(fa, fd, newfd);
	if (r == 0 && fivc_fs(fd)) {
		pthread_mutex_lock(&dups_lock);
		if (ndups < SPAWN_DUPS)
			dups[ndups++] = (typeof(dups[0])){fa, fd};
		else
			FIVC_INFO("posix_spawn: more than %d dup2 actions on connections: fd %d "
				  "is not followed", SPAWN_DUPS, fd);
		pthread_mutex_unlock(&dups_lock);
	}
	return r;
}

FIVC_EXPORT int posix_spawn_file_actions_destroy(void *fa)
{
	static void *real;
	int (*f)(void *) = (int (*)(void *))fivc_next_sym(&real, "posix_spawn_file_actions_destroy");
	if (!f)
		return ENOSYS;
	pthread_mutex_lock(&dups_lock);
	for (int i = 0; i < ndups;)
		if (dups[i].fa == fa)
			dups[i] = dups[--ndups];
		else
			i++;
	pthread_mutex_unlock(&dups_lock);
	return f(fa);
}
