/*
 * insn_count: a QEMU TCG plugin counting the guest instructions a process executes (all threads),
 * for `make bench-arm64`. Written to the QEMU plugin API, version 1 (QEMU 7.x, as Debian bookworm's
 * qemu-user ships it; Debian packages no qemu-plugin.h, so the few declarations used are restated
 * below from that API's documentation; QEMU's own header is GPL-2.0-or-later).
 *
 *   qemu-aarch64 -plugin ./insn_count.so,out=/tmp/count.txt PROGRAM ARGS...
 *
 * At exit it appends "<pid> <instructions>" to `out` (a forked child appends its own line too, which
 * the reader tells apart by pid). Each translated block adds its instruction count when it runs,
 * atomically: qemu-user runs guest threads in parallel, and an inline (non-atomic) add could lose
 * counts. A block left early by a fault counts whole; that is the only inexactness (rare: signals).
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --- the QEMU plugin API (v1) declarations this plugin uses --- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;  /* only passed through */
struct qemu_plugin_tb;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
/* --- end of API declarations --- */

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

static uint64_t insns;
static char out_path[4096];

static void tb_exec(unsigned int vcpu_index, void *n)
{
    (void)vcpu_index;
    __atomic_fetch_add(&insns, (uint64_t)(uintptr_t)n, __ATOMIC_RELAXED);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)(uintptr_t)qemu_plugin_tb_n_insns(tb));
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    (void)id; (void)p;
    FILE *f = out_path[0] ? fopen(out_path, "a") : stderr;
    if (!f) { perror(out_path); return; }
    fprintf(f, "%ld %" PRIu64 "\n", (long)getpid(), __atomic_load_n(&insns, __ATOMIC_RELAXED));
    if (f != stderr) fclose(f);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
        } else {
            fprintf(stderr, "insn_count: unknown argument '%s' (only out=PATH)\n", argv[i]);
            return 1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
