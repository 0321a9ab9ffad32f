// crc32c with the SSE4.2 instruction where the CPU has it, table otherwise.
// Written from the polynomial definition (Castagnoli 0x1EDC6F41, reflected 0x82F63B78).
#include "cshim.h"
#include <string.h>

static uint32_t crc32c_table[8][256];
static uint16_t crc16_table[256];
static int tables_ready;
static int have_sse42 = -1;

static void build_tables(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[0][n] = c;
        uint16_t d = (uint16_t)n;
        for (int k = 0; k < 8; k++) d = (d & 1) ? (uint16_t)((d >> 1) ^ 0xA001u) : (uint16_t)(d >> 1);
        crc16_table[n] = d;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc32c_table[0][n];
        for (int t = 1; t < 8; t++) {
            c = crc32c_table[0][c & 0xff] ^ (c >> 8);
            crc32c_table[t][n] = c;
        }
    }
    __atomic_store_n(&tables_ready, 1, __ATOMIC_RELEASE);
}

static inline void ensure_tables(void) {
    if (!__atomic_load_n(&tables_ready, __ATOMIC_ACQUIRE)) build_tables();
}

uint32_t cshim_crc32c_sw(uint32_t crc, const void *buf, size_t len) {
    ensure_tables();
    const uint8_t *p = buf;
    while (len >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = crc32c_table[7][lo & 0xff] ^ crc32c_table[6][(lo >> 8) & 0xff] ^
              crc32c_table[5][(lo >> 16) & 0xff] ^ crc32c_table[4][lo >> 24] ^
              crc32c_table[3][hi & 0xff] ^ crc32c_table[2][(hi >> 8) & 0xff] ^
              crc32c_table[1][(hi >> 16) & 0xff] ^ crc32c_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--) crc = crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len) {
    const uint8_t *p = buf;
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

int cshim_crc32c_hw(void) {
#if defined(__x86_64__)
    if (have_sse42 < 0) {
        __builtin_cpu_init();
        have_sse42 = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    }
    return have_sse42;
#else
    return 0;
#endif
}

uint32_t cshim_crc32c(uint32_t crc, const void *buf, size_t len) {
#if defined(__x86_64__)
    if (cshim_crc32c_hw()) return crc32c_hw(crc, buf, len);
#endif
    return cshim_crc32c_sw(crc, buf, len);
}

uint16_t cshim_crc16(uint16_t crc, const void *buf, size_t len) {
    ensure_tables();
    const uint8_t *p = buf;
    while (len--) crc = (uint16_t)((crc >> 8) ^ crc16_table[(crc ^ *p++) & 0xff]);
    return crc;
}
