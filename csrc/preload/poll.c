/* fastivc preload — poll, ppoll, select, pselect over accelerated sockets.
 *
 * For an accelerated socket the kernel's view of the TCP fd says nothing
 * about the ring, so readiness comes from the ring (I7).  When nothing is
 * ready we arm the ring's "waiting" flags (SB fence), and let the kernel wait
 * on the TCP fd for POLLIN only: the peer's doorbell byte, or its FIN/RST.
 * Sockets without a channel take the kernel's answer unchanged.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fastivc/util.h"
#include "preload.h"

static int any_managed(const struct pollfd *fds, nfds_t n)
{
	for (nfds_t i = 0; i < n; i++) {
		struct fsock *fs = fivc_fs(fds[i].fd);
		if ((fs && fs->state != FS_PLAIN) || fivc_epoll_is_managed(fds[i].fd))
			return 1;
	}
	return 0;
}

/* Whether revents make fd ready for the caller: any bit for poll; for
 * select only what its sets show (the kernel's POLLIN_SET, POLLOUT_SET,
 * POLLEX_SET): a HUP wakes no write set.  (Regression, a server that
 * selected for writing on a ring that was full, whose client had shut
 * down: select returned 0 at once, not at its timeout, which Python's
 * selectors read as the timeout.) */
static int counts(short events, short revents, int sel)
{
	if (!sel)
		return revents != 0;
	return ((events & POLLIN) && (revents & (POLLIN | POLLHUP | POLLERR))) ||
	       ((events & POLLOUT) && (revents & (POLLOUT | POLLERR))) ||
	       ((events & POLLPRI) && (revents & POLLPRI)) || (revents & POLLNVAL);
}

/* timeout_ns < 0: forever.  Returns the ready count or -errno.  sel: for
 * select (see counts). */
static int poll_managed(struct pollfd *fds, nfds_t n, int64_t timeout_ns, const sigset_t *mask,
			int sel)
{
	fivc_sig_mark();
	struct pollfd stackbuf[32];
	short stackauth[32];
	struct pollfd *k = n <= 32 ? stackbuf : malloc(n * sizeof(*k));
	short *auth = n <= 32 ? stackauth : malloc(n * sizeof(*auth));
	if (!k || !auth) {
		if (k != stackbuf)
			free(k);
		if (auth != stackauth)
			free(auth);
		return -ENOMEM;
	}
	uint64_t start = fivc_now_ns(CLOCK_MONOTONIC), checked = start;
	int ret;
	for (;;) {
		int ready = 0, watch = 0;
		for (nfds_t i = 0; i < n; i++) {
			struct fsock *fs = fivc_fs(fds[i].fd);
			k[i] = fds[i];
			k[i].revents = 0;
			fds[i].revents = 0;
			auth[i] = (short)0xffff;
			if (!fs && fivc_epoll_is_managed(fds[i].fd)) {
				/* an epoll fd with accelerated sockets in it */
				fds[i].revents = fivc_epoll_fd_ready(fds[i].fd, 1) & fds[i].events;
				k[i].events = POLLIN;
				auth[i] = 0;
				ready += fds[i].revents != 0;
				continue;
			}
			if (!fs || fs->state == FS_PLAIN)
				continue;
			watch |= fivc_fs_uses_fabric(fs);
			short kev;
			fds[i].revents = fivc_fs_ready(fs, fds[i].fd, fds[i].events, 1, &kev);
			k[i].events = kev;
			/* on TCP still: the kernel's answer to what was asked,
			 * with what it always reports (a refused connect: HUP,
			 * ERR); a server before the switch asks for POLLIN
			 * whatever the program asked (regression: a POLLOUT
			 * poll got POLLIN for the client's FIN) */
			auth[i] = fs->state == FS_ACCEL
					  ? 0
					  : (short)((kev & fds[i].events) | POLLERR | POLLHUP | POLLNVAL);
			ready += counts(fds[i].events, fds[i].revents, sel);
		}
		int64_t left = -1, sleep;
		if (ready) {
			left = 0;
		} else if (timeout_ns >= 0) {
			uint64_t el = fivc_now_ns(CLOCK_MONOTONIC) - start;
			left = el >= (uint64_t)timeout_ns ? 0 : timeout_ns - (int64_t)el;
		}
		/* No wait rests on a FIN alone (a guest, or a process sharing
		 * the socket after fork, sends none when it dies): with a ring
		 * in the set we sleep in slices and ask the peers' liveness
		 * once per FIVC_LIVENESS_MS (below). */
		sleep = left;
		if (watch && (left < 0 || left > (int64_t)FIVC_LIVENESS_MS * 1000000))
			sleep = (int64_t)FIVC_LIVENESS_MS * 1000000;
		struct timespec ts = {sleep / 1000000000, sleep % 1000000000};
		/* Nothing is disarmed after the wait: the peer clears a flag when
		 * it rings (channel.c), and a flag cleared here could be another
		 * waiter's (an epoll set, another thread) just armed. */
		/* (a sleep after a handler of the program's ran in our walk
		 * ends at once with EINTR, as the kernel's would: sig.c) */
		int r = sleep ? fivc_sig_ppoll(k, n, sleep < 0 ? NULL : &ts, mask)
			      : fivc_real.ppoll(k, n, &ts, mask);
		int e = errno;
		if (r < 0) {
			ret = -e;
			break;
		}
		int count = 0;
		for (nfds_t i = 0; i < n; i++) {
			struct fsock *fs = fivc_fs(fds[i].fd);
			short kr = k[i].revents & auth[i];
			if (!fs && !auth[i]) {
				/* its ring entries, or the kernel's set (the program's
				 * plain fds, or doorbells its epoll_wait will sort out) */
				fds[i].revents = ((fivc_epoll_fd_ready(fds[i].fd, 0) |
						   (k[i].revents & POLLIN)) & fds[i].events) |
						 (k[i].revents & POLLNVAL);
			} else if (fs && fs->state != FS_PLAIN && !auth[i]) {
				/* accelerated: the kernel woke us; the ring decides */
				if (k[i].revents)
					fivc_fs_drain(fs, fds[i].fd);
				short kev;
				fds[i].revents = fivc_fs_ready(fs, fds[i].fd, fds[i].events, 0, &kev);
				if (k[i].revents & POLLNVAL)
					fds[i].revents |= POLLNVAL;
			} else {
				fds[i].revents |= kr;
			}
			count += counts(fds[i].events, fds[i].revents, sel);
		}
		if (count || left == 0) {
			ret = count;
			break;
		}
		uint64_t now = fivc_now_ns(CLOCK_MONOTONIC);
		if (watch && now - checked >= FIVC_LIVENESS_MS * 1000000ull) {
			/* a peer found dead is marked reset: the next look reports it */
			checked = now;
			for (nfds_t i = 0; i < n; i++) {
				struct fsock *fs = fivc_fs(fds[i].fd);
				if (fs && fs->state != FS_PLAIN && fivc_fs_uses_fabric(fs))
					fivc_chan_peer_check(&fs->ch);
			}
		}
	}
	if (k != stackbuf)
		free(k);
	if (auth != stackauth)
		free(auth);
	return ret;
}

int fivc_do_poll(struct pollfd *fds, nfds_t n, int timeout_ms)
{
	if (!any_managed(fds, n))
		return fivc_real.poll(fds, n, timeout_ms);
	return (int)fivc_ret(poll_managed(fds, n, timeout_ms < 0 ? -1 : (int64_t)timeout_ms * 1000000,
					  NULL, 0));
}

int fivc_do_ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask)
{
	if (!any_managed(fds, n))
		return fivc_real.ppoll(fds, n, ts, mask);
	if (ts && (ts->tv_sec < 0 || ts->tv_nsec < 0 || ts->tv_nsec >= 1000000000))
		return (int)fivc_ret(-EINVAL);
	int64_t t = ts ? (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec : -1;
	return (int)fivc_ret(poll_managed(fds, n, t, mask, 0));
}

/* select() on top of poll_managed when a managed fd is in the sets. */
static int select_managed(int nfds, fd_set *r, fd_set *w, fd_set *x, int64_t timeout_ns,
			  const sigset_t *mask, int *handled)
{
	*handled = 0;
	if (nfds < 0 || nfds > FD_SETSIZE)
		return 0;
	int managed = 0, cnt = 0;
	for (int fd = 0; fd < nfds; fd++) {
		int in = (r && FD_ISSET(fd, r)) || (w && FD_ISSET(fd, w)) || (x && FD_ISSET(fd, x));
		if (!in)
			continue;
		cnt++;
		struct fsock *fs = fivc_fs(fd);
		managed |= (fs && fs->state != FS_PLAIN) || fivc_epoll_is_managed(fd);
	}
	if (!managed)
		return 0;
	*handled = 1;
	struct pollfd *p = calloc((size_t)cnt + 1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	int i = 0;
	for (int fd = 0; fd < nfds; fd++) {
		short ev = 0;
		if (r && FD_ISSET(fd, r))
			ev |= POLLIN;
		if (w && FD_ISSET(fd, w))
			ev |= POLLOUT;
		if (x && FD_ISSET(fd, x))
			ev |= POLLPRI;
		if (ev)
			p[i++] = (struct pollfd){.fd = fd, .events = ev};
	}
	int rc = poll_managed(p, (nfds_t)cnt, timeout_ns, mask, 1);
	if (rc < 0) {
		free(p);
		return rc;
	}
	for (i = 0; i < cnt; i++)
		if (p[i].revents & POLLNVAL) {
			free(p);
			return -EBADF; /* as select(2) does for a closed fd */
		}
	int bits = 0;
	for (i = 0; i < cnt; i++) {
		int fd = p[i].fd;
		short ev = p[i].events, re = p[i].revents;
		if (r && (ev & POLLIN)) {
			if (re & (POLLIN | POLLHUP | POLLERR))
				bits++;
			else
				FD_CLR(fd, r);
		}
		if (w && (ev & POLLOUT)) {
			if (re & (POLLOUT | POLLERR))
				bits++;
			else
				FD_CLR(fd, w);
		}
		if (x && (ev & POLLPRI)) {
			if (re & POLLPRI)
				bits++;
			else
				FD_CLR(fd, x);
		}
	}
	free(p);
	return bits;
}

int fivc_do_select(int nfds, fd_set *r, fd_set *w, fd_set *x, struct timeval *tv)
{
	int handled;
	if (tv && (tv->tv_sec < 0 || tv->tv_usec < 0))
		return fivc_real.select(nfds, r, w, x, tv);
	int64_t t = tv ? (int64_t)tv->tv_sec * 1000000000 + (int64_t)tv->tv_usec * 1000 : -1;
	uint64_t start = fivc_now_ns(CLOCK_MONOTONIC);
	int rc = select_managed(nfds, r, w, x, t, NULL, &handled);
	if (!handled)
		return fivc_real.select(nfds, r, w, x, tv);
	if (tv) { /* Linux updates the timeout with the time not slept */
		int64_t left = t - (int64_t)(fivc_now_ns(CLOCK_MONOTONIC) - start);
		if (left < 0 || rc > 0)
			left = left < 0 ? 0 : left;
		tv->tv_sec = left / 1000000000;
		tv->tv_usec = (left % 1000000000) / 1000;
	}
	return (int)fivc_ret(rc);
}

int fivc_do_pselect(int nfds, fd_set *r, fd_set *w, fd_set *x, const struct timespec *ts,
		    const sigset_t *mask)
{
	int handled;
	int64_t t = ts ? (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec : -1;
	int rc = select_managed(nfds, r, w, x, t, mask, &handled);
	if (!handled)
		return fivc_real.pselect(nfds, r, w, x, ts, mask);
	return (int)fivc_ret(rc);
}
