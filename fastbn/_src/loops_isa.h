/* One instruction set's loops: the vector header and the loop template for float and double,
 * compiled for the target in force (loops.h sets FASTBN_ISA_LEVEL, FASTBN_ISA_SUFFIX and
 * FASTBN_REG_ROWS, and the #pragma GCC target, before including this file once per instruction
 * set). No include guard: it is meant to be included several times. */
#include "simd.h"
#define FASTBN_FLOAT 1
#include "loops_template.c"
#undef FASTBN_FLOAT
#define FASTBN_FLOAT 0
#include "loops_template.c"
#undef FASTBN_FLOAT
#undef FASTBN_REG_ROWS
#undef FASTBN_ISA_SUFFIX
#undef FASTBN_ISA_LEVEL
