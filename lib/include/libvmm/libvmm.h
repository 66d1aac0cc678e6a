/* libvmm — the umbrella header: include this one. */
#ifndef LIBVMM_H
#define LIBVMM_H
#include "common.h"
#include "machine.h"
#include "block.h"
#include "nbd.h"
#include "control.h"
#include "net.h"
#endif
