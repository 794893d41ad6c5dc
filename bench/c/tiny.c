/*
 * tiny: the smallest static program -- exit(0) straight from _start, no libc.
 * osbench's fork+exec execs it, so that measurement is the kernel's
 * fork/exec/exit/wait path, not a dynamic loader or libc start-up.
 * Build: gcc -O2 -static -nostdlib -fno-pie -no-pie -o tiny tiny.c
 */
void _start(void) __attribute__((noreturn));
void _start(void)
{
    asm volatile("mov $60, %%eax\n\t"      /* SYS_exit */
                 "xor %%edi, %%edi\n\t"
                 "syscall" ::: "memory");
    __builtin_unreachable();
}
