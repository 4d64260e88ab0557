/* fastivc preload — reads and writes on a socket that has an offer or a
 * channel: the upgrade's second half (DESIGN.md "The upgrade", steps 3-4).
 *
 * Client (FS_CLIENT_PENDING): reads and writes go over TCP; bytes written are
 * counted.  Once the offer reads ADOPTED the client switches: it publishes
 * N = bytes written over TCP and from then on uses the ring.  Any TCP byte
 * read while pending is re-checked against the offer: an adopting server
 * marks the offer before it writes anything, and writes only to the ring, so
 * bytes seen under a PENDING offer are program data from a plain server.
 *
 * Departure from DESIGN.md steps 2-3 (measured): neither side sends a
 * doorbell byte when it adopts or switches.  Instead a side that blocks in a
 * TCP read before the switch also announces "waiting" on its ring, so the
 * peer's first ring write (or ring EOF) rings the doorbell then.  The two
 * protocol doorbells were two extra TCP packets per connection, most of the
 * gap in the connection-rate benchmark.
 *
 * Server (FS_SERVER_PRE): writes go to the ring from the start; reads take
 * exactly N bytes from TCP (re-checking for N after every TCP read and never
 * handing out a byte beyond it), then the ring.
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_received (glibc's has not) */
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "fastivc/atomics.h"
#include "fastivc/util.h"
#include "preload.h"

static int chan_flags(struct fsock *fs, int msgflags)
{
	int f = 0;
	if (fs->nonblock || (msgflags & MSG_DONTWAIT))
		f |= FIVC_NONBLOCK;
	if (msgflags & MSG_PEEK)
		f |= FIVC_PEEK;
	if (msgflags & MSG_WAITALL)
		f |= FIVC_WAITALL;
	if (msgflags & MSG_TRUNC)
		f |= FIVC_DISCARD; /* TCP's MSG_TRUNC: taken, not copied (the buffer may be NULL) */
	if (msgflags & MSG_OOB)
		f |= FIVC_URGENT; /* (a write's: its last byte is urgent) */
	return f;
}

static void client_switch(struct fsock *fs);

/* Client: give up on acceleration (the server is plain).  switch_ok: an
 * offer adopted meanwhile is switched to instead (a client that gives up
 * for its own reasons, not because it saw program data on TCP).  Under
 * ctl_lock: a shutdown() on another thread looks at the channel. */
static void client_give_up(struct fsock *fs, int switch_ok)
{
	pthread_mutex_lock(&fs->ctl_lock);
	int r = fivc_offer_withdraw(fs->fab, fs->offer_idx, fs->offer_word);
	if (r == -EALREADY && switch_ok) {
		client_switch(fs);
	} else if (r == -EALREADY) {
		/* Adopted after we saw program data: impossible for a correct
		 * server (it adopts before the program sees the connection). */
		fs->ch.broken = 1;
		fs->state = FS_ACCEL;
	} else {
		fivc_offer_remove(fs->fab, fs->offer_idx, fs->offer_word);
		/* After a fork other holders of the side go on until they see
		 * the same; the last one to let go closes it (as
		 * fivc_fs_release). */
		if (!fs->pre_shared ||
		    fivc_slot_unhold(fs->fab, fs->slot, fs->gen, fs->side,
				     fs->untracked ? 0 : fs->fab->self) != 0)
			fivc_chan_close(&fs->ch);
		else
			fs->ch.f = NULL;
		fs->state = FS_PLAIN;
		FIVC_DEBUG("fd %d: %s: plain TCP", fs->fd,
			   switch_ok ? "it leaves before the switch (urgent data, exec)"
				     : "peer is not accelerated");
	}
	pthread_mutex_unlock(&fs->ctl_lock);
}

static void client_go_plain(struct fsock *fs) { client_give_up(fs, 0); }

/* See preload.h. */
void fivc_fs_client_decide(struct fsock *fs)
{
	if (fs->state == FS_CLIENT_PENDING && !fs->pre_shared)
		client_give_up(fs, 1);
}

/* Client: the offer was adopted; switch to the ring.  Caller holds wr_lock
 * (tcp_sent must not move while N is published). */
static void client_switch(struct fsock *fs)
{
	struct fivc_slot *s = fivc_slot_at(fs->fab, fs->slot);
	if (!fivc_chan_enter(&fs->ch)) {
		/* judged dead meanwhile (a paused guest): the slot is not ours */
		fs->ch.broken = 1;
		fs->state = FS_ACCEL;
		return;
	}
	/* (forked: the slot's count is the holders' sum already) */
	if (!fs->pre_shared)
		fivc_store_relaxed(&s->switch_bytes, fs->tcp_sent);
	/* SYNC POINT WRITE: N before the state; pairs with fivc_fs_server_check(). */
	fivc_store_release(&s->switch_state, 1);
	fivc_chan_leave(&fs->ch);
	/* No doorbell: a server blocked in a TCP read has armed its ring and
	 * wakes on our first ring write or ring EOF (see the top). */
	fivc_offer_remove(fs->fab, fs->offer_idx, fs->offer_word);
	fs->state = FS_ACCEL;
	FIVC_DEBUG("fd %d: switched to the ring after %llu TCP bytes", fs->fd,
		   (unsigned long long)fivc_load_relaxed(&s->switch_bytes));
}

/* client_check_shared's step, under the side's writing lock: 1 while the
 * client is still pending. */
static int client_step_shared(struct fsock *fs)
{
	if (fs->state != FS_CLIENT_PENDING)
		return 0;
	if (fivc_load_acquire(&fivc_slot_at(fs->fab, fs->slot)->switch_state))
		fs->state = FS_ACCEL; /* another holder switched */
	else if (fivc_offer_poll(fs->fab, fs->offer_idx, fs->offer_word) == FIVC_OFFER_ADOPTED)
		client_switch(fs);
	return fs->state == FS_CLIENT_PENDING;
}

/* Client forked before the switch (fs->pre_shared): the switch, or seeing
 * another holder's, under the side's writing lock in the slot, which every
 * holder's TCP write before the switch takes too (client_pre_shared_send):
 * N, the slot's count, cannot move while it is published, and no holder
 * writes to TCP after it.  The lock is never held across a sleep, so a
 * reader waits for it briefly at most. */
static void client_check_shared(struct fsock *fs)
{
	if (fivc_chan_xlock(&fs->ch, 1) < 0)
		return; /* (a broken channel: the I/O that follows reports it) */
	client_step_shared(fs);
	fivc_chan_xunlock(&fs->ch, 1);
}

/* Client: if the offer was adopted, switch (takes wr_lock unless held). */
void fivc_fs_client_check(struct fsock *fs, int have_wr_lock)
{
	if (fs->state != FS_CLIENT_PENDING)
		return;
	if (fs->pre_shared) {
		client_check_shared(fs);
		return;
	}
	if (fivc_load_relaxed(&fs->ch.shared) &&
	    fivc_load_acquire(&fivc_slot_at(fs->fab, fs->slot)->switch_state)) {
		/* another process holding this side switched (fork) */
		if (!have_wr_lock)
			pthread_mutex_lock(&fs->wr_lock);
		fs->state = FS_ACCEL;
		if (!have_wr_lock)
			pthread_mutex_unlock(&fs->wr_lock);
		return;
	}
	if (fivc_offer_poll(fs->fab, fs->offer_idx, fs->offer_word) != FIVC_OFFER_ADOPTED)
		return;
	if (!have_wr_lock)
		pthread_mutex_lock(&fs->wr_lock);
	if (fs->state == FS_CLIENT_PENDING)
		client_switch(fs);
	if (!have_wr_lock)
		pthread_mutex_unlock(&fs->wr_lock);
}

/* Server: learn N once the client published it. */
void fivc_fs_server_check(struct fsock *fs)
{
	if (fs->n_known)
		return;
	struct fivc_slot *s = fivc_slot_at(fs->fab, fs->slot);
	/* SYNC POINT READ: pairs with the release in client_switch(). */
	if (fivc_load_acquire(&s->switch_state)) {
		fs->switch_n = fivc_load_relaxed(&s->switch_bytes);
		fs->n_known = 1;
	}
}

/* The program bytes all holders of this side took from TCP (a forked
 * server before the switch, and the downgrade's drop: down.c), which only
 * the kernel knows: bytes received (tcpi_bytes_received counts the FIN
 * too, not the SYN) less those still queued (FIONREAD), less one once the
 * socket is done (tcp_inq: FIONREAD is rcv_nxt - copied_seq, less one
 * while the socket has SOCK_DONE).  SOCK_DONE comes with a FIN (the FIN
 * states) or with tcp_done (TCP_CLOSE: a reset, after a FIN or not);
 * either way the count is bytes received less FIONREAD, less one where
 * that leaves any.  (Regression, the downgrade soak: a follower whose
 * client's FIN and then reset had come, in TCP_CLOSE, counted one byte too
 * many and handed the initiator's last doorbell to its program as a zero;
 * with nothing queued and no FIN it counts one too few, which only makes
 * the drop look once more and find the end.)  The two calls are not one
 * snapshot: read the first again after the second, until no segment came
 * in between.  0 or -errno. */
#define FIVC_TCPS_TIME_WAIT 6 /* the kernel's TCP states (include/net/tcp_states.h) */
#define FIVC_TCPS_CLOSE 7
#define FIVC_TCPS_CLOSE_WAIT 8
#define FIVC_TCPS_LAST_ACK 9
#define FIVC_TCPS_CLOSING 11

static int tcp_info_rx(int fd, uint64_t *bytes, int *done)
{
	struct tcp_info ti;
	socklen_t l = sizeof(ti);
	memset(&ti, 0, sizeof(ti));
	if (fivc_real.getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l) < 0)
		return -errno;
	if (l < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof(ti.tcpi_bytes_received))
		return -EOPNOTSUPP; /* (kernels before 4.1) */
	*bytes = ti.tcpi_bytes_received;
	*done = ti.tcpi_state == FIVC_TCPS_CLOSE_WAIT || ti.tcpi_state == FIVC_TCPS_LAST_ACK ||
	       ti.tcpi_state == FIVC_TCPS_CLOSING || ti.tcpi_state == FIVC_TCPS_TIME_WAIT ||
	       ti.tcpi_state == FIVC_TCPS_CLOSE;
	return 0;
}

int fivc_tcp_taken(int fd, uint64_t *out)
{
	for (;;) {
		uint64_t a, b;
		int da, db, q, e;
		if ((e = tcp_info_rx(fd, &a, &da)) < 0)
			return e;
		if (fivc_real.ioctl(fd, FIONREAD, &q) < 0)
			return -errno;
		if ((e = tcp_info_rx(fd, &b, &db)) < 0)
			return e;
		if (a == b && da == db) {
			uint64_t t = a - (uint64_t)q;
			*out = da && t ? t - 1 : t; /* (see above: never below 0) */
			return 0;
		}
	}
}

/* Server: program bytes taken from TCP before the switch, by this process
 * or, after a fork, by every holder of the side (then from the kernel). */
uint64_t fivc_fs_pre_taken(struct fsock *fs, int fd)
{
	uint64_t t;
	if (fs->pre_shared && fs->state == FS_SERVER_PRE && fivc_tcp_taken(fd, &t) == 0 &&
	    t > fs->tcp_recvd)
		return t; /* (it only ever grows) */
	return fs->tcp_recvd;
}

/* Server: the pre-switch bytes are all read once N is known and reached. */
static void server_maybe_done(struct fsock *fs)
{
	fivc_fs_server_check(fs);
	if (fs->state == FS_SERVER_PRE && fs->n_known && fs->tcp_recvd >= fs->switch_n) {
		fs->state = FS_ACCEL;
		FIVC_DEBUG("fd %d: read the client's %llu pre-switch bytes; ring only", fs->fd,
			   (unsigned long long)fs->switch_n);
	}
}

#define RECHECK (-0x10000) /* tcp_read_armed(): not read; look at the state again */

/* The peer's side is dead and TCP had nothing for a while: one more look
 * (bytes it sent just before it died), else the reset TCP would give. */
static ssize_t tcp_last_look(int fd, void *buf, size_t len, int flags)
{
	ssize_t r = fivc_real.recv(fd, buf, len, flags | MSG_DONTWAIT);
	if (r >= 0)
		return r;
	return errno == EAGAIN ? -ECONNRESET : -errno;
}

static int peer_stepped(struct fsock *fs); /* below: adopted (client), N known (server) */

/* One nap of a wait that began at start, under a timeout (SO_RCVTIMEO or
 * SO_SNDTIMEO, 0: none): FIVC_LIVENESS_MS or what is left, in ms; -1 when
 * the time is up. */
static int nap_ms(uint64_t start, uint64_t limit)
{
	int tmo = FIVC_LIVENESS_MS;
	if (limit) {
		uint64_t el = fivc_now_ns(CLOCK_MONOTONIC) - start;
		if (el >= limit)
			return -1;
		if ((limit - el) / 1000000 + 1 < (uint64_t)tmo)
			tmo = (int)((limit - el) / 1000000 + 1);
	}
	return tmo;
}

/* A blocking TCP read before the switch sleeps in poll, FIVC_LIVENESS_MS
 * at a time, not in recv: the peer's FIN ends it as it ends TCP's recv, but
 * a peer that died with its socket open elsewhere (a guest, whose death
 * the host kernel never sees; a copy passed over a unix socket) sends
 * none, and no wait may rely on FIN alone (issue 13).  Between naps the
 * fabric is asked whether the peer's side lives: for a server, the client
 * that was adopted; for a client, a server that adopted it (one that has
 * not is TCP's to judge).  0 = readable, RECHECK, or -errno: ECONNRESET
 * (dead peer), EAGAIN (SO_RCVTIMEO), EINTR. */
static int tcp_wait_live(struct fsock *fs, int fd, uint64_t start)
{
	for (;;) {
		int tmo = nap_ms(start, fs->ch.rd_timeout_ns);
		if (tmo < 0)
			return -EAGAIN;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		__atomic_add_fetch(&fs->ch.sleepers[0], 1, __ATOMIC_ACQ_REL); /* (fs_lock) */
		int r = fivc_sig_poll(&p, 1, tmo);
		__atomic_sub_fetch(&fs->ch.sleepers[0], 1, __ATOMIC_ACQ_REL);
		if (r > 0)
			return 0;
		if (r < 0 && errno == EINTR) {
			if (!fivc_sig_restarts(fs->ch.rd_timeout_ns))
				return -EINTR;
			continue;
		}
		if (r < 0)
			return 0; /* (cannot happen on our fd) let recv report it */
		if (fivc_chan_peer_check(&fs->ch))
			return -ECONNRESET;
		/* The peer stepped while we slept (adopted; switched) and its
		 * doorbell was taken by another holder of the socket (fork):
		 * the caller looks at the state again. */
		if (peer_stepped(fs))
			return RECHECK;
	}
}

/* A TCP read before the switch.  When it may block and `arm` is set, the
 * ring's "waiting" is announced too, so that the peer's first ring write (or
 * ring EOF) rings the doorbell and ends the wait (see the top of this file).
 * Returns bytes, 0 at EOF, or -errno. */
static ssize_t tcp_read_armed(struct fsock *fs, int fd, void *buf, size_t len, int flags, int arm)
{
	int nb = fs->nonblock || (flags & MSG_DONTWAIT);
	/* (not disarmed after: the peer's ring clears it, see channel.c)
	 * Armed, then looked: ring bytes or ring EOF that came before the arm
	 * rang no doorbell, so sleeping in recv now could be for ever.  They
	 * mean the peer is past the switch; the caller checks again. */
	if (arm && !nb && fivc_chan_arm(&fs->ch, 1, 0))
		return RECHECK;
	if (nb) {
		ssize_t r = fivc_real.recv(fd, buf, len, flags | MSG_DONTWAIT);
		return r < 0 ? -errno : r;
	}
	/* poll first (it returns at once when bytes are there): one call more
	 * than a blocking recv, and only on a read that may block */
	int w = tcp_wait_live(fs, fd, fivc_now_ns(CLOCK_MONOTONIC));
	if (w == RECHECK)
		return RECHECK;
	if (w < 0)
		return w == -ECONNRESET ? tcp_last_look(fd, buf, len, flags) : w;
	ssize_t r = fivc_real.recv(fd, buf, len, flags | MSG_DONTWAIT);
	if (r >= 0)
		return r;
	if (errno != EAGAIN)
		return -errno;
	/* Another thread or holder (fork) took them: maybe the doorbell of a
	 * switch, so the caller looks at the state again. */
	return RECHECK;
}

/* A server's TCP read before the switch on a side that other processes
 * hold too (fs->pre_shared, after a fork): count and read under the side's
 * reading lock in the slot, so that no other holder takes bytes between
 * the two and no holder ever takes a byte beyond N.  The read itself never
 * blocks under the lock: a blocking one sleeps without it (tcp_wait_live)
 * and tries again.  `arm`: as for tcp_read_armed.  Returns bytes (those
 * past N, doorbells, taken and dropped), 0 at EOF, RECHECK (the state may
 * have moved on: look again), or -errno. */
static ssize_t server_pre_shared_read(struct fsock *fs, int fd, void *buf, size_t len,
				      int flags, int arm)
{
	int nb = fs->nonblock || (flags & MSG_DONTWAIT), last = 0;
	uint64_t start = 0;
	for (;;) {
		ssize_t r = fivc_chan_xlock(&fs->ch, 0);
		if (r < 0)
			return r;
		uint64_t taken;
		r = fivc_tcp_taken(fd, &taken);
		if (r == 0) {
			if (taken > fs->tcp_recvd)
				fs->tcp_recvd = taken;
			server_maybe_done(fs);
			r = RECHECK;
		}
		if (r == RECHECK && fs->state == FS_SERVER_PRE) {
			size_t want = len;
			if (fs->n_known && want > fs->switch_n - fs->tcp_recvd)
				want = (size_t)(fs->switch_n - fs->tcp_recvd);
			int was_known = fs->n_known;
			r = fivc_real.recv(fd, buf, want, flags | MSG_DONTWAIT);
			r = r < 0 ? -errno : r;
			fivc_fs_server_check(fs);
			if (r > 0 && !was_known && fs->n_known &&
			    (uint64_t)r > fs->switch_n - fs->tcp_recvd)
				r = (ssize_t)(fs->switch_n - fs->tcp_recvd);
			if (r > 0 && !(flags & MSG_PEEK))
				fs->tcp_recvd += (uint64_t)r;
			server_maybe_done(fs);
		}
		fivc_chan_xunlock(&fs->ch, 0);
		if (r != -EAGAIN || nb)
			return r;
		if (last)
			return -ECONNRESET; /* the dead peer's last bytes are taken */
		if (arm && fivc_chan_arm(&fs->ch, 1, 0))
			return RECHECK;
		arm = 0;
		if (!start)
			start = fivc_now_ns(CLOCK_MONOTONIC);
		int w = tcp_wait_live(fs, fd, start);
		if (w == RECHECK)
			return RECHECK;
		if (w == -ECONNRESET)
			last = 1; /* one more look, as tcp_last_look */
		else if (w < 0)
			return w;
	}
}

/* A client's TCP write before the switch on a side other processes hold
 * too (fs->pre_shared): each step under the side's writing lock in the
 * slot, counted in the slot's switch_bytes (N when a holder switches,
 * client_check_shared).  Non-blocking under the lock; a blocking write
 * sleeps without it, FIVC_LIVENESS_MS at a time, and goes on until all is
 * taken, as TCP's.  Caller holds wr_lock.  Returns the bytes TCP took:
 * fewer than len when the switch came first (the rest is the ring's), or
 * -errno when none. */
static ssize_t client_pre_shared_send(struct fsock *fs, int fd, const char *buf, size_t len,
				      int flags)
{
	int nb = fs->nonblock || (flags & MSG_DONTWAIT);
	struct fivc_slot *s = fivc_slot_at(fs->fab, fs->slot);
	uint64_t start = 0, limit = fs->ch.wr_timeout_ns;
	size_t done = 0;
	for (;;) {
		ssize_t r = fivc_chan_xlock(&fs->ch, 1);
		if (r < 0)
			return done ? (ssize_t)done : r;
		if (!client_step_shared(fs)) {
			fivc_chan_xunlock(&fs->ch, 1);
			return (ssize_t)done;
		}
		/* (after the first bytes an error is the count, no SIGPIPE) */
		r = fivc_real.send(fd, buf + done, len - done,
				   flags | MSG_DONTWAIT | (done ? MSG_NOSIGNAL : 0));
		if (r < 0)
			r = -errno;
		else
			fivc_store_relaxed(&s->switch_bytes,
					   fivc_load_relaxed(&s->switch_bytes) + (uint64_t)r);
		fivc_chan_xunlock(&fs->ch, 1);
		if (r > 0) {
			done += (size_t)r;
			if (done == len || nb)
				return (ssize_t)done;
			continue;
		}
		if (r != -EAGAIN || nb)
			return done ? (ssize_t)done : r;
		if (!start)
			start = fivc_now_ns(CLOCK_MONOTONIC);
		for (;;) { /* room in TCP, or the switch */
			int tmo = nap_ms(start, limit);
			if (tmo < 0)
				return done ? (ssize_t)done : -EAGAIN;
			struct pollfd p = {.fd = fd, .events = POLLOUT};
			int k = fivc_sig_poll(&p, 1, tmo);
			if (k < 0 && errno == EINTR && !fivc_sig_restarts(limit))
				return done ? (ssize_t)done : -EINTR;
			/* (any other poll error: the send says what is wrong) */
			if (k != 0 && !(k < 0 && errno == EINTR))
				break;
			if (fivc_load_acquire(&s->switch_state) ||
			    fivc_offer_poll(fs->fab, fs->offer_idx, fs->offer_word) ==
				    FIVC_OFFER_ADOPTED)
				break;
		}
	}
}

/* About to block in the first TCP read before the switch, spin a while on
 * the upgrade's state and the socket before sleeping.
 * - Client (offer pending; a request sent, the response awaited): an
 *   adopting server answers on the ring.
 * - Server (N not known yet): a client that switched before it wrote sends
 *   its request on the ring.
 * A side that is still spinning sees those ring bytes with no doorbell and
 * no wake-up: the sleeps a short connection pays on plain TCP.  Returns 1
 * when the peer is past its step (adopted; switched), else 0 (TCP data,
 * time up).  The budget halves for each spin that found a plain peer or
 * nothing, process-wide per role (a process's connections mostly go to one
 * kind of peer), and every FIVC_SPIN_PROBE-th try spins the full budget. */
static unsigned pending_fails[2], pending_probe[2];

static int peer_stepped(struct fsock *fs)
{
	/* A client: adopted, or, after a fork, switched by another holder of
	 * our side, which removed the offer as it switched (regression: a
	 * holder asleep in tcp_wait_live when the other switched and took
	 * the doorbells never looked again, and read nothing once the other
	 * died), or switched by another thread of ours (the writer), which
	 * removed the offer too: its ring is ours to read now, and no byte may
	 * come to wake us (regression, the downgrade soak: a reader asleep
	 * here held rd_lock while the server, gone back to TCP, waited for
	 * our count, which our writer, following it, could not give without
	 * rd_lock; after 5 s the server gave up and its next bytes were
	 * dropped here as doorbells). */
	if (fs->side == FIVC_SIDE_CLIENT)
		return __atomic_load_n(&fs->state, __ATOMIC_RELAXED) != FS_CLIENT_PENDING ||
		       fivc_offer_poll(fs->fab, fs->offer_idx, fs->offer_word) ==
			       FIVC_OFFER_ADOPTED ||
		       (fs->pre_shared &&
			fivc_load_acquire(&fivc_slot_at(fs->fab, fs->slot)->switch_state));
	fivc_fs_server_check(fs);
	return fs->n_known;
}

static int pending_spin(struct fsock *fs, int fd)
{
	int role = fs->side == FIVC_SIDE_CLIENT;
	unsigned fails = __atomic_load_n(&pending_fails[role], __ATOMIC_RELAXED);
	uint64_t budget = fs->ch.spin_ns >> fails;
	if (__atomic_add_fetch(&pending_probe[role], 1, __ATOMIC_RELAXED) % FIVC_SPIN_PROBE == 0)
		budget = fs->ch.spin_ns;
	if (!budget)
		return 0;
	uint64_t start = fivc_now_ns(CLOCK_MONOTONIC);
	for (unsigned i = 1;; i++) {
		if (peer_stepped(fs)) {
			__atomic_store_n(&pending_fails[role], 0, __ATOMIC_RELAXED);
			return 1;
		}
		fivc_cpu_relax();
		if (i & 63)
			continue;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int saved = errno;
		int r = fivc_real.poll(&p, 1, 0);
		errno = saved;
		if (r != 0 || fivc_sig_came() || fivc_now_ns(CLOCK_MONOTONIC) - start >= budget)
			break; /* TCP has something (a plain peer, pre-switch bytes), a
				* handler ran (the sleep after ends with EINTR), or time is up */
	}
	if (fails < FIVC_SPIN_MAX_SHIFT)
		__atomic_store_n(&pending_fails[role], fails + 1, __ATOMIC_RELAXED);
	return 0;
}

/* The spin above, once per connection for the first read that may block
 * (what = PENDING_SPUN_READ), and once for the client's first blocking
 * write (PENDING_SPUN_WRITE): a client that writes its request right after
 * connect() returns is nearly always ahead of the server's accept(), so
 * the request would cross TCP and the server would sleep for it.  Waiting
 * a moment for the adoption puts the request on the ring (N = 0), which
 * the server, spinning in its first read, takes with no wake-up. */
#define PENDING_SPUN_READ 1
#define PENDING_SPUN_WRITE 2

static int pending_spin_once(struct fsock *fs, int fd, int tflags, int what)
{
	if (fs->nonblock || (tflags & MSG_DONTWAIT) ||
	    (__atomic_fetch_or(&fs->pending_spun, what, __ATOMIC_RELAXED) & what))
		return 0;
	return pending_spin(fs, fd);
}

/* A pre_shared client's re-check after a TCP read before the switch (as
 * fivc_fs_recv's below, under the side's writing lock): 1 when the bytes
 * were doorbells (a holder switched), else 0: program data from a plain
 * server, or EOF.  Going plain needs wr_lock too (a writer of ours may be
 * between steps); when a writer holds it, a later read goes instead. */
static int client_after_tcp_read_shared(struct fsock *fs, ssize_t r)
{
	if (fivc_chan_xlock(&fs->ch, 1) < 0)
		return 0;
	int doorbells = !client_step_shared(fs);
	int plain = !doorbells && r > 0 && pthread_mutex_trylock(&fs->wr_lock) == 0;
	fivc_chan_xunlock(&fs->ch, 1);
	if (plain) {
		/* (the channel is closed outside the slot's lock) */
		client_go_plain(fs);
		pthread_mutex_unlock(&fs->wr_lock);
	}
	return doorbells;
}

/* A direction's lock for a call.  One that must not block (O_NONBLOCK,
 * MSG_DONTWAIT) while another thread of ours sleeps in a blocking call on
 * that direction, lock held: -EAGAIN, as the kernel's (that thread slept:
 * nothing was there; regression, issue 11: it waited for the other's
 * data).  A holder that is not asleep (copying, spinning) is waited for,
 * and after a while (a blocking TCP write before the switch, which the
 * kernel sleeps in, uncounted) the lock is simply taken. */
static int fs_lock(struct fsock *fs, int wr, int nb)
{
	pthread_mutex_t *m = wr ? &fs->wr_lock : &fs->rd_lock;
	if (!nb) {
		pthread_mutex_lock(m);
		return 0;
	}
	for (unsigned i = 0; pthread_mutex_trylock(m) != 0; i++) {
		if (__atomic_load_n(&fs->ch.sleepers[wr], __ATOMIC_ACQUIRE))
			return -EAGAIN;
		if (i >= 1u << 14) {
			pthread_mutex_lock(m);
			return 0;
		}
		fivc_cpu_relax();
	}
	return 0;
}

static ssize_t fs_recv(struct fsock *fs, int fd, void *buf, size_t len, int flags);

/* One recv on an fsock; the body behind every read-family wrapper.  The
 * error queue stays the kernel's (nothing is queued for ring bytes); urgent
 * data (MSG_OOB) is the ring's (channel.c "urgent data"). */
static ssize_t fs_recv_held(struct fsock *fs, int fd, void *buf, size_t len, int flags)
{
	fivc_fs_hold(fs);
	ssize_t r = fs_recv(fs, fd, buf, len, flags);
	fivc_fs_down_due(fs, fd);
	fivc_fs_unhold(fs);
	return r;
}

/* (a signal's handler from here on ends a wait as it would the kernel's:
 * sig.c) */
ssize_t fivc_fs_recv(struct fsock *fs, int fd, void *buf, size_t len, int flags)
{
	fivc_sig_mark();
	return fs_recv_held(fs, fd, buf, len, flags);
}

static ssize_t fs_recv(struct fsock *fs, int fd, void *buf, size_t len, int flags)
{
	if (flags & MSG_ERRQUEUE) {
		ssize_t e = fivc_real.recv(fd, buf, len, flags);
		return e < 0 ? -errno : e;
	}
	ssize_t r;
	size_t got = 0;
	int waitall = (flags & MSG_WAITALL) && !(flags & MSG_PEEK);
	int tflags = flags & ~MSG_WAITALL; /* never WAITALL on TCP across the switch */
	/* After one RECHECK the next TCP read is not armed: the ring was ready,
	 * so the peer is past its switch (or closed its ring) and what we still
	 * wait for comes over TCP; arming again would only find it ready again. */
	int arm_ok = 1;
	if (fs_lock(fs, 0, fs->nonblock || (flags & MSG_DONTWAIT)) < 0)
		return -EAGAIN;
	__atomic_store_n(&fs->fd, fd, __ATOMIC_RELAXED);
	if ((flags & MSG_OOB) && fs->state == FS_ACCEL && !(fs->down & FIVC_DOWN_R)) {
		int trunc;
		r = fivc_chan_recv_oob(&fs->ch, buf, len, (flags & MSG_PEEK) != 0, &trunc);
		pthread_mutex_unlock(&fs->rd_lock);
		return r;
	}
	for (;;) {
		switch (fs->state) {
		case FS_PLAIN:
			r = fivc_real.recv(fd, (char *)buf + got, len - got, flags);
			r = r < 0 ? -errno : r;
			goto out;
		case FS_CLIENT_PENDING: {
			fivc_fs_client_check(fs, 0);
			if (fs->state != FS_CLIENT_PENDING)
				continue;
			if (pending_spin_once(fs, fd, tflags, PENDING_SPUN_READ))
				continue; /* adopted: switch, then the ring */
			/* armed: if another thread switches while we sleep here,
			 * the server's first ring write wakes us */
			r = tcp_read_armed(fs, fd, (char *)buf + got, len - got, tflags, arm_ok);
			if (r == RECHECK) {
				arm_ok = 0; /* (once: see arm_ok above) */
				continue;
			}
			if (r < 0)
				goto out;
			if (fs->pre_shared) {
				int k = client_after_tcp_read_shared(fs, r);
				if (k)
					continue; /* doorbells: the ring */
				if (r == 0)
					goto out;
				got += (size_t)r;
				if (!waitall || got == len) {
					r = 0;
					goto out;
				}
				continue;
			}
			/* Re-check after every TCP read (see the top of this file),
			 * under wr_lock so no switch runs concurrently. */
			pthread_mutex_lock(&fs->wr_lock);
			if (fs->state != FS_CLIENT_PENDING) {
				/* switched meanwhile: those bytes were doorbells */
				pthread_mutex_unlock(&fs->wr_lock);
				continue;
			}
			if (fivc_offer_poll(fs->fab, fs->offer_idx, fs->offer_word) == FIVC_OFFER_ADOPTED) {
				client_switch(fs); /* those bytes were doorbells */
				pthread_mutex_unlock(&fs->wr_lock);
				continue;
			}
			if (r == 0) {
				pthread_mutex_unlock(&fs->wr_lock);
				goto out; /* EOF from a server that never adopted */
			}
			client_go_plain(fs);
			pthread_mutex_unlock(&fs->wr_lock);
			got += (size_t)r;
			if (!waitall || got == len || fs->state == FS_ACCEL) {
				r = 0;
				goto out;
			}
			continue;
		}
		case FS_SERVER_PRE: {
			server_maybe_done(fs);
			if (fs->state != FS_SERVER_PRE)
				continue;
			if (!fs->n_known && pending_spin_once(fs, fd, tflags, PENDING_SPUN_READ))
				continue; /* N known: TCP up to N, then the ring */
			if (fs->pre_shared) {
				r = server_pre_shared_read(fs, fd, (char *)buf + got, len - got,
							   tflags, arm_ok && !fs->n_known);
				if (r == RECHECK) {
					arm_ok = 0;
					continue;
				}
				if (r < 0)
					goto out;
				if (r == 0) {
					fivc_fs_server_check(fs);
					if (fs->n_known)
						continue; /* (as below) */
					fs->tcp_eof = 1;
					goto out;
				}
				got += (size_t)r;
				if (waitall && got < len)
					continue;
				r = 0;
				goto out;
			}
			size_t want = len - got;
			if (fs->n_known && want > fs->switch_n - fs->tcp_recvd)
				want = (size_t)(fs->switch_n - fs->tcp_recvd);
			/* armed: the client's first ring write after its switch
			 * wakes this read */
			r = tcp_read_armed(fs, fd, (char *)buf + got, want, tflags,
					   arm_ok && !fs->n_known);
			if (r == RECHECK) {
				arm_ok = 0;
				continue;
			}
			if (r < 0)
				goto out;
			int was_known = fs->n_known;
			fivc_fs_server_check(fs);
			if (r == 0) {
				if (fs->n_known) /* the client switched and then closed TCP */
					continue;
				/* EOF before any switch: a client that never wrote to
				 * the ring closed or died; our close reaps its side
				 * (sock.c), else a dead one's would wait for a gc */
				fs->tcp_eof = 1;
				goto out;
			}
			if (!was_known && fs->n_known && (uint64_t)r > fs->switch_n - fs->tcp_recvd) {
				/* bytes past N are control bytes: never handed out */
				r = (ssize_t)(fs->switch_n - fs->tcp_recvd);
			}
			if (!(flags & MSG_PEEK))
				fs->tcp_recvd += (uint64_t)r;
			server_maybe_done(fs);
			got += (size_t)r;
			if (r == 0 || (waitall && got < len))
				continue;
			r = 0;
			goto out;
		}
		case FS_ACCEL:
			if (fs->down & FIVC_DOWN_R) { /* leaving the ring: TCP now (down.c) */
				r = fivc_real.recv(fd, (char *)buf + got, len - got, flags);
				r = r < 0 ? -errno : r;
				goto out;
			}
			r = fivc_chan_read(&fs->ch, (char *)buf + got, len - got, chan_flags(fs, flags));
			if (r == -FIVC_EDOWN) {
				/* the peer left the ring and it is dry: TCP from its count */
				if (got)
					goto out;
				int nb = fs->nonblock || (flags & MSG_DONTWAIT);
				fivc_fs_follow(fs, fd, 1, nb);
				if (fs->state == FS_PLAIN || (fs->down & FIVC_DOWN_R))
					continue;
				if (nb) {
					r = -EAGAIN;
					goto out;
				}
				struct timespec ts = {0, 10000000};
				nanosleep(&ts, NULL);
				continue;
			}
			if (fs->ch.sig & FIVC_SIG_IO)
				fivc_fs_drain(fs, fd); /* (every write rang: channel.c "signals") */
			if (r > 0) {
				got += (size_t)r;
				r = 0;
			}
			goto out;
		}
	}
out:
	pthread_mutex_unlock(&fs->rd_lock);
	if (got)
		return (ssize_t)got;
	return r;
}

static ssize_t fs_send(struct fsock *fs, int fd, const void *buf, size_t len, int flags);

static ssize_t fs_send_held(struct fsock *fs, int fd, const void *buf, size_t len, int flags)
{
	fivc_fs_hold(fs);
	ssize_t r = fs_send(fs, fd, buf, len, flags);
	fivc_fs_down_due(fs, fd);
	fivc_fs_unhold(fs);
	return r;
}

ssize_t fivc_fs_send(struct fsock *fs, int fd, const void *buf, size_t len, int flags)
{
	fivc_sig_mark();
	return fs_send_held(fs, fd, buf, len, flags);
}

static ssize_t fs_send(struct fsock *fs, int fd, const void *buf, size_t len, int flags)
{
	if ((flags & MSG_ZEROCOPY) && fs->state == FS_ACCEL) {
		/* With SO_ZEROCOPY on, the program waits for completions on the
		 * error queue, which ring bytes never produce: ENOBUFS, as when
		 * the kernel cannot pin pages, makes it send by copy instead.
		 * Without it the kernel ignores the flag, and so do we. */
		int on = 0;
		socklen_t l = sizeof(on);
		if (fivc_real.getsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &on, &l) == 0 && on)
			return -ENOBUFS;
	}
	ssize_t r;
	if (fs->state == FS_CLIENT_PENDING && !fs->tcp_sent)
		pending_spin_once(fs, fd, flags, PENDING_SPUN_WRITE);
	if (fs_lock(fs, 1, fs->nonblock || (flags & MSG_DONTWAIT)) < 0)
		return -EAGAIN;
	__atomic_store_n(&fs->fd, fd, __ATOMIC_RELAXED);
	fivc_fs_client_check(fs, 1);
	if ((flags & MSG_OOB) && fs->state == FS_CLIENT_PENDING && !fs->pre_shared)
		/* An urgent byte over TCP before the switch would be counted in
		 * N, which the server reads in-band, where the byte is not: the
		 * connection stays TCP (or switches, if adopted meanwhile) */
		client_give_up(fs, 1);
	size_t pre = 0; /* bytes TCP took before a switch midway (pre_shared) */
	if (fs->state == FS_CLIENT_PENDING && fs->pre_shared) {
		r = client_pre_shared_send(fs, fd, buf, len, flags);
		if (r < 0 || (size_t)r == len || fs->state != FS_ACCEL) {
			pthread_mutex_unlock(&fs->wr_lock);
			return r;
		}
		pre = (size_t)r; /* the rest on the ring, with no SIGPIPE after them */
		buf = (const char *)buf + pre;
		len -= pre;
		if (pre)
			flags |= MSG_NOSIGNAL;
	}
	if (fs->state == FS_PLAIN || fs->state == FS_CLIENT_PENDING) {
		r = fivc_real.send(fd, buf, len, flags);
		if (r < 0)
			r = -errno;
		else if (fs->state == FS_CLIENT_PENDING)
			fs->tcp_sent += (uint64_t)r;
		pthread_mutex_unlock(&fs->wr_lock);
		return r;
	}
	if (fs->down & FIVC_DOWN_W) { /* leaving the ring: TCP, after the backlog (down.c) */
		r = fivc_fs_down_send(fs, fd, buf, len, flags);
		pthread_mutex_unlock(&fs->wr_lock);
		return r;
	}
	r = fivc_chan_write(&fs->ch, buf, len, chan_flags(fs, flags));
	if (r == -FIVC_EDOWN) {
		/* the peer left the ring (down.c); our side follows, then TCP */
		pthread_mutex_unlock(&fs->wr_lock);
		if (pre)
			return (ssize_t)pre;
		fivc_fs_follow(fs, fd, 0, 0);
		if (!(fs->down & FIVC_DOWN_W) && fs->state != FS_PLAIN)
			return -ECONNRESET; /* a broken peer */
		return fs_send(fs, fd, buf, len, flags);
	}
	fivc_janitor_watch(fs);
	pthread_mutex_unlock(&fs->wr_lock);
	if (r == -EPIPE && !(flags & MSG_NOSIGNAL))
		pthread_kill(pthread_self(), SIGPIPE); /* as TCP would */
	if (pre)
		return r < 0 ? (ssize_t)pre : (ssize_t)pre + r;
	return r;
}

/* Vectored forms: the ring piece by piece (a short count when a
 * non-blocking ring fills or empties, like a socket).  After the first bytes
 * a write must not raise SIGPIPE and a read takes only what is there. */
static ssize_t fs_vec_in(struct fsock *fs, int fd, const struct iovec *iov, int n, int wr,
			 int flags, int later);

static ssize_t fs_vec(struct fsock *fs, int fd, const struct iovec *iov, int n, int wr,
		      int flags, int later)
{
	fivc_sig_mark(); /* (once: a handler between pieces ends the call) */
	fivc_fs_hold(fs); /* (across the pieces: see fivc_fs_hold) */
	ssize_t r = fs_vec_in(fs, fd, iov, n, wr, flags, later);
	fivc_fs_unhold(fs);
	return r;
}

static ssize_t fs_vec_in(struct fsock *fs, int fd, const struct iovec *iov, int n, int wr,
			 int flags, int later)
{
	size_t done = 0;
	int last = n - 1; /* a write's MSG_OOB: the urgent byte is the last buffer's */
	while (last > 0 && !iov[last].iov_len)
		last--;
	for (int i = 0; i < n; i++) {
		if (!iov[i].iov_len)
			continue;
		/* after the first bytes a read takes only what is there, and
		 * leaves an error or EOF to the next call, as one tcp_recvmsg */
		if (!wr && done && !(later & MSG_WAITALL) && fivc_fs_nread(fs, fd) <= 0)
			break;
		int f = done ? later : flags;
		if (wr && i != last)
			f &= ~MSG_OOB;
		ssize_t r = wr ? fs_send_held(fs, fd, iov[i].iov_base, iov[i].iov_len, f)
			       : fs_recv_held(fs, fd, iov[i].iov_base, iov[i].iov_len, f);
		if (r < 0)
			return done ? (ssize_t)done : r;
		done += (size_t)r;
		if ((size_t)r < iov[i].iov_len)
			break;
	}
	return (ssize_t)done;
}

/* Several buffers in one piece, as the kernel treats them (issue 11):
 * - a write of up to VEC_GATHER_MAX bytes is gathered and written once, so
 *   that its bytes reach the reader together, as one sendmsg's do over TCP
 *   up to buffer space (written piece by piece, a reader woken by the first
 *   piece took "Mic" of a 26-byte message);
 * - MSG_PEEK peeks once, up to VEC_PEEK_MAX bytes, and scatters: each
 *   buffer peeked on its own was filled from the start of the stream.
 * Beyond those sizes, piece by piece (a longer peek is short). */
#define VEC_GATHER_MAX (64u * 1024)
#define VEC_PEEK_MAX (1024u * 1024)

static size_t iov_total(const struct iovec *iov, int n, int *pieces)
{
	size_t t = 0;
	*pieces = 0;
	for (int i = 0; i < n; i++)
		if (iov[i].iov_len) {
			(*pieces)++;
			t += iov[i].iov_len;
		}
	return t;
}

ssize_t fivc_fs_sendv(struct fsock *fs, int fd, const struct iovec *iov, int n, int flags)
{
	int pieces;
	size_t total = iov_total(iov, n, &pieces);
	if (!pieces) /* as TCP: the connection's error, else 0 */
		return fivc_fs_send(fs, fd, NULL, 0, flags);
	char small[1024];
	char *b = pieces < 2 || total > VEC_GATHER_MAX ? NULL
		  : total <= sizeof(small)		 ? small
							 : malloc(total);
	if (!b)
		return fs_vec(fs, fd, iov, n, 1, flags, flags | MSG_NOSIGNAL);
	for (size_t i = 0, at = 0; i < (size_t)n; at += iov[i].iov_len, i++)
		if (iov[i].iov_len)
			memcpy(b + at, iov[i].iov_base, iov[i].iov_len);
	ssize_t r = fivc_fs_send(fs, fd, b, total, flags);
	if (b != small)
		free(b);
	return r;
}

ssize_t fivc_fs_recvv(struct fsock *fs, int fd, const struct iovec *iov, int n, int flags)
{
	int pieces;
	size_t total = iov_total(iov, n, &pieces);
	if (!pieces) /* as TCP: a read of 0 bytes (EAGAIN when nothing is there) */
		return fivc_fs_recv(fs, fd, NULL, 0, flags);
	if (!(flags & MSG_PEEK) || pieces < 2)
		return fs_vec(fs, fd, iov, n, 0, flags,
			      flags & MSG_WAITALL ? flags : flags | MSG_DONTWAIT);
	size_t want = total < VEC_PEEK_MAX ? total : VEC_PEEK_MAX;
	char *b = malloc(want);
	if (!b) { /* a shorter peek: the first buffer only */
		int i = 0;
		while (!iov[i].iov_len)
			i++;
		return fivc_fs_recv(fs, fd, iov[i].iov_base, iov[i].iov_len, flags);
	}
	ssize_t r = fivc_fs_recv(fs, fd, b, want, flags);
	for (size_t i = 0, at = 0; r > 0 && i < (size_t)n && at < (size_t)r; i++) {
		size_t k = FIVC_MIN(iov[i].iov_len, (size_t)r - at);
		if (k)
			memcpy(iov[i].iov_base, b + at, k);
		at += k;
	}
	free(b);
	return r;
}

long fivc_fs_nread(struct fsock *fs, int fd)
{
	int n = 0;
	if (fs->state == FS_ACCEL && !(fs->down & FIVC_DOWN_R)) {
		ssize_t r = fivc_chan_inq(&fs->ch);
		return r < 0 ? 0 : r;
	}
	if (fivc_real.ioctl(fd, FIONREAD, &n) < 0)
		return -errno;
	if (fs->state == FS_SERVER_PRE && fs->n_known) {
		uint64_t taken = fivc_fs_pre_taken(fs, fd);
		if (taken >= fs->switch_n)
			n = 0;
		else if ((uint64_t)n > fs->switch_n - taken)
			n = (int)(fs->switch_n - taken);
	}
	if (fs->state == FS_CLIENT_PENDING &&
	    fivc_offer_poll(fs->fab, fs->offer_idx, fs->offer_word) == FIVC_OFFER_ADOPTED)
		n = 0;
	return n;
}
