#ifndef GRADSERVE_COPENBLAS_SHIM_H
#define GRADSERVE_COPENBLAS_SHIM_H
#include <cblas.h>
#endif
