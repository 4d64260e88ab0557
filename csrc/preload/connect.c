/* fastivc preload — connect() and accept(): the upgrade's first half
 * (DESIGN.md "The upgrade", steps 1 and 2), and the TCP doorbell. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fastivc/atomics.h"
#include "fastivc/util.h"
#include "preload.h"

/* ---- the TCP doorbell: the socket itself wakes a sleeping peer ---- */

/* Doorbell sends and drains count themselves while they run, and none
 * starts once the socket is leaving the ring (down.c "quiet"): the bytes
 * after its count are program data. */
static int db_enter(struct fsock *fs)
{
	__atomic_add_fetch(&fs->db_busy, 1, __ATOMIC_SEQ_CST);
	if (!__atomic_load_n(&fs->down_quiet, __ATOMIC_SEQ_CST))
		return 1;
	__atomic_sub_fetch(&fs->db_busy, 1, __ATOMIC_SEQ_CST);
	return 0;
}

static void db_leave(struct fsock *fs) { __atomic_sub_fetch(&fs->db_busy, 1, __ATOMIC_SEQ_CST); }

static void drain(struct fsock *fs, int fd);

void fivc_fs_drain(struct fsock *fs, int fd)
{
	if (fs->state != FS_ACCEL || fs->tcp_eof)
		return; /* before the switch TCP bytes may be program data */
	if (!db_enter(fs))
		return;
	drain(fs, fd);
	db_leave(fs);
}

static void drain(struct fsock *fs, int fd)
{
	char buf[256];
	for (;;) {
		ssize_t r = fivc_real.recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r > 0 && (size_t)r < sizeof(buf))
			return; /* emptied: TCP copies until its queue is empty (tcp_recvmsg), and
				 * a later byte is a new edge and wake-up; no EAGAIN call */
		if (r > 0)
			continue;
		int e = errno;
		if (r == 0) {
			/* A FIN: the peer's kernel closed its socket (it died or
			 * closed), or, with its ring shut for writing too, a client
			 * that shut down before it switched (TCP's FIN went then,
			 * after its N bytes): it is alive and reads on.
			 * (Regression, the downgrade soak: a client's SHUT_WR
			 * before its switch made the server's writes EPIPE.) */
			fs->tcp_eof = 1;
			if (!fivc_chan_peer_shut(&fs->ch))
				__atomic_store_n(&fs->ch.peer_gone, 1, __ATOMIC_RELAXED);
		} else if (e != EAGAIN && e != EINTR) {
			/* A reset.  A peer that died without closing (exit,
			 * kill) left our doorbell bytes unread in its socket, so
			 * its kernel reset where plain TCP, with nothing unread,
			 * sends a FIN: when it had read all we wrote on the ring,
			 * that is what it is (regression, tornado's
			 * test_multi_process: a server's os._exit gave its client
			 * ECONNRESET, on TCP EOF).  A close with ring bytes
			 * unread resets on the ring itself (channel.c). */
			fs->tcp_eof = 1;
			__atomic_store_n(&fs->ch.peer_gone,
					 e == ECONNRESET && fivc_chan_tx_consumed(&fs->ch) ? 1 : 2,
					 __ATOMIC_RELAXED);
		}
		return;
	}
}

static int tcp_db_poll(struct fsock *fs, uint32_t *word, uint32_t expected,
		       uint32_t timeout_ms, int others)
{
	if (fivc_load_acquire(word) != expected)
		return 0;
	if (fs->state != FS_ACCEL) {
		/* The server still has the client's pre-switch bytes on TCP: the
		 * socket is readable for them, not for a doorbell.  Nap briefly,
		 * watching only for the client's FIN or RST: then -ETIMEDOUT
		 * makes the channel ask its liveness now (a FIN alone may be a
		 * shutdown before the switch, not a death). */
		struct pollfd p = {.fd = __atomic_load_n(&fs->fd, __ATOMIC_RELAXED),
				   .events = POLLRDHUP};
		int saved = errno;
		int r = fivc_sig_poll(&p, p.fd >= 0, timeout_ms < 1 ? (int)timeout_ms : 1);
		int e = errno;
		errno = saved;
		if (r < 0 && e == EINTR)
			return -EINTR;
		return r > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) ? -ETIMEDOUT : 0;
	}
	if (fs->tcp_eof)
		return -ETIMEDOUT; /* let the channel re-check and see peer_gone */
	struct pollfd p = {.fd = __atomic_load_n(&fs->fd, __ATOMIC_RELAXED), .events = POLLIN};
	int saved = errno;
	int r = fivc_sig_poll(&p, 1, others && timeout_ms > 1 ? 1 : (int)timeout_ms);
	int e = errno;
	errno = saved;
	if (r < 0)
		return e == EINTR ? -EINTR : 0;
	if (r == 0) /* (a 1 ms look may find the word moved: woken meanwhile) */
		return fivc_load_acquire(word) != expected ? 0 : -ETIMEDOUT;
	if (p.revents & POLLNVAL)
		return 0; /* closed by another thread while we slept (sock.c keeps
			   * the socket for us): look again, on fs->fd */
	fivc_fs_drain(fs, p.fd);
	return 0;
}

/* Several threads asleep on one socket (a reader and a writer): the byte
 * that wakes one may be drained by another just before the first enters
 * poll, which would then sleep until its timeout.  A sleeper counts itself
 * before it checks the word and until it has drained, and while it is not
 * alone it looks again every millisecond. */
static int tcp_db_wait(void *ctx, uint32_t *word, uint32_t expected, uint32_t timeout_ms)
{
	struct fsock *fs = ctx;
	int others = __atomic_fetch_add(&fs->db_waiters, 1, __ATOMIC_ACQ_REL);
	int r = tcp_db_poll(fs, word, expected, timeout_ms, others);
	__atomic_sub_fetch(&fs->db_waiters, 1, __ATOMIC_ACQ_REL);
	/* A handler ran: the kernel's recv or send goes on where every one
	 * that ran had SA_RESTART and the socket has no timeout for the
	 * direction (signal(7)); the channel looks again then. */
	if (r == -EINTR &&
	    fivc_sig_restarts(word == &fs->ch.tx->prod_wake ? fs->ch.wr_timeout_ns
							      : fs->ch.rd_timeout_ns))
		return 0;
	return r;
}

static void tcp_db_send(struct fsock *fs, int flags)
{
	int fd = __atomic_load_n(&fs->fd, __ATOMIC_RELAXED);
	if (fd < 0)
		return; /* closing: the FIN wakes the peer */
	/* A client before its switch: every byte it puts on TCP is one of
	 * the N the server reads as program data, and N is not published
	 * yet, so no doorbell may go (the ring's shutdown of a pending
	 * client, an SO_RCVBUF that grew).  What such a bell would say, TCP
	 * says itself (the FIN), or the waiter's liveness nap finds it.
	 * (Regression, the downgrade soak, about 1 run in 60: a client that
	 * shut down writing before its switch rang for the server's armed
	 * ring, and the server read the byte after the client's 3,978,462
	 * pre-switch bytes as a zero in its stream.) */
	if (fs->side == FIVC_SIDE_CLIENT &&
	    __atomic_load_n(&fs->state, __ATOMIC_RELAXED) == FS_CLIENT_PENDING)
		return;
	int saved = errno;
	if (!__atomic_load_n(&fs->nodelay_forced, __ATOMIC_ACQUIRE)) {
		/* After the switch no program data crosses TCP, so Nagle only
		 * delays doorbells (see preload.h). */
		int v = 0, one = 1;
		socklen_t l = sizeof(v);
		if (fivc_real.getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &l) == 0) {
			fs->app_nodelay = v;
			if (!v)
				fivc_real.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		}
		__atomic_store_n(&fs->nodelay_forced, 1, __ATOMIC_RELEASE);
	}
	if (db_enter(fs)) {
		fivc_real.send(fd, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL | flags);
		db_leave(fs);
	}
	errno = saved; /* a full send buffer already holds a byte the peer will see */
}

static void tcp_db_wake(void *ctx, uint32_t *word)
{
	(void)word;
	tcp_db_send(ctx, 0);
}

/* Out of band: the peer's kernel raises SIGURG at its owner.  The peer's
 * drain reads past the byte (inline or not), as any doorbell's. */
static void tcp_db_wake_urgent(void *ctx) { tcp_db_send(ctx, MSG_OOB); }

static int tcp_db_stop_spin(void *ctx)
{
	(void)ctx;
	return fivc_sig_came();
}

static const struct fivc_doorbell tcp_doorbell = {tcp_db_wait, tcp_db_wake, tcp_db_wake_urgent,
						  tcp_db_stop_spin};

/* ---- 4-tuples ---- */

static uint32_t netns_id(void)
{
	static uint32_t id;
	if (!id) {
		struct stat st;
		id = stat("/proc/self/ns/net", &st) == 0 ? (uint32_t)st.st_ino : 1;
	}
	return id;
}

static int sa_addr(const struct sockaddr_storage *ss, uint8_t out[16], uint16_t *port)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
		memset(out, 0, 10);
		out[10] = out[11] = 0xff;
		memcpy(out + 12, &s->sin_addr, 4);
		*port = ntohs(s->sin_port);
		return 0;
	}
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
		memcpy(out, &s->sin6_addr, 16);
		*port = ntohs(s->sin6_port);
		return 0;
	}
	return -EAFNOSUPPORT;
}

static int is_loopback(const uint8_t a[16])
{
	static const uint8_t v6lo[16] = {[15] = 1};
	static const uint8_t v4m[12] = {[10] = 0xff, [11] = 0xff};
	return !memcmp(a, v6lo, 16) || (!memcmp(a, v4m, 12) && a[12] == 127);
}

static int is_unspecified(const uint8_t a[16])
{
	static const uint8_t z[16], v4m[16] = {[10] = 0xff, [11] = 0xff};
	return !memcmp(a, z, 16) || !memcmp(a, v4m, 16);
}

/* Loopback addresses only name a peer within one network namespace: two
 * containers may both connect 127.0.0.1:6379 -> 127.0.0.1:6379 with the same
 * ports.  Their keys carry the namespace so they can never match. */
static void tuple_finish(struct fivc_tuple *t)
{
	t->pad = is_loopback(t->daddr) ? netns_id() : 0;
}

/* ---- connect ---- */

/* (the answer is kept in the fd's kind: an inherited listener is asked
 * once, not at every accept) */
static int tcp_stream(int fd)
{
	int k = fivc_fd_kind(fd);
	if (k)
		return k == FIVC_KIND_TCP;
	int type = 0, proto = 0, e = errno;
	socklen_t l = sizeof(type);
	int tcp = fivc_real.getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) == 0 &&
		  type == SOCK_STREAM;
	l = sizeof(proto);
	tcp = tcp && fivc_real.getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l) == 0 &&
	      proto == IPPROTO_TCP;
	if (tcp || type) /* (a failed look, e.g. EBADF, says nothing) */
		fivc_fd_set_kind(fd, (fivc_fd_bits(fd) & FIVC_FD_OPTS) |
					     (tcp ? FIVC_KIND_TCP : FIVC_KIND_OTHER));
	errno = e;
	return tcp;
}

/* ---- listeners (layout.h "listener"): a client posts an offer only for a
 * destination some accelerated process listens on ---- */

/* Our registrations, by listening fd.  `pid` is who registered: a fork
 * child inherits the table but closing its copy of the listener (a
 * fork-per-connection server does) must not withdraw its parent's entry. */
#define LREGS 256
static struct {
	int fd;
	pid_t pid;
	uint32_t idx;
	uint64_t word;
	/* its address when bound to a specific one: then every accepted
	 * connection's local address (getsockname saved per accept) */
	struct sockaddr_storage local;
	socklen_t local_len; /* 0: a wildcard address */
} lregs[LREGS];
static int nlregs;
static pthread_mutex_t lreg_lock = PTHREAD_MUTEX_INITIALIZER;

static int listen_key(int fd, uint8_t addr[16], uint16_t *port, struct sockaddr_storage *ss,
		      socklen_t *l)
{
	*l = sizeof(*ss);
	if (getsockname(fd, (struct sockaddr *)ss, l) < 0 || sa_addr(ss, addr, port) < 0 ||
	    !*port)
		return -1;
	return 0;
}

/* fd listens, or is about to (listen(): see fivc_listen_note), or
 * accept() found a listener we had not seen (inherited through exec, or
 * our entry was collected).  Caller holds lreg_lock; k is fd's
 * registration or -1.  1 when the entry is in, else 0 (no port yet). */
static int listener_register(struct fivc_fabric *fab, int fd, int k)
{
	uint8_t addr[16];
	uint16_t port;
	uint32_t idx;
	uint64_t word;
	struct sockaddr_storage ss;
	socklen_t sl;
	if (listen_key(fd, addr, &port, &ss, &sl) < 0)
		return 0;
	int r = fivc_listener_add(fab, addr, port, netns_id(), &idx, &word);
	if (r < 0) {
		FIVC_INFO("fd %d: listener table full for port %u: clients stay plain", fd, port);
		return 0;
	}
	if (k < 0 && nlregs < LREGS)
		k = nlregs++;
	if (k < 0)
		return 1; /* registered, not tracked: it goes when we do (gc) */
	lregs[k].fd = fd;
	lregs[k].pid = fivc_pid;
	lregs[k].idx = idx;
	lregs[k].word = word;
	lregs[k].local = ss;
	lregs[k].local_len = is_unspecified(addr) ? 0 : sl;
	FIVC_DEBUG("fd %d: listening on port %u (listener entry %u)", fd, port, idx);
	return 1;
}

static int lreg_find(int fd)
{
	for (int k = 0; k < nlregs; k++)
		if (lregs[k].fd == fd)
			return k;
	return -1;
}

int fivc_listen_note(int fd)
{
	struct fivc_fabric *fab;
	if (fivc_cfg.disabled || FIVC_GUARDED() || !tcp_stream(fd) || !(fab = fivc_fabric_new_conn()))
		return 0;
	int e = errno;
	pthread_mutex_lock(&lreg_lock);
	int r = listener_register(fab, fd, lreg_find(fd));
	pthread_mutex_unlock(&lreg_lock);
	errno = e;
	return r;
}

/* A fork child holds copies of our listeners: closing ours no longer
 * means nobody listens (a server that listens, forks its acceptor and
 * closes its own copy).  Those entries stay until gc finds their owner
 * dead, or an accepting child lists the listener again. */
void fivc_listen_forked(void)
{
	if (!__atomic_load_n(&nlregs, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&lreg_lock);
	for (int k = 0; k < nlregs; k++)
		lregs[k].pid = 0; /* nobody's to withdraw */
	pthread_mutex_unlock(&lreg_lock);
}

/* Before an accept: our entry for lfd is still there (one load), else it
 * is made again.  Returns the length of its specific local address, copied
 * to *local, or 0 (a wildcard; not registered). */
static socklen_t listener_ensure(struct fivc_fabric *fab, int lfd, struct sockaddr_storage *local)
{
	pthread_mutex_lock(&lreg_lock);
	int k = lreg_find(lfd);
	if (k < 0 || !fivc_listener_valid(fab, lregs[k].idx, lregs[k].word))
		listener_register(fab, lfd, k);
	socklen_t l = 0;
	if ((k = lreg_find(lfd)) >= 0 && (l = lregs[k].local_len))
		*local = lregs[k].local;
	pthread_mutex_unlock(&lreg_lock);
	return l;
}

/* fd is closed or replaced: its registration goes, and our entry with it
 * unless another of our fds registered the same key (the same entry). */
void fivc_listen_forget(int fd)
{
	if (!__atomic_load_n(&nlregs, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&lreg_lock);
	int k = lreg_find(fd);
	if (k >= 0) {
		uint32_t idx = lregs[k].idx;
		uint64_t word = lregs[k].word;
		int mine = lregs[k].pid == fivc_pid;
		lregs[k] = lregs[--nlregs];
		for (int j = 0; j < nlregs; j++)
			if (lregs[j].idx == idx && lregs[j].word == word)
				mine = 0;
		struct fivc_fabric *fab = mine ? fivc_fabric_get() : NULL;
		if (fab)
			fivc_listener_remove(fab, idx, word);
	}
	pthread_mutex_unlock(&lreg_lock);
}

void fivc_listen_forget_all(void)
{
	for (;;) {
		pthread_mutex_lock(&lreg_lock);
		int fd = nlregs ? lregs[0].fd : -1;
		pthread_mutex_unlock(&lreg_lock);
		if (fd < 0)
			return;
		fivc_listen_forget(fd);
	}
}

static int route_lookup(int family, const struct sockaddr *dst, socklen_t len,
			struct sockaddr_storage *src);

/* The source address the kernel will pick for dst (a UDP "connect" asks the
 * routing table without sending anything). */
/* A small cache of those answers (a route lookup costs a socket and three
 * syscalls per connection); entries live one second. */
#define ROUTE_CACHE 16
static struct {
	uint8_t dst[16];
	int family;
	uint64_t when;
	struct sockaddr_storage src;
} route_cache[ROUTE_CACHE];
static pthread_mutex_t route_lock = PTHREAD_MUTEX_INITIALIZER;

static int route_source(int family, const struct sockaddr *dst, socklen_t len,
			struct sockaddr_storage *src)
{
	struct sockaddr_storage d = {0};
	uint8_t key[16];
	uint16_t port;
	memcpy(&d, dst, len < sizeof(d) ? len : sizeof(d));
	uint64_t now = fivc_now_ns(CLOCK_MONOTONIC);
	int hit = 0;
	unsigned h = 0;
	if (sa_addr(&d, key, &port) == 0) {
		for (int i = 0; i < 16; i++)
			h = h * 31 + key[i];
		h %= ROUTE_CACHE;
		pthread_mutex_lock(&route_lock);
		if (route_cache[h].family == family && !memcmp(route_cache[h].dst, key, 16) &&
		    now - route_cache[h].when < 1000000000ull) {
			*src = route_cache[h].src;
			hit = 1;
		}
		pthread_mutex_unlock(&route_lock);
		if (hit)
			return 0;
	}
	int r = route_lookup(family, dst, len, src);
	if (r == 0 && sa_addr(&d, key, &port) == 0) {
		pthread_mutex_lock(&route_lock);
		memcpy(route_cache[h].dst, key, 16);
		route_cache[h].family = family;
		route_cache[h].when = now;
		route_cache[h].src = *src;
		pthread_mutex_unlock(&route_lock);
	}
	return r;
}

static int route_lookup(int family, const struct sockaddr *dst, socklen_t len,
			struct sockaddr_storage *src)
{
	int s = fivc_real.socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	socklen_t sl = sizeof(*src);
	int r = 0;
	if (fivc_real.connect(s, dst, len) < 0 || getsockname(s, (struct sockaddr *)src, &sl) < 0)
		r = -errno;
	fivc_real.close(s);
	return r;
}

struct fsock *fivc_fs_new(struct fivc_fabric *fab, int fd, int side)
{
	struct fsock *fs = calloc(1, sizeof(*fs));
	if (!fs)
		return NULL;
	fs->refs = 1;
	fs->kept_fd = -1;
	fs->fd = fd;
	fs->side = side;
	fs->fab = fab;
	pthread_mutex_init(&fs->rd_lock, NULL);
	pthread_mutex_init(&fs->wr_lock, NULL);
	pthread_mutex_init(&fs->ctl_lock, NULL);
	fivc_down_watch(fab);
	return fs;
}

int fivc_fs_open_chan(struct fsock *fs)
{
	int r = fivc_chan_open(&fs->ch, fs->fab, fs->slot, fs->gen, fs->side);
	if (r < 0)
		return r;
	fs->ch.spin_ns = fivc_cfg.spin_ns;
	fs->ch.db = &tcp_doorbell;
	fs->ch.db_ctx = fs;
	fivc_fs_take_sockopts(fs, fs->fd, fivc_fd_bits(fs->fd) & FIVC_FD_OPTS);
	return 0;
}

static uint64_t tv_ns(const struct timeval *tv)
{
	return (uint64_t)tv->tv_sec * 1000000000ull + (uint64_t)tv->tv_usec * 1000ull;
}

/* One option, as the kernel holds it now, into the channel. */
static void take_opt(struct fsock *fs, int fd, int name)
{
	int v;
	struct timeval tv;
	struct linger lg;
	socklen_t l = sizeof(v);
	switch (name) {
	case SO_RCVTIMEO:
	case SO_SNDTIMEO:
		l = sizeof(tv);
		if (fivc_real.getsockopt(fd, SOL_SOCKET, name, &tv, &l) == 0)
			*(name == SO_RCVTIMEO ? &fs->ch.rd_timeout_ns : &fs->ch.wr_timeout_ns) =
				tv_ns(&tv);
		break;
	case SO_OOBINLINE:
		if (fivc_real.getsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &v, &l) == 0)
			fs->ch.oob_inline = v != 0;
		break;
	case SO_LINGER:
		l = sizeof(lg);
		if (fivc_real.getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &l) == 0)
			fs->ch.linger0 = lg.l_onoff && !lg.l_linger;
		break;
	case SO_RCVLOWAT:
		if (fivc_real.getsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, &l) == 0)
			__atomic_store_n(&fs->ch.rcvlowat, v > 0 ? (uint32_t)v : 1u, __ATOMIC_RELAXED);
		break;
	case SO_SNDBUF:
		if (fivc_real.getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, &l) == 0 && v > 0)
			__atomic_store_n(&fs->ch.sndbuf, (uint64_t)v, __ATOMIC_RELAXED);
		break;
	case SO_RCVBUF:
		if (fs->ch.f && fs->state != FS_PLAIN &&
		    fivc_real.getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, &l) == 0 && v > 0)
			fivc_chan_set_rcvbuf(&fs->ch, (uint32_t)v);
		break;
	}
}

static const int misc_opts[] = {SO_RCVTIMEO, SO_SNDTIMEO, SO_OOBINLINE, SO_LINGER, SO_RCVLOWAT};

/* The options the program set (bits: FIVC_FD_SNDBUF, _RCVBUF, _MISCOPT), as
 * the kernel holds them, made the channel's: set before connect() or on a
 * listener (which its connections inherit) they were the kernel's only
 * (regression, issue 11: SO_RCVTIMEO set before connect, or inherited
 * from the listener, was ignored after the switch). */
void fivc_fs_take_sockopts(struct fsock *fs, int fd, int bits)
{
	if (!bits || fd < 0)
		return;
	int saved = errno;
	if (bits & FIVC_FD_MISCOPT) {
		for (size_t i = 0; i < sizeof(misc_opts) / sizeof(misc_opts[0]); i++)
			take_opt(fs, fd, misc_opts[i]);
		fivc_fs_take_signals(fs, fd);
	}
	if (bits & FIVC_FD_SNDBUF)
		take_opt(fs, fd, SO_SNDBUF);
	if (bits & FIVC_FD_RCVBUF)
		take_opt(fs, fd, SO_RCVBUF);
	errno = saved;
}

/* The program just set SOL_SOCKET option name on an fsock's fd: that one
 * (the kernel rounds and doubles), not every option of its kind. */
void fivc_fs_take_sockopt(struct fsock *fs, int fd, int name)
{
	int saved = errno;
	switch (name) {
	case SO_SNDBUFFORCE:
		name = SO_SNDBUF;
		break;
	case SO_RCVBUFFORCE:
		name = SO_RCVBUF;
		break;
#ifdef SO_RCVTIMEO_NEW
	case SO_RCVTIMEO_NEW:
		name = SO_RCVTIMEO; /* (read back as a timeval either way) */
		break;
	case SO_SNDTIMEO_NEW:
		name = SO_SNDTIMEO;
		break;
#endif
	}
	take_opt(fs, fd, name);
	errno = saved;
}

/* The signals the program asked for on fd (O_ASYNC, F_SETOWN), as the
 * kernel holds them, made the channel's (channel.c "signals"): the peer's
 * writes then ring our doorbell, for which our kernel raises them. */
void fivc_fs_take_signals(struct fsock *fs, int fd)
{
	if (!fs->ch.f || fs->state == FS_PLAIN || fd < 0)
		return;
	int saved = errno;
	struct f_owner_ex o = {0};
	int fl = fivc_real.fcntl(fd, F_GETFL);
	if (fl >= 0 && fivc_real.fcntl(fd, F_GETOWN_EX, &o) == 0) {
		uint32_t sig = o.pid ? FIVC_SIG_URG | ((fl & O_ASYNC) ? FIVC_SIG_IO : 0) : 0;
		if (sig != fs->ch.sig)
			fivc_chan_set_signals(&fs->ch, sig);
	}
	errno = saved;
}

/* Post an offer for fd's connection to addr; returns the new fsock or NULL
 * (then the connection simply stays plain). */
static struct fsock *client_offer(int fd, const struct sockaddr *addr, socklen_t len)
{
	if (!addr || (addr->sa_family != AF_INET && addr->sa_family != AF_INET6) ||
	    fivc_fs(fd) || !tcp_stream(fd))
		return NULL;
	int unbound = (fivc_fd_bits(fd) & FIVC_FD_UNBOUND) != 0;
	int nb = fivc_fd_nonblock(fd);
	if (nb < 0 || (nb && !fivc_cfg.nonblock_ok))
		return NULL; /* non-blocking sockets stay plain unless enabled */
	struct fivc_fabric *fab = fivc_fabric_new_conn();
	if (!fab)
		return NULL;
	struct sockaddr_storage src, dst;
	socklen_t sl = sizeof(src);
	memset(&dst, 0, sizeof(dst));
	memcpy(&dst, addr, len < sizeof(dst) ? len : sizeof(dst));
	struct fivc_tuple t = {0};
	uint16_t sport = 0, dport;
	if (sa_addr(&dst, t.daddr, &dport) < 0)
		return NULL;
	if (!fivc_listener_match(fab, t.daddr, dport, is_loopback(t.daddr), netns_id())) {
		/* nobody accelerated listens there: plain, at plain TCP's cost */
		FIVC_DEBUG("fd %d: no accelerated listener on port %u: plain TCP", fd, dport);
		return NULL;
	}
	if (unbound) { /* (no need to ask: nothing bound it) */
		memset(&src, 0, sizeof(src));
		src.ss_family = addr->sa_family;
	} else if (getsockname(fd, (struct sockaddr *)&src, &sl) < 0) {
		return NULL;
	}
	sa_addr(&src, t.saddr, &sport);
	if (!sport || is_unspecified(t.saddr)) {
		/* Learn the source address and port before the SYN leaves. */
		struct sockaddr_storage rs;
		if (route_source(addr->sa_family, addr, len, &rs) < 0)
			return NULL;
		/* bound to a wildcard address with a port: keep the port */
		if (rs.ss_family == AF_INET)
			((struct sockaddr_in *)&rs)->sin_port = htons(sport);
		else
			((struct sockaddr_in6 *)&rs)->sin6_port = htons(sport);
		if (!sport && bind(fd, (struct sockaddr *)&rs,
				   rs.ss_family == AF_INET ? sizeof(struct sockaddr_in)
							   : sizeof(struct sockaddr_in6)) < 0) {
			FIVC_DEBUG("fd %d: bind before connect failed (%s): plain", fd, strerror(errno));
			return NULL;
		}
		sl = sizeof(src);
		if (getsockname(fd, (struct sockaddr *)&src, &sl) < 0)
			return NULL;
		if (sport)
			memcpy(&src, &rs, sizeof(rs));
		if (sa_addr(&src, t.saddr, &sport) < 0 || !sport)
			return NULL;
	}
	t.sport = sport;
	t.dport = dport;
	tuple_finish(&t);
	struct fsock *fs = fivc_fs_new(fab, fd, FIVC_SIDE_CLIENT);
	if (!fs)
		return NULL;
	uint64_t nonce = ((uint64_t)random() << 32) ^ (uint64_t)random() ^ fivc_now_ns(CLOCK_MONOTONIC);
	if (fivc_slot_claim(fab, &t, nonce, &fs->slot, &fs->gen) < 0) {
		FIVC_DEBUG("fd %d: no free channel slot: plain", fd);
		free(fs);
		return NULL;
	}
	if (fivc_fs_open_chan(fs) < 0 ||
	    fivc_offer_post(fab, &t, nonce, fs->slot, fs->gen, &fs->offer_idx, &fs->offer_word) < 0) {
		FIVC_DEBUG("fd %d: offer registry full: plain", fd);
		fivc_slot_release(fab, fs->slot, fs->gen, FIVC_SIDE_CLIENT);
		free(fs);
		return NULL;
	}
	fs->state = FS_CLIENT_PENDING;
	fs->nonblock = nb;
	FIVC_DEBUG("fd %d: offer %u posted for port %u -> %u (slot %u)", fd, fs->offer_idx,
		   t.sport, t.dport, fs->slot);
	return fs;
}

int fivc_do_connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct fsock *fs = fivc_cfg.disabled || FIVC_GUARDED() ? NULL : client_offer(fd, addr, len);
	if (fs)
		fivc_fd_set(fd, fs);
	fivc_fd_clear_bits(fd, FIVC_FD_UNBOUND);
	int r = fivc_real.connect(fd, addr, len);
	if (r < 0 && fs && errno != EINTR && errno != EINPROGRESS) {
		int e = errno;
		fivc_fd_set(fd, NULL);
		fivc_fs_release(fs);
		errno = e;
	} else if (fs) {
		/* sets it was added to before (nginx's upstreams): now ours; what
		 * the kernel reported meanwhile was TCP's, and the MOD looks again */
		fivc_epoll_took_fd(fd);
	}
	return r;
}

/* ---- accept ---- */

/* A blocking accept() spins a while on the listener before it sleeps, as a
 * read spins on its ring: a server that serves one short connection after
 * another otherwise sleeps in accept() and pays a wake-up per connection,
 * the largest cost left once the request and response cross the ring.
 * Only a process whose accepted connections were accelerated spins
 * (accept_accel), and only while connections have been coming sooner than
 * the spin budget: accept_gap is a running mean of how long a blocking
 * accept() waited.  (Halving the budget after each miss, as pending_spin
 * does, measured worse here: one late client halved it below the usual gap
 * and it never recovered.)  Every FIVC_SPIN_PROBE-th accept spins anyway,
 * so a server whose clients speed up starts spinning again.
 * The budget is FIVC_ACCEPT_SPIN_X times a read's: between two accepts a
 * client closes, opens, binds and connects (the handshake runs in its
 * connect()), which took 60-120 us here, past a read's 50 us, so the
 * server slept in accept() for every connection; with 200 us it sleeps for
 * about one in five and `fastivc bench connect --loopback` went from 1.1x
 * to 1.3-1.5x (session 10).  A prefork server's idle workers stop soon:
 * all but one lose the race for the connection and sleep in accept(),
 * which lengthens their measured gap. */
#define FIVC_ACCEPT_SPIN_X 4
static uint64_t accept_gap = UINT64_MAX / 8;
static unsigned accept_probe;
static int accept_accel;

/* A listener's SO_RCVTIMEO (an accept under one is not restarted), in ns */
static uint64_t rcv_timeout(int lfd)
{
	struct timeval tv = {0};
	socklen_t l = sizeof(tv);
	int saved = errno;
	if (fivc_real.getsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, &l) < 0)
		tv.tv_sec = tv.tv_usec = 0;
	errno = saved;
	return tv_ns(&tv);
}

/* Returns when the spin began (0: no spin, no measure). */
static uint64_t accept_spin(int lfd)
{
	uint64_t budget = fivc_cfg.spin_ns * FIVC_ACCEPT_SPIN_X;
	if (!__atomic_load_n(&accept_accel, __ATOMIC_RELAXED) || !budget)
		return 0;
	uint64_t start = fivc_now_ns(CLOCK_MONOTONIC);
	if (__atomic_load_n(&accept_gap, __ATOMIC_RELAXED) > budget &&
	    __atomic_add_fetch(&accept_probe, 1, __ATOMIC_RELAXED) % FIVC_SPIN_PROBE)
		return start; /* measured, not spun */
	int saved = errno;
	for (unsigned i = 0;; i++) {
		if (!(i & 31)) {
			struct pollfd p = {.fd = lfd, .events = POLLIN};
			if (fivc_real.poll(&p, 1, 0) != 0 || fivc_sig_came() ||
			    fivc_now_ns(CLOCK_MONOTONIC) - start >= budget)
				break; /* a connection (or an error accept() will give);
					* a handler ran (the caller sees it); time up */
		}
		fivc_cpu_relax();
	}
	errno = saved;
	return start;
}

static void accept_waited(uint64_t start)
{
	if (!start)
		return;
	uint64_t gap = fivc_now_ns(CLOCK_MONOTONIC) - start, g = __atomic_load_n(&accept_gap, __ATOMIC_RELAXED);
	if (g > UINT64_MAX / 16)
		g = gap;
	__atomic_store_n(&accept_gap, (g * 3 + gap) / 4, __ATOMIC_RELAXED);
}

int fivc_do_accept(int lfd, struct sockaddr *addr, socklen_t *len, int flags, int use4)
{
	struct fivc_fabric *lfab;
	struct sockaddr_storage local;
	socklen_t l1 = 0;
	if (!fivc_cfg.disabled && !FIVC_GUARDED() && tcp_stream(lfd) &&
	    (lfab = fivc_fabric_new_conn())) {
		int e = errno;
		l1 = listener_ensure(lfab, lfd, &local);
		errno = e;
	}
	int lfl = -1;
	uint64_t spun = 0;
	if (!fivc_cfg.disabled && !FIVC_GUARDED()) {
		lfl = fivc_fd_nonblock(lfd);
		if (lfl == 0) {
			fivc_sig_mark();
			spun = accept_spin(lfd);
			/* a handler that ran in the spin ends the accept as
			 * it would the kernel's sleep in it (sig.c) */
			if (fivc_sig_came() && !fivc_sig_restarts(rcv_timeout(lfd)))
				return (int)fivc_ret(-EINTR);
		}
	}
	int fd = use4 ? fivc_real.accept4(lfd, addr, len, flags) : fivc_real.accept(lfd, addr, len);
	if (fd >= 0)
		accept_waited(spun);
	if (fd >= 0)
		fivc_fd_set_kind(fd, fivc_fd_kind(lfd) | (fivc_fd_bits(lfd) & FIVC_FD_OPTS) |
					     FIVC_FD_NBKNOWN |
					     (flags & SOCK_NONBLOCK ? FIVC_FD_NB : 0));
	if (fd < 0 || fivc_cfg.disabled || FIVC_GUARDED() ||
	    ((flags & SOCK_NONBLOCK) && !fivc_cfg.nonblock_ok))
		return fd;
	int saved = errno;
	/* An event-loop server (non-blocking listener) stays plain until the
	 * event-loop work lands: it would make the socket non-blocking and
	 * watch it with epoll. */
	struct fivc_fabric *fab;
	if (fivc_cfg.disabled || FIVC_GUARDED() ||
	    (lfl < 0 && (lfl = fivc_fd_nonblock(lfd)) < 0) || (lfl && !fivc_cfg.nonblock_ok) ||
	    !(fab = fivc_fabric_new_conn()))
		goto plain;
	struct sockaddr_storage peer;
	socklen_t l2 = sizeof(peer);
	struct fivc_tuple t = {0};
	if ((!l1 && (l1 = sizeof(local), getsockname(fd, (struct sockaddr *)&local, &l1) < 0)) ||
	    getpeername(fd, (struct sockaddr *)&peer, &l2) < 0 ||
	    sa_addr(&peer, t.saddr, &t.sport) < 0 || sa_addr(&local, t.daddr, &t.dport) < 0 ||
	    !tcp_stream(fd))
		goto plain;
	tuple_finish(&t);
	struct fivc_offer_view v;
	int r = fivc_offer_lookup(fab, &t, &v);
	if (r < 0) {
		if (r == -EEXIST)
			FIVC_INFO("fd %d: several offers match port %u -> %u: plain", fd, t.sport, t.dport);
		else
			FIVC_DEBUG("fd %d: no offer for port %u -> %u: plain", fd, t.sport, t.dport);
		goto plain;
	}
	struct fsock *fs = fivc_fs_new(fab, fd, FIVC_SIDE_SERVER);
	if (!fs)
		goto plain;
	fs->nonblock = (flags & SOCK_NONBLOCK) != 0;
	fs->slot = v.slot;
	fs->gen = v.slot_gen;
	if ((r = fivc_offer_adopt(fab, &v)) < 0) {
		FIVC_DEBUG("fd %d: cannot adopt offer %u (slot %u): %s: plain", fd, v.idx, v.slot,
			   strerror(-r));
		free(fs);
		goto plain;
	}
	if (fivc_fs_open_chan(fs) < 0) {
		/* The offer is adopted: the client will switch.  A slot we cannot
		 * use is a broken peer; make the connection fail loudly. */
		fs->ch.f = NULL;
		fs->state = FS_ACCEL;
		fs->ch.broken = 1;
	} else {
		fs->state = FS_SERVER_PRE;
	}
	/* No adoption doorbell (see io.c): a client blocked in a TCP read has
	 * armed its ring and wakes on our first ring write. */
	fivc_fd_set(fd, fs);
	if (!accept_accel)
		__atomic_store_n(&accept_accel, 1, __ATOMIC_RELAXED);
	FIVC_DEBUG("fd %d: adopted offer %u (slot %u) for port %u -> %u", fd, v.idx, v.slot,
		   t.sport, t.dport);
plain:
	errno = saved;
	return fd;
}
