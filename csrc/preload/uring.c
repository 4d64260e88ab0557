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
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "preload.h"

void fivc_uring_seen(const char *how)
{
	char why[96];
	snprintf(why, sizeof(why), "io_uring (%s)", how);
	fivc_down_process(FIVC_DOWN_URING, why);
}

/* When the process first opens the fabric: an io_uring it made before. */
void fivc_uring_scan(void)
{
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

/* f: the function pointer to fill, with its own type */
#define NEXT(f, name) ((f) = (__typeof__(f))fivc_next_sym(&f##_slot, name))

FIVC_EXPORT int io_uring_setup(unsigned entries, void *p)
{
	static void *f_slot;
	int (*f)(unsigned, void *);
	if (!NEXT(f, "io_uring_setup"))
		return -ENOSYS;
	fivc_uring_seen("io_uring_setup");
	return f(entries, p);
}

FIVC_EXPORT int io_uring_queue_init(unsigned entries, void *ring, unsigned flags)
{
	static void *f_slot;
	int (*f)(unsigned, void *, unsigned);
	if (!NEXT(f, "io_uring_queue_init"))
		return -ENOSYS;
	fivc_uring_seen("io_uring_queue_init");
	return f(entries, ring, flags);
}

FIVC_EXPORT int io_uring_queue_init_params(unsigned entries, void *ring, void *p)
{
	static void *f_slot;
	int (*f)(unsigned, void *, void *);
	if (!NEXT(f, "io_uring_queue_init_params"))
		return -ENOSYS;
	fivc_uring_seen("io_uring_queue_init_params");
	return f(entries, ring, p);
}

FIVC_EXPORT int io_uring_queue_init_mem(unsigned entries, void *ring, void *p, void *buf,
					size_t size)
{
	static void *f_slot;
	int (*f)(unsigned, void *, void *, void *, size_t);
	if (!NEXT(f, "io_uring_queue_init_mem"))
		return -ENOSYS;
	fivc_uring_seen("io_uring_queue_init_mem");
	return f(entries, ring, p, buf, size);
}
