/* fastivc — the LD_PRELOAD interposer: shared declarations.
 *
 * Init order (each step needs the previous one):
 *   1. real-function table  (dlsym(RTLD_NEXT)); everything calls through it
 *   2. configuration        (environment: FASTIVC_*; logging needs it)
 *   3. logging              (writes with real.write)
 *   4. fd table             (sized from RLIMIT_NOFILE)
 * The fabric is opened lazily, at the first eligible connect()/accept(), so a
 * program that never uses TCP never creates one.
 */
#ifndef FASTIVC_PRELOAD_H
#define FASTIVC_PRELOAD_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <stdio.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "fastivc/channel.h"
#include "fastivc/fabric.h"

#define FIVC_EXPORT __attribute__((visibility("default")))

/* ---- 1. the real functions ---- */
#define FIVC_REAL_CALLS(X)                                                                    \
	X(int, socket, (int, int, int))                                                       \
	X(int, connect, (int, const struct sockaddr *, socklen_t))                            \
	X(int, accept, (int, struct sockaddr *, socklen_t *))                                 \
	X(int, accept4, (int, struct sockaddr *, socklen_t *, int))                           \
	X(ssize_t, read, (int, void *, size_t))                                               \
	X(ssize_t, write, (int, const void *, size_t))                                        \
	X(ssize_t, readv, (int, const struct iovec *, int))                                   \
	X(ssize_t, writev, (int, const struct iovec *, int))                                  \
	X(ssize_t, recv, (int, void *, size_t, int))                                          \
	X(ssize_t, recvfrom, (int, void *, size_t, int, struct sockaddr *, socklen_t *))      \
	X(ssize_t, recvmsg, (int, struct msghdr *, int))                                      \
	X(ssize_t, send, (int, const void *, size_t, int))                                    \
	X(ssize_t, sendto, (int, const void *, size_t, int, const struct sockaddr *, socklen_t)) \
	X(ssize_t, sendmsg, (int, const struct msghdr *, int))                                \
	X(ssize_t, sendfile, (int, int, off_t *, size_t))                                     \
	X(ssize_t, sendfile64, (int, int, off_t *, size_t))                                   \
	X(ssize_t, splice, (int, loff_t *, int, loff_t *, size_t, unsigned int))              \
	X(int, close, (int))                                                                  \
	X(int, close_range, (unsigned int, unsigned int, int))                                \
	X(void, closefrom, (int))                                                             \
	X(int, shutdown, (int, int))                                                          \
	X(int, bind, (int, const struct sockaddr *, socklen_t))                               \
	X(int, listen, (int, int))                                                            \
	X(int, dup, (int))                                                                    \
	X(int, dup2, (int, int))                                                              \
	X(int, dup3, (int, int, int))                                                         \
	X(int, fcntl, (int, int, ...))                                                        \
	X(int, fcntl64, (int, int, ...))                                                      \
	X(int, ioctl, (int, unsigned long, ...))                                              \
	X(int, setsockopt, (int, int, int, const void *, socklen_t))                          \
	X(int, getsockopt, (int, int, int, void *, socklen_t *))                              \
	X(int, poll, (struct pollfd *, nfds_t, int))                                          \
	X(int, ppoll, (struct pollfd *, nfds_t, const struct timespec *, const sigset_t *))   \
	X(int, select, (int, fd_set *, fd_set *, fd_set *, struct timeval *))                 \
	X(int, pselect, (int, fd_set *, fd_set *, fd_set *, const struct timespec *,          \
			 const sigset_t *))                                                   \
	X(int, epoll_ctl, (int, int, int, struct epoll_event *))                              \
	X(int, epoll_wait, (int, struct epoll_event *, int, int))                              \
	X(int, epoll_pwait, (int, struct epoll_event *, int, int, const sigset_t *))          \
	X(int, epoll_pwait2, (int, struct epoll_event *, int, const struct timespec *,        \
			      const sigset_t *))                                              \
	X(int, epoll_create, (int))                                                           \
	X(int, epoll_create1, (int))                                                          \
	X(pid_t, fork, (void))                                                                \
	X(int, execve, (const char *, char *const[], char *const[]))                          \
	X(int, execv, (const char *, char *const[]))                                          \
	X(int, execvp, (const char *, char *const[]))                                         \
	X(int, execvpe, (const char *, char *const[], char *const[]))                         \
	X(int, fexecve, (int, char *const[], char *const[]))                                  \
	X(int, recvmmsg, (int, struct mmsghdr *, unsigned int, int, struct timespec *))       \
	X(int, sendmmsg, (int, struct mmsghdr *, unsigned int, int))                          \
	X(ssize_t, preadv2, (int, const struct iovec *, int, off_t, int))                     \
	X(ssize_t, pwritev2, (int, const struct iovec *, int, off_t, int))                    \
	X(FILE *, fdopen, (int, const char *))

struct fivc_real {
#define X(ret, name, args) ret(*name) args;
	FIVC_REAL_CALLS(X)
#undef X
};
extern struct fivc_real fivc_real;
extern int fivc_ready; /* 1 once init ran (set before it runs: re-entrant calls pass) */
void fivc_init(void);
#define FIVC_ENSURE_INIT()                                                   \
	do {                                                                 \
		if (__builtin_expect(!__atomic_load_n(&fivc_ready, __ATOMIC_ACQUIRE), 0)) \
			fivc_init();                                         \
		if (__builtin_expect(fivc_sud_stale, 0))                     \
			fivc_sud_fresh();                                    \
	} while (0)

/* Syscall User Dispatch (sud.c, FASTIVC_TRAP_SYSCALLS=1): on for the
 * process; this thread's selector; a call made again at ALLOW left it so */
extern int fivc_sud_on;
extern __thread char fivc_sud_sel __attribute__((tls_model("initial-exec")));
extern __thread char fivc_sud_stale __attribute__((tls_model("initial-exec")));
void fivc_sud_fresh(void);
int fivc_sud_sigaction(const struct sigaction *act, struct sigaction *old);

/* Per-thread recursion guard: the library's own socket calls go straight to
 * fivc_real, but libc may call back into wrapped symbols while we hold locks
 * (e.g. fopen -> read); those take the real path. */
extern __thread int fivc_guard;
#define FIVC_GUARDED() (fivc_guard > 0)

/* ---- 2./3. configuration and logging ---- */
enum { FIVC_LOG_OFF = 0, FIVC_LOG_INFO = 1, FIVC_LOG_DEBUG = 2 };
struct fivc_config {
	int disabled;
	int nonblock_ok;  /* accelerate sockets that are non-blocking at connect/accept */
	int log_level;
	int log_fd;
	uint64_t spin_ns;
	uint32_t ring_kib;
	char fabric[256];
};
extern struct fivc_config fivc_cfg;
void fivc_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define FIVC_INFO(...) do { if (fivc_cfg.log_level >= FIVC_LOG_INFO) fivc_log(FIVC_LOG_INFO, __VA_ARGS__); } while (0)
#define FIVC_DEBUG(...) do { if (fivc_cfg.log_level >= FIVC_LOG_DEBUG) fivc_log(FIVC_LOG_DEBUG, __VA_ARGS__); } while (0)

/* The process's fabric, opened on first need; NULL when unavailable. */
struct fivc_fabric *fivc_fabric_get(void);
/* Its fd (-1 if none) and moving it elsewhere when the program wants the
 * number (dup2 onto it). */
int fivc_fabric_fd(void);
void fivc_fabric_fd_move(int avoid);
int fivc_own_fd(int fd);
void fivc_own_fd_move(int fd);
/* fork: every process has a member id of its own (its own lock), so that
 * a child that exits without closing is seen dead.  prepare (parent, before
 * fork; eager when the child inherits connections) gives the child's fd and
 * id, or fd -1 for a child that re-opens the fabric when it needs it. */
void fivc_fabric_fork_prepare(int eager, int *fd, uint32_t *member1);
void fivc_fabric_fork_parent(int fd, uint32_t member1, int failed);
void fivc_fabric_fork_child(int eager, int fd, uint32_t member1);

/* ---- 4. accelerated sockets ---- */
enum fsock_state {
	FS_CLIENT_PENDING, /* offer posted; reads/writes on TCP, counting bytes sent */
	FS_SERVER_PRE,     /* adopted; reading the client's pre-switch TCP bytes */
	FS_ACCEL,          /* everything on the ring; TCP carries control bytes only */
	FS_PLAIN,          /* gave up (peer not accelerated): plain TCP for good */
};

struct fsock {
	int refs;          /* fds of this process that refer to it (dup) */
	int hold;          /* 2 x calls of ours inside it | 1 once refs reached 0
			    * (fivc_fs_hold: the last one out releases it) */
	int kept_fd;       /* -1, or our duplicate of its TCP socket, closed by the
			    * program while a call of another thread was inside */
	int fd;            /* one of those fds: the TCP socket for doorbells */
	int side;          /* FIVC_SIDE_CLIENT / FIVC_SIDE_SERVER */
	int state;         /* enum fsock_state; changes under both locks */
	int nonblock;      /* O_NONBLOCK, tracked through fcntl/ioctl */
	int tcp_eof;       /* the TCP peer closed or reset (ch.peer_gone says which);
			      SO_RCVTIMEO/SO_SNDTIMEO live in ch.rd/wr_timeout_ns */
	pthread_mutex_t rd_lock, wr_lock;
	/* Innermost, never held across a wait: a shutdown() (which may not
	 * wait for a thread blocked in a call, so takes neither lock above)
	 * against the calls that let the channel go while it looks (the
	 * downgrade's finish, a client giving up before its switch).
	 * (Regression, the downgrade soak: a writer thread's shutdown after
	 * its last write met a finished downgrade's released channel:
	 * SIGSEGV in fivc_chan_shutdown.) */
	pthread_mutex_t ctl_lock;
	struct fivc_fabric *fab;
	uint32_t slot, gen;
	uint32_t offer_idx;
	uint64_t offer_word;
	uint64_t tcp_sent; /* client: program bytes sent over TCP before the switch */
	uint64_t tcp_recvd; /* server: program bytes read from TCP before the switch */
	uint64_t switch_n;  /* server: N once the client published it */
	int n_known;
	/* Forked before the switch (sock.c): other processes may use this
	 * side's TCP stream too, so the counts above, private to each
	 * process, are not the truth: the server's comes from the kernel
	 * (io.c, tcp_taken), the client's is the slot's switch_bytes, and
	 * each TCP step takes the side's lock in the slot.  Never cleared. */
	int pre_shared;
	/* TCP_NODELAY: doorbells must not wait for Nagle (measured: iperf3,
	 * which leaves Nagle on, fell from ~20 to ~1 Gbit/s as each 1-byte
	 * doorbell waited for the peer's delayed ACK).  Forced on before the
	 * first doorbell; the program keeps seeing its own setting. */
	int nodelay_forced, app_nodelay;
	int untracked;      /* we hold the slot side without a holder entry (fork) */
	int child_untracked; /* during fork: so will the child */
	/* (only to carry the channel's reset state through exec: exec.c) */
	int reset;
	int db_waiters;     /* threads asleep on this socket's TCP doorbell */
	uint8_t pending_spun; /* the pending first read spun already (io.c) */
	/* The way back to TCP (down.c): FIVC_DOWN_W our writes go to TCP
	 * (after the backlog), FIVC_DOWN_R our reads do (the ring read dry,
	 * the peer's doorbells dropped); both and the backlog sent: FS_PLAIN.
	 * down_quiet: no doorbell sent and no drain from now on; db_busy:
	 * doorbell sends and drains under way (connect.c). */
	int down, down_quiet, db_busy, down_reason;
	int down_due; /* a reason to downgrade once the call in progress returns (uring.c) */
	uint64_t down_t0;   /* when the follower first waited for the peer's doorbells (ms) */
	uint64_t down_ns0;  /* when this side began to leave (for the debug log) */
	int on_janitor;     /* on the janitor's list (janitor.c), jnext/jprev */
	struct fsock *jnext, *jprev;
	struct fivc_chan ch;
};

/* Signals inside our calls (sig.c): a call that may sleep marks at its
 * start; its sleeps end with EINTR when a handler of the program's ran
 * since (fivc_sig_poll etc. return as poll does, errno set), and
 * fivc_sig_restarts says whether the kernel's call would have gone on. */
void fivc_sig_mark(void);
int fivc_sig_came(void);
int fivc_sig_restarts(uint64_t timeout_ns);
long fivc_sig_syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6);
int fivc_sig_poll(struct pollfd *p, nfds_t n, int timeout_ms);
int fivc_sig_ppoll(struct pollfd *p, nfds_t n, const struct timespec *ts, const sigset_t *mask);
int fivc_sig_epoll_pwait(int epfd, struct epoll_event *ev, int max, int timeout_ms,
			 const sigset_t *mask);

/* fd -> fsock; NULL for every fd the library does not handle. */
extern struct fsock **fivc_fds;
extern int fivc_nfds;
extern pid_t fivc_pid;     /* this process (set at init and in fork children) */
static inline struct fsock *fivc_fs(int fd)
{
	if (fd < 0 || fd >= fivc_nfds || !fivc_fds)
		return NULL;
	return __atomic_load_n(&fivc_fds[fd], __ATOMIC_ACQUIRE);
}
/* For an interposed call: the managed socket behind fd, or NULL (then:
 * the real call; also inside the library's own calls). */
static inline struct fsock *fivc_managed(int fd)
{
	FIVC_ENSURE_INIT();
	return FIVC_GUARDED() ? NULL : fivc_fs(fd);
}
/* No byte to move in iov[0..cnt) */
static inline int fivc_iov_empty(const struct iovec *iov, int cnt)
{
	for (int i = 0; i < cnt; i++)
		if (iov[i].iov_len)
			return 0;
	return 1;
}
void fivc_fd_set(int fd, struct fsock *fs);
/* The fds whose entry is set, kept as a compact list beside the table, so
 * that fork, exec and the walks below cost the managed fds, never the
 * highest fd or the size of the table (issue 10).  The lock orders changes
 * of the list (fivc_fd_set) against walks and fork (held across it, so the
 * child's copy is whole); copy: up to cap of them into out, lock held. */
void fivc_fdlist_lock(void);
void fivc_fdlist_unlock(void);
void fivc_fdlist_fork_child(void);
int fivc_fdlist_count(void);
int fivc_fdlist_copy(int *out, int cap);

/* What socket() made of each fd: TCP stream sockets are the only candidates.
 * 0 = unknown (made before we were loaded: ask the kernel).
 *
 * Above the kind, what we know of the fd's state without asking the kernel
 * (each saves a syscall per connection on the connect/accept path):
 * FIVC_FD_NBKNOWN: its O_NONBLOCK is FIVC_FD_NB (made by socket() or
 * accept4() here, every change seen since: fcntl F_SETFL, ioctl FIONBIO);
 * FIVC_FD_UNBOUND: made by socket() here, no bind, connect or listen since.
 * A dup shares the file and its state: both fds lose the bits.
 *
 * FIVC_FD_SNDBUF, _RCVBUF, _MISCOPT: the program set SO_SNDBUF (or
 * SO_SNDBUFFORCE), SO_RCVBUF (SO_RCVBUFFORCE), or one of SO_RCVTIMEO,
 * SO_SNDTIMEO, SO_OOBINLINE, SO_LINGER and SO_RCVLOWAT, or asked for
 * signals (O_ASYNC, F_SETOWN: _MISCOPT) on the socket (an accepted one inherits its listener's), so that the
 * connection's channel asks the kernel for them when it opens
 * (fivc_fs_take_sockopts).  A dup keeps these: they are the file's. */
enum { FIVC_KIND_UNKNOWN = 0, FIVC_KIND_TCP = 1, FIVC_KIND_OTHER = 2, FIVC_KIND_EPOLL = 3 };
enum { FIVC_FD_SNDBUF = 0x04, FIVC_FD_RCVBUF = 0x08, FIVC_FD_NBKNOWN = 0x10, FIVC_FD_NB = 0x20,
       FIVC_FD_UNBOUND = 0x40, FIVC_FD_MISCOPT = 0x80 };
#define FIVC_FD_KIND 0x03 /* the kind's bits */
#define FIVC_FD_OPTS (FIVC_FD_SNDBUF | FIVC_FD_RCVBUF | FIVC_FD_MISCOPT)
extern uint8_t *fivc_kinds;
static inline int fivc_fd_bits(int fd)
{
	return fd >= 0 && fd < fivc_nfds && fivc_kinds ? __atomic_load_n(&fivc_kinds[fd], __ATOMIC_RELAXED) : 0;
}
static inline int fivc_fd_kind(int fd) { return fivc_fd_bits(fd) & FIVC_FD_KIND; }
static inline void fivc_fd_set_kind(int fd, int kind)
{
	if (fd >= 0 && fd < fivc_nfds && fivc_kinds)
		__atomic_store_n(&fivc_kinds[fd], (uint8_t)kind, __ATOMIC_RELAXED);
}
static inline void fivc_fd_add_bits(int fd, int bits)
{
	if (fd >= 0 && fd < fivc_nfds && fivc_kinds && (fivc_kinds[fd] & bits) != bits)
		__atomic_fetch_or(&fivc_kinds[fd], (uint8_t)bits, __ATOMIC_RELAXED);
}
static inline void fivc_fd_clear_bits(int fd, int bits)
{
	if (fd >= 0 && fd < fivc_nfds && fivc_kinds && (fivc_kinds[fd] & bits))
		__atomic_fetch_and(&fivc_kinds[fd], (uint8_t)~bits, __ATOMIC_RELAXED);
}
/* fd's O_NONBLOCK became nb (fcntl F_SETFL, ioctl FIONBIO returned 0) */
static inline void fivc_fd_note_nb(int fd, int nb)
{
	int b = fivc_fd_bits(fd);
	if (b & FIVC_FD_NBKNOWN)
		fivc_fd_set_kind(fd, (b & ~FIVC_FD_NB) | (nb ? FIVC_FD_NB : 0));
}
/* newfd now shares oldfd's file (dup family) */
static inline void fivc_fd_dup_kind(int oldfd, int newfd)
{
	fivc_fd_clear_bits(oldfd, FIVC_FD_NBKNOWN | FIVC_FD_NB | FIVC_FD_UNBOUND);
	fivc_fd_set_kind(newfd, fivc_fd_bits(oldfd) & (FIVC_FD_KIND | FIVC_FD_OPTS));
}
/* fd's O_NONBLOCK: 0 or 1, from the bits or the kernel; -1 on error */
int fivc_fd_nonblock(int fd);

/* connect / accept (connect.c) */
struct fsock *fivc_fs_new(struct fivc_fabric *fab, int fd, int side);
int fivc_fs_open_chan(struct fsock *fs); /* slot, gen, side set: the ring + TCP doorbell */
void fivc_fs_take_sockopts(struct fsock *fs, int fd, int bits);
void fivc_fs_take_sockopt(struct fsock *fs, int fd, int name); /* one just set */
void fivc_fs_take_signals(struct fsock *fs, int fd); /* O_ASYNC, F_SETOWN */
int fivc_do_connect(int fd, const struct sockaddr *addr, socklen_t len);
int fivc_do_accept(int lfd, struct sockaddr *addr, socklen_t *len, int flags, int use4);

/* I/O on an accelerated socket (io.c); -errno inside, errno at the wrappers */
/* A call inside fs: closed meanwhile by another thread, fs stays until the
 * call is done (as the kernel keeps a file for a call blocked in it: the
 * call goes on, and gets the bytes that come).  One RMW each way; the
 * transition to 1 (no call inside, no fd left) is the release's, whoever
 * makes it. */
void fivc_fs_release(struct fsock *fs);
static inline void fivc_fs_hold(struct fsock *fs) { __atomic_add_fetch(&fs->hold, 2, __ATOMIC_ACQ_REL); }
static inline void fivc_fs_unhold(struct fsock *fs)
{
	if (__atomic_sub_fetch(&fs->hold, 2, __ATOMIC_ACQ_REL) == 1)
		fivc_fs_release(fs);
}
ssize_t fivc_fs_recv(struct fsock *fs, int fd, void *buf, size_t len, int flags);
ssize_t fivc_fs_send(struct fsock *fs, int fd, const void *buf, size_t len, int flags);
ssize_t fivc_fs_recvv(struct fsock *fs, int fd, const struct iovec *iov, int n, int flags);
ssize_t fivc_fs_sendv(struct fsock *fs, int fd, const struct iovec *iov, int n, int flags);
/* Readiness of an accelerated socket for poll: POLLIN/POLLOUT/POLLHUP/POLLERR
 * bits now ready; *kernel_events is what to ask the kernel for on the TCP fd
 * to be woken (arms the ring's waiting flags when arm is set). */
short fivc_fs_ready(struct fsock *fs, int fd, short events, int arm, short *kernel_events);
/* Client: switch now if the offer was adopted.  Server: learn N. */
void fivc_fs_client_check(struct fsock *fs, int have_wr_lock);
void fivc_fs_server_check(struct fsock *fs);
uint64_t fivc_fs_pre_taken(struct fsock *fs, int fd);
/* Server in FS_SERVER_PRE, under rd_lock: learn N, and go on the ring
 * (FS_ACCEL) once the program has taken all N pre-switch bytes. */
void fivc_fs_server_settle(struct fsock *fs, int fd);
/* Consume control bytes (after the switch) without blocking. */
void fivc_fs_drain(struct fsock *fs, int fd);
long fivc_fs_nread(struct fsock *fs, int fd);

/* listeners (connect.c): listen() returned on fd; fd goes away */
/* The listener entry for fd (bound to a port): 1 when it is in. */
int fivc_listen_note(int fd);
void fivc_listen_forget(int fd);
void fivc_listen_forget_all(void); /* every registration of ours goes */
void fivc_listen_forked(void); /* parent, after a fork: children may hold our listeners */

/* close / dup / shutdown (sock.c) */
int fivc_fs_close(int fd);
/* fd was replaced by the kernel (dup2/dup3 onto it): forget what it was. */
void fivc_fs_replaced(int fd);
int fivc_fs_dup(int oldfd, int newfd);
int fivc_fs_shutdown(struct fsock *fs, int fd, int how);
void fivc_fs_release(struct fsock *fs);
/* A snapshot of the managed connections, taken from the fd index (so in
 * O(managed fds)): each distinct fsock once, with all of its fds (dup), in
 * ascending order.  take: fdlist_lock held; 0 or -ENOMEM. */
struct fivc_walk {
	int n; /* distinct fsocks */
	struct fivc_walk_ent {
		struct fsock *fs;
		int first, nfds; /* its fds: fds[first, first + nfds) */
	} *ent;
	int *fds;
};
int fivc_walk_take(struct fivc_walk *w);
void fivc_walk_free(struct fivc_walk *w);
/* The same as a loop: the snapshot is taken under the lock and fn runs
 * without it (fn may close and release). */
void fivc_for_each_fsock(void (*fn)(struct fsock *fs, const int *fds, int nfds, void *arg),
			 void *arg);
/* Not plain: it holds a slot side of the fabric. */
static inline int fivc_fs_uses_fabric(const struct fsock *fs)
{
	return fs->state != FS_PLAIN && fs->ch.f;
}
pid_t fivc_do_fork(void);
/* The way back to TCP (down.c, issue 12). */
#define FIVC_DOWN_W 1
#define FIVC_DOWN_R 2
enum {
	FIVC_DOWN_PEER = 1,
	FIVC_DOWN_EXEC = 2,
	FIVC_DOWN_URING = 3,
	FIVC_DOWN_OPERATOR = 4,
	FIVC_DOWN_UNTRACKED = 5, /* duplicated onto an fd beyond our table */
	FIVC_DOWN_REASONS = 8
};
/* The initiator: 0 once the connection is plain TCP, else -errno (a thread
 * of ours inside a call: -EBUSY; the peer did not follow: -ETIMEDOUT). */
int fivc_fs_downgrade(struct fsock *fs, int fd, int reason);
/* Back now, or at the end of the call a thread of ours is in (down_due),
 * or it stays on the ring (a peer that closed); shut down where it cannot
 * go back. */
void fivc_fs_down_now_or_due(struct fsock *fs, int fd, int reason);
/* The follower, where a ring said -FIVC_EDOWN or the peer left: with
 * rd_lock held already or not, and trylock in poll paths (then no wait). */
void fivc_fs_follow(struct fsock *fs, int fd, int have_rd, int trylock);
/* Before the last close: a peer that left the ring gets what we wrote and
 * it did not read (our backlog) over TCP, which delivers it after the
 * close; bounded (5 s). */
void fivc_fs_follow_at_close(struct fsock *fs, int fd);
/* Client, offer still pending, under wr_lock: withdrawn (FS_PLAIN), or
 * switched if the server adopted it meanwhile (FS_ACCEL) (io.c). */
void fivc_fs_client_decide(struct fsock *fs);
ssize_t fivc_fs_down_send(struct fsock *fs, int fd, const void *buf, size_t len, int flags);
void fivc_down_push_later(struct fsock *fs);
void fivc_down_fork_prepare(void);
void fivc_down_fork_parent(void);
void fivc_down_fork_child(void);
void fivc_stat_downgraded(int reason);
/* exec (exec.c): whether the new program will load the library; if not,
 * its connections go back to TCP first. */
int fivc_exec_loads_library(const char *p, int fd, int search, char *const envp[]);
void fivc_exec_downgrade(int shared); /* shared: in a vfork child */
/* The whole process goes back to TCP, once (down.c): its connections
 * downgrade (reason FIVC_DOWN_*), its listeners leave the fabric, and no
 * new connection is accelerated. */
void fivc_down_process(int reason, const char *how);
/* `fastivc downgrade` (down.c): a thread that sleeps on our member's
 * down_req, started with the first connection; and the fabric for a new
 * connection: NULL when there is none, or the fabric drains, or we were
 * asked to go back (init.c). */
void fivc_down_watch(struct fivc_fabric *fab);
struct fivc_fabric *fivc_fabric_new_conn(void);
/* io_uring (uring.c): the process has one; the connections go back. */
void fivc_uring_seen(const char *how);
void fivc_uring_scan(void);
/* The downgrade a busy connection was due (fs->down_due), at the end of a
 * call on it, before its hold is let go. */
void fivc_fs_down_due_slow(struct fsock *fs, int fd);
static inline void fivc_fs_down_due(struct fsock *fs, int fd)
{
	if (__builtin_expect(__atomic_load_n(&fs->down_due, __ATOMIC_RELAXED) != 0, 0))
		fivc_fs_down_due_slow(fs, fd);
}
/* TCP bytes this socket's readers took: received less queued (io.c). */
int fivc_tcp_taken(int fd, uint64_t *out);
/* epoll (epoll.c) */
int fivc_do_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev);
/* The watcher took fd's socket back to TCP: hand its entries to the kernel. */
void fivc_epoll_went_plain(int fd);
/* connect() made fd ours: its registrations made before are taken over,
 * as the program's EPOLL_CTL_MOD would; close forgets them (epoll.c) */
void fivc_epoll_took_fd(int fd);
void fivc_epoll_forget_pre(int fd);
int fivc_do_epoll_wait(int epfd, struct epoll_event *ev, int max, int timeout_ms,
		       const sigset_t *mask);
/* close/dup2 of fd: every set forgets its entry for fd (O(sets watching
 * fd)); of an epoll fd: its registry goes too. */
void fivc_epoll_forget_fd(int fd);
void fivc_epoll_forget_set(int epfd);
/* An epoll fd watched by poll/select: whether it has managed entries, and
 * whether one of them is reportable now (POLLIN), arming them when none is
 * and arm is set (nothing is disarmed afterwards: see channel.c). */
int fivc_epoll_is_managed(int epfd);
short fivc_epoll_fd_ready(int epfd, int arm);
void fivc_before_exec(void);
/* exec (exec.c): connections whose fd survives exec are handed to the new
 * program through FASTIVC_INHERIT with the fabric fd (and so the member
 * id) kept open; fivc_exec_env returns the environment to exec with (NULL:
 * use the program's), fivc_exec_failed undoes it. */
char **fivc_exec_env(char *const envp[]);
/* exec with the connections handed over (wrap.c): path (search: as
 * execvpe) or, path NULL, the program in fd (fexecve) */
int fivc_exec_with(const char *p, int fd, int search, char *const a[], char *const e[]);
void fivc_exec_failed(char **env);
void fivc_inherit(void);
/* The fabric fd as it survives exec (init.c). */
int fivc_fabric_keep_across_exec(int keep);
int fivc_fabric_adopt(int fd, uint32_t member1);

/* the janitor (janitor.c): grown rings shrink back when idle */
void fivc_janitor_watch(struct fsock *fs);  /* after a write, holding wr_lock */
void fivc_janitor_forget(struct fsock *fs); /* before fs is freed */
void fivc_janitor_fork_prepare(void);
void fivc_janitor_fork_parent(void);
void fivc_janitor_fork_child(void);
/* A detached library thread with every signal blocked; 0 or -errno. */
int fivc_start_thread(void *(*fn)(void *));
int fivc_start_thread_arg(void *(*fn)(void *), void *arg);
/* The next definition of name (libc's, liburing's), looked up once into
 * *slot: for functions outside the real-function table, which exist only
 * in some programs (NULL when none has it). */
void *fivc_next_sym(void **slot, const char *name);

/* errno at the libc boundary only (STYLE.md 6) */
static inline long fivc_ret(long r)
{
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return r;
}

#endif
