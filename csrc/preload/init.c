/* fastivc preload — init: the real-function table, configuration, logging,
 * the fd table and the process's fabric.  See preload.h for the order. */
#include <dlfcn.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "fastivc/util.h"
#include "preload.h"

struct fivc_real fivc_real;
int fivc_ready;
__thread int fivc_guard;
struct fivc_config fivc_cfg;
struct fsock **fivc_fds;
uint8_t *fivc_kinds;
int fivc_nfds;
pid_t fivc_pid;

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static int move_high(int fd);

/* A real function that could not be resolved fails with ENOSYS instead of
 * crashing the program (STYLE.md 1). */
static long missing_call(void)
{
	errno = ENOSYS;
	return -1;
}

static void resolve_real(void)
{
#define X(ret, name, args)                                                      \
	{                                                                       \
		dlerror();                                                      \
		void *p = dlsym(RTLD_NEXT, #name);                              \
		fivc_real.name = p && !dlerror() ? (ret(*) args)p : (ret(*) args)(void *)missing_call; \
	}
	FIVC_REAL_CALLS(X)
#undef X
}

/* FASTIVC_FABRIC_MODE / FASTIVC_FABRIC_GROUP: permissions of a fabric this
 * process creates.  Kept here, not in fivc_cfg: only fivc_fabric_get uses
 * them.  A group name is resolved when the fabric is first opened, not at
 * load, so that programs that never connect do not pay for an NSS lookup. */
static uint32_t fabric_mode;       /* 0: the default, 0600 */
static int fabric_group_set;       /* 1: numeric gid in fabric_gid; 2: name */
static uint32_t fabric_gid;
static char fabric_group[64];

/* Octal permission bits that keep the owner's read and write (the creator
 * opens the fabric again later, e.g. after fork) and give others nothing
 * (a fabric that does is refused: fabric.c check_trust). */
static int parse_fabric_mode(const char *v, uint32_t *out)
{
	char *end;
	if (!*v || strspn(v, "01234567") != strlen(v))
		return -1;
	unsigned long m = strtoul(v, &end, 8);
	if (*end || m > 0770 || (m & 0600) != 0600 || (m & 0007))
		return -1;
	*out = (uint32_t)m;
	return 0;
}

static void read_fabric_perms(void)
{
	const char *m = getenv("FASTIVC_FABRIC_MODE");
	const char *g = getenv("FASTIVC_FABRIC_GROUP");
	int bad = 0;
	if (m && *m && parse_fabric_mode(m, &fabric_mode) < 0) {
		FIVC_INFO("FASTIVC_FABRIC_MODE=%s is not an octal mode between 0600 and 0770 "
			  "with owner read and write and nothing for others; a fabric created "
			  "here gets 0600", m);
		bad = 1;
	}
	if (g && *g) {
		if (strspn(g, "0123456789") == strlen(g)) {
			unsigned long long n = strtoull(g, NULL, 10);
			if (strlen(g) > 10 || n >= 0xffffffffull) {
				FIVC_INFO("FASTIVC_FABRIC_GROUP=%s is not a valid gid; a fabric "
					  "created here keeps mode 0600 and the creator's group", g);
				bad = 1;
			} else {
				fabric_gid = (uint32_t)n;
				fabric_group_set = 1;
			}
		} else if (strlen(g) >= sizeof(fabric_group)) {
			FIVC_INFO("FASTIVC_FABRIC_GROUP=%s: group name too long; a fabric created "
				  "here keeps mode 0600 and the creator's group", g);
			bad = 1;
		} else {
			snprintf(fabric_group, sizeof(fabric_group), "%s", g);
			fabric_group_set = 2;
		}
	}
	/* Half a request could give the mode to the wrong group: all or nothing. */
	if (bad) {
		fabric_mode = 0;
		fabric_group_set = 0;
	}
}

/* Fill g's permission fields; called with the guard held, before creating. */
static void fabric_perms(struct fivc_geometry *g)
{
	if (fabric_group_set == 2) {
		struct group gr, *res = NULL;
		char buf[4096];
		int e = getgrnam_r(fabric_group, &gr, buf, sizeof(buf), &res);
		if (!res) {
			FIVC_INFO("FASTIVC_FABRIC_GROUP=%s: no such group (%s); a fabric created "
				  "here keeps mode 0600 and the creator's group", fabric_group,
				  e ? strerror(e) : "not found");
			fabric_mode = 0;
			fabric_group_set = 0;
		} else {
			fabric_gid = (uint32_t)gr.gr_gid;
			fabric_group_set = 1;
		}
	}
	g->mode = fabric_mode;
	g->has_gid = fabric_group_set == 1;
	g->gid = fabric_gid;
}

static void read_config(void)
{
	const char *v;
	memset(&fivc_cfg, 0, sizeof(fivc_cfg));
	fivc_cfg.log_fd = 2;
	fivc_cfg.spin_ns = 50000;
	v = getenv("FASTIVC_DISABLE");
	fivc_cfg.disabled = v && *v && strcmp(v, "0") != 0;
	/* event loops (non-blocking sockets): on unless FASTIVC_NONBLOCK=0 */
	v = getenv("FASTIVC_NONBLOCK");
	fivc_cfg.nonblock_ok = !(v && !strcmp(v, "0"));
	v = getenv("FASTIVC_SPIN_US");
	if (v && *v)
		fivc_cfg.spin_ns = strtoull(v, NULL, 10) * 1000ull;
	v = getenv("FASTIVC_RING_KIB");
	if (v && *v)
		fivc_cfg.ring_kib = (uint32_t)strtoul(v, NULL, 10);
	v = getenv("FASTIVC_FABRIC");
	snprintf(fivc_cfg.fabric, sizeof(fivc_cfg.fabric), "%s", v && *v ? v : "/dev/shm/fastivc");
	/* FASTIVC_LOG=off|info|debug[:FILE] */
	v = getenv("FASTIVC_LOG");
	if (v && *v) {
		if (!strncmp(v, "info", 4))
			fivc_cfg.log_level = FIVC_LOG_INFO;
		else if (!strncmp(v, "debug", 5))
			fivc_cfg.log_level = FIVC_LOG_DEBUG;
		const char *file = strchr(v, ':');
		if (file && file[1] && fivc_cfg.log_level) {
			int fd = open(file + 1, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
			if (fd >= 0)
				fivc_cfg.log_fd = move_high(fd);
		}
	}
	read_fabric_perms(); /* after FASTIVC_LOG: it may log */
}

void fivc_log(int level, const char *fmt, ...)
{
	char buf[512];
	int n;
	if (level >= FIVC_LOG_DEBUG) { /* (when and which thread: races read from the log) */
		uint64_t t = fivc_now_ns(CLOCK_MONOTONIC) / 1000u;
		n = snprintf(buf, sizeof(buf), "fastivc[%d] debug: [%llu.%06llu t%ld] ",
			     (int)getpid(), (unsigned long long)(t / 1000000u),
			     (unsigned long long)(t % 1000000u), (long)syscall(SYS_gettid));
	} else {
		n = snprintf(buf, sizeof(buf), "fastivc[%d] info: ", (int)getpid());
	}
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	int saved = errno;
	fivc_real.write(fivc_cfg.log_fd, buf, (size_t)n);
	errno = saved;
}

static int *fdpos;

static void fd_table_init(void)
{
	struct rlimit rl;
	rlim_t n = 65536;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY && rl.rlim_max > n)
		n = rl.rlim_max;
	if (n > (1u << 20))
		n = 1u << 20;
	/* FASTIVC_FD_TABLE: fewer (at least 64), e.g. to try what happens
	 * beyond the table (a dup there takes the connection back to TCP) */
	const char *v = getenv("FASTIVC_FD_TABLE");
	if (v && *v) {
		unsigned long want = strtoul(v, NULL, 10);
		if (want >= 64 && want < n)
			n = (rlim_t)want;
	}
	fivc_fds = calloc((size_t)n, sizeof(*fivc_fds));
	fivc_kinds = calloc((size_t)n, 1);
	fdpos = calloc((size_t)n, sizeof(*fdpos));
	if (!fivc_kinds || !fdpos) {
		free(fivc_fds);
		free(fivc_kinds);
		free(fdpos);
		fivc_fds = NULL;
		fivc_kinds = NULL;
		fdpos = NULL;
	}
	fivc_nfds = fivc_fds ? (int)n : 0;
}

/* ---- the compact index of managed fds (preload.h) ----
 * fdlist[0, nlisted) holds every fd whose table entry is set, in no order;
 * fdpos[fd] is its index + 1 there (0: not listed).  Changed only with
 * fdlist_lock held, and only when an fd gains or loses its fsock, so a
 * close of an fd the library never managed takes no lock. */
static int *fdlist;
static int nlisted, listcap;
static pthread_mutex_t fdlist_lock = PTHREAD_MUTEX_INITIALIZER;

void fivc_fdlist_lock(void) { pthread_mutex_lock(&fdlist_lock); }
void fivc_fdlist_unlock(void) { pthread_mutex_unlock(&fdlist_lock); }
void fivc_fdlist_fork_child(void) { pthread_mutex_init(&fdlist_lock, NULL); }

int fivc_fdlist_count(void) { return __atomic_load_n(&nlisted, __ATOMIC_RELAXED); }

int fivc_fdlist_copy(int *out, int cap)
{
	int n = nlisted < cap ? nlisted : cap;
	memcpy(out, fdlist, (size_t)n * sizeof(*out));
	return n;
}

/* With fdlist_lock held.  A full list that cannot grow leaves fd out of
 * the index: it is still managed, but fork and exec do not see it (as if
 * the connection were closed-on-exec); said once in the log. */
static void fdlist_add(int fd)
{
	if (nlisted == listcap) {
		int cap = listcap ? 2 * listcap : 256;
		int *l = realloc(fdlist, (size_t)cap * sizeof(*l));
		if (!l) {
			FIVC_INFO("fd %d: out of memory for the fd index; fork and exec miss it", fd);
			return;
		}
		fdlist = l;
		listcap = cap;
	}
	fdlist[nlisted] = fd;
	__atomic_store_n(&nlisted, nlisted + 1, __ATOMIC_RELAXED);
	fdpos[fd] = nlisted;
}

static void fdlist_remove(int fd)
{
	int i = fdpos[fd] - 1;
	int last = fdlist[nlisted - 1];
	fdlist[i] = last;
	fdpos[last] = i + 1;
	fdpos[fd] = 0;
	__atomic_store_n(&nlisted, nlisted - 1, __ATOMIC_RELAXED);
}

void fivc_fd_set(int fd, struct fsock *fs)
{
	if (fd < 0 || fd >= fivc_nfds)
		return;
	/* The plain look first: closing an fd that was never managed (most
	 * closes) must not take the lock.  The program does not close or
	 * replace one fd from two threads at once, so the look is stable. */
	if (!fs && !__atomic_load_n(&fivc_fds[fd], __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&fdlist_lock);
	__atomic_store_n(&fivc_fds[fd], fs, __ATOMIC_RELEASE);
	if (fs && !fdpos[fd])
		fdlist_add(fd);
	else if (!fs && fdpos[fd])
		fdlist_remove(fd);
	pthread_mutex_unlock(&fdlist_lock);
}

void fivc_init(void)
{
	pthread_mutex_lock(&init_lock);
	if (!fivc_ready) {
		/* Mark done first: calls made while we initialise (dlsym may
		 * allocate, allocation may read files) see "ready" and, with no
		 * fd table yet, take the real path.  The table entries are filled
		 * before any wrapper can reach them through fivc_fs(). */
		resolve_real();
		__atomic_store_n(&fivc_ready, 1, __ATOMIC_RELEASE);
		read_config();
		fd_table_init();
		fivc_pid = getpid();
		if (!fivc_cfg.disabled)
			fivc_inherit();
		FIVC_DEBUG("loaded (fabric %s, spin %llu us%s)", fivc_cfg.fabric,
			   (unsigned long long)(fivc_cfg.spin_ns / 1000),
			   fivc_cfg.disabled ? ", disabled" : "");
	}
	pthread_mutex_unlock(&init_lock);
}

__attribute__((constructor)) static void fivc_ctor(void) { FIVC_ENSURE_INIT(); }

/* ---- the fabric, opened on first need ---- */
static struct fivc_fabric fabric;
static int fabric_state; /* 0 untried, 1 open, -1 failed */
void fivc_fabric_fd_move(int avoid);
static pthread_mutex_t fabric_lock = PTHREAD_MUTEX_INITIALIZER;

/* The fabric's fd holds our member lock: keep it out of the program's way,
 * high in the fd space, and move it again if the program dup2()s onto it.
 * (The lock belongs to the open file description, so it survives the move.) */
int fivc_fabric_fd(void)
{
	return __atomic_load_n(&fabric_state, __ATOMIC_ACQUIRE) > 0 ? fabric.fd : -1;
}

/* A copy of fd high in the fd space, close-on-exec; the original closed. */
static int move_high(int fd)
{
	struct rlimit rl;
	int floor = 3;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur > 256)
		floor = (int)(rl.rlim_cur > 4096 ? 4096 : rl.rlim_cur) - 64;
	int nfd = fivc_real.fcntl(fd, F_DUPFD_CLOEXEC, floor);
	if (nfd < 0)
		return fd;
	fivc_real.close(fd);
	return nfd;
}

void fivc_fabric_fd_move(int avoid)
{
	(void)avoid; /* avoid is open, so the copy never lands on it */
	fabric.fd = move_high(fabric.fd);
}

/* The library's own descriptors (the fabric's, the log file's) are not the
 * program's: close() of one is a no-op, close_range leaves it out, and a
 * dup2() onto one moves it away first. */
int fivc_own_fd(int fd)
{
	return fd >= 0 && (fd == fivc_fabric_fd() || (fd == fivc_cfg.log_fd && fd > 2));
}

void fivc_own_fd_move(int fd)
{
	if (fd < 0)
		return;
	if (fd == fivc_fabric_fd())
		fivc_fabric_fd_move(fd);
	else if (fd == fivc_cfg.log_fd && fd > 2)
		fivc_cfg.log_fd = move_high(fd);
}

/* In a guest no kernel witnesses our death: a thread advances our member's
 * heartbeat (FIVC_HEARTBEAT_MS), with every signal blocked so that none of
 * the program's lands on it. */
static void *heartbeat(void *arg)
{
	(void)arg;
	for (;;) {
		if (fivc_member_beat(&fabric))
			FIVC_INFO("guest fabric: judged dead while paused (no heartbeat for %u ms); "
				  "its connections get ECONNRESET; joined again as member %u",
				  FIVC_HEARTBEAT_DEAD_MS, fabric.self);
		struct timespec ts = {0, (long)FIVC_HEARTBEAT_MS * 1000000L};
		nanosleep(&ts, NULL);
	}
	return NULL;
}

static void start_heartbeat(void)
{
	if (fivc_start_thread(heartbeat) < 0)
		FIVC_INFO("guest fabric: no heartbeat thread; peers will think us dead");
}

/* A process that could not join (no fabric yet, a full member table, a
 * fabric being replaced) tries again, at most this often: the connections
 * it makes meanwhile stay plain at plain TCP's cost (issue 10). */
#define FABRIC_RETRY_NS 1000000000ull
static uint64_t fabric_failed_ns;
static char fabric_err[512]; /* the last reason logged */

struct fivc_fabric *fivc_fabric_get(void)
{
	int st = __atomic_load_n(&fabric_state, __ATOMIC_ACQUIRE);
	if (st > 0)
		return &fabric;
	if (st < 0 && fivc_now_ns(CLOCK_MONOTONIC) - __atomic_load_n(&fabric_failed_ns, __ATOMIC_RELAXED) <
			      FABRIC_RETRY_NS)
		return NULL;
	int opened = 0;
	pthread_mutex_lock(&fabric_lock);
	if (fabric_state < 0 &&
	    fivc_now_ns(CLOCK_MONOTONIC) - fabric_failed_ns >= FABRIC_RETRY_NS)
		fabric_state = 0;
	if (!fabric_state) {
		char err[512];
		struct fivc_geometry g = {.ring_size = fivc_cfg.ring_kib * 1024u, .replace_stale = 1};
		fivc_guard++;
		fabric_perms(&g);
		int pci = !strncmp(fivc_cfg.fabric, "pci:", 4);
		int r = pci ? fivc_fabric_open_pci(fivc_cfg.fabric, &fabric, err, sizeof(err))
			    : fivc_fabric_open(fivc_cfg.fabric, &g, &fabric, err, sizeof(err));
		if (r == 0 && fabric.replaced)
			FIVC_INFO("fabric %s: replaced one of layout version %u that no process used",
				  fivc_cfg.fabric, fabric.replaced);
		if (r == 0 && !fabric.self) {
			FIVC_INFO("fabric %s: no free member id; connections stay plain for now",
				  fivc_cfg.fabric);
			fivc_fabric_close(&fabric);
			r = -EUSERS;
		} else if (r < 0 && strcmp(err, fabric_err)) {
			/* once per distinct reason, not once per retry */
			FIVC_INFO("acceleration off: plain TCP: %s", err);
			snprintf(fabric_err, sizeof(fabric_err), "%s", err);
		}
		fivc_guard--;
		if (r < 0) {
			__atomic_store_n(&fabric_failed_ns, fivc_now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
			__atomic_store_n(&fabric_state, -1, __ATOMIC_RELEASE);
		} else {
			if (fabric.guest)
				start_heartbeat();
			else
				fivc_fabric_fd_move(-1);
			FIVC_DEBUG("fabric %s open, member %u", fivc_cfg.fabric, fabric.self);
			__atomic_store_n(&fabric_state, 1, __ATOMIC_RELEASE);
			opened = 1;
		}
	}
	pthread_mutex_unlock(&fabric_lock);
	if (opened) {
		/* an io_uring made before we could see it (uring.c) */
		fivc_uring_scan();
		if (__atomic_load_n(&fivc_cfg.disabled, __ATOMIC_ACQUIRE))
			return NULL;
	}
	return fabric_state > 0 ? &fabric : NULL;
}

/* See preload.h. */
struct fivc_fabric *fivc_fabric_new_conn(void)
{
	struct fivc_fabric *f = fivc_fabric_get();
	if (!f)
		return NULL;
	const struct fivc_fabric_hdr *h = (const struct fivc_fabric_hdr *)f->base;
	if (__builtin_expect(__atomic_load_n(&h->drain, __ATOMIC_RELAXED) ||
				     (f->self && (__atomic_load_n(&fivc_member_at(f, f->self - 1)->down_req,
								  __ATOMIC_RELAXED) &
						  FIVC_DOWN_REQ_PLAIN)),
			     0)) {
		fivc_down_process(FIVC_DOWN_OPERATOR, "fastivc downgrade");
		return NULL;
	}
	return f;
}

void fivc_fabric_fork_prepare(int eager, int *fd, uint32_t *member1)
{
	*fd = -1;
	*member1 = 0;
	if (!eager || __atomic_load_n(&fabric_state, __ATOMIC_ACQUIRE) <= 0)
		return;
	fivc_guard++;
	int r = fivc_member_prepare(&fabric, fd, member1);
	fivc_guard--;
	if (r < 0) {
		*fd = -1;
		*member1 = 0;
		FIVC_INFO("fork: no member id for the child (%s); it shares ours", strerror(-r));
	}
}

void fivc_fabric_fork_parent(int fd, uint32_t member1, int failed)
{
	if (member1)
		fivc_member_forget(&fabric, fd, member1, failed);
}

void fivc_fabric_fork_child(int eager, int fd, uint32_t member1)
{
	if (member1) {
		/* Our copy of the parent's fd, closed here: close() inside the
		 * library is our wrapper, which leaves the fabric's fd alone (a
		 * program's close of it is a no-op), and a child that kept it
		 * would keep the parent's member lock, so the parent's death
		 * would go unseen while the child lives. */
		if (!fabric.guest && fabric.fd >= 0) {
			fivc_real.close(fabric.fd);
			fabric.fd = -1;
		}
		fivc_fabric_become(&fabric, fd, member1);
		if (fabric.guest)
			start_heartbeat(); /* threads do not survive fork */
		else
			fivc_fabric_fd_move(-1);
		FIVC_DEBUG("fork: member %u", member1);
	} else if (__atomic_load_n(&fabric_state, __ATOMIC_ACQUIRE) > 0 && !eager) {
		/* Nothing inherited uses the fabric: drop the parent's identity
		 * (our copy of its fd; its lock stays with the parent) and join
		 * afresh on first need. */
		munmap(fabric.base, fabric.size);
		if (fabric.fd >= 0)
			fivc_real.close(fabric.fd);
		free(fabric.hb_seen);
		free(fabric.alive_ns);
		memset(&fabric, 0, sizeof(fabric));
		fabric.fd = -1;
		__atomic_store_n(&fabric_state, 0, __ATOMIC_RELEASE);
	}
}

/* exec: the fabric fd survives (and with it our member lock and id) only
 * while connections are handed over. */
int fivc_fabric_keep_across_exec(int keep)
{
	if (__atomic_load_n(&fabric_state, __ATOMIC_ACQUIRE) <= 0)
		return -1;
	int fl = fivc_real.fcntl(fabric.fd, F_GETFD);
	if (fl >= 0)
		fivc_real.fcntl(fabric.fd, F_SETFD, keep ? fl & ~FD_CLOEXEC : fl | FD_CLOEXEC);
	return fabric.fd;
}

int fivc_fabric_adopt(int fd, uint32_t member1)
{
	char err[512];
	pthread_mutex_lock(&fabric_lock);
	int r = -EALREADY;
	if (!fabric_state) {
		r = fivc_fabric_adopt_fd(fivc_cfg.fabric, fd, member1, &fabric, err, sizeof(err));
		if (r < 0) {
			FIVC_INFO("exec: cannot take over the fabric on fd %d: %s", fd, err);
		} else {
			fivc_real.fcntl(fd, F_SETFD, FD_CLOEXEC);
			fivc_fabric_fd_move(-1);
			__atomic_store_n(&fabric_state, 1, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&fabric_lock);
	return r;
}
