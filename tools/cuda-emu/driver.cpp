// A CPU stand-in for the CUDA driver library (libcuda.so.1), so the GPU tests run on machines
// without a GPU: the real launchers, through cudarc, launch the real kernel sources compiled as
// host C++ (device.h); libraries.cpp stands in for the cuDNN, cuBLAS and NCCL calls. It implements the part of the driver API that cudarc
// calls for contexts, streams, events, memory, modules and launches; work runs when it is
// issued, except on a stream that copies from or to page-locked host memory, which runs late
// (the section "Page-locked memory and streams that run late" below). It checks what a GPU would refuse (launch dimensions, shared memory, launch
// bounds) and what a GPU would only corrupt (accesses outside a buffer, copies past one), and
// reports each with the kernel's name. Stream capture records a stream's work into a CUDA graph
// instead of running it, and refuses what a GPU refuses during a capture (the section "Stream
// capture and CUDA graphs" below). Passing here is not passing on a GPU: see
// docs/gpu-status.md.

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "device.h"
#include "memory.h"
#include "registry.h"

namespace emu {
uint3 thread_idx, block_idx;
dim3 block_dim, grid_dim;
constexpr size_t kMaxDynamicShared = 227 * 1024;  // an H100's opt-in limit per block
alignas(256) unsigned char dynamic_shared[kMaxDynamicShared];

std::map<std::string, KernelEntry>& registry() {
    static std::map<std::string, KernelEntry> kernels;
    return kernels;
}

Registrar::Registrar(const char* name, Thunk thunk, int max_threads,
                     std::vector<size_t> param_sizes) {
    registry()[name] = KernelEntry{thunk, max_threads, std::move(param_sizes)};
}

namespace {

// Switching fibers. glibc's swapcontext makes a system call per switch (to save the signal
// mask), which was a third of the emulator's time; on x86-64 a switch saves the callee-saved
// registers and the FP control words on the fiber's own stack instead.
#if defined(__x86_64__)
struct Context {
    void* sp = nullptr;
};

extern "C" void emu_switch_stack(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl emu_switch_stack
    .hidden emu_switch_stack
    .type emu_switch_stack, @function
emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_stack, .-emu_switch_stack
)");

void switch_context(Context& from, Context& to) { emu_switch_stack(&from.sp, to.sp); }

// A stack that emu_switch_stack's first switch to it "returns" into `entry`, which must never
// return, with the stack aligned as at a call and this thread's FP control words.
void start_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    auto* sp = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + bytes) & ~15ull);
    *--sp = 0;                                   // entry's return address, never used
    *--sp = reinterpret_cast<uint64_t>(entry);  // where the switch's `ret` goes
    for (int r = 0; r < 6; ++r) *--sp = 0;       // rbp, rbx, r12-r15
    --sp;
    asm volatile("stmxcsr %0" : "=m"(*reinterpret_cast<uint32_t*>(sp)));
    asm volatile("fnstcw %0" : "=m"(*(reinterpret_cast<uint16_t*>(sp) + 2)));
    c.sp = sp;
}
#else
struct Context {
    ucontext_t uc;
};

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

void start_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif

enum class FiberState { Ready, AtBlockBarrier, AtWarpBarrier, Done, Failed };

struct Fiber {
    Context context;
    FiberState state;
    uint3 index;
    int predicate;
    int shuffle_parity;
};

constexpr size_t kStackBytes = 64 * 1024;
constexpr int kWarp = 32;

// One block in flight: its fibers, the scheduler's context, and the warps' exchange slots.
struct BlockRun {
    std::vector<Fiber> fibers;
    std::vector<char> stacks;
    Context scheduler;
    int current = 0;
    int barrier_or = 0;
    // [warp][parity][lane]: a shuffle posts to one parity and the next to the other, so a lane
    // still reading one cannot see the next shuffle's values.
    std::vector<uint32_t> slots;
    Thunk thunk = nullptr;
    void** params = nullptr;
    std::string error;
};

BlockRun g_run;

Fiber& current_fiber() { return g_run.fibers[g_run.current]; }

int linear_thread(const uint3& t) {
    return (int)(t.x + t.y * block_dim.x + t.z * block_dim.x * block_dim.y);
}

void yield_as(FiberState state) {
    Fiber& f = current_fiber();
    f.state = state;
    switch_context(f.context, g_run.scheduler);
}

void fail(const std::string& why) {
    const uint3 t = current_fiber().index;
    g_run.error = why + " (thread " + std::to_string(t.x) + "," + std::to_string(t.y) + "," +
                  std::to_string(t.z) + " of block " + std::to_string(block_idx.x) + "," +
                  std::to_string(block_idx.y) + "," + std::to_string(block_idx.z) + ")";
    yield_as(FiberState::Failed);
}

[[noreturn]] void fiber_main() {
    g_run.thunk(g_run.params);
    yield_as(FiberState::Done);
    __builtin_unreachable();  // the scheduler never resumes a finished fiber
}

int threads_in_block() { return (int)(block_dim.x * block_dim.y * block_dim.z); }

int lanes_in_warp(int warp) {
    const int rest = threads_in_block() - warp * kWarp;
    return rest < kWarp ? rest : kWarp;
}

// Called when no thread is ready. Releases every warp whose lanes all wait at a shuffle, else the
// whole block, whose live threads then all wait at __syncthreads (threads that exited do not
// count, as on a GPU). False when a warp's lanes wait at different places: a deadlock.
bool release_barriers() {
    const int n = threads_in_block();
    bool released = false;
    for (int w = 0; w * kWarp < n; ++w) {
        int live = 0, waiting = 0;
        for (int i = w * kWarp; i < w * kWarp + lanes_in_warp(w); ++i) {
            const FiberState s = g_run.fibers[i].state;
            live += s != FiberState::Done;
            waiting += s == FiberState::AtWarpBarrier;
        }
        if (waiting == 0) continue;
        if (waiting != live || live != kWarp) {
            g_run.error = "a warp shuffle in warp " + std::to_string(w) + " with " +
                          std::to_string(waiting) + " of " + std::to_string(lanes_in_warp(w)) +
                          " lanes arriving (the others exited or wait elsewhere)";
            return false;
        }
        for (int i = w * kWarp; i < (w + 1) * kWarp; ++i)
            g_run.fibers[i].state = FiberState::Ready;
        released = true;
    }
    if (released) return true;
    int any = 0;
    for (auto& f : g_run.fibers) any |= f.state == FiberState::AtBlockBarrier && f.predicate;
    g_run.barrier_or = any;
    for (auto& f : g_run.fibers)
        if (f.state == FiberState::AtBlockBarrier) f.state = FiberState::Ready;
    return true;
}

// Runs one block to completion; false with g_run.error set when it failed.
bool run_block() {
    const int n = threads_in_block();
    g_run.fibers.assign(n, Fiber{});
    if (g_run.stacks.size() < (size_t)n * kStackBytes) g_run.stacks.resize((size_t)n * kStackBytes);
    g_run.slots.assign((size_t)(n + kWarp - 1) / kWarp * 2 * kWarp, 0);
    for (int i = 0; i < n; ++i) {
        Fiber& f = g_run.fibers[i];
        f.index = uint3{i % block_dim.x, (i / block_dim.x) % block_dim.y,
                        i / (block_dim.x * block_dim.y)};
        f.state = FiberState::Ready;
        start_context(f.context, g_run.stacks.data() + (size_t)i * kStackBytes, kStackBytes,
                      fiber_main);
    }
    // Odd blocks run their threads last to first: a kernel that reads what another thread of its
    // block writes without a barrier between then computes differently in one of the two orders,
    // which its test sees (a GPU promises neither order).
    const bool reversed = (block_idx.x + block_idx.y + block_idx.z) % 2 == 1;
    for (;;) {
        bool all_done = true;
        for (int step = 0; step < n; ++step) {
            const int i = reversed ? n - 1 - step : step;
            if (g_run.fibers[i].state != FiberState::Ready) {
                all_done &= g_run.fibers[i].state == FiberState::Done;
                continue;
            }
            g_run.current = i;
            thread_idx = g_run.fibers[i].index;
            switch_context(g_run.scheduler, g_run.fibers[i].context);
            if (g_run.fibers[i].state == FiberState::Failed) return false;
            all_done &= g_run.fibers[i].state == FiberState::Done;
        }
        if (all_done) return true;
        if (!release_barriers()) return false;
    }
}

}  // namespace

void block_barrier() { block_barrier_or(0); }

int block_barrier_or(int predicate) {
    current_fiber().predicate = predicate != 0;
    yield_as(FiberState::AtBlockBarrier);
    return g_run.barrier_or;
}

int lane_id() { return linear_thread(thread_idx) % kWarp; }

uint32_t warp_exchange(unsigned int mask, uint32_t value, int source) {
    if (mask != 0xffffffffu) fail("a warp shuffle with a partial mask, which we do not emulate");
    Fiber& f = current_fiber();
    const int warp = linear_thread(thread_idx) / kWarp, parity = f.shuffle_parity;
    f.shuffle_parity ^= 1;
    uint32_t* slots = &g_run.slots[((size_t)warp * 2 + parity) * kWarp];
    slots[lane_id()] = value;
    yield_as(FiberState::AtWarpBarrier);
    return source < 0 ? value : slots[source];
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------
// The driver API.

namespace {

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum : CUresult {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_STREAM_CAPTURE_UNMATCHED = 903,
    CUDA_ERROR_STREAM_CAPTURE_UNJOINED = 904,
    CUDA_ERROR_STREAM_CAPTURE_ISOLATION = 905,
    CUDA_ERROR_CAPTURED_EVENT = 907,
    CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD = 908,
};

constexpr unsigned char kGuardByte = 0xa5;
constexpr size_t kDefaultDynamicShared = 48 * 1024;
constexpr size_t kTotalMemory = 80ull << 30;

// A buffer lives in its own mapping: an inaccessible page, the data pages, an inaccessible page.
// The buffer (256-byte aligned, as cuMemAlloc's) ends less than 256 bytes before the last page;
// the bytes around it in the data pages hold kGuardByte. A write into those bytes is found after
// the launch (guards_intact), and any access beyond them faults, which on_fault reports.
struct Allocation {
    size_t bytes;
    unsigned char* mapping;
    size_t mapping_bytes;
};

size_t page_bytes() {
    static const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return page;
}

size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

struct Function {
    std::string name;
    emu::KernelEntry entry;
    size_t max_dynamic_shared = kDefaultDynamicShared;
};

struct Module {
    std::vector<Function*> functions;
    // The kernels a CUBIN or PTX image defines; a fatbin is not read.
    std::set<std::string> entries;
    bool entries_known = false;
};

// How many of each stream's captured operations the next operation on one stream of a capture
// comes after, its own stream's included: what it depends on, by stream.
using Reach = std::map<void*, size_t>;

struct Event {
    std::chrono::steady_clock::time_point at;
    // The capture its last record was in (0: none, a record that timed the stream), and what
    // the recording stream had reached there: a stream that waits on it comes after that.
    unsigned long long capture = 0;
    Reach reach;
    // Outside a capture: the stream its last record was on (null: never recorded) and how many
    // operations had been issued to it then; the event completes when they have all run.
    void* stream = nullptr;
    unsigned long long position = 0;
};

std::map<CUdeviceptr, Allocation> g_allocations;
size_t g_allocated = 0;
// Successful allocations so far by each thread, for tests that a training step allocates
// nothing: per thread, so that tests running beside it in the same process do not count.
thread_local unsigned long long t_allocation_count = 0;
int g_context_token;
thread_local void* t_current_context = nullptr;

CUresult allocate(CUdeviceptr* out, size_t bytes) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    const size_t page = page_bytes(), data = round_up(round_up(bytes, 256) + 1, page);
    const size_t mapping_bytes = data + 2 * page;
    void* m = mmap(nullptr, mapping_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    auto* mapping = static_cast<unsigned char*>(m);
    mprotect(mapping, page, PROT_NONE);
    mprotect(mapping + page + data, page, PROT_NONE);
    unsigned char* ptr = mapping + page + data - round_up(bytes, 256);
    std::memset(mapping + page, kGuardByte, data);
    // Fresh device memory holds garbage; all-ones bits are NaN in f32 and bf16, so reading
    // memory nobody wrote shows up in a test.
    std::memset(ptr, 0xff, bytes);
    *out = (CUdeviceptr)ptr;
    g_allocations[*out] = Allocation{bytes, mapping, mapping_bytes};
    g_allocated += bytes;
    ++t_allocation_count;
    return CUDA_SUCCESS;
}

CUresult release(CUdeviceptr ptr) {
    auto it = g_allocations.find(ptr);
    if (it == g_allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    g_allocated -= it->second.bytes;
    munmap(it->second.mapping, it->second.mapping_bytes);
    g_allocations.erase(it);
    return CUDA_SUCCESS;
}

CUresult check_range(const char* call, CUdeviceptr ptr, size_t bytes) {
    if (emu::is_device_range((const void*)ptr, bytes)) return CUDA_SUCCESS;
    char where[32];
    std::snprintf(where, sizeof where, "%#llx", ptr);
    emu::report(std::string(call) + ": " + std::to_string(bytes) + " bytes at " + where +
                " are not inside one device allocation");
    return CUDA_ERROR_INVALID_VALUE;
}

// Names the first allocation whose guard bytes a kernel overwrote, and restores them.
bool guards_intact(const std::string& kernel) {
    const size_t page = page_bytes();
    for (auto& [ptr, a] : g_allocations) {
        unsigned char* buffer = (unsigned char*)ptr;
        const struct {
            unsigned char* from;
            unsigned char* to;
            const char* where;
        } guards[] = {{a.mapping + page, buffer, "before its start"},
                      {buffer + a.bytes, a.mapping + a.mapping_bytes - page, "past its end"}};
        for (const auto& g : guards) {
            for (unsigned char* p = g.from; p < g.to; ++p) {
                if (*p == kGuardByte) continue;
                emu::report(kernel + " wrote outside a buffer of " + std::to_string(a.bytes) +
                            " bytes (" + g.where + ")");
                std::memset(g.from, kGuardByte, g.to - g.from);
                return false;
            }
        }
    }
    return true;
}

// The kernel running now, for on_fault.
const char* volatile g_running_kernel = nullptr;
struct sigaction g_previous_fault_action;

// A fault inside a kernel is an access outside its buffers (the inaccessible pages beside each
// one, or a wild address): say which kernel and where, and end the process as a GPU's
// illegal-address error ends the context. A fault elsewhere goes to the handler that was there.
void on_fault(int signal, siginfo_t* info, void* context) {
    const char* kernel = g_running_kernel;
    if (kernel) {
        char text[512];
        const int n = std::snprintf(text, sizeof text,
                                    "cuda-emu: %s accessed %p, outside every device buffer "
                                    "(an out-of-bounds read or write)\n",
                                    kernel, info->si_addr);
        if (write(2, text, n) < 0) _exit(134);
        _exit(134);
    }
    sigaction(signal, &g_previous_fault_action, nullptr);
    if (g_previous_fault_action.sa_flags & SA_SIGINFO)
        g_previous_fault_action.sa_sigaction(signal, info, context);
}

void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction action {};
        action.sa_sigaction = on_fault;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        sigaction(SIGSEGV, &action, &g_previous_fault_action);
    });
}

// A launch's grid, block and dynamic shared memory.
struct LaunchDims {
    unsigned gx, gy, gz, bx, by, bz, shared_bytes;
};

// CUDA_SUCCESS, or what the driver refuses this launch with (reported, naming the kernel): the
// checks of every launch, captured or not.
CUresult check_launch(const Function* f, const LaunchDims& d, void** params, void** extra) {
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    const auto refuse = [&](CUresult code, const std::string& why) {
        emu::report("launch of " + f->name + " refused: " + why);
        return code;
    };
    if (extra) return refuse(CUDA_ERROR_NOT_SUPPORTED, "`extra` arguments");
    if (!params) return refuse(CUDA_ERROR_INVALID_VALUE, "no kernel arguments");
    if (d.gx == 0 || d.gy == 0 || d.gz == 0 || d.bx == 0 || d.by == 0 || d.bz == 0)
        return refuse(CUDA_ERROR_INVALID_VALUE, "a zero grid or block dimension");
    if (d.gy > 65535 || d.gz > 65535 || d.gx > 2147483647u)
        return refuse(CUDA_ERROR_INVALID_VALUE,
                      "grid " + std::to_string(d.gx) + "x" + std::to_string(d.gy) + "x" +
                          std::to_string(d.gz) + " exceeds 2^31-1 x 65535 x 65535");
    const unsigned long long threads = (unsigned long long)d.bx * d.by * d.bz;
    if (d.bx > 1024 || d.by > 1024 || d.bz > 64 || threads > 1024)
        return refuse(CUDA_ERROR_INVALID_VALUE, "block of " + std::to_string(threads) + " threads");
    if (f->entry.max_threads > 0 && threads > (unsigned long long)f->entry.max_threads)
        return refuse(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
                      std::to_string(threads) + " threads but __launch_bounds__(" +
                          std::to_string(f->entry.max_threads) + ")");
    if (d.shared_bytes > f->max_dynamic_shared)
        return refuse(CUDA_ERROR_INVALID_VALUE,
                      std::to_string(d.shared_bytes) + " bytes of dynamic shared memory, limit " +
                          std::to_string(f->max_dynamic_shared));
    return CUDA_SUCCESS;
}

// Runs a checked launch to completion.
CUresult run_launch(const Function* f, const LaunchDims& d, void** params) {
    emu::grid_dim = dim3{d.gx, d.gy, d.gz};
    emu::block_dim = dim3{d.bx, d.by, d.bz};
    emu::g_run.thunk = f->entry.thunk;
    emu::g_run.params = params;
    // Stale shared memory from the last block, as on a GPU, rather than zeros.
    std::memset(emu::dynamic_shared, 0xff, d.shared_bytes);
    g_running_kernel = f->name.c_str();
    for (unsigned z = 0; z < d.gz; ++z)
        for (unsigned y = 0; y < d.gy; ++y)
            for (unsigned x = 0; x < d.gx; ++x) {
                emu::block_idx = uint3{x, y, z};
                if (!emu::run_block()) {
                    g_running_kernel = nullptr;
                    emu::report(f->name + " failed: " + emu::g_run.error);
                    return CUDA_ERROR_LAUNCH_FAILED;
                }
            }
    g_running_kernel = nullptr;
    return guards_intact(f->name) ? CUDA_SUCCESS : CUDA_ERROR_ILLEGAL_ADDRESS;
}

// A launch's argument values, copied out of cuLaunchKernel's array as the driver copies them
// when a launch is captured: the caller's values are gone by the time a graph runs it.
struct KernelArguments {
    std::vector<std::max_align_t> storage;
    std::vector<void*> pointers;

    KernelArguments(const std::vector<size_t>& sizes, void** params) {
        constexpr size_t slot = sizeof(std::max_align_t);
        size_t slots = 0;
        for (size_t bytes : sizes) slots += (bytes + slot - 1) / slot;
        storage.resize(slots);
        auto* at = reinterpret_cast<unsigned char*>(storage.data());
        for (size_t i = 0; i < sizes.size(); ++i) {
            std::memcpy(at, params[i], sizes[i]);
            pointers.push_back(at);
            at += (sizes[i] + slot - 1) / slot * slot;
        }
    }
    KernelArguments(const KernelArguments&) = delete;
    KernelArguments& operator=(const KernelArguments&) = delete;
};

int device_attribute(int attribute) {
    switch (attribute) {
        case 1: return 1024;                  // max threads per block
        case 2: case 3: return 1024;          // max block x, y
        case 4: return 64;                    // max block z
        case 5: return 2147483647;            // max grid x
        case 6: case 7: return 65535;         // max grid y, z
        case 8: return 48 * 1024;             // shared memory per block
        case 10: return 32;                   // warp size
        case 12: return 65536;                // registers per block
        case 16: return 132;                  // multiprocessors (an H100 SXM's)
        case 39: return 2048;                 // threads per multiprocessor
        case 75: return 9;                    // compute capability 9.0
        case 76: return 0;
        case 97: return (int)emu::kMaxDynamicShared;
        case 115: return 1;                   // memory pools
        default: return 0;
    }
}

}  // namespace

namespace emu {
std::mutex& api_mutex() {
    static std::mutex m;
    return m;
}

bool is_device_range(const void* ptr, size_t bytes) {
    const auto p = (CUdeviceptr)ptr;
    auto it = g_allocations.upper_bound(p);
    if (it == g_allocations.begin()) return false;
    --it;
    return p + bytes <= it->first + it->second.bytes;
}

void report(const std::string& what) { std::fprintf(stderr, "cuda-emu: %s\n", what.c_str()); }
}  // namespace emu

#define API extern "C" __attribute__((visibility("default"))) CUresult
#define LOCKED std::lock_guard<std::mutex> lock(emu::api_mutex())

// ---------------------------------------------------------------------------------------------
// Stream capture and CUDA graphs. Work issued to a stream that is being captured is recorded
// instead of run, in the order the host issued it; a graph launch runs it in that order, which
// is one of the orders the real graph's dependencies allow (the emulator runs one thing at a
// time). A stream joins a capture by waiting on an event recorded in it, as on a GPU. What a
// GPU refuses during a capture is refused with its error, and invalidates the capture as there
// (cuStreamEndCapture then fails), so that work which captures here captures on a GPU:
// synchronising or querying a captured stream, its events or the context; copies between
// device and host memory on a captured stream (a graph cannot hold a copy of pageable memory;
// copies of page-locked memory, which it can, are not emulated in a capture); waiting on an event recorded outside the
// capture; and, from the capturing thread (any thread, for a capture in global mode), the
// calls that do not go through a stream: cuMemAlloc, cuMemFree and the synchronous copies and
// memsets. Stricter than a GPU: stream-ordered allocations and frees on a captured stream
// (graph memory nodes) are refused as not emulated.

namespace {

constexpr int kCaptureGlobal = 0, kCaptureRelaxed = 2;
constexpr int kCaptureNone = 0, kCaptureActive = 1, kCaptureInvalidated = 2;
constexpr unsigned kEventWaitExternal = 1;
// CU_STREAM_LEGACY, the legacy default stream's other handle besides null.
void* const kLegacyStream = reinterpret_cast<void*>(1);

struct Operation {
    std::string call;
    // The call's status when it runs: 0 for success, as in the driver and every library here.
    std::function<int()> run;
};
using Operations = std::shared_ptr<const std::vector<Operation>>;

struct Capture {
    unsigned long long id;
    void* origin;
    int mode;
    std::thread::id thread;
    // The call that invalidated it; empty while it is valid.
    std::string invalidated_by;
    std::vector<Operation> operations;
    // Every stream in the capture, the origin included, and what its next operation comes after.
    std::map<void*, Reach> reach;
};

// A CUgraph and a CUgraphExec: the captured operations, shared, so that the graph may be
// destroyed before what was instantiated from it.
struct Graph {
    Operations operations;
};
struct GraphExec {
    Operations operations;
};

// Under the API lock: the captures under way, by id, and the stream each stream's work goes to.
std::map<unsigned long long, std::unique_ptr<Capture>> g_captures;
std::map<void*, Capture*> g_capturing;
unsigned long long g_next_capture = 1;

Capture* capture_of(void* stream) {
    auto it = g_capturing.find(stream);
    return it == g_capturing.end() ? nullptr : it->second;
}

// The capture `e`'s last record was in, while it is under way.
Capture* captured_in(const Event* e) {
    auto it = g_captures.find(e->capture);
    return it == g_captures.end() ? nullptr : it->second.get();
}

// Reports `call`, refused during capture `c` for `why`, invalidates `c` (cuStreamEndCapture
// names the first such call) and returns `code`.
CUresult invalidate(Capture* c, CUresult code, const std::string& call, const std::string& why) {
    emu::report(call + " refused during a stream capture: " + why +
                "; the capture is invalidated");
    if (c->invalidated_by.empty()) c->invalidated_by = call;
    return code;
}

// The capture that forbids this thread the calls that bypass streams: its own, unless begun in
// relaxed mode, or another thread's in global mode.
Capture* forbidding_capture() {
    for (auto& [id, c] : g_captures) {
        if (c->mode == kCaptureRelaxed) continue;
        if (c->thread == std::this_thread::get_id() || c->mode == kCaptureGlobal) return c.get();
    }
    return nullptr;
}

// For `call`, which bypasses streams: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED where a capture
// forbids it, else CUDA_SUCCESS.
CUresult refuse_if_forbidden(const std::string& call) {
    LOCKED;
    Capture* c = forbidding_capture();
    if (!c) return CUDA_SUCCESS;
    return invalidate(c, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, call,
                      "it bypasses the streams, so the graph would not hold it");
}

// For `call` on `stream`, which no graph can hold: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED when
// `stream` is being captured, else CUDA_SUCCESS.
CUresult refuse_if_captured(void* stream, const std::string& call, const std::string& why) {
    LOCKED;
    Capture* c = capture_of(stream);
    return c ? invalidate(c, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, call, why) : CUDA_SUCCESS;
}

// For `call`, which waits for or queries `event`: CUDA_ERROR_CAPTURED_EVENT when it was recorded
// in a capture under way (it marks no work that runs), else CUDA_SUCCESS.
CUresult refuse_if_captured_event(void* event, const char* call) {
    LOCKED;
    Capture* c = captured_in(static_cast<Event*>(event));
    return c ? invalidate(c, CUDA_ERROR_CAPTURED_EVENT, call,
                          "the event was recorded in the capture, so it marks no work that runs")
             : CUDA_SUCCESS;
}

const char* const kHostCopy =
    "a copy between device and host memory (not emulated in a capture; a GPU's graph holds only "
    "copies of page-locked memory)";
const char* const kGraphMemory = "graph memory nodes are not emulated";

// Runs a graph's operations in order; the first that fails is reported and fails the launch.
CUresult run_operations(const std::vector<Operation>& operations) {
    for (const Operation& op : operations)
        if (const int status = op.run()) {
            emu::report("a graph launch: " + op.call + " failed with status " +
                        std::to_string(status));
            return CUDA_ERROR_LAUNCH_FAILED;
        }
    return CUDA_SUCCESS;
}

// The bodies of the copies and memsets, synchronous or stream-ordered.
CUresult copy_to_device(CUdeviceptr dst, const void* src, size_t bytes) {
    LOCKED;
    if (CUresult r = check_range("cuMemcpyHtoD", dst, bytes)) return r;
    std::memcpy((void*)dst, src, bytes);
    return CUDA_SUCCESS;
}

CUresult copy_to_host(void* dst, CUdeviceptr src, size_t bytes) {
    LOCKED;
    if (CUresult r = check_range("cuMemcpyDtoH", src, bytes)) return r;
    std::memcpy(dst, (const void*)src, bytes);
    return CUDA_SUCCESS;
}

CUresult copy_on_device(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    LOCKED;
    if (CUresult r = check_range("cuMemcpyDtoD (source)", src, bytes)) return r;
    if (CUresult r = check_range("cuMemcpyDtoD (destination)", dst, bytes)) return r;
    std::memmove((void*)dst, (const void*)src, bytes);
    return CUDA_SUCCESS;
}

CUresult set_bytes(CUdeviceptr dst, unsigned char value, size_t bytes) {
    LOCKED;
    if (CUresult r = check_range("cuMemsetD8", dst, bytes)) return r;
    std::memset((void*)dst, value, bytes);
    return CUDA_SUCCESS;
}

CUresult set_halves(CUdeviceptr dst, unsigned short value, size_t count) {
    LOCKED;
    if (CUresult r = check_range("cuMemsetD16", dst, count * 2)) return r;
    if (dst % 2) return CUDA_ERROR_INVALID_VALUE;
    auto* p = (unsigned short*)dst;
    for (size_t i = 0; i < count; ++i) p[i] = value;
    return CUDA_SUCCESS;
}

CUresult set_words(CUdeviceptr dst, unsigned int value, size_t count) {
    LOCKED;
    if (CUresult r = check_range("cuMemsetD32", dst, count * 4)) return r;
    auto* p = (unsigned int*)dst;
    for (size_t i = 0; i < count; ++i) p[i] = value;
    return CUDA_SUCCESS;
}

// A copy or memset on `stream` (emu::enqueue), its operands checked when it is issued too, as
// the driver checks them when it is captured.
CUresult enqueue_checked(void* stream, const char* call,
                         std::initializer_list<std::pair<CUdeviceptr, size_t>> operands,
                         std::function<int()> work) {
    for (const auto& [ptr, bytes] : operands) {
        LOCKED;
        if (CUresult r = check_range(call, ptr, bytes)) return r;
    }
    return emu::enqueue(stream, call, std::move(work), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
}

// ---------------------------------------------------------------------------------------------
// Page-locked memory and streams that run late. On a GPU a copy between the device and
// page-locked host memory runs whenever its stream gets to it, after the call returned, so a
// host that refills a page-locked buffer before the copy from it ran sends the new contents.
// Here such a copy does not run when issued: it waits in its stream's queue, and so does every
// operation issued to that stream after it, until something waits for them: synchronising the
// stream, an event recorded after them or the context, or freeing memory. A stream that waits
// on an event whose work is still queued queues its own later work behind that wait. So a
// program that reuses a page-locked buffer, or reads what a copy wrote, without waiting for the
// copy sees the wrong bytes here as it might on a GPU, every time instead of sometimes. Copies
// from pageable memory stage the source before the call returns, and copies to pageable memory
// wait for their stream, as the driver's do.

// Under the API lock: the page-locked allocations (start, bytes), and each stream's queue.
std::map<uintptr_t, size_t> g_host_allocations;

struct StreamQueue {
    std::deque<Operation> waiting;
    // Operations issued to the stream outside a capture, and how many of them have started.
    unsigned long long issued = 0, done = 0;
    // The thread running one of its operations now (none: no thread): a stream runs its
    // operations one at a time, in order, whichever threads wait for them.
    std::thread::id runner;
};
std::map<void*, StreamQueue> g_queues;
// Signalled, under the API lock, whenever a thread stops running a stream's operation.
std::condition_variable g_runner_done;

// Waits, holding `lock` on the API lock, until no other thread runs an operation of `q`.
void wait_for_other_runner(std::unique_lock<std::mutex>& lock, const StreamQueue& q) {
    const auto me = std::this_thread::get_id();
    g_runner_done.wait(lock, [&] { return q.runner == std::thread::id() || q.runner == me; });
}

bool is_page_locked(const void* ptr, size_t bytes) {
    const auto p = (uintptr_t)ptr;
    auto it = g_host_allocations.upper_bound(p);
    if (it == g_host_allocations.begin()) return false;
    --it;
    return p + bytes <= it->first + it->second;
}

// Runs `stream`'s queued operations until `upto` of its operations have run (or none waits),
// without the API lock, which the operations take; the first failure is reported, and
// returned as the driver returns an asynchronous error: from the call that waited.
// Another thread running the stream's operation is waited for first, so that what counts as
// started has also finished by the time this returns, and two threads never run one stream's
// operations side by side (a context synchronised on one thread while another waits for its
// own stream).
CUresult run_queued(void* stream, unsigned long long upto) {
    CUresult status = CUDA_SUCCESS;
    for (;;) {
        Operation op;
        std::thread::id outer_runner;
        {
            std::unique_lock<std::mutex> lock(emu::api_mutex());
            StreamQueue& q = g_queues[stream];
            wait_for_other_runner(lock, q);
            if (q.done >= upto || q.waiting.empty()) return status;
            op = std::move(q.waiting.front());
            q.waiting.pop_front();
            // Counted as it starts: a wait inside it (a stream waiting on an event) that comes
            // back to this stream must not run the operations after it.
            ++q.done;
            outer_runner = q.runner;
            q.runner = std::this_thread::get_id();
        }
        const int result = op.run();
        {
            LOCKED;
            g_queues[stream].runner = outer_runner;
            g_runner_done.notify_all();
        }
        if (result && !status) {
            emu::report(op.call + " failed with status " + std::to_string(result) +
                        " when its stream ran it");
            status = CUDA_ERROR_LAUNCH_FAILED;
        }
    }
}

constexpr unsigned long long kEverything = ~0ull;

// Runs every stream's queued operations.
CUresult run_all_queued() {
    std::vector<void*> streams;
    {
        LOCKED;
        for (const auto& [stream, q] : g_queues)
            if (!q.waiting.empty()) streams.push_back(stream);
    }
    CUresult status = CUDA_SUCCESS;
    for (void* stream : streams)
        if (CUresult r = run_queued(stream, kEverything); r && !status) status = r;
    return status;
}

// True when `stream` has queued operations, so that new work on it must queue behind them.
bool runs_late(void* stream) {
    LOCKED;
    auto it = g_queues.find(stream);
    return it != g_queues.end() && !it->second.waiting.empty();
}

// emu::enqueue, and with `late` queued to run when the stream is waited for, as a copy
// involving page-locked memory.
int enqueue_on(void* stream, const std::string& call, std::function<int()> work, int invalidated,
               bool late) {
    std::thread::id outer_runner;
    {
        LOCKED;
        if (Capture* c = capture_of(stream)) {
            if (!c->invalidated_by.empty()) return invalidated;
            c->operations.push_back(Operation{call, std::move(work)});
            ++c->reach[stream][stream];
            return 0;
        }
        StreamQueue& q = g_queues[stream];
        ++q.issued;
        // Behind queued work, or behind the operation another thread is running on the stream.
        const bool busy = q.runner != std::thread::id() && q.runner != std::this_thread::get_id();
        if (late || busy || !q.waiting.empty()) {
            q.waiting.push_back(Operation{call, std::move(work)});
            return 0;
        }
        ++q.done;
        outer_runner = q.runner;
        q.runner = std::this_thread::get_id();
    }
    const int result = work();
    LOCKED;
    g_queues[stream].runner = outer_runner;
    g_runner_done.notify_all();
    return result;
}

}  // namespace

int emu::enqueue(void* stream, const std::string& call, std::function<int()> work,
                 int invalidated) {
    return enqueue_on(stream, call, std::move(work), invalidated, false);
}

API cuInit(unsigned int) {
    install_fault_handler();
    return CUDA_SUCCESS;
}
API cuDriverGetVersion(int* v) { *v = 13000; return CUDA_SUCCESS; }
// NVRTC opens libcuda.so.1 and asks for the driver's private export tables; without this entry
// point it reads through a null pointer. It has none to give, as an old driver would say.
API cuGetExportTable(const void** table, const void*) {
    *table = nullptr;
    return CUDA_ERROR_NOT_SUPPORTED;
}
API cuDeviceGetCount(int* n) { *n = 1; return CUDA_SUCCESS; }
API cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
API cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, len, "c2f CPU emulator (not a GPU)");
    return CUDA_SUCCESS;
}
API cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    *v = device_attribute(attribute);
    return CUDA_SUCCESS;
}
API cuDeviceTotalMem_v2(size_t* bytes, CUdevice) { *bytes = kTotalMemory; return CUDA_SUCCESS; }
API cuDevicePrimaryCtxRetain(void** ctx, CUdevice) { *ctx = &g_context_token; return CUDA_SUCCESS; }
API cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
API cuCtxSetCurrent(void* ctx) { t_current_context = ctx; return CUDA_SUCCESS; }
API cuCtxGetCurrent(void** ctx) { *ctx = t_current_context; return CUDA_SUCCESS; }
API cuCtxGetDevice(CUdevice* d) { *d = 0; return CUDA_SUCCESS; }
// Synchronising the context synchronises every stream in it, a captured one too.
API cuCtxSynchronize() {
    {
        LOCKED;
        for (auto& [id, c] : g_captures)
            invalidate(c.get(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuCtxSynchronize",
                       "a stream of the context is being captured");
        if (!g_captures.empty()) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    return run_all_queued();
}

API cuStreamCreate(void** stream, unsigned int) { *stream = new int(0); return CUDA_SUCCESS; }
API cuStreamCreateWithPriority(void** stream, unsigned int, int) {
    *stream = new int(0);
    return CUDA_SUCCESS;
}
// A stream destroyed while it is being captured leaves the capture (invalidated), and takes the
// capture with it when it began it; a later stream at the same address starts afresh.
API cuStreamDestroy_v2(void* stream) {
    // Its queued work still runs, as the driver finishes a destroyed stream's work.
    const CUresult ran = runs_late(stream) ? run_queued(stream, kEverything) : CUDA_SUCCESS;
    LOCKED;
    g_queues.erase(stream);
    if (Capture* c = capture_of(stream)) {
        invalidate(c, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamDestroy",
                   "the stream is being captured");
        for (auto it = g_capturing.begin(); it != g_capturing.end();)
            it = it->first == stream || (c->origin == stream && it->second == c)
                     ? g_capturing.erase(it)
                     : std::next(it);
        if (c->origin == stream) g_captures.erase(c->id);
    }
    delete static_cast<int*>(stream);
    return ran;
}
API cuStreamSynchronize(void* stream) {
    if (CUresult r = refuse_if_captured(stream, "cuStreamSynchronize",
                                        "a captured stream's work runs only when the graph is launched"))
        return r;
    return run_queued(stream, kEverything);
}
// Its queued work runs: the stream is then idle, which is one answer a GPU may give.
API cuStreamQuery(void* stream) {
    if (CUresult r = refuse_if_captured(stream, "cuStreamQuery",
                                        "a captured stream's work runs only when the graph is launched"))
        return r;
    return run_queued(stream, kEverything);
}
API cuStreamWaitEvent(void* stream, void* event, unsigned int flags) {
    LOCKED;
    const auto* e = static_cast<Event*>(event);
    Capture* waiting = capture_of(stream);
    Capture* recorded = captured_in(e);
    if (flags & kEventWaitExternal) {
        if (!waiting) return CUDA_SUCCESS;
        return invalidate(waiting, CUDA_ERROR_NOT_SUPPORTED, "cuStreamWaitEvent",
                          "waits on external events are not emulated");
    }
    if (!recorded && waiting)
        return invalidate(waiting, CUDA_ERROR_STREAM_CAPTURE_ISOLATION, "cuStreamWaitEvent",
                          "the event was recorded outside the capture");
    if (!recorded) {
        // The stream's later work comes after the event's: behind it in the queue while the
        // event's work has not all run.
        const auto source = g_queues.find(e->stream);
        const auto me = std::this_thread::get_id();
        if (!e->stream || source == g_queues.end() ||
            (source->second.done >= e->position &&
             (source->second.runner == std::thread::id() || source->second.runner == me)))
            return CUDA_SUCCESS;
        StreamQueue& q = g_queues[stream];
        ++q.issued;
        void* const from = e->stream;
        const unsigned long long upto = e->position;
        q.waiting.push_back(Operation{"cuStreamWaitEvent", [from, upto] {
                                          return (int)run_queued(from, upto);
                                      }});
        return CUDA_SUCCESS;
    }
    if (waiting && waiting != recorded) {
        invalidate(recorded, CUDA_ERROR_STREAM_CAPTURE_ISOLATION, "cuStreamWaitEvent",
                   "another capture's stream waits on this capture's event");
        return invalidate(waiting, CUDA_ERROR_STREAM_CAPTURE_ISOLATION, "cuStreamWaitEvent",
                          "the event was recorded in another capture");
    }
    if (!recorded->invalidated_by.empty()) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    // A stream not being captured joins the capture: its work is captured from now on.
    g_capturing[stream] = recorded;
    Reach& reach = recorded->reach[stream];
    for (const auto& [s, n] : e->reach) reach[s] = std::max(reach[s], n);
    return CUDA_SUCCESS;
}

API cuStreamBeginCapture_v2(void* stream, int mode) {
    // Work issued before the capture is not part of it.
    if (CUresult r = run_queued(stream, kEverything)) return r;
    LOCKED;
    if (!stream || stream == kLegacyStream) {
        emu::report("cuStreamBeginCapture: the legacy default stream cannot be captured");
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (mode < kCaptureGlobal || mode > kCaptureRelaxed) return CUDA_ERROR_INVALID_VALUE;
    if (capture_of(stream)) return CUDA_ERROR_ILLEGAL_STATE;
    auto c = std::make_unique<Capture>();
    c->id = g_next_capture++;
    c->origin = stream;
    c->mode = mode;
    c->thread = std::this_thread::get_id();
    c->reach[stream];
    g_capturing[stream] = c.get();
    g_captures[c->id] = std::move(c);
    return CUDA_SUCCESS;
}
API cuStreamIsCapturing(void* stream, int* status) {
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    LOCKED;
    const Capture* c = capture_of(stream);
    *status = !c                            ? kCaptureNone
              : c->invalidated_by.empty() ? kCaptureActive
                                          : kCaptureInvalidated;
    return CUDA_SUCCESS;
}
API cuStreamEndCapture(void* stream, void** graph) {
    if (!graph) return CUDA_ERROR_INVALID_VALUE;
    *graph = nullptr;
    LOCKED;
    Capture* c = capture_of(stream);
    if (!c) return CUDA_ERROR_ILLEGAL_STATE;
    if (c->origin != stream) return CUDA_ERROR_STREAM_CAPTURE_UNMATCHED;
    if (c->mode != kCaptureRelaxed && c->thread != std::this_thread::get_id())
        return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    // The capture ends whatever its state, and its streams leave it.
    const std::unique_ptr<Capture> done = std::move(g_captures[c->id]);
    g_captures.erase(c->id);
    for (auto it = g_capturing.begin(); it != g_capturing.end();)
        it = it->second == c ? g_capturing.erase(it) : std::next(it);
    if (!done->invalidated_by.empty()) {
        emu::report("cuStreamEndCapture: the capture was invalidated by " + done->invalidated_by);
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    const Reach& origin = done->reach[stream];
    for (const auto& [s, reach] : done->reach) {
        const auto own = reach.find(s);
        const auto joined = origin.find(s);
        const size_t ops = own == reach.end() ? 0 : own->second;
        if (ops > (joined == origin.end() ? 0 : joined->second)) {
            emu::report("cuStreamEndCapture: work captured on another stream was not joined "
                        "back into the stream that began the capture");
            return CUDA_ERROR_STREAM_CAPTURE_UNJOINED;
        }
    }
    *graph = new Graph{std::make_shared<const std::vector<Operation>>(std::move(done->operations))};
    return CUDA_SUCCESS;
}
API cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long flags) {
    if (!exec || !graph) return CUDA_ERROR_INVALID_VALUE;
    // AUTO_FREE_ON_LAUNCH (1), UPLOAD (2), DEVICE_LAUNCH (4) and USE_NODE_PRIORITY (8); a graph
    // launched from the device cannot free on launch.
    if ((flags & ~0xfull) != 0 || ((flags & 1) && (flags & 4))) return CUDA_ERROR_INVALID_VALUE;
    *exec = new GraphExec{static_cast<Graph*>(graph)->operations};
    return CUDA_SUCCESS;
}
// A host function runs in its stream's order, without the API lock (it may call the API, or
// take its time); captured, it becomes the graph's host node.
API cuLaunchHostFunc(void* stream, void (*fn)(void*), void* data) {
    if (!fn) return CUDA_ERROR_INVALID_VALUE;
    return emu::enqueue(stream, "cuLaunchHostFunc", [fn, data] {
        fn(data);
        return 0;
    }, CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
}

API cuGraphLaunch(void* exec, void* stream) {
    if (!exec) return CUDA_ERROR_INVALID_HANDLE;
    const Operations operations = static_cast<GraphExec*>(exec)->operations;
    return emu::enqueue(stream, "cuGraphLaunch", [operations] { return run_operations(*operations); },
                        CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
}
API cuGraphExecDestroy(void* exec) { delete static_cast<GraphExec*>(exec); return CUDA_SUCCESS; }
API cuGraphDestroy(void* graph) { delete static_cast<Graph*>(graph); return CUDA_SUCCESS; }

API cuEventCreate(void** event, unsigned int) {
    *event = new Event{std::chrono::steady_clock::now()};
    return CUDA_SUCCESS;
}
API cuEventDestroy_v2(void* event) { delete static_cast<Event*>(event); return CUDA_SUCCESS; }
API cuEventRecord(void* event, void* stream) {
    LOCKED;
    auto* e = static_cast<Event*>(event);
    if (Capture* c = capture_of(stream)) {
        if (!c->invalidated_by.empty()) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        e->capture = c->id;
        e->reach = c->reach[stream];
        return CUDA_SUCCESS;
    }
    e->capture = 0;
    e->reach.clear();
    e->at = std::chrono::steady_clock::now();
    e->stream = stream;
    e->position = g_queues[stream].issued;
    return CUDA_SUCCESS;
}

namespace {
// Runs the work `event`'s last record marks, when it was recorded outside a capture.
CUresult run_until(void* event) {
    void* stream;
    unsigned long long position;
    {
        LOCKED;
        const auto* e = static_cast<Event*>(event);
        stream = e->stream;
        position = e->position;
    }
    return stream ? run_queued(stream, position) : CUDA_SUCCESS;
}
}  // namespace

API cuEventSynchronize(void* event) {
    if (CUresult r = refuse_if_captured_event(event, "cuEventSynchronize")) return r;
    return run_until(event);
}
// Its work runs: the event has then completed, which is one answer a GPU may give.
API cuEventQuery(void* event) {
    if (CUresult r = refuse_if_captured_event(event, "cuEventQuery")) return r;
    return run_until(event);
}
API cuEventElapsedTime(float* ms, void* start, void* end) {
    *ms = std::chrono::duration<float, std::milli>(static_cast<Event*>(end)->at -
                                                   static_cast<Event*>(start)->at)
              .count();
    return CUDA_SUCCESS;
}
API cuEventElapsedTime_v2(float* ms, void* start, void* end) {
    return cuEventElapsedTime(ms, start, end);
}

API cuMemAlloc_v2(CUdeviceptr* ptr, size_t bytes) {
    if (CUresult r = refuse_if_forbidden("cuMemAlloc")) return r;
    LOCKED;
    return allocate(ptr, bytes);
}
API cuMemAllocAsync(CUdeviceptr* ptr, size_t bytes, void* stream) {
    if (CUresult r = refuse_if_captured(stream, "cuMemAllocAsync", kGraphMemory)) return r;
    LOCKED;
    return allocate(ptr, bytes);
}
API cuMemFree_v2(CUdeviceptr ptr) {
    if (CUresult r = refuse_if_forbidden("cuMemFree")) return r;
    // Queued work may still use the buffer: run it first, as a GPU finishes with the buffer.
    if (CUresult r = run_all_queued()) return r;
    LOCKED;
    return release(ptr);
}
API cuMemFreeAsync(CUdeviceptr ptr, void* stream) {
    if (CUresult r = refuse_if_captured(stream, "cuMemFreeAsync", kGraphMemory)) return r;
    if (CUresult r = run_all_queued()) return r;
    LOCKED;
    return release(ptr);
}
// Not a CUDA call: how many device allocations the calling thread has made, which only the
// emulator can say (c2f_kernels::testing::emulator_allocation_count reads it).
extern "C" __attribute__((visibility("default"))) unsigned long long c2fEmuAllocationCount() {
    return t_allocation_count;
}
API cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    LOCKED;
    *total = kTotalMemory;
    *free_bytes = kTotalMemory - g_allocated;
    return CUDA_SUCCESS;
}
API cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes) {
    if (CUresult r = refuse_if_forbidden("cuMemcpyHtoD")) return r;
    return copy_to_device(dst, src, bytes);
}
API cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, void* stream) {
    if (CUresult r = refuse_if_captured(stream, "cuMemcpyHtoDAsync", kHostCopy)) return r;
    bool page_locked;
    {
        LOCKED;
        if (CUresult r = check_range("cuMemcpyHtoDAsync", dst, bytes)) return r;
        page_locked = is_page_locked(src, bytes);
    }
    if (page_locked)
        return enqueue_on(stream, "cuMemcpyHtoDAsync", [=] { return copy_to_device(dst, src, bytes); },
                          CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, true);
    // Pageable: the driver stages the source before returning, so the caller may reuse it. Staged
    // here always, since the copy may queue (behind work another thread runs) after any check.
    auto staged = std::make_shared<const std::vector<unsigned char>>(
        static_cast<const unsigned char*>(src), static_cast<const unsigned char*>(src) + bytes);
    return enqueue_on(stream, "cuMemcpyHtoDAsync",
                      [=] { return copy_to_device(dst, staged->data(), bytes); },
                      CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, false);
}
API cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
    if (CUresult r = refuse_if_forbidden("cuMemcpyDtoH")) return r;
    return copy_to_host(dst, src, bytes);
}
API cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, void* stream) {
    if (CUresult r = refuse_if_captured(stream, "cuMemcpyDtoHAsync", kHostCopy)) return r;
    bool page_locked;
    {
        LOCKED;
        page_locked = is_page_locked(dst, bytes);
    }
    // Into pageable memory the driver returns once the copy is done, after the stream's work.
    if (!page_locked)
        if (CUresult r = run_queued(stream, kEverything)) return r;
    return enqueue_on(stream, "cuMemcpyDtoHAsync", [=] { return copy_to_host(dst, src, bytes); },
                      CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, page_locked);
}
// Page-locked host memory: ordinary memory here, filled with all-ones bits (NaN in f32) as
// fresh memory holds garbage, recorded so that copies from and to it run late.
API cuMemHostAlloc(void** ptr, size_t bytes, unsigned int) {
    if (!ptr) return CUDA_ERROR_INVALID_VALUE;
    void* p = std::aligned_alloc(4096, round_up(std::max<size_t>(bytes, 1), 4096));
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    std::memset(p, 0xff, bytes);
    LOCKED;
    g_host_allocations[(uintptr_t)p] = bytes;
    *ptr = p;
    return CUDA_SUCCESS;
}
API cuMemAllocHost_v2(void** ptr, size_t bytes) { return cuMemHostAlloc(ptr, bytes, 0); }
API cuMemFreeHost(void* ptr) {
    if (CUresult r = run_all_queued()) return r;
    LOCKED;
    if (!g_host_allocations.erase((uintptr_t)ptr)) return CUDA_ERROR_INVALID_VALUE;
    std::free(ptr);
    return CUDA_SUCCESS;
}
API cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    if (CUresult r = refuse_if_forbidden("cuMemcpyDtoD")) return r;
    return copy_on_device(dst, src, bytes);
}
API cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, void* stream) {
    return enqueue_checked(stream, "cuMemcpyDtoDAsync", {{src, bytes}, {dst, bytes}},
                           [=] { return copy_on_device(dst, src, bytes); });
}
API cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t bytes) {
    if (CUresult r = refuse_if_forbidden("cuMemsetD8")) return r;
    return set_bytes(dst, value, bytes);
}
API cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t bytes, void* stream) {
    return enqueue_checked(stream, "cuMemsetD8Async", {{dst, bytes}},
                           [=] { return set_bytes(dst, value, bytes); });
}
API cuMemsetD32_v2(CUdeviceptr dst, unsigned int value, size_t count) {
    if (CUresult r = refuse_if_forbidden("cuMemsetD32")) return r;
    return set_words(dst, value, count);
}
API cuMemsetD32Async(CUdeviceptr dst, unsigned int value, size_t count, void* stream) {
    return enqueue_checked(stream, "cuMemsetD32Async", {{dst, count * 4}},
                           [=] { return set_words(dst, value, count); });
}
API cuMemsetD16Async(CUdeviceptr dst, unsigned short value, size_t count, void* stream) {
    return enqueue_checked(stream, "cuMemsetD16Async", {{dst, count * 2}},
                           [=] { return set_halves(dst, value, count); });
}

namespace {
template <typename T>
T read_at(const unsigned char* bytes, size_t offset) {
    T value;
    std::memcpy(&value, bytes + offset, sizeof value);
    return value;
}

// The functions an ELF CUBIN holds code for: its `.text.NAME` sections.
std::set<std::string> cubin_functions(const unsigned char* elf) {
    std::set<std::string> names;
    const auto section_headers = read_at<uint64_t>(elf, 0x28);
    const auto header_size = read_at<uint16_t>(elf, 0x3a);
    const auto sections = read_at<uint16_t>(elf, 0x3c);
    const auto name_section = read_at<uint16_t>(elf, 0x3e);
    const auto names_at = read_at<uint64_t>(elf, section_headers + name_section * header_size + 0x18);
    for (unsigned i = 0; i < sections; ++i) {
        const auto name = read_at<uint32_t>(elf, section_headers + i * header_size);
        const std::string section(reinterpret_cast<const char*>(elf + names_at + name));
        if (section.rfind(".text.", 0) == 0) names.insert(section.substr(6));
    }
    return names;
}

// The entry points PTX text defines: its `.entry NAME(` lines.
std::set<std::string> ptx_entries(const char* text) {
    std::set<std::string> names;
    const std::string ptx(text);
    const std::string marker = ".entry ";
    for (size_t at = ptx.find(marker); at != std::string::npos; at = ptx.find(marker, at)) {
        at += marker.size();
        const size_t end = ptx.find('(', at);
        if (end == std::string::npos) break;
        std::string name = ptx.substr(at, end - at);
        name.erase(name.find_last_not_of(" \t\n") + 1);
        names.insert(name);
    }
    return names;
}
}  // namespace

API cuModuleLoadData(void** module, const void* image) {
    // Every kernel file is compiled into this library, so a fatbin loads all of them and a name
    // it lacks is only found missing when it is looked up. A CUBIN (an ELF, as NVRTC writes for
    // one architecture) or PTX text (a `//` header or `.version` first) is read for the names it
    // defines, so a launcher that asks a module for a kernel it does not define is refused, as
    // the driver refuses it.
    const auto* bytes = static_cast<const unsigned char*>(image);
    const char* text = static_cast<const char*>(image);
    auto* m = new Module{};
    if (std::memcmp(bytes, "\x7f" "ELF", 4) == 0) {
        m->entries = cubin_functions(bytes);
        m->entries_known = true;
    } else if (std::strncmp(text, "//", 2) == 0 || std::strncmp(text, ".version", 8) == 0) {
        m->entries = ptx_entries(text);
        m->entries_known = true;
    }
    if (m->entries_known && m->entries.empty()) {
        delete m;
        emu::report("cuModuleLoadData: a module image without a kernel");
        return CUDA_ERROR_INVALID_IMAGE;
    }
    *module = m;
    return CUDA_SUCCESS;
}
API cuModuleUnload(void* module) {
    auto* m = static_cast<Module*>(module);
    for (Function* f : m->functions) delete f;
    delete m;
    return CUDA_SUCCESS;
}
API cuModuleGetFunction(void** function, void* module, const char* name) {
    LOCKED;
    auto* m = static_cast<Module*>(module);
    if (m->entries_known && !m->entries.count(name)) {
        emu::report(std::string("the module defines no kernel named ") + name);
        return CUDA_ERROR_NOT_FOUND;
    }
    auto it = emu::registry().find(name);
    if (it == emu::registry().end()) {
        emu::report(std::string("no kernel named ") + name);
        return CUDA_ERROR_NOT_FOUND;
    }
    auto* f = new Function{name, it->second};
    m->functions.push_back(f);
    *function = f;
    return CUDA_SUCCESS;
}
API cuFuncSetAttribute(void* function, int attribute, int value) {
    auto* f = static_cast<Function*>(function);
    if (attribute != 8) return CUDA_ERROR_NOT_SUPPORTED;  // only the dynamic shared memory limit
    if (value < 0 || (size_t)value > emu::kMaxDynamicShared) return CUDA_ERROR_INVALID_VALUE;
    f->max_dynamic_shared = value;
    return CUDA_SUCCESS;
}
API cuFuncGetAttribute(int* value, int attribute, void* function) {
    auto* f = static_cast<Function*>(function);
    switch (attribute) {
        case 0: *value = f->entry.max_threads > 0 ? f->entry.max_threads : 1024; break;
        case 8: *value = (int)f->max_dynamic_shared; break;
        default: *value = 0;
    }
    return CUDA_SUCCESS;
}
API cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned shared_bytes, void* stream, void** params, void** extra) {
    const LaunchDims dims{gx, gy, gz, bx, by, bz, shared_bytes};
    const auto* f = static_cast<const Function*>(function);
    if (CUresult r = check_launch(f, dims, params, extra)) return r;
    // The kernel and its arguments by value: a captured launch runs after both may be gone.
    auto kernel = std::make_shared<const Function>(*f);
    auto arguments = std::make_shared<const KernelArguments>(f->entry.param_sizes, params);
    return emu::enqueue(
        stream, f->name,
        [kernel, dims, arguments] {
            LOCKED;
            return run_launch(kernel.get(), dims, const_cast<void**>(arguments->pointers.data()));
        },
        CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
}

API cuGetErrorName(CUresult code, const char** name) {
    switch (code) {
        case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_INVALID_DEVICE: *name = "CUDA_ERROR_INVALID_DEVICE"; break;
        case CUDA_ERROR_INVALID_IMAGE: *name = "CUDA_ERROR_INVALID_IMAGE"; break;
        case CUDA_ERROR_INVALID_HANDLE: *name = "CUDA_ERROR_INVALID_HANDLE"; break;
        case CUDA_ERROR_ILLEGAL_STATE: *name = "CUDA_ERROR_ILLEGAL_STATE"; break;
        case CUDA_ERROR_NOT_FOUND: *name = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_ILLEGAL_ADDRESS: *name = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *name = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *name = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case CUDA_ERROR_NOT_SUPPORTED: *name = "CUDA_ERROR_NOT_SUPPORTED"; break;
        case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: *name = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
        case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: *name = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"; break;
        case CUDA_ERROR_STREAM_CAPTURE_UNMATCHED: *name = "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED"; break;
        case CUDA_ERROR_STREAM_CAPTURE_UNJOINED: *name = "CUDA_ERROR_STREAM_CAPTURE_UNJOINED"; break;
        case CUDA_ERROR_STREAM_CAPTURE_ISOLATION: *name = "CUDA_ERROR_STREAM_CAPTURE_ISOLATION"; break;
        case CUDA_ERROR_CAPTURED_EVENT: *name = "CUDA_ERROR_CAPTURED_EVENT"; break;
        case CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD: *name = "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD"; break;
        default: *name = "CUDA_ERROR_UNKNOWN";
    }
    return CUDA_SUCCESS;
}
API cuGetErrorString(CUresult code, const char** text) {
    cuGetErrorName(code, text);
    return CUDA_SUCCESS;
}
