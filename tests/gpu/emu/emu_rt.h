#pragma once
#include <functional>
void emu_launch(int grid, size_t dyn_smem, int policy, unsigned seed, const std::function<void()> &body);
void *emu_galloc(size_t bytes); // pages of its own, between guard pages; nullptr when mmap fails
bool emu_gfree(void *p);         // false: not from emu_galloc
void emu_poison(void *p, size_t bytes); // fill with 0x7fc0dead: a NaN in every f32
extern long emu_switches;
struct uint3;
void emu_launch3(uint3 grid, uint3 block, size_t dyn_smem, bool cooperative, int policy, unsigned seed,
                 const std::function<void()> &body);
