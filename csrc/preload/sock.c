/* fastivc preload — lifetime of accelerated sockets: close, dup, shutdown,
 * and their readiness for poll/select. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fastivc/atomics.h"
#include "preload.h"

/* This process lets go of fs.  When other processes still hold the same
 * side (fork), only our private state goes; the last holder closes. */
void fivc_fs_release(struct fsock *fs)
{
	int last = 1;
	if (fivc_fs_uses_fabric(fs))
		last = fivc_slot_unhold(fs->fab, fs->slot, fs->gen, fs->side,
					fs->untracked ? 0 : fs->fab->self) != 0;
	if (last && fs->state == FS_CLIENT_PENDING) {
		int r = fivc_offer_withdraw(fs->fab, fs->offer_idx, fs->offer_word);
		if (r == -EALREADY) {
			/* Adopted while we closed: switch, so the server reads our TCP
			 * bytes and then sees the ring's EOF. */
			fivc_fs_client_check(fs, 1);
		} else {
			fivc_offer_remove(fs->fab, fs->offer_idx, fs->offer_word);
		}
	}
	fivc_janitor_forget(fs);
	if (last && fs->state != FS_PLAIN)
		fivc_chan_close(&fs->ch);
	pthread_mutex_destroy(&fs->rd_lock);
	pthread_mutex_destroy(&fs->wr_lock);
	free(fs);
}

/* fd stops referring to its socket: closed by us (do_close), or already by
 * the kernel (dup2/dup3 onto it).  The connection ends with its last fd.
 *
 * Order (measured): the TCP socket is closed first, the ring after.  A peer
 * that sees the ring's EOF then finds our FIN already there and closes after
 * it, as with plain TCP; closing the ring first made both sides close at
 * once, leaving TIME_WAIT on both and exhausting the client's ports in the
 * connection-rate benchmark.  fs->fd is cleared first so that no doorbell
 * can go to a descriptor number that is reused meanwhile. */
static int fs_detach(int fd, int do_close)
{
	struct fsock *fs = fivc_fs(fd);
	if (fs)
		fivc_epoll_forget_fd(fd);
	else
		fivc_epoll_forget_set(fd); /* it may have been an epoll fd */
	if (!fs && fivc_fd_kind(fd) == FIVC_KIND_TCP)
		fivc_listen_forget(fd);
	fivc_fd_set(fd, NULL);
	fivc_fd_set_kind(fd, FIVC_KIND_UNKNOWN);
	int r = 0, e = errno;
	if (fs)
		__atomic_store_n(&fs->fd, -1, __ATOMIC_RELAXED); /* the next call sets one */
	if (do_close) {
		r = fivc_real.close(fd);
		e = errno;
	}
	if (fs && __atomic_sub_fetch(&fs->refs, 1, __ATOMIC_ACQ_REL) == 0)
		fivc_fs_release(fs);
	errno = e;
	return r;
}

int fivc_fs_close(int fd) { return fs_detach(fd, 1); }

void fivc_fs_replaced(int fd) { fs_detach(fd, 0); }

/* newfd now refers to oldfd's connection (dup, dup2, dup3, F_DUPFD). */
int fivc_fs_dup(int oldfd, int newfd)
{
	struct fsock *fs = fivc_fs(oldfd);
	if (!fs || newfd < 0 || newfd == oldfd)
		return 0;
	if (newfd >= fivc_nfds) {
		FIVC_INFO("fd %d beyond the fd table: the duplicate stays unmanaged", newfd);
		return 0;
	}
	__atomic_add_fetch(&fs->refs, 1, __ATOMIC_ACQ_REL);
	fivc_fd_set(newfd, fs);
	return 0;
}

int fivc_fs_shutdown(struct fsock *fs, int fd, int how)
{
	if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR)
		return -EINVAL;
	if (fs->state == FS_PLAIN || fs->state == FS_CLIENT_PENDING) {
		if (fivc_real.shutdown(fd, how) < 0)
			return -errno;
		if (fs->state == FS_PLAIN)
			return 0;
	}
	/* On the ring only: the TCP socket must stay able to carry doorbells
	 * both ways; it is shut down by the final close. */
	return fivc_chan_shutdown(&fs->ch, how);
}

/* See preload.h.  *kernel_events: what to ask the kernel for on the TCP fd;
 * bits of the kernel's answer that count are those in *kernel_events too,
 * except for FS_ACCEL where the kernel only wakes us (doorbell, FIN). */
short fivc_fs_ready(struct fsock *fs, int fd, short events, int arm, short *kernel_events)
{
	__atomic_store_n(&fs->fd, fd, __ATOMIC_RELAXED);
	if (fs->state == FS_CLIENT_PENDING)
		fivc_fs_client_check(fs, 0);
	if (fs->state == FS_SERVER_PRE) {
		/* a reader of this socket may hold rd_lock for a blocking read */
		if (pthread_mutex_trylock(&fs->rd_lock) != 0)
			goto checked;
		fivc_fs_server_check(fs);
		if (fs->n_known && fs->tcp_recvd >= fs->switch_n)
			fs->state = FS_ACCEL;
		pthread_mutex_unlock(&fs->rd_lock);
	}
checked:
	switch (fs->state) {
	case FS_CLIENT_PENDING:
		/* TCP decides while pending; arm the ring as well so a switch
		 * made by another thread still wakes this poll (see io.c). */
		if (arm && (events & (POLLIN | POLLRDNORM)))
			fivc_chan_arm(&fs->ch, 1, 0);
		/* fall through */
	case FS_PLAIN:
		*kernel_events = events;
		return 0;
	default:
		break;
	}
	short r = 0;
	int eof = 0, shut = 0;
	int pre = fs->state == FS_SERVER_PRE;
	if (!pre && (events & (POLLIN | POLLRDNORM | POLLRDHUP))) {
		ssize_t n = fivc_chan_readable(&fs->ch, &eof);
		if (n < 0)
			r |= POLLIN | POLLRDNORM | POLLERR | POLLHUP;
		else if (n > 0 || eof)
			r |= events & (POLLIN | POLLRDNORM);
		shut = n >= 0 && (eof || fivc_chan_peer_shut(&fs->ch));
		if (shut)
			r |= POLLRDHUP; /* the FIN is in, even with data before it */
	}
	if (events & (POLLOUT | POLLWRNORM)) {
		ssize_t n = fivc_chan_writable(&fs->ch);
		if (n > 0 || n == -EPIPE)
			r |= events & (POLLOUT | POLLWRNORM);
		else if (n < 0)
			r |= POLLERR;
	}
	if (!pre && !shut)
		shut = fivc_chan_peer_shut(&fs->ch);
	if (shut && fs->ch.wr_shut)
		r |= POLLHUP; /* shut both ways */
	if (fs->reset)
		r |= POLLHUP | POLLERR;
	r &= (short)(events | POLLERR | POLLHUP);
	if (!r && arm && !fs->ch.broken) {
		/* pre: the client's first ring write must wake us too (io.c) */
		if (fivc_chan_arm(&fs->ch, (events & (POLLIN | POLLRDNORM)) != 0,
				  (events & (POLLOUT | POLLWRNORM)) != 0))
			return fivc_fs_ready(fs, fd, events, 0, kernel_events);
	}
	*kernel_events = POLLIN; /* pre: program bytes; accel: doorbell or FIN */
	return r;
}

/* ---- fork and exec ---- */

void fivc_for_each_fsock(void (*fn)(struct fsock *fs, int fd, void *arg), void *arg)
{
	int hi = __atomic_load_n(&fivc_fd_high, __ATOMIC_RELAXED);
	for (int fd = 0; fd <= hi && fd < fivc_nfds; fd++) {
		struct fsock *fs = fivc_fs(fd);
		if (!fs)
			continue;
		int first = 1;
		for (int e = 0; e < fd && first; e++)
			first = fivc_fs(e) != fs;
		if (first)
			fn(fs, fd, arg);
	}
}

static void count_held(struct fsock *fs, int fd, void *arg)
{
	(void)fd;
	*(int *)arg += fivc_fs_uses_fabric(fs);
}

struct fork_child {
	uint32_t member1; /* the child's member id; 0: it shares ours */
	int undo;
};

/* Before fork: the child holds every connection we hold, under its own
 * member id (or counted without an entry: no id, or a full table). */
static void hold_for_child(struct fsock *fs, int fd, void *arg)
{
	struct fork_child *c = arg;
	if (!fivc_fs_uses_fabric(fs))
		return;
	if (c->undo) { /* fork failed */
		fivc_slot_unhold(fs->fab, fs->slot, fs->gen, fs->side,
				 fs->child_untracked ? 0 : c->member1);
		return;
	}
	/* Both processes may go on using it: settle a pending client's switch
	 * now (one process publishes it), and share the ring indices. */
	fivc_fs_client_check(fs, 0);
	__atomic_store_n(&fs->ch.shared, 1, __ATOMIC_RELAXED);
	fs->child_untracked = fivc_slot_hold(fs->fab, fs->slot, fs->gen, fs->side, c->member1) == 1;
	if (fs->child_untracked)
		FIVC_INFO("fork: fd %d: the child holds the connection without an entry of its own",
			  fd);
}

static void fork_settle(struct fsock *fs, int fd, void *arg)
{
	(void)fd;
	if (*(int *)arg)
		fs->untracked |= fs->child_untracked;
	fs->child_untracked = 0;
}

/* fork(): the child holds every connection too.  It is counted before it
 * exists, so a close in either process can never free a ring under the
 * other, and it has its own member id, so that if it exits without closing
 * (a forked server's worker often does) its hold is seen dead and reclaimed
 * while the parent lives on. */
pid_t fivc_do_fork(void)
{
	int held = 0;
	fivc_for_each_fsock(count_held, &held);
	int cfd;
	struct fork_child c = {0};
	fivc_fabric_fork_prepare(held > 0, &cfd, &c.member1);
	if (held)
		fivc_for_each_fsock(hold_for_child, &c);
	fivc_janitor_fork_prepare();
	pid_t pid = fivc_real.fork();
	int e = errno;
	if (pid == 0) {
		int one = 1;
		fivc_janitor_fork_child();
		fivc_pid = getpid();
		fivc_for_each_fsock(fork_settle, &one);
		fivc_fabric_fork_child(held > 0, cfd, c.member1);
		return 0;
	}
	fivc_janitor_fork_parent();
	if (pid < 0 && held) {
		c.undo = 1;
		fivc_for_each_fsock(hold_for_child, &c);
	}
	int zero = 0;
	fivc_for_each_fsock(fork_settle, &zero);
	fivc_fabric_fork_parent(cfd, c.member1, pid < 0);
	errno = e;
	return pid;
}

static void drop_cloexec(struct fsock *fs, int fd, void *arg)
{
	(void)arg;
	/* all fds of fs must be close-on-exec for the connection to go */
	int hi = __atomic_load_n(&fivc_fd_high, __ATOMIC_RELAXED);
	for (int e = fd; e <= hi && e < fivc_nfds; e++)
		if (fivc_fs(e) == fs) {
			int fl = fivc_real.fcntl(e, F_GETFD);
			if (fl < 0 || !(fl & FD_CLOEXEC))
				return;
		}
	for (int e = fd; e <= hi && e < fivc_nfds; e++)
		if (fivc_fs(e) == fs)
			fivc_fd_set(e, NULL);
	fivc_fs_release(fs);
}

/* exec(): the kernel closes close-on-exec fds without telling us; let go of
 * those connections first.  (The ones whose fd survives are handed to the
 * new program: exec.c.) */
void fivc_before_exec(void)
{
	fivc_for_each_fsock(drop_cloexec, NULL);
}
