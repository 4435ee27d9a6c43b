// What driver.cpp shares with the library stand-ins (libraries.cpp), which are linked into the
// same shared object: the API lock and the device allocations' bounds.
#pragma once

#include <cstddef>
#include <mutex>
#include <string>

namespace emu {
// Held by every call that touches device memory; tests call from several threads.
std::mutex& api_mutex();
// True when [ptr, ptr + bytes) lies inside one live device allocation.
bool is_device_range(const void* ptr, size_t bytes);
void report(const std::string& what);
}  // namespace emu
