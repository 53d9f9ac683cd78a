/* Whether this machine runs the AMX tile instructions that -march=native lets ggml compile in.
 *
 * Some CPUs report AMX while the (virtual) machine faults on it, and ggml's AMX kernels then kill the process on the
 * first matrix product. The build runs this program compiled as ggml-cpu is; when it does not exit 0, AMX is left
 * out of the build (CMakeLists.txt). Without AMX in the compiler's target there is nothing to check. */
#if defined(__AMX_TILE__) && defined(__linux__)
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

struct tile_config {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

int main(void) {
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
        return 2; /* ggml checks this itself and keeps to its other kernels */
    }
    _Alignas(64) struct tile_config config;
    memset(&config, 0, sizeof config);
    config.palette_id = 1; /* the shapes ggml's kernels load: 8x64 and 16x32 / 16x64 bytes */
    for (int i = 0; i < 8; i++) {
        config.rows[i] = i < 2 ? 8 : 16;
        config.colsb[i] = i == 2 || i == 3 ? 32 : 64;
    }
    _tile_loadconfig(&config);
    _Alignas(64) int8_t data[16 * 64];
    memset(data, 1, sizeof data);
    _tile_loadd(4, data, 64);
    _tile_stored(4, data, 64);
    _tile_release();
    return data[0] == 1 ? 0 : 1;
}
#else
int main(void) { return 0; }
#endif
