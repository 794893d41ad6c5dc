/* debugregs_hw: debugregs.c's data and instruction breakpoints only (see there). */
#define DEBUGREGS_HW 1
#include "debugregs.c"
