/* What FASTIVC_TRAP_SYSCALLS=1 (Syscall User Dispatch, csrc/preload/sud.c)
 * costs a system call: getppid through libc (let through by the kernel)
 * and as an instruction of the program's own (trapped, made by the
 * handler).  Build and run both ways, in one run:
 *
 *   cc -O2 -o /tmp/trap-cost scripts/trap-cost.c
 *   for t in 0 1 0 1; do FASTIVC_TRAP_SYSCALLS=$t fastivc run -- /tmp/trap-cost; done
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static long raw_getppid(void)
{
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "a"((long)SYS_getppid) : "rcx", "r11", "memory");
	return r;
}

int main(void)
{
	const int n = 1000000, m = 100000;
	double t = now_ns();
	for (int i = 0; i < n; i++)
		getppid();
	double libc = (now_ns() - t) / n;
	t = now_ns();
	for (int i = 0; i < m; i++)
		raw_getppid();
	double inst = (now_ns() - t) / m;
	const char *v = getenv("FASTIVC_TRAP_SYSCALLS");
	printf("trap=%s getppid through libc %.0f ns, as an instruction %.0f ns\n", v ? v : "-",
	       libc, inst);
	return 0;
}
