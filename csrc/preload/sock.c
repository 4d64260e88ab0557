/* fastivc preload — lifetime of accelerated sockets: close, dup, shutdown,
 * and their readiness for poll/select. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fastivc/atomics.h"
#include "preload.h"

static void drain_doorbells(struct fsock *fs, int fd);
static int down_shutdown(struct fsock *fs, int fd, int how);

/* This process lets go of fs.  When other processes still hold the same
 * side (fork), only our private state goes; the last holder closes. */
void fivc_fs_release(struct fsock *fs)
{
	int last = 1;
	if (fs->kept_fd >= 0) { /* closed while a call was inside: now TCP's close */
		__atomic_store_n(&fs->fd, -1, __ATOMIC_RELAXED);
		drain_doorbells(fs, fs->kept_fd);
		fivc_real.close(fs->kept_fd);
		fs->kept_fd = -1;
	}
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
	/* TCP said the peer closed: have chan_close reap its side if it
	 * died holding it (one liveness question, on such closes only) */
	if (last && fs->tcp_eof && !__atomic_load_n(&fs->ch.peer_gone, __ATOMIC_RELAXED))
		__atomic_store_n(&fs->ch.peer_gone, 1, __ATOMIC_RELAXED);
	if (last && fs->state != FS_PLAIN)
		fivc_chan_close(&fs->ch);
	pthread_mutex_destroy(&fs->rd_lock);
	pthread_mutex_destroy(&fs->wr_lock);
	pthread_mutex_destroy(&fs->ctl_lock);
	free(fs);
}

/* Before the last close of an accelerated connection's TCP socket: the
 * doorbell bytes the peer sent and nobody read go, or the kernel, finding
 * unread data, would answer the close with a reset instead of a FIN, and
 * the peer would get ECONNRESET where plain TCP gives EOF (found by
 * tests/test_vectored.py: a client that shut down writing and read on).
 * Not when ring bytes are unread: then the kernel's reset is TCP's answer
 * too.  Not on a socket other processes hold (fork): its doorbells may be
 * theirs. */
static void drain_doorbells(struct fsock *fs, int fd)
{
	if (fs->state != FS_ACCEL || !fs->ch.f || fs->ch.broken || fs->down_quiet ||
	    __atomic_load_n(&fs->ch.shared, __ATOMIC_RELAXED))
		return; /* (leaving the ring: the bytes past the peer's count are data) */
	int eof;
	if (fivc_chan_readable(&fs->ch, &eof) != 0)
		return;
	char b[256];
	while (fivc_real.recv(fd, b, sizeof(b), MSG_DONTWAIT) > 0)
		;
}

static int unread(struct fsock *fs)
{
	int eof;
	return fivc_chan_readable(&fs->ch, &eof) > 0;
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
	fivc_epoll_forget_pre(fd);
	if (!fs && fivc_fd_kind(fd) == FIVC_KIND_TCP)
		fivc_listen_forget(fd);
	fivc_fd_set(fd, NULL);
	fivc_fd_set_kind(fd, FIVC_KIND_UNKNOWN);
	int r = 0, e = errno;
	if (fs)
		__atomic_store_n(&fs->fd, -1, __ATOMIC_RELAXED); /* the next call sets one */
	if (do_close && fs && __atomic_load_n(&fs->refs, __ATOMIC_RELAXED) == 1 &&
	    __atomic_load_n(&fs->hold, __ATOMIC_ACQUIRE) < 2)
		fivc_fs_follow_at_close(fs, fd); /* (the peer left the ring: down.c) */
	if (do_close && fs && __atomic_load_n(&fs->refs, __ATOMIC_RELAXED) == 1) {
		if (fs->state == FS_ACCEL && fs->ch.f)
			fivc_chan_unshare_now(&fs->ch); /* (children that exited: this is the last) */
		if (__atomic_load_n(&fs->hold, __ATOMIC_ACQUIRE) >= 2 && fs->state == FS_ACCEL) {
			/* Another thread is inside a call (blocked in recv,
			 * say): the kernel keeps the file for that call, which
			 * goes on and gets the bytes that come, and sends no
			 * FIN before it is done.  So do we: the socket stays,
			 * as a duplicate, until the last call is out; the fd
			 * number is the program's again at once (regression,
			 * issue 11: the recv slept on, and fs was freed under
			 * it). */
			int keep = fivc_real.fcntl(fd, F_DUPFD_CLOEXEC, 0);
			if (keep >= 0) {
				fs->kept_fd = keep;
				__atomic_store_n(&fs->fd, keep, __ATOMIC_RELAXED);
			}
		} else if (fs->state == FS_ACCEL && fs->ch.f && !fs->ch.broken && !fs->down &&
			   !__atomic_load_n(&fs->ch.shared, __ATOMIC_RELAXED) &&
			   (fs->ch.linger0 || unread(fs))) {
			/* SO_LINGER 0, or ring bytes unread, our last copy: the
			 * ring's reset goes before TCP's close, which the peer
			 * would otherwise take for the close of a peer that read
			 * everything (regression: under load a recvmmsg waiting
			 * for its second entry got the end of the stream, where
			 * the kernel gives the reset) */
			fivc_chan_abort(&fs->ch);
		} else {
			drain_doorbells(fs, fd);
		}
	}
	if (do_close) {
		r = fivc_real.close(fd);
		e = errno;
	}
	if (fs && __atomic_sub_fetch(&fs->refs, 1, __ATOMIC_ACQ_REL) == 0 &&
	    __atomic_or_fetch(&fs->hold, 1, __ATOMIC_ACQ_REL) == 1)
		fivc_fs_release(fs); /* (else the last call out: fivc_fs_unhold) */
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
		/* Calls on newfd go past us to the kernel, whose stream has
		 * only doorbells while the connection is on the ring: it goes
		 * back to TCP first (issue 12), as for an exec. */
		if (fivc_fs_uses_fabric(fs)) {
			FIVC_INFO("fd %d beyond the fd table (%d fds): fd %d's connection goes "
				  "back to TCP",
				  newfd, fivc_nfds, oldfd);
			fivc_fs_down_now_or_due(fs, oldfd, FIVC_DOWN_UNTRACKED);
		}
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
	pthread_mutex_lock(&fs->ctl_lock);
	int r = 0;
	if (fs->state == FS_PLAIN) {
		if (fivc_real.shutdown(fd, how) < 0)
			r = -errno;
	} else if (fs->state == FS_CLIENT_PENDING) {
		/* TCP's FIN goes now, and reaches a server that switched after
		 * our N bytes: the ring is shut first, so that its drain takes
		 * the FIN for this shutdown, not for our death (connect.c) */
		r = fivc_chan_shutdown(&fs->ch, how);
		if (r == 0 && fivc_real.shutdown(fd, how) < 0)
			r = -errno;
	} else if (fs->down) {
		pthread_mutex_unlock(&fs->ctl_lock);
		return down_shutdown(fs, fd, how); /* (its finish takes ctl_lock) */
	} else {
		/* On the ring only: the TCP socket must stay able to carry
		 * doorbells both ways; it is shut down by the final close.
		 * Once both ways were shut (our FIN and the peer's) TCP's
		 * socket is CLOSEd: shutdown() still takes effect and says
		 * ENOTCONN (inet_shutdown). */
		int closed = (fs->ch.wr_shut && fivc_chan_peer_shut(&fs->ch)) ||
			     fivc_chan_reset_state(&fs->ch, NULL, 0);
		r = fivc_chan_shutdown(&fs->ch, how);
		if (r == 0 && closed)
			r = -ENOTCONN;
	}
	pthread_mutex_unlock(&fs->ctl_lock);
	return r;
}

/* Leaving the ring (down.c): a direction already on TCP is TCP's to shut;
 * our FIN waits for the backlog (down.c finish sends it). */
static int down_shutdown(struct fsock *fs, int fd, int how)
{
	pthread_mutex_lock(&fs->wr_lock);
	int r = 0;
	if (how != SHUT_RD) {
		if (fivc_chan_backlog_left(&fs->ch))
			fs->ch.wr_shut = 1;
		else if (fivc_real.shutdown(fd, SHUT_WR) < 0)
			r = -errno;
	}
	if (how != SHUT_WR && r == 0) {
		if (!(fs->down & FIVC_DOWN_R))
			fs->ch.rd_shut = 1;
		else if (fivc_real.shutdown(fd, SHUT_RD) < 0)
			r = -errno;
	}
	pthread_mutex_unlock(&fs->wr_lock);
	return r;
}

/* Readiness while leaving the ring (down.c): a direction on TCP is the
 * kernel's; the ring's otherwise (a backlog not all sent: not writable). */
static short down_ready(struct fsock *fs, int fd, short events, short *kernel_events)
{
	short r = 0, ask = 0;
	if (fs->down & FIVC_DOWN_R) {
		ask |= events & (POLLIN | POLLRDNORM | POLLRDHUP | POLLPRI);
	} else if (events & (POLLIN | POLLRDNORM)) {
		int eof;
		ssize_t n = fivc_chan_readable(&fs->ch, &eof);
		if (n > 0 && (uint64_t)n >= fivc_chan_lowat(&fs->ch))
			r |= events & (POLLIN | POLLRDNORM);
		else if (n < 0 && n != -FIVC_EDOWN)
			r |= POLLIN | POLLRDNORM | POLLERR | POLLHUP;
	}
	uint64_t left = fivc_chan_backlog_left(&fs->ch);
	if (!left)
		ask |= events & (POLLOUT | POLLWRNORM);
	if (ask) {
		struct pollfd p = {.fd = fd, .events = ask};
		int saved = errno;
		if (fivc_real.poll(&p, 1, 0) > 0)
			r |= p.revents;
		errno = saved;
	}
	*kernel_events = (short)(POLLIN | (left ? POLLOUT : 0) | ask);
	return (short)(r & (events | POLLERR | POLLHUP));
}

static short ready_locked(struct fsock *fs, int fd, short events, int arm,
			  short *kernel_events, int *again);

/* See preload.h. */
void fivc_fs_server_settle(struct fsock *fs, int fd)
{
	fivc_fs_server_check(fs);
	if (fs->n_known && fivc_fs_pre_taken(fs, fd) >= fs->switch_n)
		fs->state = FS_ACCEL;
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
		fivc_fs_server_settle(fs, fd);
		pthread_mutex_unlock(&fs->rd_lock);
	}
checked:
	/* The channel stays while we look at it: another thread's downgrade
	 * lets it go in finish(), under ctl_lock (as shutdown).  One lock and
	 * unlock when there is nothing to follow (every look of an epoll walk). */
	pthread_mutex_lock(&fs->ctl_lock);
	if (fs->state == FS_ACCEL && fs->ch.f && (fs->down || fivc_chan_down_peer(&fs->ch, NULL))) {
		pthread_mutex_unlock(&fs->ctl_lock); /* (follow takes rd/wr_lock, then ctl_lock) */
		fivc_fs_follow(fs, fd, 0, 1); /* (trylock: a call of ours may be inside) */
		pthread_mutex_lock(&fs->ctl_lock);
	}
	int again = 0;
	short r = ready_locked(fs, fd, events, arm, kernel_events, &again);
	pthread_mutex_unlock(&fs->ctl_lock);
	if (again)
		return fivc_fs_ready(fs, fd, events, 0, kernel_events);
	return r;
}

static short ready_locked(struct fsock *fs, int fd, short events, int arm,
			  short *kernel_events, int *again)
{
	if (fs->state == FS_ACCEL && fs->down)
		return down_ready(fs, fd, events, kernel_events);
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
		else if ((n > 0 && (uint64_t)n >= fivc_chan_lowat(&fs->ch)) || eof)
			r |= events & (POLLIN | POLLRDNORM);
		shut = n >= 0 && (eof || fivc_chan_peer_shut(&fs->ch));
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
	/* tcp_poll: the receive side is shut by the peer's FIN or by our own
	 * SHUT_RD (readable, RDHUP, even with data before it); both sides
	 * shut is HUP */
	if (!pre && (shut || fs->ch.rd_shut)) {
		r |= POLLIN | POLLRDNORM | POLLRDHUP;
		if (fs->ch.wr_shut)
			r |= POLLHUP;
	}
	if (!pre && (events & POLLPRI) && fivc_chan_urgent(&fs->ch))
		r |= POLLPRI; /* an urgent byte to read (MSG_OOB) */
	int err;
	if (!pre && fivc_chan_reset_state(&fs->ch, &err, 0)) {
		/* a reset's CLOSE: shut both ways (tcp_poll), ERR until reported */
		r |= POLLIN | POLLRDNORM | POLLRDHUP | POLLOUT | POLLWRNORM | POLLHUP;
		if (err)
			r |= POLLERR;
	}
	r &= (short)(events | POLLERR | POLLHUP);
	if (!r && arm && !fs->ch.broken) {
		/* pre: the client's first ring write must wake us too (io.c) */
		if (fivc_chan_arm(&fs->ch, (events & (POLLIN | POLLRDNORM | POLLPRI)) != 0,
				  (events & (POLLOUT | POLLWRNORM)) != 0)) {
			*again = 1;
			return 0;
		}
	}
	*kernel_events = POLLIN; /* pre: program bytes; accel: doorbell or FIN */
	return r;
}

/* ---- fork and exec ---- */

static int cmp_pair(const void *a, const void *b)
{
	const struct fivc_walk_ent *x = a, *y = b;
	if (x->fs != y->fs)
		return (uintptr_t)x->fs < (uintptr_t)y->fs ? -1 : 1;
	return (x->first > y->first) - (x->first < y->first);
}

/* Nothing is written to the fsocks: after a fork each page either process
 * writes is a copy-on-write fault (measured: marking each fsock in the walk
 * cost ~0.35 us per connection at the next fork).  An fsock with one
 * reference has one fd; the few with several (dup) are grouped by sorting
 * them.  (Under fdlist_lock refs is at least the number of its listed fds:
 * a dup counts before it lists, a close unlists before it uncounts.) */
int fivc_walk_take(struct fivc_walk *w)
{
	memset(w, 0, sizeof(*w));
	int n = fivc_fdlist_count();
	if (!n)
		return 0;
	int *raw = malloc((size_t)n * sizeof(*raw));
	w->fds = malloc((size_t)n * sizeof(*w->fds));
	w->ent = malloc((size_t)n * sizeof(*w->ent));
	if (!raw || !w->fds || !w->ent) {
		free(raw);
		fivc_walk_free(w);
		return -ENOMEM;
	}
	n = fivc_fdlist_copy(raw, n);
	/* singles first, straight into place; the others, as (fs, fd) pairs,
	 * at the end of ent, then sorted and grouped behind the singles */
	int nmulti = 0;
	for (int i = 0; i < n; i++) {
		struct fsock *fs = fivc_fs(raw[i]);
		if (__atomic_load_n(&fs->refs, __ATOMIC_RELAXED) <= 1) {
			w->fds[w->n] = raw[i];
			w->ent[w->n] = (struct fivc_walk_ent){fs, w->n, 1};
			w->n++;
		} else {
			nmulti++;
			w->ent[n - nmulti] = (struct fivc_walk_ent){fs, raw[i], 0};
		}
	}
	free(raw);
	if (!nmulti)
		return 0;
	struct fivc_walk_ent *m = w->ent + n - nmulti;
	qsort(m, (size_t)nmulti, sizeof(*m), cmp_pair);
	/* m[] lies beyond every slot the groups fill: the groups take fewer
	 * entries than there are pairs, and each pair is read before its
	 * slot could be written */
	int at = w->n;
	for (int i = 0; i < nmulti;) {
		struct fsock *fs = m[i].fs;
		int start = at;
		for (; i < nmulti && m[i].fs == fs; i++)
			w->fds[at++] = m[i].first;
		w->ent[w->n++] = (struct fivc_walk_ent){fs, start, at - start};
	}
	return 0;
}

void fivc_walk_free(struct fivc_walk *w)
{
	free(w->ent);
	free(w->fds);
	w->ent = NULL;
	w->fds = NULL;
	w->n = 0;
}

void fivc_for_each_fsock(void (*fn)(struct fsock *fs, const int *fds, int nfds, void *arg),
			 void *arg)
{
	struct fivc_walk w;
	fivc_fdlist_lock();
	int r = fivc_walk_take(&w);
	/* held: a close by another thread meanwhile frees none of them */
	for (int k = 0; r == 0 && k < w.n; k++)
		fivc_fs_hold(w.ent[k].fs);
	fivc_fdlist_unlock();
	if (r < 0) {
		FIVC_INFO("out of memory for a walk over the connections");
		return;
	}
	for (int k = 0; k < w.n; k++)
		fn(w.ent[k].fs, w.fds + w.ent[k].first, w.ent[k].nfds, arg);
	for (int k = 0; k < w.n; k++)
		fivc_fs_unhold(w.ent[k].fs);
	fivc_walk_free(&w);
}

struct fork_child {
	uint32_t member1; /* the child's member id; 0: it shares ours */
	int undo;
	struct fivc_alive_memo memo;
};

/* Before a fork before the switch: from now on the pre-switch counts are
 * kept where every holder sees them (fs->pre_shared; io.c), set before the
 * fork so the child inherits it.  A client's goes to the slot (which its
 * N is read from), under wr_lock so no thread of ours is sending.  When one
 * is (a blocking TCP write before the switch, TCP's buffers full), the
 * count stays private, as before (README, "Not there yet"). */
static void pre_share(struct fsock *fs, int fd)
{
	if (fs->state == FS_SERVER_PRE) {
		fs->pre_shared = 1;
		return;
	}
	if (pthread_mutex_trylock(&fs->wr_lock) != 0) {
		FIVC_INFO("fork: fd %d: a write before the switch is under way: the "
			  "counts stay this process's", fd);
		return;
	}
	if (fs->state == FS_CLIENT_PENDING) {
		fivc_store_relaxed(&fivc_slot_at(fs->fab, fs->slot)->switch_bytes, fs->tcp_sent);
		fs->pre_shared = 1;
	}
	pthread_mutex_unlock(&fs->wr_lock);
}

/* Before fork: the child holds every connection we hold, under its own
 * member id (or counted without an entry: no id, or a full table). */
static void hold_for_child(struct fsock *fs, int fd, struct fork_child *c)
{
	if (!fivc_fs_uses_fabric(fs))
		return;
	if (c->undo) { /* fork failed */
		fivc_slot_unhold(fs->fab, fs->slot, fs->gen, fs->side,
				 fs->child_untracked ? 0 : c->member1);
		return;
	}
	/* Both processes may go on using it: settle a pending client's switch
	 * now (one process publishes it), and share the ring indices.  The
	 * child's entry goes in before the side is marked shared: a thread
	 * that is taking the side back to the lock-free path meanwhile
	 * re-checks the holders after it clears the mark (channel.c). */
	fivc_fs_client_check(fs, 0);
	if (fs->state != FS_ACCEL && !fs->pre_shared)
		pre_share(fs, fd);
	if (fivc_slot_hold(fs->fab, fs->slot, fs->gen, fs->side, c->member1, &c->memo) == 1)
		fs->child_untracked = 1;
	/* (a look first: a write to a page of the last fork's is a fault) */
	if (fivc_load_relaxed(&fs->ch.shared) != (FIVC_SHARED_RD | FIVC_SHARED_WR))
		fivc_chan_share(&fs->ch);
	if (fs->child_untracked)
		FIVC_INFO("fork: fd %d: the child holds the connection without an entry of its own",
			  fd);
}

/* After the fork; it writes only to the (rare) fsocks whose child hold is
 * untracked: each page either process writes after fork is a copy-on-write
 * fault (measured: writing every fsock here cost the parent ~0.4 us per
 * connection). */
static void fork_settle(struct fsock *fs, int child)
{
	if (child && __atomic_load_n(&fs->hold, __ATOMIC_RELAXED) >= 2) {
		/* a thread of the parent was inside a call: none is in the
		 * child, whose copies of the locks it held are held by nobody */
		fs->hold &= 1;
		fs->ch.sleepers[0] = fs->ch.sleepers[1] = 0;
		pthread_mutex_init(&fs->rd_lock, NULL);
		pthread_mutex_init(&fs->wr_lock, NULL);
		pthread_mutex_init(&fs->ctl_lock, NULL); /* (shutdown holds fs too) */
	}
	if (!fs->child_untracked)
		return;
	if (child)
		fs->untracked = 1;
	fs->child_untracked = 0;
}

static uint64_t forks; /* fastivc_fork_stats */

/* fork(): the child holds every connection too.  It is counted before it
 * exists, so a close in either process can never free a ring under the
 * other, and it has its own member id, so that if it exits without closing
 * (a forked server's worker often does) its hold is seen dead and reclaimed
 * while the parent lives on.
 *
 * Cost (issue 10): one walk over the fd index, one holder entry per
 * connection that uses the fabric; nothing per fd of the process, and
 * nothing at all for a process without connections.  The index stays
 * locked from the walk through the fork: no connection can appear or go
 * between the entries made for the child and the child's copy of the
 * table. */
pid_t fivc_do_fork(void)
{
	struct fivc_walk w;
	fivc_fdlist_lock();
	if (fivc_walk_take(&w) < 0) {
		fivc_fdlist_unlock();
		errno = ENOMEM;
		return -1;
	}
	int held = 0;
	for (int k = 0; k < w.n; k++)
		held += fivc_fs_uses_fabric(w.ent[k].fs);
	int cfd;
	struct fork_child c = {0};
	fivc_fabric_fork_prepare(held > 0, &cfd, &c.member1);
	for (int k = 0; held && k < w.n; k++)
		hold_for_child(w.ent[k].fs, w.fds[w.ent[k].first], &c);
	fivc_janitor_fork_prepare();
	fivc_down_fork_prepare();
	pid_t pid = fivc_real.fork();
	int e = errno;
	if (pid == 0) {
		fivc_fdlist_fork_child();
		fivc_janitor_fork_child();
		fivc_down_fork_child();
		fivc_pid = getpid();
		for (int k = 0; k < w.n; k++)
			fork_settle(w.ent[k].fs, 1);
		fivc_fabric_fork_child(held > 0, cfd, c.member1);
		fivc_walk_free(&w);
		forks = 0;
		return 0;
	}
	fivc_janitor_fork_parent();
	fivc_down_fork_parent();
	if (pid < 0 && held) {
		c.undo = 1;
		for (int k = 0; k < w.n; k++)
			hold_for_child(w.ent[k].fs, w.fds[w.ent[k].first], &c);
	}
	for (int k = 0; k < w.n; k++)
		fork_settle(w.ent[k].fs, 0);
	fivc_fdlist_unlock();
	fivc_fabric_fork_parent(cfd, c.member1, pid < 0);
	fivc_walk_free(&w);
	if (pid > 0) {
		__atomic_add_fetch(&forks, 1, __ATOMIC_RELAXED);
		fivc_listen_forked();
	}
	errno = e;
	return pid;
}

static void drop_cloexec(struct fsock *fs, const int *fds, int nfds, void *arg)
{
	(void)arg;
	/* all fds of fs must be close-on-exec for the connection to go */
	for (int i = 0; i < nfds; i++) {
		int fl = fivc_real.fcntl(fds[i], F_GETFD);
		if (fl < 0 || !(fl & FD_CLOEXEC))
			return;
	}
	for (int i = 0; i < nfds; i++)
		fivc_fd_set(fds[i], NULL);
	/* (the walk holds fs: its last unhold releases it) */
	__atomic_store_n(&fs->refs, 0, __ATOMIC_RELEASE);
	if (__atomic_or_fetch(&fs->hold, 1, __ATOMIC_ACQ_REL) == 1)
		fivc_fs_release(fs);
}

/* exec(): the kernel closes close-on-exec fds without telling us; let go of
 * those connections first.  (The ones whose fd survives are handed to the
 * new program: exec.c.) */
void fivc_before_exec(void)
{
	fivc_for_each_fsock(drop_cloexec, NULL);
}

/* ---- counters ---- */

static void count_fs(struct fsock *fs, const int *fds, int nfds, void *arg)
{
	(void)fds;
	(void)nfds;
	uint64_t *out = arg;
	if (!fivc_fs_uses_fabric(fs))
		return;
	out[0]++;
	if (__atomic_load_n(&fs->ch.shared, __ATOMIC_RELAXED))
		out[1]++;
}

/* For tests and benchmarks: out[0] connections of this process on the
 * fabric, out[1] of them with a side still shared with another process
 * (fork: each read or write takes the slot's lock), out[2] times a
 * direction went back to the lock-free path, out[3] forks by this process. */
FIVC_EXPORT void fastivc_fork_stats(uint64_t out[4])
{
	FIVC_ENSURE_INIT();
	out[0] = out[1] = 0;
	fivc_for_each_fsock(count_fs, out);
	out[2] = fivc_chan_unshared_count();
	out[3] = __atomic_load_n(&forks, __ATOMIC_RELAXED);
}
