// C++ exceptions that llama.cpp lets out of its C API, caught before they reach C (where they end the process
// through std::terminate). Declared for cffi in callbacks.cdef and helpers.c.
#include "llama.h"

// llama_sampler_accept on a grammar sampler throws when the token leaves the grammar no way on ("Unexpected empty
// grammar stack"), which its own apply step can let through: with token elements (<[id]>, !<[id]>) the apply step
// checks a token that starts with characters only by its id once it reaches the token element, while accept needs
// every character matched. 0 when accepted, -1 when llama.cpp threw (the grammar's state is then lost).
extern "C" int llamacffi_grammar_accept(struct llama_sampler * smpl, llama_token token) {
    try {
        llama_sampler_accept(smpl, token);
        return 0;
    } catch (...) {
        return -1;
    }
}

// Whether accepting the token would succeed, tried on a copy of the grammar's state: 1 yes, 0 no.
extern "C" int llamacffi_grammar_accepts(const struct llama_sampler * smpl, llama_token token) {
    struct llama_sampler * copy = nullptr;
    int ok = 1;
    try {
        copy = llama_sampler_clone(smpl);
        llama_sampler_accept(copy, token);
    } catch (...) {
        ok = 0;
    }
    if (copy != nullptr) {
        llama_sampler_free(copy);
    }
    return ok;
}
