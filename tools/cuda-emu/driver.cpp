// A CPU stand-in for the CUDA driver library (libcuda.so.1), so the GPU tests run on machines
// without a GPU: the real launchers, through cudarc, launch the real kernel sources compiled as
// host C++ (device.h); libraries.cpp stands in for the cuDNN, cuBLAS and NCCL calls. It implements the part of the driver API that cudarc
// calls for contexts, streams, events, memory, modules and launches; everything runs
// synchronously. It checks what a GPU would refuse (launch dimensions, shared memory, launch
// bounds) and what a GPU would only corrupt (accesses outside a buffer, copies past one), and
// reports each with the kernel's name. Passing here is not passing on a GPU: see
// docs/gpu-status.md.

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
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

Registrar::Registrar(const char* name, Thunk thunk, int max_threads) {
    registry()[name] = KernelEntry{thunk, max_threads};
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
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
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

struct Event {
    std::chrono::steady_clock::time_point at;
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

CUresult launch(Function* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                unsigned bz, unsigned shared_bytes, void** params, void** extra) {
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    const auto refuse = [&](CUresult code, const std::string& why) {
        emu::report("launch of " + f->name + " refused: " + why);
        return code;
    };
    if (extra) return refuse(CUDA_ERROR_NOT_SUPPORTED, "`extra` arguments");
    if (!params) return refuse(CUDA_ERROR_INVALID_VALUE, "no kernel arguments");
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0)
        return refuse(CUDA_ERROR_INVALID_VALUE, "a zero grid or block dimension");
    if (gy > 65535 || gz > 65535 || gx > 2147483647u)
        return refuse(CUDA_ERROR_INVALID_VALUE,
                      "grid " + std::to_string(gx) + "x" + std::to_string(gy) + "x" +
                          std::to_string(gz) + " exceeds 2^31-1 x 65535 x 65535");
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (bx > 1024 || by > 1024 || bz > 64 || threads > 1024)
        return refuse(CUDA_ERROR_INVALID_VALUE, "block of " + std::to_string(threads) + " threads");
    if (f->entry.max_threads > 0 && threads > (unsigned long long)f->entry.max_threads)
        return refuse(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
                      std::to_string(threads) + " threads but __launch_bounds__(" +
                          std::to_string(f->entry.max_threads) + ")");
    if (shared_bytes > f->max_dynamic_shared)
        return refuse(CUDA_ERROR_INVALID_VALUE,
                      std::to_string(shared_bytes) + " bytes of dynamic shared memory, limit " +
                          std::to_string(f->max_dynamic_shared));
    emu::grid_dim = dim3{gx, gy, gz};
    emu::block_dim = dim3{bx, by, bz};
    emu::g_run.thunk = f->entry.thunk;
    emu::g_run.params = params;
    // Stale shared memory from the last block, as on a GPU, rather than zeros.
    std::memset(emu::dynamic_shared, 0xff, shared_bytes);
    g_running_kernel = f->name.c_str();
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
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
API cuCtxSynchronize() { return CUDA_SUCCESS; }

API cuStreamCreate(void** stream, unsigned int) { *stream = new int(0); return CUDA_SUCCESS; }
API cuStreamCreateWithPriority(void** stream, unsigned int, int) {
    *stream = new int(0);
    return CUDA_SUCCESS;
}
API cuStreamDestroy_v2(void* stream) { delete static_cast<int*>(stream); return CUDA_SUCCESS; }
API cuStreamSynchronize(void*) { return CUDA_SUCCESS; }
API cuStreamQuery(void*) { return CUDA_SUCCESS; }
API cuStreamWaitEvent(void*, void*, unsigned int) { return CUDA_SUCCESS; }

API cuEventCreate(void** event, unsigned int) {
    *event = new Event{std::chrono::steady_clock::now()};
    return CUDA_SUCCESS;
}
API cuEventDestroy_v2(void* event) { delete static_cast<Event*>(event); return CUDA_SUCCESS; }
API cuEventRecord(void* event, void*) {
    static_cast<Event*>(event)->at = std::chrono::steady_clock::now();
    return CUDA_SUCCESS;
}
API cuEventSynchronize(void*) { return CUDA_SUCCESS; }
API cuEventQuery(void*) { return CUDA_SUCCESS; }
API cuEventElapsedTime(float* ms, void* start, void* end) {
    *ms = std::chrono::duration<float, std::milli>(static_cast<Event*>(end)->at -
                                                   static_cast<Event*>(start)->at)
              .count();
    return CUDA_SUCCESS;
}
API cuEventElapsedTime_v2(float* ms, void* start, void* end) {
    return cuEventElapsedTime(ms, start, end);
}

API cuMemAlloc_v2(CUdeviceptr* ptr, size_t bytes) { LOCKED; return allocate(ptr, bytes); }
API cuMemAllocAsync(CUdeviceptr* ptr, size_t bytes, void*) { LOCKED; return allocate(ptr, bytes); }
API cuMemFree_v2(CUdeviceptr ptr) { LOCKED; return release(ptr); }
API cuMemFreeAsync(CUdeviceptr ptr, void*) { LOCKED; return release(ptr); }
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
    LOCKED;
    if (CUresult r = check_range("cuMemcpyHtoD", dst, bytes)) return r;
    std::memcpy((void*)dst, src, bytes);
    return CUDA_SUCCESS;
}
API cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, void*) {
    return cuMemcpyHtoD_v2(dst, src, bytes);
}
API cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
    LOCKED;
    if (CUresult r = check_range("cuMemcpyDtoH", src, bytes)) return r;
    std::memcpy(dst, (const void*)src, bytes);
    return CUDA_SUCCESS;
}
API cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, void*) {
    return cuMemcpyDtoH_v2(dst, src, bytes);
}
API cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    LOCKED;
    if (CUresult r = check_range("cuMemcpyDtoD (source)", src, bytes)) return r;
    if (CUresult r = check_range("cuMemcpyDtoD (destination)", dst, bytes)) return r;
    std::memmove((void*)dst, (const void*)src, bytes);
    return CUDA_SUCCESS;
}
API cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, void*) {
    return cuMemcpyDtoD_v2(dst, src, bytes);
}
API cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t bytes) {
    LOCKED;
    if (CUresult r = check_range("cuMemsetD8", dst, bytes)) return r;
    std::memset((void*)dst, value, bytes);
    return CUDA_SUCCESS;
}
API cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t bytes, void*) {
    return cuMemsetD8_v2(dst, value, bytes);
}
API cuMemsetD32_v2(CUdeviceptr dst, unsigned int value, size_t count) {
    LOCKED;
    if (CUresult r = check_range("cuMemsetD32", dst, count * 4)) return r;
    auto* p = (unsigned int*)dst;
    for (size_t i = 0; i < count; ++i) p[i] = value;
    return CUDA_SUCCESS;
}
API cuMemsetD32Async(CUdeviceptr dst, unsigned int value, size_t count, void*) {
    return cuMemsetD32_v2(dst, value, count);
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
                   unsigned bz, unsigned shared_bytes, void*, void** params, void** extra) {
    LOCKED;
    return launch(static_cast<Function*>(function), gx, gy, gz, bx, by, bz, shared_bytes, params,
                  extra);
}

API cuGetErrorName(CUresult code, const char** name) {
    switch (code) {
        case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_INVALID_DEVICE: *name = "CUDA_ERROR_INVALID_DEVICE"; break;
        case CUDA_ERROR_INVALID_IMAGE: *name = "CUDA_ERROR_INVALID_IMAGE"; break;
        case CUDA_ERROR_INVALID_HANDLE: *name = "CUDA_ERROR_INVALID_HANDLE"; break;
        case CUDA_ERROR_NOT_FOUND: *name = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_ILLEGAL_ADDRESS: *name = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: *name = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *name = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case CUDA_ERROR_NOT_SUPPORTED: *name = "CUDA_ERROR_NOT_SUPPORTED"; break;
        default: *name = "CUDA_ERROR_UNKNOWN";
    }
    return CUDA_SUCCESS;
}
API cuGetErrorString(CUresult code, const char** text) {
    cuGetErrorName(code, text);
    return CUDA_SUCCESS;
}
