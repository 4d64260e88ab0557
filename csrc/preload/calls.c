/* fastivc preload — the calls that reach a socket by another way than
 * read/recv/write/send (issue 11): several messages in one call, the v2
 * vectored calls, stdio on an fdopen'd socket, and glibc functions that
 * call the kernel (or fork, or exec) through internal names the library
 * cannot see.  Before, each went past the library: its bytes were the
 * peer's doorbells, or a daemon()'s child held connections nobody counted.
 *
 * Each follows the kernel's (or glibc's) own code for the same call: the
 * comments name it. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <paths.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "preload.h"

#define MMSG_MAX 1024 /* UIO_MAXIOV: the kernel's bound on vlen */

/* ---- recvmmsg / sendmmsg (net/socket.c: do_recvmmsg, __sys_sendmmsg) ---- */

static void ts_now(struct timespec *t) { clock_gettime(CLOCK_MONOTONIC, t); }

/* The kernel's recvmmsg on TCP: a pending error first; then one recvmsg
 * per entry until vlen; the first error ends it, and is the call's only
 * when no entry was filled (else the next call's);
 * MSG_WAITFORONE makes the entries after the first non-blocking; the
 * timeout is looked at after each entry (it does not bound a wait: the
 * kernel's, as its manual says) and gets what is left; urgent data ends
 * the call.  An end of stream fills an entry with 0 bytes, as there. */
FIVC_EXPORT int recvmmsg(int fd, struct mmsghdr *v, unsigned int vlen, int flags,
			 struct timespec *tmo)
{
	struct fsock *mfs = fivc_managed(fd);
	if (!mfs || mfs->state == FS_PLAIN || (flags & MSG_ERRQUEUE))
		return fivc_real.recvmmsg(fd, v, vlen, flags, tmo); /* (the kernel's, all of it) */
	struct timespec end = {0, 0}, now;
	if (tmo) {
		if (tmo->tv_sec < 0 || tmo->tv_nsec < 0 || tmo->tv_nsec >= 1000000000L)
			return (int)fivc_ret(-EINVAL);
		ts_now(&now);
		end.tv_sec = now.tv_sec + tmo->tv_sec;
		end.tv_nsec = now.tv_nsec + tmo->tv_nsec;
		if (end.tv_nsec >= 1000000000L) {
			end.tv_sec++;
			end.tv_nsec -= 1000000000L;
		}
	}
	if (vlen > MMSG_MAX)
		vlen = MMSG_MAX;
	if (mfs->state == FS_ACCEL) {
		/* do_recvmmsg reports a pending error first, before the bytes
		 * still queued (sock_error) */
		int e;
		pthread_mutex_lock(&mfs->rd_lock);
		fivc_chan_reset_state(&mfs->ch, &e, 1);
		pthread_mutex_unlock(&mfs->rd_lock);
		if (e)
			return (int)fivc_ret(-e);
	}
	unsigned int got = 0;
	int f = flags & ~MSG_WAITFORONE, err = 0;
	while (got < vlen) {
		ssize_t r = recvmsg(fd, &v[got].msg_hdr, f);
		if (r < 0) {
			err = errno;
			break;
		}
		v[got].msg_len = (unsigned int)r;
		got++;
		if (flags & MSG_WAITFORONE)
			f |= MSG_DONTWAIT;
		if (tmo) {
			ts_now(&now);
			long s = end.tv_sec - now.tv_sec, ns = end.tv_nsec - now.tv_nsec;
			if (ns < 0) {
				s--;
				ns += 1000000000L;
			}
			if (s < 0)
				s = ns = 0;
			tmo->tv_sec = s;
			tmo->tv_nsec = ns;
			if (!s && !ns)
				break;
		}
		if (v[got - 1].msg_hdr.msg_flags & MSG_OOB)
			break;
	}
	if (!got && err) {
		errno = err;
		return -1;
	}
	if (got && mfs->state == FS_ACCEL && (err == ECONNRESET || err == EPIPE))
		/* an error after entries: the next call's (do_recvmmsg puts it
		 * back into sk_err); that of a reset, which the ring keeps */
		fivc_chan_store_error(&mfs->ch, err);
	return (int)got;
}

/* The kernel's sendmmsg: one sendmsg per entry; the first error ends it
 * (the call's only when nothing went), and so does a partial send (the
 * rest of that message did not fit). */
FIVC_EXPORT int sendmmsg(int fd, struct mmsghdr *v, unsigned int vlen, int flags)
{
	if (!fivc_managed(fd))
		return fivc_real.sendmmsg(fd, v, vlen, flags);
	if (vlen > MMSG_MAX)
		vlen = MMSG_MAX;
	unsigned int sent = 0;
	int err = 0;
	while (sent < vlen) {
		const struct msghdr *m = &v[sent].msg_hdr;
		ssize_t r = sendmsg(fd, m, flags);
		if (r < 0) {
			err = errno;
			break;
		}
		v[sent].msg_len = (unsigned int)r;
		sent++;
		size_t want = 0;
		for (size_t i = 0; i < m->msg_iovlen; i++)
			want += m->msg_iov[i].iov_len;
		if ((size_t)r < want)
			break;
	}
	if (!sent && err) {
		errno = err;
		return -1;
	}
	return (int)sent;
}

/* ---- preadv2 / pwritev2 (fs/read_write.c: do_readv/do_preadv) ----
 *
 * On a socket an offset other than -1 is ESPIPE and a flag the kernel
 * does not take is EOPNOTSUPP, both before any byte moves: the kernel says
 * so itself.  With -1 the call is readv/writev, RWF_NOWAIT making it
 * non-blocking (sock_read_iter: MSG_DONTWAIT); the other flags the kernel
 * takes (HIPRI, DSYNC, SYNC, APPEND, NOAPPEND) change nothing on a socket.
 * An empty vector reads and writes 0 before the socket is asked. */
#define RWF_SOCKET_OK 0x3fu /* RWF_HIPRI..RWF_NOAPPEND */
#define RWF_NOWAIT_ 0x08u

static int v2_ours(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
	if (off != -1 || ((unsigned)flags & ~RWF_SOCKET_OK) || cnt <= 0 || cnt > MMSG_MAX || !iov)
		return 0;
	return !fivc_iov_empty(iov, cnt) && fivc_managed(fd);
}

FIVC_EXPORT ssize_t preadv2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
	if (!v2_ours(fd, iov, cnt, off, flags))
		return fivc_real.preadv2(fd, iov, cnt, off, flags);
	struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)cnt};
	return recvmsg(fd, &m, (unsigned)flags & RWF_NOWAIT_ ? MSG_DONTWAIT : 0);
}

FIVC_EXPORT ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
	if (!v2_ours(fd, iov, cnt, off, flags))
		return fivc_real.pwritev2(fd, iov, cnt, off, flags);
	if (!((unsigned)flags & RWF_NOWAIT_))
		return writev(fd, iov, cnt);
	struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)cnt};
	return sendmsg(fd, &m, MSG_DONTWAIT);
}

/* (glibc's 64-bit-offset names: the same functions on LP64) */
FIVC_EXPORT ssize_t preadv64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
	return preadv2(fd, iov, cnt, off, flags);
}

FIVC_EXPORT ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off_t off, int flags)
{
	return pwritev2(fd, iov, cnt, off, flags);
}

/* ---- stdio on an accelerated socket (fdopen) ----
 *
 * glibc's FILE reads and writes through internal names, past the library.
 * A FILE on a managed socket is a cookie stream whose functions are the
 * library's read and write; its fileno() is the socket's, as fdopen's.
 * Writes loop until all is written or an error, as glibc's file write
 * does (a short cookie write is an error to glibc).  A socket does not
 * seek: ESPIPE, as lseek gives.  The mode is checked as glibc 2.36's fdopen
 * checks it ('a' sets O_APPEND; 'e' is ignored there too); the buffer is
 * BUFSIZ, not the socket's st_blksize (a size only: the bytes and their
 * order are the same). */
static ssize_t ck_read(void *c, char *b, size_t n) { return read((int)(intptr_t)c, b, n); }

static ssize_t ck_write(void *c, const char *b, size_t n)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r = write((int)(intptr_t)c, b + done, n - done);
		if (r < 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

static int ck_seek(void *c, off64_t *pos, int whence)
{
	(void)c, (void)pos, (void)whence;
	errno = ESPIPE;
	return -1;
}

static int ck_close(void *c) { return close((int)(intptr_t)c); }

FIVC_EXPORT FILE *fdopen(int fd, const char *mode)
{
	if (!fivc_managed(fd) || !mode)
		return fivc_real.fdopen(fd, mode);
	char m[3] = {0};
	switch (mode[0]) {
	case 'r':
	case 'w':
	case 'a':
		m[0] = mode[0];
		break;
	default:
		errno = EINVAL;
		return NULL;
	}
	for (int i = 1; i < 5 && mode[i]; i++) /* (as glibc: up to the first '+') */
		if (mode[i] == '+') {
			m[1] = '+';
			break;
		}
	int fl = fivc_real.fcntl(fd, F_GETFL);
	if (fl < 0)
		return NULL;
	int acc = fl & O_ACCMODE;
	if ((acc == O_RDONLY && (m[0] != 'r' || m[1])) || (acc == O_WRONLY && (m[0] == 'r' || m[1]))) {
		errno = EINVAL;
		return NULL;
	}
	if (m[0] == 'a' && !(fl & O_APPEND) && fivc_real.fcntl(fd, F_SETFL, fl | O_APPEND) < 0)
		return NULL;
	cookie_io_functions_t io = {ck_read, ck_write, ck_seek, ck_close};
	FILE *f = fopencookie((void *)(intptr_t)fd, m, io);
	if (f)
		f->_fileno = fd; /* fileno(), as an fdopen'd FILE gives (the
				  * cookie functions, not it, do the I/O) */
	return f;
}

/* ---- glibc functions that fork or exec by internal names ---- */

/* daemon(): glibc's (misc/daemon.c), with the library's fork.  glibc's
 * forks by its internal name: the child's library took itself for its
 * parent (a vfork child, to exec), so an exec after daemon() handed no
 * connection over and the new program's bytes were lost
 * (tests/test_calls.py). */
FIVC_EXPORT int daemon(int nochdir, int noclose)
{
	FIVC_ENSURE_INIT();
	switch (fork()) {
	case -1:
		return -1;
	case 0:
		break;
	default:
		_exit(0);
	}
	if (setsid() == -1)
		return -1;
	if (!nochdir)
		(void)chdir("/");
	if (!noclose) {
		struct stat st;
		int fd = open(_PATH_DEVNULL, O_RDWR, 0);
		if (fd != -1 && fstat(fd, &st) == 0) {
			if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3)) {
				(void)dup2(fd, STDIN_FILENO);
				(void)dup2(fd, STDOUT_FILENO);
				(void)dup2(fd, STDERR_FILENO);
				if (fd > 2)
					(void)close(fd);
			} else {
				close(fd); /* not /dev/null: glibc's answer */
				errno = ENODEV;
				return -1;
			}
		} else {
			if (fd != -1)
				close(fd);
			return -1;
		}
	}
	return 0;
}

/* execl, execle, execlp: glibc's build the argument vector and call its
 * internal execve; this builds it and calls the library's exec.  After arg
 * the list ends with NULL; with_env: the environment follows (execle). */
static int exec_list(const char *p, int search, int with_env, const char *arg, va_list ap)
{
	va_list cp;
	int n;
	va_copy(cp, ap);
	for (n = 1; va_arg(cp, const char *); n++)
		if (n == INT_MAX) {
			va_end(cp);
			errno = E2BIG;
			return -1;
		}
	va_end(cp);
	char **argv = alloca(((size_t)n + 1) * sizeof(char *));
	argv[0] = (char *)arg;
	for (int i = 1; i <= n; i++)
		argv[i] = va_arg(ap, char *);
	char *const *envp = with_env ? va_arg(ap, char *const *) : environ;
	return fivc_exec_with(p, -1, search, argv, envp);
}

FIVC_EXPORT int execl(const char *path, const char *arg, ...)
{
	va_list ap;
	va_start(ap, arg);
	int r = exec_list(path, 0, 0, arg, ap);
	va_end(ap);
	return r;
}

FIVC_EXPORT int execlp(const char *file, const char *arg, ...)
{
	va_list ap;
	va_start(ap, arg);
	int r = exec_list(file, 1, 0, arg, ap);
	va_end(ap);
	return r;
}

FIVC_EXPORT int execle(const char *path, const char *arg, ...)
{
	va_list ap;
	va_start(ap, arg);
	int r = exec_list(path, 0, 1, arg, ap);
	va_end(ap);
	return r;
}

FIVC_EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
	return fivc_exec_with(NULL, fd, 0, argv, envp);
}

/* ---- syscall(): the libc function a program calls for a raw system call
 *
 * A program that makes socket calls through syscall(SYS_read, ...) (to
 * reach a call its libc lacks, or out of habit) went past the library: its
 * reads found doorbells, its writes went to TCP beside the ring.  The
 * calls that take or make descriptors go to our wrappers, which end in
 * the same system call for a descriptor that is not ours; every other
 * number goes straight on.  The syscall instruction itself (static and
 * Go binaries, inline assembly) comes here too where Syscall User Dispatch
 * is on (sud.c, FASTIVC_TRAP_SYSCALLS=1).
 *
 * Nothing here may run before init is done: init's own calls (dlsym, the
 * allocator) may come through syscall(), and would wait for init's lock. */
static long (*real_syscall)(long, ...);

static long raw(long nr, const long *a)
{
	long (*f)(long, ...) = __atomic_load_n(&real_syscall, __ATOMIC_ACQUIRE);
	if (!f) {
		f = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
		if (!f) {
			errno = ENOSYS;
			return -1;
		}
		__atomic_store_n(&real_syscall, f, __ATOMIC_RELEASE);
	}
	return f(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

#define I(k) ((int)a[k])
#define P(k) ((void *)a[k])
#define U(k) ((size_t)a[k])

FIVC_EXPORT long syscall(long nr, ...)
{
	long a[6];
	va_list ap;
	va_start(ap, nr);
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, long); /* (as glibc's: six registers, whatever was passed) */
	va_end(ap);
	if (!__atomic_load_n(&fivc_ready, __ATOMIC_ACQUIRE) || FIVC_GUARDED())
		return raw(nr, a);
	switch (nr) {
	case SYS_read: return read(I(0), P(1), U(2));
	case SYS_write: return write(I(0), P(1), U(2));
	case SYS_readv: return readv(I(0), P(1), I(2));
	case SYS_writev: return writev(I(0), P(1), I(2));
	case SYS_recvfrom: return recvfrom(I(0), P(1), U(2), I(3), P(4), P(5));
	case SYS_sendto: return sendto(I(0), P(1), U(2), I(3), P(4), (socklen_t)a[5]);
	case SYS_recvmsg: return recvmsg(I(0), P(1), I(2));
	case SYS_sendmsg: return sendmsg(I(0), P(1), I(2));
	case SYS_recvmmsg: return recvmmsg(I(0), P(1), (unsigned)a[2], I(3), P(4));
	case SYS_sendmmsg: return sendmmsg(I(0), P(1), (unsigned)a[2], I(3));
	case SYS_sendfile: return sendfile(I(0), I(1), P(2), U(3));
	case SYS_shutdown: return shutdown(I(0), I(1));
	case SYS_close: return close(I(0));
	case SYS_close_range: return close_range((unsigned)a[0], (unsigned)a[1], I(2));
	case SYS_dup: return dup(I(0));
#ifdef SYS_dup2
	case SYS_dup2: return dup2(I(0), I(1));
#endif
	case SYS_dup3: return dup3(I(0), I(1), I(2));
	case SYS_fcntl: return fcntl(I(0), I(1), P(2));
	case SYS_ioctl: return ioctl(I(0), (unsigned long)a[1], P(2));
	case SYS_getsockopt: return getsockopt(I(0), I(1), I(2), P(3), P(4));
	case SYS_setsockopt: return setsockopt(I(0), I(1), I(2), P(3), (socklen_t)a[4]);
	case SYS_socket: return socket(I(0), I(1), I(2));
	case SYS_bind: return bind(I(0), P(1), (socklen_t)a[2]);
	case SYS_listen: return listen(I(0), I(1));
	case SYS_connect: return connect(I(0), P(1), (socklen_t)a[2]);
	case SYS_accept: return accept(I(0), P(1), P(2));
	case SYS_accept4: return accept4(I(0), P(1), P(2), I(3));
#ifdef SYS_poll
	case SYS_poll: return poll(P(0), (nfds_t)a[1], I(2));
#endif
	case SYS_ppoll: /* (the kernel's ppoll takes the sigset's size too: 8) */
		if (!a[3] || a[4] == sizeof(sigset_t))
			return ppoll(P(0), (nfds_t)a[1], P(2), P(3));
		if (a[4] == 8) {
			sigset_t m;
			sigemptyset(&m);
			memcpy(&m, P(3), 8);
			return ppoll(P(0), (nfds_t)a[1], P(2), &m);
		}
		return raw(nr, a);
	case SYS_epoll_pwait:
		if (!a[4])
			return epoll_pwait(I(0), P(1), I(2), I(3), NULL);
		if (a[5] == 8) {
			sigset_t m;
			sigemptyset(&m);
			memcpy(&m, P(4), 8);
			return epoll_pwait(I(0), P(1), I(2), I(3), &m);
		}
		return raw(nr, a);
#ifdef SYS_select
	case SYS_select: return select(I(0), P(1), P(2), P(3), P(4));
#endif
	case SYS_epoll_ctl: return epoll_ctl(I(0), I(1), I(2), P(3));
#ifdef SYS_epoll_wait
	case SYS_epoll_wait: return epoll_wait(I(0), P(1), I(2), I(3));
#endif
	case SYS_epoll_create1: return epoll_create1(I(0));
#ifdef SYS_epoll_create
	case SYS_epoll_create: return epoll_create(I(0));
#endif
#ifdef SYS_fork
	case SYS_fork: return fork();
#endif
	case SYS_execve: return execve(P(0), P(1), P(2));
	case SYS_io_uring_setup: fivc_uring_seen("syscall(SYS_io_uring_setup)"); break;
	}
	return raw(nr, a);
}

#undef I
#undef P
#undef U
