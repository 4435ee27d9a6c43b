// How each kernel file's entry points reach the emulator's driver (driver.cpp): build.py appends
// one EMU_KERNEL line per `extern "C"` kernel to the file, which registers a thunk that unpacks
// cuLaunchKernel's argument array into the kernel's own parameter types, and those types' sizes.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace emu {

using Thunk = void (*)(void** params);

struct KernelEntry {
    Thunk thunk;
    // From __launch_bounds__; 0 when the kernel has none.
    int max_threads;
    // The size of each parameter, in order: what a captured launch copies out of
    // cuLaunchKernel's argument array, as the driver copies the values when it is called.
    std::vector<size_t> param_sizes;
};

std::map<std::string, KernelEntry>& registry();

struct Registrar {
    Registrar(const char* name, Thunk thunk, int max_threads, std::vector<size_t> param_sizes);
};

template <typename... Args, std::size_t... I>
void invoke_with(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(params[I])...);
}

template <typename... Args>
void invoke(void (*kernel)(Args...), void** params) {
    invoke_with(kernel, params, std::index_sequence_for<Args...>{});
}

template <typename... Args>
std::vector<size_t> param_sizes(void (*)(Args...)) {
    return {sizeof(std::remove_cv_t<std::remove_reference_t<Args>>)...};
}

}  // namespace emu

#define EMU_KERNEL(name, max_threads)                                                    \
    static emu::Registrar emu_registrar_##name(                                          \
        #name, [](void** params) { emu::invoke(name, params); }, max_threads,             \
        emu::param_sizes(name));
