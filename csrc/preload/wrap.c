/* fastivc preload — the interposed symbols.  Each wrapper is one dispatch:
 * a socket the library does not manage takes the real call directly. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <linux/close_range.h>

#include "preload.h"

int fivc_do_poll(struct pollfd *fds, nfds_t n, int timeout_ms);
int fivc_do_ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask);
int fivc_do_select(int nfds, fd_set *r, fd_set *w, fd_set *x, struct timeval *tv);
int fivc_do_pselect(int nfds, fd_set *r, fd_set *w, fd_set *x, const struct timespec *ts,
		    const sigset_t *mask);

/* ---- socket / connect / accept ---- */

FIVC_EXPORT int socket(int domain, int type, int proto)
{
	FIVC_ENSURE_INIT();
	int fd = fivc_real.socket(domain, type, proto);
	if (fd >= 0)
		fivc_fd_set_kind(fd, (domain == AF_INET || domain == AF_INET6) &&
					     (type & 0xf) == SOCK_STREAM &&
					     (proto == 0 || proto == IPPROTO_TCP)
				     ? FIVC_KIND_TCP | FIVC_FD_NBKNOWN | FIVC_FD_UNBOUND |
					       (type & SOCK_NONBLOCK ? FIVC_FD_NB : 0)
				     : FIVC_KIND_OTHER);
	return fd;
}

int fivc_fd_nonblock(int fd)
{
	int b = fivc_fd_bits(fd);
	if (b & FIVC_FD_NBKNOWN)
		return (b & FIVC_FD_NB) != 0;
	int fl = fivc_real.fcntl(fd, F_GETFL);
	return fl < 0 ? -1 : (fl & O_NONBLOCK) != 0;
}

/* (seen only to keep FIVC_FD_UNBOUND true) */
FIVC_EXPORT int bind(int fd, const struct sockaddr *a, socklen_t l)
{
	FIVC_ENSURE_INIT();
	fivc_fd_clear_bits(fd, FIVC_FD_UNBOUND);
	return fivc_real.bind(fd, a, l);
}


FIVC_EXPORT int connect(int fd, const struct sockaddr *a, socklen_t l)
{
	FIVC_ENSURE_INIT();
	return fivc_do_connect(fd, a, l);
}

FIVC_EXPORT int listen(int fd, int backlog)
{
	FIVC_ENSURE_INIT();
	fivc_fd_clear_bits(fd, FIVC_FD_UNBOUND);
	/* The fabric's entry goes in before the port opens: a client that
	 * connects the moment it does must find it, or it stays plain (the
	 * soak's clients, started with their server, lost up to 6 of 16
	 * connections so).  An unbound socket gets its port from listen():
	 * its entry follows. */
	int early = fivc_listen_note(fd);
	int r = fivc_real.listen(fd, backlog);
	int e = errno;
	if (r == 0 && !early)
		fivc_listen_note(fd);
	if (r < 0 && early)
		fivc_listen_forget(fd);
	errno = e;
	return r;
}

FIVC_EXPORT int accept(int fd, struct sockaddr *a, socklen_t *l)
{
	FIVC_ENSURE_INIT();
	return fivc_do_accept(fd, a, l, 0, 0);
}

FIVC_EXPORT int accept4(int fd, struct sockaddr *a, socklen_t *l, int flags)
{
	FIVC_ENSURE_INIT();
	return fivc_do_accept(fd, a, l, flags, 1);
}

/* ---- reads ---- */

/* read, readv and writev of 0 bytes return 0 before the socket is asked
 * (sock_read_iter; do_iter_readv_writev), whatever its state; recv,
 * recvmsg, write, send and sendmsg of 0 bytes do ask it (EAGAIN,
 * ECONNRESET, EPIPE).  The kernel says so for the first three. */

FIVC_EXPORT ssize_t read(int fd, void *b, size_t n)
{
	struct fsock *fs = n ? fivc_managed(fd) : NULL;
	return fs ? fivc_ret(fivc_fs_recv(fs, fd, b, n, 0)) : fivc_real.read(fd, b, n);
}

FIVC_EXPORT ssize_t recv(int fd, void *b, size_t n, int flags)
{
	struct fsock *fs = fivc_managed(fd);
	return fs ? fivc_ret(fivc_fs_recv(fs, fd, b, n, flags)) : fivc_real.recv(fd, b, n, flags);
}

FIVC_EXPORT ssize_t recvfrom(int fd, void *b, size_t n, int flags, struct sockaddr *a, socklen_t *l)
{
	struct fsock *fs = fivc_managed(fd);
	if (!fs)
		return fivc_real.recvfrom(fd, b, n, flags, a, l);
	if (a && l)
		*l = 0; /* as Linux TCP does: no address */
	return fivc_ret(fivc_fs_recv(fs, fd, b, n, flags));
}

FIVC_EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt)
{
	struct fsock *fs = cnt > 0 && iov && !fivc_iov_empty(iov, cnt) ? fivc_managed(fd) : NULL;
	return fs ? fivc_ret(fivc_fs_recvv(fs, fd, iov, cnt, 0)) : fivc_real.readv(fd, iov, cnt);
}

FIVC_EXPORT ssize_t recvmsg(int fd, struct msghdr *m, int flags)
{
	struct fsock *fs = fivc_managed(fd);
	if (!fs || (flags & MSG_ERRQUEUE)) /* the error queue stays the kernel's */
		return fivc_real.recvmsg(fd, m, flags);
	ssize_t r = fivc_fs_recvv(fs, fd, m->msg_iov, (int)m->msg_iovlen, flags);
	if (r >= 0) {
		m->msg_namelen = 0;
		m->msg_controllen = 0;
		m->msg_flags = 0;
	}
	return fivc_ret(r);
}

/* ---- writes ---- */

FIVC_EXPORT ssize_t write(int fd, const void *b, size_t n)
{
	struct fsock *fs = fivc_managed(fd);
	return fs ? fivc_ret(fivc_fs_send(fs, fd, b, n, 0)) : fivc_real.write(fd, b, n);
}

FIVC_EXPORT ssize_t send(int fd, const void *b, size_t n, int flags)
{
	struct fsock *fs = fivc_managed(fd);
	return fs ? fivc_ret(fivc_fs_send(fs, fd, b, n, flags)) : fivc_real.send(fd, b, n, flags);
}

FIVC_EXPORT ssize_t sendto(int fd, const void *b, size_t n, int flags, const struct sockaddr *a,
			   socklen_t l)
{
	struct fsock *fs = fivc_managed(fd);
	return fs ? fivc_ret(fivc_fs_send(fs, fd, b, n, flags))
		  : fivc_real.sendto(fd, b, n, flags, a, l);
}

FIVC_EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
	struct fsock *fs = cnt > 0 && iov && !fivc_iov_empty(iov, cnt) ? fivc_managed(fd) : NULL;
	return fs ? fivc_ret(fivc_fs_sendv(fs, fd, iov, cnt, 0)) : fivc_real.writev(fd, iov, cnt);
}

FIVC_EXPORT ssize_t sendmsg(int fd, const struct msghdr *m, int flags)
{
	struct fsock *fs = fivc_managed(fd);
	return fs ? fivc_ret(fivc_fs_sendv(fs, fd, m->msg_iov, (int)m->msg_iovlen, flags))
		  : fivc_real.sendmsg(fd, m, flags);
}

/* sendfile into an accelerated socket: copy through a buffer.  As the
 * kernel's: a pipe or socket to read from is EINVAL (it needs a file it
 * can splice from), and an error before any byte went is the error, with
 * an offset too (regression, issue 11: a full non-blocking ring gave 0,
 * which callers read as the end of the file).  Bytes read and not sent go
 * back (lseek) where the file can seek; where it cannot (a character
 * device), a non-blocking socket reads no more than the ring takes. */
static ssize_t sendfile_fs(struct fsock *fs, int out, int in, off_t *off, size_t count)
{
	char buf[65536];
	size_t done = 0;
	off_t pos = off ? *off : 0;
	struct stat st;
	if (fstat(in, &st) < 0)
		return -errno;
	if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))
		return -EINVAL;
	int seekable = off || lseek(in, 0, SEEK_CUR) >= 0;
	while (done < count) {
		size_t want = count - done < sizeof(buf) ? count - done : sizeof(buf);
		if (!seekable && fs->state == FS_ACCEL && fs->nonblock) {
			ssize_t room = fivc_chan_writable(&fs->ch);
			if (room == 0)
				return done ? (ssize_t)done : -EAGAIN;
			if (room > 0 && (size_t)room < want)
				want = (size_t)room;
		}
		ssize_t r = off ? pread(in, buf, want, pos) : fivc_real.read(in, buf, want);
		if (r < 0) {
			if (done)
				break;
			return -errno;
		}
		if (r == 0)
			break;
		ssize_t w = fivc_fs_send(fs, out, buf, (size_t)r, 0);
		if (w < 0) {
			if (!off && seekable) /* we consumed r bytes of the file we could not send */
				lseek(in, -(off_t)r, SEEK_CUR);
			if (done == 0)
				return w;
			break;
		}
		if (!off && w < r)
			lseek(in, -(off_t)(r - w), SEEK_CUR);
		done += (size_t)w;
		pos += w;
		if (w < r)
			break;
	}
	if (off)
		*off = pos;
	return (ssize_t)done;
}

static ssize_t sendfile_held(struct fsock *fs, int out, int in, off_t *off, size_t count)
{
	fivc_fs_hold(fs); /* (across the pieces: see fivc_fs_hold) */
	ssize_t r = sendfile_fs(fs, out, in, off, count);
	fivc_fs_unhold(fs);
	return fivc_ret(r);
}

FIVC_EXPORT ssize_t sendfile(int out, int in, off_t *off, size_t count)
{
	struct fsock *fs = fivc_managed(out);
	return fs ? sendfile_held(fs, out, in, off, count) : fivc_real.sendfile(out, in, off, count);
}

FIVC_EXPORT ssize_t sendfile64(int out, int in, off_t *off, size_t count)
{
	struct fsock *fs = fivc_managed(out);
	return fs ? sendfile_held(fs, out, in, off, count)
		  : fivc_real.sendfile64(out, in, off, count);
}

/* splice moves bytes between a pipe and the kernel's socket buffers, which
 * an accelerated connection does not use: refuse it with EINVAL, as the
 * kernel does for files that cannot splice, so the program falls back to
 * read/write (haproxy and others do).  Before the switch the TCP socket
 * still carries program bytes, but the count must stay right: refused too. */
FIVC_EXPORT ssize_t splice(int in, loff_t *oin, int out, loff_t *oout, size_t len,
			   unsigned int flags)
{
	FIVC_ENSURE_INIT();
	struct fsock *a = fivc_fs(in), *b = fivc_fs(out);
	if ((a && a->state != FS_PLAIN) || (b && b->state != FS_PLAIN)) {
		FIVC_INFO("splice on accelerated fd %d: EINVAL (use read/write)",
			  a && a->state != FS_PLAIN ? in : out);
		errno = EINVAL;
		return -1;
	}
	return fivc_real.splice(in, oin, out, oout, len, flags);
}

/* ---- glibc fortify variants ---- */

static void chk_fail(void) __attribute__((noreturn));
static void chk_fail(void)
{
	static const char m[] = "*** buffer overflow detected ***: terminated\n";
	fivc_real.write(2, m, sizeof(m) - 1);
	abort();
}

FIVC_EXPORT ssize_t __read_chk(int fd, void *b, size_t n, size_t bl)
{
	if (n > bl)
		chk_fail();
	return read(fd, b, n);
}

FIVC_EXPORT ssize_t __recv_chk(int fd, void *b, size_t n, size_t bl, int flags)
{
	if (n > bl)
		chk_fail();
	return recv(fd, b, n, flags);
}

FIVC_EXPORT ssize_t __recvfrom_chk(int fd, void *b, size_t n, size_t bl, int flags,
				   struct sockaddr *a, socklen_t *l)
{
	if (n > bl)
		chk_fail();
	return recvfrom(fd, b, n, flags, a, l);
}

FIVC_EXPORT int __poll_chk(struct pollfd *fds, nfds_t n, int t, size_t fdslen)
{
	if (fdslen / sizeof(*fds) < n)
		chk_fail();
	return poll(fds, n, t);
}

FIVC_EXPORT int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *ts,
			    const sigset_t *m, size_t fdslen)
{
	if (fdslen / sizeof(*fds) < n)
		chk_fail();
	return ppoll(fds, n, ts, m);
}

/* ---- readiness ---- */

FIVC_EXPORT int poll(struct pollfd *fds, nfds_t n, int t)
{
	FIVC_ENSURE_INIT();
	return FIVC_GUARDED() ? fivc_real.poll(fds, n, t) : fivc_do_poll(fds, n, t);
}

FIVC_EXPORT int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *m)
{
	FIVC_ENSURE_INIT();
	return FIVC_GUARDED() ? fivc_real.ppoll(fds, n, ts, m) : fivc_do_ppoll(fds, n, ts, m);
}

FIVC_EXPORT int select(int n, fd_set *r, fd_set *w, fd_set *x, struct timeval *tv)
{
	FIVC_ENSURE_INIT();
	return FIVC_GUARDED() ? fivc_real.select(n, r, w, x, tv) : fivc_do_select(n, r, w, x, tv);
}

FIVC_EXPORT int pselect(int n, fd_set *r, fd_set *w, fd_set *x, const struct timespec *ts,
			const sigset_t *m)
{
	FIVC_ENSURE_INIT();
	return FIVC_GUARDED() ? fivc_real.pselect(n, r, w, x, ts, m) : fivc_do_pselect(n, r, w, x, ts, m);
}

/* ---- descriptors ---- */

FIVC_EXPORT int close(int fd)
{
	FIVC_ENSURE_INIT();
	if (fivc_own_fd(fd))
		return 0; /* not the program's (closing the fabric's would drop our member lock) */
	return fivc_fs_close(fd);
}

/* The kernel closed fds [first, hi] (hi inside the table): forget them.
 * The managed ones come from the compact list, the others we know of
 * (listeners, epoll sets, kinds) from the kind bytes read 8 at a time, so
 * that closefrom(3) costs the fds the library knows, not the range (a
 * table of up to 2^20 entries).  Without memory for the copy, fd by fd. */
static void forget_range(unsigned first, unsigned hi)
{
	int e = errno;
	int n = fivc_fdlist_count(), *l = n ? malloc((size_t)n * sizeof(int)) : NULL;
	if (n && l) {
		fivc_fdlist_lock();
		n = fivc_fdlist_copy(l, n);
		fivc_fdlist_unlock();
		for (int i = 0; i < n; i++)
			if ((unsigned)l[i] >= first && (unsigned)l[i] <= hi && !fivc_own_fd(l[i]))
				fivc_fs_replaced(l[i]);
	}
	int fd_by_fd = n && !l;
	for (unsigned fd = first; fd <= hi; fd++) {
		if (!fd_by_fd && !(fd & 7) && hi - fd >= 7) {
			uint64_t w;
			memcpy(&w, fivc_kinds + fd, sizeof(w));
			if (!w) {
				fd += 7;
				continue;
			}
		}
		if (!fivc_own_fd((int)fd) && ((fd_by_fd && fivc_fs((int)fd)) || fivc_fd_bits((int)fd)))
			fivc_fs_replaced((int)fd);
	}
	free(l);
	errno = e;
}

/* close_range/closefrom: the kernel closes a range; the fabric fd (our
 * member lock) is left out of it, and the closed fds are forgotten. */
FIVC_EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
	FIVC_ENSURE_INIT();
	if (flags & CLOSE_RANGE_CLOEXEC || first > last)
		return fivc_real.close_range(first, last, flags);
	/* close the range in pieces around our own fds */
	int own[2] = {fivc_fabric_fd(), fivc_own_fd(fivc_cfg.log_fd) ? fivc_cfg.log_fd : -1};
	if (own[0] > own[1]) {
		int t = own[0];
		own[0] = own[1];
		own[1] = t;
	}
	unsigned lo = first;
	int r = 0;
	for (int i = 0; i < 2 && r == 0; i++) {
		if (own[i] < 0 || (unsigned)own[i] < lo || (unsigned)own[i] > last)
			continue;
		if ((unsigned)own[i] > lo)
			r = fivc_real.close_range(lo, (unsigned)own[i] - 1, flags);
		lo = (unsigned)own[i] + 1;
		if (lo == 0) /* own[i] was UINT_MAX */
			return r;
	}
	if (r == 0 && lo <= last)
		r = fivc_real.close_range(lo, last, flags);
	if (r < 0)
		return r;
	if (fivc_nfds > 0 && first < (unsigned)fivc_nfds)
		forget_range(first, last < (unsigned)fivc_nfds ? last : (unsigned)fivc_nfds - 1);
	return 0;
}

FIVC_EXPORT void closefrom(int lowfd)
{
	close_range(lowfd < 0 ? 0u : (unsigned)lowfd, ~0u, 0);
}

FIVC_EXPORT int shutdown(int fd, int how)
{
	struct fsock *fs = fivc_managed(fd);
	if (!fs)
		return fivc_real.shutdown(fd, how);
	fivc_fs_hold(fs); /* (a close by another thread frees none of it) */
	int r = fivc_fs_shutdown(fs, fd, how);
	fivc_fs_unhold(fs);
	return (int)fivc_ret(r);
}

FIVC_EXPORT int dup(int fd)
{
	FIVC_ENSURE_INIT();
	int r = fivc_real.dup(fd);
	if (r >= 0) {
		fivc_fd_dup_kind(fd, r);
		if (fivc_fs(fd))
			fivc_fs_dup(fd, r);
	}
	return r;
}

static int dup_onto(int oldfd, int newfd, int r)
{
	if (r >= 0 && oldfd != newfd) {
		fivc_fs_replaced(newfd); /* the kernel closed whatever newfd was */
		fivc_fd_dup_kind(oldfd, newfd);
		fivc_fs_dup(oldfd, newfd);
	}
	return r;
}

FIVC_EXPORT int dup2(int oldfd, int newfd)
{
	FIVC_ENSURE_INIT();
	if (fivc_own_fd(newfd))
		fivc_own_fd_move(newfd);
	return dup_onto(oldfd, newfd, fivc_real.dup2(oldfd, newfd));
}

FIVC_EXPORT int dup3(int oldfd, int newfd, int flags)
{
	FIVC_ENSURE_INIT();
	if (fivc_own_fd(newfd))
		fivc_own_fd_move(newfd);
	return dup_onto(oldfd, newfd, fivc_real.dup3(oldfd, newfd, flags));
}

static int do_fcntl(int (*real)(int, int, ...), int fd, int cmd, void *arg)
{
	FIVC_ENSURE_INIT();
	int r = real(fd, cmd, arg);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))
		fivc_fd_dup_kind(fd, r);
	if (r >= 0 && cmd == F_SETFL)
		fivc_fd_note_nb(fd, ((int)(intptr_t)arg & O_NONBLOCK) != 0);
	struct fsock *fs = fivc_fs(fd);
	int sig = (cmd == F_SETFL && ((int)(intptr_t)arg & O_ASYNC)) || cmd == F_SETOWN ||
		  cmd == F_SETOWN_EX;
	if (r >= 0 && sig)
		fivc_fd_add_bits(fd, FIVC_FD_MISCOPT); /* (a connection to come asks) */
	if (r < 0 || !fs)
		return r;
	if (cmd == F_SETFL)
		fs->nonblock = ((int)(intptr_t)arg & O_NONBLOCK) != 0;
	else if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
		fivc_fs_dup(fd, r);
	if (sig || (cmd == F_SETFL && fs->ch.sig))
		fivc_fs_take_signals(fs, fd);
	return r;
}

/* fcntl and fcntl64 (what programs built with _FILE_OFFSET_BITS=64 call):
 * both must be seen, or an O_NONBLOCK change would be missed. */
FIVC_EXPORT int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *); /* every fcntl argument fits a pointer */
	va_end(ap);
	FIVC_ENSURE_INIT();
	return do_fcntl(fivc_real.fcntl, fd, cmd, arg);
}

FIVC_EXPORT int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	FIVC_ENSURE_INIT();
	return do_fcntl(fivc_real.fcntl64, fd, cmd, arg);
}

FIVC_EXPORT int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	struct fsock *fs = fivc_managed(fd);
	if (fs && req == SIOCATMARK && fs->state == FS_ACCEL) {
		pthread_mutex_lock(&fs->rd_lock); /* (the reader's mark) */
		*(int *)arg = fivc_chan_atmark(&fs->ch);
		pthread_mutex_unlock(&fs->rd_lock);
		return 0;
	}
	if (fs && req == FIONREAD) {
		long n = fivc_fs_nread(fs, fd);
		if (n < 0)
			return (int)fivc_ret(n);
		*(int *)arg = (int)n;
		return 0;
	}
	int r = fivc_real.ioctl(fd, req, arg);
	if (r == 0 && req == FIONBIO) {
		fivc_fd_note_nb(fd, *(int *)arg != 0);
		if (fs)
			fs->nonblock = *(int *)arg != 0;
	}
	if (r == 0 && (req == FIOASYNC || req == FIOSETOWN || req == SIOCSPGRP)) {
		fivc_fd_add_bits(fd, FIVC_FD_MISCOPT); /* (as fcntl's O_ASYNC, F_SETOWN) */
		if (fs)
			fivc_fs_take_signals(fs, fd);
	}
	return r;
}

static int is_nodelay(int level, int name) { return level == IPPROTO_TCP && name == TCP_NODELAY; }

/* SOL_SOCKET options the channel keeps a copy of (preload.h FIVC_FD_OPTS) */
static int sockopt_bit(int name)
{
	switch (name) {
	case SO_SNDBUF:
	case SO_SNDBUFFORCE:
		return FIVC_FD_SNDBUF;
	case SO_RCVBUF:
	case SO_RCVBUFFORCE:
		return FIVC_FD_RCVBUF;
	case SO_RCVTIMEO:
	case SO_SNDTIMEO:
	case SO_OOBINLINE:
	case SO_LINGER:
	case SO_RCVLOWAT:
#ifdef SO_RCVTIMEO_NEW
	case SO_RCVTIMEO_NEW:
	case SO_SNDTIMEO_NEW:
#endif
		return FIVC_FD_MISCOPT;
	}
	return 0;
}

FIVC_EXPORT int setsockopt(int fd, int level, int name, const void *v, socklen_t l)
{
	FIVC_ENSURE_INIT();
	struct fsock *fs = fivc_fs(fd);
	if (fs && is_nodelay(level, name) && __atomic_load_n(&fs->nodelay_forced, __ATOMIC_ACQUIRE)) {
		/* the program's view only: doorbells keep Nagle off */
		if (!v || l < sizeof(int))
			return (int)fivc_ret(-EINVAL);
		fs->app_nodelay = *(const int *)v != 0;
		return 0;
	}
	int r = fivc_real.setsockopt(fd, level, name, v, l);
	int bit = r != 0 || level != SOL_SOCKET ? 0 : sockopt_bit(name);
	if (bit) {
		/* the channel's copy, from the kernel's (which rounds and
		 * doubles); a connection still to come asks at its start */
		fivc_fd_add_bits(fd, bit);
		if (fs)
			fivc_fs_take_sockopt(fs, fd, name);
	}
	return r;
}

FIVC_EXPORT int getsockopt(int fd, int level, int name, void *v, socklen_t *l)
{
	FIVC_ENSURE_INIT();
	struct fsock *fs = fivc_fs(fd);
	int r = fivc_real.getsockopt(fd, level, name, v, l);
	if (r == 0 && fs && is_nodelay(level, name) && v && l && *l >= sizeof(int) &&
	    __atomic_load_n(&fs->nodelay_forced, __ATOMIC_ACQUIRE))
		*(int *)v = fs->app_nodelay;
	if (r == 0 && fs && fs->state == FS_ACCEL && level == SOL_SOCKET && name == SO_ERROR && v &&
	    l && *l >= sizeof(int)) {
		/* the ring's reset error, reported (and cleared) as the kernel's.
		 * The doorbell socket's own error (now cleared) describes
		 * doorbells, but for a peer that died and reset it */
		int e;
		pthread_mutex_lock(&fs->rd_lock);
		fivc_chan_reset_state(&fs->ch, &e, 1);
		pthread_mutex_unlock(&fs->rd_lock);
		if (e || __atomic_load_n(&fs->ch.peer_gone, __ATOMIC_RELAXED) != 2)
			*(int *)v = e;
	}
	return r;
}

/* ---- process ---- */

extern char **environ;

/* epoll fds are remembered: one may be watched inside another (nested). */
FIVC_EXPORT int epoll_create(int size)
{
	FIVC_ENSURE_INIT();
	int fd = fivc_real.epoll_create(size);
	fivc_fd_set_kind(fd, FIVC_KIND_EPOLL);
	return fd;
}

FIVC_EXPORT int epoll_create1(int flags)
{
	FIVC_ENSURE_INIT();
	int fd = fivc_real.epoll_create1(flags);
	fivc_fd_set_kind(fd, FIVC_KIND_EPOLL);
	return fd;
}

FIVC_EXPORT pid_t fork(void)
{
	FIVC_ENSURE_INIT();
	return fivc_do_fork();
}

/* exec: close-on-exec connections are let go; the others are handed to the
 * new program (exec.c).  execv/execvp go through their e-forms with the
 * environment that carries them. */
/* The exec calls, one way: path with search (execvpe), path (execve), or
 * the program in fd (fexecve: path NULL). */
int fivc_exec_with(const char *p, int fd, int search, char *const a[], char *const e[])
{
	FIVC_ENSURE_INIT();
	/* A vfork() child (or one of a raw clone) may share the parent's
	 * memory, and its exec closes only its own descriptors: none of the
	 * connections can be handed over (the new program would be another
	 * member, which the parent's memory cannot make), so those the child
	 * holds go back to TCP, for the parent too (one socket), whether or
	 * not the new program loads the library (exec.c). */
	char **env = NULL;
	if (getpid() == fivc_pid) {
		fivc_before_exec();
		if (!fivc_exec_loads_library(p, fd, search, e))
			fivc_exec_downgrade(0); /* back to TCP (exec.c) */
		env = fivc_exec_env(e);
	} else {
		fivc_exec_downgrade(1);
	}
	char *const *ev = env ? env : e;
	int r = !p ? fivc_real.fexecve(fd, a, ev)
		: search ? fivc_real.execvpe(p, a, ev) : fivc_real.execve(p, a, ev);
	int err = errno;
	fivc_exec_failed(env);
	errno = err;
	return r;
}

FIVC_EXPORT int execve(const char *p, char *const a[], char *const e[])
{
	return fivc_exec_with(p, -1, 0, a, e);
}

FIVC_EXPORT int execv(const char *p, char *const a[])
{
	return execve(p, a, environ);
}

FIVC_EXPORT int execvpe(const char *p, char *const a[], char *const e[])
{
	return fivc_exec_with(p, -1, 1, a, e);
}

FIVC_EXPORT int execvp(const char *p, char *const a[])
{
	return execvpe(p, a, environ);
}

/* ---- epoll ---- */

FIVC_EXPORT int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
	FIVC_ENSURE_INIT();
	return FIVC_GUARDED() ? fivc_real.epoll_ctl(epfd, op, fd, ev)
			      : fivc_do_epoll_ctl(epfd, op, fd, ev);
}

FIVC_EXPORT int epoll_wait(int epfd, struct epoll_event *ev, int max, int t)
{
	FIVC_ENSURE_INIT();
	return fivc_do_epoll_wait(epfd, ev, max, t, NULL);
}

FIVC_EXPORT int epoll_pwait(int epfd, struct epoll_event *ev, int max, int t, const sigset_t *m)
{
	FIVC_ENSURE_INIT();
	return fivc_do_epoll_wait(epfd, ev, max, t, m);
}

FIVC_EXPORT int epoll_pwait2(int epfd, struct epoll_event *ev, int max, const struct timespec *ts,
			     const sigset_t *m)
{
	FIVC_ENSURE_INIT();
	if (ts && (ts->tv_sec < 0 || ts->tv_nsec < 0 || ts->tv_nsec >= 1000000000))
		return (int)fivc_ret(-EINVAL);
	/* millisecond resolution, rounded up, as the wait loop works in ms */
	int t = ts ? (int)(ts->tv_sec * 1000 + (ts->tv_nsec + 999999) / 1000000) : -1;
	return fivc_do_epoll_wait(epfd, ev, max, t, m);
}
