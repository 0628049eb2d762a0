/*
 * A stand-in C library for the symbol-hygiene test (build_and_run.sh): it
 * defines memcpy (counting its calls), expf and sqrtf (returning 42). The test links
 *
 *     cc symbols_main.c libwdmoe_core.a libstandin.a
 *
 * i.e. the wdmoe library *before* the C library, as firmware link lines
 * often do. Had the library exported its own (weak) memcpy / expf / sqrtf,
 * the linker would have taken those and never pulled this archive's.
 */
#include <stddef.h>

/* Like a real C library, one function per archive member: build_and_run.sh
 * compiles this file once per function (-DMEMBER=1, 2, 3), so the linker
 * pulls each member only for a symbol still undefined when it gets there. */
#if MEMBER == 1
unsigned standin_memcpy_calls;
void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
    standin_memcpy_calls++;
    return dst;
}
#elif MEMBER == 2
/* A marker value instead of e^x: the test knows the stand-in answered.
 * (No counter: a reference to it would pull this member regardless.) */
float expf(float x) {
    (void)x;
    return 42.0f;
}
#elif MEMBER == 3
float sqrtf(float x) {
    (void)x;
    return 42.0f;
}
#endif
