// What driver.cpp shares with the library stand-ins (libraries.cpp), which are linked into the
// same shared object: the API lock, the device allocations' bounds and stream work.
#pragma once

#include <cstddef>
#include <functional>
#include <mutex>
#include <string>

namespace emu {
// Held by every call that touches device memory; tests call from several threads.
std::mutex& api_mutex();
// True when [ptr, ptr + bytes) lies inside one live device allocation.
bool is_device_range(const void* ptr, size_t bytes);
void report(const std::string& what);
// Work issued to `stream` (`call` names it in reports): run now (or queued behind the work of a
// stream that runs late, driver.cpp), or, when `stream` is being
// captured into a CUDA graph, recorded to run at each launch of the graph, when it must use
// only what it holds by value (descriptors and host scalars as they were when it was issued,
// as the real libraries read them then). `work` returns its call's status, 0 for success as in
// the driver and every library here; a recorded call returns 0, and `invalidated` when an
// earlier call invalidated the capture. Takes the API lock only to decide: `work` takes it.
int enqueue(void* stream, const std::string& call, std::function<int()> work, int invalidated);
}  // namespace emu
