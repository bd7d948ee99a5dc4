// Stand-in for the CUDA runtime when kernels/cuda is compiled for the host emulator (tests/gpu/emu/cuda_emu.h).
#pragma once
#include "cuda_emu.h"
