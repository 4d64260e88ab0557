/* fastivc preload — io_uring: the process's connections go back to TCP
 * (issue 12; README "The way back to TCP").
 *
 * An io_uring operation on a socket goes from the kernel to the TCP socket
 * itself, past every wrapper here, so a ring connection is one the library
 * cannot follow once the process has an io_uring: its reads would find
 * doorbells and its writes would go beside the ring.  So, at the first
 * sign of one, every connection of the process downgrades (down.c) and no
 * new one is accelerated (fivc_cfg.disabled); its listeners leave the
 * fabric, so clients connecting to them stay plain from the start.
 *
 * The signs:
 *   - liburing's set-up calls, which a program linked against liburing
 *     makes through its PLT (Debian's liburing makes the system calls
 *     itself, with no libc in between, so these are the place);
 *   - syscall(SYS_io_uring_setup, ...) through libc (calls.c);
 *   - an io_uring fd the process already has when it first opens the
 *     fabric (one set up before, by any means: /proc/self/fd).
 * Not seen: the io_uring_setup instruction made outside libc and liburing
 * (a static liburing, inline assembly) after the fabric was opened.
 * Syscall User Dispatch would see it, at ~45 ns on every system call of
 * every thread that has it on (measured: getppid 213 -> 258 ns), and its
 * SIGSYS kills a thread that blocks SIGSYS; README "Not there yet".
 *
 * A connection that a thread of ours is inside a call on (-EBUSY) goes
 * when that call returns (fivc_fs_down_due). */
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "preload.h"

static int seen; /* 1 once the process has an io_uring */

static void down_one(struct fsock *fs, const int *fds, int nfds, void *arg)
{
	(void)arg;
	if (!fivc_fs_uses_fabric(fs) || !nfds)
		return;
	int r = fivc_fs_downgrade(fs, fds[0], FIVC_DOWN_URING);
	if (r == -EBUSY) {
		__atomic_store_n(&fs->down_due, FIVC_DOWN_URING, __ATOMIC_RELEASE);
		FIVC_DEBUG("fd %d: io_uring: in use by a thread, goes back when its call returns",
			   fds[0]);
	} else if (r < 0) {
		FIVC_INFO("io_uring: fd %d cannot go back to TCP (%s): shut down", fds[0],
			  strerror(-r));
		fivc_real.shutdown(fds[0], SHUT_RDWR);
	}
}

void fivc_uring_seen(const char *how)
{
	if (__atomic_exchange_n(&seen, 1, __ATOMIC_ACQ_REL))
		return;
	int e = errno;
	__atomic_store_n(&fivc_cfg.disabled, 1, __ATOMIC_RELEASE);
	FIVC_INFO("io_uring in this process (%s): its connections go back to TCP, new ones "
		  "stay plain",
		  how);
	fivc_listen_forget_all();
	fivc_for_each_fsock(down_one, NULL);
	errno = e;
}

/* When the process first opens the fabric: an io_uring it made before. */
void fivc_uring_scan(void)
{
	if (__atomic_load_n(&seen, __ATOMIC_ACQUIRE))
		return;
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return;
	struct dirent *de;
	char path[300], link[64];
	int found = 0;
	while (!found && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		if (n > 0) {
			link[n] = 0;
			found = !strcmp(link, "anon_inode:[io_uring]");
		}
	}
	closedir(d);
	if (found)
		fivc_uring_seen("an io_uring fd made before");
}

/* ---- liburing's set-up calls (its structs stay opaque here) ---- */

static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

FIVC_EXPORT int io_uring_setup(unsigned entries, void *p)
{
	static int (*f)(unsigned, void *);
	if (!f && !(f = (int (*)(unsigned, void *))next("io_uring_setup")))
		return -ENOSYS;
	fivc_uring_seen("io_uring_setup");
	return f(entries, p);
}

FIVC_EXPORT int io_uring_queue_init(unsigned entries, void *ring, unsigned flags)
{
	static int (*f)(unsigned, void *, unsigned);
	if (!f && !(f = (int (*)(unsigned, void *, unsigned))next("io_uring_queue_init")))
		return -ENOSYS;
	fivc_uring_seen("io_uring_queue_init");
	return f(entries, ring, flags);
}

FIVC_EXPORT int io_uring_queue_init_params(unsigned entries, void *ring, void *p)
{
	static int (*f)(unsigned, void *, void *);
	if (!f && !(f = (int (*)(unsigned, void *, void *))next("io_uring_queue_init_params")))
		return -ENOSYS;
	fivc_uring_seen("io_uring_queue_init_params");
	return f(entries, ring, p);
}

FIVC_EXPORT int io_uring_queue_init_mem(unsigned entries, void *ring, void *p, void *buf,
					size_t size)
{
	static int (*f)(unsigned, void *, void *, void *, size_t);
	if (!f && !(f = (int (*)(unsigned, void *, void *, void *, size_t))next(
			    "io_uring_queue_init_mem")))
		return -ENOSYS;
	fivc_uring_seen("io_uring_queue_init_mem");
	return f(entries, ring, p, buf, size);
}
