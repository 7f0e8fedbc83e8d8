// Host emulation of the CUDA subset used by plugins/kernels, so the kernels' index arithmetic can be
// checked on a CPU-only machine. Every block runs its threads as std::threads meeting at a std::barrier
// for __syncthreads(); blocks run one after another, so `static` stands in for __shared__.
// The test (test_kernels_emulated.py) appends the kernel source, with each `k<<<g, b, sh, st>>>(args);`
// rewritten to `emu::launch(g, b, sh, [=] { k(args); });`, and compiles it with g++ -std=c++20.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <numeric>
#include <optional>
#include <random>
#include <thread>
#include <vector>

namespace emu
{
inline thread_local dim3 thread_idx;
inline thread_local dim3 block_idx;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline dim3 block_dim;
inline dim3 grid_dim;
inline std::vector<unsigned char> dynamic_shared_memory;
inline int multiprocessor_count = 1;
// 0: blocks run in CUDA's linear order; otherwise in a permutation drawn with this seed (a GPU schedules
// blocks in no fixed order: a result that depends on it, such as partial sums added atomically, differs).
inline unsigned block_order_seed = 0;

// One std::thread per thread of a block, reused for every block of the grid (creating threads per block
// dominated the test time). Blocks run in the order block_order_seed gives; a thread that returns from the kernel drops
// out of the block's __syncthreads barrier, which is renewed for the next block once all threads are done.
template <typename Kernel>
void launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t, Kernel kernel)
{
    grid_dim = grid;
    block_dim = block;
    dynamic_shared_memory.assign(shared_bytes, 0);
    int const threads = block.x * block.y * block.z;
    long long const blocks = static_cast<long long>(grid.x) * grid.y * grid.z;
    std::vector<long long> order(blocks);
    std::iota(order.begin(), order.end(), 0LL);
    if (block_order_seed != 0)
    {
        std::shuffle(order.begin(), order.end(), std::mt19937(block_order_seed));
    }
    std::optional<std::barrier<>> sync;
    sync.emplace(threads);
    auto renew = [&]() noexcept { sync.emplace(threads); };
    std::barrier<decltype(renew)> block_done(threads, renew);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
    {
        workers.emplace_back([&, t] {
            thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            for (long long const b : order)
            {
                block_idx = dim3(b % grid.x, (b / grid.x) % grid.y, b / (static_cast<long long>(grid.x) * grid.y));
                block_barrier = &*sync;
                kernel();
                sync->arrive_and_drop();
                block_done.arrive_and_wait();
            }
        });
    }
    for (auto& w : workers)
        w.join();
}

template <typename T>
T* dynamic_shared()
{
    return reinterpret_cast<T*>(dynamic_shared_memory.data());
}
} // namespace emu

#undef __global__
#undef __device__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#undef __align__
#define __global__
#define __device__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __align__(n) __attribute__((aligned(n)))
#define threadIdx (::emu::thread_idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define __syncthreads() (::emu::block_barrier->arrive_and_wait())

template <typename T>
inline T emu_ldg(T const* p)
{
    return *p;
}
#define __ldg emu_ldg

extern "C" cudaError_t cudaGetLastError()
{
    return cudaSuccess;
}

extern "C" cudaError_t cudaGetDevice(int* device)
{
    *device = 0;
    return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int)
{
    *value = emu::multiprocessor_count;
    return cudaSuccess;
}
