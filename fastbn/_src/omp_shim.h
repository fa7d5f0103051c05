/* OpenMP runtime calls with serial fallbacks, so that _kernels.pyx compiles with or without
 * OpenMP. Only the functions fastbn uses are declared. */
#ifndef FASTBN_OMP_SHIM_H
#define FASTBN_OMP_SHIM_H

#ifdef _OPENMP
#include <omp.h>
#define FASTBN_OPENMP 1
#else
#define FASTBN_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
#endif

#endif
