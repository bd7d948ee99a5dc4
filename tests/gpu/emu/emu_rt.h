#pragma once
#include <functional>
void emu_launch(int grid, size_t dyn_smem, int policy, unsigned seed, const std::function<void()> &body);
void *emu_galloc(size_t bytes);
extern long emu_switches;
struct uint3;
void emu_launch3(uint3 grid, uint3 block, size_t dyn_smem, bool cooperative, int policy, unsigned seed,
                 const std::function<void()> &body);
