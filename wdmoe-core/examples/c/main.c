/*
 * Calls the wdmoe-core C ABI (include/wdmoe.h) in float and double and
 * checks every result against a hand-computed value. Exit status 0 when all
 * checks pass, 1 otherwise. Built and run by build_and_run.sh.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "wdmoe.h"

static int checks, failures;
static const char *precision;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        checks++;                                                                    \
        if (!(cond)) {                                                               \
            failures++;                                                              \
            fprintf(stderr, "FAIL [%s] %s:%d: %s\n", precision, __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

/* |got - want| <= REL * |want| (REL: the precision's relative tolerance). */
#define CLOSE(got, want) (fabs((double)(got) - (double)(want)) <= REL * fabs((double)(want)))

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define SFX(name) CAT(name, SUFFIX)

#define F float
#define SUFFIX _f32
#define REL 1e-5
#include "cases.inc"
#undef F
#undef SUFFIX
#undef REL

#define F double
#define SUFFIX _f64
#define REL 1e-12
#include "cases.inc"
#undef F
#undef SUFFIX
#undef REL

int main(void) {
    precision = "f32";
    test_selection_f32();
    test_link_f32();
    test_latency_f32();
    test_bandwidth_f32();

    precision = "f64";
    test_selection_f64();
    test_link_f64();
    test_latency_f64();
    test_bandwidth_f64();

    precision = "status";
    CHECK(strcmp(wdmoe_status_message(WDMOE_OK), "ok") == 0);
    CHECK(strstr(wdmoe_status_message(WDMOE_ERR_THETA_OUT_OF_RANGE), "theta") != NULL);
    CHECK(strcmp(wdmoe_status_message(-1000), "unknown status code") == 0);
    for (int code = WDMOE_ERR_INFEASIBLE; code <= WDMOE_OK; code++) {
        CHECK(strcmp(wdmoe_status_message(code), "unknown status code") != 0);
    }

    printf("wdmoe C ABI: %d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
