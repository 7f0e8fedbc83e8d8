// Host emulation of the CUDA subset used by plugins/kernels, so the kernels' index arithmetic can be
// checked on a CPU-only machine. Every block runs its threads as std::threads; blocks run one after another,
// so `static` stands in for __shared__. Within a block the warps take turns (emu::Block): one warp runs at a
// time, in order, from one __syncthreads() to the next, its 32 lanes concurrently. That is one schedule a GPU
// may pick, and one that makes a missing __syncthreads() show on every run, not by chance: warp 0 reads a shared
// tile the other warps have not written yet (or overwrites one they have not read). WMMA (mma.h) is emulated, with
// the rules of the CUDA programming guide checked (see nvcuda::wmma below); a violation is recorded in
// emu::misuse, which the entry points report.
// The test (test_kernels_emulated.py) appends the kernel source, with each `k<<<g, b, sh, st>>>(args);`
// rewritten to `emu::launch(g, b, sh, [=] { k(args); });`, and compiles it with g++ -std=c++20.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace emu
{
inline thread_local dim3 thread_idx;
inline thread_local dim3 block_idx;
inline thread_local unsigned long long collective_calls = 0; //!< warp collectives this thread made in its block
inline thread_local int turn_seen = 0; //!< the turn of its warp this thread last ran in (emu::Block)
inline thread_local int warp_idx = 0; //!< linear thread index / 32
inline thread_local int lane_idx = 0; //!< linear thread index % 32
inline dim3 block_dim;
inline dim3 grid_dim;
inline std::vector<unsigned char> dynamic_shared_memory;
inline int multiprocessor_count = 1;
// Compute capability x 10 of the emulated GPU, and the architecture its kernels' code was compiled for (the PTX
// version cudaFuncGetAttributes reports): a test sets them to emulate an older GPU or an older build.
inline int compute_capability = 90;
inline int code_architecture = 90;
// 0: blocks run in CUDA's linear order; otherwise in a permutation drawn with this seed (a GPU schedules
// blocks in no fixed order: a result that depends on it, such as partial sums added atomically, differs).
inline unsigned block_order_seed = 0;

// The first misuse of the emulated API found since the last clear (empty: none), e.g. a WMMA pointer that is
// not 32-byte aligned.
inline std::mutex misuse_mutex;
inline std::string misuse;

inline void report_misuse(std::string const& what)
{
    std::lock_guard<std::mutex> lock(misuse_mutex);
    if (misuse.empty())
    {
        misuse = what + " (block " + std::to_string(block_idx.x) + "," + std::to_string(block_idx.y) + ","
            + std::to_string(block_idx.z) + ", warp " + std::to_string(warp_idx) + ")";
    }
}

// One block's warps taking turns: warp `turn` runs until each of its live lanes has arrived at __syncthreads()
// (or returned), then the next warp with live lanes; after the last one the barrier opens (the next phase) and the
// first warp runs again. A warp's lanes wait for its turn count to pass the one they last ran in (a semaphore
// would let a fast lane take a slow one's permit); only the running warp's lanes touch `pending` and `live` of
// their warp, and the last of them hands the turn on.
// Warp collectives (WMMA) meet the 32 lanes of the running warp at its std::barrier (see wmma::detail).
struct Block
{
    std::vector<int> lanes;
    std::vector<std::atomic<int>> live;    // lanes of the warp that have not returned
    std::vector<std::atomic<int>> pending; // lanes of the warp that have not arrived in this turn
    std::vector<std::atomic<int>> turns; // turns the warp has been given in this launch
    std::vector<std::unique_ptr<std::barrier<>>> collective;

    explicit Block(int threads) : live((threads + 31) / 32), pending((threads + 31) / 32), turns((threads + 31) / 32)
    {
        for (int w = 0; w < static_cast<int>(pending.size()); ++w)
        {
            lanes.push_back(std::min(32, threads - 32 * w));
            collective.push_back(std::make_unique<std::barrier<>>(lanes.back()));
        }
        reset();
    }

    // The next block, warp 0 first (called while no thread is inside a block).
    void reset()
    {
        for (size_t w = 0; w < lanes.size(); ++w)
            live[w].store(lanes[w]);
        hand_on(-1);
    }

    // Starts the turn of the first warp after `warp` with live lanes; after the last warp, a new phase.
    void hand_on(int warp)
    {
        int const warps = static_cast<int>(lanes.size());
        int next = warp + 1;
        while (next < warps && live[next] == 0)
            ++next;
        if (next == warps)
        {
            next = 0;
            while (next < warps && live[next] == 0)
                ++next;
            if (next == warps)
                return; // every thread has returned: the block is done
        }
        pending[next].store(live[next]);
        turns[next].fetch_add(1);
        turns[next].notify_all();
    }

    // Waits for the warp's next turn (`seen`: the turn this thread last ran in).
    void wait_turn(int warp, int& seen)
    {
        turns[warp].wait(seen);
        seen = turns[warp].load();
    }

    void start(int warp, int& seen)
    {
        wait_turn(warp, seen);
    }

    void sync(int warp, int& seen)
    {
        if (pending[warp].fetch_sub(1) == 1)
            hand_on(warp);
        wait_turn(warp, seen);
    }

    void exit(int warp)
    {
        live[warp].fetch_sub(1); // only lanes of the running warp change it
        if (pending[warp].fetch_sub(1) == 1)
            hand_on(warp);
    }

    // Whether all 32 lanes of `warp` are still in the kernel (a warp collective needs every one).
    bool warp_whole(int warp) const
    {
        return lanes[warp] == 32 && live[warp] == 32;
    }
};

inline Block* block = nullptr;

// One std::thread per thread of a block, reused for every block of the grid (creating threads per block
// dominated the test time). Blocks run in the order block_order_seed gives; a thread that returns from the
// kernel drops out of its warp's turns, and the block's state is renewed for the next block once all are done.
template <typename Kernel>
void launch(dim3 grid, dim3 block_size, size_t shared_bytes, cudaStream_t, Kernel kernel)
{
    grid_dim = grid;
    block_dim = block_size;
    dynamic_shared_memory.assign(shared_bytes, 0);
    int const threads = block_size.x * block_size.y * block_size.z;
    long long const blocks = static_cast<long long>(grid.x) * grid.y * grid.z;
    std::vector<long long> order(blocks);
    std::iota(order.begin(), order.end(), 0LL);
    if (block_order_seed != 0)
    {
        std::shuffle(order.begin(), order.end(), std::mt19937(block_order_seed));
    }
    Block state(threads);
    block = &state;
    auto renew = [&]() noexcept { state.reset(); };
    std::barrier<decltype(renew)> block_done(threads, renew);
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
    {
        workers.emplace_back([&, t] {
            thread_idx = dim3(t % block_size.x, (t / block_size.x) % block_size.y, t / (block_size.x * block_size.y));
            warp_idx = t / 32;
            lane_idx = t % 32;
            turn_seen = 0;
            for (long long const b : order)
            {
                block_idx = dim3(b % grid.x, (b / grid.x) % grid.y, b / (static_cast<long long>(grid.x) * grid.y));
                collective_calls = 0;
                state.start(warp_idx, turn_seen);
                kernel();
                state.exit(warp_idx);
                block_done.arrive_and_wait();
            }
        });
    }
    for (auto& w : workers)
        w.join();
    block = nullptr;
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
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define threadIdx (::emu::thread_idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define __syncthreads() (::emu::block->sync(::emu::warp_idx, ::emu::turn_seen))

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

// The emulated GPU: emu::multiprocessor_count multiprocessors, compute capability emu::compute_capability.
extern "C" cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int)
{
    *value = attribute == cudaDevAttrComputeCapabilityMajor ? emu::compute_capability / 10
        : attribute == cudaDevAttrComputeCapabilityMinor   ? emu::compute_capability % 10
                                                           : emu::multiprocessor_count;
    return cudaSuccess;
}

// Every kernel compiled for emu::code_architecture.
extern "C" cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, void const*)
{
    *attributes = cudaFuncAttributes{};
    attributes->ptxVersion = emu::code_architecture;
    attributes->binaryVersion = std::max(emu::code_architecture, emu::compute_capability);
    return cudaSuccess;
}

// WMMA (mma.h) as the CUDA programming guide specifies it, for the shapes and types the kernels may use:
//   - fragments: m16n16k8 precision::tf32 (float storage) and m16n16k16 / m32n8k16 / m8n32k16 __half operands,
//     float accumulators of the same shape; a fragment's elements are reachable only through these calls (its
//     storage has no public name), and start as NaN with `set` false: using one not yet filled, loaded or
//     computed is a misuse;
//   - every call is warp-collective: all 32 lanes of the warp meet (no lane may have returned), pass the same
//     pointer, ldm, layout and value (else a misuse), and lane 0, which holds the warp's whole fragment here,
//     does the work while the other lanes wait, so each warp owns its fragments;
//   - load_matrix_sync / store_matrix_sync: the pointer 256-bit (32-byte) aligned, ldm a multiple of 16 bytes
//     (8 halves, 4 floats); row_major / mem_row_major element (i, j) at p[i * ldm + j], col_major at p[i + j * ldm];
//   - mma_sync: d = a b + c in float, k in order; TF32 operands are read as the tensor core reads them, the
//     low 13 mantissa bits ignored (__float_to_tf32 rounds them off first, to nearest with ties away, as
//     cvt.rna.tf32.f32), half operands exactly.
namespace nvcuda::wmma
{
struct matrix_a;
struct matrix_b;
struct accumulator;
struct row_major;
struct col_major;
namespace precision
{
struct tf32;
}
enum layout_t
{
    mem_row_major,
    mem_col_major,
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment
{
    static constexpr bool kTf32 = std::is_same_v<T, precision::tf32>;
    static constexpr bool kHalf = std::is_same_v<T, __half>;
    static constexpr bool kAccumulator = std::is_same_v<Use, accumulator>;
    static constexpr bool kLayout = std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>;
    static_assert(kAccumulator ? std::is_same_v<T, float> && std::is_void_v<Layout> : (kTf32 || kHalf) && kLayout,
        "WMMA fragment: an operand is tf32 or __half with a layout, an accumulator float without one");
    static constexpr bool kHalfShape = K == 16 && ((M == 16 && N == 16) || (M == 32 && N == 8) || (M == 8 && N == 32));
    static_assert(kAccumulator || (kTf32 ? M == 16 && N == 16 && K == 8 : kHalfShape),
        "WMMA shape: m16n16k8 for tf32; m16n16k16, m32n8k16 or m8n32k16 for __half");
    static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
    static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
    using Element = std::conditional_t<kHalf, __half, float>; // what load_matrix_sync reads
    float emu_value_[rows * cols];
    bool emu_set_ = false;

    fragment()
    {
        std::fill(std::begin(emu_value_), std::end(emu_value_), std::nanf(""));
    }
};

namespace detail
{
inline float to_float(float v)
{
    return v;
}

inline float to_float(__half v)
{
    return __half2float(v);
}

// The TF32 value a tensor core multiplies: the float with its low 13 mantissa bits cleared.
inline float tf32_bits(float v)
{
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits &= ~0x1FFFu;
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

struct Arguments
{
    void const* pointer;
    unsigned ldm;
    int layout;
    float value;

    bool operator==(Arguments const&) const = default;
};

// Per thread of the block, by parity of its collective calls in the block: a lane may publish its arguments for
// the next call while lane 0 still reads those of this one, but no further (that call's barrier waits for lane 0).
inline Arguments lane_arguments[2][1024];

// Runs `work` on lane 0 of the calling warp once all 32 lanes have arrived; lane 0 checks that they passed its
// arguments. The other lanes go on meanwhile, as on a GPU, where another lane sees a fragment's stores only
// after a __syncwarp or __syncthreads.
template <typename Work>
void collective(char const* name, Arguments const& arguments, Work work)
{
    int const warp = ::emu::warp_idx;
    if (!::emu::block->warp_whole(warp))
    {
        ::emu::report_misuse(std::string(name) + " called by a warp that is not whole (a lane returned, or the "
            "block is not a multiple of 32 threads)");
        return; // the lanes would never meet
    }
    Arguments* const slots = lane_arguments[::emu::collective_calls++ % 2] + 32 * warp;
    slots[::emu::lane_idx] = arguments;
    ::emu::block->collective[warp]->arrive_and_wait();
    if (::emu::lane_idx == 0)
    {
        for (int lane = 1; lane < 32; ++lane)
        {
            if (!(slots[lane] == arguments))
            {
                ::emu::report_misuse(std::string(name) + ": lane " + std::to_string(lane)
                    + " passed other arguments than lane 0");
                break;
            }
        }
        work();
    }
}

template <typename E>
void check_memory(char const* name, E const* p, unsigned ldm)
{
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
        ::emu::report_misuse(std::string(name) + ": pointer not 256-bit (32-byte) aligned");
    if ((ldm * sizeof(E)) % 16 != 0)
        ::emu::report_misuse(std::string(name) + ": ldm " + std::to_string(ldm) + " is not a multiple of 16 bytes");
}

inline size_t offset(int i, int j, unsigned ldm, bool row)
{
    return row ? static_cast<size_t>(i) * ldm + j : i + static_cast<size_t>(j) * ldm;
}
} // namespace detail

inline float __float_to_tf32(float v)
{
    if (std::isnan(v))
        return v;
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits = (bits + 0x1000u) & ~0x1FFFu; // keep 10 of 23 mantissa bits, rounding to nearest (ties away), as cvt.rna
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float v)
{
    detail::collective("fill_fragment", {nullptr, 0, 0, v}, [&] {
        std::fill(std::begin(f.emu_value_), std::end(f.emu_value_), v);
        f.emu_set_ = true;
    });
}

// matrix_a / matrix_b fragments (the layout is the fragment's).
template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f,
    typename fragment<Use, M, N, K, T, Layout>::Element const* p, unsigned ldm)
{
    using F = fragment<Use, M, N, K, T, Layout>;
    static_assert(!F::kAccumulator, "an accumulator is loaded with a layout_t");
    detail::collective("load_matrix_sync", {p, ldm, 0, 0.f}, [&] {
        detail::check_memory("load_matrix_sync", p, ldm);
        for (int i = 0; i < F::rows; ++i)
            for (int j = 0; j < F::cols; ++j)
                f.emu_value_[i * F::cols + j]
                    = detail::to_float(p[detail::offset(i, j, ldm, std::is_same_v<Layout, row_major>)]);
        f.emu_set_ = true;
    });
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, float const* p, unsigned ldm, layout_t layout)
{
    detail::collective("load_matrix_sync", {p, ldm, layout, 0.f}, [&] {
        detail::check_memory("load_matrix_sync", p, ldm);
        for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j)
                f.emu_value_[i * N + j] = p[detail::offset(i, j, ldm, layout == mem_row_major)];
        f.emu_set_ = true;
    });
}

template <int M, int N, int K, typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, fragment<matrix_a, M, N, K, T, LayoutA> const& a,
    fragment<matrix_b, M, N, K, T, LayoutB> const& b, fragment<accumulator, M, N, K, float> const& c)
{
    constexpr bool kTf32 = std::is_same_v<T, precision::tf32>;
    detail::collective("mma_sync", {nullptr, 0, 0, 0.f}, [&] {
        if (!a.emu_set_ || !b.emu_set_ || !c.emu_set_)
            ::emu::report_misuse("mma_sync: a fragment used before it was loaded, filled or computed");
        float result[M * N];
        for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j)
            {
                float acc = c.emu_value_[i * N + j];
                for (int k = 0; k < K; ++k)
                {
                    float const x = a.emu_value_[i * K + k];
                    float const y = b.emu_value_[k * N + j];
                    acc += kTf32 ? detail::tf32_bits(x) * detail::tf32_bits(y) : x * y;
                }
                result[i * N + j] = acc;
            }
        std::copy(std::begin(result), std::end(result), std::begin(d.emu_value_)); // d may be c
        d.emu_set_ = true;
    });
}

template <int M, int N, int K>
void store_matrix_sync(float* p, fragment<accumulator, M, N, K, float> const& f, unsigned ldm, layout_t layout)
{
    detail::collective("store_matrix_sync", {p, ldm, layout, 0.f}, [&] {
        detail::check_memory("store_matrix_sync", p, ldm);
        if (!f.emu_set_)
            ::emu::report_misuse("store_matrix_sync: a fragment stored before it was filled or computed");
        for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j)
                p[detail::offset(i, j, ldm, layout == mem_row_major)] = f.emu_value_[i * N + j];
    });
}
} // namespace nvcuda::wmma
