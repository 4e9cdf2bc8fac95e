/* qemu TCG plugin: counts guest instructions between marker syscalls (the ARM cost model).
 *
 * Whole-process totals vary run to run (start-up, allocator), so the guest brackets the code to measure with
 * getpid(MAGIC, segment, 1) ... getpid(MAGIC, segment, 2) (getpid ignores its arguments) and this plugin writes
 * "segment count" for each bracket to the file named by out=PATH. Counting is inline per translation block
 * (the same idea as qemu's tests/plugin/insn.c, cheaper): deterministic for a single-threaded guest.
 * Built by setup_arm_emulator.sh against qemu-plugin.h from the qemu source package matching qemu-user.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MARKER_MAGIC 0x7001c0deULL
#define AARCH64_GETPID 172

static uint64_t insn_count;
static uint64_t started_at[64];
static FILE *out;

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insn_count,
                                             qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num != AARCH64_GETPID || a1 != MARKER_MAGIC || a2 >= 64) {
        return;
    }
    if (a3 == 1) {
        started_at[a2] = insn_count;
    } else if (a3 == 2) {
        fprintf(out, "%" PRIu64 " %" PRIu64 "\n", a2, insn_count - started_at[a2]);
        fflush(out);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    out = stderr;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out = fopen(argv[i] + 4, "w");
            if (!out) {
                perror(argv[i] + 4);
                return -1;
            }
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
