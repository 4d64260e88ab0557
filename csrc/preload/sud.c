/* fastivc preload — system calls made outside libc, seen through Syscall
 * User Dispatch (issue 12; README "The way back to TCP"), opt-in:
 * FASTIVC_TRAP_SYSCALLS=1 (`fastivc run --trap-syscalls`).
 *
 * Every wrapper here is a libc symbol, so a `syscall` instruction in the
 * program itself (a static liburing's io_uring_setup, inline assembly, a
 * runtime that makes its own system calls) reaches the kernel unseen: an
 * io_uring the library never heard of, reads that find doorbells, writes
 * beside the ring.  With this on, each thread of the process has Syscall
 * User Dispatch armed (prctl PR_SET_SYSCALL_USER_DISPATCH, no privilege
 * needed) with libc's text as the region whose system calls go straight
 * to the kernel.  A system call from anywhere else is not made; the kernel
 * sends the thread SIGSYS instead, and the handler here makes it, through
 * the same dispatch as libc's syscall() (calls.c): the calls that take or
 * make descriptors go to our wrappers, io_uring_setup takes the process's
 * connections back to TCP first (uring.c), everything else goes on as it
 * was asked, its raw return in rax.
 *
 * The handler stands exactly where the program's call stood (SIGSYS is
 * synchronous), so it may do what the program could have done there.
 * Where the call cannot be made from a handler, it is made again where it
 * was, with this thread's selector at ALLOW: rt_sigreturn through the
 * program's own restorer, vfork, clone3 and a clone that shares memory or
 * a stack.  The thread's raw calls are then seen again from its next call
 * into the library (fivc_sud_stale, FIVC_ENSURE_INIT).  rt_sigprocmask is
 * made on the mask the handler returns to (the thread's own would be
 * restored over).
 *
 * What it costs, measured (2 vCPUs, getppid through libc): 213 -> 258 ns
 * in the fast mode, 459 -> 639 ns in the slow one, on every system call of
 * every armed thread; a call that traps ~7 us.  So it is off by default.
 *
 * Kept armed: the dispatch is per thread and not inherited by fork, clone
 * or exec; it is armed at load in the first thread, in every thread that
 * pthread_create starts, and in fork children.  A thread made by a raw
 * clone is not armed.  SIGSYS must never be blocked in an armed thread
 * (the kernel would kill it), so while this is on, sigprocmask,
 * pthread_sigmask and the masks of sigaction leave SIGSYS out, and the
 * program's own SIGSYS handler is kept here and called for the SIGSYS that
 * is not ours (seccomp's).  The library's own `syscall` instruction (the
 * sleep stub, sig.c) runs with the selector at ALLOW. */
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <ucontext.h>
#include <unistd.h>

#include <linux/audit.h>

#include "preload.h"

#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#endif
#ifndef PR_SYS_DISPATCH_ON
#define PR_SYS_DISPATCH_ON 1
#endif
#ifndef SYS_USER_DISPATCH
#define SYS_USER_DISPATCH 2 /* si_code of a dispatched call */
#endif
#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif
#define SEL_ALLOW 0
#define SEL_BLOCK 1

#define TLS __attribute__((tls_model("initial-exec"))) __thread

int fivc_sud_on;
TLS char fivc_sud_sel;
TLS char fivc_sud_stale;
static TLS char t_armed;

static uintptr_t libc_lo, libc_len;
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
static int (*real_sigprocmask)(int, const sigset_t *, sigset_t *);
static int (*real_pthread_sigmask)(int, const sigset_t *, sigset_t *);
static int (*real_pthread_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

/* The program's SIGSYS action, while ours is the kernel's. */
static struct sigaction app_sys;
static int app_sys_lock;

#if defined(__x86_64__)
static void arm(void)
{
	fivc_sud_sel = SEL_BLOCK;
	if (prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, libc_lo, libc_len,
		  &fivc_sud_sel) == 0)
		t_armed = 1;
	else
		fivc_sud_sel = SEL_ALLOW;
}

void fivc_sud_fresh(void)
{
	fivc_sud_stale = 0;
	if (t_armed)
		fivc_sud_sel = SEL_BLOCK;
}

/* libc's executable segment, from its own program headers */
static int find_libc(void)
{
	Dl_info di;
	if (!dladdr((void *)getppid, &di) || !di.dli_fbase)
		return -1;
	const ElfW(Ehdr) *eh = di.dli_fbase;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0)
		return -1;
	const ElfW(Phdr) *ph = (const void *)((const char *)eh + eh->e_phoff);
	for (int i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type == PT_LOAD && (ph[i].p_flags & PF_X)) {
			libc_lo = (uintptr_t)eh + ph[i].p_vaddr;
			libc_len = ph[i].p_memsz;
			return 0;
		}
	}
	return -1;
}

/* n bytes between our memory and the program's, EFAULT-safe */
static int peek(void *to, uintptr_t from, size_t n)
{
	struct iovec l = {to, n}, r = {(void *)from, n};
	return process_vm_readv(getpid(), &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -1;
}

static int poke(uintptr_t to, const void *from, size_t n)
{
	struct iovec l = {(void *)from, n}, r = {(void *)to, n};
	return process_vm_writev(getpid(), &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -1;
}

static void lock_app(void)
{
	while (__atomic_exchange_n(&app_sys_lock, 1, __ATOMIC_ACQUIRE))
		sched_yield();
}

static void unlock_app(void) { __atomic_store_n(&app_sys_lock, 0, __ATOMIC_RELEASE); }

#define KMASK_FIXED ((1ull << (SIGKILL - 1)) | (1ull << (SIGSTOP - 1)) | (1ull << (SIGSYS - 1)))

/* rt_sigprocmask(how, set, oset, size), made on the mask the handler
 * returns to, in the kernel's order (new set read, mask changed, old one
 * written) */
static long sigprocmask_on(ucontext_t *uc, const long *a)
{
	uint64_t cur, k = 0;
	if (a[3] != 8)
		return -EINVAL;
	memcpy(&cur, &uc->uc_sigmask, 8);
	uint64_t old = cur;
	if (a[1]) {
		if (peek(&k, (uintptr_t)a[1], 8) < 0)
			return -EFAULT;
		switch (a[0]) {
		case SIG_BLOCK: cur |= k; break;
		case SIG_UNBLOCK: cur &= ~k; break;
		case SIG_SETMASK: cur = k; break;
		default: return -EINVAL;
		}
		cur &= ~KMASK_FIXED;
		memcpy(&uc->uc_sigmask, &cur, 8);
	}
	if (a[2] && poke((uintptr_t)a[2], &old, 8) < 0)
		return -EFAULT;
	return 0;
}

/* the kernel's struct for rt_sigaction on x86_64 */
struct ksigaction {
	void *handler;
	unsigned long flags;
	void *restorer;
	uint64_t mask;
};

/* rt_sigaction(SIGSYS, ...) made outside libc: kept as the program's,
 * as libc's sigaction is (fivc_sud_sigaction) */
static long sigaction_sys(const long *a)
{
	struct ksigaction kn, ko;
	struct sigaction n, o;
	if (a[3] != 8)
		return -EINVAL;
	if (a[1]) {
		if (peek(&kn, (uintptr_t)a[1], sizeof(kn)) < 0)
			return -EFAULT;
		memset(&n, 0, sizeof(n));
		n.sa_flags = (int)kn.flags & ~SA_RESTORER;
		if (kn.flags & SA_SIGINFO)
			n.sa_sigaction = (void (*)(int, siginfo_t *, void *))kn.handler;
		else
			n.sa_handler = (void (*)(int))kn.handler;
		memcpy(&n.sa_mask, &kn.mask, 8);
	}
	fivc_sud_sigaction(a[1] ? &n : NULL, &o);
	memset(&ko, 0, sizeof(ko));
	ko.handler = o.sa_flags & SA_SIGINFO ? (void *)o.sa_sigaction : (void *)o.sa_handler;
	ko.flags = (unsigned long)o.sa_flags;
	memcpy(&ko.mask, &o.sa_mask, 8);
	if (a[2] && poke((uintptr_t)a[2], &ko, sizeof(ko)) < 0)
		return -EFAULT;
	return 0;
}

/* A SIGSYS that is not a dispatched call: the program's, as it asked. */
static void app_sigsys(int sig, siginfo_t *si, void *uc)
{
	lock_app();
	struct sigaction a = app_sys;
	if (a.sa_flags & SA_RESETHAND) {
		memset(&app_sys, 0, sizeof(app_sys));
		app_sys.sa_handler = SIG_DFL;
	}
	unlock_app();
	if (a.sa_flags & SA_SIGINFO) {
		if (a.sa_sigaction)
			a.sa_sigaction(sig, si, uc);
		return;
	}
	if (a.sa_handler == SIG_IGN)
		return;
	if (a.sa_handler != SIG_DFL) {
		a.sa_handler(sig);
		return;
	}
	/* the default action (a core dump): as the kernel would */
	struct sigaction d;
	memset(&d, 0, sizeof(d));
	d.sa_handler = SIG_DFL;
	real_sigaction(SIGSYS, &d, NULL);
	sigset_t one;
	sigemptyset(&one);
	sigaddset(&one, SIGSYS);
	real_sigprocmask(SIG_UNBLOCK, &one, NULL);
	raise(SIGSYS);
}

/* made again where it was, with the selector at ALLOW */
static long again(greg_t *g, long nr)
{
	g[REG_RIP] -= 2; /* syscall and int $0x80 are both two bytes */
	fivc_sud_sel = SEL_ALLOW;
	fivc_sud_stale = 1;
	return nr;
}

static void on_sigsys(int sig, siginfo_t *si, void *ucv)
{
	if (si->si_code != SYS_USER_DISPATCH) {
		app_sigsys(sig, si, ucv);
		return;
	}
	ucontext_t *uc = ucv;
	greg_t *g = uc->uc_mcontext.gregs;
	int saved = errno;
	long nr = si->si_syscall;
	long a[6] = {g[REG_RDI], g[REG_RSI], g[REG_RDX], g[REG_R10], g[REG_R8], g[REG_R9]};
	long r;
	if (si->si_arch != AUDIT_ARCH_X86_64) {
		r = again(g, g[REG_RAX]);
		goto out;
	}
	switch (nr) {
	case SYS_rt_sigreturn:
	case SYS_vfork:
	case SYS_clone3:
		r = again(g, nr);
		break;
	case SYS_clone:
		if ((a[0] & (CLONE_VM | CLONE_VFORK | CLONE_SETTLS)) || a[1]) {
			r = again(g, nr);
			break;
		}
		goto plain; /* (a fork: its child armed below) */
	case SYS_rt_sigprocmask:
		r = sigprocmask_on(uc, a);
		break;
	case SYS_rt_sigaction:
		if (a[0] == SIGSYS) {
			r = sigaction_sys(a);
			break;
		}
		goto plain;
	case SYS_io_uring_setup:
		if (__atomic_load_n(&fivc_ready, __ATOMIC_ACQUIRE))
			fivc_uring_seen("a system call outside libc");
		/* fallthrough */
	default:
	plain:
		/* calls.c's dispatch: ours for descriptors, the kernel's for the rest */
		r = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
		if (r == -1)
			r = -errno;
		else if (r == 0 && nr == SYS_clone)
			arm(); /* a fork child: the dispatch is not inherited */
		break;
	}
out:
	g[REG_RAX] = r;
	errno = saved;
}

static void sud_fork_child(void)
{
	if (fivc_sud_on)
		arm();
}

static void resolve_next(void)
{
	real_sigaction = (__typeof__(real_sigaction))dlsym(RTLD_NEXT, "sigaction");
	real_sigprocmask = (__typeof__(real_sigprocmask))dlsym(RTLD_NEXT, "sigprocmask");
	real_pthread_sigmask = (__typeof__(real_pthread_sigmask))dlsym(RTLD_NEXT, "pthread_sigmask");
	real_pthread_create = (__typeof__(real_pthread_create))dlsym(RTLD_NEXT, "pthread_create");
}

__attribute__((constructor)) static void sud_init(void)
{
	resolve_next(); /* (now: the mask calls may come from a handler) */
	const char *v = getenv("FASTIVC_TRAP_SYSCALLS");
	if (!v || !*v || !strcmp(v, "0"))
		return;
	if (!real_sigaction || !real_sigprocmask || !real_pthread_sigmask ||
	    !real_pthread_create || find_libc() < 0)
		return;
	(void)syscall(SYS_getppid); /* calls.c resolves libc's syscall() now */
	struct sigaction sa, old;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigsys;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	if (real_sigaction(SIGSYS, &sa, &old) < 0)
		return;
	app_sys = old;
	sigset_t one;
	sigemptyset(&one);
	sigaddset(&one, SIGSYS);
	real_pthread_sigmask(SIG_UNBLOCK, &one, NULL);
	__atomic_store_n(&fivc_sud_on, 1, __ATOMIC_RELEASE);
	pthread_atfork(NULL, NULL, sud_fork_child);
	arm();
	if (!t_armed) {
		real_sigaction(SIGSYS, &old, NULL);
		__atomic_store_n(&fivc_sud_on, 0, __ATOMIC_RELEASE);
	}
}

/* sigaction(SIGSYS, ...) from the program while ours is installed */
int fivc_sud_sigaction(const struct sigaction *act, struct sigaction *old)
{
	lock_app();
	struct sigaction o = app_sys;
	if (act) {
		app_sys = *act;
		sigdelset(&app_sys.sa_mask, SIGSYS);
	}
	unlock_app();
	if (old)
		*old = o;
	return 0;
}
#else
__attribute__((constructor)) static void sud_init(void)
{
	real_sigprocmask = dlsym(RTLD_NEXT, "sigprocmask");
	real_pthread_sigmask = dlsym(RTLD_NEXT, "pthread_sigmask");
	real_pthread_create = dlsym(RTLD_NEXT, "pthread_create");
}
void fivc_sud_fresh(void) { fivc_sud_stale = 0; }
int fivc_sud_sigaction(const struct sigaction *act, struct sigaction *old)
{
	(void)act;
	(void)old;
	errno = ENOSYS;
	return -1;
}
#endif

/* ---- what keeps SIGSYS unblocked, and the threads armed ---- */

static const sigset_t *without_sys(int how, const sigset_t *set, sigset_t *copy)
{
	if (!set || how == SIG_UNBLOCK || !__atomic_load_n(&fivc_sud_on, __ATOMIC_ACQUIRE) ||
	    sigismember(set, SIGSYS) != 1)
		return set;
	*copy = *set;
	sigdelset(copy, SIGSYS);
	return copy;
}

FIVC_EXPORT int sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
	int (*f)(int, const sigset_t *, sigset_t *) = real_sigprocmask;
	if (!f && !(f = (__typeof__(f))dlsym(RTLD_NEXT, "sigprocmask"))) {
		errno = ENOSYS;
		return -1;
	}
	sigset_t c;
	return f(how, without_sys(how, set, &c), old);
}

FIVC_EXPORT int pthread_sigmask(int how, const sigset_t *set, sigset_t *old)
{
	int (*f)(int, const sigset_t *, sigset_t *) = real_pthread_sigmask;
	if (!f && !(f = (__typeof__(f))dlsym(RTLD_NEXT, "pthread_sigmask")))
		return ENOSYS;
	sigset_t c;
	return f(how, without_sys(how, set, &c), old);
}

struct start {
	void *(*fn)(void *);
	void *arg;
};

static void *started(void *p)
{
	struct start s = *(struct start *)p;
	free(p);
#if defined(__x86_64__)
	arm();
#endif
	return s.fn(s.arg);
}

FIVC_EXPORT int pthread_create(pthread_t *t, const pthread_attr_t *attr,
			       void *(*fn)(void *), void *arg)
{
	int (*f)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *) =
		real_pthread_create;
	if (!f && !(f = (__typeof__(f))dlsym(RTLD_NEXT, "pthread_create")))
		return EAGAIN;
	if (!__atomic_load_n(&fivc_sud_on, __ATOMIC_ACQUIRE))
		return f(t, attr, fn, arg);
	struct start *s = malloc(sizeof(*s));
	if (!s)
		return EAGAIN;
	s->fn = fn;
	s->arg = arg;
	int r = f(t, attr, started, s);
	if (r)
		free(s);
	return r;
}
