// How each kernel file's entry points reach the emulator's driver (driver.cpp): build.py appends
// one EMU_KERNEL line per `extern "C"` kernel to the file, which registers a thunk that unpacks
// cuLaunchKernel's argument array into the kernel's own parameter types.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <type_traits>
#include <utility>

namespace emu {

using Thunk = void (*)(void** params);

struct KernelEntry {
    Thunk thunk;
    // From __launch_bounds__; 0 when the kernel has none.
    int max_threads;
};

std::map<std::string, KernelEntry>& registry();

struct Registrar {
    Registrar(const char* name, Thunk thunk, int max_threads);
};

template <typename... Args, std::size_t... I>
void invoke_with(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(params[I])...);
}

template <typename... Args>
void invoke(void (*kernel)(Args...), void** params) {
    invoke_with(kernel, params, std::index_sequence_for<Args...>{});
}

}  // namespace emu

#define EMU_KERNEL(name, max_threads)                                                    \
    static emu::Registrar emu_registrar_##name(                                          \
        #name, [](void** params) { emu::invoke(name, params); }, max_threads);
