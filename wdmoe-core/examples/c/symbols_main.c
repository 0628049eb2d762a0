/*
 * Symbol hygiene of the static library (see standin_libc.c): memcpy, expf
 * and sqrtf called by this program must resolve to the C library linked
 * after libwdmoe_core.a, and the library must still work. Exit status 0 on
 * success. Built with -fno-builtin so the calls stay calls.
 */
#include <stdio.h>
#include <string.h>

#include "wdmoe.h"

extern unsigned standin_memcpy_calls;
float expf(float x);
float sqrtf(float x);

int main(void) {
    int failed = 0;
    char a[8] = "wdmoe", b[8] = {0};
    memcpy(b, a, sizeof a);
    volatile float zero = 0.0f, four = 4.0f;
    float e = expf(zero), r = sqrtf(four);
    if (standin_memcpy_calls < 1 || strcmp(b, "wdmoe") != 0) {
        fprintf(stderr, "FAIL: memcpy did not resolve to the C library linked after wdmoe\n");
        failed = 1;
    }
    if (e != 42.0f || r != 42.0f) { /* the stand-in's marker values */
        fprintf(stderr, "FAIL: expf/sqrtf did not resolve to the C library linked after wdmoe\n");
        failed = 1;
    }
    /* The library itself still links and works (its math is its own). */
    float pl = 0;
    if (wdmoe_free_space_path_loss_db_f32(3.5f, 100.0f, &pl) != WDMOE_OK || pl < 83.0f || pl > 83.6f) {
        fprintf(stderr, "FAIL: wdmoe_free_space_path_loss_db_f32 = %f\n", (double)pl);
        failed = 1;
    }
    if (!failed) printf("symbol hygiene: memcpy, expf, sqrtf resolve to the C library; wdmoe works\n");
    return failed;
}
