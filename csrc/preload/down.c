/* fastivc preload — the way back to TCP: a connection leaves its rings
 * mid-stream, byte-exact (issue 12; README "Downgrade").
 *
 * After the switch the TCP stream of each direction carries only doorbell
 * bytes.  The leaving side (the initiator: a program about to exec one
 * that will not load the library) and its peer (the follower) each stop
 * ringing, count what their TCP socket has sent so far (the kernel's
 * count: bytes acked plus SIOCOUTQ, so pre-switch bytes and doorbells of
 * every holder) and publish it in the ring they produce (down_at).  The
 * reader of a direction takes the ring's bytes first, then drops TCP bytes
 * up to the writer's count (all doorbells) and reads TCP from there: the
 * first TCP byte it hands out is the first the writer sent after leaving.
 *
 * The initiator cannot read its ring any more (its program is gone), so it
 * leaves it at its head (FIVC_RD_DOWN): the follower sends what is past
 * the head over TCP (its backlog), before anything it writes later.  The
 * backlog goes as TCP takes it: by the follower's writes, reads and polls,
 * and by the pusher thread below while the program does none of those.
 *
 * Order of the initiator (no thread of it inside a call on the socket):
 *   1. RD_DOWN on the ring it reads (head final), LEFT on the ring it
 *      writes (after its last tail), quiet (no doorbell any more);
 *   2. one doorbell byte (the follower wakes and sees 1), then its count,
 *      published (AT);
 *   3. waits for the follower's count (bounded: FOLLOW_WAIT_MS), drops its
 *      TCP bytes up to it, lets go of the slot: plain TCP.
 * The follower, at its next call on the socket (read, write, poll, epoll)
 * once it sees the initiator left: quiet, LEFT, a doorbell byte, its
 * count (AT); its backlog starts at the initiator's head; then, once its
 * program read the ring dry, it drops TCP bytes up to the initiator's
 * count.  When that is done and the backlog is sent it lets go of the
 * slot: plain TCP.
 *
 * Quiet: no doorbell may follow the count, and no drain may read past the
 * count (the bytes after it are program data).  Doorbell sends and drains
 * (connect.c) count themselves in db_busy and look at down_quiet; the
 * leaving side sets down_quiet and waits until db_busy is 0 (Dekker, both
 * sequentially consistent) before its count.
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "fastivc/atomics.h"
#include "fastivc/util.h"
#include "preload.h"

#define FOLLOW_WAIT_MS 5000 /* how long an initiator waits for its peer */
#define POKE_AFTER_MS 1u    /* ... before it asks the peer's watcher to answer */
#define PUSH_CHUNK 16384
#define ALONE_WAIT_MS 2000 /* how long an exec waits for the fork parent's close */

static uint64_t now_ms(void) { return fivc_now_ns(CLOCK_MONOTONIC) / 1000000u; }

static void nap_us(int fd, short events, long us)
{
	struct pollfd p = {.fd = fd, .events = events};
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
	int saved = errno;
	fivc_real.ppoll(&p, 1, &ts, NULL);
	errno = saved;
}

static void nap_ms(int fd, short events, int ms) { nap_us(fd, events, (long)ms * 1000); }

/* What our TCP socket sent so far (program bytes before the switch and
 * every doorbell): bytes acked plus those queued (SIOCOUTQ), read again
 * until no ack came in between.  The connecting side's count of acked
 * bytes has its SYN in it (tcp_ack's snd_una update for the SYN-ACK), the
 * accepting side's not (measured, Linux 6.1).  0 or -errno. */
static int tcp_sent(int fd, int connected, uint64_t *out)
{
	for (int i = 0; i < 1000; i++) {
		struct tcp_info a, b;
		socklen_t la = sizeof(a), lb = sizeof(b);
		int q;
		memset(&a, 0, sizeof(a));
		memset(&b, 0, sizeof(b));
		if (fivc_real.getsockopt(fd, IPPROTO_TCP, TCP_INFO, &a, &la) < 0)
			return -errno;
		if (la < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(a.tcpi_bytes_acked))
			return -EOPNOTSUPP;
		if (fivc_real.ioctl(fd, TIOCOUTQ, &q) < 0)
			return -errno;
		if (fivc_real.getsockopt(fd, IPPROTO_TCP, TCP_INFO, &b, &lb) < 0)
			return -errno;
		if (a.tcpi_bytes_acked == b.tcpi_bytes_acked) {
			uint64_t syn = connected && a.tcpi_bytes_acked ? 1 : 0;
			*out = a.tcpi_bytes_acked - syn + (uint64_t)q;
			return 0;
		}
	}
	return -EAGAIN;
}

/* No doorbell send or drain of ours is under way, nor starts (see top). */
static void go_quiet(struct fsock *fs)
{
	__atomic_store_n(&fs->down_quiet, 1, __ATOMIC_SEQ_CST);
	while (__atomic_load_n(&fs->db_busy, __ATOMIC_SEQ_CST))
		sched_yield();
}

/* One byte the peer wakes for, counted in what we then publish. */
static void last_doorbell(int fd)
{
	for (uint64_t t0 = now_ms(); now_ms() - t0 < 1000;) {
		ssize_t r = fivc_real.send(fd, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (r == 1 || (r < 0 && errno != EAGAIN && errno != EINTR))
			return;
		nap_ms(fd, POLLOUT, 10); /* (a buffer full of doorbells the peer drains) */
	}
}

/* Stop writing our ring: LEFT, the doorbell, our count.  Under both locks. */
static int leave_tx(struct fsock *fs, int fd)
{
	go_quiet(fs);
	fivc_chan_down_leave_tx(&fs->ch);
	last_doorbell(fd);
	uint64_t sent;
	int r = tcp_sent(fd, fs->side == FIVC_SIDE_CLIENT, &sent);
	if (r < 0)
		return r;
	fivc_chan_down_publish(&fs->ch, sent);
	FIVC_DEBUG("fd %d: left the ring, %llu TCP bytes sent", fd, (unsigned long long)sent);
	return 0;
}

/* Drop the peer's TCP bytes up to its count `at` (all doorbells).  wait_ms
 * 0: only what is there.  1 done, 0 not yet, <0 error; EOF or a reset
 * before it: done (the peer went; what it wrote later never came). */
static int drop_to(int fd, uint64_t at, int wait_ms)
{
	char buf[512];
	uint64_t t0 = now_ms();
	for (;;) {
		uint64_t taken;
		int r = fivc_tcp_taken(fd, &taken);
		if (r < 0)
			return r;
		if (taken >= at) {
			FIVC_DEBUG("fd %d: TCP taken %llu, the peer's count %llu", fd,
				   (unsigned long long)taken, (unsigned long long)at);
			return taken == at ? 1 : -EPROTO; /* past it: a broken count */
		}
		uint64_t want = at - taken;
		ssize_t n = fivc_real.recv(fd, buf, want < sizeof(buf) ? (size_t)want : sizeof(buf),
					   MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			FIVC_DEBUG("fd %d: TCP %s at %llu, before the peer's count %llu", fd,
				   n ? "error" : "EOF", (unsigned long long)taken,
				   (unsigned long long)at);
			return 1;
		}
		if (n > 0)
			continue;
		if (!wait_ms || now_ms() - t0 >= (uint64_t)wait_ms)
			return 0;
		nap_ms(fd, POLLIN, 10);
	}
}

/* The peer's TCP count (AT), waiting up to wait_ms for it: 1 with *at, 0
 * not yet, 2 the peer went without one (*at: all it sent).  A peer gone
 * before it published (dead, or closed its socket on the ring): all it
 * sent were doorbells, up to its end.  A peer that published, finished and
 * let its slot go looks gone too, so its ring is read again after the
 * check: it published
 * before it let go (release), which the check saw (acquire).  (Regression:
 * under load a follower read no count, was descheduled while the
 * initiator finished, judged it dead and dropped the new program's bytes
 * as doorbells.) */
static int peer_count(struct fsock *fs, int fd, uint64_t *at, int wait_ms, int poke)
{
	long us = 10; /* a follower that is awake answers in tens of us: look again soon */
	for (uint64_t t0 = now_ms();;) {
		if (poke && now_ms() - t0 >= POKE_AFTER_MS) {
			/* a follower that makes no call (computing, asleep in
			 * something else): its watcher answers (down_req) */
			poke = 0;
			uint32_t n = fivc_down_poke_follow(fs->fab, fs->slot, 1 - fs->side);
			FIVC_DEBUG("fd %d: no count from the peer after %u ms: asked %u watcher(s)", fd,
				   POKE_AFTER_MS, n);
		}
		if (fivc_chan_down_peer(&fs->ch, at) & FIVC_PEER_AT)
			return 1;
		/* (a switched peer whose side is let go closed the socket, or
		 * finished: it never publishes now) */
		if (fivc_chan_peer_check(&fs->ch) ||
		    (fs->state == FS_ACCEL && fivc_chan_peer_released(&fs->ch))) {
			if (!(fivc_chan_down_peer(&fs->ch, at) & FIVC_PEER_AT)) {
				FIVC_DEBUG("fd %d: the peer went before its count", fd);
				*at = UINT64_MAX >> 2;
				return 2;
			}
			return 1;
		}
		if (!wait_ms || now_ms() - t0 >= (uint64_t)wait_ms)
			return 0;
		nap_us(fd, 0, us); /* (not POLLIN: the doorbells there would wake at once) */
		if (us < 1000)
			us *= 2;
	}
}

/* Our backlog over TCP, as TCP takes it; blocking: until sent (or the
 * timeout, -EAGAIN).  0 all sent, -EAGAIN some left, <0 error.  Under
 * wr_lock. */
static int push(struct fsock *fs, int fd, int blocking, uint64_t timeout_ns)
{
	char buf[PUSH_CHUNK];
	uint64_t t0 = fivc_now_ns(CLOCK_MONOTONIC);
	while (fivc_chan_backlog_left(&fs->ch)) {
		size_t n = fivc_chan_backlog_peek(&fs->ch, buf, sizeof(buf));
		ssize_t r = fivc_real.send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (r > 0) {
			fivc_chan_backlog_sent(&fs->ch, (size_t)r);
			continue;
		}
		if (r < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
		if (!blocking)
			return -EAGAIN;
		if (timeout_ns && fivc_now_ns(CLOCK_MONOTONIC) - t0 >= timeout_ns)
			return -EAGAIN;
		nap_ms(fd, POLLOUT, (int)FIVC_LIVENESS_MS);
	}
	return 0;
}

/* Both ways on TCP and the backlog sent: the slot goes, with no flag and
 * no doorbell; the socket is plain from now on.  Under both locks. */
static void finish(struct fsock *fs, int fd)
{
	if (fs->down != (FIVC_DOWN_W | FIVC_DOWN_R) || fivc_chan_backlog_left(&fs->ch))
		return;
	if (fs->nodelay_forced && !fs->app_nodelay) {
		int zero = 0;
		fivc_real.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &zero, sizeof(zero));
	}
	/* the ring's shutdowns are TCP's now (a shutdown() meanwhile sees
	 * either the ring, before, or FS_PLAIN: ctl_lock) */
	pthread_mutex_lock(&fs->ctl_lock);
	if (fs->ch.wr_shut || fs->ch.rd_shut)
		fivc_real.shutdown(fd, fs->ch.wr_shut && fs->ch.rd_shut ? SHUT_RDWR
					: fs->ch.wr_shut ? SHUT_WR : SHUT_RD);
	fivc_slot_unhold(fs->fab, fs->slot, fs->gen, fs->side, fs->untracked ? 0 : fs->fab->self);
	fivc_chan_down_release(&fs->ch);
	fivc_janitor_forget(fs);
	__atomic_store_n(&fs->state, FS_PLAIN, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&fs->ctl_lock);
	FIVC_DEBUG("fd %d: downgraded: plain TCP (%.0f us after it began)", fd,
		   (double)(fivc_now_ns(CLOCK_MONOTONIC) - fs->down_ns0) / 1e3);
	fivc_stat_downgraded(fs->down_reason);
}

static int eligible(struct fsock *fs)
{
	return fs->state == FS_ACCEL && fs->ch.f && !fs->ch.broken &&
	       !__atomic_load_n(&fs->ch.shared, __ATOMIC_RELAXED);
}

/* The follower's part, under both locks; wait_ms: how long the read side
 * may wait for the peer's doorbells (0 in poll). */
static void follow_locked(struct fsock *fs, int fd, int wait_ms)
{
	uint64_t at = 0;
	int peer = fivc_chan_down_peer(&fs->ch, &at);
	if (!(fs->down & FIVC_DOWN_W) && (peer & (FIVC_PEER_RD_DOWN | FIVC_PEER_LEFT))) {
		if (peer & FIVC_PEER_RD_DOWN) {
			if (fivc_chan_backlog_start(&fs->ch) < 0)
				return; /* a broken peer: the channel says ECONNRESET */
		}
		fs->down_ns0 = fivc_now_ns(CLOCK_MONOTONIC);
		if (leave_tx(fs, fd) < 0)
			return;
		if (!fs->down_reason)
			fs->down_reason = FIVC_DOWN_PEER;
		fs->down |= FIVC_DOWN_W;
		if (fivc_chan_backlog_left(&fs->ch))
			fivc_down_push_later(fs);
	}
	/* (a server still reading the client's pre-switch bytes reads them
	 * first, as on TCP; its writes are the ring's, so they may leave) */
	if ((fs->down & FIVC_DOWN_W) && !(fs->down & FIVC_DOWN_R) && (peer & FIVC_PEER_LEFT) &&
	    fs->state == FS_ACCEL) {
		int eof;
		if (fivc_chan_readable(&fs->ch, &eof) != -FIVC_EDOWN)
			goto tail; /* ring bytes first */
		if (!fs->down_t0)
			fs->down_t0 = now_ms();
		/* the initiator publishes right after its doorbell */
		if (!peer_count(fs, fd, &at, wait_ms, 0))
			goto late;
		int r = drop_to(fd, at, wait_ms);
		if (r < 0) {
			/* a count behind what came: a broken peer */
			__atomic_store_n(&fs->ch.broken, 1, __ATOMIC_RELAXED);
			return;
		}
		if (r == 0)
			goto late;
		fs->down |= FIVC_DOWN_R;
	}
tail:
	push(fs, fd, 0, 0);
	finish(fs, fd);
	return;
late:
	/* Its doorbells were sent before its count: on any link they are here
	 * long before this.  A count that never comes, or is never reached,
	 * is a broken peer's (ECONNRESET), not a wait for ever. */
	if (now_ms() - fs->down_t0 >= 2 * FOLLOW_WAIT_MS)
		__atomic_store_n(&fs->ch.broken, 1, __ATOMIC_RELAXED);
}

/* See preload.h. */
void fivc_fs_follow(struct fsock *fs, int fd, int have_rd, int trylock)
{
	if (!have_rd) {
		if (trylock ? pthread_mutex_trylock(&fs->rd_lock) != 0
			    : pthread_mutex_lock(&fs->rd_lock) != 0)
			return;
	}
	if (trylock ? pthread_mutex_trylock(&fs->wr_lock) == 0
		    : pthread_mutex_lock(&fs->wr_lock) == 0) {
		if ((fs->state == FS_ACCEL || fs->state == FS_SERVER_PRE) && fs->ch.f &&
		    !fs->ch.broken && !__atomic_load_n(&fs->ch.shared, __ATOMIC_RELAXED))
			follow_locked(fs, fd, trylock ? 0 : FOLLOW_WAIT_MS);
		pthread_mutex_unlock(&fs->wr_lock);
	}
	if (!have_rd)
		pthread_mutex_unlock(&fs->rd_lock);
}

static int ring_unread(struct fsock *fs)
{
	int eof;
	return fivc_chan_readable(&fs->ch, &eof) > 0;
}

/* A lock that a thread of ours holds inside a call: waited for up to
 * LOCK_WAIT_MS where the caller holds none (a reader and a writer thread,
 * each always in some call, are never out at once), never for ever (a
 * writer waiting for room that our read would make). */
#define LOCK_WAIT_MS 50

static int lock_within(pthread_mutex_t *m, int wait)
{
	if (!wait)
		return pthread_mutex_trylock(m);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += LOCK_WAIT_MS * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return pthread_mutex_timedlock(m, &ts);
}

/* An exec in a fork child whose parent still holds the connection (a
 * forking server: the parent closes its copy after the fork, maybe after
 * the child's exec): the side is ours alone once the parent closed, and
 * then it can go back; within ALONE_WAIT_MS.  A side held on by another
 * process cannot: its other holder would go on with the ring. */
static void wait_alone(struct fsock *fs)
{
	uint64_t t0 = now_ms();
	while (!fivc_chan_unshare_now(&fs->ch) && now_ms() - t0 < ALONE_WAIT_MS)
		nap_ms(-1, 0, 1);
	FIVC_DEBUG("fd %d: exec: the connection is %s after %llu ms", fs->fd,
		   fivc_load_relaxed(&fs->ch.shared) ? "still held by another process"
						     : "ours alone",
		   (unsigned long long)(now_ms() - t0));
}

/* The initiator's part (see top).  0: plain TCP now; -EBUSY a thread of
 * ours is inside a call, -EAGAIN not yet (a server reading pre-switch
 * bytes), -ENOTCONN it stays on the ring (a peer that closed); other <0:
 * the connection could not go back (the caller ends it).  own_fd: fd is
 * our duplicate of the socket, not the program's (the watcher's walk).
 *
 * In two halves, so that a walk over many connections can start them all
 * before it waits for the first count (down_batch): down_begin takes both
 * locks and, where the connection leaves, does steps 1 and 2 and returns 1
 * with the locks held; else (nothing to do, or an error) it lets them go
 * and returns 0 with the result in *res.  down_end does step 3 and lets
 * the locks go; downgrade() is both. */
static int down_begin(struct fsock *fs, int fd, int reason, int own_fd, int *res)
{
	/* (exec: the other threads are about to go; io_uring and operator
	 * callers hold no lock of fs) */
	int wait = reason != FIVC_DOWN_EXEC;
	if (lock_within(&fs->rd_lock, wait) != 0) {
		*res = -EBUSY; /* a thread of ours inside a read */
		return 0;
	}
	if (lock_within(&fs->wr_lock, wait) != 0) {
		pthread_mutex_unlock(&fs->rd_lock);
		*res = -EBUSY;
		return 0;
	}
	int r = 0;
	if (!own_fd)
		__atomic_store_n(&fs->fd, fd, __ATOMIC_RELAXED);
	fivc_fs_client_decide(fs); /* (an offer not adopted yet is withdrawn) */
	if (fs->state == FS_PLAIN)
		goto out;
	if (fs->down) {
		/* Leaving already: the follower of a peer that began (or an
		 * ask before).  A second LEFT, doorbell and count would put a
		 * doorbell byte past the count the peer has read, and RD_DOWN
		 * on a ring we still read would make the peer send what we
		 * read as its backlog.  (Found by reading, hunting the soak's
		 * stray zero byte: an ask that finds a busy server still
		 * following its client.)  What is left is the follower's part. */
		follow_locked(fs, fd, reason == FIVC_DOWN_OPERATOR ? 0 : FOLLOW_WAIT_MS);
		if (fs->state == FS_PLAIN || reason == FIVC_DOWN_OPERATOR)
			r = 0; /* (done, or done through the program's next calls) */
		else if (!(fs->down & FIVC_DOWN_R)) /* ring bytes only the ring has */
			r = reason == FIVC_DOWN_EXEC ? -EINPROGRESS : -EAGAIN;
		else if (push(fs, fd, 1, (uint64_t)FOLLOW_WAIT_MS * 1000000u) < 0)
			r = -ETIMEDOUT;
		else
			finish(fs, fd);
		goto out;
	}
	if (fs->state == FS_SERVER_PRE && fs->ch.f && !fs->ch.broken) {
		/* the program may have read all the client's pre-switch bytes
		 * (or there were none) and made no call since: on the ring now,
		 * as its next call would find (fivc_fs_ready; we hold rd_lock) */
		fivc_fs_server_settle(fs, fd);
	}
	if (fs->state == FS_SERVER_PRE &&
	    (reason == FIVC_DOWN_OPERATOR || reason == FIVC_DOWN_UNTRACKED) && fs->ch.f &&
	    !fs->ch.broken) {
		/* still reading the client's pre-switch bytes from TCP, which
		 * the program must get before any doorbell is dropped: once it
		 * has them (the call that reads the last goes on the ring) */
		r = -EAGAIN;
		goto out;
	}
	if (fs->state == FS_ACCEL && fs->ch.f && !fs->ch.broken &&
	    __atomic_load_n(&fs->ch.shared, __ATOMIC_RELAXED)) {
		/* the other holders may have closed or exited since a read or
		 * write of ours last looked */
		if (reason == FIVC_DOWN_EXEC)
			wait_alone(fs);
		else if (!fivc_chan_unshare_now(&fs->ch) && reason == FIVC_DOWN_OPERATOR) {
			r = -EAGAIN; /* (at a later call, once the others let go) */
			goto out;
		}
	}
	if (!eligible(fs) || fs->ch.reset) {
		r = -EOPNOTSUPP;
		goto out;
	}
	fs->down_reason = reason;
	fs->down_ns0 = fivc_now_ns(CLOCK_MONOTONIC);
	fivc_chan_down_leave_rx(&fs->ch);
	if ((r = leave_tx(fs, fd)) < 0)
		goto out;
	fs->down = FIVC_DOWN_W;
	return 1;
out:
	pthread_mutex_unlock(&fs->wr_lock);
	pthread_mutex_unlock(&fs->rd_lock);
	*res = r;
	return 0;
}

static int down_end(struct fsock *fs, int fd, int reason)
{
	int r;
	uint64_t at = 0;
	int pc = peer_count(fs, fd, &at, FOLLOW_WAIT_MS, 1);
	if (!pc) {
		/* A peer alive and silent for FOLLOW_WAIT_MS: it may still
		 * drain our TCP bytes as doorbells, so none may go (LEFT says
		 * our writes are TCP's now): the connection ends here, reset,
		 * before our locks go (regression, the soak: the writer
		 * thread's bytes went between this return and the caller's
		 * shutdown, and the late follower dropped them). */
		__atomic_store_n(&fs->ch.broken, 1, __ATOMIC_RELAXED);
		fivc_real.shutdown(fd, SHUT_RDWR);
		r = -ETIMEDOUT;
		goto out;
	}
	if (pc == 2 && !ring_unread(fs)) {
		/* the peer closed (or died) before it could follow, and left
		 * nothing unread: its TCP bytes were doorbells up to its end */
	} else if (pc == 2 && reason == FIVC_DOWN_OPERATOR) {
		/* ... with ring bytes we have not read: they are the
		 * connection's last, and only the ring has them.  It stays on
		 * the ring to its end (our flags are for a peer that is gone). */
		fs->down = 0;
		fs->down_reason = 0;
		__atomic_store_n(&fs->down_quiet, 0, __ATOMIC_SEQ_CST);
		FIVC_DEBUG("fd %d: the peer closed with ring bytes unread here: stays on the ring",
			   fd);
		r = -ENOTCONN;
		goto out;
	} else if (pc == 2) {
		/* exec, io_uring: what comes next reads TCP, which never has them */
		FIVC_INFO("fd %d: the peer closed before it could follow: the ring bytes not "
			  "read yet cannot reach TCP",
			  fd);
	}
	/* The peer left its head too (it started as well, `fastivc downgrade
	 * --all`): what we wrote past it goes over TCP first, our backlog.  It
	 * set RD_DOWN before its count, so it shows now, whether or not it did
	 * when we began. */
	if (!fs->ch.backlog_on && (fivc_chan_down_peer(&fs->ch, NULL) & FIVC_PEER_RD_DOWN) &&
	    fivc_chan_backlog_start(&fs->ch) < 0) {
		r = -ECONNRESET;
		goto out;
	}
	if ((r = drop_to(fd, at, FOLLOW_WAIT_MS)) <= 0) {
		r = r < 0 ? r : -ETIMEDOUT;
		goto out;
	}
	r = 0;
	fs->down |= FIVC_DOWN_R;
	if (reason == FIVC_DOWN_OPERATOR) {
		/* the program goes on through our calls, which keep the order:
		 * the pusher sends what TCP does not take now (the peer may be
		 * pushing its own backlog, and neither may wait for the other) */
		int p = push(fs, fd, 0, 0);
		if (p == -EAGAIN)
			fivc_down_push_later(fs);
		else if (p < 0)
			r = p;
	} else if (push(fs, fd, 1, (uint64_t)FOLLOW_WAIT_MS * 1000000u) < 0) {
		/* (exec, io_uring: what the program does next goes past us) */
		r = -ETIMEDOUT;
		goto out;
	}
	finish(fs, fd);
out:
	pthread_mutex_unlock(&fs->wr_lock);
	pthread_mutex_unlock(&fs->rd_lock);
	return r;
}

static int downgrade(struct fsock *fs, int fd, int reason)
{
	int r;
	return down_begin(fs, fd, reason, 0, &r) ? down_end(fs, fd, reason) : r;
}

int fivc_fs_downgrade(struct fsock *fs, int fd, int reason)
{
	return downgrade(fs, fd, reason);
}

static void after_down(struct fsock *fs, int fd, int r, int reason)
{
	if (r == -EBUSY || r == -EAGAIN) {
		__atomic_store_n(&fs->down_due, reason, __ATOMIC_RELEASE);
		FIVC_DEBUG("fd %d: in use by a thread, or held by another process too: goes back "
			   "at a call that finds it alone",
			   fd);
	} else if (r < 0 && r != -ENOTCONN) {
		FIVC_INFO("fd %d cannot go back to TCP (%s): shut down", fd, strerror(-r));
		fivc_real.shutdown(fd, SHUT_RDWR);
	}
}

/* io_uring, `fastivc downgrade`, an fd beyond our table (not exec): see
 * preload.h. */
void fivc_fs_down_now_or_due(struct fsock *fs, int fd, int reason)
{
	after_down(fs, fd, downgrade(fs, fd, reason), reason);
}

/* See preload.h: the downgrade met a thread inside a call. */
void fivc_fs_down_due_slow(struct fsock *fs, int fd)
{
	int why = __atomic_exchange_n(&fs->down_due, 0, __ATOMIC_ACQ_REL);
	if (!why || !fivc_fs_uses_fabric(fs))
		return;
	int e = errno;
	fivc_fs_down_now_or_due(fs, fd, why);
	errno = e;
}

/* ---- the whole process (io_uring, `fastivc downgrade`) ---- */

static int process_down; /* the reason, once the process went back */

/* From the watcher (or the thread that set up an io_uring), while the
 * program's threads go on: one of them may close fds[0] meanwhile, and a
 * new socket take its number, which the last doorbell and the drop would
 * then reach (seen in the soak's log: a downgrade still under way on the
 * number of the program's next connection).  So the watcher works on a
 * duplicate, made while the table still gave fd to this connection (a
 * close clears the entry before the kernel's close); the walk holds fs.
 * -1 where there is none; the caller closes it. */
static int own_duplicate(struct fsock *fs, int fd)
{
	int d = fivc_real.fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (d >= 0 && fivc_fs(fd) != fs) {
		fivc_real.close(d);
		d = -1;
	}
	return d;
}

/* The watcher finished a downgrade: a program thread asleep in epoll on
 * the socket is told now, not at its set's next sweep (epoll.c). */
static void went_plain(struct fsock *fs, const int *fds, int nfds)
{
	if (__atomic_load_n(&fs->state, __ATOMIC_ACQUIRE) != FS_PLAIN)
		return;
	for (int i = 0; i < nfds; i++)
		fivc_epoll_went_plain(fds[i]);
}

/* The whole process's connections, many at once: every connection's
 * first half (its count out, its peer rung), then each one's wait for its
 * peer's count.  The followers answer side by side, so 100 connections
 * take about one round trip more than one, not 100 of them (before: one
 * after another, 13 ms for 101 on loopback).  Each job holds its fsock (a
 * close meanwhile frees nothing) and its duplicate; a batch holds both
 * locks of each of its connections while its peers answer. */
#define DOWN_BATCH 64

#define JOB_FDS 4

struct down_job {
	struct fsock *fs;
	int dup;
	int nfds;
	int fds[JOB_FDS]; /* the program's numbers, for epoll (more: its sweep) */
};

struct down_batch {
	int reason;
	int n;
	struct down_job job[DOWN_BATCH];
};

static void job_end(struct down_batch *b, struct down_job *j)
{
	after_down(j->fs, j->dup, down_end(j->fs, j->dup, b->reason), b->reason);
	fivc_real.close(j->dup);
	went_plain(j->fs, j->fds, j->nfds);
	fivc_fs_unhold(j->fs);
	j->fs = NULL;
}

/* Each job as its peer's count comes, in whatever order they come, for a
 * few ms (a silent peer must not keep the others' locks: it is waited for
 * last, alone, by down_end's own bounded wait); the peers' watchers asked
 * after POKE_AFTER_MS, all at once. */
static void down_flush(struct down_batch *b)
{
	int left = b->n;
	for (unsigned us = 0; left && us < 5000; us += 100) {
		for (int i = 0; i < b->n; i++) {
			struct down_job *j = &b->job[i];
			if (j->fs && (fivc_chan_down_peer(&j->fs->ch, NULL) & FIVC_PEER_AT)) {
				job_end(b, j);
				left--;
			}
		}
		if (left && us == POKE_AFTER_MS * 1000u)
			for (int i = 0; i < b->n; i++)
				if (b->job[i].fs)
					fivc_down_poke_follow(b->job[i].fs->fab, b->job[i].fs->slot,
							      1 - b->job[i].fs->side);
		if (left)
			nap_us(-1, 0, 100);
	}
	for (int i = 0; i < b->n; i++)
		if (b->job[i].fs)
			job_end(b, &b->job[i]);
	b->n = 0;
}

static void down_one(struct fsock *fs, const int *fds, int nfds, void *arg)
{
	struct down_batch *b = arg;
	if (!fivc_fs_uses_fabric(fs) || !nfds)
		return;
	int d = own_duplicate(fs, fds[0]);
	if (d < 0)
		return;
	int r;
	if (!down_begin(fs, d, b->reason, 1, &r)) {
		after_down(fs, d, r, b->reason);
		fivc_real.close(d);
		went_plain(fs, fds, nfds);
		return;
	}
	fivc_fs_hold(fs);
	struct down_job *j = &b->job[b->n++];
	j->fs = fs;
	j->dup = d;
	j->nfds = nfds < JOB_FDS ? nfds : JOB_FDS;
	memcpy(j->fds, fds, (size_t)j->nfds * sizeof(*fds));
	if (b->n == DOWN_BATCH)
		down_flush(b);
}

/* A peer of ours left the ring and waits for our count, and maybe no
 * thread of the program will make a call for a while: the follower's
 * first part (quiet, LEFT, doorbell, count; the backlog to the pusher),
 * and the rest where the ring is dry, on our own duplicate.
 * Only where no thread of the program is inside a call on the socket
 * (trylock): such a call's wait sees the peer's flags itself within
 * FIVC_LIVENESS_MS.  The rest (ring bytes the program has not read, or a
 * server's pre-switch bytes: FS_SERVER_PRE, found by the test's second
 * run) waits for its calls, as before. */
static void follow_one(struct fsock *fs, const int *fds, int nfds, void *arg)
{
	(void)arg;
	if (!nfds)
		return;
	pthread_mutex_lock(&fs->ctl_lock); /* (a program thread's finish() lets ch go) */
	int asked = (fs->state == FS_ACCEL || fs->state == FS_SERVER_PRE) && fs->ch.f &&
		    !(fs->down & FIVC_DOWN_W) &&
		    (fivc_chan_down_peer(&fs->ch, NULL) & (FIVC_PEER_RD_DOWN | FIVC_PEER_LEFT));
	pthread_mutex_unlock(&fs->ctl_lock);
	if (!asked)
		return;
	int d = own_duplicate(fs, fds[0]);
	if (d < 0)
		return;
	fivc_fs_follow(fs, d, 0, 1);
	FIVC_DEBUG("fd %d: the watcher followed the peer back to TCP: %s", fds[0],
		   (fs->down & FIVC_DOWN_W) ? "our count is out" : "a call was inside");
	fivc_real.close(d);
	went_plain(fs, fds, nfds);
}

static void follow_current(void)
{
	int e = errno;
	fivc_for_each_fsock(follow_one, NULL);
	errno = e;
}

static void down_current(int reason)
{
	int e = errno;
	struct down_batch b; /* (2 KiB) */
	b.reason = reason;
	b.n = 0;
	fivc_for_each_fsock(down_one, &b);
	down_flush(&b);
	errno = e;
}

void fivc_down_process(int reason, const char *how)
{
	int none = 0;
	if (!__atomic_compare_exchange_n(&process_down, &none, reason, 0, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return;
	int e = errno;
	__atomic_store_n(&fivc_cfg.disabled, 1, __ATOMIC_RELEASE);
	FIVC_INFO("%s: this process's connections go back to TCP, new ones stay plain", how);
	fivc_listen_forget_all();
	errno = e;
	down_current(reason);
}

/* The watcher: asleep on our member's down_req (a process-shared futex);
 * a guest's fabric is memory another kernel writes, and a futex there
 * fails at once (EFAULT: the BAR's mapping has no pages), so a guest
 * looks every heartbeat instead.  (Regression, the guest chaos test: a
 * guest's watcher looped on that EFAULT, a vCPU's worth of CPU per
 * process, and a paused guest's stream came back late.) */
static int wstarted;
static uint32_t wseen0; /* our down_req when the watcher was asked for */
static pthread_mutex_t wlock = PTHREAD_MUTEX_INITIALIZER;

static void *watcher(void *arg)
{
	struct fivc_fabric *f = arg;
	fivc_guard++;
	struct fivc_member *me = fivc_member_at(f, f->self - 1);
	struct timespec beat = {0, (long)FIVC_HEARTBEAT_MS * 1000000L};
	/* Not our word as the thread starts: a peer's ask that came between
	 * fivc_down_watch and now would count as seen, and its initiator
	 * then waited 5 s and shut the connection down (regression, under
	 * load: test_families posix-spawn, a self-connected pair going back
	 * to TCP before posix_spawn, about one run in three). */
	uint32_t seen = __atomic_load_n(&wseen0, __ATOMIC_ACQUIRE);
	for (;;) {
		uint32_t v = __atomic_load_n(&me->down_req, __ATOMIC_ACQUIRE);
		if (v & FIVC_DOWN_REQ_PLAIN) {
			fivc_down_process(FIVC_DOWN_OPERATOR, "fastivc downgrade");
			return NULL;
		}
		uint32_t now = (v ^ seen) & FIVC_DOWN_REQ_NOW_MASK;
		if (v != seen) {
			seen = v;
			if (now) { /* --keep-accelerating: the connections of now */
				FIVC_DEBUG("fastivc downgrade --keep-accelerating: this process's "
					   "connections go back to TCP");
				down_current(FIVC_DOWN_OPERATOR);
			} else { /* a peer left a ring and waits for our count */
				follow_current();
			}
			continue;
		}
		if (f->guest ||
		    (syscall(SYS_futex, &me->down_req, FUTEX_WAIT, v, NULL, NULL, 0) < 0 &&
		     errno != EAGAIN && errno != EINTR))
			nanosleep(&beat, NULL); /* (a futex that cannot sleep: look every beat) */
	}
}

void fivc_down_watch(struct fivc_fabric *fab)
{
	if (__builtin_expect(__atomic_load_n(&wstarted, __ATOMIC_RELAXED), 1) || !fab->self)
		return;
	pthread_mutex_lock(&wlock);
	if (!wstarted) {
		wstarted = 1;
		struct fivc_member *me = fivc_member_at(fab, fab->self - 1);
		__atomic_store_n(&wseen0,
				 __atomic_load_n(&me->down_req, __ATOMIC_ACQUIRE) & ~FIVC_DOWN_REQ_PLAIN,
				 __ATOMIC_RELEASE);
		if (fivc_start_thread_arg(watcher, fab) != 0)
			FIVC_INFO("no watcher thread: `fastivc downgrade` reaches this process at "
				  "its next connection");
	}
	pthread_mutex_unlock(&wlock);
}

/* A write while our backlog is not all sent: it first, as TCP keeps the
 * order.  Under wr_lock; fs->down has FIVC_DOWN_W. */
ssize_t fivc_fs_down_send(struct fsock *fs, int fd, const void *buf, size_t len, int flags)
{
	if (__atomic_load_n(&fs->ch.broken, __ATOMIC_RELAXED))
		return -ECONNRESET; /* (a peer that never followed: see downgrade) */
	int nb = fs->nonblock || (flags & MSG_DONTWAIT);
	int r = push(fs, fd, !nb, fs->ch.wr_timeout_ns);
	if (r < 0)
		return r;
	ssize_t n = fivc_real.send(fd, buf, len, flags);
	return n < 0 ? -errno : n;
}

/* ---- the pusher: backlogs sent while the program makes no call ---- */

static pthread_mutex_t plock = PTHREAD_MUTEX_INITIALIZER;
static struct fsock **pushing;
static int npushing, cappushing, pstarted;

static void *pusher(void *arg)
{
	(void)arg;
	fivc_guard++;
	for (;;) {
		pthread_mutex_lock(&plock);
		int n = npushing;
		struct pollfd p[64];
		int k = 0;
		for (int i = 0; i < n;) {
			struct fsock *fs = pushing[i];
			int done = 1;
			if (pthread_mutex_trylock(&fs->wr_lock) == 0) {
				int fd = __atomic_load_n(&fs->fd, __ATOMIC_RELAXED);
				if (fs->state != FS_PLAIN && fd >= 0 && fivc_chan_backlog_left(&fs->ch)) {
					done = push(fs, fd, 0, 0) != -EAGAIN;
					if (done && pthread_mutex_trylock(&fs->rd_lock) == 0) {
						finish(fs, fd);
						pthread_mutex_unlock(&fs->rd_lock);
					}
				}
				pthread_mutex_unlock(&fs->wr_lock);
			} else {
				done = 0; /* its writer is at it */
			}
			if (done) {
				pushing[i] = pushing[--npushing];
				n--;
				fivc_fs_unhold(fs);
				continue;
			}
			if (k < 64)
				p[k++] = (struct pollfd){.fd = __atomic_load_n(&fs->fd, __ATOMIC_RELAXED),
							 .events = POLLOUT};
			i++;
		}
		pthread_mutex_unlock(&plock);
		fivc_real.poll(p, (nfds_t)k, (int)FIVC_LIVENESS_MS);
		if (!k) {
			struct timespec ts = {0, (long)FIVC_LIVENESS_MS * 1000000L};
			nanosleep(&ts, NULL);
		}
	}
	return NULL;
}

void fivc_down_push_later(struct fsock *fs)
{
	pthread_mutex_lock(&plock);
	for (int i = 0; i < npushing; i++)
		if (pushing[i] == fs)
			goto out;
	if (npushing == cappushing) {
		int cap = cappushing ? cappushing * 2 : 16;
		struct fsock **m = realloc(pushing, (size_t)cap * sizeof(*m));
		if (!m)
			goto out; /* its own calls push it */
		pushing = m;
		cappushing = cap;
	}
	fivc_fs_hold(fs); /* (a close keeps the socket for us: sock.c) */
	pushing[npushing++] = fs;
	if (!pstarted) {
		pstarted = fivc_start_thread(pusher) == 0;
		if (!pstarted)
			FIVC_INFO("no pusher thread: a backlog goes with the program's calls");
	}
out:
	pthread_mutex_unlock(&plock);
}

/* At exit: the kernel sends what a socket's buffer holds after the process
 * is gone; a backlog has only us.  So exit waits for the backlogs' peers to
 * take them, as long as they read (FOLLOW_WAIT_MS without progress ends
 * it).  Not after _exit(), which runs no destructor. */
__attribute__((destructor)) static void push_at_exit(void)
{
	pthread_mutex_lock(&plock);
	for (int i = 0; i < npushing; i++) {
		struct fsock *fs = pushing[i];
		pthread_mutex_lock(&fs->wr_lock);
		for (;;) {
			int fd = __atomic_load_n(&fs->fd, __ATOMIC_RELAXED);
			uint64_t before = fivc_chan_backlog_left(&fs->ch);
			if (fs->state == FS_PLAIN || fd < 0 || !before ||
			    push(fs, fd, 1, (uint64_t)FOLLOW_WAIT_MS * 1000000u) != -EAGAIN ||
			    fivc_chan_backlog_left(&fs->ch) == before)
				break;
		}
		pthread_mutex_unlock(&fs->wr_lock);
	}
	pthread_mutex_unlock(&plock);
}

/* fork: the child has no pusher; the backlogs are the parent's to send. */
void fivc_down_fork_prepare(void) { pthread_mutex_lock(&plock); }
void fivc_down_fork_parent(void) { pthread_mutex_unlock(&plock); }
void fivc_down_fork_child(void)
{
	pthread_mutex_init(&plock, NULL);
	npushing = 0;
	pstarted = 0;
	pthread_mutex_init(&wlock, NULL);
	wstarted = 0; /* (the child is a new member: its watcher starts with its next connection) */
}

void fivc_stat_downgraded(int reason)
{
	struct fivc_fabric *f = fivc_fabric_get();
	if (f && f->base && reason > 0 && reason < FIVC_DOWN_REASONS)
		__atomic_fetch_add(&((struct fivc_fabric_hdr *)f->base)->downgrades[reason], 1,
				   __ATOMIC_RELAXED);
}

/* See preload.h: before the last close of a connection whose peer left. */
void fivc_fs_follow_at_close(struct fsock *fs, int fd)
{
	if (fs->state != FS_ACCEL || !fs->ch.f || fs->ch.broken ||
	    __atomic_load_n(&fs->ch.shared, __ATOMIC_RELAXED) ||
	    !(fivc_chan_down_peer(&fs->ch, NULL) & (FIVC_PEER_RD_DOWN | FIVC_PEER_LEFT)))
		return;
	fivc_fs_follow(fs, fd, 0, 0);
	if (fs->state == FS_PLAIN || !(fs->down & FIVC_DOWN_W))
		return;
	/* the backlog into TCP's buffer, which the kernel delivers after the
	 * close, as it would the bytes of a closed socket */
	pthread_mutex_lock(&fs->wr_lock); /* (no pusher has it: its hold would keep the socket) */
	push(fs, fd, 1, (uint64_t)FOLLOW_WAIT_MS * 1000000u);
	if (pthread_mutex_trylock(&fs->rd_lock) == 0) {
		/* The initiator leaves our ring (RD_DOWN) before its own (LEFT,
		 * then its count): a program that read the ring's EOF in
		 * between and closed had the initiator's doorbells unread, and
		 * the kernel reset where plain TCP sends a FIN; the reset took
		 * our own bytes still in flight with it (the soak: the server's
		 * stream A ended in ECONNRESET, 1 run in 200).  With the ring
		 * read to its end, wait for the count and drop them. */
		uint64_t at = 0;
		if (!(fs->down & FIVC_DOWN_R) && !ring_unread(fs) &&
		    peer_count(fs, fd, &at, FOLLOW_WAIT_MS, 0) &&
		    drop_to(fd, at, FOLLOW_WAIT_MS) == 1)
			fs->down |= FIVC_DOWN_R;
		finish(fs, fd);
		pthread_mutex_unlock(&fs->rd_lock);
	}
	pthread_mutex_unlock(&fs->wr_lock);
}
