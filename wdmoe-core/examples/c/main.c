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
    test_select_into_f32();
    test_link_f32();
    test_latency_f32();
    test_bandwidth_f32();

    precision = "f64";
    test_selection_f64();
    test_select_into_f64();
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

    precision = "diagnostics";
    /* The bad parameter's name, and the version queries. */
    float pl = 0;
    CHECK(wdmoe_uma_path_loss_db_f32(25, 1.5f, 200, 100, 1, &pl) == WDMOE_ERR_OUT_OF_RANGE);
    CHECK(strcmp(wdmoe_last_error_param(), "frequency_ghz") == 0);
    CHECK(wdmoe_free_space_path_loss_db_f32(3.5f, -1, &pl) == WDMOE_ERR_NOT_POSITIVE);
    CHECK(strcmp(wdmoe_last_error_param(), "distance_m") == 0);
    CHECK(wdmoe_kappa_f32(NULL, NULL, 2, &pl) == WDMOE_ERR_NULL_POINTER);
    CHECK(strcmp(wdmoe_last_error_param(), "") == 0);
    CHECK(wdmoe_abi_version() == WDMOE_ABI_VERSION);
    CHECK(strlen(wdmoe_version()) >= 5 && strchr(wdmoe_version(), '.') != NULL);
    wdmoe_set_panic_hook(NULL);

    printf("wdmoe C ABI: %d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
