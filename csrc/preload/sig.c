/* fastivc preload — signals that land inside one of our calls.
 *
 * A blocking recv of the kernel's is one system call: a signal that comes
 * after it began makes its sleep end with EINTR (or restart, SA_RESTART),
 * the handler running on the way out.  Ours is library code first (the ring
 * looked at, a 50 us spin, locks) and a sleep in poll after: a signal that
 * came in between ran its handler there, and the poll then slept as if
 * nothing had come (regression, issue 11: the harness's op_signal, a 10 ms
 * SIGALRM whose Python handler only sets a flag, left a blocking recv
 * asleep for ever under load; plain TCP gave EINTR).
 *
 * So the program's handlers run through a trampoline that counts, per
 * thread, the handlers that ran (t_sigs) and those without SA_RESTART
 * (t_intr).  Each call that may sleep marks the counts at its start
 * (fivc_sig_mark), and every sleep of ours goes through fivc_sig_syscall:
 * a handler since the mark ends it before it sleeps, with -EINTR.  The
 * last gap, between that look and the system call, is closed as the
 * kernel's own cancellation points close theirs (musl's __cp_begin): the
 * look and the syscall instruction are one short stub, and a handler that
 * interrupted the thread inside it moves it to the stub's -EINTR exit.
 *
 * The program sees its own handlers: sigaction and the older calls
 * (signal, sysv_signal, sigset, siginterrupt) are interposed and report
 * what was asked, and what the kernel holds where it is not our
 * trampoline (a handler installed by a raw system call, SA_RESETHAND's
 * reset).  A handler we did not install is not counted: such a signal is
 * seen only by the kernel's EINTR, as before. */
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include "fastivc/atomics.h"
#include "preload.h"

#define TLS __attribute__((tls_model("initial-exec"))) __thread

static TLS unsigned t_sigs, t_intr; /* handlers that ran; those without SA_RESTART */
static TLS unsigned t_mark, t_imark; /* the counts when the call began */

/* What the program asked for each signal.  Changed under act_lock with
 * every signal blocked (sigaction may be called from a handler); read by
 * the trampoline without a lock: each change writes the next of four
 * slots and then publishes it. */
struct app_act {
	void *handler; /* sa_handler or sa_sigaction, as flags say */
	int flags;
	int ours;      /* the trampoline was installed for it */
};
static struct app_act acts[NSIG][4];
static unsigned act_cur[NSIG];
static int act_lock;
static sigset_t act_restart_off; /* siginterrupt(sig, 1): signal() leaves SA_RESTART off */

static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static int resolve(void)
{
	if (!__atomic_load_n(&real_sigaction, __ATOMIC_ACQUIRE)) {
		void *p = dlsym(RTLD_NEXT, "sigaction");
		if (!p)
			return -1;
		__atomic_store_n(&real_sigaction, p, __ATOMIC_RELEASE);
	}
	return 0;
}

#if defined(__x86_64__)
/* long fivc_cp_syscall(long nr, long a1, a2, a3, a4, a5, long a6,
 *                      const unsigned *count, unsigned mark):
 * -EINTR without entering the kernel when *count != mark, else the system
 * call's raw return.  From fivc_cp_begin to fivc_cp_end the thread has
 * not entered it yet (a syscall the kernel restarts is rewound onto its
 * instruction, inside too: it ends with -EINTR then, which the caller
 * treats as the interruption it is). */
__asm__(".text\n"
	".p2align 4\n"
	".hidden fivc_cp_syscall\n"
	".type fivc_cp_syscall,@function\n"
	"fivc_cp_syscall:\n"
	"	.cfi_startproc\n"
	"	mov %rdi, %rax\n"
	"	mov %rsi, %rdi\n"
	"	mov %rdx, %rsi\n"
	"	mov %rcx, %rdx\n"
	"	mov %r8, %r10\n"
	"	mov %r9, %r8\n"
	"	mov 8(%rsp), %r9\n"
	"	mov 16(%rsp), %r11\n"
	"	mov 24(%rsp), %ecx\n"
	".hidden fivc_cp_begin\n"
	"fivc_cp_begin:\n"
	"	cmp (%r11), %ecx\n"
	"	jne fivc_cp_cancel\n"
	"	syscall\n"
	".hidden fivc_cp_end\n"
	"fivc_cp_end:\n"
	"	ret\n"
	".hidden fivc_cp_cancel\n"
	"fivc_cp_cancel:\n"
	"	mov $-4, %rax\n"
	"	ret\n"
	"	.cfi_endproc\n"
	".size fivc_cp_syscall, .-fivc_cp_syscall\n");
long fivc_cp_syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6,
		     const unsigned *count, unsigned mark);
extern const char fivc_cp_begin[], fivc_cp_end[], fivc_cp_cancel[];

static void cp_redirect(void *uc)
{
	greg_t *ip = &((ucontext_t *)uc)->uc_mcontext.gregs[REG_RIP];
	if ((uintptr_t)*ip >= (uintptr_t)fivc_cp_begin && (uintptr_t)*ip < (uintptr_t)fivc_cp_end)
		*ip = (greg_t)(uintptr_t)fivc_cp_cancel;
}
#define HAVE_CP 1
#else
/* Elsewhere: the look, then the call; a handler in the few instructions
 * between is missed, as one just before the kernel's call would be. */
static void cp_redirect(void *uc) { (void)uc; }
#define HAVE_CP 0
#endif

static void trampoline(int sig, siginfo_t *si, void *uc)
{
	unsigned c = __atomic_load_n(&act_cur[sig], __ATOMIC_ACQUIRE);
	struct app_act a = acts[sig][c & 3];
	t_sigs++;
	if (!(a.flags & SA_RESTART))
		t_intr++;
	cp_redirect(uc);
	if (!a.handler)
		return;
	/* (a handler may make calls of its own: they mark for themselves) */
	unsigned m = t_mark, im = t_imark;
	char sel = fivc_sud_sel; /* (ALLOW inside our sleep stub: the handler's own calls are seen) */
	if (fivc_sud_on)
		fivc_sud_sel = 1;
	if (a.flags & SA_SIGINFO)
		((void (*)(int, siginfo_t *, void *))a.handler)(sig, si, uc);
	else if (a.handler != (void *)SIG_DFL && a.handler != (void *)SIG_IGN)
		((void (*)(int))a.handler)(sig);
	fivc_sud_sel = sel;
	t_mark = m;
	t_imark = im;
}

static int is_handler(const struct sigaction *sa)
{
	if (sa->sa_flags & SA_SIGINFO)
		return sa->sa_sigaction != NULL;
	return sa->sa_handler != SIG_DFL && sa->sa_handler != SIG_IGN;
}

static void lock_acts(sigset_t *old)
{
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, old);
	while (__atomic_exchange_n(&act_lock, 1, __ATOMIC_ACQUIRE))
		fivc_cpu_relax();
}

static void unlock_acts(const sigset_t *old)
{
	__atomic_store_n(&act_lock, 0, __ATOMIC_RELEASE);
	pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* fork: the lock held across it, so that the child never inherits it
 * held by a thread it does not have */
static TLS sigset_t fork_mask;
static pid_t acts_pid; /* the process the table is of */
static void fork_prepare(void) { lock_acts(&fork_mask); }
static void fork_parent(void) { unlock_acts(&fork_mask); }
static void fork_child(void)
{
	acts_pid = getpid();
	unlock_acts(&fork_mask);
}

__attribute__((constructor)) static void sig_init(void)
{
	acts_pid = getpid();
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* The kernel's answer, or the program's own handler where the kernel's
 * is our trampoline. */
static void report_old(int sig, struct sigaction *k, unsigned cur)
{
	struct app_act a = acts[sig][cur & 3];
	if (a.ours && k->sa_handler == SIG_DFL && (k->sa_flags & SA_RESETHAND) &&
	    !(a.flags & SA_SIGINFO)) {
		/* SA_RESETHAND's reset, which keeps the flags: ours had SA_SIGINFO */
		k->sa_flags &= ~SA_SIGINFO;
		return;
	}
	if ((k->sa_flags & SA_SIGINFO) && k->sa_sigaction == trampoline) {
		k->sa_flags = (k->sa_flags & ~SA_SIGINFO) | (a.flags & SA_SIGINFO);
		if (a.flags & SA_SIGINFO)
			k->sa_sigaction = (void (*)(int, siginfo_t *, void *))a.handler;
		else
			k->sa_handler = (void (*)(int))a.handler;
	}
}

FIVC_EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	if (resolve() < 0) {
		errno = ENOSYS;
		return -1;
	}
	/* A child that shares our memory (vfork, posix_spawn: Python's
	 * subprocess resets every handler there before its exec) must not
	 * change the table the parent's trampoline reads (regression:
	 * tornado's test_sigchild, the parent's SIGCHLD handler found SIG_DFL
	 * there and never ran): its handlers go to the kernel as they are. */
	int shared = getpid() != __atomic_load_n(&acts_pid, __ATOMIC_RELAXED);
	/* Syscall User Dispatch on (sud.c): SIGSYS stays ours, never blocked */
	struct sigaction nosys;
	if (__atomic_load_n(&fivc_sud_on, __ATOMIC_ACQUIRE) && !shared) {
		if (sig == SIGSYS)
			return fivc_sud_sigaction(act, old);
		if (act && sigismember(&act->sa_mask, SIGSYS) == 1) {
			nosys = *act;
			sigdelset(&nosys.sa_mask, SIGSYS);
			act = &nosys;
		}
	}
	if (sig <= 0 || sig >= NSIG || sig == SIGKILL || sig == SIGSTOP || !act || shared) {
		/* the kernel's answer (errors; a query; such a child) */
		struct sigaction k;
		int r = real_sigaction(sig, act, old ? &k : NULL);
		if (r == 0 && old) {
			if (sig > 0 && sig < NSIG)
				report_old(sig, &k, __atomic_load_n(&act_cur[sig], __ATOMIC_ACQUIRE));
			*old = k;
		}
		return r;
	}
	/* A handler of the program's runs through the trampoline; SIG_DFL
	 * and SIG_IGN go to the kernel as they are. */
	int ours = is_handler(act);
	sigset_t mask;
	lock_acts(&mask);
	unsigned cur = act_cur[sig];
	struct app_act *next = &acts[sig][(cur + 1) & 3];
	next->flags = act->sa_flags;
	next->handler = act->sa_flags & SA_SIGINFO ? (void *)act->sa_sigaction
						   : (void *)act->sa_handler;
	next->ours = ours;
	__atomic_store_n(&act_cur[sig], cur + 1, __ATOMIC_RELEASE);
	struct sigaction t = *act, k;
	if (ours) {
		t.sa_sigaction = trampoline;
		t.sa_flags |= SA_SIGINFO;
	}
	int r = real_sigaction(sig, &t, &k);
	int e = errno;
	if (r < 0)
		__atomic_store_n(&act_cur[sig], cur, __ATOMIC_RELEASE);
	else
		report_old(sig, &k, cur);
	unlock_acts(&mask);
	if (r == 0 && old)
		*old = k;
	errno = e;
	return r;
}

FIVC_EXPORT int __sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	return sigaction(sig, act, old);
}

/* The older calls' one form: h for sig with those flags, the signal
 * itself blocked in its handler or not; the old handler, or SIG_ERR. */
static sighandler_t set_simple(int sig, sighandler_t h, int flags, int mask_self)
{
	struct sigaction a, o;
	if (h == SIG_ERR || sig <= 0 || sig >= NSIG) {
		errno = EINVAL;
		return SIG_ERR;
	}
	memset(&a, 0, sizeof(a));
	a.sa_handler = h;
	sigemptyset(&a.sa_mask);
	if (mask_self)
		sigaddset(&a.sa_mask, sig);
	a.sa_flags = flags;
	return sigaction(sig, &a, &o) < 0 ? SIG_ERR : o.sa_handler;
}

/* signal(): BSD's, as glibc's: the signal blocked in its handler and
 * SA_RESTART unless siginterrupt turned it off. */
FIVC_EXPORT sighandler_t signal(int sig, sighandler_t h)
{
	int off = sig > 0 && sig < NSIG && sigismember(&act_restart_off, sig) == 1;
	return set_simple(sig, h, off ? 0 : SA_RESTART, 1);
}

FIVC_EXPORT sighandler_t bsd_signal(int sig, sighandler_t h) { return signal(sig, h); }
FIVC_EXPORT sighandler_t ssignal(int sig, sighandler_t h) { return signal(sig, h); }

/* System V's: one delivery, not blocked in its handler, no restart. */
FIVC_EXPORT sighandler_t sysv_signal(int sig, sighandler_t h)
{
	return set_simple(sig, h, SA_RESETHAND | SA_NODEFER, 0);
}

FIVC_EXPORT sighandler_t __sysv_signal(int sig, sighandler_t h) { return sysv_signal(sig, h); }

FIVC_EXPORT int siginterrupt(int sig, int flag)
{
	struct sigaction a;
	if (sig <= 0 || sig >= NSIG || sigaction(sig, NULL, &a) < 0) {
		errno = EINVAL;
		return -1;
	}
	if (flag) {
		sigaddset(&act_restart_off, sig);
		a.sa_flags &= ~SA_RESTART;
	} else {
		sigdelset(&act_restart_off, sig);
		a.sa_flags |= SA_RESTART;
	}
	return sigaction(sig, &a, NULL);
}

/* The X/Open call: SIG_HOLD blocks; anything else unblocks and installs
 * it (no flags).  Returns SIG_HOLD where the signal was blocked. */
FIVC_EXPORT sighandler_t sigset(int sig, sighandler_t h)
{
	sigset_t one, old;
	struct sigaction a, o;
	if (h == SIG_ERR || sig <= 0 || sig >= NSIG) {
		errno = EINVAL;
		return SIG_ERR;
	}
	sigemptyset(&one);
	sigaddset(&one, sig);
	if (h == SIG_HOLD) {
		if (sigaction(sig, NULL, &o) < 0 || sigprocmask(SIG_BLOCK, &one, &old) < 0)
			return SIG_ERR;
		return sigismember(&old, sig) ? SIG_HOLD : o.sa_handler;
	}
	memset(&a, 0, sizeof(a));
	a.sa_handler = h;
	sigemptyset(&a.sa_mask);
	if (sigaction(sig, &a, &o) < 0 || sigprocmask(SIG_UNBLOCK, &one, &old) < 0)
		return SIG_ERR;
	return sigismember(&old, sig) ? SIG_HOLD : o.sa_handler;
}

/* ---- the calls' side ---- */

void fivc_sig_mark(void)
{
	t_mark = t_sigs;
	t_imark = t_intr;
}

int fivc_sig_came(void) { return t_sigs != t_mark; }

/* A wait of ours ended with EINTR: whether the kernel's call would have
 * gone on (signal(7)): only where the call restarts at all (the caller
 * says: no timeout on the socket for its direction), and only when every
 * handler that ran had SA_RESTART.  A handler we did not count (installed
 * by a raw system call) is not known: then restart when every caught
 * signal's handler restarts.  Going on, the counts are marked again. */
int fivc_sig_restarts(uint64_t timeout_ns)
{
	if (timeout_ns)
		return 0;
	if (t_sigs != t_mark) {
		if (t_intr != t_imark)
			return 0;
		t_mark = t_sigs;
		return 1;
	}
	for (int sig = 1; sig < NSIG; sig++) {
		struct sigaction sa;
		if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &sa) < 0)
			continue;
		if (!is_handler(&sa))
			continue;
		if (!(sa.sa_flags & SA_RESTART))
			return 0;
	}
	return 1;
}

/* A sleeping system call: -EINTR when a handler ran since the mark, else
 * its raw return.  A cancellation point, as glibc's own calls are. */
long fivc_sig_syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6)
{
	int old;
	pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &old);
#if HAVE_CP
	/* (an instruction of ours, outside libc: not to be dispatched, sud.c) */
	char sel = fivc_sud_sel;
	fivc_sud_sel = 0;
	long r = fivc_cp_syscall(nr, a1, a2, a3, a4, a5, a6, &t_sigs, t_mark);
	fivc_sud_sel = sel;
#else
	long r = -EINTR;
	if (t_sigs == t_mark) {
		r = syscall(nr, a1, a2, a3, a4, a5, a6);
		if (r < 0)
			r = -errno;
	}
#endif
	pthread_setcanceltype(old, NULL);
	return r;
}

static int sig_ret(long r)
{
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return (int)r;
}

int fivc_sig_ppoll(struct pollfd *p, nfds_t n, const struct timespec *ts, const sigset_t *mask)
{
	struct timespec t; /* (the kernel writes what is left back) */
	if (ts)
		t = *ts;
	return sig_ret(fivc_sig_syscall(SYS_ppoll, (long)p, (long)n, ts ? (long)&t : 0, (long)mask,
					_NSIG / 8, 0));
}

int fivc_sig_poll(struct pollfd *p, nfds_t n, int timeout_ms)
{
	if (timeout_ms < 0)
		return fivc_sig_ppoll(p, n, NULL, NULL);
	struct timespec t = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
	return fivc_sig_ppoll(p, n, &t, NULL);
}

int fivc_sig_epoll_pwait(int epfd, struct epoll_event *ev, int max, int timeout_ms,
			 const sigset_t *mask)
{
	return sig_ret(fivc_sig_syscall(SYS_epoll_pwait, epfd, (long)ev, max, timeout_ms,
					(long)mask, _NSIG / 8));
}
